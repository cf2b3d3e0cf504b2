"""Supervisor startup: order, init failures, ignore, handle returns."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import ChildSpec, Restart

from support.logs import EventLog
from support.supervision import (
    FlakyStart,
    Ping,
    Probe,
    Supervisors,
    counts,
    crash_and_settle,
    ids,
    probe_spec,
    ref_of,
)


class FailsInOnStart(da.Actor):
    def on_start(self) -> None:
        raise ValueError("no database")


def returns_garbage() -> Any:
    return 42


def ignore() -> None:
    return None


def test_children_start_left_to_right_and_start_returns_after_all_started(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec(n, log) for n in ["ch7", "ch3", "ch10"]])
    # Every on_start has run by the time start() returns: no waiting needed.
    assert log.events() == [("start", "ch7"), ("start", "ch3"), ("start", "ch10")]
    for n in ["ch7", "ch3", "ch10"]:
        assert ref_of(sup, n).ask(Ping(), timeout=5) == ("pong", n)
    assert counts(sup) == (3, 3, 0, 3)


def test_a_failed_child_stops_the_earlier_ones_in_reverse_order_and_names_the_child(
    log: EventLog,
) -> None:
    before = len(pykka.ActorRegistry.get_all())
    flaky = FlakyStart("c", log, fail_first=1)
    specs = [
        probe_spec("a", log),
        probe_spec("b", log),
        ChildSpec("c", flaky),
        probe_spec("d", log),
    ]
    with pytest.raises(da.SupervisorStartError, match="failed to start child 'c'") as info:
        da.Supervisor.start(specs)
    assert info.value.child_id == "c"
    assert isinstance(info.value.reason, RuntimeError)
    assert "c cannot start" in str(info.value.reason)
    assert log.events() == [
        ("start", "a"),
        ("start", "b"),
        ("start_failed", "c"),
        ("stop", "b", da.SHUTDOWN),
        ("stop", "a", da.SHUTDOWN),
    ]
    assert len(pykka.ActorRegistry.get_all()) == before  # the supervisor is gone too


def test_an_on_start_failure_is_reported_with_the_original_exception(log: EventLog) -> None:
    specs = [probe_spec("a", log), FailsInOnStart.child_spec(id="db")]
    with pytest.raises(da.SupervisorStartError) as info:
        da.Supervisor.start(specs)
    assert info.value.child_id == "db"
    assert isinstance(info.value.reason, ValueError)
    assert str(info.value.reason) == "no database"
    assert log.events() == [("start", "a"), ("stop", "a", da.SHUTDOWN)]


def test_a_start_function_returning_garbage_is_a_start_failure(log: EventLog) -> None:
    with pytest.raises(da.SupervisorStartError) as info:
        da.Supervisor.start([probe_spec("a", log), ChildSpec("bad", returns_garbage)])
    assert info.value.child_id == "bad"
    assert isinstance(info.value.reason, da.BadStartReturn)
    assert "returned 42" in str(info.value.reason)
    assert log.kinds("stop") == [("a", da.SHUTDOWN)]


def test_the_first_child_failing_starts_nothing(log: EventLog) -> None:
    with pytest.raises(da.SupervisorStartError) as info:
        da.Supervisor.start(
            [ChildSpec("x", FlakyStart("x", log, fail_first=9)), probe_spec("a", log)]
        )
    assert info.value.child_id == "x"
    assert log.events() == [("start_failed", "x")]


def test_ignore_keeps_a_permanent_or_transient_spec_without_a_ref(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [
            ChildSpec("perm", ignore),
            ChildSpec("trans", ignore, restart=Restart.TRANSIENT),
            probe_spec("a", log),
        ]
    )
    assert [(c.id, c.ref) for c in sup.which_children()][1:] == [("trans", None), ("perm", None)]
    assert counts(sup) == (3, 1, 0, 3)


def test_ignore_discards_a_temporary_spec(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([ChildSpec("tmp", ignore, restart="temporary"), probe_spec("a", log)])
    assert ids(sup) == ["a"]
    assert counts(sup) == (1, 1, 0, 1)


def test_start_child_returning_ignore_returns_none_and_keeps_only_non_temporary_specs(
    sups: Supervisors,
) -> None:
    sup = sups.start([])
    assert sup.start_child(ChildSpec("perm", ignore)) is None
    assert sup.start_child(ChildSpec("tmp", ignore, restart="temporary")) is None
    assert [(c.id, c.ref) for c in sup.which_children()] == [("perm", None)]
    assert counts(sup) == (1, 0, 0, 1)
    sup.stop()
    assert sup.wait(5) is da.SHUTDOWN  # a later shutdown with an ignored child is clean


class Wrapper:
    """A handle-like result: the supervisor takes `actor_ref` from it (OTP's `{ok, Pid, Info}`)."""

    def __init__(self, ref: pykka.ActorRef[Any], info: str) -> None:
        self.actor_ref = ref
        self.info = info


def start_wrapped(name: str, log: EventLog) -> Wrapper:
    return Wrapper(Probe.start(name, log), "extra")


def test_a_start_returning_a_handle_is_supervised_through_its_actor_ref(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([])
    spec = ChildSpec("w", start_wrapped, args=("w", log))
    ref = sup.start_child(spec)
    assert isinstance(ref, pykka.ActorRef)
    assert ref_of(sup, "w") is ref
    crash_and_settle(sup, ref)
    new = ref_of(sup, "w")
    assert new is not ref
    assert new.ask(Ping(), timeout=5) == ("pong", "w")
    sup.terminate_child("w")
    restarted = sup.restart_child("w")
    assert isinstance(restarted, pykka.ActorRef)
    assert ref_of(sup, "w") is restarted


def test_a_supervisor_child_starts_its_own_children_before_the_next_sibling(
    sups: Supervisors, log: EventLog
) -> None:
    inner = da.Supervisor.child_spec("inner", [probe_spec("i1", log), probe_spec("i2", log)])
    sups.start([probe_spec("a", log), inner, probe_spec("b", log)])
    assert log.names("start") == ["a", "i1", "i2", "b"]


def test_starting_a_supervisor_under_a_taken_name_raises_name_taken(log: EventLog) -> None:
    holder = Probe.start("holder", log)
    try:
        da.register("startup-taken-name", holder)
        before = len(pykka.ActorRegistry.get_all())
        with pytest.raises(
            da.NameTaken, match="'startup-taken-name' is already registered"
        ) as info:
            da.Supervisor.start([probe_spec("a", log)], name="startup-taken-name")
        assert isinstance(info.value, da.AlreadyStarted)
        assert info.value.ref is holder
        assert log.names("start") == ["holder"]  # no child was started
        assert len(pykka.ActorRegistry.get_all()) == before
    finally:
        holder.stop()


def test_a_named_supervisor_is_found_by_name_and_frees_it_when_stopped(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log)], name="startup-freed-name")
    assert da.whereis("startup-freed-name") is sup.actor_ref
    sup.stop()
    assert da.whereis("startup-freed-name") is None
    dyn = sups.dynamic(name="startup-freed-name")  # the name is free again
    assert da.whereis("startup-freed-name") is dyn.actor_ref
    with pytest.raises(da.NameTaken):
        da.DynamicSupervisor.start(name="startup-freed-name")
