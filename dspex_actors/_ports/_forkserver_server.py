"""The fork server's own process (private): it forks workers and programs on request.

This module is the server's side of `_forkserver` (read that first): `server_main` runs in the
server process, single-threaded, and everything below it runs in the server or in a child it
has just forked. The wire format both sides speak is defined here too.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import gc
import importlib
import os
import pickle
import resource
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from ._fds import arm_lifeline
from ._framing import FrameDecoder, encode_frame
from ._worker import answer, codec_named, forked_child_setup, reply_payload, serve

__all__ = [
    "EXEC",
    "EXITED",
    "FAILED",
    "NO_CWD",
    "NO_EXEC",
    "NO_PRELOAD",
    "NO_SETUP",
    "PIPES",
    "PRELOAD",
    "PRELOADED",
    "REPLY",
    "REQUEST",
    "SERVE",
    "STALLED",
    "STARTED",
    "WATCHED",
    "WORKER_FDS",
    "ZYGOTE",
    "ProcessState",
    "kill_group",
    "process_state",
    "raised",
    "server_main",
]

# parent -> server: a request id and the setup's length, then the setup; the worker's four
# child-side fds (stdin, stdout, stderr, lifeline) ride with the header (SCM_RIGHTS).
REQUEST = struct.Struct(">QQ")
# server -> parent: what happened, to which request or pid, and a value.
REPLY = struct.Struct(">BQq")
STARTED = 1  # (request id, pid)
FAILED = 2  # (request id, errno): fork failed
EXITED = 3  # (pid, status)
NO_EXEC = 4  # (request id, errno): a program's exec failed
NO_CWD = 5  # (request id, errno): a program's working directory could not be entered
NO_SETUP = 6  # (request id, errno): a program's umask or resource limits could not be set
STALLED = 7  # (request id, 0): a program neither exec'd nor failed in time (it is killed)
WATCHED = 8  # (request id, pid): STARTED, with a pidfd of the child riding along (SCM_RIGHTS)
PRELOADED = 9  # (request id, 0): the modules of a preload request are imported
NO_PRELOAD = 10  # (request id, 2 * index + why): module `index` failed: 0 import, 1 threads
ZYGOTE = 11  # (pid, 1): a zygote is ready; (pid, 0): it is gone unused (taken: STARTED/WATCHED)
# The first byte of a request's setup: serve a Python handler, or exec a program.
SERVE = b"S"
EXEC = b"X"
PRELOAD = b"P"  # import these modules now (no fds ride with it)
PIPES = 5  # a worker's stdin, stdout, stderr and lifeline, and its exit pipe (parent only)
WORKER_FDS = 5  # the child ends of the first four pipes, and the working directory's fd
_CWD_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC
_Send = Callable[[int, int, int], None]
_STOP_LIMIT = 10.0
"""Seconds `ForkServer.release` waits for the server to exit before it SIGKILLs it."""
_REAP_LIMIT = 5.0
"""Seconds the server waits, once its parent is gone, for its SIGKILLed workers to be reaped."""
ZYGOTE_REFILL = 0.005
"""Seconds after its zygote became a worker (or died) before the server forks the next one:
the new worker's start, which that fork would compete with for the CPU, is usually over."""
_ZYGOTE_REFILL_MAX = 1.0
"""At most this many seconds between zygotes that keep dying before they are used."""
_ZYGOTE_YOUNG = 1.0
"""A zygote that dies unused within this many seconds of its fork counts as a failure (the
next one is forked later, with backoff); one that lived longer was killed, not broken."""
_HANDOVER_LIMIT = 1.0
"""Seconds the server gives its zygote to take a start before it forks the worker instead."""
_HANDOVER_MAX = 1 << 16
"""A start whose setup is larger is forked: the zygote's socket takes it whole, without the
server waiting, only up to about this size."""
_ZYGOTE_HEADER = struct.Struct(">Q")  # server -> zygote: the setup's length; fds ride with it
_READY = b"r"  # zygote -> server: warmed up, waiting for a start
_TAKEN = b"."  # zygote -> server: it has the start's fds and setup, and becomes the worker


def kill_group(pid: int) -> None:
    # The worker leads its own session (pgid = pid) once it has called setsid(); before
    # that only the pid itself exists to be signalled.
    for send in (os.killpg, os.kill):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGKILL)


_LIMITS = sorted({getattr(resource, name) for name in dir(resource) if name.startswith("RLIMIT_")})
_SIGNALS = sorted(signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP})
ProcessState = tuple[int | None, int, list[tuple[int, int, int]]]


def process_state() -> ProcessState:
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


def take_process_state(state: ProcessState, *, python: bool) -> None:
    """In a child of the server: take the umask, limits and ignored signals `process_state`
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


# --- the server process ----------------------------------------------------------------------


def server_main(fd: int, parent: int, preload: Sequence[str] = ()) -> None:
    """The fork server (runs in its own process, single-threaded): fork workers on request,
    report their exits, and kill them all once the parent is gone. `preload`: modules to
    import first (those its predecessor had been asked to import)."""
    for name in preload:
        with contextlib.suppress(Exception):  # checked when it was first asked for
            importlib.import_module(name)

    # Used once here, so every worker has what a start uses ready (its lazy set-up done).
    warm_up = b""  # (an optimisation only: without it, zygotes warm up on nothing)
    with contextlib.suppress(Exception):
        warm_up = _dummy_handler()
    _warm_up(warm_up)
    _freeze_heap()

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
    state = _State(sock, sel, parent, warm_up)
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
                if isinstance(key.data, _Zygote):
                    state.zygote_said(key.data)
                    continue
                if isinstance(key.data, _Handover):
                    state.answered(key.data)
                    continue
                data, new_fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 64)
                fds.extend(new_fds)
                if not data:
                    return  # the parent is gone (or stopped us)
                buffer += data
                while len(buffer) >= REQUEST.size:
                    request_id, size = REQUEST.unpack_from(buffer)
                    end = REQUEST.size + size
                    if len(buffer) < end:
                        break
                    setup = bytes(buffer[REQUEST.size : end])
                    del buffer[:end]
                    if setup[:1] == PRELOAD:
                        if not state.preload(request_id, *pickle.loads(setup[1:])):
                            state.leave()  # a module started a thread: no more forks
                        continue
                    if len(fds) < WORKER_FDS:
                        return  # cannot happen: the fds arrive with the header's first byte
                    # Above fd 2 (ours is closed if the parent's was): a child moves its
                    # stdio onto 0-2 and must not overwrite one of these doing so.
                    mine = [raised(fds.popleft()) for _ in range(WORKER_FDS)]
                    state.fork(request_id, mine, setup)
            state.expire()
            state.refill()
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


class _Zygote:
    """A worker forked ahead of its request (see `_zygote_main`), as the server tracks it: its
    pid, the server's end of the socket it waits on, when it was forked, and whether it has
    said it is ready (only then is it handed a start)."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self.sock = sock
        self.born = time.monotonic()
        self.ready = False


class _Handover:
    """A worker's start handed to the zygote, until the zygote says it has taken it. The
    request's fds stay the server's meanwhile: if the zygote dies or stalls instead, the
    worker is forked with them."""

    def __init__(self, request_id: int, fds: list[int], setup: bytes, zygote: _Zygote) -> None:
        self.request_id = request_id
        self.fds = fds
        self.setup = setup
        self.zygote = zygote
        self.deadline = time.monotonic() + _HANDOVER_LIMIT


class _State:
    """The server's children: the workers it reports on, programs not yet exec'd, and the
    zygote.

    The zygote is the next worker, forked ahead: once a worker has been asked for, the server
    keeps one child forked and set up as far as no request is needed (out of the server's state,
    its own session, warmed up), waiting for the next worker start, which then costs no fork on
    its critical path. Only a zygote that has said it is ready is handed a start, and the hand-
    over never holds the server up: the start goes into the zygote's socket whole (a larger
    setup than `_HANDOVER_MAX` is forked instead), and the server serves on until the zygote
    answers. The server forks the next zygote `ZYGOTE_REFILL` seconds after (a start meanwhile
    is forked directly), and again whenever one is lost unused (later and later while young
    ones keep dying or stalling). A start whose zygote dies before it took it, or has not
    answered within `_HANDOVER_LIMIT` (it is killed), is forked then; preloading discards the
    zygote (it lacks the new modules) and forks a new one after the imports.
    """

    def __init__(
        self, sock: socket.socket, sel: selectors.BaseSelector, owner: int, warm_up: bytes
    ) -> None:
        self.sock = sock
        self.sel = sel
        self.owner = owner  # the process that started us, which owns every child
        self.warm_up = warm_up  # the handler a zygote warms up on (see `_warm_up`)
        self.workers: set[int] = set()
        self.starting: dict[int, _Starting] = {}
        self.zygote: _Zygote | None = None
        self.handovers: dict[int, _Handover] = {}  # by the zygote's pid
        self.zygotes_wanted = False  # a worker has been asked for: keep one ready from now on
        self.refill_at: float | None = None  # when to fork the next zygote (time.monotonic)
        # Zygotes in a row that could not be forked, or were lost young without our doing
        # (they died, or stalled with a start): each puts the next one off further.
        self.zygote_failures = 0

    def send(self, kind: int, key: int, value: int) -> None:
        self.sock.sendall(REPLY.pack(kind, key, value))

    def started(self, request_id: int, pid: int) -> None:
        """Answer a start, with a pidfd of the child if there can be one.

        The pidfd is opened here, where the child cannot have been reaped yet (so its pid
        names it), and lets the owner see the child's exit even once we are gone: our
        children outlive us, and nothing else could tell the owner of their deaths.
        """
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfd (before Linux 5.3)
            self.send(STARTED, request_id, pid)
            return
        try:
            message = REPLY.pack(WATCHED, request_id, pid)
            sent = socket.send_fds(self.sock, [message], [pidfd])
            if sent < len(message):
                self.sock.sendall(message[sent:])
        finally:
            os.close(pidfd)

    def next_deadline(self) -> float | None:
        deadlines = [start.deadline for start in self.starting.values()]
        deadlines += [handover.deadline for handover in self.handovers.values()]
        if self.refill_at is not None:
            deadlines.append(self.refill_at)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    def reap(self) -> None:
        _reap(self.workers, self.send, self.starting, self._reaped)

    def _reaped(self, pid: int, status: int) -> None:
        # Neither a worker nor a program: a program's child that failed or stalled (reported
        # already), or a zygote that died before the server read its socket (reaped: its pid
        # is no longer its own, nothing may signal it). One handed a start may have taken it
        # first (and died as its worker): its answer is in the socket.
        if self.zygote is not None and self.zygote.pid == pid:
            self.zygote_gone(self.zygote)
        elif pid in self.handovers:
            handover = self.handovers[pid]
            self._settle(handover, self._answer_of(handover), status)

    def refill(self) -> None:
        """Fork the next zygote if it is due."""
        if self.refill_at is None or time.monotonic() < self.refill_at:
            return
        self.refill_at = None
        if self.zygote is not None:
            return
        try:
            ours, theirs = socket.socketpair()
        except OSError:
            self.zygote_failures += 1
            self._schedule_refill()
            return
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            self.zygote_failures += 1
            self._schedule_refill()
            return
        if pid == 0:
            try:
                _zygote_main(theirs, self.sock, self.sel, self.owner, self.warm_up)
            finally:
                os._exit(1)  # never back into the server's loop
        theirs.close()
        zygote = _Zygote(pid, ours)
        with contextlib.suppress(OSError):  # room for a whole start (see `_HANDOVER_MAX`)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * _HANDOVER_MAX)
        try:
            self.sel.register(ours, selectors.EVENT_READ, zygote)
        except (OSError, ValueError):  # out of kernel memory: no zygote for now
            self.zygote_failures += 1
            self._lost(zygote, reaped=False, failure=False)
            return
        self.zygote = zygote

    def zygote_said(self, zygote: _Zygote) -> None:
        """`zygote` wrote (it is ready: reported to the parent) or died."""
        if zygote is not self.zygote:
            return  # handed a start, or found dead, earlier in the same round
        try:
            ready = zygote.sock.recv(1) == _READY
        except OSError:
            ready = False
        if ready:
            zygote.ready = True
            self.send(ZYGOTE, zygote.pid, 1)
        else:
            self.zygote_gone(zygote)  # EOF: it never writes anything else unasked

    def zygote_gone(self, zygote: _Zygote) -> None:
        """`zygote` died unused: killed, or failed on its way to being ready (it exits by
        itself only at EOF on its socket, which the server never gives it)."""
        if zygote is not self.zygote:
            return  # handed a start, or found dead, earlier in the same round
        self._discard_zygote()
        self._lost(zygote, reaped=True, failure=True)

    def _lost(self, zygote: _Zygote, *, reaped: bool, failure: bool) -> None:
        """`zygote` is gone (killed here unless `reaped`: its pid is then another's to
        take); schedule the next one. A `failure` (it died, not by our hand) that came young
        puts the next one off further."""
        if not reaped:
            kill_group(zygote.pid)
        zygote.sock.close()
        self.send(ZYGOTE, zygote.pid, 0)
        if failure:
            young = time.monotonic() - zygote.born < _ZYGOTE_YOUNG
            self.zygote_failures = self.zygote_failures + 1 if young else 0
        self._schedule_refill()

    def _schedule_refill(self) -> None:
        if self.zygotes_wanted and self.refill_at is None:
            delay = ZYGOTE_REFILL * 2 ** min(self.zygote_failures, 10)
            self.refill_at = time.monotonic() + min(delay, _ZYGOTE_REFILL_MAX)

    def _discard_zygote(self) -> _Zygote | None:
        """Forget the zygote (returned), and stop watching its socket."""
        zygote, self.zygote = self.zygote, None
        if zygote is not None:
            self.sel.unregister(zygote.sock)
        return zygote

    def _hand_over(self, request_id: int, fds: list[int], setup: bytes) -> bool:
        """Send a worker's start to the zygote, if one is ready and the setup is not too
        large (True); its answer comes as an event (`answered`). Nothing here waits: the
        start goes into the socket's buffer whole, or the zygote is not used (the request's
        fds are still ours either way)."""
        if self.zygote is None or not self.zygote.ready or len(setup) > _HANDOVER_MAX:
            return False
        zygote = self._discard_zygote()
        assert zygote is not None
        message = _ZYGOTE_HEADER.pack(len(setup)) + setup
        handover = _Handover(request_id, fds, setup, zygote)
        try:
            zygote.sock.setblocking(False)
            sent = socket.send_fds(zygote.sock, [message], fds, socket.MSG_NOSIGNAL)
            if sent == len(message):
                self.sel.register(zygote.sock, selectors.EVENT_READ, handover)
        except OSError:  # it died before it could take it, or no room to watch it
            sent = -1
        if sent < len(message):  # part of the start may be there: it cannot be used
            # Not reaped yet: its pid is still its own.
            self._lost(zygote, reaped=False, failure=False)
            return False
        self.handovers[zygote.pid] = handover
        return True

    def answered(self, handover: _Handover) -> None:
        """The zygote of `handover` said something: it has taken the start, or it died."""
        if self.handovers.get(handover.zygote.pid) is not handover:
            return  # settled earlier in the same round (reaped)
        said = self._answer_of(handover)
        if said is not None:  # else a spurious wake-up: its answer comes next
            self._settle(handover, said)

    def _answer_of(self, handover: _Handover) -> bytes | None:
        """What `handover`'s zygote has written (b"" once it has closed its end), without
        waiting; None while it has written nothing."""
        try:
            return handover.zygote.sock.recv(2)
        except BlockingIOError:
            return None
        except OSError:
            return b""

    def _settle(self, handover: _Handover, said: bytes | None, status: int | None = None) -> None:
        """End `handover` on what its zygote `said` (None: nothing yet): it took the start (it
        is that worker, or with a `status`, was: reaped already), or the worker is forked
        instead: the zygote died (EOF, or reaped), or stalled past its deadline (it is
        killed here)."""
        self._end_hand_over(handover)
        zygote = handover.zygote
        if said != _TAKEN:
            # Dead or stalled: either way it failed us (a zygote stalls only if stopped, or
            # starved of the CPU for a second), and the next one waits the longer.
            self._lost(zygote, reaped=status is not None, failure=True)
            self._fork(handover.request_id, handover.fds, SERVE + handover.setup)
            return
        zygote.sock.close()
        for fd in handover.fds:
            os.close(fd)
        if status is None:
            self.workers.add(zygote.pid)
            self.started(handover.request_id, zygote.pid)
        else:  # it took the start and exited since, before we read its answer
            self.send(STARTED, handover.request_id, zygote.pid)  # no pidfd: its pid is free
            self.send(EXITED, zygote.pid, status)
        self.zygote_failures = 0
        self._schedule_refill()

    def _end_hand_over(self, handover: _Handover) -> None:
        del self.handovers[handover.zygote.pid]
        self.sel.unregister(handover.zygote.sock)

    def preload(self, request_id: int, modules: list[str], path: list[str]) -> bool:
        """Import `modules`, found on `path` (the requester's `sys.path` now, which this
        server takes), so that every child forked from now on has them; answer. False if one
        of them started a thread: a fork copies a lock another thread holds, so this server
        must not fork any more (it answers, then exits)."""
        zygote = self._discard_zygote()  # it lacks them: the next one is forked after
        if zygote is not None:
            self._lost(zygote, reaped=False, failure=False)
        sys.path[:] = path
        for index, name in enumerate(modules):
            try:
                importlib.import_module(name)
            except BaseException:
                traceback.print_exc()  # the server's stderr is its parent's
                self.send(NO_PRELOAD, request_id, 2 * index)
                return True
            if threading.active_count() > 1:
                self.send(NO_PRELOAD, request_id, 2 * index + 1)
                return False
        _freeze_heap()
        self.send(PRELOADED, request_id, 0)
        return True

    def fork(self, request_id: int, fds: list[int], setup: bytes) -> None:
        """Start a worker (the zygote, if one is ready) or a program's child for the
        request; answer once it runs."""
        if setup[:1] != EXEC:
            self.zygotes_wanted = True
            if self._hand_over(request_id, fds, setup[1:]):
                return
            self._schedule_refill()
        self._fork(request_id, fds, setup)

    def _fork(self, request_id: int, fds: list[int], setup: bytes) -> None:
        """Fork a worker or a program's child for the request; answer once it runs."""
        program = setup[:1] == EXEC
        made: list[int] = []
        try:
            if program:
                made.extend(os.pipe())  # O_CLOEXEC: a successful exec closes it
            pid = os.fork()
        except OSError as exc:
            for fd in fds + made:
                os.close(fd)
            self.send(FAILED, request_id, exc.errno or 0)
            return
        if pid == 0:
            try:
                if program:
                    _program_main(fds, setup[1:], self.sock, self.sel, made[1])
                _worker_main(fds, setup[1:], self.sock, self.sel, self.owner)
            finally:
                os._exit(1)  # never back into the server's loop
        for fd in fds + made[1:]:
            os.close(fd)
        if not program:
            self.workers.add(pid)
            self.started(request_id, pid)
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
            kind = {b"cwd": NO_CWD, b"setup": NO_SETUP}.get(stage, NO_EXEC)
            self.send(kind, start.request_id, int(number or b"0"))
            return
        if start.status is None:
            self.workers.add(start.pid)  # before any send: killed at our exit if that fails
            self.started(start.request_id, start.pid)
        else:  # it has exited already: reported after its start, as any exit is
            self.send(STARTED, start.request_id, start.pid)
            self.send(EXITED, start.pid, start.status)

    def expire(self) -> None:
        now = time.monotonic()
        # A reaped child's report pipe has reached EOF: its answer is known, not stalled.
        late = [s for s in self.starting.values() if s.deadline <= now and s.status is None]
        for start in late:
            self._forget(start)
            kill_group(start.pid)  # reaped with the others, unreported
            self.send(STALLED, start.request_id, 0)
        for handover in [h for h in self.handovers.values() if h.deadline <= now]:
            # Its answer may be there, unread (the server was busy): else it stalled.
            self._settle(handover, self._answer_of(handover))

    def leave(self) -> NoReturn:
        """Exit now, as if killed: the workers live on (each dies with its owner, who sees
        the server gone and starts a new one); only programs not yet exec'd, and zygotes
        handed a start nobody will answer, are killed."""
        for pid, start in self.starting.items():
            if start.status is None:
                kill_group(pid)
        for pid in self.handovers:  # starts nobody will answer
            kill_group(pid)
        os._exit(0)  # the thread a preloaded module started must not hold the exit up

    def stop(self, wake_r: int) -> None:
        """The parent is gone: kill and reap every child, those not exec'd yet too (not
        those reaped already: their pid may be someone else's by now)."""
        self.workers.update(p for p, s in self.starting.items() if s.status is None)
        # The zygotes are reaped with the workers (their exits reported too: the parent
        # knows no such pid).
        zygote = self._discard_zygote()
        if zygote is not None:
            self.workers.add(zygote.pid)
        self.workers.update(self.handovers)
        _stop_workers(self.workers, wake_r, self.send)

    def _forget(self, start: _Starting) -> None:
        del self.starting[start.pid]
        self.sel.unregister(start.report_fd)
        os.close(start.report_fd)


def raised(fd: int) -> int:
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


def _reap(
    workers: set[int],
    send: _Send,
    starting: Mapping[int, _Starting] | None = None,
    other: Callable[[int, int], None] | None = None,
) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        if pid in workers:
            workers.discard(pid)
            send(EXITED, pid, os.waitstatus_to_exitcode(status))
        elif starting and pid in starting:
            starting[pid].status = os.waitstatus_to_exitcode(status)
        elif other is not None:
            other(pid, os.waitstatus_to_exitcode(status))


def _program_main(
    fds: list[int],
    setup: bytes,
    sock: socket.socket,
    sel: selectors.BaseSelector,
    report_w: int,
) -> NoReturn:
    """A program's child, just forked from the server: set up as `Port.open` does, exec.

    It keeps its lifeline (armed: the kernel kills it when its owner dies, see
    `arm_lifeline`) open across the exec, as one more inherited fd; it does not die with the
    server.
    """
    in_fd, out_fd, err_fd, life_fd, cwd_fd = fds
    stage = b"exec"
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the rest: take_process_state
        sel.close()
        sock.close()
        os.setsid()
        arm_lifeline(life_fd)
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
        take_process_state(state, python=False)
        stage = b"exec"
        # The received fds are above 2 (see raised); the copies are inheritable: they
        # survive exec.
        for fd, std in ((in_fd, 0), (out_fd, 1), (err_fd, 2)):
            os.dup2(fd, std)
        # The lifeline stays open (and armed) in the program; nothing else of ours does.
        os.set_inheritable(life_fd, True)
        _close_fds_except({0, 1, 2, life_fd, report_w})
        os.execvpe(args[0], args, env)
    except OSError as exc:
        report = b"%s:%d" % (stage, exc.errno or 0)
    except BaseException:
        report = b"%s:%d" % (stage, errno.EINVAL)
    with contextlib.suppress(OSError):
        os.write(report_w, report)
    os._exit(127)


def _worker_main(
    fds: list[int], setup: bytes, sock: socket.socket, sel: selectors.BaseSelector, owner: int
) -> NoReturn:
    """A worker, just forked from the server: become a ``"fork"`` port's child and serve."""
    try:
        _leave_server(sock, sel)
    except BaseException:
        os._exit(1)
    _become_worker(fds, setup, owner)


def _zygote_main(
    mine: socket.socket,
    sock: socket.socket,
    sel: selectors.BaseSelector,
    owner: int,
    warm_up: bytes,
) -> NoReturn:
    """A zygote, just forked from the server: get ready, then wait on `mine` for a worker's
    request (its fds and setup), answer ``.`` once it has it all, and become that worker.

    Ready means everything a worker's start does that needs no request: out of the server's
    state (its signal handling, selector and socket, every fd but `mine` closed), leading a
    session of its own, and warmed up on the server's dummy handler `warm_up` (see
    `_warm_up`); then it says so (`_READY`). It exits at EOF on `mine` (the server is gone:
    killed, or left); it has no lifeline until it becomes a worker, and needs none: a server
    that no longer wants it, or stops because its owner died, kills it.
    """
    try:
        _leave_server(sock, sel)
        _close_fds_except({0, 1, 2, mine.fileno()})
        with contextlib.suppress(OSError):
            os.setsid()
        _warm_up(warm_up)
        mine.sendall(_READY)
        header = _recv_exactly(mine, _ZYGOTE_HEADER.size)
        if header is None:
            os._exit(0)
        data, fds = header
        (size,) = _ZYGOTE_HEADER.unpack(data)
        received = _recv_exactly(mine, size)
        if len(fds) != WORKER_FDS or received is None:
            os._exit(0)  # cannot happen: the server sends them all, or dies
        setup = received[0]
        mine.sendall(_TAKEN)
        mine.close()
        fds = [raised(fd) for fd in fds]  # above 2, as the server has them (see server_main)
    except BaseException:
        os._exit(1)
    _become_worker(fds, setup, owner)


def _dummy_handler() -> bytes:
    """A dummy handler of ours, with its arguments, codec and `max_frame`, pickled as in a
    worker's setup (`_launch.pickle_setup`). Made once, by the server, for `_warm_up`."""
    import dill

    return dill.dumps((_on_sigchld, (), "json", 1 << 20), recurse=True)  # type: ignore[no-any-return]


def _warm_up(handler_setup: bytes) -> None:
    """Run what a worker's start runs (`_take_setup`, then a ping's decoding and answer) on a
    setup of this process's own environment, `sys.path` and process state, read now (taking
    them changes nothing), and the server's `_dummy_handler`. The pages that writes are
    copied from the server's here, in the zygote, rather than on a start's path (a start from
    the zygote answers its first ping about a third sooner); the handler being pickled once,
    by the server, each zygote pays only for what a start itself does."""
    with contextlib.suppress(Exception):  # only an optimisation
        state = (dict(os.environ), list(sys.path), process_state())
        handler, args, codec_name, max_frame = _take_setup(pickle.dumps((state, handler_setup)))
        codec = codec_named(codec_name)
        for frame in FrameDecoder(max_frame).feed(encode_frame(codec.encode([0]))):
            reply = answer(codec.decode(frame), handler, args)
            encode_frame(reply_payload(codec, reply, max_frame), max_frame=max_frame)


def _take_setup(setup: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], str, int]:
    """In a worker forked from the server: take the requester's environment, `sys.path` and
    process state from `setup` (what `ForkServer.start_worker` sends, after its tag), and
    return the handler, its arguments, the codec's name and `max_frame`. (`_warm_up` runs it
    too, on this process's own state.)"""
    (environ, path, state), handler_setup = pickle.loads(setup)
    # Only what differs (a fork has the server's): setting each variable costs a start
    # about half a millisecond.
    for name in [name for name in os.environ if name not in environ]:
        del os.environ[name]
    for name, value in environ.items():
        if os.environ.get(name) != value:
            os.environ[name] = value
    sys.path[:] = path
    take_process_state(state, python=True)
    import dill

    handler, args, codec_name, max_frame = dill.loads(handler_setup)
    return handler, args, codec_name, max_frame


def _recv_exactly(sock: socket.socket, size: int) -> tuple[bytes, list[int]] | None:
    """`size` bytes from `sock`, and the fds that came with them; None at EOF before then."""
    chunks: list[bytes] = []
    fds: list[int] = []
    while size:
        chunk, new_fds, _flags, _addr = socket.recv_fds(sock, min(size, 1 << 20), WORKER_FDS)
        fds.extend(new_fds)
        if not chunk:
            for fd in fds:
                os.close(fd)
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks), fds


def _leave_server(sock: socket.socket, sel: selectors.BaseSelector) -> None:
    """In a child just forked from the server: drop the server's signal handling, selector
    and socket."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sel.close()
    sock.close()


def _become_worker(fds: list[int], setup: bytes, owner: int) -> NoReturn:
    """Become a ``"fork"`` port's child serving `setup`, with the request's `fds`, and exit.

    Its lifeline is armed at once (the kernel kills it when its `owner` dies, whoever forked
    it): it does not die with the server.
    """
    in_fd, out_fd, err_fd, life_fd, cwd_fd = fds
    code = 1
    try:
        # Nothing of the server's (nor the fds of requests queued behind this one) stays open.
        _close_fds_except({0, 1, 2, in_fd, out_fd, err_fd, life_fd, cwd_fd})
        with contextlib.suppress(OSError):
            os.fchdir(cwd_fd)  # the requester's working directory, even if deleted since
        os.close(cwd_fd)  # before any fd is moved below: it may have any number
        # The lifeline is armed now (the kernel's watch); the owner's pid is also watched by
        # a thread from the first request on (see serve), so the first ping is answered
        # sooner.
        watch_owner = forked_child_setup(err_fd, life_fd, owner)
        handler, args, codec_name, max_frame = _take_setup(setup)
        decoder = FrameDecoder(max_frame)
        serve(in_fd, out_fd, handler, args, codec_name, max_frame, [], decoder, watch_owner)
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


def _freeze_heap() -> None:
    """Move every object the server has into the collector's permanent generation, so that
    a forked child's garbage collections never walk them (writing to them, which would copy
    the pages they share with the server)."""
    gc.collect()
    gc.freeze()


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
        kill_group(pid)
    deadline = time.monotonic() + _REAP_LIMIT
    with selectors.DefaultSelector() as sel:
        sel.register(wake_r, selectors.EVENT_READ)
        while True:
            _reap(workers, report)
            if not workers or time.monotonic() >= deadline:
                return
            sel.select(max(0.0, deadline - time.monotonic()))
            _drain(wake_r)
