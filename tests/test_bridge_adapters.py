"""DSPex's adapter API on its three test layers, the scripted mock bridge, service detection,
and the single-bridge mode (one worker, many requests in flight, matched by id)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors.bridge import (
    Bridge,
    BridgeAdapter,
    CommandError,
    CommandTimeout,
    MockAdapter,
    MockScript,
    SessionPool,
    adapter_for_layer,
    detect_bridge,
)
from dspex_actors.bridge._mock import MockBridge, MockCrash, mock_outputs
from dspex_actors.testing import wait_for

SIGNATURE = {"inputs": [{"name": "question"}], "outputs": [{"name": "answer"}]}
MOCK_WORKER = [sys.executable, "-m", "dspex_actors.bridge.worker", "--backend", "mock"]
WAIT = 30.0


@pytest.fixture
def stoppers() -> Iterator[list[Any]]:
    """Handles to stop after the test (pools, bridges, supervisors, adapters)."""
    started: list[Any] = []
    try:
        yield started
    finally:
        for handle in reversed(started):
            close = getattr(handle, "close", None) or handle.stop
            if getattr(handle, "is_alive", lambda: True)():
                close()


# --- the adapter API on each layer ------------------------------------------------------------


@pytest.mark.parametrize("layer", ["layer_1", "layer_2", "layer_3"])
def test_the_adapter_api_works_the_same_on_every_layer(layer: str, stoppers: list[Any]) -> None:
    adapter = adapter_for_layer(layer, session_id="s1")
    stoppers.append(adapter) if isinstance(adapter, BridgeAdapter) else None
    program = adapter.create_program({"signature": SIGNATURE})
    assert program.startswith("pool_")
    outputs = adapter.execute_program(program, {"question": "2+2?"})
    assert set(outputs) == {"answer"}
    assert isinstance(outputs["answer"], str)
    assert adapter.list_programs() == [program]
    info = adapter.get_program_info(program)
    assert info["program_id"] == program
    assert info["execution_count"] == 1
    assert adapter.health_check() is True
    assert adapter.get_stats()["layer"] == layer
    assert adapter.configure_lm({"model": "offline"}) is True
    adapter.delete_program(program)
    assert adapter.list_programs() == []


def test_layers_1_and_2_answer_alike_and_layer_3_runs_dspy(stoppers: list[Any]) -> None:
    inputs = {"question": "what is a port?"}
    answers = []
    for layer in ("layer_1", "layer_2", "layer_3"):
        adapter = adapter_for_layer(layer, session_id="s")
        if isinstance(adapter, BridgeAdapter):
            stoppers.append(adapter)
        program = adapter.create_program({"id": "p", "signature": SIGNATURE})
        answers.append(adapter.execute_program(program, inputs)["answer"])
    assert answers[0] == answers[1] == mock_outputs(["answer"], inputs)["answer"]
    assert answers[2].startswith("[offline ")  # the DSPy worker's offline LM


def test_adapter_for_layer_takes_dspex_mode_names_and_refuses_others() -> None:
    assert isinstance(adapter_for_layer("mock_adapter"), MockAdapter)
    with pytest.raises(da.InvalidOption):
        adapter_for_layer("layer_4")


def test_a_session_adapter_sees_only_its_own_programs(stoppers: list[Any]) -> None:
    adapter = adapter_for_layer("bridge_mock", session_id="a")
    assert isinstance(adapter, BridgeAdapter)
    stoppers.append(adapter)
    other = adapter.session("b")
    adapter.create_program({"id": "mine", "signature": SIGNATURE})
    other.create_program({"id": "theirs", "signature": SIGNATURE})
    assert adapter.list_programs() == ["mine"]
    assert other.list_programs() == ["theirs"]


def test_mock_adapter_injected_errors_fail_the_next_call_only() -> None:
    adapter = MockAdapter()
    adapter.inject_error("create_program", "disk full")
    with pytest.raises(CommandError, match="disk full"):
        adapter.create_program({"signature": SIGNATURE})
    assert adapter.create_program({"id": "p", "signature": SIGNATURE}) == "p"
    adapter.reset()
    assert adapter.list_programs() == []


# --- the scripted mock ---------------------------------------------------------------------------


def test_the_mock_fails_the_commands_it_is_told_to_and_keeps_serving() -> None:
    bridge = MockBridge(script=MockScript(fail=frozenset({"get_stats"})))
    reply = bridge.respond({"id": 1, "command": "get_stats", "args": {}})
    assert reply is not None
    assert reply == {**reply, "success": False, "error": "scripted failure of get_stats"}
    assert bridge.respond({"id": 2, "command": "ping", "args": {}})["success"]  # type: ignore[index]


def test_the_mock_error_rate_is_reproducible_from_its_seed() -> None:
    def outcomes() -> list[bool]:
        bridge = MockBridge(script=MockScript(error_rate=0.5, seed=7))
        replies = [bridge.respond({"id": i, "command": "ping", "args": {}}) for i in range(20)]
        return [bool(r and r["success"]) for r in replies]

    first = outcomes()
    assert first == outcomes()
    assert 0 < first.count(True) < 20


def test_a_scripted_crash_raises_in_this_process() -> None:
    bridge = MockBridge(script=MockScript(crash_after=2))
    bridge.handle("ping", {})
    with pytest.raises(MockCrash):
        bridge.handle("ping", {})
    with pytest.raises(MockCrash):
        MockBridge().handle("ping", {"_mock": {"crash": True}})


@pytest.mark.leak_check
def test_a_mock_worker_told_to_crash_dies_and_the_session_survives_it(
    stoppers: list[Any],
) -> None:
    pool = SessionPool.start(pool_size=1, worker_argv=MOCK_WORKER, name=None)
    stoppers.append(pool)
    pool.execute_in_session("s", "create_program", {"id": "p", "signature": SIGNATURE})
    with pytest.raises(da.WorkerCrashed) as crashed:
        pool.execute_in_session("s", "ping", {"_mock": {"crash": True}})
    assert crashed.value.exit_status == 70
    # The replacement is rebuilt from the session store before the next command.
    listed = pool.execute_in_session("s", "list_programs")
    assert [p["id"] for p in listed["programs"]] == ["p"]


# --- service detection ---------------------------------------------------------------------------


@pytest.mark.leak_check
def test_detect_bridge_prefers_the_pool_then_the_single_bridge_then_fails(
    stoppers: list[Any],
) -> None:
    with pytest.raises(da.ServiceUnavailable, match="session_pool"):
        detect_bridge()
    bridge = Bridge.start(worker_argv=MOCK_WORKER)  # registered as "bridge"
    stoppers.append(bridge)
    assert isinstance(detect_bridge(), Bridge)
    pool = SessionPool.start(pool_size=1, worker_argv=MOCK_WORKER)  # as "session_pool"
    stoppers.append(pool)
    found = detect_bridge()
    assert isinstance(found, SessionPool)
    assert found.actor_ref == pool.actor_ref
    pool.stop()
    assert isinstance(detect_bridge(), Bridge)


@pytest.mark.leak_check
def test_detect_bridge_falls_back_to_the_registry(stoppers: list[Any]) -> None:
    registry = da.Registry.start("unique")
    stoppers.append(registry)
    bridge = Bridge.start(worker_argv=MOCK_WORKER, name=None)
    stoppers.append(bridge)
    registry.register("bridge", bridge.actor_ref)
    found = detect_bridge(registry=registry)
    assert isinstance(found, Bridge)
    assert found.execute_anonymous("ping")["status"] == "ok"


# --- the single bridge ---------------------------------------------------------------------------


@pytest.mark.leak_check
def test_a_single_bridge_keeps_many_requests_in_flight_and_matches_replies_by_id(
    stoppers: list[Any],
) -> None:
    bridge = Bridge.start(worker_argv=MOCK_WORKER, name=None)
    stoppers.append(bridge)
    bridge.execute_in_session("s", "create_program", {"id": "p", "signature": SIGNATURE})
    gate = threading.Event()
    results: dict[int, Any] = {}

    def slow_first() -> None:
        # Held until the others are written: the worker answers in order, so all of them
        # are in flight at once.
        results[-1] = bridge.execute_in_session("s", "ping", {"_mock": {"delay": 0.2}})

    def run(i: int) -> None:
        gate.wait(WAIT)
        results[i] = bridge.execute_in_session(
            "s", "execute_program", {"program_id": "p", "inputs": {"question": f"q{i}"}}
        )

    threads = [threading.Thread(target=slow_first)] + [
        threading.Thread(target=run, args=(i,)) for i in range(6)
    ]
    threads[0].start()
    wait_for(lambda: bridge.status().in_flight == 1, WAIT)
    for thread in threads[1:]:
        thread.start()
    gate.set()
    wait_for(lambda: bridge.status().in_flight >= 2, WAIT)
    for thread in threads:
        thread.join(WAIT)
    for i in range(6):
        assert results[i]["outputs"] == mock_outputs(["answer"], {"question": f"q{i}"})
    status = bridge.status()
    assert status.in_flight == 0
    assert status.requests_sent == status.responses_received


@pytest.mark.leak_check
def test_a_timed_out_request_leaves_the_single_bridge_serving_and_its_late_reply_is_dropped(
    stoppers: list[Any],
) -> None:
    bridge = Bridge.start(worker_argv=MOCK_WORKER, name=None)
    stoppers.append(bridge)
    with pytest.raises(CommandTimeout):
        bridge.execute_anonymous("ping", {"_mock": {"delay": 0.5}}, timeout=0.05)
    assert bridge.execute_anonymous("get_stats")["worker_id"] is not None  # its own reply
    wait_for(lambda: bridge.status().correlation_errors == 1, WAIT)


@pytest.mark.leak_check
def test_the_single_bridges_worker_dying_fails_requests_in_flight_and_ends_the_bridge(
    stoppers: list[Any],
) -> None:
    bridge = Bridge.start(worker_argv=MOCK_WORKER, name=None)
    stoppers.append(bridge)
    with pytest.raises(da.WorkerCrashed):
        bridge.execute_anonymous("ping", {"_mock": {"crash": True}})
    reason = bridge.wait(WAIT)
    assert isinstance(reason, da.PortExited)
    assert reason.status == 70
    with pytest.raises(da.NoProc):
        bridge.execute_anonymous("ping")


@pytest.mark.leak_check
def test_the_single_bridge_records_replies_in_the_order_the_worker_answered_them(
    stoppers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create_program answered before a worker-wide cleanup, whose caller wakes only after
    the cleanup's: the store must still know the program is gone from the worker (and create
    it again at its next use), not that the worker holds it (every later call would fail with
    "Program not found")."""
    bridge = Bridge.start(worker_argv=MOCK_WORKER, name=None)
    stoppers.append(bridge)
    core = bridge._core
    real_exchange = core.exchange
    cleaned = threading.Event()

    def exchange(message: dict[str, Any], *args: Any) -> Any:
        reply = real_exchange(message, *args)
        if message["command"] == "create_program":
            assert cleaned.wait(WAIT)  # this caller wakes late: after the cleanup is back
        return reply

    monkeypatch.setattr(core, "exchange", exchange)
    answered = core.responses_received
    creator = threading.Thread(
        target=bridge.execute_in_session,
        args=("s", "create_program", {"id": "p", "signature": SIGNATURE}),
    )
    creator.start()
    try:
        wait_for(lambda: core.responses_received > answered, WAIT)  # the worker created it
        assert bridge.execute_anonymous("cleanup")["programs_removed"] == 1
    finally:
        cleaned.set()
        creator.join(WAIT)
    args = {"program_id": "p", "inputs": {"question": "q"}}
    assert set(bridge.execute_in_session("s", "execute_program", args)["outputs"]) == {"answer"}


@pytest.mark.leak_check
def test_what_a_timed_out_command_did_on_the_single_bridges_worker_is_still_recorded(
    stoppers: list[Any],
) -> None:
    """A session rebuild step whose caller timed out still ran on the worker: once its late
    reply is in, the store knows the worker holds the program, and does not send the step
    again (which the worker would refuse: the program already exists there)."""
    bridge = Bridge.start(worker_argv=[*MOCK_WORKER, "--delay", "0.2"], name=None)
    stoppers.append(bridge)
    bridge.execute_in_session("s", "create_program", {"id": "p", "signature": SIGNATURE})
    assert bridge.execute_anonymous("cleanup")["programs_removed"] == 1
    late = bridge.status().correlation_errors
    args = {"program_id": "p", "inputs": {"question": "q"}}
    with pytest.raises(CommandTimeout):  # the rebuild step, create_program, takes 0.2 s
        bridge.execute_in_session("s", "execute_program", args, timeout=0.05)
    wait_for(lambda: bridge.status().correlation_errors > late, WAIT)  # its reply came in
    assert set(bridge.execute_in_session("s", "execute_program", args)["outputs"]) == {"answer"}


@pytest.mark.leak_check
def test_the_single_bridge_sends_a_command_that_undoes_the_session_without_rebuilding_it(
    stoppers: list[Any],
) -> None:
    bridge = Bridge.start(worker_argv=MOCK_WORKER, name=None)
    stoppers.append(bridge)
    core = bridge._core
    bridge.execute_in_session("s", "create_program", {"id": "p", "signature": SIGNATURE})
    assert bridge.execute_anonymous("cleanup")["programs_removed"] == 1  # p is gone there
    sent = core.requests_sent
    bridge.execute_in_session("s", "cleanup_session")
    assert core.requests_sent == sent + 1  # no create_program before it
    sent = core.requests_sent
    listed = bridge.execute_in_session("s", "list_programs")
    assert listed["total_count"] == 0  # the session was cleaned up: nothing to rebuild
    assert core.requests_sent == sent + 1


@pytest.mark.leak_check
def test_commands_written_behind_a_shutdown_fail_as_the_worker_is_gone(
    stoppers: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default target worker would go on answering after its shutdown (until the
    bridge closes it), cleared: a command written behind the shutdown must fail with
    `WorkerCrashed`, never get an answer from an emptied worker ("Program not found")."""
    bridge = Bridge.start(name=None)
    stoppers.append(bridge)
    core = bridge._core
    bridge.execute_in_session("s", "create_program", {"id": "p", "signature": SIGNATURE})
    real_recv = core.port.recv
    written_behind = threading.Event()

    def recv(timeout: float | None = None) -> Any:
        value = real_recv(timeout=timeout)
        reply = value[2] if isinstance(value, list) and len(value) == 3 else value
        if reply.get("result", {}).get("status") == "shutting_down":
            assert written_behind.wait(WAIT)  # the reader takes it once the next is written
        return value

    monkeypatch.setattr(core.port, "recv", recv)
    bridge.execute_anonymous("ping")  # the reader's next read is through `recv`
    outcomes: dict[str, Any] = {}

    def call(key: str, *args: Any) -> None:
        try:
            outcomes[key] = bridge.execute_in_session("s", *args)
        except Exception as exc:
            outcomes[key] = exc

    sent = core.requests_sent
    shutdown = threading.Thread(target=call, args=("shutdown", "shutdown"))
    shutdown.start()
    wait_for(lambda: core.requests_sent > sent, WAIT)
    behind = threading.Thread(
        target=call,
        args=("behind", "execute_program", {"program_id": "p", "inputs": {"question": "q"}}),
    )
    behind.start()
    try:
        wait_for(lambda: core.requests_sent > sent + 1, WAIT)
    finally:
        written_behind.set()
        shutdown.join(WAIT)
        behind.join(WAIT)
    assert outcomes["shutdown"]["status"] == "shutting_down"
    assert isinstance(outcomes["behind"], da.WorkerCrashed), outcomes["behind"]
    assert outcomes["behind"].delivered is True
    assert bridge.wait(WAIT) is da.NORMAL


@pytest.mark.leak_check
@pytest.mark.parametrize("argv", [MOCK_WORKER, None], ids=["program", "target"])
def test_a_shutdown_answered_ends_the_single_bridge_normally_with_its_worker(
    stoppers: list[Any], argv: list[str] | None
) -> None:
    """A worker program exits after answering shutdown, a target worker is closed by the
    bridge: either way the bridge ends normally (no crash for a supervisor), and its worker
    process with it (the leak check)."""
    bridge = Bridge.start(worker_argv=argv, name=None)
    stoppers.append(bridge)
    bridge.execute_in_session("s", "create_program", {"id": "p", "signature": SIGNATURE})
    assert bridge.execute_anonymous("shutdown")["status"] == "shutting_down"
    assert bridge.wait(WAIT) is da.NORMAL
    with pytest.raises(da.NoProc):
        bridge.execute_anonymous("ping")


@pytest.mark.leak_check
def test_a_supervised_single_bridge_is_restarted_and_rebuilds_its_sessions(
    stoppers: list[Any],
) -> None:
    sup = da.Supervisor.start([Bridge.child_spec(worker_argv=MOCK_WORKER, name="bridge_t")])
    stoppers.append(sup)
    first = Bridge.from_ref(da.whereis("bridge_t"))  # type: ignore[arg-type]
    first.execute_in_session("s", "create_program", {"id": "p", "signature": SIGNATURE})
    with pytest.raises(da.WorkerCrashed):
        first.execute_anonymous("ping", {"_mock": {"crash": True}})
    wait_for(lambda: da.whereis("bridge_t") not in (None, first.actor_ref), WAIT)
    second = Bridge.from_ref(da.whereis("bridge_t"))  # type: ignore[arg-type]
    listed = second.execute_in_session("s", "list_programs")
    assert [p["id"] for p in listed["programs"]] == ["p"]
    # The store, kept across restarts, knows only the live worker (white-box: what it holds
    # per worker): a restarted bridge leaves nothing of its dead worker behind.
    assert set(second._session_store()._held) == {second._core.port.id}


def test_bad_single_bridge_arguments_are_refused(stoppers: list[Any]) -> None:
    with pytest.raises(da.InvalidOption):
        Bridge.start(worker_argv=MOCK_WORKER, op_timeout=-1)
    with pytest.raises(da.InvalidOption):
        Bridge.child_spec(worker_argv=MOCK_WORKER, pool_size=2)


# --- the pytest plugin's fixture -----------------------------------------------------------------


@pytest.mark.layer_1
def test_the_bridge_adapter_fixture_gives_a_layer_1_test_the_mock(bridge_adapter: Any) -> None:
    assert isinstance(bridge_adapter, MockAdapter)


@pytest.mark.layer_2
@pytest.mark.leak_check
def test_the_bridge_adapter_fixture_gives_a_layer_2_test_mock_workers(bridge_adapter: Any) -> None:
    assert isinstance(bridge_adapter, BridgeAdapter)
    assert bridge_adapter.layer == "layer_2"
    assert bridge_adapter.get_stats()["worker"]["dspy_available"] is False


@pytest.mark.leak_check
def test_a_single_bridge_whose_name_is_taken_raises_name_taken_as_a_session_pool_does(
    stoppers: list[Any],
) -> None:
    first = Bridge.start(worker_argv=MOCK_WORKER, name="bridge_taken")
    stoppers.append(first)
    with pytest.raises(da.NameTaken) as err:  # was a StartError, the NameTaken its cause
        Bridge.start(worker_argv=MOCK_WORKER, name="bridge_taken")
    assert err.value.args == (f"name 'bridge_taken' is already registered to {first.actor_ref}",)
    assert first.execute_anonymous("ping")["status"] == "ok"


@pytest.mark.parametrize("fail", ["execute_program", ["ping", 3], [""]])
def test_a_mock_script_refuses_a_fail_list_that_is_not_command_names(fail: Any) -> None:
    with pytest.raises(da.InvalidOption):  # one string was read as its characters
        MockScript(fail=fail)


BIG = "a" * (4 << 20)  # far more than a pipe holds: written only as the worker reads it


@pytest.mark.leak_check
def test_a_request_half_written_at_its_timeout_is_finished_late_and_the_worker_lives(
    stoppers: list[Any],
) -> None:
    """The worker is busy (not reading) past a big request's timeout: its caller gets
    `CommandTimeout` at its timeout, the rest of the frame is written as the worker reads,
    the worker runs it and its late reply is counted; nothing else fails. (The worker was
    killed, every command in flight failed, and the caller got a bare `CallTimeout`.)"""
    bridge = Bridge.start(worker_argv=MOCK_WORKER, name=None)
    stoppers.append(bridge)
    core = bridge._core
    pid = bridge.status().worker_pid
    slow: dict[str, Any] = {}
    busy = threading.Thread(
        target=lambda: slow.update(bridge.execute_anonymous("ping", {"_mock": {"delay": 1.0}}))
    )
    busy.start()
    try:
        wait_for(lambda: core.requests_sent == 1, WAIT)
        with pytest.raises(CommandTimeout):
            bridge.execute_in_session("s", "ping", {"x": BIG}, timeout=0.1)
    finally:
        busy.join(WAIT)
    assert slow["status"] == "ok"
    wait_for(lambda: bridge.status().correlation_errors == 1, WAIT)  # the late reply
    status = bridge.status()
    assert (status.worker_pid, status.in_flight) == (pid, 0)
    assert bridge.execute_anonymous("ping")["status"] == "ok"


@pytest.mark.leak_check
def test_a_caller_waiting_to_write_behind_a_big_request_times_out_with_nothing_written(
    stoppers: list[Any],
) -> None:
    bridge = Bridge.start(worker_argv=MOCK_WORKER, name=None)
    stoppers.append(bridge)
    core = bridge._core
    outcomes: dict[str, Any] = {}

    def call(key: str, *args: Any, **options: Any) -> None:
        try:
            outcomes[key] = bridge.execute_anonymous(*args, **options)
        except Exception as exc:
            outcomes[key] = exc

    threads = [threading.Thread(target=call, args=("slow", "ping", {"_mock": {"delay": 1.0}}))]
    threads[0].start()
    try:
        wait_for(lambda: core.requests_sent == 1, WAIT)
        threads.append(threading.Thread(target=call, args=("big", "ping", {"x": BIG})))
        threads[1].start()
        wait_for(lambda: core.requests_sent == 2 and core.port._send_lock.locked(), WAIT)
        with pytest.raises(CommandTimeout):  # it waited past its timeout for the pipe
            bridge.execute_anonymous("ping", timeout=0.1)
        assert core.requests_sent == 2  # never written
    finally:
        for thread in threads:
            thread.join(WAIT)
    assert outcomes["slow"]["status"] == outcomes["big"]["status"] == "ok"
    assert bridge.status().correlation_errors == 0


@pytest.mark.leak_check
def test_a_command_whose_reply_never_comes_under_its_id_is_not_counted_in_flight_once_given_up(
    stoppers: list[Any],
) -> None:
    from support.sessions import COMPAT

    bridge = Bridge.start(worker_argv=COMPAT, name=None)
    stoppers.append(bridge)
    with pytest.raises(CommandTimeout):  # its reply carries another id: nobody's
        bridge.execute_anonymous("ping", {"_misbehave": "mismatch"}, timeout=0.2)
    status = bridge.status()
    assert (status.in_flight, status.correlation_errors) == (0, 1)  # in_flight was 1, forever
    assert bridge.execute_anonymous("ping")["status"] == "ok"
    assert bridge.status().in_flight == 0


# --- the mock and the real worker agree on signatures ---------------------------------------

DEFINITIONS: dict[str, dict[str, Any]] = {
    "names DSPy reserves or refuses": {
        "inputs": ["json", "model_x", "1a", "a b", "schema", "instructions", "copy"],
        "outputs": ["out", "dict"],
    },
    "typed fields": {
        "inputs": [{"name": "q", "type": "list[int]"}, {"name": "k", "type": "Literal['a', 'b']"}],
        "outputs": [{"name": "a", "type": "int | None"}],
    },
    "a type that is code": {
        "inputs": [{"name": "q", "type": "__import__('os').system('true')"}],
        "outputs": ["a"],
    },
    "an unknown type": {"inputs": [{"name": "q", "type": "Frobnicator"}], "outputs": ["a"]},
    "a type that is not a string": {"inputs": [{"name": "q", "type": 3}], "outputs": ["a"]},
    "fields that clash once sanitized": {"inputs": ["a b", "a_b"], "outputs": ["c"]},
}


@pytest.mark.parametrize("definition", DEFINITIONS.values(), ids=DEFINITIONS.keys())
def test_the_mock_names_and_refuses_fields_as_the_real_worker_does(
    definition: dict[str, Any],
) -> None:
    """Layer 2 must not pass what layer 3 refuses (it accepted any type, code included), nor
    name a field otherwise (``json`` stayed ``json``, where DSPy needs ``json_``)."""
    from dspex_actors.bridge._commands import DSPyBridge

    args = {"id": "p", "signature": definition, "session_id": "s"}
    replies = [
        bridge.respond({"id": 1, "command": "create_program", "args": dict(args)})
        for bridge in (DSPyBridge(mode="pool-worker", worker_id="w"), MockBridge())
    ]
    real, mock = replies
    assert real is not None
    assert mock is not None
    assert real["success"] == mock["success"], (real, mock)
    if real["success"]:
        assert real["result"]["field_mapping"] == mock["result"]["field_mapping"]
    else:
        assert real["error"] == mock["error"]


def test_the_names_the_mock_reserves_are_dspys() -> None:
    import dspy  # type: ignore[import-untyped]  # DSPy ships no type information

    from dspex_actors.bridge._bridge import SIGNATURE_ATTRIBUTES

    candidates = set(dir(dspy.Signature)) | set(dir(type(dspy.Signature)))
    public = {n for n in candidates if not n.startswith(("_", "model_"))}
    assert {n for n in public if hasattr(dspy.Signature, n)} == SIGNATURE_ATTRIBUTES
