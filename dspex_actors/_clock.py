"""Time, injected: the `Clock` protocol, the real `SystemClock` and the test `FakeClock`.

Everything in dspex_actors that depends on time (restart intensity windows, pool idle pings,
deadlines) reads it from a `Clock`, so tests can move time by hand with `FakeClock.advance`
instead of sleeping.

A clock has two duties: tell the monotonic time, and run a callback after a delay. Callbacks
must be short and must not block: they typically `tell` an actor a message.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

from ._logging import area_logger, log_event

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock", "TimerHandle"]

_log = area_logger("clock")


@attrs.define(eq=False)
class TimerHandle:
    """A scheduled callback; `cancel()` it to stop it from running (idempotent)."""

    when: float
    callback: Callable[[], None] = attrs.field(repr=False)
    cancelled: bool = False
    on_cancel: Callable[[], None] | None = attrs.field(default=None, repr=False)

    def cancel(self) -> None:
        """Prevent the callback from running, if it has not run yet."""
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()


@runtime_checkable
class Clock(Protocol):
    """Where dspex_actors reads time from and schedules timers."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run `callback()` (in a clock-owned thread) once `delay` seconds have passed."""
        ...


class SystemClock:
    """The real clock: `time.monotonic` and one shared timer thread.

    The timer thread (``dspex-timer``) starts on the first `call_later` and exits as soon as
    no timer is pending, so an idle program has no extra thread.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback, on_cancel=self._wake)
        with self._cond:
            heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dspex-timer", daemon=True)
                self._thread.start()
            self._cond.notify()
        return handle

    def _wake(self) -> None:
        # A cancelled timer must not keep the thread waiting until its deadline: wake it so it
        # drops cancelled timers and exits when none is left.
        with self._cond:
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                # Drop cancelled timers at the head so they do not keep the thread alive.
                while self._heap and self._heap[0][2].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._thread = None
                    return
                when, _, handle = self._heap[0]
                now = time.monotonic()
                if when > now:
                    # Capped: a longer wait raises OverflowError, which would kill this thread
                    # while `_thread` still names it, and no timer would ever fire again.
                    self._cond.wait(min(when - now, threading.TIMEOUT_MAX))
                    continue
                heapq.heappop(self._heap)
            if not handle.cancelled:
                _run_timer(handle)


def _run_timer(handle: TimerHandle) -> None:
    try:
        handle.callback()
    except BaseException as exc:
        log_event(
            _log,
            "ERROR",
            "timer_callback_failed",
            "timer callback {callback!r} raised",
            callback=handle.callback,
            exc=exc,
        )


SYSTEM_CLOCK = SystemClock()
"""The process-wide real clock, used when no `clock=` is given."""


class FakeClock:
    """A clock that only moves when a test calls `advance`.

    Timers due at or before the new time run in `advance`'s thread, in time order, before it
    returns, so a test can advance and then synchronise with the actor the timer told (for
    example with `sync(ref)`).

    Example:
        >>> clock = FakeClock()
        >>> fired = []
        >>> _ = clock.call_later(2.0, lambda: fired.append(clock.monotonic()))
        >>> clock.advance(1.0); fired
        []
        >>> clock.advance(1.5); fired
        [2.0]
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        with self._lock:
            handle = TimerHandle(self._now + max(0.0, delay), callback)
            heapq.heappush(self._heap, (handle.when, next(self._seq), handle))
        return handle

    def pending(self) -> int:
        """How many timers are scheduled and not cancelled."""
        with self._lock:
            return sum(1 for _, _, h in self._heap if not h.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward by `seconds` and run every timer that became due."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go backwards, got: {seconds!r}")
        with self._lock:
            target = self._now + seconds
        while True:
            with self._lock:
                if not self._heap or self._heap[0][0] > target:
                    self._now = target
                    return
                when, _, handle = heapq.heappop(self._heap)
                self._now = max(self._now, when)
            if not handle.cancelled:
                _run_timer(handle)
