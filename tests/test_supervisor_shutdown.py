"""The shutdown protocol for one child and for the whole supervisor.

A killed child stuck in a handler or in its cleanup (a thread cannot be killed there) is not
waited for: it is abandoned at once, reported KILLED, and listed until its thread exits.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors import BRUTAL_KILL, INFINITY, ChildSpec, Restart
from dspex_actors.testing import gate, sync

from support.logs import EventLog, Records
from support.supervision import (
    Crash,
    ExitsOnSignal,
    Probe,
    SlowStop,
    Stubborn,
    Supervisors,
    Trapper,
    UnlinkFrom,
    counts,
    probe_spec,
    ref_of,
)
from support.threads import queued_call


def stubborn_spec(name: str, log: EventLog, release: threading.Event, **options: Any) -> ChildSpec:
    options.setdefault("id", name)
    return Stubborn.child_spec(name, log, release, **options)


def test_brutal_kill_kills_the_child_at_once_with_no_cleanup(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log, shutdown=BRUTAL_KILL)])
    ref = ref_of(sup, "a")
    log.clear()
    sup.terminate_child("a")
    assert da.wait_exit(ref, 5) is da.KILLED
    assert log.events() == []  # no on_stop ran
    assert counts(sup) == (1, 0, 0, 1)


def test_brutal_kill_kills_even_a_child_that_traps_exits(sups: Supervisors, log: EventLog) -> None:
    release = threading.Event()
    sup = sups.start([stubborn_spec("s", log, release, shutdown=BRUTAL_KILL)])
    ref = ref_of(sup, "s")
    sup.terminate_child("s")
    assert da.wait_exit(ref, 5) is da.KILLED
    assert log.kinds("signal") == []  # the kill was not trappable


def test_a_child_that_does_not_trap_exits_ends_with_shutdown_at_once(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log, shutdown=30.0)])
    ref = ref_of(sup, "a")
    sup.terminate_child("a", timeout=10)  # far below the 30 s it would take if it waited
    assert da.wait_exit(ref, 5) is da.SHUTDOWN
    assert log.kinds("stop") == [("a", da.SHUTDOWN)]


def test_a_trapping_child_that_exits_within_its_time_ends_with_shutdown(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([Trapper.child_spec("t", log, id="t", shutdown=30.0)])
    ref = ref_of(sup, "t")
    sup.terminate_child("t", timeout=10)
    assert da.wait_exit(ref, 5) is da.SHUTDOWN
    assert log.kinds("stop") == [("t", da.SHUTDOWN)]


def test_a_trapping_child_that_ignores_shutdown_is_killed_after_its_timeout(
    sups: Supervisors, log: EventLog, records: Records
) -> None:
    release = threading.Event()
    sup = sups.start([stubborn_spec("s", log, release, shutdown=0.05)])
    ref = ref_of(sup, "s")
    try:
        sup.terminate_child("s")
        assert da.wait_exit(ref, 5) is da.KILLED
    finally:
        release.set()
    assert log.events() == [("start", "s"), ("signal", "s", da.SHUTDOWN)]  # no on_stop: killed
    assert [(c.id, c.ref) for c in sup.which_children()] == [("s", None)]
    assert records.of("kill_timeout") == []
    # As in OTP's shutdown/2, a child killed after its timeout is reported as shutdown_error.
    assert [(r["child_id"], r["reason"]) for r in records.of("shutdown_error")] == [("s", "KILLED")]


def test_a_child_that_ignores_shutdown_is_killed_at_supervisor_stop(
    sups: Supervisors, log: EventLog
) -> None:
    release = threading.Event()
    sup = sups.start([probe_spec("a", log), stubborn_spec("s", log, release, shutdown=0.05)])
    s = ref_of(sup, "s")
    try:
        sup.stop()
    finally:
        release.set()
    assert sup.wait(5) is da.SHUTDOWN
    assert da.exit_reason(s) is da.KILLED
    assert log.kinds("stop") == [("a", da.SHUTDOWN)]


def test_infinity_waits_for_the_child_however_long_it_takes(
    sups: Supervisors, log: EventLog
) -> None:
    release = threading.Event()
    sup = sups.start([stubborn_spec("s", log, release, shutdown=INFINITY, hold=30.0)])
    ref = ref_of(sup, "s")
    done = threading.Event()

    def terminate() -> None:
        sup.terminate_child("s", timeout=None)
        done.set()

    worker = threading.Thread(target=terminate)
    worker.start()
    try:
        assert log.wait_len(2)  # ("start", "s"), ("signal", "s", SHUTDOWN)
        assert not done.wait(0.3)  # still waiting: no kill after any finite time
        assert ref.is_alive()
    finally:
        release.set()
    assert done.wait(5)
    worker.join(5)
    assert da.wait_exit(ref, 5) is da.SHUTDOWN
    assert log.kinds("stop") == [("s", da.SHUTDOWN)]


class Echo(da.Actor):
    """Answers every ask with the message."""

    def on_receive(self, message: Any) -> Any:
        return message


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_shutdown_time_beyond_the_os_wait_limit_stops_the_child_like_a_long_timeout(
    dynamic: bool,
) -> None:
    """`shutdown=1e10` (finite, so valid, but beyond what the OS can wait on) is just a long
    wait: the child gets its shutdown signal and exits with SHUTDOWN, as does the supervisor."""
    spec = Echo.child_spec(id="echo", shutdown=1e10)
    child: Any
    sup: da.Supervisor | da.DynamicSupervisor
    if dynamic:
        sup = da.DynamicSupervisor.start()
        child = sup.start_child(spec)
    else:
        sup = da.Supervisor.start([spec])
        child = sup.which_children()[0].ref
    assert isinstance(child, type(sup.actor_ref))
    sup.stop(timeout=10)
    assert da.wait_exit(child, 10) is da.SHUTDOWN
    assert sup.wait(10) is da.SHUTDOWN


def test_supervisor_stop_stops_children_one_at_a_time_in_reverse_start_order(
    sups: Supervisors, log: EventLog
) -> None:
    names = ["a", "b", "c", "d", "e"]
    sup = sups.start([SlowStop.child_spec(n, log, id=n) for n in names])
    log.clear()
    sup.stop()
    assert sup.wait(5) is da.SHUTDOWN
    expected: list[tuple[Any, ...]] = []
    for n in reversed(names):
        expected += [("stopping", n), ("stopped", n, da.SHUTDOWN)]
    assert log.events() == expected


def test_a_supervisor_stop_waits_for_every_child_to_have_exited(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec(n, log) for n in "abc"])
    children = [ref_of(sup, n) for n in "abc"]
    sup.stop()
    assert all(da.exit_reason(c) is da.SHUTDOWN for c in children)  # no wait needed
    assert not sup.is_alive()


def test_a_child_that_unlinked_itself_is_still_shut_down_without_hanging(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log), probe_spec("b", log)])
    a = ref_of(sup, "a")
    a.ask(UnlinkFrom(sup.actor_ref), timeout=5)
    sup.terminate_child("a", timeout=10)
    assert da.wait_exit(a, 5) is da.SHUTDOWN
    assert counts(sup) == (2, 1, 0, 2)  # and it keeps serving calls
    sup.restart_child("a")
    a2 = ref_of(sup, "a")
    a2.ask(UnlinkFrom(sup.actor_ref), timeout=5)
    sup.stop(timeout=10)
    assert da.exit_reason(a2) is da.SHUTDOWN


@pytest.mark.parametrize(
    ("restart", "reason", "reported"),
    [
        (Restart.PERMANENT, da.NORMAL, True),
        (Restart.PERMANENT, da.Shutdown("x"), True),
        (Restart.PERMANENT, RuntimeError("own"), True),
        (Restart.TRANSIENT, da.NORMAL, False),
        (Restart.TEMPORARY, da.Shutdown("x"), False),
        (Restart.TRANSIENT, RuntimeError("own"), True),
    ],
    ids=repr,
)
def test_a_child_exiting_with_its_own_reason_at_shutdown_is_reported_only_when_unexpected(
    restart: Restart,
    reason: Any,
    reported: bool,
    sups: Supervisors,
    log: EventLog,
    records: Records,
) -> None:
    spec = ExitsOnSignal.child_spec("x", log, reason, id="x", restart=restart)
    sup = sups.start([probe_spec("a", log), spec])
    x = ref_of(sup, "x")
    sup.stop()
    assert sup.wait(5) is da.SHUTDOWN
    assert da.exit_reason(x) is reason or da.exit_reason(x) == reason
    errors = records.of("shutdown_error")
    assert [r["child_id"] for r in errors] == (["x"] if reported else [])
    assert log.kinds("stop")[-1] == ("a", da.SHUTDOWN)  # the next child was still stopped


def test_a_child_crashing_while_the_supervisor_shuts_down_does_not_stop_the_shutdown(
    sups: Supervisors, log: EventLog, records: Records
) -> None:
    sup = sups.start([probe_spec("a", log), probe_spec("b", log), probe_spec("c", log)])
    b = ref_of(sup, "b")
    with gate(sup.actor_ref) as g:
        stopped = queued_call(sup.actor_ref, lambda: sup.stop(timeout=10))
        b.tell(Crash("during shutdown"))  # its exit arrives behind the stop request
        assert isinstance(da.wait_exit(b, 5), RuntimeError)
        g.release()
    stopped.result(timeout=10)
    assert sup.wait(5) is da.SHUTDOWN
    assert log.names("stop") == ["b", "c", "a"]
    assert log.names("start") == ["a", "b", "c"]  # "b" was not restarted
    assert [r["child_id"] for r in records.of("shutdown_error")] == ["b"]


def test_a_supervisor_started_by_an_actor_is_linked_to_it_and_shuts_down_with_it(
    log: EventLog,
) -> None:
    class Parent(da.Actor):
        def __init__(self) -> None:
            super().__init__()
            self.sup: da.Supervisor | None = None

        def on_start(self) -> None:
            self.sup = da.Supervisor.start([probe_spec("a", log)])

        def on_receive(self, message: Any) -> Any:
            if message == "sup":
                return self.sup
            raise RuntimeError("parent crash")

    parent = Parent.start()
    sup = parent.ask("sup", timeout=5)
    assert isinstance(sup, da.Supervisor)
    a = ref_of(sup, "a")
    parent.tell("crash")
    assert sup.wait(5).__class__ is RuntimeError  # it exits with its parent's reason
    assert da.exit_reason(a) is da.SHUTDOWN
    assert isinstance(da.wait_exit(parent, 5), RuntimeError)


def test_stop_on_a_plain_probe_child_reports_normal_and_is_restarted(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([ChildSpec("p", Probe.start, args=("p", log))])
    p = ref_of(sup, "p")
    p.stop()
    assert da.wait_exit(p, 5) is da.NORMAL
    sync(sup.actor_ref)
    assert ref_of(sup, "p") is not p


class Wedged(Probe):
    """Blocks inside a handler (not at a message boundary) until released."""

    def __init__(self, name: str, log: EventLog, release: threading.Event) -> None:
        super().__init__(name, log)
        self.release = release

    def on_receive(self, message: Any) -> Any:
        if message == "wedge":
            self.log.add("wedged", self.name)
            self.release.wait(10)
            return None
        return super().on_receive(message)


def test_a_child_blocked_in_a_handler_is_abandoned_and_reported_killed(
    sups: Supervisors, log: EventLog, records: Records
) -> None:
    """A thread cannot be killed mid-handler: the supervisor does not wait for it, reports it
    KILLED, and shows it as abandoned until its handler returns."""
    release = threading.Event()
    sup = sups.start([Wedged.child_spec("w", log, release, id="w", shutdown=BRUTAL_KILL)])
    w = ref_of(sup, "w")
    try:
        w.tell("wedge")
        assert log.wait_len(2)  # ("start", "w"), ("wedged", "w")
        sup.terminate_child("w")
        assert [(c.id, c.ref, c.abandoned) for c in sup.which_children()] == [("w", None, w)]
        assert [r["child_id"] for r in records.of("child_abandoned")] == ["w"]
        assert w.is_alive()  # still inside its handler
    finally:
        release.set()
    assert da.wait_exit(w, 5) is da.KILLED  # killed at its next message boundary


class BlocksInOnStop(Probe):
    """Blocks in `on_stop` until released: past its shutdown time, and unkillable there."""

    def __init__(self, name: str, log: EventLog, release: threading.Event) -> None:
        super().__init__(name, log)
        self.release = release

    def on_stop(self) -> None:
        self.log.add("stopping", self.name)
        self.release.wait(10)
        self.log.add("stopped", self.name, self.exit_reason)


def test_a_child_blocked_in_on_stop_past_its_shutdown_time_is_abandoned(
    sups: Supervisors, log: EventLog, records: Records
) -> None:
    """Documented difference: a thread in its cleanup cannot be killed; the supervisor logs
    `child_abandoned`, reports KILLED and moves on; the child finishes its cleanup later."""
    release = threading.Event()
    sup = sups.start(
        [probe_spec("a", log), BlocksInOnStop.child_spec("b", log, release, id="b", shutdown=0.05)]
    )
    b = ref_of(sup, "b")
    try:
        sup.terminate_child("b")
        assert [r["child_id"] for r in records.of("child_abandoned")] == ["b"]
        assert sup.which_child("b").ref is None
        assert ("stopping", "b") in log.events()
        assert ("stopped", "b", da.SHUTDOWN) not in log.events()
    finally:
        release.set()
    assert da.wait_exit(b, 5) is da.SHUTDOWN  # its real reason, once its cleanup ended
    assert log.events()[-1][:2] == ("stopped", "b")


def test_exit_reason_in_on_stop_matches_the_reported_reason_when_a_kill_arrives_mid_cleanup(
    sups: Supervisors, log: EventLog
) -> None:
    release = threading.Event()
    sup = sups.start([BlocksInOnStop.child_spec("b", log, release, id="b", shutdown=0.05)])
    b = ref_of(sup, "b")
    try:
        sup.terminate_child("b")  # SHUTDOWN, then (0.05 s later, b still in on_stop) a kill
    finally:
        release.set()
    reported = da.wait_exit(b, 5)
    assert reported is da.SHUTDOWN
    assert log.events()[-1] == ("stopped", "b", reported)
