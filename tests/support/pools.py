"""Helpers for the pool tests (tests/test_pool_*.py).

- `Pools`: starts pools for one test and stops the ones still running at teardown (the
  `pools` fixture).
- `Waiter`: a thread that runs one `checkout` and records its outcome, for tests with callers
  queued behind a held worker.
- `hold(pool, command)`: check a worker out from the test thread and keep it (a `Lease`).
- `ok_steps(...)`: script steps for the common "worker handed out and checked in" case.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

import dspex_actors as da
from dspex_actors.testing import Script, wait_for

WAIT = 5.0


class Pools:
    """Starts pools for a test; `close()` stops every one still running and waits for it."""

    def __init__(self) -> None:
        self.started: list[da.Pool] = []

    def start(self, worker: type[da.PoolWorker], init_arg: Any = None, **options: Any) -> da.Pool:
        pool = da.Pool.start(worker, init_arg, **options)
        self.started.append(pool)
        return pool

    def close(self) -> None:
        for pool in reversed(self.started):
            if pool.is_alive():
                with contextlib.suppress(da.NoProc):
                    pool.stop(timeout=10)
            pool.wait(10)


def settled(pool: da.Pool, idle: int) -> bool:
    """`idle` workers idle, none lent or starting."""
    status = pool.status()
    return status.idle == idle and status.busy == 0 and status.initializing == 0


def hold(pool: da.Pool, command: Any = None, timeout: float = WAIT) -> da.Lease:
    """Check a worker out from this thread and keep it; leave with `release(lease)`."""
    lease = pool.lease(command, timeout=timeout)
    lease.__enter__()
    return lease


def release(lease: da.Lease, checkin_state: Any = None, error: BaseException | None = None) -> None:
    """Check a held worker back in (or cancel it with `error`)."""
    if checkin_state is not None:
        lease.checkin_state = checkin_state
    if error is None:
        lease.__exit__(None, None, None)
    else:
        lease.__exit__(type(error), error, None)


class Waiter:
    """Runs `pool.checkout(command, fn, timeout)` in a thread and records the outcome."""

    def __init__(
        self,
        pool: da.Pool,
        command: Any = None,
        timeout: float | None = WAIT,
        fn: Callable[[da.From, Any], tuple[Any, Any]] | None = None,
        **options: Any,
    ) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self._fn = fn or (lambda from_, client_state: (client_state, client_state))
        self._options = options  # checkout's keyword options (worker, affinity)
        self._thread = threading.Thread(
            target=self._run, args=(pool, command, timeout), name="pool-test-waiter"
        )
        self._thread.start()

    def _run(self, pool: da.Pool, command: Any, timeout: float | None) -> None:
        try:
            self.result = pool.checkout(command, self._fn, timeout=timeout, **self._options)
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = WAIT) -> Waiter:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the checkout did not finish in time"
        return self


def wait_queued(pool: da.Pool, n: int) -> None:
    """Wait until `n` checkouts are queued in the pool."""
    wait_for(lambda: pool.status().queued == n, WAIT)


def ok_checkout() -> tuple[str, Callable[..., Any]]:
    """A handle_checkout step that hands out the worker state as the client state."""
    return ("handle_checkout", lambda cmd, from_, ws, ps: da.Ok(ws, ws, ps))


def ok_checkin() -> tuple[str, Callable[..., Any]]:
    """A handle_checkin step that keeps the worker."""
    return ("handle_checkin", lambda cs, from_, ws, ps: da.Ok(ws, ps))


def init(state: Any) -> tuple[str, Callable[..., Any]]:
    """An init_worker step creating a worker with state `state`."""
    return ("init_worker", lambda ps: da.Ok(state, ps))


def terminate(
    expect_reason: Any = None, expect_state: Any = None
) -> tuple[str, Callable[..., Any]]:
    """A terminate_worker step, optionally checking the reason and the worker state."""

    def step(reason: Any, ws: Any, ps: Any) -> da.Ok:
        if expect_reason is not None:
            assert reason == expect_reason, f"terminate_worker reason {reason!r}"
        if expect_state is not None:
            assert ws == expect_state, f"terminate_worker state {ws!r}"
        return da.Ok(ps)

    return ("terminate_worker", step)


def script(*steps: tuple[str, Callable[..., Any]], init_arg: Any = None) -> Script:
    return Script(*steps, init_arg=init_arg)
