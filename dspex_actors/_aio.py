"""What the awaitable (``a``-prefixed) twins of the blocking calls share (private).

Three ways to wait without blocking the event loop:

- `AsyncWaker`: a pool's answer to a checkout wakes the waiting coroutine (the pool calls its
  `release`, as it releases a waiting thread's lock): no thread per waiting checkout, however
  many wait.
- `wait_readable`: wait until one of some file descriptors is readable (a worker's reply), with
  the loop's own selector.
- `in_thread`: run a blocking call (a supervisor's) in a thread of its own and await its
  result. Cancelling the await stops the waiting, not the call, which completes in its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = ["AsyncWaker", "in_thread", "wait_readable"]

T = TypeVar("T")


class AsyncWaker:
    """Lock-like: `release` (from any thread) completes `future` on its loop. A pool request
    holds one in place of the held lock a waiting thread would block on."""

    __slots__ = ("future", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def release(self) -> None:
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
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_fail, future, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, result)

    threading.Thread(target=run, name="dspex-aio-call", daemon=True).start()
    return await future


async def wait_readable(fds: Iterable[int], timeout: float | None) -> bool:
    """Wait until one of `fds` is readable; False if `timeout` seconds passed first."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    registered = []
    try:
        for fd in fds:
            loop.add_reader(fd, _settle, ready)
            registered.append(fd)
        if timeout is None:
            await ready
            return True
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            return False
        return True
    finally:
        for fd in registered:
            loop.remove_reader(fd)
