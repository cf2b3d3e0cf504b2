"""`MockBridge`: DSPex's bridge commands without DSPy, with scripted misbehaviour.

The test layers below the real worker (DSPex's ``mock_adapter`` and ``bridge_mock``): the same
commands, state and reply shapes as `DSPyBridge`, but a program's outputs are made up
deterministically from its inputs (the same inputs give the same outputs, in any process), and
the bridge can be told to be slow, to fail or to crash:

- `MockScript` for the whole bridge: a delay before every command, commands that always fail,
  a random error rate (seeded), a crash after N commands;
- a ``"_mock"`` argument in one request: ``{"delay": seconds, "error": "text", "crash":
  true}`` for that request alone.

Both apply to every command but a worker's init ping (id 0, ``"initialization": true`` in its
args), which is served as it is and not counted (nor does it draw from the error rate's random
numbers): without it no worker could start. The steps a pool sends to rebuild a session on a
worker (a program created again...) are commands like the caller's, on the wire as in the
script: a scripted failure may hit one (the caller's command then fails with it), and
``crash_after`` counts them.

In a worker process (``python -m dspex_actors.bridge.worker --backend mock ...``, layer 2) a
crash is the process exiting at once (status 70, like a segfault for the pool); in this
process (`MockAdapter`, layer 1) it raises `MockCrash` instead.

Example:
    >>> bridge = MockBridge(mode="pool-worker")
    >>> reply = bridge.respond({"id": 1, "command": "create_program", "args": {
    ...     "id": "qa", "session_id": "s", "signature": {
    ...         "inputs": ["question"], "outputs": ["answer"]}}})
    >>> run = {"program_id": "qa", "session_id": "s", "inputs": {"question": "2+2?"}}
    >>> bridge.handle("execute_program", run)["outputs"]
    {'answer': 'mock answer 660353f3 for question=2+2?'}
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .._errors import InvalidOption
from ._bridge import (
    SIGNATURE_ATTRIBUTES,
    BridgeCommands,
    BridgeError,
    Program,
    Signature,
    parse_fields,
)
from ._protocol import INIT_PING_ID

__all__ = ["MockBridge", "MockCrash", "MockScript", "mock_outputs"]

CRASH_STATUS = 70
"""The exit status of a worker process told to crash."""


class MockCrash(RuntimeError):
    """A scripted crash, in this process (a worker process exits instead)."""


def _command_names(names: Iterable[str]) -> frozenset[str]:
    """The set of command names a script lists (any iterable of names, not one string).

    Raises:
        InvalidOption: one string (which would be read as its characters), or a name that is
            not a non-empty string.
    """
    if isinstance(names, str | bytes):
        raise InvalidOption("fail", names, "a list of command names, not one string")
    found = frozenset(names)
    if not all(isinstance(name, str) and name for name in found):
        raise InvalidOption("fail", names, "a list of command names")
    return found


@attrs.frozen
class MockScript:
    """How a `MockBridge` misbehaves.

    Attributes:
        delay: seconds every command takes (slept before it runs).
        fail: commands that always answer with an error (``"scripted failure of <cmd>"``).
        error_rate: the chance (0 to 1) that any command fails, drawn from `seed`.
        seed: the random seed of `error_rate`.
        crash_after: crash at this command (counting from 1; a pool's init ping does not
            count), None: never.
    """

    delay: float = 0.0
    fail: frozenset[str] = attrs.field(default=frozenset(), converter=_command_names)
    error_rate: float = 0.0
    seed: int = 0
    crash_after: int | None = None


class MockBridge(BridgeCommands):
    """`BridgeCommands` with made-up deterministic programs and a `MockScript`.

    Args:
        mode: as `BridgeCommands`.
        worker_id: as `BridgeCommands`.
        script: how it misbehaves (default: never).
        crash_exits: a crash exits the process (a worker) instead of raising `MockCrash`.
    """

    def __init__(
        self,
        mode: str = "pool-worker",
        worker_id: str | None = None,
        script: MockScript | None = None,
        *,
        crash_exits: bool = False,
    ) -> None:
        super().__init__(mode, worker_id)
        self.script = script or MockScript()
        self.crash_exits = crash_exits
        self._random = random.Random(self.script.seed)
        self._handled = 0

    def handle_message(
        self, message: dict[str, Any], command: str, args: dict[str, Any]
    ) -> dict[str, Any]:
        if _is_init_ping(message, command, args):
            return BridgeCommands.handle(self, command, args)
        return self.handle(command, args)

    def handle(self, command: str, args: dict[str, Any]) -> dict[str, Any]:
        """Run `command` as scripted (see the module docs), then as `BridgeCommands` does.

        Raises:
            MockCrash: a scripted crash (unless `crash_exits`: the process exits).
            BridgeError: a scripted failure, or as `BridgeCommands.handle`.
        """
        self._handled += 1
        script = self.script
        control = args.pop("_mock", None) if isinstance(args, dict) else None
        control = control if isinstance(control, dict) else {}
        delay = control.get("delay", script.delay)
        if isinstance(delay, int | float) and delay > 0:
            time.sleep(delay)  # a scripted slow command: the point of this bridge
        if control.get("crash") or (
            script.crash_after is not None and self._handled >= script.crash_after
        ):
            self._crash(command)
        error = control.get("error")
        if error is None and command in script.fail:
            error = f"scripted failure of {command}"
        if error is None and script.error_rate and self._random.random() < script.error_rate:
            error = f"scripted random failure of {command}"
        if error is not None:
            with self._lock:
                self.command_count += 1
                self.error_count += 1
            raise BridgeError(str(error))
        return super().handle(command, args)

    def _crash(self, command: str) -> None:
        if self.crash_exits:
            os._exit(CRASH_STATUS)
        raise MockCrash(f"scripted crash during {command}")

    # -- the programs --

    def make_lm(self, model: str, options: dict[str, Any]) -> Any:
        return {"model": model, **{k: v for k, v in options.items() if k != "api_key"}}

    def offline_lm(self) -> Any:
        return {"model": "offline"}

    def make_signature(self, key: str) -> Signature:
        sides, _, class_name = parse_fields(json.loads(key), SIGNATURE_ATTRIBUTES)
        return Signature(
            None,
            class_name,
            tuple((name, sanitized) for name, sanitized, *_ in sides["inputs"]),
            tuple((name, sanitized) for name, sanitized, *_ in sides["outputs"]),
        )

    def make_module(self, signature: Signature, program_type: str) -> Any:
        return program_type

    def run(self, program: Program, values: dict[str, Any], lm: Any) -> Mapping[str, Any]:
        return mock_outputs([s for _, s in program.signature.outputs], values)


def _is_init_ping(message: dict[str, Any], command: Any, args: Any) -> bool:
    """Whether a request is the ping a pool sends a new worker before it joins."""
    return (
        command == "ping"
        and message.get("id") == INIT_PING_ID
        and isinstance(args, dict)
        and bool(args.get("initialization"))
    )


def mock_outputs(outputs: list[str], inputs: Mapping[str, Any]) -> dict[str, str]:
    """Made-up outputs: ``"mock <field> <hash> for <inputs>"``, the hash of the field and the
    inputs (the same inputs give the same outputs, in any process)."""
    summary = "; ".join(f"{k}={str(v)[:60]}" for k, v in inputs.items())
    made = {}
    for name in outputs:
        key = json.dumps([name, {k: str(v) for k, v in inputs.items()}], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        made[name] = f"mock {name} {digest} for {summary}"
    return made
