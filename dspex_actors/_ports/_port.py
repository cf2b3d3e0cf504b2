"""`Port`: an OS process owned by one actor or thread at a time, speaking length-prefixed frames.

This is Erlang's port, for Python. A port runs a program (`Port.open(argv)`) or a Python callable
in a child process (`Port.spawn(handler)`) and exchanges frames with it over stdin/stdout: a
4-byte big-endian length, then the payload (Erlang ``{:packet, 4}``). Stderr is read separately
and logged with the port's id (event ``port_stderr``); it never mixes into the frames.

- **Ownership.** A port has one owner: the `Actor` (its `ActorRef`) or the thread that opened it.
  Only the owner may `send`, `recv`, `request` or `connect` it to a new owner; anyone else gets
  `PortNotOwned`. `validate_port` and `safe_connect` check a port before handing
  it over, and classify every way the hand-over can fail.
- **Death is an event.** The owner reads stdout itself, in its own thread (no hand-off on the
  hot path). One thread per port (``dspex-port-<id>``) logs stderr and waits on the process's
  exit event (a pidfd on Linux, the sentinel of a forked child, a byte from the fork server's
  reader for a forkserver worker, which the server reaps). When it fires, the thread reaps the
  process (or takes the status the server reported) and tells the owner at once: an actor
  owner gets a `PortExited(port, status)` message, a thread owner's `recv` raises
  `PortClosed` once every frame written before the exit has been read, and
  `on_exit(PortExited)` is called if given.
  Nothing polls.
- **Close and kill.** `close(timeout)` closes stdin (a well-behaved worker exits on EOF), then
  sends SIGTERM, then SIGKILL, to the whole process group (each port's process leads its own
  session), and always reaps it. Any thread may close a port; only the owner may talk to it.
- **Orphans.** A worker whose parent dies exits by itself within a second. `Port.spawn` workers
  watch a lifeline pipe from the parent (a thread in the child reading it; EOF means the parent
  is gone). `Port.open` programs get ``PR_SET_PDEATHSIG`` (SIGKILL) on Linux; because Linux
  sends that signal when the *thread* that forked the child ends, `Port.open` forks from one
  spawner thread (``dspex-port-spawner``) that lives while any opened port does. Elsewhere, an
  external program only learns of its parent's death from EOF on stdin.

**Start methods** (`Port.spawn(..., start_method=...)`): the default is ``"spawn"``, a fresh
interpreter. A parent that runs actors always has threads, and ``fork`` copies whatever locks those
threads held (logging, allocators, pykka inboxes) into a child that can then deadlock; CPython 3.12
warns about it and 3.14 stopped defaulting to it. ``"fork"`` starts much faster and is fine when
the handler touches no lock another thread may hold. ``"forkserver"`` gives both: one small
single-threaded server process (a fresh interpreter, started like a ``"spawn"`` child) forks every
worker, which is safe (no other thread to hold a lock) and nearly as fast as ``"fork"`` (the
default of `ProcessPool`'s target workers). Unlike `multiprocessing`'s fork server, ours is owned
by its users: every forkserver port (until it is reaped) and every forkserver `ProcessPool` (for
its whole life) holds a reference, and the last one to let go stops and reaps the server; it never
re-imports ``__main__``, since the handler crosses by value. If the server is killed, its workers
are killed too (status ``-9``) and the next port starts a new server. The handler and its arguments
cross with dill, so closures and lambdas work with every method; requests and replies are JSON
frames (the hot path never unpickles), unless you choose ``codec=PICKLE_CODEC``.

When not to use it: for work that needs no isolation, an actor (a thread) is cheaper; for a
pool of interchangeable workers use `ProcessPool`, which hands ports out and replaces dead ones.

Example:
    >>> import sys
    >>> from dspex_actors import Port
    >>> port = Port.spawn(lambda request: {"double": request["n"] * 2})
    >>> port.request({"n": 21}, timeout=30)
    {'double': 42}
    >>> port.close()
    >>> port.info() is None
    True
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import os
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import pykka

from .. import _telemetry
from .._actor import _current as _current_actor
from .._actor import not_exited
from .._aio import in_thread, thread_future, wait_readable
from .._checks import check_timeout, deadline_in, is_number, lock_timeout, remaining
from .._errors import (
    CallTimeout,
    ConnectFailed,
    InvalidOption,
    PortClosed,
    PortNotOwned,
    ProtocolError,
    RemoteError,
    ResponseMismatch,
    UndecodableReply,
)
from .._logging import area_logger, log_event, short_repr
from . import _fds, _launch
from ._fds import LONGEST_POLL, PARENT_FDS, close_fd, wait_writable
from ._framing import (
    DEFAULT_MAX_FRAME,
    JSON_CODEC,
    MAX_PAYLOAD,
    Codec,
    FrameDecoder,
    JsonCodec,
    PickleCodec,
    encode_frame,
    pickled_envelope_id,
)
from ._launch import (
    Started,
    pickle_setup,
    start_forked,
    start_forkserver_program,
    start_forkserver_worker,
    start_program,
    start_spawned,
)

__all__ = [
    "OPEN_METHODS",
    "START_METHODS",
    "Owner",
    "Port",
    "PortExited",
    "Prepared",
    "PortInfo",
    "calling_owner",
    "check_max_frame",
    "close_ports",
    "owner_alive",
    "same_owner",
]

_log = area_logger("port")

Owner = pykka.ActorRef[Any] | threading.Thread
"""Who may talk to a port: an actor (its `ActorRef`) or a thread."""

START_METHODS = ("spawn", "fork", "forkserver")
"""Start methods `Port.spawn` accepts (``"spawn"`` is the default)."""

OPEN_METHODS = (None, "spawn", "forkserver")
"""Start methods `Port.open` accepts: None or ``"spawn"`` (the default), or ``"forkserver"``."""

_KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL in close()
_REAP_LIMIT = 10.0
"""Seconds `close` waits for a SIGKILLed process to be reaped before it gives up waiting."""
_STDERR_TAIL = 50  # stderr lines kept per port for diagnostics
_STDERR_READ = 1 << 20  # bytes asked for per read of stderr
# An awaited reply larger than this is decoded in a thread, not on the event loop.
_LOOP_DECODE_MAX = 1 << 20

StartThread = Callable[[Callable[[], None]], None]
"""Starts a thread running the function it is given, or raises having started none: what
`Port._write` hands the rest of a frame to (its `late` and `handoff`)."""


# --- public types ------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class PortExited:
    """The port's process has exited (the Erlang ``{port, {:exit_status, status}}`` message).

    Sent to an actor owner as a message; passed to `on_exit`; the exit reason of a `PortActor`.

    Attributes:
        port: the port.
        status: the exit status; negative means killed by that signal (``-9``: SIGKILL).
    """

    port: Port
    status: int | None

    def __repr__(self) -> str:
        return f"PortExited({self.port}, status={self.status})"


@attrs.frozen
class PortInfo:
    """What `Port.info()` reports about an open port (like Erlang's ``Port.info/1``).

    Attributes:
        id: the port's number in this process (``#Port<id>``).
        name: the program (`argv[0]`) or the handler's name.
        os_pid: the OS process id.
        owner: the `ActorRef` or thread allowed to talk to it (Erlang's ``:connected``).
        codec: the codec's name (``"json"``, ``"raw"``, ``"pickle"``).
        max_frame: the largest payload accepted in either direction, in bytes.
    """

    id: int
    name: str
    os_pid: int
    owner: Owner
    codec: str
    max_frame: int


# --- public API --------------------------------------------------------------------------------


ENVELOPE_ROOM = 32
"""Bytes a request's id adds to its payload at most: ``[<id>,`` and ``]``, or ``{"id":<id>,``,
for an id of up to 20 digits (the ports' ids count up from 1), with room to spare for another
codec's envelope."""


@attrs.frozen
class Prepared:
    """A request encoded ahead of its send (see `Port._prepare`): the body is encoded once,
    and the envelope with its id is built around it when it is sent.

    Attributes:
        obj: the request.
        body: its encoding (JSON codecs; None for others, which encode the whole envelope at
            send time, after a trial encoding here).
        enveloped: for a `Port.spawn` worker (``[id, request]``) or a program (the mapping
            with its ``"id"``).
        own_id: a program's request's own ``"id"``, if it has one.
    """

    obj: Any
    body: bytes | None
    codec: Codec
    enveloped: bool
    own_id: Any = None

    @classmethod
    def of(cls, obj: Any, codec: Codec, max_frame: int, enveloped: bool, own_id: Any) -> Prepared:
        """Encode `obj`, refusing it (`ProtocolError`) unless its frame fits `max_frame` with
        whatever request id it is sent with: a request refused only at its send would have
        been refused after its worker was taken."""
        if not enveloped and own_id is None and isinstance(obj, Mapping) and "id" in obj:
            # ``"id": None`` asks for a fresh id, like no id at all (kept, it would be sent
            # as a second "id" key beside the one added).
            obj = {key: value for key, value in obj.items() if key != "id"}
        body = codec.encode(obj)
        room = 0 if own_id is not None else ENVELOPE_ROOM
        if len(body) + room > max_frame:
            raise ProtocolError(
                f"request of {len(body)} bytes exceeds max_frame ({max_frame} bytes)"
                + (f" with room for its id ({room} bytes)" if room else "")
            )
        # JSON bodies are spliced into their envelope; another codec's is only a trial.
        return cls(obj, body if isinstance(codec, JsonCodec) else None, codec, enveloped, own_id)

    def payload(self, request_id: Any) -> bytes:
        """The frame's payload for this request with `request_id`."""
        body = self.body
        if body is None:
            if self.enveloped:
                return self.codec.encode([request_id, self.obj])
            return self.codec.encode({**self.obj, "id": request_id})
        rid = self.codec.encode(request_id)
        if self.enveloped:
            return b"[" + rid + b"," + body + b"]"
        if self.own_id is not None:
            return body  # it carries its own id
        if body == b"{}":
            return b'{"id":' + rid + b"}"
        return b'{"id":' + rid + b"," + body[1:]


_ids = itertools.count(1)


class Port:
    """An OS process exchanging length-prefixed frames with its owner. Create with `open`/`spawn`.

    Every method that blocks takes `timeout` in seconds (`None` waits forever).
    """

    def __init__(
        self,
        started: Started,
        *,
        name: str,
        codec: Codec,
        max_frame: int,
        owner: Owner,
        on_exit: Callable[[PortExited], None] | None,
        enveloped: bool,
    ) -> None:
        """Adopt a process just started (use `open` or `spawn`, which start it)."""
        child = started.child
        stdin_fd, stdout_fd, stderr_fd = started.stdin_fd, started.stdout_fd, started.stderr_fd
        self.id = next(_ids)
        self._child = child
        self._stdin_fd: int | None = stdin_fd
        self._name = name
        self._codec = codec
        self._max_frame = max_frame
        self._owner: Owner = owner
        self._on_exit = on_exit
        self._enveloped = enveloped
        self._on_reaped = started.on_reaped
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        # The owner reads stdout itself, in its own thread (no hand-off on the hot path); the
        # reader thread only watches stderr and the process's exit event.
        self._recv_lock = threading.Lock()
        self._stdout_fd: int | None = stdout_fd
        self._decoder = FrameDecoder(max_frame)
        self._frames: collections.deque[bytes] = collections.deque()
        self._stream_error: ProtocolError | None = None
        self._stream_done = False  # EOF seen, or the stream broke: only PortClosed from now on
        self._poller = select.poll()
        self._poller.register(stdout_fd, select.POLLIN)
        # The reader thread writes a byte here once the process is reaped, so a recv blocked on
        # stdout wakes on the exit even while a grandchild outside the process group (it
        # called setsid) still holds stdout open and EOF never comes. Made under the fork guard
        # and listed in PARENT_FDS, like every parent-side fd, so no `fork` child keeps it.
        with _fds.FORK_GUARD.creating():
            self._exit_r, self._exit_w = os.pipe()
            PARENT_FDS.update((self._exit_r, self._exit_w))
        self._poller.register(self._exit_r, select.POLLIN)
        # Copies of stdout and the exit pipe an event loop watches (see `_aio_watch`).
        self._aio_lock = threading.Lock()
        self._aio_fds: list[int] | None = None
        self._aio_users = 0
        self._closing = False
        self._exit: PortExited | None = None
        self._exited = threading.Event()
        self._request_ids = itertools.count(1)
        # A request timed out: its reply may still come and must not reach another caller.
        self._reply_pending = False
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=_STDERR_TAIL)
        PARENT_FDS.update((stdin_fd, stdout_fd, stderr_fd))
        # Non-blocking stdin lets send() give up on a stalled process after its timeout;
        # non-blocking stdout lets recv() take a reply already there without polling first.
        os.set_blocking(stdin_fd, False)
        os.set_blocking(stdout_fd, False)
        self._reader = threading.Thread(
            target=self._watch,
            args=(stderr_fd, child.exit_fd()),
            name=f"dspex-port-{self.id}",
            daemon=True,
        )
        self._opened_at = time.monotonic()
        # Before the reader starts, so no handler can see this port's exit before its opening.
        if _telemetry.active:
            _telemetry.emit(_telemetry.PORT_OPENED, {"count": 1}, self._telemetry_metadata())
        try:
            self._reader.start()
        except BaseException:
            # No reader, no port: the process and its pipes are undone; these are ours.
            for fd in (self._exit_r, self._exit_w):
                close_fd(fd)
            started.abandon()
            self._emit_exited(None)  # every opening has its exit
            raise

    # -- constructors --

    @classmethod
    def open(
        cls,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        codec: Codec = JSON_CODEC,
        owner: Owner | None = None,
        on_exit: Callable[[PortExited], None] | None = None,
        start_method: str | None = None,
        timeout: float | None = None,
        on_start: Callable[[Port], None] | None = None,
    ) -> Port:
        """Start the program `argv` and return its port, owned by the caller (or `owner`).

        The program reads frames on stdin and writes frames on stdout; what it writes on
        stderr is logged (event ``port_stderr``) and kept (`stderr_tail`). It runs in its own
        session (process group), and on Linux it is SIGKILLed if this process dies.

        Args:
            argv: the program and its arguments (no shell).
            env: the environment (default: inherit ours).
            cwd: the working directory.
            max_frame: the largest payload accepted either way, in bytes (default 16 MiB).
            codec: how values become payloads (`JSON_CODEC`; `RAW_CODEC` for bytes). Pickle is
                refused: a port never unpickles what an external program wrote.
            owner: the first owner (default: the calling actor, else the calling thread).
            on_exit: called with `PortExited` once the process has exited and been reaped
                (in the port's reader thread: keep it short).
            start_method: ``"spawn"`` (default: this process forks and execs it, with
                `subprocess`) or ``"forkserver"`` (the fork server does: this process forks
                nothing, so a fork made meanwhile by another library cannot hold the start
                up; see the module docs).
            timeout: seconds the start may take with ``"forkserver"`` (default 30).
            on_start: called with the port as soon as its process exists, in this thread
                (e.g. to keep a way to kill it while the start goes on).

        Raises:
            InvalidOption: a bad `argv`, `max_frame`, `codec` or `start_method`.
            TypeError: an `env` name or value is not a string, bytes or path.
            ValueError: a NUL byte in `argv` or `env`, or an `env` name with ``=`` (as
                `subprocess.Popen` raises them; nothing is started).
            OSError: the program could not be started (e.g. `FileNotFoundError`), or the fork
                server could not be started, could not fork, or exited; `PermissionError`
                with ``"forkserver"`` after this process changed its user or groups.
            CallTimeout: the fork server did not answer within `timeout`, or the program's
                child neither exec'd nor failed within half of it (it has been killed).
        """
        check_argv(argv)
        check_max_frame(max_frame)
        if isinstance(codec, PickleCodec) or not isinstance(codec, Codec):
            raise InvalidOption(
                "codec", codec, "JSON_CODEC, RAW_CODEC or another non-pickle Codec for Port.open"
            )
        if start_method not in OPEN_METHODS:
            raise InvalidOption("start_method", start_method, f"None or one of {OPEN_METHODS[1:]}")
        owner = _resolve_owner(owner)  # before anything starts
        limit = _start_timeout(timeout)
        if start_method == "forkserver":
            started = start_forkserver_program(list(argv), env, cwd, limit)
        else:
            started = start_program(list(argv), env, cwd)
        port = cls(
            started,
            name=os.path.basename(argv[0]),
            codec=codec,
            max_frame=max_frame,
            owner=owner,
            on_exit=on_exit,
            enveloped=False,
        )
        if on_start is not None:
            _started(port, on_start)
        return port

    @classmethod
    def spawn(
        cls,
        handler: Callable[..., Any],
        *args: Any,
        start_method: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        codec: Codec = JSON_CODEC,
        owner: Owner | None = None,
        on_exit: Callable[[PortExited], None] | None = None,
        timeout: float | None = None,
        on_start: Callable[[Port], None] | None = None,
    ) -> Port:
        """Serve `handler(request, *args) -> response` in a child process started by `multiprocess`.

        The framework runs the frame loop in the child: each `request(obj)` reaches
        `handler(obj, *args)`, and its return value (or the exception it raised, as
        `RemoteError`) comes back. `handler` and `args` cross once, with dill (closures work).
        Whatever the child prints goes to the port's stderr log, never into the frames.

        Args:
            handler: the callable to serve.
            *args: extra arguments passed to every call (e.g. a configuration).
            start_method: ``"spawn"`` (default: safe with threads), ``"fork"`` (fastest;
                see the module docs on fork safety) or ``"forkserver"`` (safe, and nearly as
                fast as fork once its server runs: see the module docs).
            max_frame: the largest payload accepted either way, in bytes.
            codec: `JSON_CODEC` (default) or `PICKLE_CODEC` (any Python value; unpickles).
            owner: the first owner (default: the calling actor, else the calling thread).
            on_exit: called with `PortExited` once the process has exited and been reaped.
            timeout: seconds the start may take (default 30): a ``"spawn"`` child reading its
                handler, the fork server answering.
            on_start: called with the port as soon as its process exists, in this thread,
                before a ``"spawn"`` child has read its handler (e.g. to keep a way to kill
                it while the start goes on).

        Raises:
            InvalidOption: a bad start method, codec, `max_frame` or `timeout`.
            CallTimeout: a ``"spawn"`` child did not read its handler within `timeout` (its
                interpreter start stalled; it has been killed and reaped), or the fork
                server did not fork within `timeout`.
            OSError: the fork server could not be started, could not fork, or exited.
            PortClosed: a ``"spawn"`` child exited before reading its handler (it has been
                reaped; see the port's `stderr_tail` in the logs, event ``port_stderr``).
            ProtocolError: the pickled handler and arguments exceed 4 GiB.
        """
        return cls._spawn(
            handler,
            args,
            None,
            start_method=start_method,
            max_frame=max_frame,
            codec=codec,
            owner=owner,
            on_exit=on_exit,
            timeout=timeout,
            on_start=on_start,
        )

    @classmethod
    def _spawn(
        cls,
        handler: Callable[..., Any],
        args: tuple[Any, ...],
        setup: bytes | None,
        *,
        start_method: str | None,
        max_frame: int,
        codec: Codec,
        owner: Owner | None,
        on_exit: Callable[[PortExited], None] | None,
        timeout: float | None,
        on_start: Callable[[Port], None] | None,
    ) -> Port:
        """`spawn`, with `setup`: `pickle_setup`'s bytes for `handler` and `args` made once
        by the caller (a pool starting many workers of one handler), or None."""
        if not callable(handler):
            raise InvalidOption("handler", handler, "a callable")
        method = start_method or "spawn"
        if method not in START_METHODS:
            raise InvalidOption("start_method", start_method, f"one of {START_METHODS}")
        check_max_frame(max_frame)
        if not isinstance(codec, JsonCodec | PickleCodec):
            raise InvalidOption("codec", codec, "JSON_CODEC or PICKLE_CODEC for Port.spawn")
        owner = _resolve_owner(owner)
        limit = _start_timeout(timeout)
        name = getattr(handler, "__qualname__", repr(handler))
        if method == "fork":
            started = start_forked(handler, args, codec, max_frame, name)
        else:
            # Pickled before anything starts, so an unpicklable handler (or one over 4 GiB
            # pickled: ProtocolError) starts nothing.
            if setup is None:
                setup = pickle_setup(handler, args, codec, max_frame)
            if method == "forkserver":
                started = start_forkserver_worker(setup, limit)
            else:
                started = start_spawned()
        port = cls(
            started,
            name=name,
            codec=codec,
            max_frame=max_frame,
            owner=owner,
            on_exit=on_exit,
            enveloped=True,
        )
        if on_start is not None:
            _started(port, on_start)
        if method != "spawn":
            return port
        # "spawn": the handler arrives as the fresh interpreter's first frame.
        assert setup is not None
        try:
            port._write(encode_frame(setup, max_frame=len(setup)), limit)
        except BaseException as exc:
            # Never leave a child behind: a stalled one (its pipe is full of half a
            # handler) or one that died first. _write has SIGKILLed a stalled one.
            port.kill()
            port.close(timeout=0)
            if isinstance(exc, CallTimeout):
                raise CallTimeout(str(port), "spawn", limit) from None
            raise
        return port

    # -- talking to it (owner only) --

    def send(self, obj: Any, timeout: float | None = 5.0) -> None:
        """Encode `obj` and write it as one frame.

        Raises:
            PortNotOwned: the caller is not the owner.
            PortClosed: the port is closed or its process has exited.
            InvalidOption: `timeout` is not a number of seconds >= 0 or None (nothing sent).
            ProtocolError: `obj` cannot be encoded, or its payload exceeds `max_frame` (nothing
                was written; the port is still usable).
            CallTimeout: the process did not read the frame within `timeout` (it is stalled;
                if part of the frame was written, the stream is out of sync and the port is
                closed; if none was, or another send held the pipe that long, the port is
                still usable).
        """
        check_timeout(timeout)
        self._check_owner()
        data = encode_frame(self._codec.encode(obj), max_frame=self._max_frame)
        self._write(data, timeout)

    def recv(self, timeout: float | None = 5.0) -> Any:
        """Wait for the next frame from the process and return its decoded value.

        Raises:
            PortNotOwned: the caller is not the owner.
            PortClosed: the process has exited (after every frame it sent has been received);
                `exit_status` has its status.
            ProtocolError: the frame is malformed (bad payload for the codec: the port stays
                open), or the stream broke (over-long length prefix, truncated frame: the port
                is closed).
            CallTimeout: no frame within `timeout`.
        """
        check_timeout(timeout)
        self._check_owner()
        return self._recv(deadline_in(timeout), timeout)

    def _recv(self, deadline: float | None, timeout: float | None) -> Any:
        """`recv` without the owner check (the caller has made it)."""
        return self._codec.decode(self._recv_frame(deadline, timeout))

    def _recv_frame(self, deadline: float | None, timeout: float | None) -> bytes:
        """The next frame's payload, not decoded (`_recv`'s half that a backend replaces)."""
        with self._recv_lock:
            return self._next_frame(deadline, timeout)

    async def _areply_of(self, frame: bytes, request_id: Any) -> Any:
        """`_reply_of`, awaited: a large frame (over `_LOOP_DECODE_MAX` bytes) is decoded in a
        thread of its own, so the event loop does not stall on it (an 18 MB JSON reply takes
        about half a second to decode)."""
        if len(frame) > _LOOP_DECODE_MAX:
            return await in_thread(self._reply_of, frame, request_id)
        return self._reply_of(frame, request_id)

    def _reply_of(self, frame: bytes, request_id: Any) -> Any:
        """The reply `frame` carries, checked to answer `request_id` (`_check_reply`).

        A pickled reply that cannot be unpickled here but carries `request_id` (read from its
        opcodes) fails this request alone: `UndecodableReply`, the stream in step. Any
        other frame that cannot be decoded leaves the stream untrusted: `ProtocolError`."""
        try:
            reply = self._codec.decode(frame)
        except ProtocolError as exc:
            pickled = self._enveloped and self._codec.name == "pickle"
            if pickled and pickled_envelope_id(frame) == request_id:
                raise UndecodableReply(str(self), str(exc)) from exc
            raise
        return self._check_reply(reply, request_id)

    def request(self, obj: Any, timeout: float | None = 5.0) -> Any:
        """Send one request and wait for its reply, matched by request id.

        For `Port.spawn` ports, returns what the handler returned (raises `RemoteError` if it
        raised). For `Port.open` ports with the JSON codec, `obj` must be a mapping: it is sent
        with an ``"id"`` (a fresh one unless it has its own), and the reply must be a mapping
        with the same ``"id"``; the whole reply is returned.

        A reply with another id means the stream holds a stale answer: `ProtocolError`. After a
        `CallTimeout` the reply may still come later, so do not reuse the port for requests
        (`ProcessPool` removes such a worker).

        Raises:
            ProtocolError: wrong reply id, malformed reply, or an unencodable request.
            UndecodableReply: (a `ProtocolError`) the reply came under this request's id
                but cannot be unpickled here (the port stays usable).
            RemoteError: the spawned handler raised, or could not unpickle the request
                (kind ``"ProtocolError"``); the port stays usable.
            CallTimeout, PortClosed, PortNotOwned: as for `send` / `recv`.
        """
        check_timeout(timeout)
        request_id, deadline = self._send_request(obj, timeout)
        return self._await_reply(request_id, deadline)

    def ping(self, timeout: float | None = 5.0) -> None:
        """Check that a `Port.spawn` worker answers (its frame loop replies without calling
        the handler).

        Raises:
            InvalidOption: this is a `Port.open` port (the program's protocol is not ours).
            CallTimeout, PortClosed, PortNotOwned, ProtocolError: as for `request`.
        """
        check_timeout(timeout)
        if not self._enveloped:
            raise InvalidOption("port", self, "a Port.spawn port (Port.open has no ping)")
        deadline = deadline_in(timeout)
        request_id = next(self._request_ids)
        self.send([request_id], timeout)
        self._await_reply(request_id, deadline)

    def _send_request(self, obj: Any, timeout: float | None) -> tuple[Any, float | None]:
        """The sending half of `request` (checks the owner for both halves): returns the
        request id and the deadline. `obj` may be a `Prepared` request."""
        request_id, payload, deadline = self._numbered(obj, timeout)
        self._write_request(payload, timeout)
        return request_id, deadline

    async def _asend_request(self, obj: Any, timeout: float | None) -> tuple[Any, float | None]:
        """`_send_request`, awaited: a frame the pipe cannot take at once (a large request, a
        process slow to read) is written by a thread of its own, so the event loop never
        waits on the process. Cancelling the await leaves that thread writing: the caller
        removes a worker whose request it gave up on."""
        request_id, payload, deadline = self._numbered(obj, timeout)
        writes: list[asyncio.Future[None]] = []
        self._write_request(payload, timeout, lambda rest: writes.append(thread_future(rest)))
        if writes:
            await writes[0]
        return request_id, deadline

    def _numbered(self, obj: Any, timeout: float | None) -> tuple[Any, bytes, float | None]:
        """A request's id, its payload carrying that id, and its deadline (owner checked)."""
        self._check_owner()
        deadline = deadline_in(timeout)
        prepared = obj if isinstance(obj, Prepared) else self._prepare(obj)
        if self._enveloped:
            request_id: Any = next(self._request_ids)
        else:
            request_id = prepared.own_id
            if request_id is None:
                request_id = next(self._request_ids)
        return request_id, prepared.payload(request_id), deadline

    def _write_request(
        self,
        payload: bytes,
        timeout: float | None,
        handoff: StartThread | None = None,
    ) -> None:
        """Write a request's frame (`_write`'s `handoff`: see there). `RayPort` sends it to
        its actor with its reply's read, which never waits."""
        self._write(encode_frame(payload, max_frame=self._max_frame), timeout, handoff=handoff)

    def _prepare(self, obj: Any) -> Prepared:
        """Encode a request's body now, without a worker: what cannot be encoded, or is too
        large, is refused here (`ProtocolError`, naming the offending value)."""
        own_id = None
        if not self._enveloped:
            if not isinstance(obj, Mapping):
                raise ProtocolError(
                    f"request() needs a mapping to carry an id, got {short_repr(obj)}"
                )
            own_id = obj.get("id")
        return Prepared.of(obj, self._codec, self._max_frame, self._enveloped, own_id)

    def _has_unread(self, *, pipe: bool) -> bool:
        """Anything from the process that nobody asked for: frames read and not taken, a
        broken stream, or (`pipe`) bytes waiting on stdout. A worker with any is not lent
        again: its next reader would take a reply meant for someone else."""
        if self._frames or self._stream_error is not None:
            return True
        fd = self._stdout_fd
        if not pipe or fd is None or self._stream_done:
            return False
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return any(events & select.POLLIN for _, events in poller.poll(0))

    def _await_reply(self, request_id: Any, deadline: float | None) -> Any:
        """The receiving half of `request`, by the owner that sent it."""
        try:
            if deadline is None:
                frame = self._recv_frame(None, None)
            else:
                frame = self._recv_frame(deadline, max(0.0, deadline - time.monotonic()))
        except CallTimeout:
            self._reply_pending = True
            raise
        return self._reply_of(frame, request_id)

    async def _aawait_reply(self, request_id: Any, deadline: float | None) -> Any:
        """`_await_reply`, awaited: what the process wrote already is read at once, and
        otherwise the event loop watches stdout and the exit pipe (no thread waits)."""
        while True:
            if self._stream_done and not self._exited.is_set():
                # Its stdout ended: its exit (reaped by the port's own thread) follows closely.
                await in_thread(self._exited.wait, 5.0)
            with self._recv_lock:
                try:
                    frame = self._next_frame(time.monotonic(), 0.0)  # never waits
                except CallTimeout:
                    watched = self._aio_watch()
                    frame = None
            if frame is not None:
                return await self._areply_of(frame, request_id)
            try:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self._reply_pending = True
                    raise CallTimeout(str(self), "recv", None)
                await wait_readable(watched, left)
            finally:
                self._aio_unwatch()

    def _aio_watch(self) -> list[int]:
        """What an awaiting caller's event loop watches (called holding `_recv_lock`, the
        port open): copies of stdout and of the exit pipe's read end, made once per port.
        The loop watches its own copies, so the port closing its fds meanwhile (stop, a
        supervisor's restart) neither hides the exit from it nor hands it a number reused
        by another file; EOF on the exit pipe's copy still wakes it. Copies of read ends
        change nothing for anyone else. One awaiting caller at a time: the port's lessee."""
        with self._aio_lock:
            if self._aio_fds is None:
                fds = (self._stdout_fd, self._exit_r) if self._stdout_fd is not None else ()
                self._aio_fds = [os.dup(fd) for fd in fds]
            self._aio_users += 1
            return self._aio_fds

    def _aio_unwatch(self) -> None:
        """An awaiting caller stopped watching: the copies are closed once the port's own fds
        are and nobody watches them any more."""
        with self._aio_lock:
            self._aio_users -= 1
            if self._aio_users or self._stdout_fd is not None:
                return
            fds, self._aio_fds = self._aio_fds, None
        for fd in fds or ():
            close_fd(fd)

    def _check_reply(self, reply: Any, request_id: Any) -> Any:
        """`reply`, checked to answer `request_id`; a handler's error raised as
        `RemoteError`."""
        if self._enveloped:
            if not (isinstance(reply, list) and len(reply) == 3 and isinstance(reply[1], bool)):
                raise ProtocolError(f"malformed reply from {self}: {short_repr(reply)}")
            if reply[0] != request_id:
                raise ResponseMismatch(str(self), request_id, reply[0])
            if reply[1]:
                return reply[2]
            kind, message = error_fields(reply[2])
            raise RemoteError(kind, message, str(self))
        if not isinstance(reply, Mapping) or "id" not in reply:
            raise ProtocolError(f"reply without an id from {self}: {short_repr(reply)}")
        if reply["id"] != request_id:
            raise ResponseMismatch(str(self), request_id, reply["id"])
        return reply

    # -- ownership --

    @property
    def owner(self) -> Owner:
        """The `ActorRef` or thread allowed to talk to this port."""
        return self._owner

    def connect(self, new_owner: Owner) -> None:
        """Hand the port to `new_owner` (Erlang ``Port.connect``). Only the owner may do it.

        Raises:
            PortNotOwned: the caller is not the owner.
            PortClosed: the port is closed or its process has exited.
            ConnectFailed: `new_owner` is not an actor ref or thread (reason: the `TypeError`),
                or is not alive (reason ``"target_dead"``).
        """
        self._check_owner()
        target: Any = new_owner  # checked at run time: callers may pass anything
        if not isinstance(target, pykka.ActorRef | threading.Thread):
            error = TypeError(f"a port's owner is an ActorRef or a Thread, got: {target!r}")
            raise ConnectFailed(error) from error
        if not owner_alive(new_owner):
            raise ConnectFailed("target_dead")
        with self._lock:
            if self._closing or self._exit is not None:
                raise PortClosed(self, "closed during connect")
            self._owner = new_owner

    def _reclaim(self, new_owner: Owner) -> None:
        """Take the port back for `new_owner` whoever owns it (a pool's checkin does this)."""
        with self._lock:
            self._owner = new_owner

    # -- state --

    def info(self) -> PortInfo | None:
        """A `PortInfo`, or None once the port is closed or its process has exited."""
        with self._lock:
            if self._closing or self._exit is not None:
                return None
            return PortInfo(
                id=self.id,
                name=self._name,
                os_pid=self._child.pid,
                owner=self._owner,
                codec=self._codec.name,
                max_frame=self._max_frame,
            )

    @property
    def os_pid(self) -> int:
        """The OS process id (also after exit)."""
        return self._child.pid

    @property
    def exit_status(self) -> int | None:
        """The exit status once the process has exited and been reaped, else None."""
        with self._lock:
            return self._exit.status if self._exit is not None else None

    def wait_exit(self, timeout: float | None = 5.0) -> int | None:
        """Wait until the process has exited and been reaped; return its status.

        Raises:
            CallTimeout: still running after `timeout` seconds.
        """
        if not self._exited.wait(timeout):
            raise CallTimeout(str(self), "wait_exit", timeout)
        return self.exit_status

    def stderr_tail(self) -> list[str]:
        """The last lines the process wrote on stderr (at most 50)."""
        with self._lock:
            return list(self._stderr_tail)

    # -- closing --

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the process and reap it; idempotent. Any thread may close a port.

        Closes stdin first (a worker that reads frames exits on EOF) and waits up to `timeout`
        seconds; then SIGTERM to the process group, up to one more second; then SIGKILL. The
        reader thread reaps the process and ends before `close` returns (unless `close` is
        called from that thread, e.g. from `on_exit`). To close many ports, `close_ports`
        does each step for all of them at once.
        """
        close_ports([self], timeout)

    def _close_begin(self, timeout: float | None) -> None:
        with self._lock:
            self._closing = True
        self._close_stdin(timeout)

    def _close_end(self) -> None:
        """Once the process is gone: wait for the reader, then close stdout."""
        if threading.current_thread() is not self._reader:
            self._reader.join(_REAP_LIMIT)
        # The process is gone, so a recv in progress sees EOF at once and lets go of the lock.
        if self._recv_lock.acquire(timeout=5.0):
            try:
                fd, self._stdout_fd = self._stdout_fd, None
                if fd is not None:
                    self._poller.unregister(fd)
                    close_fd(fd)
                    self._poller.unregister(self._exit_r)
                    close_fd(self._exit_r)
            finally:
                self._recv_lock.release()
        with self._aio_lock:  # the loop's copies: now, or by the last caller watching them
            fds = None
            if not self._aio_users:
                fds, self._aio_fds = self._aio_fds, None
        for fd in fds or ():
            close_fd(fd)

    def kill(self) -> None:
        """SIGKILL the process group now (no graceful step). The exit arrives as an event."""
        self._signal_group(signal.SIGKILL)

    def __repr__(self) -> str:
        return f"#Port<{self.id}:{self._name}:{self._child.pid}>"

    def __enter__(self) -> Port:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals --

    def _check_owner(self) -> None:
        # Two plain reads (each atomic): a concurrent connect or close is seen by the next call.
        owner = self._owner
        proc = getattr(_current_actor, "proc", None)  # calling_owner(), without the call
        caller = proc.ref if proc is not None else threading.current_thread()
        if owner is not caller and not same_owner(owner, caller):
            raise PortNotOwned(self, owner, caller)
        if self._closing:
            raise PortClosed(self, "closed")

    def _is_open(self) -> bool:
        """`info() is not None`, without building the `PortInfo`."""
        return not (self._closing or self._exit is not None)

    def _write(
        self,
        data: bytes,
        timeout: float | None,
        late: StartThread | None = None,
        handoff: StartThread | None = None,
    ) -> None:
        """Write one whole frame within `timeout` (after waiting, within it too, for another
        send to finish: that costs nothing but a `CallTimeout`, nothing written).

        A frame not written at all by then costs nothing but the `CallTimeout`. One written
        only in part puts the stream out of sync: the process is killed and `CallTimeout`
        raised. Unless `late` is given (a port whose replies are
        matched by id can take a late request): then `late(finish)` must run `finish` in a
        thread of its own, which writes the rest whenever the process reads it (or gives up
        once it is gone) and holds the send lock until then; `CallTimeout` is raised at once
        all the same, and the process lives on. `late` raises only if it started no thread
        (the send lock is then released here, and the process killed).

        `handoff` is for a caller that must never wait (an event loop's thread): a frame that
        cannot be written at once (another send holds the pipe, or the pipe takes only part
        of it) is not waited for here. `handoff(finish)` must start a thread running `finish`,
        the rest of this write as it would run here (raising as it would), and return; or
        raise `RuntimeError`, having started none: the rest is then written here. (Like
        `late`, it must not be interrupted between starting its thread and returning.)

        Raises:
            PortClosed: the port is closed or its process gone.
            CallTimeout: as above.
        """
        lock = self._send_lock
        deadline = None
        if not lock.acquire(blocking=False):
            if handoff is not None:
                with contextlib.suppress(RuntimeError):  # no thread: wait here after all
                    handoff(functools.partial(self._write, data, timeout, late))
                    return
            deadline = deadline_in(timeout)
            if not lock.acquire(timeout=lock_timeout(remaining(deadline))):
                raise CallTimeout(str(self), "send", timeout)  # nothing written
        held = True  # until `_write_rest` (here or in `handoff`'s thread) has the lock
        try:
            fd = self._stdin_fd
            if fd is None or self._exit is not None:
                raise PortClosed(self, "process exited" if self._exit else "closed")
            try:  # the whole frame at once, the common case: no deadline to compute
                written = os.write(fd, data)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                raise PortClosed(self, f"process gone while sending: {exc}") from exc
            if written == len(data):
                return
            if deadline is None:
                deadline = deadline_in(timeout)
            view = memoryview(data)[written:]
            rest = functools.partial(self._write_rest, fd, view, len(data), deadline, timeout, late)
            if handoff is not None:
                held = False
                try:
                    handoff(rest)
                    return
                except RuntimeError:  # no thread: write the rest here
                    held = True
            held = False
            rest()
        finally:
            if held:
                lock.release()

    def _write_rest(
        self,
        fd: int,
        rest: memoryview,
        size: int,
        deadline: float | None,
        timeout: float | None,
        late: StartThread | None,
    ) -> None:
        """The rest of a frame of `size` bytes that `_write` began (and its outcome, as
        `_write` describes it), by `deadline`. Releases the send lock `_write` took, or hands
        it to `late`'s thread."""
        lock = self._send_lock
        held = True
        try:
            rest = _write_until(fd, rest, deadline, self)
            if not rest:
                return
            if len(rest) == size:
                raise CallTimeout(str(self), "send", timeout)  # nothing written: in sync
            if late is not None:
                held = False  # from here on, `finish` lets go of it
                try:
                    late(functools.partial(self._finish_write, fd, rest))
                except Exception:
                    held = True  # no thread: it is still ours
                    log_event(
                        _log,
                        "WARNING",
                        "port_late_write_failed",
                        "{port}: no thread to finish a late frame: killed",
                        port=str(self),
                    )
                else:
                    raise CallTimeout(str(self), "send", timeout)
        finally:
            if held:
                lock.release()
        # Half a frame is in the pipe: the stream is out of sync and cannot be reused.
        self.kill()
        raise CallTimeout(str(self), "send", timeout)

    def _finish_write(self, fd: int, rest: memoryview) -> None:
        """The rest of a late frame (`_write`'s `late`), written whenever the process reads
        it; given up once the process is gone or the port closes. Releases the send lock
        `_write` held."""
        try:
            _write_until(fd, rest, None, self)
        except PortClosed:
            pass
        finally:
            self._send_lock.release()

    def _close_stdin(self, timeout: float | None = None) -> None:
        # A send stuck on a process that does not read holds the lock: close() gives up on
        # the graceful step after `timeout` and signals; the send then fails and lets go.
        if not self._send_lock.acquire(timeout=lock_timeout(timeout)):
            return
        try:
            fd, self._stdin_fd = self._stdin_fd, None
        finally:
            self._send_lock.release()
        if fd is not None:
            close_fd(fd)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._exited.is_set() or self._child.reaped():
            return
        pid = self._child.pid
        # The child leads its own session, so its pgid is its pid; a spawned child may not
        # have called setsid() yet, in which case only the pid itself is signalled.
        for send in (os.killpg, os.kill):
            try:
                send(pid, sig)
            except (ProcessLookupError, PermissionError):
                continue

    def _next_frame(self, deadline: float | None, timeout: float | None) -> bytes:
        """The next raw frame from stdout, read in the caller's thread (holds `_recv_lock`).

        Ends with `PortClosed` after EOF, or once the process has been reaped and stdout has
        been drained (a detached grandchild may keep stdout open: the exit still ends it).
        """
        while True:
            if self._frames:
                return self._frames.popleft()
            if self._stream_error is not None:
                error, self._stream_error = self._stream_error, None
                raise error
            fd = self._stdout_fd
            if self._stream_done or fd is None:
                # The exit event follows EOF closely (the process was killed if it lingered).
                grace = 5.0 if deadline is None else max(1.0, deadline - time.monotonic())
                if not self._exited.wait(grace):
                    raise CallTimeout(str(self), "recv", timeout)
                raise PortClosed(self, f"process exited with status {self.exit_status}")
            try:  # what the process wrote already (often all of the reply): no poll needed
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                self._wait_readable(fd, deadline, timeout)
                continue
            if not chunk:
                self._stream_done = True
                try:
                    self._decoder.eof()
                except ProtocolError as exc:
                    self._stream_error = exc
                # stdout is gone: the process is exiting, or closed it and cannot answer any
                # more (then it is killed).
                if not self._exited.wait(0.5):
                    self.kill()
                continue
            try:
                self._frames.extend(self._decoder.feed(chunk))
            except ProtocolError as exc:
                # A bad length prefix desynchronises the stream for good.
                self._stream_error = exc
                self._stream_done = True
                self.kill()

    def _wait_readable(self, fd: int, deadline: float | None, timeout: float | None) -> None:
        """Wait until stdout is readable, or the process has exited (`_next_frame` then
        reads again).

        Waits on stdout and the exit pipe (written once the process is reaped). Once the exit
        is known, the pipe holds all the process wrote: it is drained without waiting, then the
        stream ends as on EOF (a grandchild may hold stdout open forever).

        Raises:
            CallTimeout: neither before `deadline`.
        """
        exited = self._exited.is_set()
        longest = int(LONGEST_POLL * 1000)
        if exited:
            ms = 0
        elif deadline is None:
            ms = -1
        else:
            ms = max(0, int((deadline - time.monotonic()) * 1000))
            if ms > longest:
                ms = longest  # then `_next_frame` polls again
        events = self._poller.poll(ms)
        for ready, _ in events:
            if ready == fd:
                return
        # stdout has nothing to read
        if exited:
            self._stream_done = True
            try:
                self._decoder.eof()
            except ProtocolError as exc:
                self._stream_error = exc
        elif not events and ms != longest:
            raise CallTimeout(str(self), "recv", timeout)
        # else woken by the exit (drain what the process wrote before it), or a long wait

    def _watch(self, stderr_fd: int, exit_fd: int | None) -> None:
        """The reader thread: log stderr; on the exit event, reap and tell the owner at once,
        then drain what is left of stderr (a grandchild may hold it: at most one more second).
        """
        sel = selectors.DefaultSelector()
        sel.register(stderr_fd, selectors.EVENT_READ, "err")
        if exit_fd is not None:
            sel.register(exit_fd, selectors.EVENT_READ, "exit")
        err_buffer = bytearray()
        err_open = True
        finished = False
        drain_deadline: float | None = None  # set once the process has exited
        try:
            while err_open:
                timeout: float | None = None
                if drain_deadline is not None:
                    timeout = max(0.0, drain_deadline - time.monotonic())
                events = sel.select(timeout)
                if not events and drain_deadline is not None:
                    break  # a grandchild outside the group holds stderr: stop waiting for it
                for key, _ in events:
                    if key.data == "exit":
                        sel.unregister(key.fd)
                        # What the process wrote before it exited is in the pipe already.
                        err_buffer, err_open = self._drain_stderr(stderr_fd, err_buffer)
                        if not err_open:  # at EOF: the last, unfinished line is complete
                            err_buffer = self._log_stderr(err_buffer, final=True)
                        finished = True
                        self._reap(exit_fd)
                        drain_deadline = time.monotonic() + 1.0
                        continue
                    chunk = os.read(key.fd, _STDERR_READ)
                    if chunk:
                        err_buffer += chunk
                        err_buffer = self._log_stderr(err_buffer, final=False)
                    else:
                        sel.unregister(key.fd)
                        err_open = False
            self._log_stderr(err_buffer, final=True)
        finally:
            sel.close()
            close_fd(stderr_fd)
            if not finished:
                self._reap(exit_fd)

    def _reap(self, exit_fd: int | None) -> None:
        """The process has exited (or its stderr closed, where there is no exit event): take
        its status and tell everyone."""
        status = self._child.wait_status(None)
        if exit_fd is not None:
            os.close(exit_fd)
        self._finish(status)

    def _drain_stderr(self, fd: int, buffer: bytearray) -> tuple[bytearray, bool]:
        """Read what is in the stderr pipe now, without waiting; False once it is at EOF."""
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, _STDERR_READ):
                buffer += chunk
                buffer = self._log_stderr(buffer, final=False)
        except BlockingIOError:
            return buffer, True
        finally:
            os.set_blocking(fd, True)
        return buffer, False

    def _log_stderr(self, buffer: bytearray, *, final: bool) -> bytearray:
        """Log the complete lines in `buffer` and keep them in the tail; return the rest.

        When nobody logs stderr (INFO is off for this logger, the default), only the last
        lines are decoded and kept: a process that floods stderr costs a few large reads.
        """
        data = bytes(buffer)
        end = data.rfind(b"\n")
        if final and end != len(data) - 1:  # at the end, an unfinished line counts too
            end = len(data)
        if end < 0:
            if len(data) > 65536:  # one endless line: keep it in pieces rather than grow
                return self._log_stderr(bytearray(data + b"\n"), final=False)
            return buffer
        complete, rest = data[:end], data[end + 1 :]
        if _log.isEnabledFor(logging.INFO):
            lines = complete.split(b"\n")
        else:
            lines = complete.rsplit(b"\n", _STDERR_TAIL)[-_STDERR_TAIL:]
        decoded = [raw.decode("utf-8", "replace").rstrip("\r") for raw in lines]
        with self._lock:
            self._stderr_tail.extend(decoded)
        for line in decoded:
            log_event(
                _log, "INFO", "port_stderr", "{port} stderr: {line}", port=str(self), line=line
            )
        return bytearray(rest)

    def _finish(self, status: int | None) -> None:
        # Before the exit is visible (exit_status, info, send, wait_exit, recv): who sees it
        # can count on its event.
        self._emit_exited(status)
        event = PortExited(self, status)
        with self._lock:
            self._exit = event
            owner = self._owner
        self._close_stdin()
        if self._on_reaped is not None:
            self._on_reaped()
        self._exited.set()
        # After the event is set, so a recv woken by this byte finds the exit known; before
        # on_exit, so close() (which waits for this thread) never closes the read end first.
        self._wake_readers()
        # Asked to exit (closed, killed) or exiting cleanly is chatter; a process that exited
        # on its own with a failure status is news.
        expected = status == 0 or self._closing
        log_event(
            _log,
            "DEBUG" if expected else "INFO",
            "port_exited",
            "{port} exited with status {status}",
            port=str(self),
            status=status,
        )
        if isinstance(owner, pykka.ActorRef):
            with contextlib.suppress(pykka.ActorDeadError):
                owner.tell(event)
        if self._on_exit is not None:
            try:
                self._on_exit(event)
            except Exception as exc:
                log_event(
                    _log,
                    "ERROR",
                    "port_on_exit_failed",
                    "on_exit of {port} raised",
                    port=str(self),
                    exc=exc,
                )

    def _wake_readers(self) -> None:
        """Wake a recv waiting on stdout: the exit is known (a byte on the exit pipe)."""
        with contextlib.suppress(OSError):
            os.write(self._exit_w, b"x")
        close_fd(self._exit_w)

    def _telemetry_metadata(self) -> dict[str, Any]:
        return {"port": self, "port_id": self.id, "os_pid": self._child.pid, "program": self._name}

    def _emit_exited(self, status: int | None) -> None:
        if not _telemetry.active:
            return
        metadata = self._telemetry_metadata()
        metadata["status"] = status
        metadata["signal"] = _signal_name(status)
        metadata["closing"] = self._closing
        lifetime = time.monotonic() - self._opened_at
        _telemetry.emit(_telemetry.PORT_EXITED, {"count": 1, "lifetime": lifetime}, metadata)


def close_ports(ports: Sequence[Port], timeout: float | None = 5.0) -> None:
    """Close every port in `ports`, each step for all of them at once: what `Port.close` does
    for one, in about the time it takes for one, however many there are.

    Closes every stdin, waits up to `timeout` seconds for them all to exit; SIGTERMs those
    left, waits up to one more second; SIGKILLs those left and waits (bounded) for them to be
    reaped. Idempotent.
    """
    deadline = deadline_in(timeout)
    for port in ports:
        port._close_begin(timeout)

    def left(grace_deadline: float | None) -> list[Port]:
        return [p for p in ports if not p._exited.wait(remaining(grace_deadline))]

    alive = left(deadline)
    if alive:
        for port in alive:
            port._signal_group(signal.SIGTERM)
        alive = left(time.monotonic() + _KILL_GRACE)
    if alive:
        for port in alive:
            port.kill()
        # Bounded even here: a process stuck in uninterruptible sleep (D state) ignores
        # SIGKILL until its I/O ends. It is reaped by the reader thread whenever it dies.
        for port in left(time.monotonic() + _REAP_LIMIT):
            log_event(
                _log,
                "ERROR",
                "port_unkillable",
                "port {port}: process still alive {limit}s after SIGKILL; left to reap",
                port=repr(port),
                limit=_REAP_LIMIT,
            )
    for port in ports:
        if port._exited.is_set():
            port._close_end()


# --- private helpers ---------------------------------------------------------------------------


def _signal_name(status: int | None) -> str | None:
    """``"SIGKILL"`` for status -9: the signal a negative exit status names, else None."""
    if status is None or status >= 0:
        return None
    try:
        return signal.Signals(-status).name
    except ValueError:
        return f"signal {-status}"


def calling_owner() -> Owner:
    """The calling actor's ref, else the calling thread: who a port would see as its caller."""
    proc = getattr(_current_actor, "proc", None)  # current_actor(), without the call
    return proc.ref if proc is not None else threading.current_thread()


def _resolve_owner(owner: Owner | None) -> Owner:
    if owner is None:
        return calling_owner()
    if not isinstance(owner, pykka.ActorRef | threading.Thread):
        raise InvalidOption("owner", owner, "an ActorRef or a Thread")
    return owner


def owner_alive(owner: Owner) -> bool:
    """A thread that runs, or an actor that has not exited (one running its cleanup hook may
    still use a port)."""
    if isinstance(owner, threading.Thread):
        return owner.is_alive()
    return not_exited(owner)


def same_owner(a: Owner, b: Owner) -> bool:
    if isinstance(a, pykka.ActorRef) and isinstance(b, pykka.ActorRef):
        return a.actor_urn == b.actor_urn
    return a is b


def _started(port: Port, on_start: Callable[[Port], None]) -> None:
    """Call a start's `on_start` hook; if it raises, the port is killed and reaped first."""
    try:
        on_start(port)
    except BaseException:
        port.kill()
        port.close(timeout=0)
        raise


def check_argv(argv: Any) -> None:
    """A program's command line: a non-empty sequence of strings (not one string).

    Raises:
        InvalidOption: anything else.
    """
    if callable(argv):
        expected = "a program's command line (a function is passed as target=...)"
        raise InvalidOption("argv", argv, expected)
    if isinstance(argv, str | bytes) or not isinstance(argv, Sequence) or not argv:
        raise InvalidOption("argv", argv, "a non-empty sequence of strings (not one string)")
    if not all(isinstance(arg, str) for arg in argv):
        raise InvalidOption("argv", argv, "a non-empty sequence of strings")
    if any("\0" in arg for arg in argv):
        raise InvalidOption("argv", argv, "strings without a NUL byte")


def check_env(env: Any) -> None:
    """A program's environment: None (inherit ours) or a mapping of names to values, all
    strings, as `os.execve` takes them (no NUL byte, no name empty or holding ``=``).

    Raises:
        InvalidOption: anything else.
    """
    if env is None:
        return
    if not isinstance(env, Mapping):
        raise InvalidOption("env", env, "None or a mapping of names to values")
    for name, value in env.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidOption("env", env, f"strings only (not {name!r}: {value!r})")
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise InvalidOption("env", env, f"no name empty or with '=', no NUL ({name!r})")


_WRITE_CHECK = 0.05
"""Seconds between a blocked send's checks of its port: once the process has exited or the port
closes, the send gives up (a process that another one shares stdin with may never fail it)."""


def _write_until(fd: int, view: memoryview, deadline: float | None, port: Port) -> memoryview:
    """Write `view` to the non-blocking `fd` until all is written or `deadline` passes;
    return what is left (empty: all of it).

    Raises:
        PortClosed: the process is gone (its end of the pipe closed, or its exit known), or
            the port is closing.
    """
    try:
        while view:
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                written = 0
            view = view[written:]
            if not view:
                break
            left = remaining(deadline)
            ready = wait_writable(fd, _WRITE_CHECK if left is None else min(left, _WRITE_CHECK))
            if port._exit is not None or port._closing:
                raise PortClosed(port, "process exited" if port._exit else "closed")
            if not ready and deadline is not None and time.monotonic() >= deadline:
                break
    except OSError as exc:
        raise PortClosed(port, f"process gone while sending: {exc}") from exc
    return view


def _start_timeout(timeout: Any) -> float:
    """A start's time limit: `SETUP_TIMEOUT` for None, else a positive number of seconds."""
    if timeout is None:
        return _launch.SETUP_TIMEOUT
    if not is_number(timeout) or not 0 < timeout < float("inf"):
        raise InvalidOption("timeout", timeout, "a positive number of seconds or None")
    return float(timeout)


def check_max_frame(max_frame: Any) -> None:
    # Above MAX_PAYLOAD a frame's length no longer fits its 4-byte prefix.
    if (
        not isinstance(max_frame, int)
        or isinstance(max_frame, bool)
        or not 1 <= max_frame <= MAX_PAYLOAD
    ):
        raise InvalidOption(
            "max_frame", max_frame, f"a positive integer of bytes, at most {MAX_PAYLOAD}"
        )


def error_fields(error: Any) -> tuple[str, str]:
    if isinstance(error, list) and len(error) == 2:
        return str(error[0]), str(error[1])
    return "Exception", str(error)
