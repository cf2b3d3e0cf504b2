"""`DynamicSupervisor`: children known by ref, extra_args, max_children, shutdown."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import BRUTAL_KILL, INFINITY, ChildSpec, Restart
from dspex_actors.testing import FakeClock, gate, sync

from support.logs import EventLog
from support.supervision import (
    Crash,
    ExitWith,
    FlakyStart,
    Ping,
    Probe,
    Stubborn,
    Supervisors,
    counts,
    probe_spec,
)
from support.threads import queued_call


def settle(dyn: da.DynamicSupervisor, ref: pykka.ActorRef[Any], message: Any = None) -> Any:
    ref.tell(message if message is not None else Crash())
    reason = da.wait_exit(ref, 5)
    sync(dyn.actor_ref)
    return reason


def live_refs(dyn: da.DynamicSupervisor) -> list[pykka.ActorRef[Any]]:
    return [c.ref for c in dyn.which_children() if isinstance(c.ref, pykka.ActorRef)]


class Recorder:
    """A start function that records the arguments of every call."""

    def __init__(self, log: EventLog, results: list[str] | None = None) -> None:
        self.log = log
        self.calls: list[tuple[Any, ...]] = []
        self.results = results or []

    def __call__(self, *args: Any) -> pykka.ActorRef[Any] | None:
        self.calls.append(args)
        n = len(self.calls)
        outcome = self.results[n - 1] if n <= len(self.results) else "ok"
        if outcome == "ignore":
            return None
        if outcome == "fail":
            raise RuntimeError(f"call {n} fails")
        return Probe.start(f"r{n}", self.log)


def test_ids_are_ignored_so_two_children_may_share_a_spec(sups: Supervisors, log: EventLog) -> None:
    dyn = sups.dynamic()
    spec = probe_spec("same", log)
    a = dyn.start_child(spec)
    b = dyn.start_child(spec)
    assert isinstance(a, pykka.ActorRef)
    assert isinstance(b, pykka.ActorRef)
    assert a is not b
    assert {c.id for c in dyn.which_children()} == {None}
    assert set(live_refs(dyn)) == {a, b}
    assert counts(dyn) == (2, 2, 0, 2)


def test_a_start_returning_none_returns_none_and_stores_nothing(
    sups: Supervisors, log: EventLog
) -> None:
    dyn = sups.dynamic()
    assert dyn.start_child(ChildSpec("x", lambda: None)) is None
    assert dyn.start_child(ChildSpec("x", lambda: None, restart="temporary")) is None
    assert dyn.which_children() == []
    assert counts(dyn) == (0, 0, 0, 0)


def test_max_children_refuses_the_child_beyond_the_limit(sups: Supervisors, log: EventLog) -> None:
    dyn = sups.dynamic(max_children=2)
    first = dyn.start_child(probe_spec("p", log))
    dyn.start_child(probe_spec("p", log))
    with pytest.raises(da.MaxChildren, match=r"max_children \(2\) reached") as info:
        dyn.start_child(probe_spec("p", log))
    assert info.value.max_children == 2
    assert isinstance(first, pykka.ActorRef)
    dyn.terminate_child(first)
    assert isinstance(dyn.start_child(probe_spec("p", log)), pykka.ActorRef)


def test_a_restarting_child_counts_toward_max_children(sups: Supervisors, log: EventLog) -> None:
    flaky = FlakyStart("f", log, fail_from=2)
    dyn = sups.dynamic(max_children=1, max_restarts=10**9, clock=FakeClock())
    ref = dyn.start_child(ChildSpec("f", flaky))
    assert isinstance(ref, pykka.ActorRef)
    ref.tell(Crash())
    da.wait_exit(ref, 5)
    assert [c.ref for c in dyn.which_children()] == [da.RESTARTING]
    with pytest.raises(da.MaxChildren):
        dyn.start_child(probe_spec("p", log))
    dyn.terminate_child(ref)  # works on a restarting child, by its last ref
    assert dyn.which_children() == []


def test_extra_args_are_prepended_at_start_and_at_every_restart(
    sups: Supervisors, log: EventLog
) -> None:
    recorder = Recorder(log)
    dyn = sups.dynamic(extra_args=["x", 1])
    ref = dyn.start_child(ChildSpec("r", recorder, args=("own",)))
    assert isinstance(ref, pykka.ActorRef)
    settle(dyn, ref)
    assert recorder.calls == [("x", 1, "own"), ("x", 1, "own")]


def test_a_start_that_raises_is_a_start_child_error_with_the_exception(
    sups: Supervisors,
) -> None:
    def boom() -> None:
        raise LookupError("nothing here")

    dyn = sups.dynamic()
    with pytest.raises(da.StartChildError, match="nothing here") as info:
        dyn.start_child(ChildSpec("b", boom))
    assert isinstance(info.value.reason, LookupError)
    assert info.value.child_id == "b"
    assert dyn.which_children() == []


def test_an_on_start_failure_gives_the_original_exception(sups: Supervisors) -> None:
    class Broken(da.Actor):
        def on_start(self) -> None:
            raise ValueError("bad config")

    dyn = sups.dynamic()
    with pytest.raises(da.StartChildError) as info:
        dyn.start_child(Broken.child_spec())
    assert isinstance(info.value.reason, ValueError)


def test_a_non_conforming_return_is_a_start_child_error(sups: Supervisors) -> None:
    dyn = sups.dynamic()
    with pytest.raises(da.StartChildError) as info:
        dyn.start_child(ChildSpec("g", lambda: ("ok", "pid")))
    assert isinstance(info.value.reason, da.BadStartReturn)
    assert info.value.reason.value == ("ok", "pid")


def test_a_failed_restart_is_restarting_not_active_and_retried_until_intensity_runs_out(
    sups: Supervisors, log: EventLog
) -> None:
    flaky = FlakyStart("f", log, fail_from=2)
    dyn = sups.dynamic(max_restarts=2, clock=FakeClock())
    ref = dyn.start_child(ChildSpec("f", flaky))
    other = dyn.start_child(probe_spec("p", log))
    assert isinstance(ref, pykka.ActorRef)
    assert isinstance(other, pykka.ActorRef)
    with gate(dyn.actor_ref) as g:
        ref.tell(Crash())
        da.wait_exit(ref, 5)
        # Queued behind the exit signal, ahead of the retry the failed restart queues.
        snapshot = queued_call(dyn.actor_ref, lambda: dyn.which_children(timeout=5))
        g.release()
    assert sorted(str(c.ref) for c in snapshot.result(timeout=5)) == sorted(
        [str(other), "RESTARTING"]
    )
    assert dyn.wait(5) is da.SHUTDOWN
    assert log.names("start_failed") == ["f", "f"]  # attempts 1, 2; the 3rd exceeded
    assert da.exit_reason(other) is da.SHUTDOWN


def test_a_restarting_child_counts_in_specs_but_not_as_active(
    sups: Supervisors, log: EventLog
) -> None:
    flaky = FlakyStart("f", log, fail_from=2)
    dyn = sups.dynamic(max_restarts=10**9, clock=FakeClock())
    ref = dyn.start_child(ChildSpec("f", flaky))
    assert isinstance(ref, pykka.ActorRef)
    ref.tell(Crash())
    da.wait_exit(ref, 5)
    assert counts(dyn) == (1, 0, 0, 1)
    dyn.terminate_child(ref)
    calls = flaky.calls
    sync(dyn.actor_ref)
    assert flaky.calls == calls  # the retries stopped
    assert counts(dyn) == (0, 0, 0, 0)


def test_a_retry_that_succeeds_brings_the_child_back(sups: Supervisors, log: EventLog) -> None:
    recorder = Recorder(log, results=["ok", "fail", "ok"])
    dyn = sups.dynamic(clock=FakeClock())
    ref = dyn.start_child(ChildSpec("r", recorder))
    assert isinstance(ref, pykka.ActorRef)
    settle(dyn, ref)
    sync(dyn.actor_ref)  # the retry queued while the exit was handled has run
    (new,) = live_refs(dyn)
    assert new.ask(Ping(), timeout=5) == ("pong", "r3")
    assert counts(dyn) == (1, 1, 0, 1)


def test_a_restart_returning_none_removes_the_child(sups: Supervisors, log: EventLog) -> None:
    recorder = Recorder(log, results=["ok", "ignore"])
    dyn = sups.dynamic()
    ref = dyn.start_child(ChildSpec("r", recorder))
    assert isinstance(ref, pykka.ActorRef)
    settle(dyn, ref)
    assert dyn.which_children() == []
    assert len(recorder.calls) == 2


def test_shutdown_signals_every_child_at_once(sups: Supervisors, log: EventLog) -> None:
    release = threading.Event()
    dyn = sups.dynamic()
    for n in ("s1", "s2"):
        dyn.start_child(Stubborn.child_spec(n, log, release, 30.0, shutdown=INFINITY))
    log.clear()
    done = threading.Event()

    def stop() -> None:
        dyn.stop()
        done.set()

    stopper = threading.Thread(target=stop)
    stopper.start()
    try:
        # Both got their signal while both still block: they were not stopped one by one.
        assert log.wait_len(2)
        assert sorted(log.names("signal")) == ["s1", "s2"]
        assert not done.is_set()
    finally:
        release.set()
    assert done.wait(5)
    stopper.join(5)
    assert sorted(log.kinds("stop")) == [("s1", da.SHUTDOWN), ("s2", da.SHUTDOWN)]


def test_each_child_is_killed_when_its_own_shutdown_time_runs_out(
    sups: Supervisors, log: EventLog
) -> None:
    quick_release, slow_release = threading.Event(), threading.Event()
    dyn = sups.dynamic()
    quick = dyn.start_child(Stubborn.child_spec("quick", log, quick_release, shutdown=0.05))
    slow = dyn.start_child(Stubborn.child_spec("slow", log, slow_release, 30.0, shutdown=INFINITY))
    brutal = dyn.start_child(probe_spec("brutal", log, shutdown=BRUTAL_KILL))
    plain = dyn.start_child(probe_spec("plain", log))
    assert isinstance(quick, pykka.ActorRef)
    assert isinstance(slow, pykka.ActorRef)
    stopper = threading.Thread(target=dyn.stop)
    stopper.start()
    try:
        assert da.wait_exit(quick, 5) is da.KILLED  # killed while "slow" still holds out
        assert slow.is_alive()
    finally:
        slow_release.set()
        quick_release.set()
    stopper.join(5)
    assert not stopper.is_alive()
    assert da.exit_reason(slow) is da.SHUTDOWN
    assert isinstance(brutal, pykka.ActorRef)
    assert isinstance(plain, pykka.ActorRef)
    assert da.exit_reason(brutal) is da.KILLED
    assert da.exit_reason(plain) is da.SHUTDOWN
    assert dyn.wait(5) is da.SHUTDOWN


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one", "bogus"])
def test_only_one_for_one_is_accepted(strategy: str) -> None:
    with pytest.raises(da.InvalidOption, match=f"strategy must be .*got: '{strategy}'") as info:
        da.DynamicSupervisor.start(strategy=strategy)
    assert info.value.code == "invalid_strategy"


@pytest.mark.parametrize("mode", ["any_significant", "all_significant", "bogus"])
def test_only_auto_shutdown_never_is_accepted(mode: str) -> None:
    with pytest.raises(da.InvalidOption, match=f"auto_shutdown must be .*got: '{mode}'") as info:
        da.DynamicSupervisor.start(auto_shutdown=mode)
    assert info.value.code == "invalid_auto_shutdown"


def test_a_significant_child_is_rejected_as_invalid_significant(
    sups: Supervisors, log: EventLog
) -> None:
    dyn = sups.dynamic()
    with pytest.raises(da.ChildSpecError, match="cannot be significant") as info:
        dyn.start_child(probe_spec("s", log, restart="transient", significant=True))
    assert (info.value.code, info.value.value) == ("invalid_significant", True)
    assert log.events() == []


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_children", -1, "max_children must be an integer >= 0 or None, got: -1"),
        ("max_children", 1.5, "max_children must be an integer >= 0 or None, got: 1.5"),
        ("max_children", True, "max_children must be an integer >= 0 or None, got: True"),
        ("max_children", "3", "max_children must be an integer >= 0 or None, got: '3'"),
        ("extra_args", "ab", "extra_args must be a tuple or list, got: 'ab'"),
        ("extra_args", None, "extra_args must be a tuple or list, got: None"),
        ("max_restarts", -1, "max_restarts must be an integer >= 0, got: -1"),
        ("max_seconds", 0, "max_seconds must be a finite number of seconds > 0, got: 0"),
        ("clock", "now", "clock must be a Clock"),
    ],
)
def test_invalid_dynamic_supervisor_options_are_rejected_before_anything_starts(
    option: str, value: Any, message: str
) -> None:
    before = len(pykka.ActorRegistry.get_all())
    with pytest.raises(da.InvalidOption) as info:
        da.DynamicSupervisor.start(**{option: value})
    assert info.value.option == option
    assert message in str(info.value)
    assert len(pykka.ActorRegistry.get_all()) == before
    # A nested dynamic supervisor's options are checked when its spec is made, too.
    with pytest.raises(da.InvalidOption) as info:
        da.DynamicSupervisor.child_spec("dyn", **{option: value})
    assert message in str(info.value)


def test_dynamic_supervisor_child_spec_rejects_an_unknown_option() -> None:
    with pytest.raises(da.InvalidOption, match=r"colour must be a DynamicSupervisor\.start option"):
        da.DynamicSupervisor.child_spec("dyn", colour="red")


def test_start_child_with_something_that_is_not_a_spec_raises_in_the_caller(
    sups: Supervisors,
) -> None:
    dyn = sups.dynamic()
    with pytest.raises(da.ChildSpecError, match="must be a ChildSpec") as info:
        dyn.start_child(Probe)  # type: ignore[arg-type]
    assert info.value.code == "invalid_child_spec"


@pytest.mark.parametrize(
    ("restart", "how", "restarted"),
    [
        (Restart.PERMANENT, da.NORMAL, True),
        (Restart.PERMANENT, "crash", True),
        (Restart.TRANSIENT, da.SHUTDOWN, False),
        (Restart.TRANSIENT, "crash", True),
        (Restart.TEMPORARY, "crash", False),
        (Restart.TEMPORARY, da.NORMAL, False),
    ],
    ids=repr,
)
def test_restart_types_decide_as_in_a_static_supervisor(
    restart: Restart, how: Any, restarted: bool, sups: Supervisors, log: EventLog
) -> None:
    dyn = sups.dynamic()
    ref = dyn.start_child(probe_spec("p", log, restart=restart))
    assert isinstance(ref, pykka.ActorRef)
    settle(dyn, ref, Crash() if how == "crash" else ExitWith(how))
    refs = live_refs(dyn)
    if restarted:
        assert len(refs) == 1
        assert refs[0] is not ref
    else:
        assert dyn.which_children() == []  # not restarted: the child is forgotten


def test_terminate_child_stops_and_forgets_a_child_and_rejects_strangers(
    sups: Supervisors, log: EventLog
) -> None:
    dyn = sups.dynamic()
    ref = dyn.start_child(probe_spec("p", log))
    assert isinstance(ref, pykka.ActorRef)
    dyn.terminate_child(ref)
    assert da.exit_reason(ref) is da.SHUTDOWN
    assert dyn.which_children() == []
    with pytest.raises(da.ChildNotFound):
        dyn.terminate_child(ref)
    with pytest.raises(da.ChildNotFound):
        dyn.terminate_child("p")  # type: ignore[arg-type]
    stranger = Probe.start("stranger", log)
    try:
        with pytest.raises(da.ChildNotFound):
            dyn.terminate_child(stranger)
        assert stranger.is_alive()
    finally:
        stranger.stop()


def test_the_intensity_applies_on_a_fake_clock(sups: Supervisors, log: EventLog) -> None:
    clock = FakeClock()
    dyn = sups.dynamic(max_restarts=1, max_seconds=1, clock=clock)
    ref = dyn.start_child(probe_spec("p", log))
    assert isinstance(ref, pykka.ActorRef)
    for _ in range(3):
        settle(dyn, ref)
        clock.advance(2.1)
        (ref,) = live_refs(dyn)
    settle(dyn, ref)  # t and t: a second restart within the second second
    (ref,) = live_refs(dyn)
    ref.tell(Crash())
    assert dyn.wait(5) is da.SHUTDOWN


def test_calls_on_a_stopped_dynamic_supervisor_raise_no_proc(sups: Supervisors) -> None:
    dyn = sups.dynamic()
    dyn.stop()
    assert dyn.wait(1) is da.SHUTDOWN
    with pytest.raises(da.NoProc):
        dyn.which_children()
    with pytest.raises(da.NoProc):
        dyn.count_children()
    with pytest.raises(da.NoProc):
        dyn.start_child(ChildSpec("x", lambda: None))
