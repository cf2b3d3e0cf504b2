"""`add_restart`, the pure restart-intensity rule, at unit level.

White-box: `add_restart` (`dspex_actors._supervision._intensity`) has no public API; the
supervisor-level behaviour it decides is tested through `Supervisor` in
test_supervisor_intensity.py.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from dspex_actors._supervision._intensity import add_restart


def run(times: list[float], max_restarts: int, max_seconds: float) -> list[bool]:
    """Feed restart attempts at `times`; return whether each one exceeded the intensity."""
    history: tuple[float, ...] = ()
    out = []
    for now in times:
        history, exceeded = add_restart(history, now, max_restarts, max_seconds)
        out.append(exceeded)
    return out


def test_n_restarts_in_the_window_are_allowed_and_the_next_one_exceeds() -> None:
    assert run([10, 10, 10, 10], max_restarts=3, max_seconds=5) == [False, False, False, True]


def test_with_zero_intensity_the_first_restart_exceeds() -> None:
    assert run([10], max_restarts=0, max_seconds=5) == [True]


def test_timestamps_are_whole_seconds_and_the_window_is_inclusive() -> None:
    # 10.2 -> 10 and 11.9 -> 11: both inside a 1 s window (11 - 1 = 10 is kept).
    assert run([10.2, 11.9], max_restarts=1, max_seconds=1) == [False, True]
    # 12.1 -> 12: 10 falls out (10 < 12 - 1).
    assert run([10.2, 12.1], max_restarts=1, max_seconds=1) == [False, False]


def test_restarts_2_1_seconds_apart_never_exceed_one_per_second() -> None:
    times = [100 + 2.1 * i for i in range(20)]
    assert run(times, max_restarts=1, max_seconds=1) == [False] * 20


def test_old_entries_leave_the_history_and_the_history_is_newest_first() -> None:
    h1, _ = add_restart((), 10, 2, 5)
    h2, _ = add_restart(h1, 13, 2, 5)
    assert h2 == (13.0, 10.0)
    h3, exceeded3 = add_restart(h2, 16, 2, 5)
    assert (h3, exceeded3) == ((16, 13), False)  # 10 < 16 - 5 is dropped
    h4, exceeded4 = add_restart(h3, 18, 2, 5)
    assert (h4, exceeded4) == ((18, 16, 13), True)


def test_the_boundary_entry_exactly_period_seconds_old_is_kept() -> None:
    history, _ = add_restart((), 10, 1, 5)
    _, exceeded = add_restart(history, 15, 1, 5)
    assert exceeded
    _, exceeded = add_restart(history, 16, 1, 5)
    assert not exceeded


def test_a_fractional_period_uses_exact_timestamps() -> None:
    # Beyond OTP: max_seconds=0.5 keeps fractional times instead of flooring them.
    history, _ = add_restart((), 10.2, 1, 0.5)
    assert history == (10.2,)
    assert add_restart(history, 10.6, 1, 0.5)[1] is True
    assert add_restart(history, 10.8, 1, 0.5)[1] is False


def test_the_function_is_pure_and_does_not_change_its_input() -> None:
    history = (12.0, 11.0)
    add_restart(history, 13, 1, 5)
    assert history == (12.0, 11.0)


@given(
    gaps=st.lists(st.floats(min_value=0, max_value=4, allow_nan=False), max_size=30),
    max_restarts=st.integers(min_value=0, max_value=5),
    max_seconds=st.integers(min_value=1, max_value=6),
)
def test_add_restart_matches_a_naive_model_of_the_otp_rule(
    gaps: list[float], max_restarts: int, max_seconds: int
) -> None:
    """Model: exceeded iff more than N whole-second stamps fall in [now - P, now].

    The history keeps only the newest N + 1 stamps of the window: older ones cannot change
    any later decision, and keeping them made a long burst O(n) per restart.
    """
    now = 1000.0
    history: tuple[float, ...] = ()
    stamps: list[int] = []
    for gap in gaps:
        now += gap
        stamp = math.floor(now)
        stamps.append(stamp)
        history, exceeded = add_restart(history, now, max_restarts, max_seconds)
        in_window = [s for s in stamps if s >= stamp - max_seconds]
        assert exceeded == (len(in_window) > max_restarts)
        assert list(history) == sorted(in_window, reverse=True)[: max_restarts + 1]
