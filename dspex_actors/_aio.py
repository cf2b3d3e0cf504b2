"""What the awaitable (``a``-prefixed) twins of the blocking calls share (private).

Three ways to wait without blocking the event loop:

- `AsyncWaker`: a pool's answer to a checkout wakes the waiting coroutine (the pool calls its
  `release`, as it releases a waiting thread's lock): no thread per waiting checkout, however
  many wait.
- `wait_readable`: wait until one of some file descriptors is readable (a worker's reply), with
  the loop's own selector.
- `in_thread`: run a blocking call (a supervisor's) in a thread of its own and await its
  result. Cancelling the await stops the waiting, not the call, which completes in its thread.
  `thread_future` is its first half: the thread started now, its result a future.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["AsyncWaker", "in_thread", "thread_future", "wait_readable"]

T = TypeVar("T")


class AsyncWaker:
    """Lock-like: `release` (from any thread) completes `future` on its loop. A pool request
    holds one in place of the held lock a waiting thread would block on.

    Released from the loop's own thread (a pool that answers a checkout inline, in its
    caller's place), the future is completed at once: no wake-up through the loop's self-pipe.
    """

    __slots__ = ("future", "loop", "thread")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.thread = threading.get_ident()  # made by a coroutine: the loop's thread

    async def wait(self, timeout: float | None) -> None:
        """Until released, or until `timeout` seconds have passed (the caller looks at what
        it waited for to tell which). A timer on the loop, not `asyncio.wait_for`: that one
        can swallow a cancellation arriving as the future completes."""
        timer = None if timeout is None else self.loop.call_later(timeout, _settle, self.future)
        try:
            await self.future
        finally:
            if timer is not None:
                timer.cancel()

    def release(self) -> None:
        if threading.get_ident() == self.thread:
            _settle(self.future)
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self.loop.call_soon_threadsafe(_settle, self.future)


def _settle(future: asyncio.Future[Any], result: Any = None) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a new daemon thread (``dspex-aio-call``); its result or
    exception, awaited. Not the loop's default executor: a few slow calls must not starve the
    loop's other `to_thread` users, and no thread outlives its call."""
    return await thread_future(functools.partial(fn, *args, **kwargs))


def thread_future(fn: Callable[[], T]) -> asyncio.Future[T]:
    """Start ``fn()`` in a new daemon thread now (called in the running loop's thread); the
    future of its result or exception. Raises (`RuntimeError`) if no thread could start:
    then `fn` never runs."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_fail, future, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result)

    threading.Thread(target=run, name="dspex-aio-call", daemon=True).start()
    return future


async def wait_readable(fds: Iterable[int], timeout: float | None) -> bool:
    """Wait until one of `fds` is readable; False if `timeout` seconds passed first."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[bool] = loop.create_future()
    registered = []
    timer = None
    try:
        for fd in fds:
            loop.add_reader(fd, _settle, ready, True)
            registered.append(fd)
        if timeout is not None:
            # A timer on the loop, not `asyncio.wait_for`: this wait is on every awaited
            # request's path, and a timer costs a fraction of a wrapped wait.
            timer = loop.call_later(timeout, _settle, ready, False)
        return await ready
    finally:
        if timer is not None:
            timer.cancel()
        for fd in registered:
            loop.remove_reader(fd)
