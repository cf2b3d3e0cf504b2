"""DSPex's wire protocol, as the pool side speaks it, and the bridge's errors.

A request is ``{"id", "command", "args", "timestamp"}`` (the timestamp ISO-8601 UTC); a reply is
``{"id", "success": true, "result", "timestamp"}`` or ``{"id", "success": false, "error",
"timestamp"}``. Frames are 4-byte big-endian length-prefixed UTF-8 JSON (`Port.open`'s framing).
Request ids are unique in the process, positive and rising, except the worker's first ping,
whose id is 0 (DSPex's init handshake).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from typing import Any

from .._errors import CallTimeout, DspexActorsError, ProtocolError
from .._logging import short_repr

__all__ = [
    "INIT_PING_ID",
    "CommandError",
    "CommandTimeout",
    "request",
    "result_of",
]

INIT_PING_ID = 0
"""The id of the ping a worker answers before it joins the pool."""


class CommandError(DspexActorsError, RuntimeError):
    """The worker answered the command with an error (``"success": false``).

    The worker is fine and stays in the pool (its checkin counts in `error_checkins`).

    Attributes:
        command: the command.
        message: the worker's own text (``"error"`` in its reply).
        worker: the worker's port.
        session_id: the session the command ran in (None: anonymous).
    """

    def __init__(
        self, command: str, message: str, worker: str, session_id: str | None = None
    ) -> None:
        self.command = command
        self.message = message
        self.worker = worker
        self.session_id = session_id
        super().__init__(message)


class CommandTimeout(CallTimeout):
    """No reply to a command within the operation timeout (DSPex's ``command_timeout``).

    The worker is removed: its late reply must never reach the next caller.
    """


_second: tuple[int, str] = (0, "")  # the last second formatted, and its text (one object:
# threads swap it whole)


def now_iso() -> str:
    """The current time in ISO-8601 UTC with microseconds, as DSPex's requests carry it
    (``2026-12-06T05:16:47.123456+00:00``). The date and time are formatted once a second:
    this is on every command's path."""
    global _second
    now = time.time()
    second = int(now)
    cached = _second
    if cached[0] != second:
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{cached[1]}.{int((now - second) * 1e6):06d}+00:00"


_ids = itertools.count(1)


def request(command: str, args: Mapping[str, Any], request_id: int | None = None) -> dict[str, Any]:
    """A request, with a new id unless `request_id` is given."""
    return {
        "id": next(_ids) if request_id is None else request_id,
        "command": command,
        "args": dict(args),
        "timestamp": now_iso(),
    }


def result_of(
    reply: Any, command: str, worker: str, session_id: str | None = None
) -> dict[str, Any]:
    """The result of a reply in DSPex's envelope: always a mapping (DSPex's results are).

    Raises:
        CommandError: ``"success": false`` (the worker's ``"error"`` is the message).
        ProtocolError: the reply is not the envelope (no boolean ``success``), or a success
            without a mapping as its result (DSPex's ``malformed_response``).
    """
    if not isinstance(reply, Mapping) or not isinstance(reply.get("success"), bool):
        raise ProtocolError(f"malformed response from {worker}: {short_repr(reply)}")
    if not reply["success"]:
        raise CommandError(command, str(reply.get("error", "")), worker, session_id)
    result = reply.get("result")
    if not isinstance(result, dict):
        raise ProtocolError(
            f"malformed response from {worker}: the result is not a mapping: {short_repr(result)}"
        )
    return result
