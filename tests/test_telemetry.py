"""Telemetry events: attach/detach, prefix matching, failing handlers, spans, thread safety, and
the events the supervisors, ports, pools, process pools and session pools really emit, checked
against their pull side (`which_child`, `exit_status`, `status()`, `worker_stats()`).

Every handler a test attaches is detached at teardown (the `recorder` fixture), so the
process-wide handler table is empty between tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import _telemetry, telemetry
from dspex_actors.bridge import CommandError
from dspex_actors.testing import FakeClock, sync, wait_for

from support.lifecycle import ProcessPools
from support.logs import EventLog, Records
from support.pools import Pools, Waiter, hold, release, settled, wait_queued
from support.ports import EXITS, STALL, Ports, echo
from support.sessions import SessionPools, create_program, unique
from support.supervision import Crash, ExitWith, Probe, Supervisors, crash_and_settle, ref_of

ROOT = Path(__file__).parent.parent
EVENT = ("my_app", "job", "done")
OTHER = ("my_app", "job", "failed")
WAIT = 5.0


class Recorder:
    """A handler that records ``(event, measurements, metadata, config)`` and can wait for
    them, bounded; `attach` attaches it (or any handler) and remembers the id for teardown."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], dict[str, float], dict[str, Any], Any]] = []
        self._cond = threading.Condition()
        self.ids: list[Any] = []

    def __call__(
        self,
        event: tuple[str, ...],
        measurements: Mapping[str, float],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        with self._cond:
            self.calls.append((event, dict(measurements), dict(metadata), config))
            self._cond.notify_all()

    def attach(
        self, handler_id: Any, events: list[tuple[str, ...]], handler: Any = None, **kw: Any
    ) -> None:
        telemetry.attach(handler_id, events, self if handler is None else handler, **kw)
        self.ids.append(handler_id)

    def events(self) -> list[tuple[str, ...]]:
        with self._cond:
            return [c[0] for c in self.calls]

    def of(self, event: tuple[str, ...]) -> list[dict[str, Any]]:
        """The metadata of every call for `event`."""
        with self._cond:
            return [c[2] for c in self.calls if c[0] == event]

    def measured(self, event: tuple[str, ...]) -> list[dict[str, float]]:
        with self._cond:
            return [c[1] for c in self.calls if c[0] == event]

    def wait_for(self, event: tuple[str, ...], n: int = 1, timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: sum(1 for c in self.calls if c[0] == event) >= n, timeout
            )


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    try:
        yield rec
    finally:
        for handler_id in rec.ids:
            telemetry.detach(handler_id)
    assert telemetry.list_handlers() == [], "a test left a telemetry handler attached"


# --- attach, detach, list ----------------------------------------------------------------------


def test_a_handler_gets_its_events_with_their_measurements_metadata_and_config(
    recorder: Recorder,
) -> None:
    recorder.attach("h", [EVENT], config={"unit": "jobs"})
    telemetry.emit(EVENT, {"count": 1}, {"job": "nightly"})
    assert recorder.calls == [(EVENT, {"count": 1}, {"job": "nightly"}, {"unit": "jobs"})]


def test_a_handler_gets_only_the_events_it_is_attached_to(recorder: Recorder) -> None:
    recorder.attach("h", [EVENT, OTHER])
    telemetry.emit(("my_app", "job"), {}, {})
    telemetry.emit(("my_app", "job", "done", "late"), {}, {})
    telemetry.emit(OTHER, {}, {})
    telemetry.emit(EVENT, {}, {})
    assert recorder.events() == [OTHER, EVENT]


def test_a_prefix_handler_gets_every_event_that_starts_with_its_prefix(
    recorder: Recorder,
) -> None:
    recorder.attach("pool", [("dspex", "pool")], prefix=True)
    for event in [
        telemetry.POOL_CHECKOUT_STOP,
        telemetry.POOL_CHECKIN,
        telemetry.PORT_OPENED,
        ("dspex", "poolside"),  # a prefix matches whole parts, not characters
        ("dspex",),
        ("dspex", "pool"),
    ]:
        telemetry.emit(event, {}, {})
    assert recorder.events() == [
        telemetry.POOL_CHECKOUT_STOP,
        telemetry.POOL_CHECKIN,
        ("dspex", "pool"),
    ]


def test_the_empty_prefix_gets_every_event(recorder: Recorder) -> None:
    recorder.attach("all", [()], prefix=True)
    telemetry.emit(EVENT, {}, {})
    telemetry.emit(telemetry.PORT_EXITED, {}, {})
    assert recorder.events() == [EVENT, telemetry.PORT_EXITED]


def test_handlers_run_in_attach_order_and_each_once_per_event(recorder: Recorder) -> None:
    order: list[str] = []
    recorder.attach("b", [EVENT], lambda *_: order.append("b"))
    recorder.attach("a", [("my_app",), EVENT], lambda *_: order.append("a"), prefix=True)
    recorder.attach("c", [EVENT, EVENT], lambda *_: order.append("c"))
    telemetry.emit(EVENT, {}, {})
    assert order == ["b", "a", "c"]


def test_attaching_a_second_handler_under_one_id_raises_invalid_option_and_keeps_the_first(
    recorder: Recorder,
) -> None:
    recorder.attach("h", [EVENT])
    with pytest.raises(da.InvalidOption, match="handler_id must be an id that is not") as info:
        telemetry.attach("h", [OTHER], print)
    assert info.value.code == "already_exists"
    [handler] = telemetry.list_handlers()
    assert handler.function is recorder
    assert handler.events == (EVENT,)


@pytest.mark.parametrize(
    ("handler_id", "events", "handler", "option"),
    [
        ("h", EVENT, print, "events"),  # one bare event: the list is missing
        ("h", [], print, "events"),
        ("h", "dspex.pool", print, "events"),
        ("h", [["dspex", "pool"]], print, "events"),
        ("h", [("dspex", 1)], print, "events"),
        ("h", [()], print, "events"),  # the empty event only as a prefix
        ("h", [EVENT], "print", "handler"),
        (["unhashable"], [EVENT], print, "handler_id"),
    ],
)
def test_attach_refuses_bad_arguments_before_attaching_anything(
    handler_id: Any, events: Any, handler: Any, option: str
) -> None:
    with pytest.raises(da.InvalidOption) as info:
        telemetry.attach(handler_id, events, handler)
    assert info.value.option == option
    assert telemetry.list_handlers() == []
    assert _telemetry.active is False


def test_detach_removes_a_handler_and_answers_false_for_an_unknown_id(
    recorder: Recorder,
) -> None:
    recorder.attach("h", [EVENT])
    assert telemetry.detach("h") is True
    telemetry.emit(EVENT, {}, {})
    assert recorder.calls == []
    assert telemetry.detach("h") is False
    assert telemetry.detach("never attached") is False


def test_list_handlers_lists_every_handler_in_attach_order_and_filters_by_prefix(
    recorder: Recorder,
) -> None:
    recorder.attach("pool", [telemetry.POOL_CHECKIN], config=1)
    recorder.attach("ports", [("dspex", "port")], prefix=True)
    recorder.attach(("mine", 2), [EVENT])
    assert [h.id for h in telemetry.list_handlers()] == ["pool", "ports", ("mine", 2)]
    assert [h.id for h in telemetry.list_handlers(("dspex",))] == ["pool", "ports"]
    [ports] = telemetry.list_handlers(("dspex", "port"))
    assert ports == telemetry.HandlerInfo("ports", (("dspex", "port"),), True, recorder, None)
    assert telemetry.list_handlers(("nobody",)) == []


def active() -> bool:
    """`_telemetry.active`, read afresh (a function, so that no check narrows it)."""
    return _telemetry.active


def test_active_is_true_exactly_while_some_handler_is_attached(recorder: Recorder) -> None:
    assert active() is False
    recorder.attach("a", [EVENT])
    assert active() is True
    recorder.attach("b", [OTHER])
    telemetry.detach("a")
    assert active() is True
    telemetry.detach("b")
    assert active() is False


# --- a handler that raises ---------------------------------------------------------------------


def test_a_raising_handler_is_detached_and_logged_and_the_emitter_goes_on(
    recorder: Recorder, records: Records
) -> None:
    def broken(*_: Any) -> None:
        raise ZeroDivisionError("bad handler")

    recorder.attach("broken", [EVENT], broken)
    recorder.attach("good", [EVENT])
    telemetry.emit(EVENT, {}, {"n": 1})  # returns normally
    telemetry.emit(EVENT, {}, {"n": 2})
    assert [md["n"] for md in recorder.of(EVENT)] == [1, 2]  # the other handler is unaffected
    assert [h.id for h in telemetry.list_handlers()] == ["good"]
    [record] = records.of("telemetry_handler_detached")
    assert record["level"] == "ERROR"
    assert record["handler_id"] == "broken"
    assert record["event"] == "telemetry_handler_detached"
    assert "'broken' raised on event ('my_app', 'job', 'done')" in record["text"]


def test_the_last_handler_failing_turns_active_off(recorder: Recorder, records: Records) -> None:
    recorder.attach("broken", [EVENT], lambda *_: 1 / 0)
    telemetry.emit(EVENT, {}, {})
    assert _telemetry.active is False
    assert len(records.of("telemetry_handler_detached")) == 1


def test_a_failing_handler_never_detaches_a_new_handler_attached_under_its_id(
    recorder: Recorder, records: Records
) -> None:
    def replaces_itself_then_fails(*_: Any) -> None:
        telemetry.detach("h")
        telemetry.attach("h", [EVENT], recorder)
        raise RuntimeError("the old one fails")

    recorder.attach("h", [EVENT], replaces_itself_then_fails)
    telemetry.emit(EVENT, {}, {"n": 1})
    telemetry.emit(EVENT, {}, {"n": 2})
    assert [md["n"] for md in recorder.of(EVENT)] == [2]
    assert [h.function for h in telemetry.list_handlers()] == [recorder]
    assert records.of("telemetry_handler_detached") == []  # it was gone already


def test_a_span_whose_handler_raises_still_runs_its_block_and_returns_its_value(
    recorder: Recorder, records: Records
) -> None:
    recorder.attach("broken", [(*EVENT, "start")], lambda *_: 1 / 0)
    with telemetry.span(EVENT) as s:
        result = "done"
    assert result == "done"
    assert s.context > 0
    assert len(records.of("telemetry_handler_detached")) == 1


# --- spans -------------------------------------------------------------------------------------


def test_a_span_emits_start_then_stop_with_its_duration_and_one_context(
    recorder: Recorder,
) -> None:
    recorder.attach("spans", [("my_app", "render")], prefix=True)
    with telemetry.span(("my_app", "render"), {"page": "home"}) as s:
        pass
    start, stop = recorder.calls
    assert start[0] == ("my_app", "render", "start")
    assert stop[0] == ("my_app", "render", "stop")
    assert set(start[1]) == {"system_time", "monotonic_time"}
    assert set(stop[1]) == {"duration", "monotonic_time"}
    assert stop[1]["duration"] >= 0.0
    assert stop[1]["monotonic_time"] - start[1]["monotonic_time"] == stop[1]["duration"]
    context = start[2][telemetry.SPAN_CONTEXT]
    assert start[2] == {"page": "home", telemetry.SPAN_CONTEXT: context}
    assert stop[2] == start[2]
    assert s.context == context


def test_a_span_emits_exception_with_kind_and_reason_and_reraises_unchanged(
    recorder: Recorder,
) -> None:
    recorder.attach("spans", [("my_app", "render")], prefix=True)
    error = KeyError("missing")
    with pytest.raises(KeyError) as info, telemetry.span(("my_app", "render"), {"page": "x"}):
        raise error
    assert info.value is error
    start, failed = recorder.calls
    assert failed[0] == ("my_app", "render", "exception")
    assert set(failed[1]) == {"duration", "monotonic_time"}
    assert failed[2]["kind"] == "KeyError"
    assert failed[2]["reason"] is error
    assert failed[2]["page"] == "x"
    assert failed[2][telemetry.SPAN_CONTEXT] == start[2][telemetry.SPAN_CONTEXT]


def test_metadata_added_inside_a_span_reaches_its_end_event_only(recorder: Recorder) -> None:
    recorder.attach("spans", [("my_app", "render")], prefix=True)
    with telemetry.span(("my_app", "render"), {"page": "home"}) as s:
        s.metadata["worker"] = "#Port<3>"
    start, stop = recorder.calls
    assert "worker" not in start[2]
    assert stop[2]["worker"] == "#Port<3>"


def test_every_span_gets_its_own_context(recorder: Recorder) -> None:
    recorder.attach("spans", [("my_app", "render", "start")])
    for _ in range(3):
        with telemetry.span(("my_app", "render")):
            pass
    contexts = [md[telemetry.SPAN_CONTEXT] for md in recorder.of(("my_app", "render", "start"))]
    assert len(set(contexts)) == 3


def test_start_span_ends_once_with_stop_or_exception(recorder: Recorder) -> None:
    recorder.attach("spans", [("my_app", "call")], prefix=True)
    s = telemetry.start_span(("my_app", "call"), {"pool": "p"})
    s.stop({"queue_wait": 0.25}, {"worker_id": 2})
    s.stop()
    s.exception(RuntimeError("late"))
    assert recorder.events() == [("my_app", "call", "start"), ("my_app", "call", "stop")]
    stop = recorder.calls[1]
    assert stop[1]["queue_wait"] == 0.25
    assert stop[2]["worker_id"] == 2
    assert stop[2]["pool"] == "p"


def test_a_span_started_with_nothing_attached_stays_silent_to_its_end(
    recorder: Recorder,
) -> None:
    with telemetry.span(("my_app", "render")):
        recorder.attach("late", [("my_app", "render")], prefix=True)
    assert recorder.calls == []  # never a stop without its start


# --- thread safety -----------------------------------------------------------------------------


def test_attach_and_detach_while_another_thread_emits_lose_and_duplicate_nothing(
    recorder: Recorder,
) -> None:
    emits = 20_000
    seen: list[int] = []
    per_handler: dict[int, list[int]] = {}
    go = threading.Barrier(2, timeout=WAIT)
    errors: list[BaseException] = []

    def always(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        seen.append(metadata["n"])

    def sometimes(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        per_handler.setdefault(config, []).append(metadata["n"])

    def emitter() -> None:
        try:
            go.wait()
            for n in range(emits):
                if _telemetry.active:
                    telemetry.emit(EVENT, {"count": 1}, {"n": n})
        except BaseException as exc:  # reported below, never lost in the thread
            errors.append(exc)

    recorder.attach("always", [EVENT], always)
    thread = threading.Thread(target=emitter, name="test-emitter")
    thread.start()
    go.wait()
    for i in range(300):
        telemetry.attach(("sometimes", i), [("my_app",)], sometimes, config=i, prefix=True)
        telemetry.detach(("sometimes", i))
    thread.join(60)
    assert not thread.is_alive()
    assert errors == []
    assert seen == list(range(emits))  # the handler attached throughout got every event once
    for got in per_handler.values():  # each short-lived one got a run of events, in order
        assert got == sorted(set(got))
    assert [h.id for h in telemetry.list_handlers()] == ["always"]


def test_handlers_attached_from_many_threads_at_once_are_all_kept(recorder: Recorder) -> None:
    threads, each = 8, 50
    go = threading.Barrier(threads, timeout=WAIT)

    def attach_many(t: int) -> None:
        go.wait()
        for i in range(each):
            recorder.attach((t, i), [EVENT])

    workers = [threading.Thread(target=attach_many, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(WAIT)
    assert not any(w.is_alive() for w in workers)
    assert len(telemetry.list_handlers()) == threads * each
    telemetry.emit(EVENT, {}, {})
    assert len(recorder.calls) == threads * each


# --- the supervisors' events -------------------------------------------------------------------


def test_a_supervisor_reports_each_child_it_starts(
    recorder: Recorder, sups: Supervisors, log: EventLog
) -> None:
    recorder.attach("sup", [("dspex", "supervisor")], prefix=True)
    sup = sups.start(
        [Probe.child_spec("a", log, id="a"), Probe.child_spec("b", log, id="b")],
        name="telemetry_sup_starts",
    )
    started = recorder.of(telemetry.SUPERVISOR_CHILD_STARTED)
    assert [md["child_id"] for md in started] == ["a", "b"]
    for md in started:
        assert md["supervisor"] == "telemetry_sup_starts"
        assert md["child_type"] == "worker"
        assert md["ref"] == ref_of(sup, md["child_id"])  # the pull side names the same ref
    assert recorder.measured(telemetry.SUPERVISOR_CHILD_STARTED) == [{"count": 1}] * 2


def test_a_crashed_child_is_reported_exited_with_its_reason_then_restarted_with_its_new_ref(
    recorder: Recorder, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([Probe.child_spec("w", log, id="w")], name="telemetry_sup_crash")
    old = ref_of(sup, "w")
    recorder.attach("sup", [("dspex", "supervisor")], prefix=True)
    crash_and_settle(sup, old, Crash("kaboom"))
    assert recorder.events() == [
        telemetry.SUPERVISOR_CHILD_EXITED,
        telemetry.SUPERVISOR_CHILD_STARTED,
        telemetry.SUPERVISOR_CHILD_RESTARTED,
    ]
    [exited] = recorder.of(telemetry.SUPERVISOR_CHILD_EXITED)
    assert exited["supervisor"] == "telemetry_sup_crash"
    assert exited["child_id"] == "w"
    assert exited["ref"] == old
    assert isinstance(exited["reason"], RuntimeError)
    assert str(exited["reason"]) == "kaboom"
    assert exited["normal"] is False
    assert exited["restart"] is True
    [restarted] = recorder.of(telemetry.SUPERVISOR_CHILD_RESTARTED)
    new = ref_of(sup, "w")
    assert new != old
    assert restarted == {"supervisor": "telemetry_sup_crash", "child_id": "w", "ref": new}


def test_a_transient_childs_normal_exit_is_reported_normal_and_not_restarted(
    recorder: Recorder, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start([Probe.child_spec("t", log, id="t", restart="transient")])
    recorder.attach("sup", [("dspex", "supervisor")], prefix=True)
    crash_and_settle(sup, ref_of(sup, "t"), ExitWith(da.NORMAL))
    [exited] = recorder.of(telemetry.SUPERVISOR_CHILD_EXITED)
    assert exited["reason"] is da.NORMAL
    assert exited["normal"] is True
    assert exited["restart"] is False
    assert recorder.of(telemetry.SUPERVISOR_CHILD_RESTARTED) == []
    assert sup.which_child("t").ref is None  # the pull side agrees: stopped, not restarted


def test_a_supervisor_that_gives_up_reports_intensity_exceeded(
    recorder: Recorder, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [Probe.child_spec("w", log, id="w")],
        name="telemetry_sup_gives_up",
        max_restarts=0,
        clock=FakeClock(),
    )
    recorder.attach("sup", [("dspex", "supervisor")], prefix=True)
    ref_of(sup, "w").tell(Crash())
    assert da.wait_exit(sup.actor_ref, WAIT) is da.SHUTDOWN
    assert recorder.events() == [
        telemetry.SUPERVISOR_CHILD_EXITED,
        telemetry.SUPERVISOR_INTENSITY_EXCEEDED,
    ]
    [gave_up] = recorder.of(telemetry.SUPERVISOR_INTENSITY_EXCEEDED)
    assert gave_up == {
        "supervisor": "telemetry_sup_gives_up",
        "child_id": "w",
        "max_restarts": 0,
        "max_seconds": 5.0,
    }


def test_a_dynamic_supervisors_restart_is_reported_with_the_new_ref(
    recorder: Recorder, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.dynamic(name="telemetry_dynsup")
    ref = sup.start_child(Probe.child_spec("d", log))
    assert isinstance(ref, pykka.ActorRef)
    recorder.attach("sup", [("dspex", "supervisor")], prefix=True)
    crash_and_settle(sup, ref)
    [restarted] = recorder.of(telemetry.SUPERVISOR_CHILD_RESTARTED)
    [child] = sup.which_children()
    assert restarted["ref"] == child.ref
    assert restarted["supervisor"] == "telemetry_dynsup"


# --- the ports' events -------------------------------------------------------------------------


@pytest.mark.leak_check
def test_a_killed_port_reports_its_opening_then_its_exit_with_status_minus_9(
    recorder: Recorder, ports: Ports
) -> None:
    recorder.attach("ports", [("dspex", "port")], prefix=True)
    port = ports.open(STALL)
    port.kill()
    status = port.wait_exit(WAIT)
    # Emitted before the exit is visible: no wait for the event after wait_exit.
    assert recorder.events() == [telemetry.PORT_OPENED, telemetry.PORT_EXITED]
    [opened] = recorder.of(telemetry.PORT_OPENED)
    [exited] = recorder.of(telemetry.PORT_EXITED)
    assert opened["port"] is port
    assert opened["port_id"] == port.id
    assert opened["os_pid"] == port.os_pid
    assert opened["program"].startswith("python")
    assert status == -9
    assert exited["status"] == port.exit_status == -9  # the pull side agrees
    assert exited["signal"] == "SIGKILL"
    assert exited["closing"] is False
    assert exited["os_pid"] == port.os_pid
    [measured] = recorder.measured(telemetry.PORT_EXITED)
    assert measured["count"] == 1
    assert measured["lifetime"] >= 0.0


def test_a_ports_exit_event_comes_before_its_exit_is_visible(
    recorder: Recorder, ports: Ports
) -> None:
    seen: list[tuple[Any, Any]] = []

    def look(event: Any, m: Any, md: Mapping[str, Any], config: Any) -> None:
        seen.append((md["port"].exit_status, md["port"].info() is None))

    recorder.attach("look", [telemetry.PORT_EXITED], look)
    port = ports.open(EXITS)
    assert port.wait_exit(WAIT) == 3
    assert seen == [(None, False)]  # while its handler ran, nobody could see the exit yet


@pytest.mark.leak_check
def test_a_port_that_exits_by_itself_reports_its_exit_status(
    recorder: Recorder, ports: Ports
) -> None:
    recorder.attach("ports", [telemetry.PORT_EXITED])
    port = ports.open(EXITS)
    assert port.wait_exit(WAIT) == 3
    [exited] = recorder.of(telemetry.PORT_EXITED)
    assert exited["status"] == 3
    assert exited["signal"] is None
    assert exited["closing"] is False


@pytest.mark.leak_check
def test_a_closed_spawned_port_reports_its_handler_and_a_closing_exit(
    recorder: Recorder, ports: Ports
) -> None:
    recorder.attach("ports", [("dspex", "port")], prefix=True)
    port = ports.spawn(echo)
    assert port.request({"n": 1}, timeout=30) == {"n": 1}
    port.close()
    [opened] = recorder.of(telemetry.PORT_OPENED)
    [exited] = recorder.of(telemetry.PORT_EXITED)
    assert opened["program"] == "echo"
    assert exited["closing"] is True
    assert exited["status"] == port.exit_status


# --- the pools' events -------------------------------------------------------------------------


class Resource(da.PoolWorker):
    """Worker n hands out n. Its checkin state decides: ``"remove"`` removes it (reason
    ``"bye"``), ``"recycle"`` recycles it (``"old"``), anything else keeps it. `init_arg`: how
    many worker starts fail first; `Async` (a threading.Event) makes every start asynchronous,
    finishing once the event is set."""

    def init_pool(self, init_arg: Any) -> da.Ok:
        fails, gate = init_arg if isinstance(init_arg, tuple) else (init_arg or 0, None)
        return da.Ok({"next": 0, "fails": fails, "gate": gate})

    def init_worker(self, pool_state: Any) -> da.Ok | da.Async:
        if pool_state["fails"]:
            pool_state["fails"] -= 1
            raise RuntimeError("no start this time")
        pool_state["next"] += 1
        n: int = pool_state["next"]
        gate = pool_state["gate"]
        if gate is None:
            return da.Ok(n, pool_state)

        def start() -> int:
            assert gate.wait(WAIT)
            return n

        return da.Async(start, pool_state)

    def handle_checkout(self, command: Any, from_: da.From, ws: Any, ps: Any) -> da.Ok:
        return da.Ok(ws, ws, ps)

    def handle_checkin(self, cs: Any, from_: da.From, ws: Any, ps: Any) -> da.Ok | da.Remove:
        if cs == "remove":
            return da.Remove("bye", ps)
        if cs == "recycle":
            return da.Remove(da.Recycle("old"), ps)
        return da.Ok(ws, ps)

    def handle_ping(self, ws: Any, ps: Any) -> da.Ok:
        return da.Ok(ws)


def keep(from_: da.From, n: Any) -> tuple[Any, Any]:
    return n, n


def checkout_with(state: Any) -> Callable[[da.From, Any], tuple[Any, Any]]:
    """A checkout function that checks its worker in with `state`."""
    return lambda from_, n: (n, state)


def fails(from_: da.From, n: Any) -> tuple[Any, Any]:
    raise ZeroDivisionError("the caller's work failed")


POOL = ("dspex", "pool")


def test_a_checkout_from_an_idle_pool_emits_start_stop_and_checkin_with_no_queue_wait(
    recorder: Recorder, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=1)
    recorder.attach("pool", [POOL], prefix=True)
    worker = pool.checkout("cmd", lambda from_, n: (from_.worker_id, "ok"))
    assert recorder.events() == [
        telemetry.POOL_CHECKOUT_START,
        telemetry.POOL_CHECKOUT_STOP,
        telemetry.POOL_CHECKIN,
    ]
    (_, started, start_md, _), (_, stopped, stop_md, _), (_, held, checkin_md, _) = recorder.calls
    context = start_md[telemetry.SPAN_CONTEXT]
    assert start_md == {"pool": pool.name, telemetry.SPAN_CONTEXT: context}
    assert set(started) == {"system_time", "monotonic_time"}
    assert stop_md == {"pool": pool.name, "worker_id": worker, telemetry.SPAN_CONTEXT: context}
    assert set(stopped) == {"duration", "queue_wait", "monotonic_time"}
    assert stopped["queue_wait"] == 0.0  # a worker was idle
    assert checkin_md == {"pool": pool.name, "worker_id": worker, "result": "ok"}
    assert set(held) == {"hold_time"}
    assert held["hold_time"] >= 0.0


def test_a_queued_checkout_reports_the_time_it_spent_in_the_queue(
    recorder: Recorder, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=1)
    recorder.attach("pool", [POOL], prefix=True)
    lease = hold(pool)
    worker = lease.from_.worker_id
    waiter = Waiter(pool)
    wait_queued(pool, 1)
    release(lease)
    assert waiter.join().error is None
    first, queued = recorder.measured(telemetry.POOL_CHECKOUT_STOP)
    assert first["queue_wait"] == 0.0
    assert 0.0 < queued["queue_wait"] <= queued["duration"]
    held, waited = recorder.of(telemetry.POOL_CHECKIN)
    assert held["worker_id"] == waited["worker_id"] == worker


def test_a_checkin_reports_ok_error_or_removed_as_the_workers_stats_count_it(
    recorder: Recorder, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=1)
    recorder.attach("pool", [POOL], prefix=True)
    pool.checkout(None, checkout_with("fine"))
    pool.checkout(None, checkout_with(("error", "bad input")))
    [stats] = pool.worker_stats()
    assert (stats.successful_checkins, stats.error_checkins) == (1, 1)
    with pytest.raises(ZeroDivisionError):
        pool.checkout(None, fails)
    assert wait_for(lambda: settled(pool, 1), WAIT)
    results = [md["result"] for md in recorder.of(telemetry.POOL_CHECKIN)]
    assert results == ["ok", "error", "removed"]
    [removed] = recorder.of(telemetry.POOL_WORKER_REMOVED)
    assert removed == {"pool": pool.name, "worker_id": stats.worker_id, "reason": "error"}


def test_removed_and_recycled_workers_are_reported_with_their_reasons(
    recorder: Recorder, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=1)
    recorder.attach("pool", [POOL], prefix=True)
    pool.checkout(None, checkout_with("remove"))
    assert wait_for(lambda: settled(pool, 1), WAIT)
    pool.checkout(None, checkout_with("recycle"))
    assert wait_for(lambda: settled(pool, 1) and pool.status().workers_removed == 2, WAIT)
    [removed] = recorder.of(telemetry.POOL_WORKER_REMOVED)
    assert removed == {"pool": pool.name, "worker_id": 1, "reason": "bye"}
    [recycled] = recorder.of(telemetry.POOL_WORKER_RECYCLED)
    assert recycled == {"pool": pool.name, "worker_id": 2, "reason": "old"}
    assert recorder.measured(telemetry.POOL_WORKER_RECYCLED) == [{"count": 1}]
    started = [md["worker_id"] for md in recorder.of(telemetry.POOL_WORKER_INIT_STOP)]
    assert started == [2, 3]  # each replacement
    assert [w.worker_id for w in pool.worker_stats()] == [3]
    status = pool.status()
    assert (status.workers_removed, status.workers_recycled) == (2, 1)


def test_a_checkout_that_gets_no_worker_in_time_emits_exception_and_no_checkin(
    recorder: Recorder, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=1)
    lease = hold(pool)  # checked out before anything listened
    recorder.attach("pool", [POOL], prefix=True)
    with pytest.raises(da.PoolTimeout) as info:
        pool.checkout(None, keep, timeout=0)
    release(lease)  # its checkout went unobserved: no checkin either
    assert recorder.events() == [telemetry.POOL_CHECKOUT_START, telemetry.POOL_CHECKOUT_EXCEPTION]
    [failed] = recorder.of(telemetry.POOL_CHECKOUT_EXCEPTION)
    assert failed["kind"] == "PoolTimeout"
    assert failed["reason"] is info.value
    assert failed["pool"] == pool.name
    assert set(recorder.measured(telemetry.POOL_CHECKOUT_EXCEPTION)[0]) == {
        "duration",
        "monotonic_time",
    }


def test_a_failed_worker_start_emits_exception_then_the_retry_emits_stop(
    recorder: Recorder, pools: Pools, records: Records
) -> None:
    recorder.attach("init", [telemetry.POOL_WORKER_INIT], prefix=True)
    pool = pools.start(Resource, 1, pool_size=1)  # the first start raises
    assert wait_for(lambda: settled(pool, 1), WAIT)
    assert recorder.events() == [
        telemetry.POOL_WORKER_INIT_START,
        telemetry.POOL_WORKER_INIT_EXCEPTION,
        telemetry.POOL_WORKER_INIT_START,
        telemetry.POOL_WORKER_INIT_STOP,
    ]
    start, failed, restart, stop = (md for _, _, md, _ in recorder.calls)
    assert failed["kind"] == "RuntimeError"
    assert str(failed["reason"]) == "no start this time"
    assert failed[telemetry.SPAN_CONTEXT] == start[telemetry.SPAN_CONTEXT]
    assert stop[telemetry.SPAN_CONTEXT] == restart[telemetry.SPAN_CONTEXT]
    assert stop["worker_id"] == pool.worker_stats()[0].worker_id
    assert len(records.of("pool_callback_error")) == 1


def test_an_async_worker_start_ends_its_span_when_the_worker_joins(
    recorder: Recorder, pools: Pools
) -> None:
    gate = threading.Event()
    recorder.attach("init", [telemetry.POOL_WORKER_INIT], prefix=True)
    pool = pools.start(Resource, (0, gate), pool_size=1)
    assert recorder.events() == [telemetry.POOL_WORKER_INIT_START]  # still starting
    gate.set()
    assert recorder.wait_for(telemetry.POOL_WORKER_INIT_STOP)
    [stop] = recorder.of(telemetry.POOL_WORKER_INIT_STOP)
    assert wait_for(lambda: settled(pool, 1), WAIT)
    assert stop["worker_id"] == pool.worker_stats()[0].worker_id


def test_idle_pings_are_reported_per_worker(recorder: Recorder, pools: Pools) -> None:
    clock = FakeClock()
    pool = pools.start(Resource, pool_size=2, worker_idle_timeout=10.0, clock=clock)
    recorder.attach("ping", [telemetry.POOL_WORKER_PING])
    clock.advance(10.0)
    sync(pool.actor_ref)
    pinged = recorder.of(telemetry.POOL_WORKER_PING)
    assert pinged == [
        {"pool": pool.name, "worker_id": 1, "result": "ok"},
        {"pool": pool.name, "worker_id": 2, "result": "ok"},
    ]
    assert recorder.measured(telemetry.POOL_WORKER_PING) == [{"count": 1}] * 2


def test_an_overflow_worker_dismissed_at_its_checkin_is_reported_removed(
    recorder: Recorder, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=1, max_overflow=1)
    recorder.attach("removed", [telemetry.POOL_WORKER_REMOVED])
    lease = hold(pool)
    overflow = hold(pool)
    release(overflow)
    release(lease)
    sync(pool.actor_ref)
    [removed] = recorder.of(telemetry.POOL_WORKER_REMOVED)
    assert removed == {"pool": pool.name, "worker_id": 2, "reason": "overflow"}
    assert pool.status().workers_removed == 1


def test_the_awaited_checkout_emits_the_same_events(recorder: Recorder, pools: Pools) -> None:
    pool = pools.start(Resource, pool_size=1)
    recorder.attach("pool", [POOL], prefix=True)

    async def use_async(from_: da.From, n: Any) -> tuple[Any, Any]:
        return n, n

    async def main() -> None:
        await pool.acheckout(None, use_async)
        async with pool.alease(None):
            pass

    asyncio.run(main())
    one = [
        telemetry.POOL_CHECKOUT_START,
        telemetry.POOL_CHECKOUT_STOP,
        telemetry.POOL_CHECKIN,
    ]
    assert recorder.events() == one * 2
    assert [md["result"] for md in recorder.of(telemetry.POOL_CHECKIN)] == ["ok", "ok"]


def test_an_awaited_checkout_cancelled_in_the_queue_emits_exception(
    recorder: Recorder, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=1)
    lease = hold(pool)
    recorder.attach("pool", [POOL], prefix=True)

    async def main() -> None:
        with pytest.raises(TimeoutError):  # the worker is held throughout: never served
            await asyncio.wait_for(pool.acheckout(None, keep), 0.05)

    asyncio.run(main())
    release(lease)
    assert recorder.events() == [telemetry.POOL_CHECKOUT_START, telemetry.POOL_CHECKOUT_EXCEPTION]
    [failed] = recorder.of(telemetry.POOL_CHECKOUT_EXCEPTION)
    assert failed["kind"] == "CancelledError"


@pytest.mark.parametrize("timeout", [None, 5.0])
def test_a_task_cancelled_after_its_grant_reports_the_grant_and_a_removed_checkin(
    recorder: Recorder, pools: Pools, timeout: float | None
) -> None:
    """The pool grants the queued task a worker, then the task is cancelled before it runs:
    the pool counted that checkout, so the events show it (stop, then a "removed" checkin),
    the worker is removed, and the task really is cancelled (with a timeout too)."""
    pool = pools.start(Resource, pool_size=1)
    recorder.attach("pool", [POOL], prefix=True)

    async def main() -> None:
        lease = hold(pool)
        task = asyncio.create_task(pool.acheckout(None, keep, timeout))
        while pool.status().queued == 0:
            await asyncio.sleep(0)  # bounded by the test's timeout: the task queues at once
        release(lease)  # granted to the queued task, whose coroutine has not run yet
        assert wait_for(lambda: pool.status().queued == 0, WAIT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert wait_for(lambda: pool.status().workers_removed == 1, WAIT)
    assert pool.status().checkouts == 2
    assert len(recorder.of(telemetry.POOL_CHECKOUT_STOP)) == 2
    assert [md["result"] for md in recorder.of(telemetry.POOL_CHECKIN)] == ["ok", "removed"]
    assert recorder.of(telemetry.POOL_CHECKOUT_EXCEPTION) == []
    [removed] = recorder.of(telemetry.POOL_WORKER_REMOVED)
    assert removed["reason"] == "cancelled"


def test_a_handler_that_raises_in_a_callers_checkout_is_detached_and_the_pool_serves_on(
    recorder: Recorder, pools: Pools, records: Records
) -> None:
    pool = pools.start(Resource, pool_size=1)
    recorder.attach("broken", [telemetry.POOL_CHECKOUT_STOP], lambda *_: 1 / 0)
    recorder.attach("checkins", [telemetry.POOL_CHECKIN])
    assert pool.checkout(None, keep) == 1
    assert pool.checkout(None, keep) == 1
    assert [h.id for h in telemetry.list_handlers()] == ["checkins"]
    assert len(recorder.of(telemetry.POOL_CHECKIN)) == 2
    [record] = records.of("telemetry_handler_detached")
    assert record["handler_id"] == "broken"
    status = pool.status()
    assert (status.idle, status.checkouts) == (1, 2)


def test_a_handler_that_raises_in_the_pools_thread_is_detached_and_the_pool_serves_on(
    recorder: Recorder, pools: Pools, records: Records
) -> None:
    pool = pools.start(Resource, pool_size=1)
    recorder.attach("broken", [telemetry.POOL_WORKER_INIT_STOP], lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pool.checkout(None, fails)  # removed in the pool's thread, which starts another
    assert wait_for(lambda: settled(pool, 1), WAIT)
    assert telemetry.list_handlers() == []
    assert len(records.of("telemetry_handler_detached")) == 1
    assert pool.checkout(None, keep) == 2
    assert pool.is_alive()


def test_events_agree_with_status_and_worker_stats_after_a_concurrent_workload(
    recorder: Recorder, pools: Pools
) -> None:
    recorder.attach("pool", [POOL], prefix=True)
    pool = pools.start(Resource, pool_size=2)
    go = threading.Barrier(4, timeout=WAIT)
    errors: list[BaseException] = []

    def client(t: int) -> None:
        try:
            go.wait()
            for i in range(25):
                if (t + i) % 11 == 0:
                    with contextlib.suppress(ZeroDivisionError):
                        pool.checkout(None, fails)
                elif (t + i) % 5 == 0:
                    pool.checkout(None, checkout_with(("error", i)))
                elif (t + i) % 13 == 0:
                    pool.checkout(None, checkout_with("remove"))
                else:
                    pool.checkout(None, keep)
        except BaseException as exc:  # reported below, never lost in the thread
            errors.append(exc)

    clients = [threading.Thread(target=client, args=(t,)) for t in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(WAIT * 4)
    assert not any(c.is_alive() for c in clients)
    assert errors == []
    assert wait_for(lambda: settled(pool, 2), WAIT)
    status = pool.status()
    stops = recorder.of(telemetry.POOL_CHECKOUT_STOP)
    checkins = recorder.of(telemetry.POOL_CHECKIN)
    assert len(stops) == status.checkouts == 100
    assert len(checkins) == 100
    assert len(recorder.of(telemetry.POOL_WORKER_INIT_STOP)) == status.workers_started
    assert len(recorder.of(telemetry.POOL_WORKER_REMOVED)) == status.workers_removed > 0
    assert recorder.of(telemetry.POOL_CHECKOUT_EXCEPTION) == []
    for stats in pool.worker_stats():
        mine = [md["result"] for md in checkins if md["worker_id"] == stats.worker_id]
        assert sum(1 for md in stops if md["worker_id"] == stats.worker_id) == stats.checkouts
        assert mine.count("ok") == stats.successful_checkins
        assert mine.count("error") == stats.error_checkins
        assert "removed" not in mine  # a removed worker is no longer listed


def test_with_nothing_attached_a_checkout_builds_no_span(pools: Pools) -> None:
    pool = pools.start(Resource, pool_size=1)
    assert not _telemetry.active
    with pool.lease(None) as lease:
        # The From is the pool's request: its span is the fast path's one test.
        assert lease.from_.span is None  # type: ignore[attr-defined]


# --- the process pools' events -----------------------------------------------------------------


def double(request: Any) -> Any:
    if request == "boom":
        raise ValueError("no booms")
    return request * 2


def worker_port(pool: da.ProcessPool) -> str:
    """The text of the one worker's port (a pool of one)."""
    with pool.lease(None, timeout=WAIT) as lease:
        return str(lease.client_state)


REQUEST = ("dspex", "process_pool")


@pytest.mark.leak_check
def test_a_process_pool_call_is_a_request_span_around_its_checkout(
    recorder: Recorder, process_pools: ProcessPools
) -> None:
    pool = process_pools.start(target=double, pool_size=1)
    recorder.attach("requests", [REQUEST, telemetry.POOL_CHECKOUT_STOP], prefix=True)
    assert pool.call(21, timeout=30) == 42
    assert recorder.events() == [
        telemetry.PROCESS_POOL_REQUEST_START,
        telemetry.POOL_CHECKOUT_STOP,
        telemetry.PROCESS_POOL_REQUEST_STOP,
    ]
    start, checkout, stop = (md for _, _, md, _ in recorder.calls)
    assert start == {"pool": pool.name, telemetry.SPAN_CONTEXT: start[telemetry.SPAN_CONTEXT]}
    assert stop == {
        "pool": pool.name,
        "worker": worker_port(pool),  # the pull side names the same worker
        "worker_id": checkout["worker_id"],
        telemetry.SPAN_CONTEXT: start[telemetry.SPAN_CONTEXT],
    }
    [measured] = recorder.measured(telemetry.PROCESS_POOL_REQUEST_STOP)
    assert measured["attempts"] == 1
    assert set(measured) == {"duration", "monotonic_time", "attempts"}


@pytest.mark.leak_check
def test_a_process_pool_call_that_raises_emits_exception_with_its_worker(
    recorder: Recorder, process_pools: ProcessPools
) -> None:
    pool = process_pools.start(target=double, pool_size=1)
    recorder.attach("requests", [REQUEST], prefix=True)
    with pytest.raises(da.RemoteError) as info:
        pool.call("boom", timeout=30)
    [failed] = recorder.of(telemetry.PROCESS_POOL_REQUEST_EXCEPTION)
    assert failed["kind"] == "RemoteError"
    assert failed["reason"] is info.value
    assert failed["worker"] == worker_port(pool)
    assert recorder.measured(telemetry.PROCESS_POOL_REQUEST_EXCEPTION)[0]["attempts"] == 1


@pytest.mark.leak_check
def test_a_process_pool_call_that_gets_no_worker_reports_zero_attempts(
    recorder: Recorder, process_pools: ProcessPools
) -> None:
    pool = process_pools.start(target=double, pool_size=1)
    recorder.attach("requests", [REQUEST], prefix=True)
    with pool.lease(None, timeout=WAIT), pytest.raises(da.PoolTimeout):
        pool.call(1, timeout=0)
    [failed] = recorder.of(telemetry.PROCESS_POOL_REQUEST_EXCEPTION)
    assert failed["kind"] == "PoolTimeout"
    assert "worker" not in failed
    assert recorder.measured(telemetry.PROCESS_POOL_REQUEST_EXCEPTION)[0]["attempts"] == 0


@pytest.mark.leak_check
def test_a_retried_call_counts_its_attempts_and_names_the_worker_that_answered(
    recorder: Recorder, process_pools: ProcessPools, tmp_path: Path
) -> None:
    marker = tmp_path / "crashed-once"

    def flaky(request: Any, path: str) -> Any:
        if not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return request + 1

    pool = process_pools.start(target=flaky, args=(str(marker),), pool_size=1, retries=2)
    recorder.attach("requests", [REQUEST, telemetry.POOL_WORKER_REMOVED], prefix=True)
    assert pool.call(41, timeout=30) == 42
    [stop] = recorder.of(telemetry.PROCESS_POOL_REQUEST_STOP)
    assert recorder.measured(telemetry.PROCESS_POOL_REQUEST_STOP)[0]["attempts"] == 2
    [removed] = recorder.of(telemetry.POOL_WORKER_REMOVED)
    assert stop["worker_id"] != removed["worker_id"]  # the replacement answered
    assert stop["worker"] == worker_port(pool)


@pytest.mark.leak_check
def test_the_awaited_process_pool_call_emits_the_same_events(
    recorder: Recorder, process_pools: ProcessPools
) -> None:
    pool = process_pools.start(target=double, pool_size=1)
    recorder.attach("requests", [REQUEST], prefix=True)
    assert asyncio.run(pool.acall(21, timeout=30)) == 42
    assert recorder.events() == [
        telemetry.PROCESS_POOL_REQUEST_START,
        telemetry.PROCESS_POOL_REQUEST_STOP,
    ]
    assert recorder.of(telemetry.PROCESS_POOL_REQUEST_STOP)[0]["worker"] == worker_port(pool)


# --- the bridge's events -----------------------------------------------------------------------


BRIDGE = ("dspex", "bridge")
QUESTION = {"program_id": "p", "inputs": {"question": "What is 2+2?"}}


@pytest.mark.leak_check
def test_bridge_commands_are_spans_and_affinity_events_agree_with_the_pools_counts(
    recorder: Recorder, spools: SessionPools
) -> None:
    pool = spools.compat(pool_size=2)
    recorder.attach("bridge", [BRIDGE], prefix=True)
    sid = unique()
    create_program(pool, sid, "p")  # the session's first command: neither hit nor miss
    for _ in range(2):
        pool.execute_in_session(sid, "execute_program", QUESTION)
    home = pool.status().sessions[sid].worker_id
    with pool.lease(None, timeout=WAIT, worker=home, affinity="strict"):
        pool.execute_in_session(sid, "execute_program", QUESTION)  # served elsewhere
    status = pool.status()
    hits = recorder.of(telemetry.BRIDGE_AFFINITY_HIT)
    misses = recorder.of(telemetry.BRIDGE_AFFINITY_MISS)
    assert (len(hits), len(misses)) == (status.affinity_hits, status.affinity_misses) == (2, 1)
    assert hits[0] == {"pool": pool.name, "session_id": sid, "worker_id": home}
    assert misses[0]["worker_id"] == status.sessions[sid].worker_id != home
    stops = recorder.of(telemetry.BRIDGE_COMMAND_STOP)
    assert [md["command"] for md in stops] == ["create_program"] + ["execute_program"] * 3
    assert {md["session_id"] for md in stops} == {sid}
    assert len(recorder.of(telemetry.BRIDGE_COMMAND_START)) == 4
    for md in stops:
        assert md["pool"] == pool.name
        assert md["worker"].startswith("#Port<")


@pytest.mark.leak_check
def test_a_failing_bridge_command_emits_exception_and_the_awaited_one_the_same(
    recorder: Recorder, spools: SessionPools
) -> None:
    pool = spools.compat(pool_size=1)
    recorder.attach("bridge", [BRIDGE], prefix=True)
    with pytest.raises(CommandError) as info:
        pool.execute_anonymous("no_such_command")
    with pytest.raises(CommandError):
        asyncio.run(pool.aexecute_anonymous("no_such_command"))
    first, second = recorder.of(telemetry.BRIDGE_COMMAND_EXCEPTION)
    assert first["kind"] == second["kind"] == "CommandError"
    assert first["reason"] is info.value
    assert first["session_id"] == "anonymous"
    assert first["command"] == "no_such_command"
    assert first["worker"] == second["worker"]
    assert recorder.of(telemetry.BRIDGE_COMMAND_STOP) == []


@pytest.mark.leak_check
def test_a_single_bridges_commands_are_the_same_spans(recorder: Recorder) -> None:
    from dspex_actors.bridge import Bridge

    mock_worker = [sys.executable, "-m", "dspex_actors.bridge.worker", "--backend", "mock"]
    bridge = Bridge.start(worker_argv=mock_worker, name=None)
    try:
        recorder.attach("bridge", [BRIDGE], prefix=True)
        assert bridge.execute_in_session("s1", "ping")["status"] == "ok"
        with pytest.raises(CommandError):
            bridge.execute_anonymous("no_such_command")
    finally:
        bridge.stop()
    assert recorder.events() == [
        telemetry.BRIDGE_COMMAND_START,
        telemetry.BRIDGE_COMMAND_STOP,
        telemetry.BRIDGE_COMMAND_START,
        telemetry.BRIDGE_COMMAND_EXCEPTION,
    ]
    [stopped] = recorder.of(telemetry.BRIDGE_COMMAND_STOP)
    assert (stopped["command"], stopped["session_id"]) == ("ping", "s1")
    assert stopped["pool"] == str(bridge.actor_ref)
    [failed] = recorder.of(telemetry.BRIDGE_COMMAND_EXCEPTION)
    assert (failed["kind"], failed["session_id"]) == ("CommandError", "anonymous")
    assert failed["worker"] == stopped["worker"]


# --- the catalogue -----------------------------------------------------------------------------


def test_every_catalogue_event_is_a_documented_public_constant_and_in_the_guide() -> None:
    guide = (ROOT / "docs" / "telemetry.md").read_text()
    names = {
        name: getattr(telemetry, name)
        for name in telemetry.__all__
        if re.fullmatch(r"[A-Z_]+", name) and isinstance(getattr(telemetry, name), tuple)
    }
    events = [value for name, value in names.items() if name != "EVENTS"]
    assert set(telemetry.EVENTS) <= set(events)
    for name in names:
        assert f"`{name}`" in guide, f"{name} is not in docs/telemetry.md"
    for event in telemetry.EVENTS:
        assert all(isinstance(part, str) for part in event)
        assert str(event).replace("'", '"') in guide, f"{event} is not in docs/telemetry.md"
