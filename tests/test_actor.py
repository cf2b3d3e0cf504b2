"""The actor core: exit reasons, synchronous start, links, monitors, kill; pykka's traps closed."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope

import dspex_actors as da
from dspex_actors.testing import gate, kill_and_wait, sync

from support.logs import Records

WAIT = 5.0


class Echo(da.Actor):
    """Answers asks; `boom` crashes it; `exit` raises SystemExit(3); `exit0` SystemExit(0)."""

    def __init__(self, log: list[str] | None = None) -> None:
        super().__init__()
        self.log = log if log is not None else []

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        if message == "exit":
            raise SystemExit(3)
        if message == "exit0":
            raise SystemExit(0)
        if message == "interrupt":
            raise KeyboardInterrupt
        self.log.append(message)
        return message

    def on_stop(self) -> None:
        self.log.append("on_stop")

    def on_failure(self, *exc_info: Any) -> None:
        self.log.append("on_failure")


class Trapper(da.Actor):
    trap_exits = True

    def __init__(self, seen: list[da.Exit], got: threading.Event) -> None:
        super().__init__()
        self.seen = seen
        self.got = got

    def link_to(self, ref: pykka.ActorRef[Any]) -> None:
        self.link(ref)

    def on_exit_signal(self, exit: da.Exit) -> None:
        self.seen.append(exit)
        self.got.set()


class Linker(da.Actor):
    def link_to(self, ref: pykka.ActorRef[Any]) -> None:
        self.link(ref)

    def unlink_from(self, ref: pykka.ActorRef[Any]) -> None:
        self.unlink(ref)


class Watcher(da.Actor):
    def __init__(self, downs: list[da.Down], got: threading.Event) -> None:
        super().__init__()
        self.downs = downs
        self.got = got

    def watch(self, ref: pykka.ActorRef[Any]) -> da.MonitorRef:
        return self.monitor(ref)

    def unwatch(self, mref: da.MonitorRef) -> None:
        self.demonitor(mref)

    def on_down(self, down: da.Down) -> None:
        self.downs.append(down)
        self.got.set()


class PlainEcho(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise KeyError("plain boom")
        return message


def down_event(ref: pykka.ActorRef[Any]) -> tuple[threading.Event, list[da.Down]]:
    event = threading.Event()
    downs: list[da.Down] = []

    def on_down(down: da.Down) -> None:
        downs.append(down)
        event.set()

    da.monitor(ref, on_down)
    return event, downs


# --- exit reasons --------------------------------------------------------------------------


def test_a_crash_in_a_told_message_is_the_exit_reason() -> None:
    ref = Echo.start()
    ref.tell("boom")
    reason = da.wait_exit(ref, WAIT)
    assert isinstance(reason, ValueError)
    assert str(reason) == "boom"


def test_stop_reports_normal_and_runs_on_stop() -> None:
    log: list[str] = []
    ref = Echo.start(log)
    assert ref.stop(timeout=WAIT) is True
    assert da.exit_reason(ref) is da.NORMAL
    assert log == ["on_stop"]


def test_an_exception_in_an_ask_goes_to_the_caller_and_the_actor_lives_on() -> None:
    ref = Echo.start()
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=WAIT)
    assert ref.ask("still here", timeout=WAIT) == "still here"
    ref.stop()


def test_exit_with_a_shutdown_reason_is_reported_and_counts_as_normal() -> None:
    class Quitter(da.Actor):
        def quit(self) -> None:
            self.exit(da.Shutdown("done"))

    ref = Quitter.start()
    ref.proxy().quit().get(timeout=WAIT)
    reason = da.wait_exit(ref, WAIT)
    assert reason == da.Shutdown("done")
    assert da.is_normal_exit(reason)


def test_is_normal_exit_classifies_the_reasons() -> None:
    assert da.is_normal_exit(da.NORMAL)
    assert da.is_normal_exit(da.SHUTDOWN)
    assert da.is_normal_exit(da.Shutdown({"why": 1}))
    assert not da.is_normal_exit(da.KILLED)
    assert not da.is_normal_exit(da.NOPROC)
    assert not da.is_normal_exit(ValueError("x"))


def test_exit_reason_is_none_while_running() -> None:
    ref = Echo.start()
    assert da.exit_reason(ref) is None
    ref.stop()


def test_wait_exit_raises_call_timeout_on_a_running_actor() -> None:
    ref = Echo.start()
    with pytest.raises(da.CallTimeout) as info:
        da.wait_exit(ref, 0.01)
    assert isinstance(info.value, TimeoutError)
    ref.stop()


# --- start is synchronous --------------------------------------------------------------------


def test_start_returns_only_after_on_start_has_run() -> None:
    started: list[str] = []

    class Slow(da.Actor):
        def on_start(self) -> None:
            started.append("on_start")

    ref = Slow.start()
    assert started == ["on_start"]
    ref.stop()


def test_an_on_start_failure_raises_start_error_with_the_exception_as_reason() -> None:
    failures: list[str] = []

    class Bad(da.Actor):
        def on_start(self) -> None:
            raise RuntimeError("cannot init")

        def on_failure(self, *exc_info: Any) -> None:
            failures.append("on_failure")

    with pytest.raises(da.StartError) as info:
        Bad.start()
    assert isinstance(info.value.reason, RuntimeError)
    assert info.value.__cause__ is info.value.reason
    assert info.value.actor_class is Bad
    assert failures == ["on_failure"]  # pykka would skip on_failure here


def test_an_on_start_that_hangs_fails_start_after_start_timeout_and_is_killed() -> None:
    release = threading.Event()

    class Hangs(da.Actor):
        start_timeout = 0.05

        def on_start(self) -> None:
            release.wait(WAIT)

    refs_before = set(pykka.ActorRegistry.get_all())
    with pytest.raises(da.StartError) as info:
        Hangs.start()
    assert isinstance(info.value.reason, TimeoutError)
    (ref,) = set(pykka.ActorRegistry.get_all()) - refs_before
    release.set()
    assert da.wait_exit(ref, WAIT) is da.KILLED


class PatientStart(da.Actor):
    """Waits for its `on_start` as long as it takes (`start_timeout = inf`)."""

    start_timeout = float("inf")

    def on_start(self) -> None:
        # Still running when start() begins to wait (nobody sets this event: a bounded hold).
        threading.Event().wait(0.3)


def test_an_infinite_start_timeout_waits_for_on_start_like_none() -> None:
    """`start_timeout = inf` means "wait for `on_start` however long it takes": `start()`
    returns the running actor's ref (it does not fail and leave an actor nobody holds)."""
    ref = PatientStart.start()
    assert ref.is_alive()
    ref.stop()
    assert da.wait_exit(ref) is da.NORMAL


# --- monitors see the end of cleanup -------------------------------------------------------


def test_down_arrives_only_after_on_failure_has_finished() -> None:
    entered, release = threading.Event(), threading.Event()

    class SlowCleanup(da.Actor):
        def on_receive(self, message: Any) -> Any:
            raise ValueError(message)

        def on_failure(self, *exc_info: Any) -> None:
            entered.set()
            release.wait(WAIT)

    ref = SlowCleanup.start()
    got_down, downs = down_event(ref)
    ref.tell("crash")
    assert entered.wait(WAIT)
    assert not ref.is_alive()  # no longer accepting messages...
    assert not got_down.is_set()  # ...but its cleanup is still running: no Down yet
    release.set()
    assert got_down.wait(WAIT)
    assert isinstance(downs[0].reason, ValueError)


def test_stop_returns_after_on_stop_and_after_monitors_were_told() -> None:
    ref = Echo.start()
    got_down, downs = down_event(ref)
    ref.stop(timeout=WAIT)
    assert got_down.is_set()
    assert downs[0].reason is da.NORMAL


def test_monitor_on_an_exited_actor_gets_an_immediate_down_with_its_reason() -> None:
    ref = Echo.start()
    ref.tell("boom")
    da.wait_exit(ref, WAIT)
    got_down, downs = down_event(ref)
    assert got_down.is_set()
    assert isinstance(downs[0].reason, ValueError)


def test_an_actor_monitor_calls_on_down_and_demonitor_flushes_it() -> None:
    downs: list[da.Down] = []
    got = threading.Event()
    watcher = Watcher.start(downs, got)
    target, other = Echo.start(), Echo.start()
    mref = watcher.proxy().watch(target).get(timeout=WAIT)
    mref_other = watcher.proxy().watch(other).get(timeout=WAIT)
    watcher.proxy().unwatch(mref_other).get(timeout=WAIT)
    other.tell("boom")
    target.tell("boom")
    assert got.wait(WAIT)
    da.wait_exit(other, WAIT)
    sync(watcher)
    assert [d.monitor_ref for d in downs] == [mref]
    assert downs[0].ref is target
    watcher.stop()


def test_demonitor_from_plain_code_prevents_the_callback() -> None:
    ref = Echo.start()
    calls: list[da.Down] = []
    mref = da.monitor(ref, calls.append)
    da.demonitor(mref)
    da.demonitor(mref)  # idempotent
    ref.stop()
    assert calls == []


# --- links --------------------------------------------------------------------------------------


def test_a_linked_actor_exits_with_its_peers_abnormal_reason() -> None:
    linker, peer = Linker.start(), Echo.start()
    linker.proxy().link_to(peer).get(timeout=WAIT)
    peer.tell("boom")
    reason = da.wait_exit(linker, WAIT)
    assert isinstance(reason, ValueError)
    assert reason is da.exit_reason(peer)


def test_a_normal_exit_does_not_propagate_through_a_link() -> None:
    linker, peer = Linker.start(), Echo.start()
    linker.proxy().link_to(peer).get(timeout=WAIT)
    peer.stop()
    sync(linker)
    assert linker.is_alive()
    linker.stop()


def test_shutdown_propagates_through_a_link_as_in_erlang() -> None:
    linker, peer = Linker.start(), Echo.start()
    linker.proxy().link_to(peer).get(timeout=WAIT)
    da.send_exit(peer, da.SHUTDOWN)
    assert da.wait_exit(peer, WAIT) is da.SHUTDOWN
    assert da.wait_exit(linker, WAIT) is da.SHUTDOWN


def test_links_are_bidirectional() -> None:
    linker, peer = Linker.start(), Echo.start()
    linker.proxy().link_to(peer).get(timeout=WAIT)
    da.kill(linker)
    assert da.wait_exit(peer, WAIT) is da.KILLED


def test_a_trapping_actor_gets_on_exit_signal_and_lives_on() -> None:
    seen: list[da.Exit] = []
    got = threading.Event()
    trapper, peer = Trapper.start(seen, got), Echo.start()
    trapper.proxy().link_to(peer).get(timeout=WAIT)
    peer.tell("exit")
    assert got.wait(WAIT)
    assert seen[0].ref is peer
    assert isinstance(seen[0].reason, SystemExit)
    assert trapper.is_alive()
    trapper.stop()


def test_unlink_stops_propagation() -> None:
    linker, peer = Linker.start(), Echo.start()
    linker.proxy().link_to(peer).get(timeout=WAIT)
    linker.proxy().unlink_from(peer).get(timeout=WAIT)
    peer.tell("boom")
    da.wait_exit(peer, WAIT)
    sync(linker)
    assert linker.is_alive()
    linker.stop()


def test_linking_to_an_exited_actor_delivers_its_exit_signal_at_once() -> None:
    peer = Echo.start()
    peer.tell("boom")
    da.wait_exit(peer, WAIT)
    linker = Linker.start()
    linker.proxy().link_to(peer).get(timeout=WAIT)
    assert isinstance(da.wait_exit(linker, WAIT), ValueError)


def test_send_exit_killed_cannot_be_trapped() -> None:
    trapper = Trapper.start([], threading.Event())
    da.send_exit(trapper, da.KILLED)
    assert da.wait_exit(trapper, WAIT) is da.KILLED


def test_send_exit_normal_is_ignored_by_a_non_trapping_actor() -> None:
    ref = Echo.start()
    da.send_exit(ref, da.NORMAL)
    sync(ref)
    assert ref.is_alive()
    ref.stop()


# --- kill: what a thread can and cannot do -------------------------------------------------------


def test_kill_stops_at_the_next_message_boundary_and_drops_the_inbox() -> None:
    log: list[str] = []
    ref = Echo.start(log)
    with gate(ref) as g:
        queued = [ref.ask(f"m{i}", block=False) for i in range(3)]
        da.kill(ref)
        g.release()
        assert da.wait_exit(ref, WAIT) is da.KILLED
    for future in queued:
        with pytest.raises(pykka.ActorDeadError):
            future.get(timeout=WAIT)
    assert log == []  # no queued message ran, and no cleanup hook (on_stop) either


def test_kill_and_wait_returns_killed() -> None:
    assert kill_and_wait(Echo.start()) is da.KILLED


def test_killing_a_dead_actor_does_nothing() -> None:
    ref = Echo.start()
    ref.stop()
    da.kill(ref)
    assert da.exit_reason(ref) is da.NORMAL


# --- pykka's traps, closed -----------------------------------------------------------------------


def test_system_exit_in_one_actor_stops_only_that_actor() -> None:
    bystander = Echo.start()
    victim = Echo.start()
    victim.tell("exit")
    reason = da.wait_exit(victim, WAIT)
    assert isinstance(reason, SystemExit)
    assert reason.code == 3
    assert bystander.ask("alive?", timeout=WAIT) == "alive?"  # pykka would have stopped it
    bystander.stop()


def test_system_exit_zero_is_a_normal_exit() -> None:
    ref = Echo.start()
    ref.tell("exit0")
    assert da.wait_exit(ref, WAIT) is da.NORMAL


def test_keyboard_interrupt_in_an_ask_ends_only_that_actor_and_the_asker_gets_actor_dead() -> None:
    bystander = Echo.start()
    victim = Echo.start()
    with pytest.raises(pykka.ActorDeadError, match="KeyboardInterrupt"):
        victim.ask("interrupt", timeout=WAIT)
    assert isinstance(da.wait_exit(victim, WAIT), KeyboardInterrupt)
    assert bystander.is_alive()
    bystander.stop()


def test_tells_queued_behind_a_crash_are_logged_as_dead_letters(
    records: Records,
) -> None:
    ref = Echo.start()
    with gate(ref) as g:
        ref.tell("boom")
        ref.tell("lost-1")
        asked = ref.ask("lost-2", block=False)
        g.release()
        da.wait_exit(ref, WAIT)
    with pytest.raises(pykka.ActorDeadError):
        asked.get(timeout=WAIT)
    letters = records.of("dead_letter")
    assert [r["message"] for r in letters] == ["'lost-1'"]
    crashes = records.of("actor_crashed")
    assert len(crashes) == 1


def test_a_message_put_into_a_dying_actor_is_rejected_at_once() -> None:
    entered, release = threading.Event(), threading.Event()

    class Lingers(da.Actor):
        def on_stop(self) -> None:
            entered.set()
            release.wait(WAIT)

    ref = Lingers.start()
    stopping = ref.stop(block=False)
    assert entered.wait(WAIT)
    late = pykka.ThreadingFuture[Any]()
    ref.actor_inbox.put(Envelope("late", reply_to=late))  # bypasses pykka's is_alive check
    with pytest.raises(pykka.ActorDeadError):
        late.get(timeout=WAIT)
    release.set()
    assert stopping.get(timeout=WAIT) is True


def test_a_plain_pykka_actors_crash_report_reaches_the_standard_logging_module(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pykka logs through `logging` ("pykka"): nothing of ours intercepts or hides it."""
    with caplog.at_level(logging.ERROR, logger="pykka"):
        ref = PlainEcho.start()
        ref.tell("boom")
        da.wait_exit(ref, WAIT)
    assert any(r.name.startswith("pykka") and r.levelno >= logging.ERROR for r in caplog.records)


# --- plain pykka actors ----------------------------------------------------------------------


def test_a_plain_pykka_actor_can_be_monitored_and_reports_its_crash() -> None:
    ref = PlainEcho.start()
    got_down, downs = down_event(ref)
    ref.tell("boom")
    assert got_down.wait(WAIT)
    assert isinstance(downs[0].reason, KeyError)


def test_a_plain_pykka_actor_reports_normal_after_stop_and_killed_after_kill() -> None:
    stopped, killed = PlainEcho.start(), PlainEcho.start()
    da.monitor(stopped, lambda d: None)
    stopped.stop()
    assert da.wait_exit(stopped, WAIT) is da.NORMAL
    assert kill_and_wait(killed) is da.KILLED


def test_a_plain_pykka_actor_exits_with_a_linked_peers_reason() -> None:
    plain = PlainEcho.start()
    linker = Linker.start()
    linker.proxy().link_to(plain).get(timeout=WAIT)
    linker.tell("not a method")  # Linker has no on_receive: logged, ignored
    da.kill(linker)
    assert da.wait_exit(plain, WAIT) is da.KILLED


def test_monitoring_a_plain_actor_that_already_stopped_reports_noproc() -> None:
    ref = PlainEcho.start()
    ref.stop()
    got_down, downs = down_event(ref)
    assert got_down.is_set()
    assert downs[0].reason is da.NOPROC


# --- handles and helpers ---------------------------------------------------------------------


def test_a_handle_call_on_a_dead_actor_raises_noproc() -> None:
    ref = Echo.start()
    handle = da.ActorHandle(ref)
    handle.stop(timeout=WAIT)
    assert handle.wait(WAIT) is da.NORMAL
    with pytest.raises(da.NoProc) as info:
        handle.stop()
    assert isinstance(info.value, pykka.ActorDeadError)
    assert isinstance(info.value, LookupError)


def test_a_handle_call_that_gets_no_answer_raises_call_timeout() -> None:
    ref = Echo.start()
    handle = da.ActorHandle(ref)
    with gate(ref), pytest.raises(da.CallTimeout):
        handle._call("anything", 0.01, "probe")
    handle.stop()


@pytest.mark.parametrize("forever", [float("inf"), 1e300])
def test_a_handle_call_with_an_infinite_timeout_waits_like_none(forever: float) -> None:
    """`timeout=inf` (or a number too large for the OS to wait on) means "wait forever": the
    call is answered, so a `start_child` that started its child reports that child."""
    sup = da.Supervisor.start([])
    child = sup.start_child(Echo.child_spec(id="echo"), timeout=forever)
    assert [info.ref for info in sup.which_children(timeout=forever)] == [child]
    sup.stop(timeout=forever)
    assert da.wait_exit(sup.actor_ref, forever) is da.SHUTDOWN


def test_a_handle_call_from_the_actors_own_thread_is_refused() -> None:
    class SelfCaller(da.Actor):
        def call_self(self) -> None:
            da.ActorHandle(self.actor_ref).stop(timeout=WAIT)

    ref = SelfCaller.start()
    with pytest.raises(RuntimeError, match="would deadlock"):
        ref.proxy().call_self().get(timeout=WAIT)
    ref.stop()


def test_current_actor_is_the_running_actor_or_none() -> None:
    class WhoAmI(da.Actor):
        def me(self) -> Any:
            return da.current_actor()

    ref = WhoAmI.start()
    assert ref.proxy().me().get(timeout=WAIT) is ref
    assert da.current_actor() is None
    ref.stop()


def test_monitor_rejects_something_that_is_not_an_actor_ref() -> None:
    with pytest.raises(TypeError, match="expected a pykka ActorRef"):
        da.monitor("not a ref", lambda d: None)  # type: ignore[arg-type]


def test_a_killed_peer_makes_a_linked_actor_exit_killed_with_its_cleanup_hook_run() -> None:
    """Only kill() skips on_stop; an exit *signal* whose reason is KILLED is an ordinary exit."""
    log: list[str] = []

    class Cleans(Linker):
        def on_stop(self) -> None:
            log.append("on_stop")

    linker, peer = Cleans.start(), Echo.start()
    linker.proxy().link_to(peer).get(timeout=WAIT)
    da.kill(peer)
    assert da.wait_exit(linker, WAIT) is da.KILLED
    assert log == ["on_stop"]


def test_a_kill_overrides_a_pending_stop_and_skips_on_stop() -> None:
    log: list[str] = []
    ref = Echo.start(log)
    with gate(ref) as g:
        ref.stop(block=False)
        da.kill(ref)
        g.release()
        assert da.wait_exit(ref, WAIT) is da.KILLED
    assert log == []
