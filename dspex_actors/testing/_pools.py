"""`start_test_pool` and `wait_for_pool_ready`: pools in tests without timing guesses.

DSPex's `wait_for_pool_ready` returned ``:ok`` whatever happened (its status function was a
stand-in that always reported ready); this one really polls `Pool.status()` and raises
`TimeoutError` when the pool is not ready in time.

Example:
    >>> from dspex_actors.testing import start_test_pool
    >>> with start_test_pool() as pool:
    ...     pool.status().idle
    2
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from .._errors import NoProc
from .._pool._contract import From, PoolStatus, PoolWorker
from .._pool._handle import Pool
from .._pool._results import Ok

__all__ = ["EchoWorker", "start_test_pool", "wait_for_pool_ready"]

_counter = itertools.count(1)


class EchoWorker(PoolWorker):
    """The default worker of `start_test_pool`: worker ``n`` hands out the client state ``n``.

    Handy when a test only needs *some* pool; the worker number shows which worker served a
    checkout.
    """

    def init_pool(self, init_arg: Any) -> Ok:
        return Ok(itertools.count(1))

    def init_worker(self, pool_state: Any) -> Ok:
        return Ok(next(pool_state), pool_state)

    def handle_checkout(self, command: Any, from_: From, worker_state: Any, pool_state: Any) -> Ok:
        return Ok(worker_state, worker_state, pool_state)


@contextmanager
def start_test_pool(
    worker: type[PoolWorker] | type[Pool] = EchoWorker,
    init_arg: Any = None,
    *,
    ready_timeout: float = 5.0,
    **options: Any,
) -> Iterator[Any]:
    """Start an isolated pool for one test; stop it (and wait for it) when the block ends.

    Defaults for tests: a unique registered name (``test_pool_<pid>_<n>``), eager
    start, `pool_size` 2, `max_overflow` 0. Any `Pool.start` option overrides them. The pool
    is ready (see `wait_for_pool_ready`) when the block starts.

    Args:
        worker: the `PoolWorker` class (default `EchoWorker`); or a `Pool` class whose
            `start` takes keyword options only, such as `ProcessPool` or
            `dspex_actors.bridge.SessionPool` (``start_test_pool(SessionPool)``): the block
            gets that class's handle.
        init_arg: passed to `init_pool` (`PoolWorker` classes only).
        ready_timeout: seconds to wait for the pool to be ready (every worker idle, for a
            `Pool` class: its workers start processes).
        **options: `Pool.start` options (or the `Pool` class's `start` options).

    Raises:
        TimeoutError: the pool was not ready within `ready_timeout` (it is stopped first).
    """
    options.setdefault("name", f"test_pool_{os.getpid()}_{next(_counter)}")
    options.setdefault("pool_size", 2)
    options.setdefault("lazy", False)
    options.setdefault("max_overflow", 0)
    if isinstance(worker, type) and issubclass(worker, Pool):
        if init_arg is not None:
            raise TypeError(f"{worker.__name__}.start takes keyword options, not an init_arg")
        pool: Any = worker.start(**options)
        min_idle = options["pool_size"]
    else:
        pool = Pool.start(worker, init_arg, **options)
        min_idle = 1
    try:
        if not options["lazy"]:
            wait_for_pool_ready(pool, ready_timeout, min_idle=min_idle)
        yield pool
    finally:
        if pool.is_alive():
            with suppress(NoProc):
                pool.stop(timeout=10.0)
        pool.wait(10.0)


def wait_for_pool_ready(
    pool: Pool, timeout: float = 5.0, *, min_idle: int = 1, interval: float = 0.005
) -> PoolStatus:
    """Poll `pool.status()` until at least `min_idle` workers are idle; return that status
    (the workers' `PoolStatus`, for a `SessionPool` too).

    Args:
        pool: the pool.
        timeout: seconds to wait in total.
        min_idle: how many idle workers count as ready (default 1, as DSPex's helper).
        interval: seconds between polls.

    Raises:
        TimeoutError: not ready after `timeout` seconds; the message shows the last status.
        NoProc: the pool is not running.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = max(0.0, deadline - time.monotonic())
        status = pool.status(timeout=max(remaining, 0.5))
        status = getattr(status, "pool", status)  # a SessionPool's status holds the pool's
        if status.idle >= min_idle:
            return status
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"pool {pool.name} not ready after {timeout}s "
                f"(wanted {min_idle} idle worker(s)); last status: {status}"
            )
        time.sleep(interval)
