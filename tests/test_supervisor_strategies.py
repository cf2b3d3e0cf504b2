"""Restart strategies and child order, with exact lifecycle orderings."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import ChildSpec, Strategy
from dspex_actors.testing import gate, sync

from support.logs import EventLog
from support.supervision import (
    Crash,
    ExitWith,
    FlakyStart,
    Supervisors,
    counts,
    crash_and_settle,
    ids,
    probe_spec,
    ref_of,
)
from support.threads import queued_call


def refs(sup: da.Supervisor, names: str) -> list[pykka.ActorRef[Any]]:
    return [ref_of(sup, n) for n in names]


def test_one_for_one_restarts_only_the_crashed_child(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([probe_spec(n, log) for n in "ABC"], strategy=Strategy.ONE_FOR_ONE)
    a, b, c = refs(sup, "ABC")
    log.clear()
    crash_and_settle(sup, b)
    assert [e[:2] for e in log.events()] == [("stop", "B"), ("start", "B")]
    assert ref_of(sup, "A") is a
    assert ref_of(sup, "C") is c
    assert ref_of(sup, "B") is not b
    assert counts(sup) == (3, 3, 0, 3)


def test_one_for_all_stops_others_in_reverse_order_then_starts_all(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec(n, log) for n in "ABC"], strategy=Strategy.ONE_FOR_ALL)
    old = refs(sup, "ABC")
    log.clear()
    crash_and_settle(sup, old[1])
    events = log.events()
    assert isinstance(events[0][2], RuntimeError)
    assert events[1:] == [
        ("stop", "C", da.SHUTDOWN),
        ("stop", "A", da.SHUTDOWN),
        ("start", "A"),
        ("start", "B"),
        ("start", "C"),
    ]
    new = refs(sup, "ABC")
    assert all(n is not o for n, o in zip(new, old, strict=True))
    assert all(not o.is_alive() for o in old)


def test_rest_for_one_restarts_the_crashed_child_and_those_after_it(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec(n, log) for n in "ABC"], strategy=Strategy.REST_FOR_ONE)
    a, b, c = refs(sup, "ABC")
    log.clear()
    crash_and_settle(sup, b)
    assert [e[:2] for e in log.events()] == [
        ("stop", "B"),
        ("stop", "C"),
        ("start", "B"),
        ("start", "C"),
    ]
    assert log.events()[1][2] is da.SHUTDOWN
    assert ref_of(sup, "A") is a
    assert ref_of(sup, "B") is not b
    assert ref_of(sup, "C") is not c


def test_rest_for_one_order_of_children_is_exact(sups: Supervisors, log: EventLog) -> None:
    names = ["ch7", "ch3", "ch10", "ch2", "ch5"]
    sup = sups.start([probe_spec(n, log) for n in names], strategy="rest_for_one")
    assert log.names("start") == names
    before = {n: ref_of(sup, n) for n in names}
    log.clear()
    da.kill(before["ch10"])
    da.wait_exit(before["ch10"], 5)
    sync(sup.actor_ref)
    assert log.events() == [
        ("stop", "ch5", da.SHUTDOWN),
        ("stop", "ch2", da.SHUTDOWN),
        ("start", "ch10"),
        ("start", "ch2"),
        ("start", "ch5"),
    ]
    assert ref_of(sup, "ch7") is before["ch7"]
    assert ref_of(sup, "ch3") is before["ch3"]
    log.clear()
    sup.stop()
    assert log.names("stop") == list(reversed(names))  # exact reverse start order


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
def test_temporary_bystanders_are_removed_not_restarted_and_do_not_escalate(
    strategy: Strategy, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [probe_spec("a", log), probe_spec("tmp", log, restart="temporary"), probe_spec("c", log)],
        strategy=strategy,
        max_restarts=1,
    )
    log.clear()
    crash_and_settle(sup, ref_of(sup, "a"))
    assert ids(sup) == ["c", "a"]
    assert "tmp" not in log.names("start")
    assert ("stop", "tmp", da.SHUTDOWN) in log.events()
    assert counts(sup) == (2, 2, 0, 2)
    assert sup.is_alive()


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
def test_temporary_bystander_after_a_normal_exit_of_a_permanent_child(
    strategy: Strategy, sups: Supervisors, log: EventLog
) -> None:
    """OTP `temporary_bystander`: child1 exits normally; temporary child2 goes, nothing else."""
    sup = sups.start(
        [probe_spec("child1", log), probe_spec("child2", log, restart="temporary")],
        strategy=strategy,
    )
    crash_and_settle(sup, ref_of(sup, "child1"), ExitWith(da.NORMAL))
    assert ids(sup) == ["child1"]
    assert sup.is_alive()
    assert log.names("start") == ["child1", "child2", "child1"]


def test_one_for_all_also_starts_children_that_were_stopped(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [
            probe_spec("a", log),
            probe_spec("b", log),
            probe_spec("t", log, restart="transient"),
        ],
        strategy=Strategy.ONE_FOR_ALL,
    )
    sup.terminate_child("b")
    crash_and_settle(sup, ref_of(sup, "t"), ExitWith(da.NORMAL))  # transient: not restarted
    assert [c.ref for c in sup.which_children()][:2] == [None, None]
    log.clear()
    crash_and_settle(sup, ref_of(sup, "a"))
    assert log.names("start") == ["a", "b", "t"]
    assert counts(sup) == (3, 3, 0, 3)


def test_rest_for_one_also_starts_stopped_children_after_the_crashed_one(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [probe_spec("a", log), probe_spec("b", log), probe_spec("c", log)],
        strategy=Strategy.REST_FOR_ONE,
    )
    sup.terminate_child("a")
    sup.terminate_child("c")
    log.clear()
    crash_and_settle(sup, ref_of(sup, "b"))
    assert log.names("start") == ["b", "c"]  # "a" is before "b": left stopped
    assert [(c.id, c.ref is None) for c in sup.which_children()] == [
        ("c", False),
        ("b", False),
        ("a", True),
    ]


def test_one_for_all_a_sibling_failing_to_restart_makes_the_retry_stop_and_restart_all(
    sups: Supervisors, log: EventLog
) -> None:
    child2 = FlakyStart("child2", log, fail_calls=frozenset({2}))
    sup = sups.start(
        [probe_spec("child1", log), ChildSpec("child2", child2)], strategy=Strategy.ONE_FOR_ALL
    )
    log.clear()
    crash_and_settle(sup, ref_of(sup, "child1"))
    sync(sup.actor_ref)  # the retry was queued while the exit was handled: now it has run
    events = log.events()
    assert events[0][:2] == ("stop", "child1")
    assert events[1:] == [
        ("stop", "child2", da.SHUTDOWN),
        ("start", "child1"),
        ("start_failed", "child2"),
        ("stop", "child1", da.SHUTDOWN),  # the freshly restarted child1 is terminated again
        ("start", "child1"),
        ("start", "child2"),
    ]
    assert counts(sup) == (2, 2, 0, 2)


def test_rest_for_one_retry_starts_from_the_failed_child_and_shows_restarting(
    sups: Supervisors, log: EventLog
) -> None:
    child2 = FlakyStart("child2", log, fail_calls=frozenset({2}))
    sup = sups.start(
        [probe_spec("child1", log), ChildSpec("child2", child2), probe_spec("child3", log)],
        strategy=Strategy.REST_FOR_ONE,
    )
    child1 = ref_of(sup, "child1")
    log.clear()
    with gate(sup.actor_ref) as g:
        child1.tell(Crash())
        da.wait_exit(child1, 5)
        # Both asks queue behind the exit signal and ahead of the retry it will queue.
        snapshot = queued_call(sup.actor_ref, lambda: sup.which_children(timeout=5))
        snap_counts = queued_call(sup.actor_ref, lambda: sup.count_children(timeout=5))
        g.release()
    infos = snapshot.result(timeout=5)
    assert [c.id for c in infos] == ["child3", "child2", "child1"]
    assert infos[0].ref is None
    assert infos[1].ref is da.RESTARTING
    assert isinstance(infos[2].ref, pykka.ActorRef)
    assert snap_counts.result(timeout=5) == da.ChildCounts(
        specs=3, active=1, supervisors=0, workers=3
    )
    restarted_child1 = infos[2].ref
    sync(sup.actor_ref)
    assert log.events()[1:] == [
        ("stop", "child3", da.SHUTDOWN),
        ("stop", "child2", da.SHUTDOWN),
        ("start", "child1"),
        ("start_failed", "child2"),
        ("start", "child2"),  # the retry starts from child2 ...
        ("start", "child3"),
    ]
    assert ref_of(sup, "child1") is restarted_child1  # ... and child1 is not restarted again
    assert counts(sup) == (3, 3, 0, 3)


def test_a_child_added_with_start_child_comes_last_in_start_order(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log), probe_spec("b", log)], strategy="rest_for_one")
    sup.start_child(probe_spec("c", log))
    assert ids(sup) == ["c", "b", "a"]
    a = ref_of(sup, "a")
    log.clear()
    crash_and_settle(sup, ref_of(sup, "b"))
    assert log.names("start") == ["b", "c"]  # "c" counts as after "b"
    assert ref_of(sup, "a") is a
    log.clear()
    sup.stop()
    assert log.names("stop") == ["c", "b", "a"]  # and it is stopped first


def test_which_children_lists_newest_first(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([probe_spec(n, log) for n in ["x", "y", "z"]])
    sup.start_child(probe_spec("w", log))
    infos = sup.which_children()
    assert [c.id for c in infos] == ["w", "z", "y", "x"]
    assert all(c.type is da.ChildType.WORKER for c in infos)
    assert all(isinstance(c.ref, pykka.ActorRef) for c in infos)
    # A restart keeps a child's place in the order.
    crash_and_settle(sup, ref_of(sup, "y"))
    assert ids(sup) == ["w", "z", "y", "x"]
