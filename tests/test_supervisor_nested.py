"""Supervision trees: nested supervisors, escalation, OTP's `tree` test, linking to the caller."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import ChildSpec, Strategy
from dspex_actors.testing import FakeClock, sync

from support.logs import EventLog
from support.supervision import (
    Crash,
    FlakyStart,
    Probe,
    Supervisors,
    counts,
    crash_and_settle,
    ids,
    probe_spec,
    ref_of,
)


def sub(parent: da.Supervisor, child_id: str) -> da.Supervisor:
    return da.Supervisor.from_ref(ref_of(parent, child_id))


def test_otp_tree_escalation_restarts_every_sub_supervisor_under_one_for_all(
    sups: Supervisors, log: EventLog
) -> None:
    """OTP `tree`: a one_for_all top over three one_for_one sub-supervisors."""
    clock = FakeClock()
    flaky = FlakyStart("w2", log, fail_calls=frozenset({2, 3}))  # its first restarts fail
    top = sups.start(
        [
            da.Supervisor.child_spec("sub1", [probe_spec("w1", log)], clock=clock),
            da.Supervisor.child_spec("sub2", [ChildSpec("w2", flaky)], max_restarts=1, clock=clock),
            da.Supervisor.child_spec(
                "sub3", [probe_spec("w3", log)], restart="transient", clock=clock
            ),
        ],
        strategy=Strategy.ONE_FOR_ALL,
        clock=clock,
    )
    assert counts(top) == (3, 3, 3, 0)
    sub1 = sub(top, "sub1")
    sub1.start_child(probe_spec("extra", log))  # a dynamically added grandchild
    assert counts(sub1) == (2, 2, 0, 2)
    top.terminate_child("sub3")
    assert counts(top) == (3, 2, 3, 0)

    # A worker crash restarts only that worker.
    old_sub1 = sub1.actor_ref
    w1 = ref_of(sub1, "w1")
    crash_and_settle(sub1, w1)
    assert ref_of(sub1, "w1") is not w1
    assert ref_of(top, "sub1") is old_sub1

    # sub2's worker cannot restart: sub2 escalates; the top restarts every sub-supervisor.
    sub2_ref = ref_of(top, "sub2")
    ref_of(sub(top, "sub2"), "w2").tell(Crash())
    assert da.wait_exit(sub2_ref, 5) is da.SHUTDOWN
    sync(top.actor_ref)
    assert counts(top) == (3, 3, 3, 0)  # the terminated transient sub3 is back too
    assert ref_of(top, "sub1") is not old_sub1
    assert ids(sub(top, "sub1")) == ["w1"]  # the dynamically added grandchild is gone
    assert counts(sub(top, "sub2")) == (1, 1, 0, 1)
    assert counts(sub(top, "sub3")) == (1, 1, 0, 1)


def test_stopping_the_top_stops_the_tree_depth_first_in_reverse_order(
    sups: Supervisors, log: EventLog
) -> None:
    top = sups.start(
        [
            probe_spec("a", log),
            da.Supervisor.child_spec("mid", [probe_spec("m1", log), probe_spec("m2", log)]),
            probe_spec("z", log),
        ]
    )
    log.clear()
    top.stop()
    assert log.names("stop") == ["z", "m2", "m1", "a"]
    assert top.wait(5) is da.SHUTDOWN


def test_a_dynamic_supervisor_nested_under_a_supervisor_is_restarted_empty(
    sups: Supervisors, log: EventLog
) -> None:
    top = sups.start([da.DynamicSupervisor.child_spec("dyn", max_children=2)])
    dyn_ref = ref_of(top, "dyn")
    dyn = da.DynamicSupervisor.from_ref(dyn_ref)
    child = dyn.start_child(probe_spec("p", log))
    assert isinstance(child, pykka.ActorRef)
    da.kill(dyn_ref)
    assert da.wait_exit(dyn_ref, 5) is da.KILLED
    assert da.wait_exit(child, 5) is da.KILLED  # its link took the child down with it
    sync(top.actor_ref)
    new_dyn = da.DynamicSupervisor.from_ref(ref_of(top, "dyn"))
    assert new_dyn.actor_ref is not dyn_ref
    assert new_dyn.count_children() == da.ChildCounts(0, 0, 0, 0)
    assert top.get_childspec("dyn").type is da.ChildType.SUPERVISOR


def test_a_child_supervisor_stopped_by_its_parent_stops_its_own_children_first(
    sups: Supervisors, log: EventLog
) -> None:
    top = sups.start([da.Supervisor.child_spec("inner", [probe_spec(n, log) for n in "xyz"])])
    inner = ref_of(top, "inner")
    log.clear()
    top.terminate_child("inner")
    assert da.wait_exit(inner, 5) is da.SHUTDOWN
    assert log.names("stop") == ["z", "y", "x"]


class Owner(da.Actor):
    """An actor that starts a supervisor in its `on_start` (as an application would)."""

    def __init__(self, children: list[da.ChildSpec]) -> None:
        super().__init__()
        self.children = children
        self.sup: da.Supervisor | None = None
        self.error: Exception | None = None

    def on_start(self) -> None:
        try:
            self.sup = da.Supervisor.start(self.children, max_restarts=0)
        except da.SupervisorStartError as exc:
            self.error = exc

    def on_receive(self, message: Any) -> Any:
        if message == "state":
            return (self.sup, self.error)
        return None


def test_a_supervisor_that_fails_to_start_sends_no_exit_signal_to_its_caller(
    log: EventLog,
) -> None:
    """A failed start is an error for the caller, not an exit signal."""
    owner = Owner.start([probe_spec("a", log), ChildSpec("bad", FlakyStart("bad", log, 1))])
    try:
        sup, error = owner.ask("state", timeout=5)
        assert sup is None
        assert isinstance(error, da.SupervisorStartError)
        assert error.child_id == "bad"
        sync(owner)
        assert owner.is_alive()
    finally:
        owner.stop()
    assert da.wait_exit(owner, 5) is da.NORMAL


def test_a_supervisor_giving_up_takes_its_linked_caller_down_with_shutdown(
    log: EventLog,
) -> None:
    owner = Owner.start([probe_spec("a", log)])
    sup, _ = owner.ask("state", timeout=5)
    assert isinstance(sup, da.Supervisor)
    ref_of(sup, "a").tell(Crash())  # max_restarts=0: the supervisor gives up
    assert sup.wait(5) is da.SHUTDOWN
    assert da.wait_exit(owner, 5) is da.SHUTDOWN  # start_link semantics: SHUTDOWN propagates


def test_a_supervisor_exits_with_its_caller_even_when_the_caller_stops_normally(
    log: EventLog,
) -> None:
    """gen_server's rule: a trapping process exits when its parent does, for any reason."""
    owner = Owner.start([probe_spec("a", log), probe_spec("b", log)])
    sup, _ = owner.ask("state", timeout=5)
    assert isinstance(sup, da.Supervisor)
    owner.stop()
    assert da.wait_exit(owner, 5) is da.NORMAL
    assert sup.wait(5) is da.NORMAL
    assert log.kinds("stop") == [("b", da.SHUTDOWN), ("a", da.SHUTDOWN)]


def test_a_supervisor_whose_parent_is_killed_still_shuts_its_children_down_in_order(
    log: EventLog,
) -> None:
    owner = Owner.start([probe_spec("a", log), probe_spec("b", log)])
    sup, _ = owner.ask("state", timeout=5)
    assert isinstance(sup, da.Supervisor)
    da.kill(owner)
    assert sup.wait(5) is da.KILLED
    assert log.kinds("stop") == [("b", da.SHUTDOWN), ("a", da.SHUTDOWN)]


def test_a_killed_parent_supervisor_takes_a_child_supervisor_tree_down_in_order(
    log: EventLog,
) -> None:
    top = da.Supervisor.start(
        [
            probe_spec("w", log),
            da.Supervisor.child_spec("inner", [probe_spec(n, log) for n in "xy"]),
        ]
    )
    inner = ref_of(top, "inner")
    w = ref_of(top, "w")
    da.kill(top.actor_ref)
    assert top.wait(5) is da.KILLED
    assert da.wait_exit(inner, 5) is da.KILLED
    assert da.wait_exit(w, 5) is da.KILLED  # a non-trapping worker dies with the link
    inner_stops = [e for e in log.kinds("stop") if e[0] in ("x", "y")]
    assert inner_stops == [("y", da.SHUTDOWN), ("x", da.SHUTDOWN)]
    assert ("w", da.KILLED) in log.kinds("stop")  # a KILLED signal is not a kill: on_stop ran


@pytest.mark.parametrize("restart", ["permanent", "transient"])
def test_an_escalating_child_supervisor_reports_shutdown_to_its_parent(
    restart: str, sups: Supervisors, log: EventLog
) -> None:
    clock = FakeClock()
    seen: list[Any] = []
    down = threading.Event()
    inner = da.Supervisor.child_spec(
        "inner", [probe_spec("w", log)], restart=restart, max_restarts=0, clock=clock
    )
    top = sups.start([inner], clock=clock)
    inner_ref = ref_of(top, "inner")

    def on_down(d: da.Down) -> None:
        seen.append(d.reason)
        down.set()

    da.monitor(inner_ref, on_down)
    ref_of(sub(top, "inner"), "w").tell(Crash())
    assert down.wait(5)
    assert seen == [da.SHUTDOWN]
    sync(top.actor_ref)
    restarted = top.which_child("inner").ref
    if restart == "permanent":
        assert isinstance(restarted, pykka.ActorRef)
        assert restarted is not inner_ref
    else:
        assert restarted is None


def test_plain_probe_start_in_a_spec_is_a_worker(sups: Supervisors, log: EventLog) -> None:
    top = sups.start([ChildSpec("p", Probe.start, args=("p", log))])
    assert top.which_child("p").type is da.ChildType.WORKER
