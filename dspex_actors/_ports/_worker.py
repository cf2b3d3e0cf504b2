"""The code that runs inside a `Port.spawn` worker process: its start, and its frame loop.

Nothing here runs in the parent. A worker reads ``[id, request]`` frames on stdin, calls the
handler, and writes ``[id, True, result]`` or ``[id, False, [kind, message]]`` on stdout; a
``[id]`` frame is a ping, answered ``[id, True, "pong"]`` without calling the handler. What the
handler prints goes to stderr (the port's log), never into the frames. How the process started
decides how it gets there: `spawn_entry` (a fresh interpreter reads the handler as its first
frame), `fork_child_main` (a ``"fork"`` child has it already), or the fork server's worker
start (`_forkserver_server`), each ending in `serve`.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from .._errors import ProtocolError
from .._logging import exception_text, short_repr
from ._fds import arm_lifeline
from ._framing import (
    JSON_CODEC,
    PICKLE_CODEC,
    Codec,
    FrameDecoder,
    check_size,
    encode_frame,
    pickled_envelope_id,
)

__all__ = [
    "answer",
    "codec_named",
    "decoded",
    "fork_child_main",
    "forked_child_setup",
    "line_buffered_std_streams",
    "reply_payload",
    "serve",
    "spawn_entry",
]


def spawn_entry() -> None:
    """The start of a ``"spawn"`` child (runs in the child): read the handler, then serve."""
    import dill

    # The frames move off fds 0 and 1: what the handler reads from stdin is /dev/null (as in
    # a forked worker), never the next request; what it prints goes to the port's stderr
    # log, never into the frames.
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    os.dup2(2, 1)
    line_buffered_std_streams()
    decoder = FrameDecoder(2**32 - 1)
    frames: list[bytes] = []
    while not frames:
        chunk = os.read(in_fd, 1 << 20)
        if not chunk:
            return
        frames = decoder.feed(chunk)
    handler, args, codec_name, max_frame = dill.loads(frames[0])
    serve(in_fd, out_fd, handler, args, codec_name, max_frame, frames[1:], decoder)


def line_buffered_std_streams() -> None:
    # Fresh line-buffered streams on fds 1 and 2: a forked child may have inherited replaced
    # sys.stdout/sys.stderr objects (pytest's capture, a GUI), and a pipe is block-buffered.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def fork_child_main(
    handler: Callable[..., Any],
    args: tuple[Any, ...],
    stdin: Any,
    stdout: Any,
    stderr: Any,
    lifeline: Any,
    codec_name: str,
    max_frame: int,
    parent: int,
) -> None:
    """The start of a ``"fork"`` child (runs in the child)."""
    # The parent's port fds are /dev/null here already (_drop_parent_fds, at the fork).
    in_fd, out_fd, err_fd, life_fd = (c.fileno() for c in (stdin, stdout, stderr, lifeline))
    forked_child_setup(err_fd, life_fd, parent)()  # watched from the start
    serve(in_fd, out_fd, handler, args, codec_name, max_frame, [], FrameDecoder(max_frame))


def forked_child_setup(err_fd: int, life_fd: int, owner: int) -> Callable[[], None]:
    """What a forked worker does before serving (``"fork"`` and ``"forkserver"`` children).

    It leads its own session (so the port signals its whole process group), sends what it
    prints to the port's stderr pipe, and arms its lifeline: the kernel SIGKILLs its process
    group once the lifeline's write end, held by the `owner` process, closes (see
    `arm_lifeline`), whatever the worker is doing. That holds whoever forked the worker, the
    fork server included: a worker outlives its fork server and dies with its owner.

    Returns what starts a thread that also watches the owner's pid (a pidfd, where there is
    one): a process forked from the owner without Python's at-fork hooks (a C-level fork) may
    hold the lifeline's write end past the owner's death, and without ``O_ASYNC`` (not Linux)
    the thread is the lifeline's only watcher.
    """
    with contextlib.suppress(OSError):
        os.setsid()
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:  # None: the process started with that fd closed
            stream.flush()
    os.dup2(err_fd, 1)
    os.dup2(err_fd, 2)
    line_buffered_std_streams()
    arm_lifeline(life_fd)

    watched = [life_fd]
    with contextlib.suppress(AttributeError, OSError):  # no pidfd (before Linux 5.3)
        owner_fd = os.pidfd_open(owner)
        watched.append(owner_fd)
        poller = select.poll()
        poller.register(owner_fd, select.POLLIN)
        if poller.poll(0):  # the owner has exited already
            os.killpg(0, signal.SIGKILL)

    def watch_owner() -> None:
        try:
            poller = select.poll()  # not select(): fds above 1023 are common in a fork
            for fd in watched:
                poller.register(fd, select.POLLIN)
            poller.poll()  # EOF on the lifeline, or the owner's exit
        finally:
            os.killpg(0, signal.SIGKILL)

    def start_watching() -> None:
        # A limit the owner set (RLIMIT_NPROC) may refuse the thread: the kernel's lifeline
        # still stands.
        with contextlib.suppress(RuntimeError):
            threading.Thread(target=watch_owner, name="port-lifeline", daemon=True).start()

    return start_watching


def serve(
    in_fd: int,
    out_fd: int,
    handler: Callable[..., Any],
    args: tuple[Any, ...],
    codec_name: str,
    max_frame: int,
    pending: list[bytes],
    decoder: FrameDecoder,
    start_watching: Callable[[], None] | None = None,
) -> None:
    """The frame loop of a `Port.spawn` child: ``[id, request]`` in, ``[id, ok, value]`` out.

    `start_watching` runs once, before the first handler call or once the first frames (pings)
    are answered, whichever comes first: a pool waits for a new worker's answer to a ping, so
    that answer comes sooner, and no handler ever runs unwatched.
    """
    codec = codec_named(codec_name)
    decoder.max_frame = max_frame

    def write(value: Any) -> None:
        data = encode_frame(reply_payload(codec, value, max_frame), max_frame=max_frame)
        written = os.write(out_fd, data)  # all of it, unless the pipe is full
        if written < len(data):
            view = memoryview(data)[written:]
            while view:
                view = view[os.write(out_fd, view) :]

    while True:
        for frame in pending:
            message = decoded(codec, frame)
            if start_watching is not None and not _is_ping(message):
                start_watching()
                start_watching = None
            write(answer(message, handler, args))
        if pending and start_watching is not None:
            start_watching()
            start_watching = None
        chunk = os.read(in_fd, 65536)
        if not chunk:
            decoder.eof()
            return
        pending = decoder.feed(chunk)


def codec_named(name: str) -> Codec:
    """The codec a worker speaks, by the name its setup carries."""
    return PICKLE_CODEC if name == "pickle" else JSON_CODEC


def decoded(codec: Codec, frame: bytes) -> Any:
    """The message `frame` carries. A pickled request that cannot be unpickled here (a
    class this process cannot import, a ``__setstate__`` that raises) but whose id can be
    read becomes a ``[id, _Undecodable]`` message: that request is answered with the error,
    and the worker serves on. Any other frame that cannot be decoded raises: the stream
    cannot be trusted."""
    try:
        return codec.decode(frame)
    except ProtocolError as exc:
        if codec is PICKLE_CODEC:
            request_id = pickled_envelope_id(frame)
            if request_id is not None:
                return [request_id, _Undecodable(str(exc))]
        raise


class _Undecodable:
    """A request that could not be unpickled (see `decoded`): its error, to answer with."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _is_ping(message: Any) -> bool:
    return isinstance(message, list) and len(message) == 1


def answer(message: Any, handler: Callable[..., Any], args: tuple[Any, ...]) -> list[Any]:
    """The reply to one decoded frame: ``[id, True, "pong"]`` to a ping ``[id]``; for a
    request ``[id, request]``, ``[id, True, result]`` or, if the handler raised,
    ``[id, False, [kind, message]]``.

    Raises:
        ProtocolError: the frame is neither (the stream cannot be trusted any more).
    """
    if _is_ping(message):
        return [message[0], True, "pong"]
    if not (isinstance(message, list) and len(message) == 2):
        raise ProtocolError(f"expected a [id, request] envelope, got {short_repr(message)}")
    request_id, request = message
    if type(request) is _Undecodable:
        return [request_id, False, ["ProtocolError", request.reason]]
    try:
        result = handler(request, *args)
    except Exception as exc:
        return [request_id, False, [type(exc).__name__, exception_text(exc)]]
    return [request_id, True, result]


def reply_payload(codec: Codec, reply: list[Any], max_frame: int) -> bytes:
    """`reply` encoded; one that cannot be encoded or exceeds `max_frame` becomes a
    ``ProtocolError`` reply to the same request, which names what in the handler's result
    could not be encoded (where it sits in the result, not in the envelope around it)."""
    try:
        payload = codec.encode(reply)
    except ProtocolError as exc:
        message = str(exc)
        if reply[1] is True:
            try:
                codec.encode(reply[2])
            except ProtocolError as alone:
                message = f"the handler's result: {alone}"
        return codec.encode([reply[0], False, ["ProtocolError", message]])
    try:
        check_size(len(payload), max_frame)
    except ProtocolError as exc:
        return codec.encode([reply[0], False, ["ProtocolError", str(exc)]])
    return payload
