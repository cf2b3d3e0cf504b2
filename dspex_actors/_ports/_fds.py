"""Fork safety for the parent's pipe ends, and the Linux calls a child uses to die with its owner.

Every port talks to its process through pipes whose parent-side ends live in this process. A
process forked from here (a ``"fork"`` worker, or another library's `os.fork`) copies every fd,
and a copy of a pipe's write end that outlives the parent would hide that pipe's EOF: a worker
would never learn that its parent died, a program would never see its stdin close. So:

- Every parent-side fd is listed in `PARENT_FDS` while it is open, and made (and listed) only
  inside `FORK_GUARD.creating()`; our own ``"fork"`` starts hold `FORK_GUARD.forking()`, which
  excludes creators, so no child of ours is forked while an fd exists that is not listed yet.
- In any forked child (ours or another library's, as long as the fork runs Python's at-fork
  hooks), `drop_parent_fds` points every listed number at ``/dev/null``.

**Process-wide hooks.** Importing dspex_actors installs none. The first port or fork server
this process starts registers one `os.register_at_fork` hook (``after_in_child``): it drops the
listed fds and resets the fork guard, the spawner thread's record and the fork server's record,
which belong to the parent. A process that never starts a port has no hook.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import selectors
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "FORK_GUARD",
    "PARENT_FDS",
    "ForkGuard",
    "arm_lifeline",
    "close_fd",
    "die_with",
    "drop_parent_fds",
    "libc",
    "on_fork_in_child",
    "pdeathsig_preexec",
    "wait_writable",
]

# Parent-side fds of every port: a forked child inherits them and must let go of them
# (drop_parent_fds, at every fork), or its own (and its siblings') lifeline and stdin would
# never reach EOF.
PARENT_FDS: set[int] = set()


class ForkGuard:
    """Keeps a ``"fork"`` child of ours from copying another port's pipe ends.

    A fork copies every fd (O_CLOEXEC does not help without an exec), and a child that kept a
    write end of another port's pipe would hide that port's EOF. So an fd is made and either
    listed in `PARENT_FDS` (which such a child lets go of) or closed again while `creating()` is
    held, and a ``"fork"`` start forks holding `forking()`, which excludes every creator and
    other forks. Creators do not exclude each other: a creator stuck in `subprocess.Popen`
    (whose error pipe another library's fork may have copied, so that its exec report never
    ends: a known stall of `Popen` in a threaded parent) then holds
    up ``"fork"`` ports (and, through the one spawner thread, other `Port.open` and
    ``"spawn"`` starts), not forkserver workers, even while a fork waits: creators never wait
    for a waiting fork (a fork may wait while creators overlap; each of them is brief). The
    exit fds (a pidfd, a dup of a sentinel's read end) are made outside on purpose: a copy of
    one changes nothing for anyone.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._creators = 0
        self._forking = False

    @contextlib.contextmanager
    def creating(self) -> Iterator[None]:
        _install_fork_hook()
        with self._cond:
            while self._forking:
                self._cond.wait()
            self._creators += 1
        try:
            yield
        finally:
            with self._cond:
                self._creators -= 1
                if not self._creators:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def forking(self) -> Iterator[None]:
        _install_fork_hook()
        with self._cond:
            while self._forking or self._creators:
                self._cond.wait()
            self._forking = True
        try:
            yield
        finally:
            with self._cond:
                self._forking = False
                self._cond.notify_all()


FORK_GUARD = ForkGuard()
"""This process's guard. Read it as ``_fds.FORK_GUARD`` at the time of use: a forked child
gets a new one (the parent's may be held by a thread the child does not have)."""


def close_fd(fd: int) -> None:
    """Close a parent-side fd and take it off `PARENT_FDS`."""
    PARENT_FDS.discard(fd)
    os.close(fd)


def drop_parent_fds() -> None:
    """In any forked child (another library's too): let go of the parent's port fds.

    They are not this child's to use, and while it held them (it may outlive the parent)
    those ports' workers would miss the parent's death: EOF on their lifeline, or on the fork
    server's socket. ``/dev/null`` takes their numbers (close-on-exec), so that no object
    copied from the parent closes, under the same number, an fd this child opens later (a
    ``"fork"`` port's child relies on this too). Only forks that run Python's at-fork hooks
    (`os.fork`, `multiprocessing`, a `subprocess` with a ``preexec_fn``) come here; for the
    others, the fork server and ``"fork"`` workers watch the parent's pid as well.
    """
    if not PARENT_FDS:
        return
    try:
        null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        null = -1  # closed instead: better than holding them
    for fd in PARENT_FDS:
        with contextlib.suppress(OSError):
            if null < 0:
                os.close(fd)
            else:
                os.dup2(null, fd, inheritable=False)
    if null >= 0:
        os.close(null)
    # This child's own ports start a new list: a number listed here could be reused for
    # anything (a daemon closes what it inherited), and a fork of this child would null it.
    PARENT_FDS.clear()


# --- the one at-fork hook ------------------------------------------------------------------------

_child_resets: list[Callable[[], None]] = []
_hook_installed = False
_hook_lock = threading.Lock()


def on_fork_in_child(reset: Callable[[], None]) -> None:
    """Have `reset()` run in every forked child once the hook is installed (a module's record
    of the parent's threads and servers, which the child does not share)."""
    _child_resets.append(reset)


def _after_fork_in_child() -> None:
    global FORK_GUARD
    # A forked child has only the forking thread: the fork guard may be held by another
    # parent thread. Start afresh.
    FORK_GUARD = ForkGuard()
    for reset in _child_resets:
        reset()
    drop_parent_fds()


def _install_fork_hook() -> None:
    """Register the at-fork hook, once, when this process first makes a parent-side fd."""
    global _hook_installed
    if _hook_installed:
        return
    with _hook_lock:
        if not _hook_installed:
            os.register_at_fork(after_in_child=_after_fork_in_child)
            _hook_installed = True


# --- dying with the owner (Linux) --------------------------------------------------------------

_LIBC: Any = None


def libc() -> Any:
    """The C library, loaded once (a child calls `prctl` through it right after a fork)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def die_with(parent: int) -> None:
    """In a child just forked by `parent` (Linux): be SIGKILLed when the thread that forked it
    ends (``PR_SET_PDEATHSIG``); exit at once if `parent` died before that took effect."""
    libc().prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)  # Linux: the signal a file owner gets on I/O


def arm_lifeline(fd: int) -> bool:
    """In a worker that leads its own process group: be SIGKILLed, by the kernel, when the
    lifeline pipe's last write end closes (its owner died), whatever this process is doing.

    The lifeline's read end is set to signal its owner (our process group) on I/O
    (``O_ASYNC``), with SIGKILL as the signal (``F_SETSIG``); the kernel raises it when the
    pipe's last writer goes away. No thread of ours has to run for it: a handler holding the
    GIL in C code dies as promptly as an idle one. The file status and owner belong to the
    open file, so they also hold across an exec (a program keeps the fd open).

    Returns False where this cannot be set up (not Linux): the caller then watches the
    lifeline with a thread. Exits at once if the owner is already gone.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        fcntl.fcntl(fd, fcntl.F_SETOWN, -os.getpgrp())
        fcntl.fcntl(fd, _F_SETSIG, int(signal.SIGKILL))
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
    except OSError:
        return False
    # The owner may have gone before the above took effect: no close is coming to signal.
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if poller.poll(0):
        os.killpg(0, signal.SIGKILL)
    return True


def pdeathsig_preexec(parent: int) -> Callable[[], None]:
    """A preexec_fn: SIGKILL this child when its parent thread dies; exit if it already has."""
    libc()  # loaded here, not in the child

    def preexec() -> None:
        die_with(parent)

    return preexec


LONGEST_POLL = 86_400.0
"""The longest one poll waits, in seconds: the OS refuses more than about 24 days (2**31 ms).
A longer wait polls again."""


def wait_writable(fd: int, timeout: float | None) -> bool:
    """Wait until `fd` can be written (True), or `timeout` seconds (False; at most
    `LONGEST_POLL`: the caller checks its deadline)."""
    if timeout is not None and timeout > LONGEST_POLL:
        timeout = LONGEST_POLL
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_WRITE)
        return bool(sel.select(timeout))
