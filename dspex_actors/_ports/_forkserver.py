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
  closes its copies. The server forks (or hands the start to its zygote, below); the worker
  closes every other fd, takes the parent's current environment variables, working directory
  (through the fd: even a deleted one), `sys.path`, umask, resource limits and ignored signals
  (sent with each request, not those of when the server started), leads its own session, arms
  its lifeline (the kernel kills it when its owner dies, whoever forked it) and serves as a
  ``"fork"`` worker does, also watching the owner from its first request on (before the first
  handler call, or once the first pings are answered). The handler is unpickled
  in the worker, never in the server, so user code (imports that start threads, say) cannot make
  the server unsafe to fork; a handler defined in an importable module is imported by each worker.
  A start after the parent changed its user or groups is refused (`PermissionError`): the server
  has the old ones.
- **The zygote.** Once a worker has been asked for, the server keeps the next one forked
  ahead: a child that has left the server's state (signal handling, selector, socket, every
  other fd), leads its own session and has warmed up, waiting on a socket of its own. A worker
  start hands it the request's fds and setup and it becomes that worker: no fork sits on the
  start's path (with DSPy imported, that fork alone takes milliseconds). The server serves on
  while the zygote takes the start (the start goes into its socket whole: one whose handler
  and arguments pickle to more than 64 KiB is forked instead), and forks the next zygote a
  few milliseconds later (`ZYGOTE_REFILL`); a start before that one is ready is forked
  directly. A zygote that dies unused is replaced (later and later if young ones keep dying
  or stalling); a start whose zygote dies before taking it, or has not answered within a
  second (it is killed), is forked directly then; a preload discards the zygote (it lacks the
  new modules). `ForkServer.zygote_pid` names it once it is ready; it dies with the server.
- **Programs.** `Port.open(argv, start_method="forkserver")` sends the program's argv and
  environment (checked in the parent, as `subprocess.Popen` checks them) and `cwd` instead of a
  handler: the server forks a child that leads its own session, arms its lifeline (kept open
  across the exec), enters the parent's directory and then `cwd`, takes the umask, limits and
  ignored signals (not SIGPIPE and SIGXFSZ, which Python ignores: Popen's restore_signals), and
  execs the program. An exec (or ``chdir``) failure comes back on a close-on-exec pipe, as
  `subprocess.Popen` does in the parent; here no other thread can fork meanwhile and keep that
  pipe open, which can stall a `Popen` in a threaded parent (its exec report never ends). The
  server does not wait on that pipe: it watches it with its other fds, answers when it closes,
  and kills a child that has neither exec'd nor failed within half the start timeout
  (`CallTimeout`), so one stuck start stalls no other.
- **Exits.** The worker is the server's child: the server reaps it (SIGCHLD wakes its single
  thread through `signal.set_wakeup_fd`) and reports ``exited <pid> <status>`` (negative: killed
  by that signal, as `Port.exit_status`). A reader thread in the parent (``dspex-forkserver``)
  hands the status to the worker's record, which is the port's `_Child`.
- **Shared.** Every forkserver pool and port of the process shares the server; its workers
  do not depend on it once started (below). ``"spawn"`` workers share nothing.
- **Deaths.** The parent dies: the server sees EOF on its socket, or its pidfd of the parent
  becomes readable (a process the parent forked may hold the socket), SIGKILLs the process group
  of every worker it started, reaps them and exits (each worker that has served also watches
  its own lifeline to the parent). The server dies: its workers live on (init reaps them
  now), and the parent's reader sees EOF. A worker whose exit the kernel reports to the parent
  (a pidfd, Linux 5.3 and later) keeps serving, its status unknown once it exits; one without
  is SIGKILLed and reported exited with status ``-9``, since nothing could tell of its exit.
  Its zygote exits. The next `acquire` or worker start runs a new server.

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
import importlib.util
import itertools
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from .._checks import remaining
from .._errors import CallTimeout
from . import _fds
from ._fds import PARENT_FDS, close_fd, on_fork_in_child, wait_writable
from ._forkserver_server import (
    EXEC,
    EXITED,
    NO_CWD,
    NO_EXEC,
    NO_PRELOAD,
    NO_SETUP,
    PIPES,
    PRELOAD,
    PRELOADED,
    REPLY,
    REQUEST,
    SERVE,
    STALLED,
    STARTED,
    WATCHED,
    ZYGOTE,
    kill_group,
    process_state,
    raised,
)

__all__ = [
    "FORK_SERVER",
    "ForkServer",
    "ForkServerUnavailable",
    "ServedChild",
    "abandon_worker",
    "release_from",
]

_REPORT_GRACE = 1.0
"""Seconds a port waits, after the kernel reported a served child's exit, for the server's
report of its status (it comes at once, unless the server is gone or stalled)."""
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
"""A server that dies before it answered anything is started again after 0.1 s, then 0.2 s,
and so on, at most 5 s apart, while starts keep failing."""
SEND_STALL_LIMIT = 30.0
"""Seconds a request may go without any progress in being sent before the server counts as
stalled (and is replaced)."""
_CWD_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_STOP_LIMIT = 10.0
"""Seconds `ForkServer.release` waits for the server to exit before it SIGKILLs it."""


# --- public types ------------------------------------------------------------------------------


class ForkServerUnavailable(OSError):
    """The fork server could not start a child: it could not be started, died before it
    answered, or is being restarted after dying at boot. Nothing was started; the caller may
    start the child another way (a `ProcessPool` falls back to ``"spawn"``)."""


class ForkServer:
    """The fork server of this process: started by the first `acquire`, stopped by the last
    `release`. Use the shared `FORK_SERVER`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        # Modules preloaded for the users that asked (each counted once per acquire): every
        # new server imports them first.
        self._preload: collections.Counter[str] = collections.Counter()
        self._server: _Server | None = None
        self._failures = 0  # servers in a row that died before answering anything
        self._retry_at = 0.0  # no server start before this (time.monotonic)
        # Sets of modules that killed two fresh servers importing them: refused at once from
        # then on (one of each set is the culprit).
        self._poisoned: list[frozenset[str]] = []

    @property
    def pid(self) -> int | None:
        """The running server's pid, or None (no users, or it died and none has started yet)."""
        with self._lock:
            server = self._server
        return None if server is None or server.dead else server.pid

    @property
    def zygote_pid(self) -> int | None:
        """The pid of the worker the running server has forked ahead, once it is ready
        (warmed up: the next worker start whose handler and arguments pickle to at most
        64 KiB takes it), or None. It may still name the zygote for a moment after a start
        took it, until the start's answer arrives."""
        with self._lock:
            server = self._server
        return None if server is None or server.dead else server.zygote

    @property
    def users(self) -> int:
        """How many references are held."""
        with self._lock:
            return self._users

    def acquire(self, preload: Sequence[str] = (), timeout: float = 30.0) -> None:
        """Take a reference; start the server if none runs (a start that fails now is tried
        again by the next child's start).

        `preload`: modules the server imports now, so that every child forked from now on
        starts with them loaded; they stay loaded (and every replacement server imports them
        first) until the matching `release(preload)`. Importing them holds up the server's
        other starts; `timeout` bounds it.

        Raises:
            ImportError: a `preload` module cannot be imported (its traceback is on stderr);
                no reference was taken.
            RuntimeError: importing one started a thread (the server is replaced: forking a
                threaded process is unsafe), or killed the server twice running (it crashes
                or exits whatever imports it: refused at once from then on); no reference
                was taken.
            CallTimeout: the imports took longer than `timeout` (the server is replaced).
        """
        modules = list(dict.fromkeys(preload))
        for module in modules:
            # Only the top-level package is looked up here: finding a submodule would import
            # its package into this process.
            top = module.partition(".")[0]
            try:
                found = importlib.util.find_spec(top) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise ModuleNotFoundError(f"No module named {top!r} (preload)", name=top)
        with self._lock:
            new = frozenset(modules) - self._preload.keys()
            if any(poisoned <= new for poisoned in self._poisoned):
                raise _killed_by(modules)
            self._users += 1
            try:
                server: _Server | None = self._running()
            except ForkServerUnavailable:
                # Starts back off (a server died at its start): modules new to the server
                # must be tried all the same, by a server started now for them. Without one
                # (none can start at all) they wait for the next, as the others do.
                server = None
                if new:
                    with contextlib.suppress(ForkServerUnavailable):
                        server = self._running(retry_now=True)
        for attempt in (1, 2):
            if server is None or server.preloaded.issuperset(modules):
                break  # (no server now: the next one imports them at its start)
            try:
                server.preload([m for m in modules if m not in server.preloaded], timeout)
                break
            except ForkServerUnavailable:
                # The server died while importing them: killed meanwhile, or by one of them
                # (a crash, an exit). A fresh server tries once more; modules that kill it
                # again are refused, so that no server after it dies at its start.
                if attempt == 2:
                    with self._lock:
                        self._poisoned.append(frozenset(modules) - self._preload.keys())
                        with contextlib.suppress(ForkServerUnavailable):
                            self._running()  # its death counts now: the next start backs off
                    self.release()
                    raise _killed_by(modules) from None
                with self._lock:
                    try:
                        # At once, even if that death made starts back off: whether the
                        # modules kill a fresh server is what this try finds out (the first
                        # pool of the process started that server just now).
                        server = self._running(retry_now=True)
                    except ForkServerUnavailable:
                        server = None
            except BaseException:
                self.release()
                raise
        with self._lock:
            self._preload.update(modules)

    def release(self, preload: Sequence[str] = ()) -> None:
        """Drop a reference (and `preload`, what it was acquired with); the last one stops
        the server and reaps it before returning."""
        with self._lock:
            if self._users <= 0:
                raise RuntimeError("ForkServer.release() without a matching acquire()")
            self._users -= 1
            self._preload.subtract(dict.fromkeys(preload, 1))
            self._preload = +self._preload  # drops what nobody preloads any more
            if self._users:
                return
            server, self._server = self._server, None
        if server is not None:
            server.stop()

    def start_worker(
        self, setup: bytes, timeout: float
    ) -> tuple[ServedChild, tuple[int, int, int, int]]:
        """Have the server fork a worker serving `setup` (`_launch.pickle_setup`'s bytes), with
        this process's current environment variables, working directory and `sys.path`.

        The caller must hold a reference. Returns the worker (a `_launch.Child`) and the
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
        state = (dict(os.environ), list(sys.path), process_state())
        payload = SERVE + pickle.dumps((state, setup))
        return server.start_worker(payload, timeout)

    def start_program(
        self,
        argv: list[str],
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike[str] | None,
        timeout: float,
    ) -> tuple[ServedChild, tuple[int, int, int, int]]:
        """Have the server start the program `argv`: it forks, the child leads its own
        session, arms its lifeline (the kernel kills it once this process is gone), enters
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
        payload = EXEC + pickle.dumps((args, environ, where, process_state(), limit))
        try:
            return server.start_worker(payload, timeout)
        except _StartFailed as exc:
            if exc.kind == STALLED:
                raise CallTimeout(f"program {argv[0]!r}", "exec", limit) from None
            if exc.kind == NO_SETUP:
                raise OSError(
                    exc.errno,
                    f"could not give the program this process's umask, limits or signals: "
                    f"{os.strerror(exc.errno or 0)}",
                ) from None
            # As Popen says it: the errno's own OSError subclass, naming what was missing.
            name = (None if cwd is None else os.fspath(cwd)) if exc.kind == NO_CWD else argv[0]
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

    def _running(self, *, retry_now: bool = False) -> _Server:
        """The running server, started (again) if needed. Holds `_lock`.

        A server may die at any time (killed, out of memory): the next start runs a new one.
        One that dies before answering anything is not started again at once: starts back
        off (0.1 s, doubling, at most 5 s apart) until a server answers again, and meanwhile
        this raises at once; unless `retry_now` (the death is counted all the same).

        Raises:
            ForkServerUnavailable: no server could be started, or it is backing off.
        """
        server = self._server
        if server is not None and not server.dead:
            return server
        now = time.monotonic()
        if server is not None:
            self._server = None
            if server.answered:
                self._failures = 0  # it worked for a while: no backoff for its successor
            else:
                self._failures += 1
                delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures - 1))
                self._retry_at = now + delay
        if now < self._retry_at and not retry_now:
            raise ForkServerUnavailable(
                f"the fork server died at its start {self._failures} time(s) in a row; "
                f"the next one starts in {self._retry_at - now:.2f} s"
            )
        try:
            server = _Server.start(sorted(self._preload))
        except OSError as exc:
            self._failures += 1
            self._retry_at = now + min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failures - 1))
            raise ForkServerUnavailable(f"the fork server could not be started: {exc}") from exc
        self._server = server
        return server


def _killed_by(modules: list[str]) -> RuntimeError:
    return RuntimeError(
        f"the fork server died importing {modules!r} (preload): one of them crashes or exits "
        f"the process that imports it"
    )


FORK_SERVER = ForkServer()
"""The fork server every ``forkserver`` port and pool of this process shares."""


# --- private helpers: the parent's side --------------------------------------------------------


class ServedChild:
    """A child the server forked, as `Port` sees it (the `_launch.Child` protocol).

    The parent cannot wait for a grandchild, so its exit comes two ways. With a pidfd (which
    the server opens right after the fork and hands over, Linux 5.3 and later), the kernel says
    when the child exits, even once the server is gone: a child outlives its server. Its
    status is the server's report, when the server is still there to make one, else unknown
    (None). Without a pidfd the server's report is the only news, written to an exit pipe the
    port's reader watches; a child whose server died is then killed, since nothing could tell
    of its exit.
    """

    def __init__(self, exit_r: int, exit_w: int) -> None:
        self.pid = 0  # set from the server's answer, before anyone else sees this object
        self._exit_r: int | None = exit_r
        self._exit_w: int | None = exit_w
        self._pidfd: int | None = None
        self._status: int | None = None
        self._known = threading.Event()  # the status is reported, or never will be
        self._lock = threading.Lock()

    def wait_status(self, timeout: float | None) -> int | None:
        if self._pidfd is not None:
            # The exit event was the kernel's; the server, if still there, reports the status
            # moments later.
            grace = _REPORT_GRACE if timeout is None else min(timeout, _REPORT_GRACE)
            self._known.wait(grace)
            self._close()
            return self._status
        if not self._known.wait(timeout):
            return None
        return self._status

    def exit_fd(self) -> int | None:
        if self._pidfd is not None:
            return os.dup(self._pidfd)
        return self._exit_r

    def reaped(self) -> bool:
        # Once it has exited anyone may reap it (the server, or init once the server is
        # gone), and its pid may be another process's: signal it no more.
        with self._lock:
            if self._pidfd is not None:
                poller = select.poll()
                poller.register(self._pidfd, select.POLLIN)
                return bool(poller.poll(0))
        return self._known.is_set()

    def _watched(self, pidfd: int) -> None:
        """The server handed over a pidfd: the exit pipe is not needed."""
        with self._lock:
            self._pidfd = pidfd
            write_end, self._exit_w = self._exit_w, None
            read_end, self._exit_r = self._exit_r, None
        for fd in (write_end, read_end):
            if fd is not None:
                close_fd(fd)

    def _exited(self, status: int | None) -> None:
        with self._lock:
            if self._known.is_set():
                return
            self._status = status
            self._known.set()
            fd, self._exit_w = self._exit_w, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, b"x")
            close_fd(fd)

    def _discard(self) -> None:
        """Never handed to a port: close what it holds."""
        with self._lock:
            fds = [self._exit_w, self._exit_r, self._pidfd]
            self._exit_w = self._exit_r = self._pidfd = None
        for fd in fds:
            if fd is not None:
                close_fd(fd)

    def _close(self) -> None:
        """Its exit has been seen: let go of the pidfd."""
        with self._lock:
            fd, self._pidfd = self._pidfd, None
            # Its exit is known from here on (the port keeps the status).
            self._known.set()
        if fd is not None:
            os.close(fd)


class _StartFailed(OSError):
    """The server forked, but the program's exec (or its `chdir`) failed: `kind` says which."""

    def __init__(self, kind: int, errno: int) -> None:
        super().__init__(errno, os.strerror(errno))
        self.kind = kind


class _Request:
    def __init__(self, child: ServedChild | None) -> None:
        self.child = child  # None: a preload request
        self.done = threading.Event()
        self.error: OSError | None = None
        self.failed: int | None = None  # a preload's NO_PRELOAD value


class _Server:
    """One server process, its socket and its reader thread (``dspex-forkserver``)."""

    BOOT = (
        "from dspex_actors._ports._forkserver_server import server_main; "
        "server_main({fd}, {parent}, {preload!r})"
    )
    """What the server's interpreter runs (tests patch it to observe the server)."""

    def __init__(self, popen: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.credentials = _credentials()  # the server's: those of when it was started
        self.dead = False
        self.answered = 0  # starts it answered: it booted
        self.preloaded: set[str] = set()  # the modules it has imported
        self.zygote: int | None = None  # the pid of its zygote, once ready (ZYGOTE replies)
        self._sock = sock
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Request] = {}
        self._workers: dict[int, ServedChild] = {}
        self._reader = threading.Thread(target=self._read, name="dspex-forkserver", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, preload: Sequence[str] = ()) -> _Server:
        # Every fd made here exists (or is in _PARENT_FDS) only under the fork guard, so a
        # "fork" port's child forked meanwhile never holds the parent's end of the socket:
        # the server would never see EOF when the parent dies.
        with _fds.FORK_GUARD.creating():
            parent_sock, child_sock = map(
                _above_stdio, socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            )
            PARENT_FDS.add(parent_sock.fileno())
            fd = child_sock.fileno()
            boot = f"import sys; sys.path[:0] = {sys.path!r}; " + cls.BOOT.format(
                fd=fd, parent=os.getpid(), preload=list(preload)
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
                server.preloaded.update(preload)
            except BaseException:
                PARENT_FDS.discard(parent_sock.fileno())
                parent_sock.close()
                raise
            finally:
                child_sock.close()
        return server

    def start_worker(
        self, setup: bytes, timeout: float
    ) -> tuple[ServedChild, tuple[int, int, int, int]]:
        request_id = next(self._ids)
        message = memoryview(REQUEST.pack(request_id, len(setup)) + setup)
        request: _Request | None = None
        parent_ends: tuple[int, int, int, int] | None = None
        registered = sending = False
        try:
            # The whole request goes out under the send lock (requests never interleave); the
            # fork guard is held only while the worker's child ends exist here, i.e. until they
            # have left with the request's first bytes (as in Port._fork: no "fork" port's
            # child started meanwhile may keep one open). Lock order: send lock, fork guard.
            with self._send_lock:
                with _fds.FORK_GUARD.creating():
                    fds: list[int] = []
                    try:
                        for _ in range(PIPES):
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
                    PARENT_FDS.update((*parent_ends, exit_w))
                    child = ServedChild(exit_r, exit_w)
                    request = _Request(child)
                    try:
                        with self._lock:
                            if self.dead:
                                raise ForkServerUnavailable("the fork server exited")
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
                raise ForkServerUnavailable(f"could not reach the fork server: {exc}") from exc
            raise
        if request.error is not None:
            abandon_worker(child, parent_ends)
            raise request.error
        return child, parent_ends

    def preload(self, modules: list[str], timeout: float) -> None:
        """Have the server import `modules` now (it answers once they are imported).

        Raises:
            ImportError: one of them could not be imported in the server.
            RuntimeError: one started a thread on import (the server then exits: forking it
                would be unsafe).
            ForkServerUnavailable: the server is gone; CallTimeout: it did not answer.
        """
        request_id = next(self._ids)
        setup = PRELOAD + pickle.dumps((modules, list(sys.path)))  # found as they are here
        message = memoryview(REQUEST.pack(request_id, len(setup)) + setup)
        request = _Request(None)
        with self._lock:
            if self.dead:
                raise ForkServerUnavailable("the fork server exited")
            self._pending[request_id] = request
        sending = False
        try:
            with self._send_lock:
                sending = True
                _send_bounded(self._sock, message, [])
                sending = False
            if not request.done.wait(timeout):
                self._kill()  # stuck in an import: it can start nobody's workers
                raise CallTimeout(f"fork server {self.pid}", "preload", timeout)
        except BaseException as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            if sending:  # part of a request may be in the stream: this server is unusable
                self._kill()
                if isinstance(exc, OSError):
                    raise ForkServerUnavailable(f"could not reach the fork server: {exc}") from exc
            raise
        if request.error is not None:
            raise request.error
        if request.failed is not None:
            module = modules[request.failed // 2]
            if request.failed % 2:
                raise RuntimeError(
                    f"importing {module!r} started a thread in the fork server, which must "
                    f"stay single-threaded to fork safely: do not preload it"
                )
            raise ImportError(f"the fork server could not import {module!r} (preload)", name=module)
        self.preloaded.update(modules)

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
        if request.child is not None:
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
        fds: collections.deque[int] = collections.deque()  # pidfds, in the order they came
        try:
            while True:
                chunk, new_fds, _flags, _addr = socket.recv_fds(self._sock, 65536, 16)
                fds.extend(new_fds)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= REPLY.size:
                    kind, key, value = REPLY.unpack_from(buffer)
                    del buffer[: REPLY.size]
                    pidfd = fds.popleft() if kind == WATCHED and fds else None
                    self._dispatch(kind, key, value, pidfd)
        except OSError:
            pass
        finally:
            for fd in fds:
                os.close(fd)
            self._gone()

    def _dispatch(self, kind: int, key: int, value: int, pidfd: int | None = None) -> None:
        if kind == ZYGOTE:
            with self._lock:
                if value:
                    self.zygote = key
                elif self.zygote == key:
                    self.zygote = None
            return
        if kind == EXITED:
            with self._lock:
                child = self._workers.pop(key, None)
            if child is not None:
                child._exited(value)
            return
        if kind in (PRELOADED, NO_PRELOAD):
            with self._lock:
                preload = self._pending.pop(key, None)
            if preload is not None:
                if kind == NO_PRELOAD:
                    preload.failed = value
                preload.done.set()
            return
        started = kind in (STARTED, WATCHED)
        with self._lock:
            request = self._pending.pop(key, None)
            if started and self.zygote == value:
                self.zygote = None  # it became this worker
            if request is not None and started and request.child is not None:
                # Registered before the requester learns the pid: the exit, which the server
                # always reports after the start, finds its record.
                request.child.pid = value
                self._workers[value] = request.child
                self.answered += 1
        if request is None:
            if started:  # its requester gave up waiting
                kill_group(value)
            if pidfd is not None:
                os.close(pidfd)
            return
        if pidfd is not None and request.child is not None:
            request.child._watched(pidfd)
        if kind in (NO_EXEC, NO_CWD, NO_SETUP, STALLED):
            request.error = _StartFailed(kind, value)
        elif not started:
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
            request.error = ForkServerUnavailable(
                "the fork server exited before starting the child"
            )
            request.done.set()
        for child in workers:
            if child._pidfd is not None:
                # It lives on (it dies with its owner, not with its server) and the kernel
                # will tell of its exit; its status is unknown from now on.
                child._exited(None)
            else:
                # Nothing could tell of its exit any more: its port must not wait for it.
                kill_group(child.pid)
                child._exited(-signal.SIGKILL)
        with self._send_lock:
            PARENT_FDS.discard(self._sock.fileno())
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
    return socket.socket(fileno=raised(sock.detach()))


def _send_bounded(
    sock: socket.socket, view: memoryview, fds: list[int], *, first: bool = False
) -> memoryview:
    """Send `view`, `fds` riding with its first byte; return what is left (nothing, unless
    `first`: then return once some of it has gone).

    Gives up (`TimeoutError`) after `SEND_STALL_LIMIT` seconds without progress: a stalled
    server must not block its callers forever. The socket stays blocking (its reader's recv
    waits as long as it must): each send here is non-blocking instead.
    """
    deadline = time.monotonic() + SEND_STALL_LIMIT
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
            deadline = time.monotonic() + SEND_STALL_LIMIT
            continue
        if not wait_writable(sock.fileno(), remaining(deadline)):
            raise TimeoutError(f"the fork server read nothing for {SEND_STALL_LIMIT}s")
    return view


def release_from(pid: int, preload: Sequence[str] = ()) -> None:
    """`FORK_SERVER.release(preload)`, unless this is a forked copy of process `pid` (a
    finalizer copied into a child must not stop the parent's server, whose socket the child
    shares)."""
    if os.getpid() == pid:
        FORK_SERVER.release(preload)


def abandon_worker(child: ServedChild, parent_ends: tuple[int, ...]) -> None:
    """Undo `ForkServer.start_worker` for a worker no port will own: kill it (if it was
    forked), close the parent's ends of its pipes and its exit pipe."""
    for fd in parent_ends:
        with contextlib.suppress(OSError):
            close_fd(fd)
    alive = child.pid and not child.reaped()  # once reaped, its pid may be another's
    child._discard()
    if alive:
        kill_group(child.pid)


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


on_fork_in_child(_reset_after_fork_in_child)
