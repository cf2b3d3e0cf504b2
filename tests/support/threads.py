"""Calls made from a helper thread, for tests that hold an actor while a call is pending.

- `in_thread(fn)`: call `fn()` in a new thread; a `concurrent.futures.Future` gets its outcome.
- `queued_call(ref, fn)`: the same for a public blocking call on the actor `ref` (held by
  `dspex_actors.testing.gate`), returning once the call's request is queued in its inbox: what
  the test sends afterwards queues behind it, so the order the actor sees is pinned.

Every wait is bounded: give `fn` a timeout, and wait on the future with one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import pykka

from dspex_actors.testing import wait_for

T = TypeVar("T")


def in_thread(fn: Callable[[], T], name: str = "test-helper") -> Future[T]:
    """Call `fn()` in a new daemon thread; the future gets its result or its exception.

    The thread ends with the call: `fn` must itself be bounded (give it a timeout).
    """
    future: Future[T] = Future()
    future.set_running_or_notify_cancel()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(result)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


def queued_call(ref: pykka.ActorRef[Any], fn: Callable[[], T], timeout: float = 5.0) -> Future[T]:
    """Start `fn()` (one call to the actor `ref`) in a helper thread; return once it is queued.

    `ref` must be held (by a gate) so its inbox only grows: the call is queued once the inbox
    holds one message more than before.
    """
    inbox = ref.actor_inbox
    assert isinstance(inbox, queue.Queue), f"{ref} has no queue to watch"
    before = inbox.qsize()
    future = in_thread(fn)
    wait_for(lambda: inbox.qsize() > before or future.done(), timeout)
    return future


def outcome(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Call `fn()` in a fresh thread and wait for it: its result, or the exception it raised."""
    future = in_thread(fn)
    exc = future.exception(timeout)
    return exc if exc is not None else future.result(0)
