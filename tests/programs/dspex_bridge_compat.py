"""A stand-in for DSPex's ``priv/python/dspy_bridge.py`` (seed era), run unchanged by a pool.

It is what DSPex started for each pool worker, minus DSPy: the same command line
(``--mode standalone|pool-worker --worker-id ID``, parsed with argparse, so anything else
appended makes it exit with status 2), the same framing (a 4-byte big-endian length, then UTF-8
JSON), the same replies (``{"id", "success": true, "result", "timestamp"}`` or ``{"id",
"success": false, "error", "timestamp"}``, the timestamp a float epoch), messages without an
``id`` or a ``command`` ignored, exit on EOF. Like the seed-era bridge it keeps programs in its
own memory, per session in ``pool-worker`` mode: only a pool that replays sessions makes two
such workers agree.

Commands: ``ping``, ``configure_lm``, ``create_program``, ``execute_program``,
``list_programs``, ``delete_program``, ``get_program_info``, ``get_stats``, ``cleanup``,
``reset_state``, ``cleanup_session``, ``shutdown`` (DSPex's names and result shapes), and
``echo``, which answers with the message exactly as received and this process's argv.
``execute_program`` fills every declared output field with a string naming the field and
quoting the inputs, and reports the LM it ran with (``"lm"``: the session's ``configure_lm``
model, else the worker's, else None).

For the tests:

- ``COMPAT_LOG=/path`` in the environment: every message received is appended to that file as
  one JSON line ``{"pid", "worker_id", "argv", "message"}`` (before it is handled).
- ``"_misbehave": kind`` in a request's args, honoured once per process and kind:
  ``"mismatch"`` (a success reply with another id), ``"garbage"`` (a frame that is not JSON),
  ``"no_success"`` (a reply without ``"success"``), ``"non_mapping"`` (a success whose result
  is a list), ``"hang"`` (no reply until the next frame, or EOF, arrives: then the late reply
  is written first), ``"die"`` (exit with status 7, no reply).
- ``"_fail_on_pids": [pid, ...]`` in a request's args: the command fails (an error reply) in
  those processes, and runs as usual in any other; ``"_die_on_pids"``: those processes exit
  with status 7 instead of answering it; ``"_die_unless_pids"``: every other process does.
"""

import argparse
import json
import os
import struct
import sys
import time
from typing import Any

MISBEHAVIOURS = ("mismatch", "garbage", "no_success", "non_mapping", "hang", "die")


def read_message(stdin: Any) -> Any:
    """The next message; None at EOF (also a frame cut short)."""
    header = stdin.read(4)
    if len(header) < 4:
        return None
    (length,) = struct.unpack(">I", header)
    payload = stdin.read(length)
    if len(payload) < length:
        return None
    return json.loads(payload.decode("utf-8"))


def write_frame(payload: bytes) -> None:
    data = struct.pack(">I", len(payload)) + payload
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


def write_message(message: dict[str, Any]) -> None:
    write_frame(json.dumps(message, ensure_ascii=False).encode("utf-8"))


class Bridge:
    """The seed-era bridge's state and commands, without DSPy."""

    def __init__(self, mode: str, worker_id: str | None) -> None:
        self.mode = mode
        self.worker_id = worker_id
        self.start_time = time.time()
        self.command_count = 0
        self.error_count = 0
        self.current_session: str | None = None
        self.lm: str | None = None
        self.session_lms: dict[str, str] = {}
        self.session_programs: dict[str, dict[str, dict[str, Any]]] = {}  # pool-worker mode
        self.programs: dict[str, dict[str, Any]] = {}  # standalone mode

    def handle_command(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        self.command_count += 1
        if os.getpid() in args.get("_die_on_pids", ()):
            os._exit(7)  # no reply
        if "_die_unless_pids" in args and os.getpid() not in args["_die_unless_pids"]:
            os._exit(7)
        if os.getpid() in args.get("_fail_on_pids", ()):
            self.error_count += 1
            raise ValueError(f"{command} refused by process {os.getpid()}")
        handler = getattr(self, f"cmd_{command}", None) if isinstance(command, str) else None
        if handler is None:
            self.error_count += 1
            raise ValueError(f"Unknown command: {command}")
        try:
            result: dict[str, Any] = handler(args)
        except Exception:
            self.error_count += 1
            raise
        return result

    # -- helpers --

    def _session(self, args: dict[str, Any]) -> str | None:
        session_id = args.get("session_id")
        if self.mode != "pool-worker":
            return None
        if session_id:
            self.current_session = session_id
        return session_id or None

    def _table(self, session_id: str | None, create: bool = False) -> dict[str, dict[str, Any]]:
        if self.mode != "pool-worker":
            return self.programs
        if session_id is None:
            raise ValueError("Session ID required in pool-worker mode")
        if create:
            return self.session_programs.setdefault(session_id, {})
        return self.session_programs.get(session_id, {})

    def _find(self, program_id: Any, session_id: str | None) -> dict[str, Any]:
        table = self._table(session_id)
        if program_id not in table:
            raise ValueError(f"Program not found: {program_id}")
        return table[program_id]

    def _count(self) -> int:
        return len(self.programs) + sum(len(t) for t in self.session_programs.values())

    # -- commands --

    def cmd_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        response: dict[str, Any] = {
            "status": "ok",
            "timestamp": time.time(),
            "dspy_available": False,
            "gemini_available": False,
            "uptime": time.time() - self.start_time,
            "mode": self.mode,
            "pid": os.getpid(),
        }
        if self.worker_id:
            response["worker_id"] = self.worker_id
        if self.mode == "pool-worker":
            response["current_session"] = self.current_session
        return response

    def cmd_echo(self, args: dict[str, Any]) -> dict[str, Any]:
        # Filled in by main(): the message as received.
        return {"argv": sys.argv[1:], "pid": os.getpid()}

    def cmd_configure_lm(self, args: dict[str, Any]) -> dict[str, Any]:
        model = args.get("model")
        if not model:
            raise ValueError("Model name is required")
        session_id = self._session(args)
        if session_id is None or session_id == "anonymous":
            self.lm = model
        else:
            self.session_lms[session_id] = model
        return {
            "status": "configured",
            "model": model,
            "provider": args.get("provider", "google"),
            "temperature": args.get("temperature", 0.7),
        }

    def cmd_create_program(self, args: dict[str, Any]) -> dict[str, Any]:
        program_id = args.get("id")
        if not program_id:
            raise ValueError("Program ID is required")
        session_id = self._session(args)
        table = self._table(session_id, create=True)
        if program_id in table:
            where = f" in session {session_id}" if session_id else ""
            raise ValueError(f"Program with ID '{program_id}' already exists{where}")
        signature = args.get("signature", {})
        table[program_id] = {
            "signature": signature,
            "program_type": args.get("program_type", "predict"),
            "session_id": session_id,
            "created_at": time.time(),
            "execution_count": 0,
            "last_executed": None,
        }
        return {
            "program_id": program_id,
            "status": "created",
            "signature": signature,
            "program_type": args.get("program_type", "predict"),
        }

    def cmd_execute_program(self, args: dict[str, Any]) -> dict[str, Any]:
        program_id = args.get("program_id")
        session_id = self._session(args)
        program = self._find(program_id, session_id)
        inputs = args.get("inputs", {})
        began = time.time()
        outputs = {}
        for field in program["signature"].get("outputs", []):
            name = field["name"] if isinstance(field, dict) else str(field)
            outputs[name] = f"{name} for {json.dumps(inputs, sort_keys=True)}"
        program["execution_count"] += 1
        program["last_executed"] = time.time()
        lm = self.session_lms.get(session_id or "", self.lm)
        return {
            "program_id": program_id,
            "outputs": outputs,
            "execution_time": time.time() - began,
            "lm": lm,
        }

    def cmd_list_programs(self, args: dict[str, Any]) -> dict[str, Any]:
        session_id = self._session(args)
        tables: list[tuple[str | None, dict[str, dict[str, Any]]]]
        if self.mode != "pool-worker":
            tables = [(None, self.programs)]
        elif session_id is not None:
            tables = [(session_id, self.session_programs.get(session_id, {}))]
        else:
            tables = list(self.session_programs.items())
        programs = []
        for sid, table in tables:
            for program_id, info in table.items():
                entry = {
                    "id": program_id,
                    "created_at": info["created_at"],
                    "execution_count": info["execution_count"],
                    "last_executed": info["last_executed"],
                    "signature": info["signature"],
                }
                if self.mode == "pool-worker":
                    entry["session_id"] = sid
                programs.append(entry)
        return {"programs": programs, "total_count": len(programs)}

    def cmd_delete_program(self, args: dict[str, Any]) -> dict[str, Any]:
        program_id: Any = args.get("program_id")
        session_id = self._session(args)
        self._find(program_id, session_id)
        del self._table(session_id)[program_id]
        return {"program_id": program_id, "status": "deleted"}

    def cmd_get_program_info(self, args: dict[str, Any]) -> dict[str, Any]:
        program_id = args.get("program_id")
        info = self._find(program_id, self._session(args))
        return {"program_id": program_id, **{k: v for k, v in info.items() if k != "session_id"}}

    def cmd_get_stats(self, args: dict[str, Any]) -> dict[str, Any]:
        return {
            "programs_count": self._count(),
            "sessions_count": len(self.session_programs),
            "command_count": self.command_count,
            "error_count": self.error_count,
            "uptime": time.time() - self.start_time,
            "worker_id": self.worker_id,
            "mode": self.mode,
            "pid": os.getpid(),
        }

    def cmd_cleanup(self, args: dict[str, Any]) -> dict[str, Any]:
        removed = self._count()
        self.programs.clear()
        for table in self.session_programs.values():
            table.clear()
        return {"status": "cleaned", "programs_removed": removed}

    def cmd_reset_state(self, args: dict[str, Any]) -> dict[str, Any]:
        cleared = self.cmd_cleanup(args)["programs_removed"]
        commands, errors = self.command_count, self.error_count
        self.command_count = self.error_count = 0
        return {
            "status": "reset",
            "programs_cleared": cleared,
            "commands_reset": commands,
            "errors_reset": errors,
        }

    def cmd_cleanup_session(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.mode != "pool-worker":
            return {"status": "not_applicable"}
        session_id = args.get("session_id")
        if not session_id:
            raise ValueError("Session ID required for cleanup")
        programs = self.session_programs.pop(session_id, None)
        self.session_lms.pop(session_id, None)
        if self.current_session == session_id:
            self.current_session = None
        if programs is None:
            return {"status": "not_found", "session_id": session_id}
        return {"status": "cleaned", "session_id": session_id, "programs_removed": len(programs)}

    def cmd_shutdown(self, args: dict[str, Any]) -> dict[str, Any]:
        sessions = len(self.session_programs)
        self.cmd_cleanup(args)
        self.session_programs.clear()
        self.session_lms.clear()
        return {
            "status": "shutting_down",
            "worker_id": self.worker_id,
            "mode": self.mode,
            "sessions_cleaned": sessions,
        }


def log(path: str | None, worker_id: str | None, message: Any) -> None:
    if not path:
        return
    line = json.dumps(
        {"pid": os.getpid(), "worker_id": worker_id, "argv": sys.argv[1:], "message": message}
    )
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write: lines of several workers never mix
    finally:
        os.close(fd)


def reply_to(bridge: Bridge, message: dict[str, Any]) -> dict[str, Any]:
    request_id = message["id"]
    args = message.get("args") or {}
    try:
        result = bridge.handle_command(message["command"], args)
        if message["command"] == "echo":
            result["received"] = message
        return {"id": request_id, "success": True, "result": result, "timestamp": time.time()}
    except Exception as exc:
        print(f"Error handling {message['command']}: {exc}", file=sys.stderr, flush=True)
        return {"id": request_id, "success": False, "error": str(exc), "timestamp": time.time()}


def main() -> int:
    parser = argparse.ArgumentParser(description="DSPy Bridge for Elixir Integration")
    parser.add_argument("--mode", choices=["standalone", "pool-worker"], default="standalone")
    parser.add_argument("--worker-id", type=str)
    options = parser.parse_args()
    bridge = Bridge(options.mode, options.worker_id)
    log_path = os.environ.get("COMPAT_LOG")
    stdin = sys.stdin.buffer
    misbehaved: set[str] = set()
    late: bytes | None = None  # a "hang" reply, written when the next frame (or EOF) comes
    print(f"DSPy Bridge started in {options.mode} mode", file=sys.stderr, flush=True)
    while True:
        try:
            message = read_message(stdin)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            print(f"undecodable message, exiting: {exc}", file=sys.stderr, flush=True)
            return 1
        if late is not None:
            write_frame(late)
            late = None
        if message is None:
            return 0
        log(log_path, options.worker_id, message)
        if not isinstance(message, dict) or message.get("id") is None or not message.get("command"):
            print(f"Invalid message: {message!r}", file=sys.stderr, flush=True)
            continue
        args = message.get("args")
        kind = args.get("_misbehave") if isinstance(args, dict) else None
        if kind in MISBEHAVIOURS and kind not in misbehaved:
            misbehaved.add(kind)
        else:
            kind = None
        reply = reply_to(bridge, message)
        if kind == "die":
            os._exit(7)
        elif kind == "garbage":
            write_frame(b"\xffthis is not JSON")
        elif kind == "hang":
            late = json.dumps(reply).encode()
        else:
            if kind == "mismatch":
                reply["id"] = message["id"] + 1_000_000
            elif kind == "no_success":
                del reply["success"]
            elif kind == "non_mapping":
                reply.update(success=True, result=["not", "a", "mapping"])
            write_message(reply)


if __name__ == "__main__":
    sys.exit(main())
