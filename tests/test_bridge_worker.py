"""The DSPex bridge worker: DSPex's command set served with real DSPy programs.

Two layers. First `DSPyBridge` in this process: every command and its errors, the reply
envelope, the signature building, the offline LM's answers, and the worker's frame loop fed
through pipes. Then real worker processes: ``python -m dspex_actors.bridge.worker`` driven
through `Port.open` (DSPex's init handshake, round trips, how it ends, and that it writes no
file), and `handle_request` as a `ProcessPool` target. The tests that only add state under their
own session share one worker process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dspy  # type: ignore[import-untyped]  # DSPy ships no type information
import pytest

from dspex_actors import Port, ProcessPool
from dspex_actors._ports._framing import DEFAULT_MAX_FRAME
from dspex_actors.bridge import MockScript
from dspex_actors.bridge._bridge import BridgeCommands
from dspex_actors.bridge._commands import DSPyBridge
from dspex_actors.bridge._mock import MockBridge
from dspex_actors.bridge._offline_lm import offline_lm
from dspex_actors.bridge._worker_program import PRELOAD, _serve, handle_request

from support.bridge import (
    START_TIMEOUT,
    TIMEOUT,
    audited_worker_argv,
    call,
    definition,
    files_under,
    frames,
    isolated_env,
    open_worker,
    read_frames,
)
from support.threads import in_thread

QA = definition(["question"], ["answer"])
TYPED = definition(
    ["text", "n: int"],
    [
        "label: Literal['positive', 'negative']",
        "score: float",
        "count: int",
        "ok: bool",
        "tags: list[str]",
        "weights: dict[str, int]",
        "maybe: Optional[int]",
        "pair: tuple[int, str]",
    ],
)
PING_KEYS = {
    "status",
    "timestamp",
    "dspy_available",
    "gemini_available",
    "uptime",
    "mode",
    "worker_id",
    "current_session",
    "pid",
}
EPOCH_2020 = 1.5e9  # any timestamp is above this; any duration here far below


@pytest.fixture
def bridge() -> DSPyBridge:
    return DSPyBridge(mode="pool-worker", worker_id="w1")


def run(bridge: DSPyBridge, command: str, **args: Any) -> dict[str, Any]:
    """One command's result (it raises on error)."""
    return bridge.handle(command, args)


def failure(bridge: DSPyBridge, command: str, **args: Any) -> str:
    """The error reply's message for one command that must fail."""
    reply = bridge.respond({"id": 1, "command": command, "args": args})
    assert reply is not None
    assert reply["success"] is False, reply
    error: str = reply["error"]
    return error


def create(bridge: DSPyBridge, program_id: str, signature: dict[str, Any], **args: Any) -> None:
    run(bridge, "create_program", id=program_id, signature=signature, **args)


# --- the bridge in this process: ping, envelopes, counters -------------------------------------


def test_the_documented_command_starts_without_a_warning() -> None:
    """``python -m dspex_actors.bridge.worker``: importing the package must not import the
    module ``-m`` runs (runpy warns about it at every worker start, on stderr)."""
    argv = [sys.executable, "-W", "error", "-m", "dspex_actors.bridge.worker", "--help"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr


def test_ping_reports_the_worker_and_an_init_ping_names_a_worker_without_a_name() -> None:
    bridge = DSPyBridge()
    result = run(bridge, "ping", initialization=True, worker_id="w7")
    assert set(result) == PING_KEYS
    assert result["status"] == "ok"
    assert (result["dspy_available"], result["gemini_available"]) == (True, False)
    assert (result["mode"], result["worker_id"], result["current_session"]) == (
        "pool-worker",
        "w7",
        None,
    )
    assert result["pid"] == os.getpid()
    assert result["timestamp"] > EPOCH_2020
    assert 0 <= result["uptime"] < EPOCH_2020
    # Only the first name counts, and a worker named at its start keeps its name.
    assert run(bridge, "ping", initialization=True, worker_id="other")["worker_id"] == "w7"
    named = DSPyBridge(worker_id="w1")
    assert run(named, "ping", initialization=True, worker_id="other")["worker_id"] == "w1"


def test_replies_are_dspex_envelopes_with_the_request_id(bridge: DSPyBridge) -> None:
    success = bridge.respond({"id": 5, "command": "ping", "args": {}, "timestamp": "2025-07-01"})
    assert success is not None
    assert set(success) == {"id", "success", "result", "timestamp"}
    assert (success["id"], success["success"]) == (5, True)
    assert success["timestamp"] > EPOCH_2020

    error = bridge.respond(
        {"id": 6, "command": "execute_program", "args": {"program_id": "p", "session_id": "s"}}
    )
    assert error is not None
    assert error == {
        "id": 6,
        "success": False,
        "error": "Program not found in session s: p",
        "timestamp": error["timestamp"],
    }
    assert json.loads(json.dumps([success, error])) == [success, error]  # JSON data only

    no_args = bridge.respond({"id": 7, "command": "ping"})
    assert no_args is not None
    assert no_args["success"] is True
    bad_args = bridge.respond({"id": 8, "command": "ping", "args": [1]})
    assert bad_args is not None
    assert bad_args["error"] == "args must be an object, got: [1]"


@pytest.mark.parametrize(
    "message",
    [{"command": "ping"}, {"id": None, "command": "ping"}, {"id": 3}, ["ping"], "ping"],
    ids=["no_id", "null_id", "no_command", "a_list", "a_string"],
)
def test_a_message_without_an_id_or_a_command_gets_no_reply(
    bridge: DSPyBridge, message: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bridge.respond(message) is None
    assert "ignoring a message without an id and a command" in capsys.readouterr().err
    assert (bridge.command_count, bridge.error_count) == (0, 0)


def test_an_unknown_command_is_an_error_reply_and_the_bridge_keeps_serving(
    bridge: DSPyBridge,
) -> None:
    assert failure(bridge, "invalid_command") == "Unknown command: invalid_command"
    assert (bridge.command_count, bridge.error_count) == (1, 1)
    assert run(bridge, "ping")["status"] == "ok"
    assert (bridge.command_count, bridge.error_count) == (2, 1)


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        DSPyBridge(mode="worker")


# --- configure_lm ------------------------------------------------------------------------------


def test_configure_lm_builds_a_real_dspy_lm_and_contacts_nothing(
    bridge: DSPyBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    connects: list[Any] = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, *a: connects.append(a))
    result = run(
        bridge,
        "configure_lm",
        model="gpt-4o-mini",
        provider="openai",
        api_key="sk-test",
        temperature=0.2,
        max_tokens=128,
    )
    assert result == {
        "status": "configured",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "temperature": 0.2,
    }
    lm = bridge.lm
    assert isinstance(lm, dspy.LM)
    assert (lm.model, lm.cache, lm.num_retries) == ("openai/gpt-4o-mini", False, 0)
    assert lm.kwargs == {"temperature": 0.2, "max_tokens": 128, "api_key": "sk-test"}
    # Built, not called: no connection, and LiteLLM (3 s to import) is not loaded.
    assert connects == []
    assert "litellm" not in sys.modules


def test_configure_lm_keeps_one_lm_per_session_and_the_anonymous_one_for_the_worker(
    bridge: DSPyBridge,
) -> None:
    run(bridge, "configure_lm", model="openai/gpt-4o-mini", session_id="s1")
    run(bridge, "configure_lm", model="gemini-1.5-flash", provider="google", session_id=None)
    result = run(bridge, "configure_lm", model="offline", session_id="anonymous")
    assert result == {
        "status": "configured",
        "model": "offline",
        "provider": None,
        "temperature": 0.7,
    }
    assert bridge.session_lms["s1"].model == "openai/gpt-4o-mini"
    assert bridge.lm.model == "offline/deterministic"  # the last worker-wide one
    google = run(bridge, "configure_lm", model="gemini-1.5-flash", provider="google")
    assert google["provider"] == "google"
    assert bridge.lm.model == "gemini/gemini-1.5-flash"  # DSPex's Google AI Studio


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({}, "Model name is required"),
        ({"model": "openai/"}, "has a provider prefix but no model id"),
        ({"model": "gpt-4o-mini", "temperature": "hot"}, "temperature must be a number"),
        ({"model": "gpt-4o-mini", "max_tokens": 0}, "max_tokens must be a positive integer"),
    ],
    ids=["no_model", "dspy_refuses", "temperature", "max_tokens"],
)
def test_configure_lm_failures_are_error_replies(
    bridge: DSPyBridge, args: dict[str, Any], message: str
) -> None:
    assert message in failure(bridge, "configure_lm", **args)
    assert bridge.error_count == 1
    assert bridge.lm is None


# --- create_program ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("program_type", "module_type"),
    [
        ("predict", dspy.Predict),
        ("chain_of_thought", dspy.ChainOfThought),
        ("react", dspy.ReAct),
    ],
)
def test_create_program_builds_the_dspy_module_its_type_names(
    bridge: DSPyBridge, program_type: str, module_type: type
) -> None:
    result = run(
        bridge,
        "create_program",
        id="p",
        signature=QA,
        program_type=program_type,
        session_id="s1",
    )
    assert result == {
        "program_id": "p",
        "status": "created",
        "signature": QA,
        "program_type": program_type,
        "signature_class": "DynamicSignature",
        "field_mapping": {"question": "question", "answer": "answer"},
    }
    assert isinstance(bridge.session_programs["s1"]["p"].module, module_type)


def test_create_program_takes_the_class_name_instructions_and_descriptions(
    bridge: DSPyBridge,
) -> None:
    named = {**QA, "name": "Elixir.QA.Answer", "instructions": "Answer briefly."}
    result = run(bridge, "create_program", id="p", signature=named, session_id="s1")
    assert (result["program_type"], result["signature_class"]) == ("predict", "Answer")
    signature = bridge.session_programs["s1"]["p"].signature.cls
    assert signature.instructions == "Answer briefly."
    assert signature.input_fields["question"].json_schema_extra["desc"] == "the question"


def test_create_program_needs_a_session_an_id_and_an_id_new_to_the_session(
    bridge: DSPyBridge,
) -> None:
    assert "Session ID required" in failure(bridge, "create_program", id="p", signature=QA)
    assert failure(bridge, "create_program", signature=QA, session_id="s1") == (
        "Program ID is required"
    )
    create(bridge, "p", QA, session_id="s1")
    assert failure(bridge, "create_program", id="p", signature=QA, session_id="s1") == (
        "Program with ID 'p' already exists in session s1"
    )
    create(bridge, "p", QA, session_id="s2")  # another session's namespace
    assert sorted(bridge.session_programs) == ["s1", "s2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"signature": QA, "program_type": "tree"}, "Unknown program type: tree"),
        ({}, "signature must be an object"),
        ({"signature": {"inputs": [], "outputs": []}}, "outputs must be a non-empty list"),
        ({"signature": {"inputs": [{"type": "str"}], "outputs": ["a"]}}, "needs a name"),
        ({"signature": definition(["q"], ["a: os.system"])}, "unsupported type 'os.system'"),
        (
            {"signature": definition(["q"], ["a: __import__('os')"])},
            "unsupported type \"__import__('os')\"",
        ),
        ({"signature": definition(["a-b", "a b"], ["c"])}, "clashes with another field"),
    ],
    ids=["program_type", "no_signature", "no_outputs", "no_name", "module", "call", "clash"],
)
def test_create_program_refuses_a_bad_definition(
    bridge: DSPyBridge, args: dict[str, Any], message: str
) -> None:
    assert message in failure(bridge, "create_program", id="p", session_id="s1", **args)
    assert run(bridge, "list_programs")["total_count"] == 0


def test_field_names_are_made_valid_for_dspy_and_mapped_back(bridge: DSPyBridge) -> None:
    signature = definition(["user question", "2nd", "json"], ["final-answer"])
    result = run(bridge, "create_program", id="p", signature=signature, session_id="s1")
    assert result["field_mapping"] == {
        "user question": "user_question",
        "2nd": "field_2nd",
        "json": "json_",
        "final-answer": "final_answer",
    }
    inputs = {"user question": "why?", "2nd": "b", "json": "c"}
    executed = run(bridge, "execute_program", program_id="p", session_id="s1", inputs=inputs)
    assert list(executed["outputs"]) == ["final-answer"]
    assert "user_question=why?" in executed["outputs"]["final-answer"]


def test_signature_classes_are_cached_by_their_canonical_json(bridge: DSPyBridge) -> None:
    reordered = json.loads(json.dumps(QA, sort_keys=True))
    reordered = {"outputs": reordered["outputs"], "inputs": reordered["inputs"]}
    create(bridge, "a", QA, session_id="s1")
    create(bridge, "b", reordered, session_id="s2")
    create(bridge, "c", definition(["question"], ["reply"]), session_id="s1")
    programs = {**bridge.session_programs["s1"], **bridge.session_programs["s2"]}
    assert programs["a"].signature.cls is programs["b"].signature.cls
    assert programs["a"].signature.cls is not programs["c"].signature.cls


# --- execute_program ---------------------------------------------------------------------------


def test_execute_program_returns_the_declared_outputs_and_the_time_it_took(
    bridge: DSPyBridge,
) -> None:
    create(bridge, "p", QA, session_id="s1")
    result = run(
        bridge, "execute_program", program_id="p", session_id="s1", inputs={"question": "2+2?"}
    )
    assert set(result) == {"program_id", "outputs", "execution_time"}
    assert result["outputs"] == {"answer": "[offline 97159ad8] answer for question=2+2?"}
    assert 0 <= result["execution_time"] < EPOCH_2020  # a duration, not DSPex's timestamp
    info = run(bridge, "get_program_info", program_id="p", session_id="s1")
    assert info["execution_count"] == 1
    assert info["last_executed"] > EPOCH_2020


@pytest.mark.parametrize("program_type", ["chain_of_thought", "react"])
def test_the_fields_a_module_adds_do_not_reach_the_outputs(
    bridge: DSPyBridge, program_type: str
) -> None:
    create(bridge, "p", QA, session_id="s1", program_type=program_type)
    lm = offline_lm()
    bridge.session_lms["s1"] = lm
    result = run(
        bridge, "execute_program", program_id="p", session_id="s1", inputs={"question": "hi"}
    )
    assert list(result["outputs"]) == ["answer"]
    # The model was asked for them all the same: reasoning (and ReAct's tool choice).
    prompt = lm.history[-1]["messages"][0]["content"]
    assert "`reasoning`" in prompt


def test_typed_outputs_come_back_as_their_types_the_same_every_time(bridge: DSPyBridge) -> None:
    create(bridge, "p", TYPED, session_id="s1")
    args = {"program_id": "p", "session_id": "s1", "inputs": {"text": "I love it", "n": 3}}
    outputs = run(bridge, "execute_program", **args)["outputs"]
    assert outputs["label"] == "positive"
    assert isinstance(outputs["score"], float)
    assert type(outputs["count"]) is int
    assert isinstance(outputs["ok"], bool)
    assert isinstance(outputs["tags"], list)
    assert all(isinstance(tag, str) for tag in outputs["tags"])
    assert outputs["weights"].keys() == {"weights"}
    assert type(outputs["weights"]["weights"]) is int
    assert type(outputs["maybe"]) is int
    assert [type(v) for v in outputs["pair"]] == [int, str]
    assert run(bridge, "execute_program", **args)["outputs"] == outputs


def test_the_offline_lm_answers_the_json_adapter_as_the_chat_adapter() -> None:
    program = dspy.Predict("question -> answer, score: float, tags: list[str]")
    with dspy.context(lm=offline_lm(), adapter=dspy.JSONAdapter()):
        as_json = dict(program(question="q"))
    with dspy.context(lm=offline_lm(), adapter=dspy.ChatAdapter()):
        as_chat = dict(program(question="q"))
    assert as_json == as_chat
    assert set(as_json) == {"answer", "score", "tags"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"program_id": "nope", "session_id": "s1"}, "Program not found in session s1: nope"),
        ({"program_id": "p", "session_id": "s9"}, "Program not found in session s9: p"),
        ({"program_id": "p"}, "Session ID required in pool-worker mode"),
        ({"session_id": "s1"}, "Program ID is required"),
        (
            {"program_id": "p", "session_id": "s1", "inputs": {}},
            "Missing input fields for program 'p': context, question",
        ),
        (
            {"program_id": "p", "session_id": "s1", "inputs": []},
            "inputs must be an object, got: []",
        ),
    ],
    ids=["program", "session", "no_session", "no_id", "inputs", "inputs_type"],
)
def test_execute_program_refuses_what_it_cannot_run(
    bridge: DSPyBridge, args: dict[str, Any], message: str
) -> None:
    create(bridge, "p", definition(["context", "question"], ["answer"]), session_id="s1")
    assert failure(bridge, "execute_program", **args) == message
    assert bridge.session_programs["s1"]["p"].execution_count == 0


class _Down:
    """A DSPy engine whose model is down."""

    def complete(self, request: Any) -> Any:
        raise RuntimeError("model down")


def test_a_failing_model_is_an_error_reply_and_the_bridge_keeps_serving(
    bridge: DSPyBridge,
) -> None:
    create(bridge, "p", QA, session_id="s1")
    create(bridge, "p", QA, session_id="s2")
    bridge.session_lms["s1"] = dspy.LM("down/model", engine=_Down(), cache=False)
    error = failure(
        bridge, "execute_program", program_id="p", session_id="s1", inputs={"question": "q"}
    )
    assert error.startswith("Program execution failed: ")
    assert "model down" in error
    run(bridge, "execute_program", program_id="p", session_id="s2", inputs={"question": "q"})
    assert (bridge.command_count, bridge.error_count) == (4, 1)


class _Unprintable(RuntimeError):
    def __str__(self) -> str:
        raise LookupError("no message")


def test_a_failure_whose_message_cannot_be_printed_is_still_an_error_reply(
    bridge: DSPyBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(args: Any) -> Any:
        raise _Unprintable()

    monkeypatch.setattr(bridge, "get_stats", broken)
    assert failure(bridge, "get_stats") == "<exception str() failed>"
    assert run(bridge, "ping")["status"] == "ok"


def test_a_program_runs_with_its_sessions_lm_else_the_workers_else_the_offline_lm(
    bridge: DSPyBridge,
) -> None:
    for session in ("s1", "s2"):
        create(bridge, "p", QA, session_id=session)
    run(bridge, "configure_lm", model="offline", session_id="s1")
    run(bridge, "configure_lm", model="offline")
    session_lm, worker_lm = bridge.session_lms["s1"], bridge.lm
    for session in ("s1", "s2", "s2"):
        run(bridge, "execute_program", program_id="p", session_id=session, inputs={"question": "q"})
    assert (len(session_lm.history), len(worker_lm.history)) == (1, 2)

    fresh = DSPyBridge()  # nothing configured: the offline LM
    create(fresh, "p", QA, session_id="s1")
    result = run(
        fresh, "execute_program", program_id="p", session_id="s1", inputs={"question": "q"}
    )
    assert result["outputs"]["answer"].startswith("[offline ")


# --- the other commands ------------------------------------------------------------------------


def test_list_programs_lists_one_session_or_every_session(bridge: DSPyBridge) -> None:
    create(bridge, "a", QA, session_id="s1")
    create(bridge, "b", QA, session_id="s2", program_type="chain_of_thought")
    one = run(bridge, "list_programs", session_id="s1")
    assert one["total_count"] == 1
    (entry,) = one["programs"]
    assert set(entry) == {
        "id",
        "created_at",
        "execution_count",
        "last_executed",
        "signature",
        "program_type",
        "session_id",
    }
    assert (entry["id"], entry["session_id"], entry["signature"]) == ("a", "s1", QA)
    every = run(bridge, "list_programs")
    assert {(p["id"], p["session_id"], p["program_type"]) for p in every["programs"]} == {
        ("a", "s1", "predict"),
        ("b", "s2", "chain_of_thought"),
    }
    assert run(bridge, "list_programs", session_id="s9") == {"programs": [], "total_count": 0}


def test_get_program_info_and_delete_program(bridge: DSPyBridge) -> None:
    create(bridge, "p", QA, session_id="s1", program_type="react")
    info = run(bridge, "get_program_info", program_id="p", session_id="s1")
    assert info == {
        "program_id": "p",
        "signature": QA,
        "program_type": "react",
        "created_at": info["created_at"],
        "execution_count": 0,
        "last_executed": None,
        "session_id": "s1",
    }
    assert run(bridge, "get_program_info", program_id="p") == info  # found in any session
    assert run(bridge, "delete_program", program_id="p", session_id="s1") == {
        "program_id": "p",
        "status": "deleted",
    }
    assert failure(bridge, "get_program_info", program_id="p", session_id="s1") == (
        "Program not found in session s1: p"
    )
    assert failure(bridge, "get_program_info", program_id="p") == "Program not found: p"
    assert failure(bridge, "delete_program", program_id="p", session_id="s1") == (
        "Program not found in session s1: p"
    )


def test_get_stats_counts_commands_errors_programs_and_memory(bridge: DSPyBridge) -> None:
    run(bridge, "ping")
    failure(bridge, "nope")
    create(bridge, "p", QA, session_id="s1")
    stats = run(bridge, "get_stats")
    memory = stats.pop("memory_usage")
    assert stats == {
        "programs_count": 1,
        "sessions_count": 1,
        "command_count": 4,
        "error_count": 1,
        "uptime": stats["uptime"],
        "dspy_available": True,
        "gemini_available": False,
        "worker_id": "w1",
        "mode": "pool-worker",
    }
    assert set(memory) == {"rss", "vms", "percent"}
    assert 0 < memory["rss"] <= memory["vms"]


def test_cleanup_cleanup_session_and_reset_state(bridge: DSPyBridge) -> None:
    create(bridge, "a", QA, session_id="s1")
    create(bridge, "b", QA, session_id="s2")
    run(bridge, "configure_lm", model="offline", session_id="s3")
    assert run(bridge, "cleanup_session", session_id="s1") == {
        "status": "cleaned",
        "session_id": "s1",
        "programs_removed": 1,
    }
    assert run(bridge, "cleanup_session", session_id="s1") == {
        "status": "not_found",
        "session_id": "s1",
    }
    assert run(bridge, "cleanup_session", session_id="s3")["status"] == "cleaned"  # its LM
    assert "s3" not in bridge.session_lms
    assert failure(bridge, "cleanup_session") == "Session ID required for cleanup"
    assert run(bridge, "cleanup") == {"status": "cleaned", "programs_removed": 1}
    create(bridge, "c", QA, session_id="s2")
    assert run(bridge, "reset_state") == {
        "status": "reset",
        "programs_cleared": 1,
        "commands_reset": 10,
        "errors_reset": 1,
    }
    stats = run(bridge, "get_stats")
    assert (stats["programs_count"], stats["command_count"], stats["error_count"]) == (0, 1, 0)


def test_shutdown_clears_every_session_and_tells_the_worker_to_exit(bridge: DSPyBridge) -> None:
    create(bridge, "a", QA, session_id="s1")
    create(bridge, "b", QA, session_id="s2")
    run(bridge, "configure_lm", model="offline", session_id="s1")
    assert bridge.shutting_down is False
    assert run(bridge, "shutdown", worker_id="w1") == {
        "status": "shutting_down",
        "worker_id": "w1",
        "mode": "pool-worker",
        "sessions_cleaned": 2,
    }
    assert (bridge.session_programs, bridge.session_lms) == ({}, {})
    assert bridge.shutting_down is True  # the frame loop exits once the reply is written


def test_standalone_mode_keeps_one_table_and_no_sessions() -> None:
    bridge = DSPyBridge(mode="standalone")
    create(bridge, "p", QA, session_id="ignored")
    assert failure(bridge, "create_program", id="p", signature=QA) == (
        "Program with ID 'p' already exists"
    )
    result = run(bridge, "execute_program", program_id="p", inputs={"question": "q"})
    assert list(result["outputs"]) == ["answer"]
    (entry,) = run(bridge, "list_programs")["programs"]
    assert "session_id" not in entry
    assert failure(bridge, "execute_program", program_id="x", inputs={}) == "Program not found: x"
    assert run(bridge, "cleanup_session", session_id="s1") == {
        "status": "not_applicable",
        "mode": "standalone",
    }
    assert run(bridge, "shutdown")["sessions_cleaned"] == 0
    assert run(bridge, "list_programs")["total_count"] == 0


# --- the frame loop, fed through pipes ---------------------------------------------------------


def _serve_bytes(
    bridge: BridgeCommands, data: bytes, max_frame: int = DEFAULT_MAX_FRAME
) -> tuple[int, list[Any]]:
    """Run the worker's frame loop on `data` (then EOF); its status and the replies."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        os.write(in_w, data)
        os.close(in_w)
        in_w = -1
        status = _serve(bridge, in_r, out_w, max_frame)
        os.close(out_w)
        out_w = -1
        return status, read_frames(out_r)
    finally:
        for fd in (in_r, in_w, out_r, out_w):
            if fd >= 0:
                os.close(fd)


def test_the_frame_loop_skips_what_it_cannot_answer_and_ends_at_eof(
    bridge: DSPyBridge, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = (100).to_bytes(4, "big") + b'{"id"'
    data = frames(b"not json", {"command": "ping"}, {"id": 1, "command": "ping"}) + truncated
    status, replies = _serve_bytes(bridge, data)
    assert status == 0
    assert [(r["id"], r["success"]) for r in replies] == [(1, True)]
    log = capsys.readouterr().err
    assert "ignoring an undecodable frame" in log
    assert "stdin closed mid-frame" in log


def test_the_frame_loop_exits_0_after_writing_the_reply_to_shutdown_without_waiting_for_eof(
    bridge: DSPyBridge, capsys: pytest.CaptureFixture[str]
) -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    try:
        # stdin stays open: only the shutdown can end the loop. The ping behind it, in the
        # same read, is never answered.
        ping, shutdown = {"id": 1, "command": "ping"}, {"id": 2, "command": "shutdown"}
        os.write(in_w, frames(ping, shutdown, {"id": 3, "command": "ping"}))
        served = in_thread(lambda: _serve(bridge, in_r, out_w, DEFAULT_MAX_FRAME))
        assert served.result(timeout=TIMEOUT) == 0
        os.close(out_w)
        out_w = -1
        replies = read_frames(out_r)
    finally:
        for fd in (in_w, in_r, out_r, out_w):  # stdin's write end first: a loop still
            if fd >= 0:  # reading sees EOF and ends
                os.close(fd)
    assert [(r["id"], r["success"]) for r in replies] == [(1, True), (2, True)]
    assert replies[1]["result"]["status"] == "shutting_down"
    assert "shutdown: exiting" in capsys.readouterr().err


def test_a_failed_shutdown_leaves_the_frame_loop_serving(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bridge = MockBridge(script=MockScript(fail=frozenset({"shutdown"})))
    data = frames({"id": 1, "command": "shutdown"}, {"id": 2, "command": "ping"})
    status, replies = _serve_bytes(bridge, data)
    assert status == 0
    assert [(r["id"], r["success"]) for r in replies] == [(1, False), (2, True)]
    assert "shutdown: exiting" not in capsys.readouterr().err  # it ended at EOF


def test_the_frame_loop_exits_1_once_a_length_prefix_breaks_the_stream(
    bridge: DSPyBridge, capsys: pytest.CaptureFixture[str]
) -> None:
    oversized = (1000).to_bytes(4, "big") + b"x" * 10
    status, replies = _serve_bytes(bridge, oversized + frames({"id": 1, "command": "ping"}), 100)
    assert (status, replies) == (1, [])  # nothing after it can be read as a frame
    assert "cannot read the request stream any more" in capsys.readouterr().err


def test_the_frame_loop_exits_0_when_nobody_reads_its_replies(bridge: DSPyBridge) -> None:
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.close(out_r)
    try:
        os.write(in_w, frames({"id": 1, "command": "ping"}))
        os.close(in_w)
        in_w = -1
        assert _serve(bridge, in_r, out_w, DEFAULT_MAX_FRAME) == 0
    finally:
        for fd in (in_r, in_w, out_w):
            if fd >= 0:
                os.close(fd)


class _Unsendable(DSPyBridge):
    """A bridge whose replies cannot be sent: not JSON data, or too large."""

    def respond(self, message: Any) -> dict[str, Any] | None:
        result: Any = float("nan") if message["command"] == "nan" else "x" * 1000
        return {"id": message["id"], "success": True, "result": result, "timestamp": 1.0}


def test_a_reply_that_cannot_be_sent_becomes_an_error_reply() -> None:
    data = frames({"id": 1, "command": "nan"}, {"id": 2, "command": "big"})
    status, replies = _serve_bytes(_Unsendable(), data, max_frame=500)
    assert status == 0
    assert [(r["id"], r["success"]) for r in replies] == [(1, False), (2, False)]
    assert all(r["error"].startswith("cannot send the reply: ") for r in replies)


# --- the program: imports ----------------------------------------------------------------------

IMPORTS = """
import os, sys, threading
import dspex_actors.bridge.worker
print("dspy" in sys.modules, "dspex_actors.bridge._commands" in sys.modules)
import dspex_actors.bridge._commands
print(threading.active_count(), "litellm" in sys.modules)
print(os.environ["LITELLM_LOCAL_MODEL_COST_MAP"], os.environ["LITELLM_OFFLINE_MODE"])
"""


def test_the_worker_module_defers_dspy_and_the_commands_import_it_quietly(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(IMPORTS)],
        env=isolated_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=True,
    )
    # The worker module loads neither DSPy nor the commands; the commands load DSPy with the
    # LiteLLM settings made, start no thread and leave LiteLLM unloaded.
    assert done.stdout.split("\n")[:3] == ["False False", "1 False", "True true"]


# --- the program: a worker process through Port.open -------------------------------------------


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Port, dict[str, Any]]]:
    """One worker for the tests that only add state under their own session; the port and
    the reply to its init ping."""
    port, init = open_worker(tmp_path_factory.mktemp("bridge-worker"))
    try:
        yield port, init
    finally:
        port.close(timeout=10)


def test_a_worker_answers_dspex_init_ping_with_id_0(worker: tuple[Port, dict[str, Any]]) -> None:
    port, init = worker
    assert (init["id"], init["success"]) == (0, True)
    result = init["result"]
    assert set(result) == PING_KEYS
    assert (result["worker_id"], result["mode"], result["pid"]) == (
        "w1",
        "pool-worker",
        port.os_pid,
    )


def test_programs_round_trip_through_a_worker(worker: tuple[Port, dict[str, Any]]) -> None:
    port, _ = worker
    session = {"session_id": "round-trip"}
    assert call(port, "configure_lm", model="offline", **session)["success"] is True
    created = call(
        port, "create_program", id="p", signature=QA, program_type="chain_of_thought", **session
    )
    assert created["result"]["status"] == "created"
    executed = call(port, "execute_program", program_id="p", inputs={"question": "q"}, **session)
    assert list(executed["result"]["outputs"]) == ["answer"]
    listed = call(port, "list_programs", **session)["result"]
    assert [p["id"] for p in listed["programs"]] == ["p"]
    info = call(port, "get_program_info", program_id="p", **session)["result"]
    assert info["execution_count"] == 1
    assert call(port, "delete_program", program_id="p", **session)["result"]["status"] == "deleted"
    cleaned = call(port, "cleanup_session", **session)["result"]
    assert (cleaned["status"], cleaned["programs_removed"]) == ("cleaned", 0)


def test_an_unknown_command_gets_an_error_reply_and_the_worker_keeps_serving(
    worker: tuple[Port, dict[str, Any]],
) -> None:
    port, _ = worker
    reply = call(port, "invalid_command")
    assert (reply["success"], reply["error"]) == (False, "Unknown command: invalid_command")
    assert call(port, "ping")["success"] is True


def test_a_message_without_an_id_gets_no_reply(worker: tuple[Port, dict[str, Any]]) -> None:
    port, _ = worker
    port.send({"command": "ping", "args": {}}, timeout=TIMEOUT)
    port.send({"id": 7, "args": {}}, timeout=TIMEOUT)
    # The next reply is this request's (Port.request checks its id): the others got none.
    assert call(port, "ping")["result"]["status"] == "ok"


def test_the_offline_lm_answers_the_same_in_another_process(
    worker: tuple[Port, dict[str, Any]], bridge: DSPyBridge
) -> None:
    port, _ = worker
    args = {"program_id": "typed", "session_id": "same", "inputs": {"text": "hi", "n": 2}}
    for program_type in ("predict", "chain_of_thought"):
        args["program_id"] = program_type
        create(bridge, program_type, TYPED, session_id="same", program_type=program_type)
        call(port, "create_program", id=program_type, signature=TYPED, session_id="same")
        here = run(bridge, "execute_program", **args)["outputs"]
        there = call(port, "execute_program", **args)["result"]["outputs"]
        assert there == here


def test_every_command_round_trips_then_shutdown_ends_the_worker_having_written_no_file(
    tmp_path: Path,
) -> None:
    before = files_under(tmp_path)
    # Audited: any file opened for writing, anywhere, is listed when it exits. (Bytecode
    # caching is the interpreter's business, not the worker's: off.)
    port, init = open_worker(tmp_path, argv=audited_worker_argv(), PYTHONDONTWRITEBYTECODE="1")
    try:
        assert init["success"] is True
        steps: list[tuple[str, dict[str, Any], str | None]] = [
            ("configure_lm", {"model": "gpt-4o-mini", "provider": "openai"}, "configured"),
            ("configure_lm", {"model": "offline", "session_id": "s"}, "configured"),
            ("create_program", {"id": "p", "signature": QA, "session_id": "s"}, "created"),
            (
                "create_program",
                {"id": "r", "signature": QA, "session_id": "s", "program_type": "react"},
                "created",
            ),
            (
                "execute_program",
                {"program_id": "p", "session_id": "s", "inputs": {"question": "q"}},
                None,
            ),
            (
                "execute_program",
                {"program_id": "r", "session_id": "s", "inputs": {"question": "q"}},
                None,
            ),
            ("list_programs", {}, None),
            ("get_program_info", {"program_id": "p", "session_id": "s"}, None),
            ("get_stats", {}, None),
            ("delete_program", {"program_id": "p", "session_id": "s"}, "deleted"),
            ("cleanup_session", {"session_id": "s"}, "cleaned"),
            ("cleanup", {}, "cleaned"),
            ("reset_state", {}, "reset"),
            ("ping", {}, "ok"),
            ("shutdown", {"worker_id": "w1"}, "shutting_down"),
        ]
        for command, args, status in steps:
            reply = call(port, command, **args)
            assert reply["success"] is True, (command, reply)
            assert reply["result"].get("status") == status, (command, reply)
        # The shutdown was answered, then the worker exited on its own: stdin is still open.
        assert port.wait_exit(TIMEOUT) == 0
    finally:
        port.close(timeout=TIMEOUT)  # EOF first (if it still ran); a signal only after TIMEOUT
    log = port.stderr_tail()
    assert any("shutdown: exiting" in line for line in log)
    assert not any("end of input" in line for line in log)
    assert [line for line in log if line.startswith("AUDIT")] == ["AUDIT writes=[]"]
    assert files_under(tmp_path) == before


def test_eof_ends_the_worker_with_status_0(tmp_path: Path) -> None:
    port, init = open_worker(tmp_path)
    try:
        assert init["success"] is True
    finally:
        port.close(timeout=TIMEOUT)
    assert port.exit_status == 0
    assert any("end of input: exiting" in line for line in port.stderr_tail())


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_end_the_worker_with_status_0(
    tmp_path: Path, signum: signal.Signals
) -> None:
    port, _ = open_worker(tmp_path)
    try:
        os.kill(port.os_pid, signum)
        assert port.wait_exit(TIMEOUT) == 0
    finally:
        port.close(timeout=TIMEOUT)
    assert any(f"{signum.name}: exiting" in line for line in port.stderr_tail())


# --- the program: handle_request as a ProcessPool target ---------------------------------------


def test_handle_request_serves_the_bridge_from_a_process_pool(bridge: DSPyBridge) -> None:
    pool = ProcessPool.start(target=handle_request, preload=list(PRELOAD), pool_size=1)
    try:
        init = pool.call(
            {"id": 0, "command": "ping", "args": {"initialization": True, "worker_id": "pw1"}},
            timeout=START_TIMEOUT,
        )
        assert (init["id"], init["success"], init["result"]["worker_id"]) == (0, True, "pw1")
        assert init["result"]["pid"] != os.getpid()
        create_args = {"id": "p", "signature": TYPED, "session_id": "s"}
        created = pool.call({"id": 1, "command": "create_program", "args": create_args})
        assert created["result"]["status"] == "created"
        execute_args = {"program_id": "p", "session_id": "s", "inputs": {"text": "x", "n": 1}}
        executed = pool.call({"id": 2, "command": "execute_program", "args": execute_args})
        create(bridge, "p", TYPED, session_id="s")
        assert (
            executed["result"]["outputs"]
            == run(bridge, "execute_program", **execute_args)["outputs"]
        )
        missing = pool.call({"id": 3, "command": "execute_program", "args": {"program_id": "x"}})
        assert (missing["success"], missing["error"]) == (
            False,
            "Session ID required in pool-worker mode",
        )
        assert pool.call({"command": "ping"}) is None  # no id: no reply, as from the program
        later = pool.call({"id": 4, "command": "ping", "args": {}}, timeout=TIMEOUT)
        assert later["result"]["worker_id"] == "pw1"
    finally:
        pool.stop(timeout=TIMEOUT)
