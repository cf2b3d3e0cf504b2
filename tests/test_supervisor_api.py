"""The child-management API and its typed errors."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import ChildSpec, ChildType
from dspex_actors.testing import FakeClock, gate, sync

from support.logs import EventLog
from support.supervision import (
    Crash,
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


def raises_on_start() -> None:
    raise KeyError("no config")


def returns_garbage() -> Any:
    return "not a ref"


class Looping:
    """A supervisor whose child "loop" can never restart (OTP `hanging_restart_loop`)."""

    def __init__(self, sup: da.Supervisor, flaky: FlakyStart) -> None:
        self.sup = sup
        self.flaky = flaky


@pytest.fixture
def looping(sups: Supervisors, log: EventLog) -> Looping:
    flaky = FlakyStart("loop", log, fail_from=2)
    clock = FakeClock()  # frozen time: the intensity is never reached in this test
    sup = sups.start(
        [probe_spec("a", log), ChildSpec("loop", flaky)], max_restarts=10**9, clock=clock
    )
    loop = ref_of(sup, "loop")
    loop.tell(Crash())
    da.wait_exit(loop, 5)  # calls made from now on queue behind its exit signal
    return Looping(sup, flaky)


def test_start_child_with_the_id_of_a_running_child_is_already_started(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log)])
    a = ref_of(sup, "a")
    with pytest.raises(da.AlreadyStarted, match="'a' is already started") as info:
        sup.start_child(probe_spec("a", log))
    assert info.value.ref is a
    assert log.names("start") == ["a"]


def test_start_child_with_the_id_of_a_stopped_child_is_already_present(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log)])
    sup.terminate_child("a")
    with pytest.raises(da.AlreadyPresent, match="'a' is already present") as info:
        sup.start_child(probe_spec("a", log))
    assert info.value.child_id == "a"


def test_start_child_with_the_id_of_a_restarting_child_is_already_present(
    looping: Looping, log: EventLog
) -> None:
    with pytest.raises(da.AlreadyPresent):
        looping.sup.start_child(probe_spec("loop", log))


def test_a_start_child_whose_start_raises_stores_nothing(sups: Supervisors) -> None:
    sup = sups.start([])
    with pytest.raises(da.StartChildError, match="child 'bad' failed to start") as info:
        sup.start_child(ChildSpec("bad", raises_on_start))
    assert info.value.child_id == "bad"
    assert isinstance(info.value.reason, KeyError)
    assert ids(sup) == []
    # Nothing stored: the same id can be used again.
    assert sup.start_child(ChildSpec("bad", lambda: None)) is None


def test_a_start_child_returning_something_else_is_a_start_failure(
    sups: Supervisors,
) -> None:
    sup = sups.start([])
    with pytest.raises(da.StartChildError) as info:
        sup.start_child(ChildSpec("bad", returns_garbage))
    assert isinstance(info.value.reason, da.BadStartReturn)
    assert info.value.reason.value == "not a ref"
    assert counts(sup) == (0, 0, 0, 0)


def test_an_on_start_failure_reaches_start_child_as_the_original_exception(
    sups: Supervisors,
) -> None:
    class Broken(da.Actor):
        def on_start(self) -> None:
            raise OSError("port in use")

    sup = sups.start([])
    with pytest.raises(da.StartChildError) as info:
        sup.start_child(Broken.child_spec(id="b"))
    assert isinstance(info.value.reason, OSError)
    assert ids(sup) == []


def test_terminate_child_keeps_the_spec_is_idempotent_and_rejects_unknown_ids_and_refs(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log), probe_spec("tmp", log, restart="temporary")])
    a = ref_of(sup, "a")
    sup.terminate_child("a")
    assert da.exit_reason(a) is da.SHUTDOWN
    assert [(c.id, c.ref) for c in sup.which_children()][1] == ("a", None)
    assert counts(sup) == (2, 1, 0, 2)
    sup.terminate_child("a")  # again: fine
    with pytest.raises(da.ChildNotFound, match="no child 'zz'"):
        sup.terminate_child("zz")
    tmp = ref_of(sup, "tmp")
    with pytest.raises(da.ChildNotFound):
        sup.terminate_child(tmp)  # a static supervisor takes ids, not refs
    assert tmp.is_alive()
    sup.terminate_child("tmp")  # temporary: the spec goes too
    assert ids(sup) == ["a"]


def test_restart_child_only_restarts_a_stopped_child(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([probe_spec("a", log)])
    with pytest.raises(da.ChildRunning, match="'a' is running"):
        sup.restart_child("a")
    with pytest.raises(da.ChildNotFound):
        sup.restart_child("nope")
    sup.terminate_child("a")
    ref = sup.restart_child("a")
    assert isinstance(ref, pykka.ActorRef)
    assert ref.ask(Ping(), timeout=5) == ("pong", "a")
    assert ref_of(sup, "a") is ref


def test_restart_child_of_a_restarting_child_is_refused(looping: Looping) -> None:
    with pytest.raises(da.ChildRestarting, match="'loop' is being restarted"):
        looping.sup.restart_child("loop")


def test_a_failed_restart_child_keeps_the_spec(sups: Supervisors, log: EventLog) -> None:
    flaky = FlakyStart("x", log, fail_calls=frozenset({2}))
    sup = sups.start([ChildSpec("x", flaky)])
    sup.terminate_child("x")
    with pytest.raises(da.StartChildError) as info:
        sup.restart_child("x")
    assert info.value.child_id == "x"
    assert isinstance(info.value.reason, RuntimeError)
    assert [(c.id, c.ref) for c in sup.which_children()] == [("x", None)]
    assert isinstance(sup.restart_child("x"), pykka.ActorRef)


def test_delete_child_only_deletes_a_stopped_child(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([probe_spec("a", log), probe_spec("b", log)])
    with pytest.raises(da.ChildRunning):
        sup.delete_child("a")
    with pytest.raises(da.ChildNotFound):
        sup.delete_child("nope")
    sup.terminate_child("a")
    sup.delete_child("a")
    assert ids(sup) == ["b"]
    with pytest.raises(da.ChildNotFound):
        sup.delete_child("a")
    assert isinstance(sup.start_child(probe_spec("a", log)), pykka.ActorRef)
    assert ids(sup) == ["a", "b"]  # it comes back as the newest


def test_delete_child_of_a_restarting_child_is_refused(looping: Looping) -> None:
    with pytest.raises(da.ChildRestarting):
        looping.sup.delete_child("loop")


def test_count_children_counts_specs_active_and_types(sups: Supervisors, log: EventLog) -> None:
    inner = da.Supervisor.child_spec("inner", [probe_spec("i", log)])
    sup = sups.start([probe_spec("a", log), probe_spec("b", log), inner, probe_spec("c", log)])
    assert sup.count_children() == da.ChildCounts(specs=4, active=4, supervisors=1, workers=3)
    sup.terminate_child("b")
    sup.terminate_child("inner")
    assert sup.count_children() == da.ChildCounts(specs=4, active=2, supervisors=1, workers=3)


def test_a_restarting_child_is_not_active(looping: Looping) -> None:
    assert looping.sup.count_children() == da.ChildCounts(
        specs=2, active=1, supervisors=0, workers=2
    )


def test_which_child_finds_a_child_by_id_or_by_ref(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([probe_spec("a", log), probe_spec("b", log)])
    b = ref_of(sup, "b")
    assert sup.which_child("b") == da.ChildInfo("b", b, ChildType.WORKER)
    assert sup.which_child(b) == da.ChildInfo("b", b, ChildType.WORKER)
    with pytest.raises(da.ChildNotFound):
        sup.which_child("zz")
    stranger = Probe.start("s", log)
    try:
        with pytest.raises(da.ChildNotFound):
            sup.which_child(stranger)
    finally:
        stranger.stop()
    with pytest.raises(da.ChildNotFound):
        sup.which_child(["unhashable"])


def test_get_childspec_returns_the_full_spec_by_id_or_ref(sups: Supervisors, log: EventLog) -> None:
    spec = probe_spec("a", log, restart="transient", shutdown=1.5)
    sup = sups.start([spec])
    assert sup.get_childspec("a") == spec
    got = sup.get_childspec(ref_of(sup, "a"))
    assert (got.id, got.restart, got.shutdown, got.type, got.significant) == (
        "a",
        da.Restart.TRANSIENT,
        1.5,
        ChildType.WORKER,
        False,
    )
    with pytest.raises(da.ChildNotFound):
        sup.get_childspec("nope")


def test_every_call_on_a_stopped_supervisor_raises_no_proc(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log)])
    sup.stop()
    assert not sup.is_alive()
    calls: list[tuple[str, Any]] = [
        ("start_child", lambda: sup.start_child(probe_spec("b", log))),
        ("terminate_child", lambda: sup.terminate_child("a")),
        ("restart_child", lambda: sup.restart_child("a")),
        ("delete_child", lambda: sup.delete_child("a")),
        ("which_children", sup.which_children),
        ("which_child", lambda: sup.which_child("a")),
        ("count_children", sup.count_children),
        ("get_childspec", lambda: sup.get_childspec("a")),
        ("stop", sup.stop),
    ]
    for name, call in calls:
        with pytest.raises(da.NoProc, match=f"is not running \\(calling {name}\\)"):
            call()
    assert sup.wait(1) is da.SHUTDOWN


def test_a_handle_from_the_ref_of_a_dead_supervisor_raises_no_proc(
    sups: Supervisors,
) -> None:
    sup = sups.start([])
    sup.stop()
    with pytest.raises(da.NoProc):
        da.Supervisor.from_ref(sup.actor_ref).count_children()


def test_terminate_child_on_a_restarting_child_cancels_the_retries(
    looping: Looping,
) -> None:
    sup = looping.sup
    assert sup.which_child("loop").ref is da.RESTARTING
    sup.terminate_child("loop")
    calls = looping.flaky.calls
    sync(sup.actor_ref)  # any retry still queued has been handled by now, and did nothing
    assert looping.flaky.calls == calls
    assert sup.which_child("loop").ref is None
    assert counts(sup) == (2, 1, 0, 2)
    sup.delete_child("loop")
    assert ids(sup) == ["a"]


def test_a_call_that_gets_no_answer_in_time_raises_call_timeout(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log)])
    with gate(sup.actor_ref), pytest.raises(da.CallTimeout, match="which_children"):
        sup.which_children(timeout=0.05)
    assert ids(sup) == ["a"]  # it answers again once released


def test_a_crashed_child_gets_a_new_ref_and_answers(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([probe_spec("a", log)])
    old = ref_of(sup, "a")
    crash_and_settle(sup, old)
    assert ref_of(sup, "a").ask(Ping(), timeout=5) == ("pong", "a")


def test_from_ref_drives_a_child_supervisor_found_in_which_children(
    sups: Supervisors, log: EventLog
) -> None:
    inner = da.Supervisor.child_spec("inner", [probe_spec("i", log)])
    sup = sups.start([probe_spec("a", log), inner])
    info = sup.which_child("inner")
    assert info.type is ChildType.SUPERVISOR
    assert isinstance(info.ref, pykka.ActorRef)
    child_sup = da.Supervisor.from_ref(info.ref)
    assert child_sup.actor_ref is info.ref
    assert child_sup == da.Supervisor.from_ref(info.ref)
    assert ids(child_sup) == ["i"]
    child_sup.start_child(probe_spec("j", log))
    assert ids(child_sup) == ["j", "i"]


def test_a_child_name_clash_passes_already_started_through_and_stores_nothing(
    sups: Supervisors, log: EventLog
) -> None:
    holder = Probe.start("holder", log)
    try:
        da.register("api-taken-name", holder)
        sup = sups.start([])
        with pytest.raises(da.AlreadyStarted) as info:
            sup.start_child(probe_spec("a", log, name="api-taken-name"))
        assert not isinstance(info.value, da.StartChildError)  # unwrapped, as in OTP
        assert info.value.ref is holder
        assert ids(sup) == []
        assert log.kinds("stop") == [("a", da.SHUTDOWN)]  # the clashing child was stopped
        assert da.whereis("api-taken-name") is holder
    finally:
        holder.stop()


def test_a_named_child_is_registered_again_after_every_restart(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([probe_spec("a", log, name="named_a")])
    first = da.whereis("named_a")
    assert first is ref_of(sup, "a")
    crash_and_settle(sup, first)
    assert da.whereis("named_a") is ref_of(sup, "a")
    assert da.whereis("named_a") is not first


def test_from_ref_rejects_a_ref_that_is_not_a_supervisor(sups: Supervisors, log: EventLog) -> None:
    sup = sups.start([probe_spec("a", log)])
    worker = ref_of(sup, "a")
    with pytest.raises(TypeError, match="expected the ActorRef of a Supervisor, got: <ActorRef"):
        da.Supervisor.from_ref(worker)
    with pytest.raises(TypeError, match="expected the ActorRef of a Supervisor, got: 'a'"):
        da.Supervisor.from_ref("a")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="of a DynamicSupervisor"):
        da.DynamicSupervisor.from_ref(sup.actor_ref)


def test_a_named_child_that_exits_before_its_name_is_registered_is_handled_as_an_exit(
    sups: Supervisors,
) -> None:
    """`register` refusing a dead child is handled as the child's exit, not raised as a bare
    NoProc."""

    class Quick(da.Actor):
        pass

    def start_and_stop() -> pykka.ActorRef[Any]:
        ref = Quick.start()
        ref.stop()
        return ref

    sup = sups.start([ChildSpec("w", start_and_stop, name="quick-w", restart="temporary")])
    sync(sup.actor_ref)  # the child's exit signal, queued at link time, has been handled
    assert sup.which_children() == []
    assert da.whereis("quick-w") is None
