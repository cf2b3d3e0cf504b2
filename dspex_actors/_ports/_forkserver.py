"""The fork server behind ``start_method="forkserver"`` ports and pools (private).

A ``"fork"`` worker starts fast but is forked from the parent, which always has threads (actors
are threads): a lock another thread held at fork time stays held forever in the child. A
``"spawn"`` worker is safe but starts a fresh interpreter each time (~30x slower). The fork
server gives both: one small single-threaded process, started once like a ``"spawn"`` child (a
fresh interpreter that imports `dspex_actors`, `dill` and nothing of the parent's
``__main__``), forks every worker on request. Forking a single-threaded process is safe, and
forking a small one is fast.

- **Owned by its users.** One `ForkServer` per parent process (`FORK_SERVER`), reference
  counted: every ``forkserver`` port holds a reference until it is reaped, a `ProcessPool`
  with ``start_method="forkserver"`` holds one for its whole life (so a replacement worker
  never waits for a new server). The server starts on the first `acquire` and is stopped and
  reaped on the last `release`: it does not outlive its users (unlike `multiprocessing`'s).
  A killed pool (no `terminate_pool`) drops its reference when its state is collected, or at
  interpreter exit; its workers' ports, left running by the kill, keep theirs until they die.
- **Start a worker.** The parent makes the worker's pipes (stdin, stdout, stderr, lifeline) as a
  ``"fork"`` port does, sends the child ends over a Unix socket (``SCM_RIGHTS``) with an fd of its
  working directory and the handler and its arguments, dill-pickled by value (closures work), and
  closes its copies. The server forks; the worker closes every other fd, takes the parent's
  current environment variables, working directory (through the fd: even a deleted one),
  `sys.path`, umask, resource limits and ignored signals (sent with each request, not those of
  when the server started), leads its own session, asks for ``PR_SET_PDEATHSIG`` (towards the
  server) and serves as a ``"fork"`` worker does, watching its lifeline from its first request on
  (before the first handler call, or once the first pings are answered). The handler is unpickled
  in the worker, never in the server, so user code (imports that start threads, say) cannot make
  the server unsafe to fork; a handler defined in an importable module is imported by each worker.
  A start after the parent changed its user or groups is refused (`PermissionError`): the server
  has the old ones.
- **Programs.** `Port.open(argv, start_method="forkserver")` sends the program's argv and
  environment (checked in the parent, as `subprocess.Popen` checks them) and `cwd` instead of a
  handler: the server forks a child that leads its own session, asks for ``PR_SET_PDEATHSIG``
  (towards the server), enters the parent's directory and then `cwd`, takes the umask, limits and
  ignored signals (not SIGPIPE and SIGXFSZ, which Python ignores: Popen's restore_signals), and
  execs the program. An exec (or ``chdir``) failure comes back on a close-on-exec pipe, as
  `subprocess.Popen` does in the parent; here no other thread can fork meanwhile and keep that
  pipe open, which can stall a `Popen` in a threaded parent (CPython issue 103911). The server
  does not wait on that pipe: it watches it with its other fds, answers when it closes, and kills
  a child that has neither exec'd nor failed within half the start timeout (`CallTimeout`), so one
  stuck start stalls no other.
- **Exits.** The worker is the server's child: the server reaps it (SIGCHLD wakes its single
  thread through `signal.set_wakeup_fd`) and reports ``exited <pid> <status>`` (negative: killed
  by that signal, as `Port.exit_status`). A reader thread in the parent (``dspex-forkserver``)
  hands the status to the worker's record, which is the port's `_Child`.
- **Shared.** Every forkserver pool and port of the process shares the server: if it is
  killed, all their workers die with it (below). ``"spawn"`` workers share nothing.
- **Deaths.** The parent dies: the server sees EOF on its socket, or its pidfd of the parent
  becomes readable (a process the parent forked may hold the socket), SIGKILLs the process group
  of every worker it started, reaps them and exits (each worker that has served also watches
  its own lifeline to the parent). The server dies: its workers get ``PR_SET_PDEATHSIG``, and
  the parent's reader sees EOF, SIGKILLs every worker it started (their process groups) and
  reports each exited with status ``-9`` (the real status is lost: init reaps them now); the
  next `acquire` or worker start runs a new server.

When not to use it: a handler that must see state the parent built after the server started
(module globals changed at run time) gets only what crosses by value; use ``"fork"`` (if no
other thread can hold a lock it needs) or ``"spawn"``.

Example:
    >>> from dspex_actors import Port
    >>> port = Port.spawn(lambda request: request + 1, start_method="forkserver")
    >>> port.request(41, timeout=30)
    42
    >>> port.close()
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import itertools
import os
import pickle
import resource
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from .._errors import CallTimeout
from . import _port
from ._framing import FrameDecoder

__all__ = ["FORK_SERVER", "ForkServer", "abandon_worker", "release_from"]

# parent -> server: a request id and the setup's length, then the setup; the worker's four
# child-side fds (stdin, stdout, stderr, lifeline) ride with the header (SCM_RIGHTS).
_REQUEST = struct.Struct(">QQ")
# server -> parent: what happened, to which request or pid, and a value.
_REPLY = struct.Struct(">BQq")
_STARTED = 1  # (request id, pid)
_FAILED = 2  # (request id, errno): fork failed
_EXITED = 3  # (pid, status)
_NO_EXEC = 4  # (request id, errno): a program's exec failed
_NO_CWD = 5  # (request id, errno): a program's working directory could not be entered
_NO_SETUP = 6  # (request id, errno): a program's umask or resource limits could not be set
_STALLED = 7  # (request id, 0): a program neither exec'd nor failed in time (it is killed)
# The first byte of a request's setup: serve a Python handler, or exec a program.
_SERVE = b"S"
_EXEC = b"X"
_PIPES = 5  # a worker's stdin, stdout, stderr and lifeline, and its exit pipe (parent only)
_WORKER_FDS = 5  # the child ends of the first four pipes, and the working directory's fd
_CWD_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_Send = Callable[[int, int, int], None]
_STOP_LIMIT = 10.0
"""Seconds `ForkServer.release` waits for the server to exit before it SIGKILLs it."""
_REAP_LIMIT = 5.0
"""Seconds the server waits, once its parent is gone, for its SIGKILLed workers to be reaped."""


# --- public types ------------------------------------------------------------------------------


class ForkServer:
    """The fork server of this process: started by the first `acquire`, stopped by the last
    `release`. Use the shared `FORK_SERVER`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._server: _Server | None = None

    @property
    def pid(self) -> int | None:
        """The running server's pid, or None (no users, or it died and none has started yet)."""
        with self._lock:
            server = self._server
        return None if server is None or server.dead else server.pid

    @property
    def users(self) -> int:
        """How many references are held."""
        with self._lock:
            return self._users

    def acquire(self) -> None:
        """Take a reference; start the server if none runs.

        Raises:
            OSError: the server could not be started.
        """
        with self._lock:
            self._running()
            self._users += 1

    def release(self) -> None:
        """Drop a reference; the last one stops the server and reaps it before returning."""
        with self._lock:
            if self._users <= 0:
                raise RuntimeError("ForkServer.release() without a matching acquire()")
            self._users -= 1
            if self._users:
                return
            server, self._server = self._server, None
        if server is not None:
            server.stop()

    def start_worker(
        self, setup: bytes, timeout: float
    ) -> tuple[_ServedChild, tuple[int, int, int, int]]:
        """Have the server fork a worker serving `setup` (`_port._pickle_setup`'s bytes), with
        this process's current environment variables, working directory and `sys.path`.

        The caller must hold a reference. Returns the worker (a `_port._Child`) and the
        parent's ends of its stdin, stdout, stderr and lifeline pipes (in `_PARENT_FDS`).

        Raises:
            OSError: the server could not fork, or exited before it did.
            PermissionError: this process's user or groups changed since the server started.
            CallTimeout: no answer within `timeout` seconds (the server is stalled).
        """
        server = self._checked("start_worker")
        # The server's own environment, sys.path, umask, limits and ignored signals are those
        # of when it started: the worker takes this process's current ones, as a "spawn"
        # child would (its working directory crosses as an open fd: see start_worker).
        state = (dict(os.environ), list(sys.path), _process_state())
        payload = _SERVE + pickle.dumps((state, setup))
        return server.start_worker(payload, timeout)

    def start_program(
        self,
        argv: list[str],
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike[str] | None,
        timeout: float,
    ) -> tuple[_ServedChild, tuple[int, int, int, int]]:
        """Have the server start the program `argv`: it forks, the child leads its own
        session, gets ``PR_SET_PDEATHSIG`` (SIGKILL once the server is gone) on Linux, enters
        `cwd` and execs `argv` with `env` (default: this process's current environment and
        working directory). Nothing is forked or exec'd in this process.

        The caller must hold a reference. Returns what `start_worker` returns (the lifeline's
        child end is closed in the program, which never reads it).

        Raises:
            OSError: the program or `cwd` cannot be used (e.g. `FileNotFoundError`, naming
                it, as `subprocess.Popen` would), or the server could not fork, or exited.
            PermissionError: this process's user or groups changed since the server started.
            TypeError: an argument or environment entry is not a string, bytes or path.
            ValueError: one holds a NUL byte, or a variable's name is empty or holds "="
                (what `subprocess.Popen` raises; nothing is started).
            CallTimeout: no answer within `timeout` seconds (the server is stalled), or the
                child neither exec'd nor failed within `timeout / 2` (it has been killed).
        """
        server = self._checked("start_program")
        # Checked here, as Popen checks them: nothing the child could trip on crosses.
        args, environ = _exec_arguments(argv, env)
        # A relative `cwd` is entered from this process's working directory (the child
        # enters that first, from an fd), as Popen's child does.
        where = None if cwd is None else os.fsencode(cwd)
        limit = timeout / 2  # the server gives up on the exec first: it answers in time
        payload = _EXEC + pickle.dumps((args, environ, where, _process_state(), limit))
        try:
            return server.start_worker(payload, timeout)
        except _StartFailed as exc:
            if exc.kind == _STALLED:
                raise CallTimeout(f"program {argv[0]!r}", "exec", limit) from None
            if exc.kind == _NO_SETUP:
                raise OSError(
                    exc.errno,
                    f"could not give the program this process's umask, limits or signals: "
                    f"{os.strerror(exc.errno or 0)}",
                ) from None
            # As Popen says it: the errno's own OSError subclass, naming what was missing.
            name = (None if cwd is None else os.fspath(cwd)) if exc.kind == _NO_CWD else argv[0]
            raise OSError(exc.errno, os.strerror(exc.errno or 0), name) from None

    def _checked(self, what: str) -> _Server:
        """The running server, for a start by a reference holder with the server's user."""
        with self._lock:
            if self._users <= 0:
                raise RuntimeError(f"ForkServer.{what}() without a reference")
            server = self._running()
        if server.credentials != _credentials():
            # Its children would run as the user and groups of when it started.
            raise PermissionError(
                errno.EPERM,
                f"this process's user or groups changed since the fork server (pid "
                f"{server.pid}) started; it would start the child with the old ones "
                f"(use start_method='spawn', or make the change before the first forkserver "
                f"port or pool starts)",
            )
        return server

    def _running(self) -> _Server:
        """The running server, started (again) if needed. Holds `_lock`."""
        server = self._server
        if server is None or server.dead:
            server = _Server.start()
            self._server = server
        return server


FORK_SERVER = ForkServer()
"""The fork server every ``forkserver`` port and pool of this process shares."""


# --- private helpers: the parent's side --------------------------------------------------------


class _ServedChild:
    """A worker forked by the server, as `Port` sees it (the `_port._Child` protocol).

    Its exit status comes from the server (the parent cannot wait for a grandchild); the
    reader thread writes a byte to the exit pipe when it does, so the port's own reader wakes.
    """

    def __init__(self, exit_r: int, exit_w: int) -> None:
        self.pid = 0  # set from the server's answer, before anyone else sees this object
        self._exit_r = exit_r
        self._exit_w: int | None = exit_w
        self._status: int | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()

    def wait_status(self, timeout: float | None) -> int | None:
        if not self._done.wait(timeout):
            return None
        return self._status

    def exit_fd(self) -> int | None:
        return self._exit_r

    def reaped(self) -> bool:
        # The server reaps at once: from then on the pid may be another process's.
        return self._done.is_set()

    def _exited(self, status: int) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self._status = status
            self._done.set()
            fd, self._exit_w = self._exit_w, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, b"x")
            _port._close_fd(fd)

    def _discard(self) -> None:
        """Never handed to a port: close both ends of the exit pipe."""
        with self._lock:
            fd, self._exit_w = self._exit_w, None
        if fd is not None:
            _port._close_fd(fd)
        os.close(self._exit_r)


class _StartFailed(OSError):
    """The server forked, but the program's exec (or its `chdir`) failed: `kind` says which."""

    def __init__(self, kind: int, errno: int) -> None:
        super().__init__(errno, os.strerror(errno))
        self.kind = kind


class _Request:
    def __init__(self, child: _ServedChild) -> None:
        self.child = child
        self.done = threading.Event()
        self.error: OSError | None = None


class _Server:
    """One server process, its socket and its reader thread (``dspex-forkserver``)."""

    BOOT = "from dspex_actors._ports._forkserver import _server_main; _server_main({fd}, {parent})"
    """What the server's interpreter runs (tests patch it to observe the server)."""

    def __init__(self, popen: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.credentials = _credentials()  # the server's: those of when it was started
        self.dead = False
        self._sock = sock
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Request] = {}
        self._workers: dict[int, _ServedChild] = {}
        self._reader = threading.Thread(target=self._read, name="dspex-forkserver", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls) -> _Server:
        # Every fd made here exists (or is in _PARENT_FDS) only under the fork guard, so a
        # "fork" port's child forked meanwhile never holds the parent's end of the socket:
        # the server would never see EOF when the parent dies.
        with _port._FORK_GUARD.creating():
            parent_sock, child_sock = map(
                _above_stdio, socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            )
            _port._PARENT_FDS.add(parent_sock.fileno())
            fd = child_sock.fileno()
            boot = f"import sys; sys.path[:0] = {sys.path!r}; " + cls.BOOT.format(
                fd=fd, parent=os.getpid()
            )
            try:
                popen = subprocess.Popen(
                    [sys.executable, "-c", boot],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    pass_fds=[fd],
                    start_new_session=True,
                )
                # Made before the lock is released, like every parent-side fd.
                server = cls(popen, parent_sock)
            except BaseException:
                _port._PARENT_FDS.discard(parent_sock.fileno())
                parent_sock.close()
                raise
            finally:
                child_sock.close()
        return server

    def start_worker(
        self, setup: bytes, timeout: float
    ) -> tuple[_ServedChild, tuple[int, int, int, int]]:
        request_id = next(self._ids)
        message = memoryview(_REQUEST.pack(request_id, len(setup)) + setup)
        request: _Request | None = None
        parent_ends: tuple[int, int, int, int] | None = None
        registered = sending = False
        try:
            # The whole request goes out under the send lock (requests never interleave); the
            # fork guard is held only while the worker's child ends exist here, i.e. until they
            # have left with the request's first bytes (as in Port._fork: no "fork" port's
            # child started meanwhile may keep one open). Lock order: send lock, fork guard.
            with self._send_lock:
                with _port._FORK_GUARD.creating():
                    fds: list[int] = []
                    try:
                        for _ in range(_PIPES):
                            fds.extend(os.pipe())
                        # This process's working directory, as an fd: the child enters it
                        # even if it has been deleted or renamed since, as a "spawn" child
                        # (which inherits it) would.
                        fds.append(_open_cwd())
                    except BaseException:
                        for fd in fds:
                            os.close(fd)
                        raise
                    *pipes, cwd_fd = fds
                    in_r, in_w, out_r, out_w, err_r, err_w, life_r, life_w, exit_r, exit_w = pipes
                    parent_ends = (in_w, out_r, err_r, life_w)
                    _port._PARENT_FDS.update((*parent_ends, exit_w))
                    request = _Request(_ServedChild(exit_r, exit_w))
                    try:
                        with self._lock:
                            if self.dead:
                                raise OSError("the fork server exited")
                            self._pending[request_id] = request
                        registered = sending = True
                        child_ends = [in_r, out_w, err_w, life_r, cwd_fd]
                        message = _send_bounded(self._sock, message, child_ends, first=True)
                    finally:
                        for fd in (in_r, out_w, err_w, life_r, cwd_fd):
                            os.close(fd)
                message = _send_bounded(self._sock, message, [])
                sending = False
            if not request.done.wait(timeout):
                # A stalled server cannot start anyone's workers: replace it.
                self._kill()
                raise CallTimeout(f"fork server {self.pid}", "start_worker", timeout)
        except BaseException as exc:
            # Failed to send (the server is gone or stalled), or stopped half way: the stream
            # may hold part of a request, which would swallow the next (even an interrupt
            # raised as a send returns loses how much it sent). This server is unusable.
            broken = sending
            if broken:
                self._kill()
            if request is not None:
                self._give_up(request_id, request, parent_ends or (), registered)
            if broken and isinstance(exc, OSError):
                raise OSError(f"could not reach the fork server: {exc}") from exc
            raise
        if request.error is not None:
            abandon_worker(request.child, parent_ends)
            raise request.error
        return request.child, parent_ends

    def _give_up(
        self, request_id: int, request: _Request, parent_ends: tuple[int, ...], registered: bool
    ) -> None:
        """The requester stops waiting (timeout, error, interrupt): nothing it made survives."""
        if registered:
            with self._lock:
                given_up = self._pending.pop(request_id, None) is not None
            if not given_up:
                # The reader took the answer from the table and is about to set it: wait
                # for it, so that a worker it forked is killed below.
                request.done.wait(_STOP_LIMIT)
        # A worker forked later is killed by the reader (and sees EOF on its lifeline, whose
        # parent end is closed here).
        abandon_worker(request.child, parent_ends)

    def stop(self) -> None:
        """Ask the server to exit (EOF on its socket), wait until the reader has reaped it."""
        with self._send_lock, contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        if threading.current_thread() is self._reader:
            return
        self._reader.join(_STOP_LIMIT)
        if self._reader.is_alive():
            self._kill()
            self._reader.join(_STOP_LIMIT)

    def _kill(self) -> None:
        with self._lock:
            self.dead = True  # the next start runs a new server without waiting for our reader
        with contextlib.suppress(OSError):
            self.popen.kill()

    def _read(self) -> None:
        buffer = bytearray()
        try:
            while True:
                chunk = self._sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= _REPLY.size:
                    kind, key, value = _REPLY.unpack_from(buffer)
                    del buffer[: _REPLY.size]
                    self._dispatch(kind, key, value)
        except OSError:
            pass
        finally:
            self._gone()

    def _dispatch(self, kind: int, key: int, value: int) -> None:
        if kind == _EXITED:
            with self._lock:
                child = self._workers.pop(key, None)
            if child is not None:
                child._exited(value)
            return
        with self._lock:
            request = self._pending.pop(key, None)
            if request is not None and kind == _STARTED:
                # Registered before the requester learns the pid: the exit, which the server
                # always reports after the start, finds its record.
                request.child.pid = value
                self._workers[value] = request.child
        if request is None:
            if kind == _STARTED:  # its requester gave up waiting
                _kill_group(value)
            return
        if kind in (_NO_EXEC, _NO_CWD, _NO_SETUP, _STALLED):
            request.error = _StartFailed(kind, value)
        elif kind != _STARTED:
            request.error = OSError(value, f"the fork server could not fork: {os.strerror(value)}")
        request.done.set()

    def _gone(self) -> None:
        """The server's socket reached EOF: it exited (asked to, or killed)."""
        with self._lock:
            self.dead = True
            pending = list(self._pending.values())
            self._pending.clear()
            workers = list(self._workers.values())
            self._workers.clear()
        for request in pending:
            request.error = OSError("the fork server exited before starting the worker")
            request.done.set()
        # The server died with these still running: init reaps them now and their status is
        # lost. Kill them (their ports must not outlive the server that reports their exits).
        for child in workers:
            _kill_group(child.pid)
            child._exited(-signal.SIGKILL)
        with self._send_lock:
            _port._PARENT_FDS.discard(self._sock.fileno())
            self._sock.close()
        try:
            self.popen.wait(_STOP_LIMIT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _open_cwd() -> int:
    try:
        return os.open(".", _CWD_FLAGS)
    except OSError as exc:
        # E.g. no search permission on it (a "spawn" child, which inherits it, would run).
        raise OSError(
            exc.errno,
            f"cannot hand this process's working directory to the fork server's child "
            f"({exc.strerror}); use start_method='spawn' or change directory",
            ".",
        ) from exc


def _above_stdio(sock: socket.socket) -> socket.socket:
    """`sock`, moved above fd 2 if it got a free stdio number (a parent that closed them):
    the server's stdin and stdout are replaced at its start, and what this process writes
    to fds 0-2 must never reach the server's stream."""
    if sock.fileno() > 2:
        return sock
    return socket.socket(fileno=_raised(sock.detach()))


def _send_bounded(
    sock: socket.socket, view: memoryview, fds: list[int], *, first: bool = False
) -> memoryview:
    """Send `view`, `fds` riding with its first byte; return what is left (nothing, unless
    `first`: then return once some of it has gone).

    Gives up (`TimeoutError`) after `_port._SETUP_TIMEOUT` seconds without progress: a stalled
    server must not block its callers forever. The socket stays blocking (its reader's recv
    waits as long as it must): each send here is non-blocking instead.
    """
    deadline = time.monotonic() + _port._SETUP_TIMEOUT
    while view:
        try:
            if fds:
                sent = socket.send_fds(sock, [view], fds, socket.MSG_DONTWAIT)
                fds = []
            else:
                sent = sock.send(view, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        if sent:
            view = view[sent:]
            if first:
                return view
            deadline = time.monotonic() + _port._SETUP_TIMEOUT
            continue
        if not _port._wait_writable(sock.fileno(), _port._remaining(deadline)):
            raise TimeoutError(f"the fork server read nothing for {_port._SETUP_TIMEOUT}s")
    return view


def release_from(pid: int) -> None:
    """`FORK_SERVER.release()`, unless this is a forked copy of process `pid` (a finalizer
    copied into a child must not stop the parent's server, whose socket the child shares)."""
    if os.getpid() == pid:
        FORK_SERVER.release()


def abandon_worker(child: _ServedChild, parent_ends: tuple[int, ...]) -> None:
    """Undo `ForkServer.start_worker` for a worker no port will own: kill it (if it was
    forked), close the parent's ends of its pipes and its exit pipe."""
    for fd in parent_ends:
        with contextlib.suppress(OSError):
            _port._close_fd(fd)
    child._discard()
    if child.pid:
        _kill_group(child.pid)


def _kill_group(pid: int) -> None:
    # The worker leads its own session (pgid = pid) once it has called setsid(); before
    # that only the pid itself exists to be signalled.
    for send in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGKILL)


_LIMITS = sorted({getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")})
_SIGNALS = sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
_ProcessState = tuple[int | None, int, list[tuple[int, int, int]]]


def _process_state() -> _ProcessState:
    """This process's umask (None where unreadable), ignored signals (a mask: bit n-1 for
    signal n) and resource limits, which a child of the server takes (the server's are those
    of when it started)."""
    umask = ignored = None
    # Read, not set and restored: os.umask() would change it for every thread meanwhile.
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", "rb") as status:
        for line in status:
            if line.startswith(b"Umask:"):
                umask = int(line.split()[1], 8)
            elif line.startswith(b"SigIgn:"):
                ignored = int(line.split()[1], 16)
    if ignored is None:  # no /proc: what Python knows (misses what C code ignored)
        ignored = sum(1 << (sig - 1) for sig in _SIGNALS if signal.getsignal(sig) == signal.SIG_IGN)
    return umask, ignored, [(which, *resource.getrlimit(which)) for which in _LIMITS]


def _take_process_state(state: _ProcessState, *, python: bool) -> None:
    """In a child of the server: take the umask, limits and ignored signals `_process_state`
    read. Only whether a signal is ignored changes (handlers installed here, as
    faulthandler's, stay): a signal the caller ignores is ignored, one ignored here but not
    by the caller gets its default action. A program gets SIGPIPE and SIGXFSZ back (Popen's
    restore_signals); a `python` worker keeps them ignored and SIGINT raising
    KeyboardInterrupt, as a fresh interpreter has them."""
    umask, ignored, limits = state
    if umask is not None:
        os.umask(umask)
    for which, soft, hard in limits:
        if resource.getrlimit(which) != (soft, hard):
            resource.setrlimit(which, (soft, hard))
    for sig in _SIGNALS:
        by_python = sig in (signal.SIGPIPE, signal.SIGXFSZ)
        ignore = python if by_python else bool(ignored >> (sig - 1) & 1)
        ignored_here = signal.getsignal(sig) == signal.SIG_IGN
        if ignore == ignored_here:
            continue  # the usual case: nothing to do (a start costs no syscall per signal)
        action: Any = signal.SIG_IGN
        if not ignore:
            default = python and sig == signal.SIGINT
            action = signal.default_int_handler if default else signal.SIG_DFL
        with contextlib.suppress(OSError, ValueError):  # a signal the C library reserves
            signal.signal(sig, action)


def _credentials() -> tuple[int, int, int, int, list[int]]:
    return os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())


def _exec_arguments(
    argv: list[str], env: Mapping[str, str] | None
) -> tuple[list[bytes], dict[bytes, bytes]]:
    """`argv` and `env` (default: ours) as bytes, refused as `subprocess.Popen` refuses
    them: `TypeError` for what is not a string, bytes or path, `ValueError` for a NUL byte or
    a variable named "" or with "=" (which `os.execve` would refuse in the child)."""
    args = [os.fsencode(arg) for arg in argv]
    if any(b"\0" in arg for arg in args):
        raise ValueError("embedded null byte")
    environ: dict[bytes, bytes] = {}
    for name, value in (os.environb if env is None else env).items():
        key, data = os.fsencode(name), os.fsencode(value)
        if not key or b"=" in key:
            raise ValueError(f"illegal environment variable name: {name!r}")
        if b"\0" in key or b"\0" in data:
            raise ValueError("embedded null byte")
        environ[key] = data
    return args, environ


def _reset_after_fork_in_child() -> None:
    # A forked child shares none of the parent's users: it starts its own server if it needs one.
    global FORK_SERVER
    FORK_SERVER = ForkServer()


os.register_at_fork(after_in_child=_reset_after_fork_in_child)


# --- private helpers: the server's side --------------------------------------------------------


def _server_main(fd: int, parent: int) -> None:
    """The fork server (runs in its own process, single-threaded): fork workers on request,
    report their exits, and kill them all once the parent is gone."""
    import dill

    # Loaded and used once here, so every worker has it ready (its lazy set-up done).
    with contextlib.suppress(Exception):  # only an optimisation
        dill.loads(dill.dumps((_on_sigchld, (), "json", 1), recurse=True))

    if sys.platform.startswith("linux"):
        _port._libc()  # loaded once here too: every started program calls prctl

    sock = socket.socket(fileno=fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    # A Python-level handler so the C handler writes to the wakeup fd; the select loop reaps.
    signal.signal(signal.SIGCHLD, _on_sigchld)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "parent")
    sel.register(wake_r, selectors.EVENT_READ, "child")
    state = _State(sock, sel)
    buffer = bytearray()
    fds: collections.deque[int] = collections.deque()
    try:
        # EOF on the socket says the parent is gone, unless a process it forked (another
        # library's fork) still holds the parent's end: so the server watches the parent too.
        with contextlib.suppress(AttributeError, OSError):  # no pidfd (before Linux 5.3)
            sel.register(os.pidfd_open(parent), selectors.EVENT_READ, "parent-exit")
        if os.getppid() != parent:
            return  # gone already: the pidfd (if any) may name a new process with its pid
        while True:
            for key, _ in sel.select(state.next_deadline()):
                if key.data == "child":
                    _drain(wake_r)
                    state.reap()
                    continue
                if key.data == "parent-exit":
                    return
                if isinstance(key.data, _Starting):
                    state.read_report(key.data)
                    continue
                data, new_fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 64)
                fds.extend(new_fds)
                if not data:
                    return  # the parent is gone (or stopped us)
                buffer += data
                while len(buffer) >= _REQUEST.size:
                    request_id, size = _REQUEST.unpack_from(buffer)
                    end = _REQUEST.size + size
                    if len(buffer) < end:
                        break
                    if len(fds) < _WORKER_FDS:
                        return  # cannot happen: the fds arrive with the header's first byte
                    setup = bytes(buffer[_REQUEST.size : end])
                    del buffer[:end]
                    # Above fd 2 (ours is closed if the parent's was): a child moves its
                    # stdio onto 0-2 and must not overwrite one of these doing so.
                    mine = [_raised(fds.popleft()) for _ in range(_WORKER_FDS)]
                    state.fork(request_id, mine, setup)
            state.expire()
    except OSError:
        pass  # the parent is gone mid-send
    finally:
        state.stop(wake_r)


class _Starting:
    """A program's child between its fork and its exec, as the server tracks it."""

    def __init__(self, request_id: int, pid: int, report_fd: int, limit: float) -> None:
        self.request_id = request_id
        self.pid = pid
        self.report_fd = report_fd
        self.report = b""
        self.deadline = time.monotonic() + limit
        self.status: int | None = None  # reaped before its report pipe's EOF was read


class _State:
    """The server's children: the workers it reports on, and programs not yet exec'd."""

    def __init__(self, sock: socket.socket, sel: selectors.BaseSelector) -> None:
        self.sock = sock
        self.sel = sel
        self.workers: set[int] = set()
        self.starting: dict[int, _Starting] = {}

    def send(self, kind: int, key: int, value: int) -> None:
        self.sock.sendall(_REPLY.pack(kind, key, value))

    def next_deadline(self) -> float | None:
        if not self.starting:
            return None
        first = min(start.deadline for start in self.starting.values())
        return max(0.0, first - time.monotonic())

    def reap(self) -> None:
        _reap(self.workers, self.send, self.starting)

    def fork(self, request_id: int, fds: list[int], setup: bytes) -> None:
        """Fork a worker (or a program's child) for the request; answer once it runs."""
        program = setup[:1] == _EXEC
        made: list[int] = []
        server = os.getpid()
        try:
            if program:
                made.extend(os.pipe())  # O_CLOEXEC: a successful exec closes it
            pid = os.fork()
        except OSError as exc:
            for fd in fds + made:
                os.close(fd)
            self.send(_FAILED, request_id, exc.errno or 0)
            return
        if pid == 0:
            if program:
                _program_main(fds, setup[1:], self.sock, self.sel, made[1], server)
            _worker_main(fds, setup[1:], self.sock, self.sel, server)
        for fd in fds + made[1:]:
            os.close(fd)
        if not program:
            self.workers.add(pid)
            self.send(_STARTED, request_id, pid)
            return
        # Answered once the exec has succeeded or failed (the child reports a failure on
        # the pipe, which the exec closes), as `subprocess.Popen` does, without blocking:
        # meanwhile the server serves other requests, and a child stuck before its exec is
        # killed at its deadline.
        limit = pickle.loads(setup[1:])[-1]
        start = _Starting(request_id, pid, made[0], limit)
        self.starting[pid] = start
        self.sel.register(made[0], selectors.EVENT_READ, start)

    def read_report(self, start: _Starting) -> None:
        chunk = os.read(start.report_fd, 256)
        if chunk:
            start.report += chunk
            return
        self._forget(start)
        if start.report:
            # Its child exits (127) and is reaped with the others, unreported (not a worker).
            stage, _, number = start.report.partition(b":")
            kind = {b"cwd": _NO_CWD, b"setup": _NO_SETUP}.get(stage, _NO_EXEC)
            self.send(kind, start.request_id, int(number or b"0"))
            return
        if start.status is None:
            self.workers.add(start.pid)  # before any send: killed at our exit if that fails
            self.send(_STARTED, start.request_id, start.pid)
        else:  # it has exited already: reported after its start, as any exit is
            self.send(_STARTED, start.request_id, start.pid)
            self.send(_EXITED, start.pid, start.status)

    def expire(self) -> None:
        now = time.monotonic()
        # A reaped child's report pipe has reached EOF: its answer is known, not stalled.
        late = [s for s in self.starting.values() if s.deadline <= now and s.status is None]
        for start in late:
            self._forget(start)
            _kill_group(start.pid)  # reaped with the others, unreported
            self.send(_STALLED, start.request_id, 0)

    def stop(self, wake_r: int) -> None:
        """The parent is gone: kill and reap every child, those not exec'd yet too (not
        those reaped already: their pid may be someone else's by now)."""
        self.workers.update(p for p, s in self.starting.items() if s.status is None)
        _stop_workers(self.workers, wake_r, self.send)

    def _forget(self, start: _Starting) -> None:
        del self.starting[start.pid]
        self.sel.unregister(start.report_fd)
        os.close(start.report_fd)


def _raised(fd: int) -> int:
    """`fd`, or (if it is 0-2) a close-on-exec copy above 2, the original closed."""
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def _on_sigchld(signum: int, frame: Any) -> None:
    pass


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def _reap(workers: set[int], send: _Send, starting: Mapping[int, _Starting] | None = None) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in workers:
            workers.discard(pid)
            send(_EXITED, pid, os.waitstatus_to_exitcode(status))
        elif starting and pid in starting:
            starting[pid].status = os.waitstatus_to_exitcode(status)


def _program_main(
    fds: list[int],
    setup: bytes,
    sock: socket.socket,
    sel: selectors.BaseSelector,
    report_w: int,
    server: int,
) -> NoReturn:
    """A program's child, just forked from the server: set up as `Port.open` does, exec."""
    in_fd, out_fd, err_fd, _lifeline, cwd_fd = fds
    stage = b"exec"
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the rest: _take_process_state
        sel.close()
        sock.close()
        os.setsid()
        if sys.platform.startswith("linux"):
            _port._die_with(server)
        args, env, cwd, state, _limit = pickle.loads(setup)
        # The requester's working directory first (a relative `cwd` starts from there),
        # before any fd is moved: its fd may have any number.
        stage = b"cwd"
        os.fchdir(cwd_fd)
        if cwd is not None:
            os.chdir(cwd)
        stage = b"setup"
        # Our signal handlers are reset by the exec; an ignored signal stays ignored across
        # it: the caller's, not the server's.
        _take_process_state(state, python=False)
        stage = b"exec"
        # The received fds are above 2 (see _raised); the copies are inheritable: they
        # survive exec.
        for fd, std in ((in_fd, 0), (out_fd, 1), (err_fd, 2)):
            os.dup2(fd, std)
        # The lifeline too: the program cannot watch it (the server's death kills it).
        _close_fds_except({0, 1, 2, report_w})
        os.execvpe(args[0], args, env)
    except OSError as exc:
        report = b"%s:%d" % (stage, exc.errno or 0)
    except BaseException:
        report = b"%s:%d" % (stage, errno.EINVAL)
    with contextlib.suppress(OSError):
        os.write(report_w, report)
    os._exit(127)


def _worker_main(
    fds: list[int], setup: bytes, sock: socket.socket, sel: selectors.BaseSelector, server: int
) -> NoReturn:
    """A worker, just forked from the server: become a ``"fork"`` port's child and serve."""
    in_fd, out_fd, err_fd, life_fd, cwd_fd = fds
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sel.close()
        sock.close()
        # Nothing of the server's (nor the fds of requests queued behind this one) stays open.
        _close_fds_except({0, 1, 2, in_fd, out_fd, err_fd, life_fd, cwd_fd})
        with contextlib.suppress(OSError):
            os.fchdir(cwd_fd)  # the requester's working directory, even if deleted since
        os.close(cwd_fd)  # before any fd is moved below: it may have any number
        if sys.platform.startswith("linux"):
            # Killed with the server (which kills us if the parent dies): what covers the
            # boot, before the lifeline is watched, if both die at once.
            _port._die_with(server)
        # The lifeline is watched from the first request on (see _serve): until then the
        # server and PR_SET_PDEATHSIG do, and the pool's first ping is answered sooner.
        watch_lifeline = _port._forked_child_setup(err_fd, life_fd)
        (environ, path, state), setup = pickle.loads(setup)
        # Only what differs (a fork has the server's): setting each variable costs a
        # start about half a millisecond.
        for name in [name for name in os.environ if name not in environ]:
            del os.environ[name]
        for name, value in environ.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        sys.path[:] = path
        _take_process_state(state, python=True)
        import dill

        handler, args, codec_name, max_frame = dill.loads(setup)
        decoder = FrameDecoder(max_frame)
        _port._serve(
            in_fd, out_fd, handler, args, codec_name, max_frame, [], decoder, watch_lifeline
        )
        code = 0
    except SystemExit as exc:
        # As the interpreter does: None is 0, an int is the status, anything else is printed
        # (to the port's stderr) and is 1.
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            with contextlib.suppress(BaseException):
                print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _close_fds_except(keep: set[int]) -> None:
    try:
        # Only the fds that are open: closing every number up to the limit (1M in some
        # containers) costs seconds where the close_range syscall is missing.
        open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        low = 0
        for fd in sorted(keep):
            if fd > low:
                os.closerange(low, fd)
            low = max(low, fd + 1)
        os.closerange(low, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in open_fds:
        if fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own fd, closed already
                os.close(fd)


def _stop_workers(workers: set[int], wake_r: int, send: _Send) -> None:
    """The parent is gone: SIGKILL every worker's process group, reap them (bounded)."""

    def report(kind: int, key: int, value: int) -> None:
        # Still worth trying: a parent that stopped us (rather than died) reads the exits.
        with contextlib.suppress(OSError):
            send(kind, key, value)

    for pid in workers:
        _kill_group(pid)
    deadline = time.monotonic() + _REAP_LIMIT
    with selectors.DefaultSelector() as sel:
        sel.register(wake_r, selectors.EVENT_READ)
        while True:
            _reap(workers, report)
            if not workers or time.monotonic() >= deadline:
                return
            sel.select(max(0.0, deadline - time.monotonic()))
            _drain(wake_r)
