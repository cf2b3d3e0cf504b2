"""Restart intensity inside a running supervisor, on a `FakeClock`."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import ChildSpec, Strategy
from dspex_actors.testing import FakeClock, gate, sync

from support.logs import EventLog, Records
from support.supervision import (
    Crash,
    ExitWith,
    FlakyStart,
    Supervisors,
    counts,
    crash_and_settle,
    probe_spec,
    ref_of,
)
from support.threads import queued_call


def crash(sup: da.Supervisor, child_id: Any) -> None:
    crash_and_settle(sup, ref_of(sup, child_id))


def test_n_restarts_in_the_window_survive_and_restart_n_plus_1_exits_before_restarting(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    sup = sups.start(
        [probe_spec("a", log), probe_spec("b", log)], max_restarts=2, max_seconds=10, clock=clock
    )
    crash(sup, "a")
    clock.advance(4)
    crash(sup, "a")
    clock.advance(6)  # t=110: the restart at t=100 is still inside [100, 110]
    assert sup.is_alive()
    log.clear()
    ref_of(sup, "a").tell(Crash())
    assert sup.wait(5) is da.SHUTDOWN
    # No restart was attempted: "a" never started again; "b" was shut down.
    assert log.events() == [("stop", "a", log.kinds("stop")[0][1]), ("stop", "b", da.SHUTDOWN)]
    assert isinstance(log.kinds("stop")[0][1], RuntimeError)


def test_with_max_restarts_zero_the_first_crash_ends_the_supervisor(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    sup = sups.start([probe_spec("a", log)], max_restarts=0, clock=clock)
    ref_of(sup, "a").tell(Crash())
    assert sup.wait(5) is da.SHUTDOWN
    assert log.names("start") == ["a"]


def test_a_child_that_is_not_restarted_does_not_count(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    sup = sups.start(
        [probe_spec("t", log, restart="transient"), probe_spec("tmp", log, restart="temporary")],
        max_restarts=0,
        clock=clock,
    )
    crash_and_settle(sup, ref_of(sup, "t"), ExitWith(da.NORMAL))
    crash(sup, "tmp")
    assert sup.is_alive()
    assert counts(sup) == (1, 0, 0, 1)


def test_crashes_2_1_seconds_apart_never_exceed_one_restart_per_second(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    sup = sups.start([probe_spec("a", log)], max_restarts=1, max_seconds=1, clock=clock)
    for _ in range(5):
        crash(sup, "a")
        clock.advance(2.1)
    assert sup.is_alive()
    assert log.names("start") == ["a"] * 6


def test_the_window_is_inclusive_in_whole_seconds(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    clock.advance(0.2)  # t=100.2 -> second 100
    sup = sups.start([probe_spec("a", log)], max_restarts=1, max_seconds=1, clock=clock)
    crash(sup, "a")
    clock.advance(1.7)  # t=101.9 -> second 101: 100 >= 101 - 1 is still inside
    ref_of(sup, "a").tell(Crash())
    assert sup.wait(5) is da.SHUTDOWN


def test_a_one_for_all_restart_of_three_children_counts_once(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    sup = sups.start(
        [probe_spec(n, log) for n in "abc"],
        strategy=Strategy.ONE_FOR_ALL,
        max_restarts=1,
        clock=clock,
    )
    crash(sup, "b")
    assert sup.is_alive()  # three restarts, one entry
    assert counts(sup) == (3, 3, 0, 3)
    ref_of(sup, "c").tell(Crash())  # the second entry exceeds 1
    assert sup.wait(5) is da.SHUTDOWN


def test_failed_restarts_count_are_marked_restarting_and_are_retried_until_escalation(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    flaky = FlakyStart("a", log, fail_from=2)  # the first start works, every restart fails
    sup = sups.start([ChildSpec("a", flaky)], max_restarts=3, clock=clock)
    a = ref_of(sup, "a")
    with gate(sup.actor_ref) as g:
        a.tell(Crash())
        da.wait_exit(a, 5)  # its exit signal is now queued behind the gate
        # Queued behind the exit signal, ahead of the retry the failed restart will queue.
        snapshot = queued_call(sup.actor_ref, lambda: sup.which_children(timeout=5))
        g.release()
    children = snapshot.result(timeout=5)
    assert [(c.id, c.ref) for c in children] == [("a", da.RESTARTING)]
    assert sup.wait(5) is da.SHUTDOWN
    # Attempts 1..3 failed; the 4th exceeded the intensity before calling start.
    assert log.names("start_failed") == ["a", "a", "a"]
    assert flaky.calls == 4


def test_a_stop_queued_between_retries_is_served_before_the_next_retry(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    flaky = FlakyStart("a", log, fail_from=2)
    sup = sups.start([ChildSpec("a", flaky)], max_restarts=100, clock=clock)
    a = ref_of(sup, "a")
    with gate(sup.actor_ref) as g:
        a.tell(Crash())
        da.wait_exit(a, 5)
        stopped = queued_call(sup.actor_ref, lambda: sup.stop(da.Shutdown("test"), timeout=10))
        g.release()
    stopped.result(timeout=10)
    assert sup.wait(5) == da.Shutdown("test")
    assert log.names("start_failed") == ["a"]  # one failed attempt, then the stop


def test_api_calls_are_served_while_a_child_keeps_failing_to_restart(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    flaky = FlakyStart("a", log, fail_from=2)
    sup = sups.start([probe_spec("b", log), ChildSpec("a", flaky)], max_restarts=10**9, clock=clock)
    a = ref_of(sup, "a")
    a.tell(Crash())
    da.wait_exit(a, 5)  # our calls queue behind its exit signal
    # The retry loop goes through the inbox, so these calls are answered while it runs, and
    # each sees the child between two attempts.
    for _ in range(3):
        infos = {c.id: c.ref for c in sup.which_children()}
        assert infos["a"] is da.RESTARTING
        assert isinstance(infos["b"], pykka.ActorRef)
        assert counts(sup) == (2, 1, 0, 2)
    assert flaky.calls > 1
    sup.terminate_child("a")  # cancels the retries
    calls = flaky.calls
    sync(sup.actor_ref)
    sync(sup.actor_ref)
    assert flaky.calls == calls
    assert sup.which_child("a").ref is None


def test_giving_up_logs_the_offender_and_stops_the_others_in_reverse_order(
    sups: Supervisors, log: EventLog, clock: FakeClock, records: Records
) -> None:
    sup = sups.start([probe_spec(n, log) for n in "abcd"], max_restarts=0, clock=clock)
    log.clear()
    ref_of(sup, "b").tell(Crash())
    assert sup.wait(5) is da.SHUTDOWN
    assert [e[:2] for e in log.events()] == [
        ("stop", "b"),
        ("stop", "d"),
        ("stop", "c"),
        ("stop", "a"),
    ]
    assert [e[2] for e in log.events()[1:]] == [da.SHUTDOWN] * 3
    (record,) = records.of("reached_max_restart_intensity")
    assert record["child_id"] == "b"
    assert record["level"] == "ERROR"
    assert record["offender"]["id"] == "b"
    assert record["offender"]["restart"] == "permanent"
    assert record["reason"] == "reached_max_restart_intensity"


def inner_worker(parent: da.Supervisor) -> tuple[pykka.ActorRef[Any], pykka.ActorRef[Any]]:
    inner_ref = ref_of(parent, "inner")
    worker = ref_of(da.Supervisor.from_ref(inner_ref), "w")
    return inner_ref, worker


def test_a_permanent_child_supervisor_that_gives_up_is_restarted_by_its_parent(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    inner = da.Supervisor.child_spec("inner", [probe_spec("w", log)], max_restarts=0, clock=clock)
    parent = sups.start([probe_spec("x", log), inner], max_restarts=1, clock=clock)
    inner_ref, worker = inner_worker(parent)
    worker.tell(Crash())
    assert da.wait_exit(inner_ref, 5) is da.SHUTDOWN
    sync(parent.actor_ref)
    new_inner, new_worker = inner_worker(parent)
    assert new_inner is not inner_ref
    assert new_worker is not worker
    # It counted toward the parent's intensity (1): a second escalation ends the parent.
    new_worker.tell(Crash())
    assert parent.wait(5) is da.SHUTDOWN


def test_a_transient_child_supervisor_that_gives_up_is_not_restarted(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    inner = da.Supervisor.child_spec(
        "inner", [probe_spec("w", log)], restart="transient", max_restarts=0, clock=clock
    )
    parent = sups.start([probe_spec("x", log), inner], max_restarts=0, clock=clock)
    inner_ref, worker = inner_worker(parent)
    worker.tell(Crash())
    assert da.wait_exit(inner_ref, 5) is da.SHUTDOWN
    sync(parent.actor_ref)
    assert parent.is_alive()  # SHUTDOWN is normal for a transient child: nothing counted
    assert parent.which_child("inner").ref is None
    assert counts(parent) == (2, 1, 1, 1)


def test_a_retry_still_queued_at_stop_is_not_reported_as_a_dead_letter(
    sups: Supervisors, log: EventLog, clock: FakeClock, records: Records
) -> None:
    flaky = FlakyStart("a", log, fail_from=2)
    sup = sups.start([ChildSpec("a", flaky)], max_restarts=100, clock=clock)
    a = ref_of(sup, "a")
    with gate(sup.actor_ref) as g:
        a.tell(Crash())
        da.wait_exit(a, 5)
        stopped = queued_call(sup.actor_ref, lambda: sup.stop(timeout=10))
        g.release()
    stopped.result(timeout=10)
    assert sup.wait(5) is da.SHUTDOWN
    assert records.of("dead_letter") == []


@pytest.mark.parametrize("strategy", list(Strategy))
def test_a_sibling_that_can_never_restart_escalates_under_every_strategy(
    strategy: Strategy, sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    """OTP `one_for_one_escalation`, `one_for_all_escalation`, `rest_for_one_escalation`."""
    flaky = FlakyStart("b", log, fail_from=2)
    sup = sups.start(
        [probe_spec("a", log), ChildSpec("b", flaky)],
        strategy=strategy,
        max_restarts=4,
        clock=clock,
    )
    a = ref_of(sup, "a")
    # one_for_one: crash b itself; the others: crash a, whose restart restarts b too.
    victim = ref_of(sup, "b") if strategy is Strategy.ONE_FOR_ONE else a
    victim.tell(Crash())
    assert sup.wait(5) is da.SHUTDOWN
    assert log.names("start_failed") == ["b"] * 4  # four failed attempts, the fifth exceeded
    assert log.kinds("stop")[-1] == ("a", da.SHUTDOWN)  # the sibling went down with it


def test_hanging_restart_loop_under_rest_for_one_leaves_later_children_stopped(
    sups: Supervisors, log: EventLog, clock: FakeClock
) -> None:
    """OTP `hanging_restart_loop_rest_for_one`."""
    flaky = FlakyStart("loop", log, fail_from=2)
    sup = sups.start(
        [probe_spec("a", log), ChildSpec("loop", flaky), probe_spec("c", log)],
        strategy=Strategy.REST_FOR_ONE,
        max_restarts=10**9,
        clock=clock,
    )
    a = ref_of(sup, "a")
    loop = ref_of(sup, "loop")
    loop.tell(Crash())
    da.wait_exit(loop, 5)
    infos = sup.which_children()
    assert [(c.id, c.ref) for c in infos[:2]] == [("c", None), ("loop", da.RESTARTING)]
    assert infos[2].ref is a
    assert counts(sup) == (3, 1, 0, 3)
    with pytest.raises(da.AlreadyPresent):
        sup.start_child(probe_spec("loop", log))
    sup.terminate_child("loop")
    sync(sup.actor_ref)
    assert [(c.id, c.ref) for c in sup.which_children()[:2]] == [("c", None), ("loop", None)]
    sup.stop()  # a clean shutdown of what is left
    assert log.kinds("stop")[-1] == ("a", da.SHUTDOWN)
