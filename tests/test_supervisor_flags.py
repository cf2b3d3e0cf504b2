"""Supervisor options and the child list: defaults, validation before anything starts.

OTP's supervisor flags and Elixir's `Supervisor.start_link/2` options, mapped to
`Supervisor.start(children, *, ...)`.
"""

from __future__ import annotations

import math
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import AutoShutdown, ChildSpec, Restart, Strategy
from dspex_actors.testing import FakeClock

from support.logs import EventLog
from support.supervision import (
    Crash,
    Probe,
    Supervisors,
    counts,
    crash_and_settle,
    ids,
    probe_spec,
    ref_of,
)


def live_actor_count() -> int:
    return len(pykka.ActorRegistry.get_all())


def assert_nothing_started(before: int, log: EventLog) -> None:
    assert live_actor_count() == before
    assert log.events() == []


def test_default_strategy_is_one_for_one_and_auto_shutdown_never(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec(n, log) for n in "abc"])
    a, b, c = (ref_of(sup, n) for n in "abc")
    crash_and_settle(sup, b)
    assert ref_of(sup, "a") is a
    assert ref_of(sup, "c") is c
    assert ref_of(sup, "b") is not b
    # auto_shutdown NEVER: a significant child is refused.
    with pytest.raises(da.ChildSpecError, match="NEVER"):
        sup.start_child(probe_spec("s", log, restart="transient", significant=True))


def test_default_intensity_is_3_restarts_in_5_seconds(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    sup = sups.start([probe_spec("a", log)], clock=clock)
    for _ in range(3):
        crash_and_settle(sup, ref_of(sup, "a"))
    assert sup.is_alive()
    clock.advance(5.0)  # the first restart was at t=100; at 105 it is still in the window
    ref_of(sup, "a").tell(Crash())
    assert sup.wait(5) is da.SHUTDOWN


def test_default_window_lets_a_restart_after_6_seconds_through(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    sup = sups.start([probe_spec("a", log)], clock=clock)
    for _ in range(3):
        crash_and_settle(sup, ref_of(sup, "a"))
    clock.advance(6.0)
    crash_and_settle(sup, ref_of(sup, "a"))
    assert sup.is_alive()
    assert counts(sup) == (1, 1, 0, 1)


@pytest.mark.parametrize("value", [-1, 1.5, "3", None, True, math.inf])
def test_an_invalid_max_restarts_is_rejected_before_anything_starts(
    value: Any, log: EventLog
) -> None:
    before = live_actor_count()
    with pytest.raises(da.InvalidOption, match="max_restarts must be an integer >= 0") as info:
        da.Supervisor.start([probe_spec("a", log)], max_restarts=value)
    assert (info.value.option, info.value.code) == ("max_restarts", "invalid_intensity")
    assert repr(value) in str(info.value)
    assert_nothing_started(before, log)


@pytest.mark.parametrize("value", [0, -5, math.inf, math.nan, "5", None, True])
def test_an_invalid_max_seconds_is_rejected_before_anything_starts(
    value: Any, log: EventLog
) -> None:
    before = live_actor_count()
    with pytest.raises(da.InvalidOption, match="max_seconds must be a finite number") as info:
        da.Supervisor.start([probe_spec("a", log)], max_seconds=value)
    assert (info.value.option, info.value.code) == ("max_seconds", "invalid_period")
    assert repr(value) in str(info.value)
    assert_nothing_started(before, log)


def test_zero_max_restarts_and_fractional_max_seconds_are_accepted(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log)], max_restarts=0, max_seconds=0.5)
    assert sup.is_alive()


@pytest.mark.parametrize("value", ["simple_one_for_one", "bogus", 1, None])
def test_an_unknown_strategy_is_rejected(value: Any, log: EventLog) -> None:
    before = live_actor_count()
    with pytest.raises(da.InvalidOption, match=f"strategy must be one of .*got: {value!r}") as info:
        da.Supervisor.start([probe_spec("a", log)], strategy=value)
    assert info.value.code == "invalid_strategy"
    assert_nothing_started(before, log)


@pytest.mark.parametrize("value", ["sometimes", 0, None])
def test_an_unknown_auto_shutdown_is_rejected(value: Any, log: EventLog) -> None:
    before = live_actor_count()
    with pytest.raises(da.InvalidOption, match=f"auto_shutdown must be one of .*{value!r}") as info:
        da.Supervisor.start([probe_spec("a", log)], auto_shutdown=value)
    assert info.value.code == "invalid_auto_shutdown"
    assert_nothing_started(before, log)


def test_strategy_and_auto_shutdown_accept_their_names_as_strings(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [probe_spec("a", log, restart="temporary", significant=True)],
        strategy="rest_for_one",
        auto_shutdown="ANY_SIGNIFICANT",
    )
    assert ids(sup) == ["a"]


def test_an_invalid_clock_is_rejected(log: EventLog) -> None:
    with pytest.raises(da.InvalidOption, match=r"clock must be a Clock.*got: 12"):
        da.Supervisor.start([probe_spec("a", log)], clock=12)  # type: ignore[arg-type]
    assert log.events() == []


def test_unknown_options_are_rejected_not_ignored(log: EventLog) -> None:
    """Deliberately different from OTP (which ignores unknown flag keys): a typo must not pass."""
    with pytest.raises(TypeError, match="intensity"):
        da.Supervisor.start([probe_spec("a", log)], intensity=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="modules"):
        ChildSpec("a", Probe.start, modules=["x"])  # type: ignore[call-arg]
    assert log.events() == []


def test_strategy_is_optional_and_defaults_to_one_for_one(sups: Supervisors, log: EventLog) -> None:
    """Elixir requires `:strategy`; here it is a keyword with OTP's default, one_for_one."""
    sup = sups.start([probe_spec("a", log)])
    assert sup.is_alive()


@pytest.mark.parametrize(
    "bad",
    [("a", Probe.start), Probe, "a", None, {"id": "a", "start": Probe.start}],
)
def test_a_child_that_is_not_a_child_spec_is_rejected_before_anything_starts(
    bad: Any, log: EventLog
) -> None:
    before = live_actor_count()
    with pytest.raises(da.ChildSpecError, match=r"must be a ChildSpec .*got: ") as info:
        da.Supervisor.start([probe_spec("a", log), bad])
    assert info.value.code == "invalid_child_spec"
    assert info.value.value is bad
    assert_nothing_started(before, log)


@pytest.mark.parametrize("children", ["ab", 3, probe_spec("a", EventLog())])
def test_children_that_are_not_a_list_are_rejected_as_badarg(children: Any) -> None:
    with pytest.raises(da.ChildSpecError, match="children must be a list") as info:
        da.Supervisor.start(children)
    assert info.value.code == "badarg"


def test_duplicate_child_ids_are_rejected_before_anything_starts(log: EventLog) -> None:
    before = live_actor_count()
    with pytest.raises(da.DuplicateChildId, match="duplicate child id 'a'") as info:
        da.Supervisor.start([probe_spec("a", log), probe_spec("b", log), probe_spec("a", log)])
    assert info.value.child_id == "a"
    assert_nothing_started(before, log)


def test_a_significant_child_under_auto_shutdown_never_is_rejected_at_start(
    log: EventLog,
) -> None:
    before = live_actor_count()
    spec = probe_spec("s", log, restart=Restart.TRANSIENT, significant=True)
    with pytest.raises(da.ChildSpecError, match="'s' is significant") as info:
        da.Supervisor.start([probe_spec("a", log), spec])
    assert info.value.code == "bad_combination"
    assert_nothing_started(before, log)


def test_a_significant_child_under_auto_shutdown_never_is_rejected_at_start_child(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([])
    with pytest.raises(da.ChildSpecError, match="significant") as info:
        sup.start_child(probe_spec("s", log, restart="temporary", significant=True))
    assert info.value.code == "bad_combination"
    assert ids(sup) == []
    assert log.events() == []


def test_start_child_with_something_that_is_not_a_spec_raises_in_the_caller(
    sups: Supervisors,
) -> None:
    sup = sups.start([])
    with pytest.raises(da.ChildSpecError, match="must be a ChildSpec") as info:
        sup.start_child(("a", Probe.start))  # type: ignore[arg-type]
    assert info.value.code == "invalid_child_spec"
    assert sup.is_alive()


def test_an_empty_supervisor_starts_and_stops_with_shutdown(sups: Supervisors) -> None:
    sup = sups.start([], strategy=Strategy.ONE_FOR_ONE, max_restarts=2, max_seconds=3600)
    assert counts(sup) == (0, 0, 0, 0)
    sup.stop()
    assert sup.wait(5) is da.SHUTDOWN
    assert not sup.is_alive()


def test_options_under_auto_shutdown_modes_accept_significant_children(
    sups: Supervisors, log: EventLog
) -> None:
    for mode in (AutoShutdown.ANY_SIGNIFICANT, AutoShutdown.ALL_SIGNIFICANT):
        sup = sups.start(
            [probe_spec("s", log, restart="transient", significant=True)], auto_shutdown=mode
        )
        assert sup.get_childspec("s").significant is True


def test_children_may_be_any_iterable_such_as_a_generator(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start(probe_spec(n, log) for n in "abc")
    assert ids(sup) == ["c", "b", "a"]
    nested = da.Supervisor.child_spec("t", (probe_spec(n, log) for n in "xy"))
    sup.start_child(nested)
    assert ids(da.Supervisor.from_ref(ref_of(sup, "t"))) == ["y", "x"]


@pytest.mark.parametrize("children", [3, "ab", None])
def test_supervisor_child_spec_with_children_that_are_not_a_list_is_badarg(children: Any) -> None:
    with pytest.raises(da.ChildSpecError, match="children must be a list") as info:
        da.Supervisor.child_spec("t", children)
    assert info.value.code == "badarg"


def test_supervisor_child_spec_validates_its_clock_now() -> None:
    with pytest.raises(da.InvalidOption, match=r"clock must be a Clock.*got: 'now'"):
        da.Supervisor.child_spec("t", [], clock="now")


@pytest.mark.parametrize("name", [True, False, ["sup"]])
def test_an_invalid_supervisor_name_is_rejected_before_anything_starts(
    name: Any, log: EventLog
) -> None:
    before = live_actor_count()
    with pytest.raises(da.InvalidOption, match="name must be") as info:
        da.Supervisor.start([probe_spec("a", log)], name=name)
    assert (info.value.option, info.value.code) == ("name", "invalid_name")
    with pytest.raises(da.InvalidOption, match="name must be"):
        da.DynamicSupervisor.start(name=name)
    assert_nothing_started(before, log)
