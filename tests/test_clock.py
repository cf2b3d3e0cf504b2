"""Injected clocks: FakeClock runs due timers on advance; the system timer thread ends when idle."""

from __future__ import annotations

import threading

import pytest

import dspex_actors as da
from dspex_actors.testing import FakeClock


def test_fake_clock_runs_due_timers_in_time_order_on_advance() -> None:
    clock = FakeClock(start=10.0)
    fired: list[tuple[str, float]] = []
    clock.call_later(2.0, lambda: fired.append(("late", clock.monotonic())))
    clock.call_later(1.0, lambda: fired.append(("early", clock.monotonic())))
    clock.advance(0.5)
    assert fired == []
    clock.advance(2.0)
    assert fired == [("early", 11.0), ("late", 12.0)]
    assert clock.monotonic() == 12.5


def test_fake_clock_skips_cancelled_timers_and_counts_pending() -> None:
    clock = FakeClock()
    fired: list[int] = []
    handle = clock.call_later(1.0, lambda: fired.append(1))
    clock.call_later(1.0, lambda: fired.append(2))
    assert clock.pending() == 2
    handle.cancel()
    assert clock.pending() == 1
    clock.advance(1.0)
    assert fired == [2]


def test_fake_clock_refuses_to_go_backwards() -> None:
    with pytest.raises(ValueError, match="cannot go backwards"):
        FakeClock().advance(-1)


def test_system_clock_runs_a_timer_once_its_delay_has_passed() -> None:
    clock = da.SystemClock()
    fired = threading.Event()
    clock.call_later(0.001, fired.set)
    assert fired.wait(5.0)


def test_cancelling_the_last_system_timer_ends_the_timer_thread_at_once() -> None:
    """A cancelled timer must not keep the dspex-timer thread alive until its deadline."""
    clock = da.SystemClock()
    handle = clock.call_later(3600.0, lambda: None)
    thread = clock._thread
    assert thread is not None
    assert thread.is_alive()
    handle.cancel()
    thread.join(5.0)
    assert not thread.is_alive()


def test_a_timer_too_far_away_to_wait_on_does_not_kill_the_shared_timer_thread() -> None:
    """A timer further away than the OS can wait on (`call_later(1e12)`, e.g. a pool's huge
    `worker_idle_timeout`) is waited for in parts: the shared timer thread stays alive and
    keeps running the other timers, and ends once that timer is cancelled."""
    clock = da.SystemClock()
    far = threading.Event()
    huge = clock.call_later(1e12, far.set)
    near = threading.Event()
    clock.call_later(0.0, near.set)
    assert near.wait(5)
    thread = clock._thread
    assert thread is not None
    thread.join(0.5)  # bounded: the thread is waiting for `huge`, it does not end
    assert thread.is_alive()
    later = threading.Event()
    clock.call_later(0.0, later.set)
    assert later.wait(5)
    huge.cancel()  # the only timer left: the thread exits
    thread.join(5)
    assert not thread.is_alive()
    assert not far.is_set()


def test_a_timer_callback_raising_system_exit_does_not_stop_later_timers() -> None:
    clock = da.SystemClock()
    fired = threading.Event()

    def bad() -> None:
        raise SystemExit(1)

    clock.call_later(0.0, bad)
    clock.call_later(0.001, fired.set)
    assert fired.wait(5.0)
