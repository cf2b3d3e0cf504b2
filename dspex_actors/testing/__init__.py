"""Test helpers for code built on dspex_actors (and for dspex_actors itself).

Everything here synchronises on events and bounded waits, never on sleeps:

- `sync(ref)`: a barrier. An actor's inbox is FIFO, so once `sync` returns, every message sent
  to the actor before it has been handled.
- `gate(ref)`: hold an actor inside a message until the test releases it, to pin an ordering.
- `kill_and_wait(ref)`: kill an actor and wait until it has fully exited.
- `wait_for(predicate, timeout)`: poll a condition for state that has no event to wait on.
- `FakeClock`: time that only moves when the test says so.
- Pools: `ScriptedWorker` + `Script` (pin the exact callback order, `assert_drained`),
  `start_test_pool(**opts)` and `wait_for_pool_ready(pool, timeout)`; see `docs/pooling.md`.

The pytest plugin (installed with the package, entry point ``pytest11``) adds an autouse leak
check, the ``layer_1``/``layer_2``/``layer_3`` markers and ``--test-mode``; see
`dspex_actors.testing.pytest_plugin`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import pykka
from pykka import messages as pykka_messages

from .._actor import _RunInActor, kill, wait_exit
from .._clock import FakeClock
from .._errors import CallTimeout
from ._pools import EchoWorker, start_test_pool, wait_for_pool_ready
from ._scripted import Script, ScriptedWorker, ScriptError

__all__ = [
    "EchoWorker",
    "FakeClock",
    "Gate",
    "Script",
    "ScriptError",
    "ScriptedWorker",
    "gate",
    "kill_and_wait",
    "start_test_pool",
    "sync",
    "wait_for",
    "wait_for_pool_ready",
]


def sync(ref: pykka.ActorRef[Any], timeout: float | None = 5.0) -> None:
    """Return once the actor has handled every message sent to it before this call.

    Works for any pykka actor: it asks for an attribute, which runs no user code.

    Raises:
        CallTimeout: the actor did not get to it within `timeout` seconds.
        pykka.ActorDeadError: the actor is not running.
    """
    try:
        ref.ask(pykka_messages.ProxyGetAttr(attr_path=("actor_urn",)), timeout=timeout)
    except pykka.Timeout:
        raise CallTimeout(str(ref), "sync", timeout) from None


class Gate:
    """An actor held inside a message; `release()` lets it go on (also on `with` exit)."""

    def __init__(self, ref: pykka.ActorRef[Any], hold_limit: float) -> None:
        self.ref = ref
        self._entered = threading.Event()
        self._release = threading.Event()
        self._hold_limit = hold_limit

    def _hold(self) -> None:
        self._entered.set()
        # Bounded: a test that forgets to release cannot hang the actor forever.
        self._release.wait(self._hold_limit)

    def release(self) -> None:
        """Let the actor continue with its next message."""
        self._release.set()

    def __enter__(self) -> Gate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def gate(ref: pykka.ActorRef[Any], timeout: float = 5.0, hold_limit: float = 30.0) -> Gate:
    """Block a `dspex_actors.Actor` between messages until the returned `Gate` is released.

    Returns once the actor is inside the gate, so messages sent afterwards queue up behind it.
    The actor is released after `hold_limit` seconds at the latest.

    Raises:
        CallTimeout: the actor did not reach the gate within `timeout` seconds.
    """
    g = Gate(ref, hold_limit)
    ref.tell(_RunInActor(g._hold))
    if not g._entered.wait(timeout):
        g.release()
        raise CallTimeout(str(ref), "gate", timeout)
    return g


def kill_and_wait(ref: pykka.ActorRef[Any], timeout: float | None = 5.0) -> Any:
    """Kill the actor (see `dspex_actors.kill`) and return its exit reason once it has exited."""
    kill(ref)
    return wait_exit(ref, timeout)


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.002) -> Any:
    """Poll `predicate()` until it returns a truthy value, and return that value.

    For state with no event to wait on (a process table, a file). Prefer an event or `sync`.

    Raises:
        TimeoutError: still falsy after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"condition {predicate!r} still false after {timeout}s")
        time.sleep(interval)
