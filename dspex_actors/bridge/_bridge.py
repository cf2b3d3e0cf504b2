"""`BridgeCommands`: DSPex's bridge command set, whatever runs the programs.

This is the state and the commands of DSPex's ``priv/python/dspy_bridge.py``, without its I/O
and without DSPy: `BridgeCommands.respond` takes one decoded request ``{"id", "command",
"args"}`` and returns the reply envelope, success ``{"id", "success": True, "result",
"timestamp"}`` or error ``{"id", "success": False, "error", "timestamp"}`` (``timestamp``:
seconds since the epoch).
`dspex_actors.bridge.worker` puts it on stdin/stdout frames, or behind a `ProcessPool`.

Commands (``args`` keys → the result's keys), with DSPex's names and shapes:

- ``ping`` (``initialization``, ``worker_id``) → ``status`` (``"ok"``), ``timestamp``,
  ``dspy_available``, ``gemini_available``, ``uptime``, ``mode``, ``worker_id``,
  ``current_session``, ``pid``.
- ``configure_lm`` (``model``, ``api_key``, ``temperature`` = 0.7, ``max_tokens``,
  ``provider``, ``session_id``) → ``status`` (``"configured"``), ``model``, ``provider``,
  ``temperature``.
- ``create_program`` (``id``, ``signature``, ``program_type``, ``session_id``) →
  ``program_id``, ``status`` (``"created"``), ``signature``, ``program_type``,
  ``signature_class``, ``field_mapping``.
- ``execute_program`` (``program_id``, ``inputs``, ``session_id``) → ``program_id``,
  ``outputs``, ``execution_time``.
- ``list_programs`` (``session_id``) → ``programs``, ``total_count``.
- ``delete_program`` (``program_id``, ``session_id``) → ``program_id``, ``status``
  (``"deleted"``).
- ``get_program_info`` (``program_id``, ``session_id``) → ``program_id``, ``signature``,
  ``program_type``, ``created_at``, ``execution_count``, ``last_executed``.
- ``get_stats`` → ``programs_count``, ``sessions_count``, ``command_count``, ``error_count``,
  ``uptime``, ``memory_usage``, ``dspy_available``, ``gemini_available``, ``worker_id``,
  ``mode``.
- ``cleanup`` → ``status`` (``"cleaned"``), ``programs_removed``; ``reset_state`` →
  ``status`` (``"reset"``), ``programs_cleared``, ``commands_reset``, ``errors_reset``.
- ``cleanup_session`` (``session_id``) → ``status`` (``"cleaned"``, ``"not_found"``, or
  ``"not_applicable"`` in standalone mode), ``session_id``, ``programs_removed``.
- ``shutdown`` → ``status`` (``"shutting_down"``), ``worker_id``, ``mode``,
  ``sessions_cleaned``; every program, session and session LM is dropped (the worker-wide LM
  stays), and `shutting_down` is set: the worker program exits (status 0) once the reply is
  written.

In ``"pool-worker"`` mode programs live per session (``session_id`` is required to create,
run or delete one); in ``"standalone"`` mode in one flat table. A program is built from the
definition ``{"inputs": [{"name", "description", "type"}], "outputs": [...], "instructions" |
"description", "name"}`` and runs with its session's LM, else the worker's, else an offline
one: what builds and runs them is a subclass's (`DSPyBridge`: real DSPy modules;
`MockBridge`: deterministic stand-ins, for protocol tests without DSPy).

Where this differs from the DSPex script, on purpose:

- Every command works in both modes (the script raised ``AttributeError`` for stats, cleanup,
  reset and program info in pool mode), and ``get_program_info`` finds a program in any
  session when none is named.
- A ``configure_lm`` failure is an error reply (the script sent ``{"error": ...}`` as a
  success). Any DSPy model is accepted, with or without an API key (the script took only
  Gemini, and required a key); it is built, never called (the script made a test call).
- ``execution_time`` is the seconds the run took (the script sent a timestamp); missing inputs
  are refused before the run, naming them, and inputs the signature does not declare are
  left out; the signature's field types are honoured.
- A program in a session the worker does not know is "Program not found in session <sid>:
  <pid>" (the script said "Session not found: <sid>"); ``list_programs`` for such a session
  is empty (the script listed every session's programs).
- ``current_session`` is the session of the last command that named one (the script never
  set it); ``ping`` always carries ``worker_id`` and ``current_session`` (None when unset).
- With no LM configured, programs run on the offline LM (the script configured Gemini from
  ``GEMINI_API_KEY``, else failed with "No LM is loaded.").
- ``cleanup_session`` also drops the session's LM.
- ``shutdown`` ends the worker program after its reply (the script only acknowledged, and
  exited at EOF).
- The Gemini SDK commands (``create_gemini_program``, ``execute_gemini_program``) are
  unknown commands: ``configure_lm`` with a ``gemini/...`` model covers them.
- Expected failures (a missing program, a bad argument) are logged to stderr in one line;
  anything else with its traceback.

Example:
    >>> from dspex_actors.bridge._mock import MockBridge
    >>> bridge = MockBridge(mode="pool-worker", worker_id="w1")
    >>> reply = bridge.respond({"id": 1, "command": "create_program", "args": {
    ...     "id": "qa", "session_id": "s1", "signature": {
    ...         "inputs": [{"name": "question"}], "outputs": [{"name": "answer"}]}}})
    >>> reply["success"], reply["result"]["status"]
    (True, 'created')
    >>> reply = bridge.respond({"id": 2, "command": "execute_program", "args": {
    ...     "program_id": "qa", "session_id": "s1", "inputs": {"question": "2+2?"}}})
    >>> sorted(reply["result"]["outputs"])
    ['answer']
"""

from __future__ import annotations

import ast
import contextlib
import gc
import json
import os
import re
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from typing import Any, Literal, Union

import attrs

from .._logging import exception_text, short_repr

__all__ = [
    "ANONYMOUS",
    "COMMANDS",
    "MODES",
    "PROGRAM_TYPES",
    "BridgeCommands",
    "BridgeError",
    "Program",
    "Signature",
    "sanitize",
]

MODES = ("pool-worker", "standalone")
"""The bridge's modes: programs per session (``"pool-worker"``), or in one table."""

PROGRAM_TYPES = ("predict", "chain_of_thought", "react")
"""``create_program``'s ``program_type`` values (with DSPy: ``dspy.Predict``,
``dspy.ChainOfThought`` and ``dspy.ReAct`` with no tools)."""

ANONYMOUS = "anonymous"
"""The session DSPex's adapters use for calls outside any session: its LM is the worker's."""

_PROVIDER_PREFIXES = {"google": "gemini"}
"""``configure_lm`` providers whose DSPy model prefix has another name: DSPex's ``"google"``
meant Google AI Studio, which DSPy (like LiteLLM) calls ``gemini/``."""


class BridgeError(ValueError):
    """A command refused: a missing or bad argument, an unknown program or command.

    Its message is the reply's ``error``, and the worker logs it in one line (no traceback:
    the caller's mistake, not the worker's). A `ValueError`, as DSPex's script raised.
    """


@attrs.define
class Program:
    """A created program and what the commands report about it."""

    module: Any  # what `make_module` built (a dspy.Module, with DSPy)
    program_type: str
    definition: dict[str, Any]  # the signature definition, as given
    signature: Signature
    session_id: str | None
    created_at: float = attrs.field(factory=time.time)
    execution_count: int = 0
    last_executed: float | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "signature": self.definition,
            "program_type": self.program_type,
            "created_at": self.created_at,
            "execution_count": self.execution_count,
            "last_executed": self.last_executed,
        }


@attrs.frozen
class Signature:
    """What a definition declares: its fields' names, as ``(original, sanitized)`` pairs
    (programs use the sanitized ones), and what the backend built from it (`cls`: a
    ``dspy.Signature`` class, with DSPy)."""

    cls: Any
    class_name: str
    inputs: tuple[tuple[str, str], ...]
    outputs: tuple[tuple[str, str], ...]

    @property
    def field_mapping(self) -> dict[str, str]:
        """Every field's original name → its name in the signature class."""
        return dict(self.inputs + self.outputs)


COMMANDS = (
    "ping",
    "configure_lm",
    "create_program",
    "execute_program",
    "list_programs",
    "delete_program",
    "get_program_info",
    "get_stats",
    "cleanup",
    "reset_state",
    "cleanup_session",
    "shutdown",
)
"""The commands, by name: what `BridgeCommands.handle` dispatches on (each is a method)."""


class BridgeCommands:
    """DSPex's bridge state and commands (see the module docs for the table); a subclass
    builds and runs the programs (`make_lm`, `offline_lm`, `make_signature`, `make_module`,
    `run`).

    Not thread-safe by design, but guarded anyway: commands run one at a time (a lock, as in
    DSPex's script), whichever thread calls.

    Args:
        mode: ``"pool-worker"`` (programs per session) or ``"standalone"``.
        worker_id: reported by ``ping``, ``get_stats`` and ``shutdown``; None until an
            initialization ``ping`` names one.

    Raises:
        ValueError: an unknown `mode`.
    """

    def __init__(self, mode: str = "pool-worker", worker_id: str | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got: {mode!r}")
        self.mode = mode
        self.worker_id = worker_id
        self.current_session: str | None = None  # the session of the last session command
        self.command_count = 0
        self.error_count = 0
        self.started = time.monotonic()
        self.lm: Any = None  # the worker's LM (configure_lm without a session)
        self.session_lms: dict[str, Any] = {}
        self.session_programs: dict[str, dict[str, Program]] = {}  # pool-worker mode
        self.programs: dict[str, Program] = {}  # standalone mode
        self._offline: Any = None  # the LM used when none is configured, made on first use
        self.shutting_down = False  # a shutdown succeeded: the worker exits after its reply
        self._lock = threading.Lock()

    # -- the two entry points --

    def respond(self, message: Any) -> dict[str, Any] | None:
        """The reply envelope for one request ``{"id", "command", "args"}``.

        A command that raises gets an error reply (its traceback, unless it is a
        `BridgeError`, goes to stderr); the bridge keeps serving. A message that is not a
        mapping with an ``id`` and a ``command`` gets no reply at all (None, and a note on
        stderr), as in DSPex: with no id there is nobody to answer.
        """
        if not isinstance(message, dict) or message.get("id") is None or "command" not in message:
            _note(f"ignoring a message without an id and a command: {short_repr(message)}")
            return None
        request_id = message["id"]
        command = message["command"]
        args = message.get("args")
        try:
            result = self.handle_message(message, command, {} if args is None else args)
        except Exception as exc:
            if isinstance(exc, BridgeError):
                _note(f"{command} (id {request_id!r}) failed: {exc}")
            else:
                _note(f"{command} (id {request_id!r}) failed:\n{traceback.format_exc()}")
            error = exception_text(exc) or type(exc).__name__
            return {"id": request_id, "success": False, "error": error, "timestamp": time.time()}
        return {"id": request_id, "success": True, "result": result, "timestamp": time.time()}

    def handle_message(
        self, message: dict[str, Any], command: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        """How `respond` runs one request (`message`, its `command` and `args`): `handle`.
        A subclass may look at the rest of the message first (`MockBridge` does)."""
        return self.handle(command, args)

    def handle(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run `command` with `args`; return its result. Counts it (``command_count``), and
        counts a failure (``error_count``).

        Raises:
            BridgeError: an unknown command, a missing or bad argument, an unknown program.
            Exception: whatever else the command raised (a DSPy error, say).
        """
        with self._lock:
            self.command_count += 1
            try:
                if not isinstance(command, str) or command not in COMMANDS:
                    raise BridgeError(f"Unknown command: {command}")
                if not isinstance(args, dict):
                    raise BridgeError(f"args must be an object, got: {short_repr(args)}")
                result: dict[str, Any] = getattr(self, command)(args)
                return result
            except Exception:
                self.error_count += 1
                raise

    # -- commands --

    def ping(self, args: dict[str, Any]) -> dict[str, Any]:
        # DSPex's init handshake names the worker: the first one that does sets worker_id.
        named = args.get("worker_id")
        if args.get("initialization") and self.worker_id is None and isinstance(named, str):
            self.worker_id = named
        return {
            "status": "ok",
            "timestamp": time.time(),
            "dspy_available": self.dspy_available,
            "gemini_available": False,
            "uptime": self._uptime(),
            "mode": self.mode,
            "worker_id": self.worker_id,
            "current_session": self.current_session,
            "pid": os.getpid(),
        }

    def configure_lm(self, args: dict[str, Any]) -> dict[str, Any]:
        model = _required_str(args, "model", "Model name is required")
        provider = _optional_str(args, "provider")
        api_key = _optional_str(args, "api_key")
        temperature = args.get("temperature", 0.7)
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise BridgeError(f"temperature must be a number, got: {temperature!r}")
        max_tokens = args.get("max_tokens")
        if max_tokens is not None and (
            isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
        ):
            raise BridgeError(f"max_tokens must be a positive integer, got: {max_tokens!r}")
        name = model
        if provider and "/" not in model:
            name = f"{_PROVIDER_PREFIXES.get(provider, provider)}/{model}"
        if name == "offline" or name.startswith("offline/"):
            lm = self.offline_lm()
        else:
            options: dict[str, Any] = {"temperature": temperature}
            if api_key:
                options["api_key"] = api_key
            if max_tokens is not None:
                options["max_tokens"] = max_tokens
            lm = self.make_lm(name, options)
        session_id = self._session_arg(args)
        if session_id is None or session_id == ANONYMOUS:
            self.lm = lm
        else:
            self.session_lms[session_id] = lm
        return {
            "status": "configured",
            "model": model,
            "provider": provider or (name.split("/", 1)[0] if "/" in name else None),
            "temperature": temperature,
        }

    def create_program(self, args: dict[str, Any]) -> dict[str, Any]:
        program_id = _required_str(args, "id", "Program ID is required")
        definition = args.get("signature")
        if not isinstance(definition, dict):
            raise BridgeError(
                f"signature must be an object with inputs and outputs, got: "
                f"{short_repr(definition)}"
            )
        program_type = args.get("program_type") or "predict"
        if program_type not in PROGRAM_TYPES:
            raise BridgeError(
                f"Unknown program type: {program_type} (expected one of {PROGRAM_TYPES})"
            )
        session_id = self._session_arg(args)
        table = self._table_for_create(session_id)
        if program_id in table:
            where = f" in session {session_id}" if self.mode == "pool-worker" else ""
            raise BridgeError(f"Program with ID '{program_id}' already exists{where}")
        try:
            key = json.dumps(definition, sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise BridgeError(f"signature must be JSON data: {exc}") from exc
        signature = self.make_signature(key)
        module = self.make_module(signature, program_type)
        table[program_id] = Program(module, program_type, definition, signature, session_id)
        return {
            "program_id": program_id,
            "status": "created",
            "signature": definition,
            "program_type": program_type,
            "signature_class": signature.class_name,
            "field_mapping": signature.field_mapping,
        }

    def execute_program(self, args: dict[str, Any]) -> dict[str, Any]:
        program_id = _required_str(args, "program_id", "Program ID is required")
        session_id = self._session_arg(args)
        program = self._find(program_id, session_id, required_session=True)
        inputs = args.get("inputs", {})
        if not isinstance(inputs, dict):
            raise BridgeError(f"inputs must be an object, got: {short_repr(inputs)}")
        signature = program.signature
        missing = [name for name, _ in signature.inputs if name not in inputs]
        if missing:
            raise BridgeError(
                f"Missing input fields for program '{program_id}': {', '.join(missing)}"
            )
        # Declared inputs only, by their names in the signature class.
        values = {sanitized: inputs[name] for name, sanitized in signature.inputs}
        lm = self._lm_for(session_id)
        began = time.perf_counter()
        try:
            prediction = self.run(program, values, lm)
        except Exception as exc:
            raise RuntimeError(f"Program execution failed: {exception_text(exc)}") from exc
        elapsed = time.perf_counter() - began
        program.execution_count += 1
        program.last_executed = time.time()
        # The declared outputs only, by their original names: not the extra fields a module
        # adds (ChainOfThought's reasoning, ReAct's trajectory).
        outputs = {}
        for name, sanitized in signature.outputs:
            if sanitized in prediction:
                outputs[name] = _jsonable(prediction[sanitized])
            else:
                outputs[name] = f"Field '{sanitized}' not found in prediction."
        return {"program_id": program_id, "outputs": outputs, "execution_time": elapsed}

    def list_programs(self, args: dict[str, Any]) -> dict[str, Any]:
        session_id = self._session_arg(args)
        entries = []
        for sid, table in self._tables(session_id):
            for program_id, program in table.items():
                entry = {"id": program_id, **program.summary()}
                if self.mode == "pool-worker":
                    entry["session_id"] = sid
                entries.append(entry)
        return {"programs": entries, "total_count": len(entries)}

    def delete_program(self, args: dict[str, Any]) -> dict[str, Any]:
        program_id = _required_str(args, "program_id", "Program ID is required")
        session_id = self._session_arg(args)
        self._find(program_id, session_id, required_session=True)
        if self.mode == "pool-worker":
            del self.session_programs[session_id or ""][program_id]
        else:
            del self.programs[program_id]
        gc.collect()
        return {"program_id": program_id, "status": "deleted"}

    def get_program_info(self, args: dict[str, Any]) -> dict[str, Any]:
        program_id = _required_str(args, "program_id", "Program ID is required")
        program = self._find(program_id, self._session_arg(args), required_session=False)
        info = {"program_id": program_id, **program.summary()}
        if self.mode == "pool-worker":
            info["session_id"] = program.session_id
        return info

    def get_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "programs_count": self._program_count(),
            "sessions_count": len(self.session_programs),
            "command_count": self.command_count,
            "error_count": self.error_count,
            "uptime": self._uptime(),
            "memory_usage": _memory_usage(),
            "dspy_available": self.dspy_available,
            "gemini_available": False,
            "worker_id": self.worker_id,
            "mode": self.mode,
        }

    def cleanup(self, args: dict[str, Any]) -> dict[str, Any]:
        removed = self._clear_programs()
        gc.collect()
        return {"status": "cleaned", "programs_removed": removed}

    def reset_state(self, args: dict[str, Any]) -> dict[str, Any]:
        cleared = self._clear_programs()
        commands, errors = self.command_count, self.error_count
        self.command_count = self.error_count = 0
        gc.collect()
        return {
            "status": "reset",
            "programs_cleared": cleared,
            "commands_reset": commands,
            "errors_reset": errors,
        }

    def cleanup_session(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.mode != "pool-worker":
            return {"status": "not_applicable", "mode": self.mode}
        session_id = self._session_arg(args)
        if not session_id:
            raise BridgeError("Session ID required for cleanup")
        programs = self.session_programs.pop(session_id, None)
        lm = self.session_lms.pop(session_id, None)
        if self.current_session == session_id:
            self.current_session = None
        if programs is None and lm is None:
            return {"status": "not_found", "session_id": session_id}
        gc.collect()
        return {
            "status": "cleaned",
            "session_id": session_id,
            "programs_removed": len(programs or {}),
        }

    def shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        # Everything goes, and `shutting_down` tells the worker's frame loop to exit once
        # this reply is written (the DSPex script only acknowledged, and waited for EOF).
        sessions = len(self.session_programs) if self.mode == "pool-worker" else 0
        self._clear_programs()
        self.session_programs.clear()
        self.session_lms.clear()
        self.current_session = None
        gc.collect()
        self.shutting_down = True
        return {
            "status": "shutting_down",
            "worker_id": self.worker_id,
            "mode": self.mode,
            "sessions_cleaned": sessions,
        }

    # -- helpers --

    def _uptime(self) -> float:
        return time.monotonic() - self.started

    def _session_arg(self, args: dict[str, Any]) -> str | None:
        """The request's ``session_id`` (None in standalone mode: it has no sessions); it
        becomes the current session."""
        session_id = args.get("session_id")
        if session_id is not None and not isinstance(session_id, str):
            raise BridgeError(f"session_id must be a string, got: {short_repr(session_id)}")
        if self.mode != "pool-worker":
            return None
        if session_id:
            self.current_session = session_id
        return session_id or None

    def _table_for_create(self, session_id: str | None) -> dict[str, Program]:
        if self.mode != "pool-worker":
            return self.programs
        if session_id is None:
            raise BridgeError("Session ID required in pool-worker mode")
        return self.session_programs.setdefault(session_id, {})

    def _tables(self, session_id: str | None) -> list[tuple[str | None, dict[str, Program]]]:
        """The program tables to look in: the session's, or every session's (none named)."""
        if self.mode != "pool-worker":
            return [(None, self.programs)]
        if session_id is not None:
            return [(session_id, self.session_programs.get(session_id, {}))]
        return [(sid, table) for sid, table in self.session_programs.items()]

    def _find(self, program_id: str, session_id: str | None, *, required_session: bool) -> Program:
        if self.mode == "pool-worker" and session_id is None and required_session:
            raise BridgeError("Session ID required in pool-worker mode")
        for _, table in self._tables(session_id):
            if program_id in table:
                return table[program_id]
        if session_id is not None:
            raise BridgeError(f"Program not found in session {session_id}: {program_id}")
        raise BridgeError(f"Program not found: {program_id}")

    def _lm_for(self, session_id: str | None) -> Any:
        """The LM a session's programs run with: its own, else the worker's, else offline."""
        lm = self.session_lms.get(session_id) if session_id is not None else None
        if lm is None:
            lm = self.lm
        if lm is None:
            if self._offline is None:
                self._offline = self.offline_lm()
            lm = self._offline
        return lm

    def _program_count(self) -> int:
        return len(self.programs) + sum(len(t) for t in self.session_programs.values())

    def _clear_programs(self) -> int:
        """Drop every program (the sessions stay, empty); return how many there were."""
        count = self._program_count()
        self.programs.clear()
        for table in self.session_programs.values():
            table.clear()
        return count

    # -- what a subclass provides --

    dspy_available = False
    """Whether programs are real DSPy modules (``ping`` and ``get_stats`` report it)."""

    def make_lm(self, model: str, options: dict[str, Any]) -> Any:
        """The LM for ``configure_lm``'s `model` (``provider/name``) with `options`
        (``temperature``, ``api_key``, ``max_tokens``): built, never called."""
        raise NotImplementedError

    def offline_lm(self) -> Any:
        """The LM programs run with when none is configured (deterministic, no network)."""
        raise NotImplementedError

    def make_signature(self, key: str) -> Signature:
        """The `Signature` of a definition (`key`: its canonical JSON)."""
        raise NotImplementedError

    def make_module(self, signature: Signature, program_type: str) -> Any:
        """The program of `program_type` over `signature`."""
        raise NotImplementedError

    def run(self, program: Program, values: dict[str, Any], lm: Any) -> Mapping[str, Any]:
        """Run `program` on `values` (its declared inputs, by their names in the signature)
        with `lm`; return its outputs by those names (extra ones are ignored)."""
        raise NotImplementedError


_UNSAFE = re.compile(r"\W|^(?=\d)")  # DSPex's rule: a non-word character, or a leading digit


_TYPE_NAMES: dict[str, Any] = {
    "str": str,
    "string": str,
    "int": int,
    "integer": int,
    "float": float,
    "number": float,
    "bool": bool,
    "boolean": bool,
    "list": list,
    "List": list,
    "array": list,
    "dict": dict,
    "Dict": dict,
    "object": dict,
    "tuple": tuple,
    "Tuple": tuple,
    "Any": Any,
    "None": type(None),
    "NoneType": type(None),
}
_TYPE_FORMS = ("Literal", "Optional", "Union")


def field_type(name: str, text: Any) -> Any:
    """The Python type a field's ``type`` names (``"int"``, ``"list[str]"``,
    ``"Literal['a', 'b']"``, ``"str | None"``; default ``str``).

    Parsed, never evaluated, from a fixed vocabulary: a definition comes from the wire, so
    it may not import or run anything (DSPy's own signature parser imports modules by name).
    """
    if text is None or text == "":
        return str
    if not isinstance(text, str):
        raise BridgeError(f"the type of field {name!r} must be a string, got: {short_repr(text)}")
    try:
        return _type_of(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, TypeError) as exc:
        raise BridgeError(
            f"unsupported type {text!r} for field {name!r}: use str, int, float, bool, "
            f"list[...], dict[..., ...], tuple[...], Literal[...], Optional[...] or unions"
        ) from exc


def _type_of(node: ast.expr) -> Any:
    if isinstance(node, ast.Name) and node.id in _TYPE_NAMES:
        return _TYPE_NAMES[node.id]
    if isinstance(node, ast.Constant) and node.value is None:
        return type(None)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return Union[_type_of(node.left), _type_of(node.right)]  # noqa: UP007
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        head = node.value.id
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Literal":
            options = []
            for arg in args:
                if not isinstance(arg, ast.Constant) or not isinstance(arg.value, str | int | bool):
                    raise ValueError("Literal options must be strings, numbers or booleans")
                options.append(arg.value)
            return Literal[tuple(options)]
        members = tuple(_type_of(arg) for arg in args)
        if head == "Optional" and len(members) == 1:
            return Union[members[0], None]  # noqa: UP007
        if head == "Union":
            return Union[members]  # noqa: UP007
        base = _TYPE_NAMES.get(head)
        if base in (list, dict, tuple) and head not in _TYPE_FORMS:
            return base[members if len(members) > 1 else members[0]]
    raise ValueError(f"unsupported type expression: {ast.unparse(node)}")


SIGNATURE_ATTRIBUTES = frozenset(
    {
        "append", "append_instructions", "construct", "copy", "delete", "dict", "dump_state",
        "equals", "fields", "from_orm", "input_fields", "insert", "instructions", "json",
        "load_state", "mro", "output_fields", "parse_file", "parse_obj", "parse_raw",
        "prepend", "register", "schema", "schema_json", "signature", "update_forward_refs",
        "validate", "with_instructions", "with_updated_fields",
    }
)  # fmt: skip
"""The public attributes of a ``dspy.Signature`` class (DSPy 3), ``model_*`` aside: names a
field may not take. The real worker asks DSPy's class itself; the mock, which never imports
DSPy, reserves these, so that both name fields alike."""


def sanitize(name: str, reserved: Any = None) -> str:
    """`name` as a field name: DSPex's rule (``\\W`` and a leading digit become ``_``), then
    a leading underscore gets a ``field`` prefix (``1abc`` → ``field_1abc``) and a name
    `reserved` has as an attribute (``json`` on a ``dspy.Signature``) or holds (a frozenset
    of names: `SIGNATURE_ATTRIBUTES`), or one starting with ``model_``, gets a ``_`` suffix
    (what pydantic refuses)."""
    sanitized = _UNSAFE.sub("_", name)
    if sanitized.startswith("_"):
        sanitized = "field" + sanitized
    if isinstance(reserved, frozenset):
        taken = sanitized in reserved
    else:
        taken = reserved is not None and hasattr(reserved, sanitized)
    if taken or sanitized.startswith("model_"):
        sanitized += "_"
    return sanitized


def parse_fields(
    definition: dict[str, Any], reserved: Any = None
) -> tuple[dict[str, list[tuple[str, str, dict[str, Any], Any]]], str | None, str]:
    """A definition's fields, checked: per side (``inputs``, ``outputs``) the ``(original,
    sanitized, field, type)`` of each (`field_type`); its instructions; its class name.

    Raises:
        BridgeError: a side is not a list (outputs: empty), a field has no name or an
            unsupported type, or two fields clash once sanitized.
    """
    seen: set[str] = set()
    sides: dict[str, list[tuple[str, str, dict[str, Any], Any]]] = {"inputs": [], "outputs": []}
    for side in ("inputs", "outputs"):
        declared = definition.get(side, [])
        if not isinstance(declared, list) or (side == "outputs" and not declared):
            raise BridgeError(f"signature {side} must be a non-empty list of fields")
        for field in declared:
            if isinstance(field, str):
                field = {"name": field}
            name = field.get("name") if isinstance(field, dict) else None
            if not isinstance(name, str) or not name:
                raise BridgeError(f"a signature field needs a name, got: {short_repr(field)}")
            sanitized = sanitize(name, reserved)
            if sanitized in seen:
                raise BridgeError(
                    f"signature field {name!r} clashes with another field (as {sanitized!r})"
                )
            seen.add(sanitized)
            sides[side].append((name, sanitized, field, field_type(name, field.get("type"))))
    instructions = definition.get("instructions") or definition.get("description") or None
    raw_name = definition.get("name")
    class_name = "DynamicSignature"
    if isinstance(raw_name, str) and raw_name:
        class_name = _UNSAFE.sub("_", raw_name.rsplit(".", 1)[-1])
    return sides, None if instructions is None else str(instructions), class_name


# --- small helpers -----------------------------------------------------------------------------


def _required_str(args: dict[str, Any], key: str, message: str) -> str:
    value = args.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # an id sent as a number
    if not isinstance(value, str) or not value:
        raise BridgeError(message)
    return value


def _optional_str(args: dict[str, Any], key: str) -> str | None:
    value = args.get(key)
    if value is not None and not isinstance(value, str):
        raise BridgeError(f"{key} must be a string, got: {short_repr(value)}")
    return value or None


def _jsonable(value: Any) -> Any:
    """An output value as JSON data: pydantic models dumped, tuples and sets as lists, any
    other object as its string."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _jsonable(dump(mode="json"))
    return str(value)


def _memory_usage() -> dict[str, Any]:
    """This process's memory: ``rss`` and ``vms`` in bytes, ``percent`` of physical memory
    (from ``/proc/self/statm``; elsewhere the peak RSS from `resource`, and ``vms`` 0)."""
    page = os.sysconf("SC_PAGE_SIZE")
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            size, resident = (int(n) for n in statm.read().split()[:2])
        rss, vms = resident * page, size * page
    except (OSError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rss, vms = (peak if sys.platform == "darwin" else peak * 1024), 0
    try:
        total = os.sysconf("SC_PHYS_PAGES") * page
    except (OSError, ValueError):
        total = 0
    percent = round(100 * rss / total, 3) if total > 0 else 0.0
    return {"rss": rss, "vms": vms, "percent": percent}


def _note(text: str) -> None:
    """A line for the worker's log: stderr (stdout carries frames only)."""
    with contextlib.suppress(OSError, ValueError, RuntimeError):  # a closed stderr: no note
        print(f"[dspy-bridge {os.getpid()}] {text}", file=sys.stderr, flush=True)
