"""`ScriptedWorker` and `Script`: pin the exact order of pool callbacks in a test.

NimblePool tests itself with a worker whose callbacks pop the next instruction from a list and
fail unless the callback's name matches, then checks the list was drained (`StatelessPool` +
`assert_drained`). This is that technique for `Pool`: the script is shared by every worker of
the pool (like NimblePool's `StatefulPool`, whose list lives in an Agent), so one list pins the
order across workers and threads.

When not to use it: to test *your* worker, test your callbacks directly or run your own pool;
a script pins the pool's behaviour, not your resource's.

Example:
    >>> from dspex_actors import Ok, Pool
    >>> from dspex_actors.testing import Script, ScriptedWorker
    >>> script = Script(
    ...     ("init_worker", lambda ps: Ok("w1", ps)),
    ...     ("handle_checkout", lambda cmd, from_, ws, ps: Ok(cmd, ws, ps)),
    ...     ("handle_checkin", lambda cs, from_, ws, ps: Ok(ws, ps)),
    ...     ("terminate_worker", lambda reason, ws, ps: Ok(ps)),
    ... )
    >>> pool = Pool.start(ScriptedWorker, script, pool_size=1)
    >>> pool.checkout("hi", lambda from_, cs: (cs, "back"))
    'hi'
    >>> pool.stop()
    >>> script.assert_drained()

Which callbacks are pinned: `init_worker`, `handle_checkout`, `handle_checkin`,
`handle_update`, `handle_info`, `handle_ping` and `terminate_worker` always (an unscripted call
is a failure); `init_pool`, `handle_enqueue`, `handle_cancelled` and `terminate_pool` only when
the script mentions them (otherwise they keep `PoolWorker`'s defaults; `init_pool` then returns
`Ok(script.init_arg)`).

A wrong or unexpected callback raises `ScriptError` inside the pool (where the pool's callback
wrapper handles it like any exception) *and* is recorded, so `assert_drained` fails with it.
So is an `AssertionError` raised by a step function: steps may `assert` on their arguments.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from .._pool._contract import From, PoolWorker
from .._pool._results import Ok

__all__ = ["Script", "ScriptError", "ScriptedWorker"]

ALWAYS_PINNED: Final = frozenset(
    {
        "init_worker",
        "handle_checkout",
        "handle_checkin",
        "handle_update",
        "handle_info",
        "handle_ping",
        "terminate_worker",
    }
)
OPTIONALLY_PINNED: Final = frozenset(
    {"init_pool", "handle_enqueue", "handle_cancelled", "terminate_pool"}
)
CALLBACKS: Final = ALWAYS_PINNED | OPTIONALLY_PINNED


class ScriptError(AssertionError):
    """A callback ran out of script order (or after the script was drained)."""


Step = tuple[str, Callable[..., Any]]


class Script:
    """The expected callbacks, in order, each with the function that produces its result.

    Args:
        *steps: ``(callback_name, fn)`` pairs; `fn` receives the callback's arguments exactly
            (for example ``lambda command, from_, worker_state, pool_state: ...`` for
            `handle_checkout`) and returns what the callback returns. It may raise, to test
            how the pool handles a raising callback.
        init_arg: the value `init_pool` sees (the pool's own `init_arg` is the script).

    Attributes:
        calls: ``(callback_name, args)`` for every scripted call made so far, in order.
    """

    def __init__(self, *steps: Step, init_arg: Any = None) -> None:
        for step in steps:
            if (
                not isinstance(step, tuple)
                or len(step) != 2
                or step[0] not in CALLBACKS
                or not callable(step[1])
            ):
                raise ValueError(
                    f"a script step must be (callback_name, fn) with a PoolWorker callback "
                    f"name, got: {step!r}"
                )
        self.init_arg = init_arg
        self._steps: deque[Step] = deque(steps)
        self._pinned = ALWAYS_PINNED | {name for name, _ in steps}
        self._cond = threading.Condition()
        self._errors: list[ScriptError] = []
        self._running = 0  # steps whose function is still running
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def pins(self, callback: str) -> bool:
        """Whether calls to `callback` must follow the script."""
        return callback in self._pinned

    def remaining(self) -> list[str]:
        """The names of the steps not yet run."""
        with self._cond:
            return [name for name, _ in self._steps]

    def run(self, callback: str, *args: Any) -> Any:
        """Run the next step, which must be for `callback` (called by `ScriptedWorker`)."""
        with self._cond:
            if not self._steps or self._steps[0][0] != callback:
                expected = self._steps[0][0] if self._steps else "nothing (script drained)"
                error = ScriptError(
                    f"unexpected callback {callback}{_short(args)}; expected {expected}; "
                    f"called so far: {[name for name, _ in self.calls]}"
                )
                self._errors.append(error)
                self._cond.notify_all()
                raise error
            _, fn = self._steps.popleft()
            self.calls.append((callback, args))
            self._running += 1
        try:
            return fn(*args)
        except AssertionError as exc:
            # A failed check inside a step would be swallowed by the pool's callback wrapper:
            # record it so assert_drained reports it.
            with self._cond:
                self._errors.append(ScriptError(f"step {callback} failed: {exc}"))
            raise
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def assert_drained(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until every step has run; fail on any out-of-order call.

        Raises:
            AssertionError: a callback ran out of order, or steps are left after `timeout`.
        """
        with self._cond:
            self._cond.wait_for(
                lambda: (not self._steps and not self._running) or bool(self._errors), timeout
            )
            if self._errors:
                raise AssertionError(str(self._errors[0])) from self._errors[0]
            if self._steps:
                raise AssertionError(
                    f"script not drained after {timeout}s: still expected "
                    f"{[name for name, _ in self._steps]}; "
                    f"called: {[name for name, _ in self.calls]}"
                )

    def names(self) -> list[str]:
        """The callback names called so far, in order."""
        with self._cond:
            return [name for name, _ in self.calls]


def _short(args: tuple[Any, ...], limit: int = 160) -> str:
    text = repr(args)
    return text if len(text) <= limit else text[: limit - 4] + "...)"


class ScriptedWorker(PoolWorker):
    """A `PoolWorker` whose every pinned callback runs the next `Script` step.

    Start the pool with the script as its `init_arg`: ``Pool.start(ScriptedWorker, script)``.
    """

    _script: Script

    def _step(self, callback: str, *args: Any) -> Any:
        return self._script.run(callback, *args)

    def init_pool(self, init_arg: Any) -> Any:
        if not isinstance(init_arg, Script):
            raise TypeError(f"ScriptedWorker needs a Script as init_arg, got: {init_arg!r}")
        self._script = init_arg
        if init_arg.pins("init_pool"):
            return self._step("init_pool", init_arg.init_arg)
        return Ok(init_arg.init_arg)

    def init_worker(self, pool_state: Any) -> Any:
        return self._step("init_worker", pool_state)

    def handle_enqueue(self, command: Any, pool_state: Any) -> Any:
        if self._script.pins("handle_enqueue"):
            return self._step("handle_enqueue", command, pool_state)
        return super().handle_enqueue(command, pool_state)

    def handle_checkout(self, command: Any, from_: From, worker_state: Any, pool_state: Any) -> Any:
        return self._step("handle_checkout", command, from_, worker_state, pool_state)

    def handle_checkin(
        self, client_state: Any, from_: From, worker_state: Any, pool_state: Any
    ) -> Any:
        return self._step("handle_checkin", client_state, from_, worker_state, pool_state)

    def handle_update(self, message: Any, worker_state: Any, pool_state: Any) -> Any:
        return self._step("handle_update", message, worker_state, pool_state)

    def handle_info(self, message: Any, worker_state: Any) -> Any:
        return self._step("handle_info", message, worker_state)

    def handle_ping(self, worker_state: Any, pool_state: Any) -> Any:
        return self._step("handle_ping", worker_state, pool_state)

    def handle_cancelled(self, context: Any, pool_state: Any) -> None:
        if self._script.pins("handle_cancelled"):
            self._step("handle_cancelled", context, pool_state)

    def terminate_worker(self, reason: Any, worker_state: Any, pool_state: Any) -> Any:
        return self._step("terminate_worker", reason, worker_state, pool_state)

    def terminate_pool(self, reason: Any, pool_state: Any) -> None:
        if self._script.pins("terminate_pool"):
            self._step("terminate_pool", reason, pool_state)
