"""Restart intensity: OTP's "more than N restarts in T seconds" rule, as a pure function.

One history per supervisor (not per child), newest first. Every restart *attempt* (including a
retry after a failed start) is recorded before it is made; if the history then holds more than
`max_restarts` entries inside the window, the supervisor gives up and exits with `SHUTDOWN`.

The window is inclusive and, as in OTP, timestamps are whole seconds: with `max_seconds=1`,
restarts at second 10 and second 11 are both inside it. Deliberately beyond OTP, a
non-integral `max_seconds` (e.g. 0.5) switches to exact fractional timestamps.

    >>> history, exceeded = add_restart((), now=10.2, max_restarts=1, max_seconds=1)
    >>> history, exceeded
    ((10,), False)
    >>> add_restart(history, now=11.9, max_restarts=1, max_seconds=1)
    ((11, 10), True)
    >>> add_restart(history, now=12.1, max_restarts=1, max_seconds=1)
    ((12,), False)
"""

from __future__ import annotations

import itertools
import math

__all__ = ["add_restart"]


def add_restart(
    history: tuple[float, ...], now: float, max_restarts: int, max_seconds: float
) -> tuple[tuple[float, ...], bool]:
    """Record a restart attempt at `now`.

    Args:
        history: earlier restart timestamps, newest first.
        now: the clock's monotonic time.
        max_restarts: OTP intensity (>= 0).
        max_seconds: OTP period (> 0).

    Returns:
        The new history (only entries still inside the window, newest first) and whether the
        intensity is exceeded, in which case the restart must not be made.
    """
    stamp: float = math.floor(now) if float(max_seconds).is_integer() else now
    threshold = stamp - max_seconds
    # Newest first, so the window ends at the first entry that is too old (OTP's takewhile);
    # and more than max_restarts + 1 entries can never change the answer, so none are kept.
    kept = tuple(itertools.takewhile(lambda t: t >= threshold, history[:max_restarts]))
    new_history = (stamp, *kept)
    return new_history, len(new_history) > max_restarts
