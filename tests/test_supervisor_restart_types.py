"""Restart decisions by restart type and exit reason, plain pykka children too."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import ChildSpec
from dspex_actors.testing import sync

from support.logs import EventLog, Records
from support.supervision import (
    Crash,
    ExitWith,
    Ping,
    PlainProbe,
    Probe,
    Supervisors,
    counts,
    crash_and_settle,
    ids,
    probe_spec,
    ref_of,
)

NORMALISH = [da.NORMAL, da.SHUTDOWN, da.Shutdown("bye")]


def exit_child(sup: da.Supervisor, ref: pykka.ActorRef[Any], how: Any) -> Any:
    """Make a child exit on its own with `how`: a reason, "crash" or "kill"."""
    if how == "crash":
        return crash_and_settle(sup, ref, Crash())
    if how == "kill":
        da.kill(ref)
        reason = da.wait_exit(ref, 5)
        sync(sup.actor_ref)
        return reason
    return crash_and_settle(sup, ref, ExitWith(how))


ALL_WAYS = [*NORMALISH, "crash", "kill"]


@pytest.mark.parametrize("how", ALL_WAYS, ids=repr)
def test_a_permanent_child_is_restarted_after_any_exit(
    how: Any, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log), probe_spec("b", log)])
    old = ref_of(sup, "a")
    exit_child(sup, old, how)
    new = ref_of(sup, "a")
    assert new is not old
    assert new.ask(Ping(), timeout=5) == ("pong", "a")
    assert counts(sup) == (2, 2, 0, 2)
    assert log.names("start") == ["a", "b", "a"]


def test_the_reason_each_exit_reports_is_exact(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([probe_spec("a", log)], max_restarts=10)
    reasons = [exit_child(sup, ref_of(sup, "a"), how) for how in ALL_WAYS]
    assert reasons[:3] == NORMALISH
    assert isinstance(reasons[3], RuntimeError)
    assert reasons[4] is da.KILLED


@pytest.mark.parametrize("how", NORMALISH, ids=repr)
def test_a_transient_child_is_not_restarted_after_a_normal_exit_and_restart_child_works(
    how: Any, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("t", log, restart="transient")])
    exit_child(sup, ref_of(sup, "t"), how)
    assert [(c.id, c.ref) for c in sup.which_children()] == [("t", None)]
    assert counts(sup) == (1, 0, 0, 1)
    ref = sup.restart_child("t")
    assert isinstance(ref, pykka.ActorRef)
    assert ref_of(sup, "t") is ref


@pytest.mark.parametrize("how", ["crash", "kill"])
def test_a_transient_child_is_restarted_after_an_abnormal_exit_including_killed(
    how: str, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("t", log, restart="transient")])
    old = ref_of(sup, "t")
    exit_child(sup, old, how)
    assert ref_of(sup, "t") is not old
    assert counts(sup) == (1, 1, 0, 1)


@pytest.mark.parametrize("how", ALL_WAYS, ids=repr)
def test_a_temporary_child_is_never_restarted_and_its_spec_is_deleted(
    how: Any, sups: Supervisors, log: EventLog
) -> None:
    spec = probe_spec("tmp", log, restart="temporary")
    sup = sups.start([probe_spec("a", log), spec])
    exit_child(sup, ref_of(sup, "tmp"), how)
    assert ids(sup) == ["a"]
    assert counts(sup) == (1, 1, 0, 1)
    with pytest.raises(da.ChildNotFound):
        sup.get_childspec("tmp")
    # The same spec can be started again.
    ref = sup.start_child(spec)
    assert isinstance(ref, pykka.ActorRef)
    assert ids(sup) == ["tmp", "a"]


def test_a_temporary_child_terminated_at_supervisor_stop_is_not_kept(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log), probe_spec("tmp", log, restart="temporary")])
    sup.terminate_child("tmp")
    assert ids(sup) == ["a"]


def test_an_exit_signal_from_an_actor_that_is_not_a_child_is_ignored(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log)])
    a = ref_of(sup, "a")
    stranger = Probe.start("stranger", log)
    try:
        da.send_exit(sup.actor_ref, RuntimeError("not yours"), sender=stranger)
        da.send_exit(sup.actor_ref, da.KILLED, sender=stranger)  # from a sender: trappable
        sync(sup.actor_ref)
        assert sup.is_alive()
        assert ref_of(sup, "a") is a
        assert counts(sup) == (1, 1, 0, 1)
    finally:
        stranger.stop()


def test_an_exit_from_a_former_child_is_ignored(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([probe_spec("a", log), probe_spec("b", log, restart="temporary")])
    b = ref_of(sup, "b")
    sup.terminate_child("b")
    da.send_exit(sup.actor_ref, RuntimeError("late"), sender=b)
    sync(sup.actor_ref)
    assert sup.is_alive()
    assert ids(sup) == ["a"]


def test_a_plain_pykka_actor_is_supervised_with_its_crash_reason_and_restarted(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([ChildSpec("plain", PlainProbe.start, args=("plain", log))])
    old = ref_of(sup, "plain")
    seen: list[da.Down] = []
    down = threading.Event()

    def on_down(d: da.Down) -> None:
        seen.append(d)
        down.set()

    da.monitor(old, on_down)
    old.tell(Crash("plain boom"))
    assert down.wait(5)
    assert isinstance(seen[0].reason, RuntimeError)
    assert str(seen[0].reason) == "plain boom"
    sync(sup.actor_ref)
    new = ref_of(sup, "plain")
    assert new is not old
    assert new.ask(Ping(), timeout=5) == ("pong", "plain")


def test_a_plain_pykka_actor_is_shut_down_by_its_supervisor(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [ChildSpec("plain", PlainProbe.start, args=("plain", log), restart="transient")]
    )
    ref = ref_of(sup, "plain")
    sup.terminate_child("plain")
    assert da.wait_exit(ref, 5) is da.SHUTDOWN
    assert not ref.is_alive()
    assert counts(sup) == (1, 0, 0, 1)


def test_a_plain_pykka_actor_stopping_itself_reports_normal_and_transient_is_kept(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [ChildSpec("plain", PlainProbe.start, args=("plain", log), restart="transient")]
    )
    ref = ref_of(sup, "plain")
    ref.stop()
    assert da.wait_exit(ref, 5) is da.NORMAL
    sync(sup.actor_ref)
    assert [(c.id, c.ref) for c in sup.which_children()] == [("plain", None)]


def test_an_unexpected_message_is_logged_and_dropped(
    sups: Supervisors, log: EventLog, records: Records
) -> None:
    sup = sups.start([probe_spec("a", log)])
    a = ref_of(sup, "a")
    sup.actor_ref.tell("hello?")
    assert sup.actor_ref.ask(("what", 1), timeout=5) is None
    sync(sup.actor_ref)
    assert sup.is_alive()
    assert ref_of(sup, "a") is a
    messages = [r["message"] for r in records.of("unexpected_message")]
    assert messages == ["hello?", ("what", 1)]


class SlowCleanup(Probe):
    """Blocks in `on_failure` until released, to pin when its successor may start."""

    def __init__(self, name: str, log: EventLog, release: threading.Event) -> None:
        super().__init__(name, log)
        self.release = release

    def on_failure(self, *_exc_info: Any) -> None:
        self.log.add("cleaning", self.name)
        self.release.wait(10)
        self.log.add("cleaned", self.name)


def test_a_restart_waits_until_the_old_child_has_finished_its_cleanup(
    sups: Supervisors, log: EventLog
) -> None:
    release = threading.Event()
    sup = sups.start([SlowCleanup.child_spec("s", log, release, id="s")])
    old = ref_of(sup, "s")
    try:
        old.tell(Crash())
        assert log.wait_len(2)  # ("start", "s"), ("cleaning", "s")
        sync(sup.actor_ref)
        assert log.names("start") == ["s"]  # no successor while the old one cleans up
        assert sup.which_child("s").ref is old
    finally:
        release.set()
    da.wait_exit(old, 5)
    sync(sup.actor_ref)
    assert [e[:2] for e in log.events()] == [
        ("start", "s"),
        ("cleaning", "s"),
        ("cleaned", "s"),
        ("start", "s"),
    ]
