"""The bridge worker program's code (see `dspex_actors.bridge.worker`, the module to run).

It lives apart from the module run with ``python -m``, so that importing the package (which
refers to `handle_request` and `PRELOAD`) does not import the module ``-m`` then runs again.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from .._errors import ProtocolError
from .._ports._framing import DEFAULT_MAX_FRAME, JSON_CODEC, FrameDecoder, encode_frame

if TYPE_CHECKING:
    from ._bridge import BridgeCommands
    from ._commands import DSPyBridge

__all__ = ["PRELOAD", "handle_request", "main"]

PRELOAD = ("dspy", "dspex_actors.bridge._commands")
"""What a fork server should import for `handle_request` workers (``ProcessPool(...,
preload=list(PRELOAD))``), so that each forked worker starts with DSPy loaded. Neither starts a
thread or writes a file, so forking after them is safe."""

_READ_SIZE = 1 << 16


def main(argv: Sequence[str] | None = None) -> int:
    """Serve requests from stdin until EOF; return the exit status (see the module docs)."""
    # First, so that a stop during the DSPy import below is a clean exit too.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_now)
    options = _parser().parse_args(argv)
    # Frames go to a private copy of stdout; fd 1 (and sys.stdout) becomes stderr, so nothing
    # printed or logged by DSPy, LiteLLM or a program can corrupt the stream.
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    bridge: BridgeCommands
    if options.backend == "mock":
        from ._mock import MockBridge, MockScript

        script = MockScript(
            delay=options.delay,
            fail=options.fail,
            error_rate=options.error_rate,
            seed=options.seed,
            crash_after=options.crash_after,
        )
        bridge = MockBridge(options.mode, options.worker_id, script, crash_exits=True)
    else:
        from ._commands import DSPyBridge

        bridge = DSPyBridge(mode=options.mode, worker_id=options.worker_id)
    _note(f"{options.backend} bridge started in {options.mode} mode (worker {options.worker_id})")
    try:
        return _serve(bridge, 0, out_fd, options.max_frame)
    finally:
        _note("bridge shutting down")


def handle_request(request: dict[str, Any]) -> dict[str, Any] | None:
    """A `ProcessPool` target: one DSPex request in, its reply envelope out (None: a message
    without an id or a command, which gets no reply).

    Runs in the pool's worker process, one request at a time. The bridge is made on the first
    call, in ``"pool-worker"`` mode; DSPex's init ping (``{"id": 0, "command": "ping",
    "args": {"initialization": true, "worker_id": ...}}``) gives it its worker id. Command
    failures are error envelopes, never exceptions.

    ``shutdown`` clears the bridge and is answered, but the process is its pool's, and a
    target cannot end it after its own reply: the pool that sent it closes that worker (a
    `SessionPool` does, at once: the worker exits on EOF, with status 0).
    """
    global _bridge
    if _bridge is None:
        from ._commands import DSPyBridge

        _bridge = DSPyBridge(mode="pool-worker")
    return _bridge.respond(request)


_bridge: DSPyBridge | None = None
"""`handle_request`'s bridge: one per worker process, made by its first request."""


# --- the frame loop ----------------------------------------------------------------------------


def _serve(bridge: BridgeCommands, in_fd: int, out_fd: int, max_frame: int) -> int:
    decoder = FrameDecoder(max_frame)
    while True:
        chunk = os.read(in_fd, _READ_SIZE)
        if not chunk:
            try:
                decoder.eof()
            except ProtocolError as exc:
                _note(f"stdin closed mid-frame: {exc}")
            _note("end of input: exiting")
            return 0
        try:
            frames = decoder.feed(chunk)
        except ProtocolError as exc:
            _note(f"cannot read the request stream any more: {exc}")
            return 1
        for frame in frames:
            try:
                message = JSON_CODEC.decode(frame)
            except ProtocolError as exc:
                _note(f"ignoring an undecodable frame: {exc}")
                continue
            reply = bridge.respond(message)
            if reply is not None and not _write(out_fd, _encode(reply, max_frame)):
                return 0
            if bridge.shutting_down:
                _note("shutdown: exiting")
                return 0


def _encode(reply: dict[str, Any], max_frame: int) -> bytes:
    """`reply` as a frame; a reply that cannot be sent (not JSON data, too large) becomes an
    error reply for the same request, so the caller is answered either way."""
    try:
        return encode_frame(JSON_CODEC.encode(reply), max_frame=max_frame)
    except ProtocolError as exc:
        _note(f"cannot send the reply to request {reply.get('id')!r}: {exc}")
        error = {
            "id": reply.get("id"),
            "success": False,
            "error": f"cannot send the reply: {exc}",
            "timestamp": reply.get("timestamp"),
        }
        return encode_frame(JSON_CODEC.encode(error), max_frame=max_frame)


def _write(fd: int, data: bytes) -> bool:
    """Write all of `data`; False if the reader has gone (a broken pipe)."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        return False
    return True


def _exit_now(signum: int, frame: FrameType | None) -> None:
    _note(f"{signal.Signals(signum).name}: exiting")
    raise SystemExit(0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dspex_actors.bridge.worker",
        description="DSPex bridge worker: DSPex's commands on DSPy, over length-prefixed "
        "JSON frames on stdin/stdout.",
    )
    parser.add_argument("--mode", choices=["standalone", "pool-worker"], default="standalone")
    parser.add_argument("--worker-id", default=None, help="the id ping and get_stats report")
    parser.add_argument(
        "--backend",
        choices=["dspy", "mock"],
        default="dspy",
        help="dspy: real DSPy programs (default); mock: made-up outputs, no DSPy, and the "
        "scripted misbehaviour below (protocol tests)",
    )
    mock = parser.add_argument_group("mock backend")
    mock.add_argument("--delay", type=float, default=0.0, help="seconds every command takes")
    mock.add_argument(
        "--fail", action="append", default=[], metavar="COMMAND", help="a command that fails"
    )
    mock.add_argument("--error-rate", type=float, default=0.0, help="chance a command fails")
    mock.add_argument("--seed", type=int, default=0, help="seed of --error-rate")
    mock.add_argument(
        "--crash-after", type=int, default=None, metavar="N", help="exit at the Nth command"
    )
    parser.add_argument(
        "--max-frame",
        type=int,
        default=DEFAULT_MAX_FRAME,
        help="the largest frame accepted or sent, in bytes (default: 16 MiB)",
    )
    return parser


def _note(text: str) -> None:
    """A line for the worker's log: stderr (stdout carries frames only)."""
    # A closed stderr must not turn a clean exit into a traceback, nor may a note from the
    # signal handler that interrupted another note (RuntimeError: a reentrant write).
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        print(f"[dspy-bridge {os.getpid()}] {text}", file=sys.stderr, flush=True)
