"""Starting the process behind a port: a program, or a Python handler by one of three methods.

Each `start_*` function starts one process and returns a `Started`: its `Child` record (how to
wait for it and learn of its exit) and the parent's ends of its stdin, stdout and stderr
pipes, made under the fork guard and listed in `PARENT_FDS` (see `_fds`). `Port` adopts it; if
it cannot (its reader thread did not start), `Started.abandon` undoes the start.

- ``start_program``: `subprocess.Popen` from the one spawner thread (below), with
  ``PR_SET_PDEATHSIG`` on Linux.
- ``start_spawned``: a fresh interpreter (``"spawn"``) that reads its handler as the first frame
  on stdin (the caller writes it).
- ``start_forked``: a ``"fork"`` child of this process (multiprocess's fork context).
- ``start_forkserver_worker`` / ``start_forkserver_program``: the fork server forks it (see
  `_forkserver`).
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from .._errors import InvalidOption
from . import _fds, _forkserver
from ._fds import PARENT_FDS, close_fd, on_fork_in_child, pdeathsig_preexec
from ._forkserver import abandon_worker
from ._framing import Codec
from ._worker import fork_child_main

__all__ = [
    "SETUP_TIMEOUT",
    "Child",
    "PopenChild",
    "ProcessChild",
    "Started",
    "pickle_setup",
    "start_forked",
    "start_forkserver_program",
    "start_forkserver_worker",
    "start_program",
    "start_spawned",
]

SETUP_TIMEOUT = 30.0
"""Seconds a start may take: a ``"spawn"`` child reading its handler, the fork server answering
a start request."""


class Child(Protocol):
    """The OS process behind a port: a `subprocess.Popen`, a `multiprocess` process, or a
    worker of the fork server (`_forkserver.ServedChild`, whose status the server reports)."""

    pid: int

    def wait_status(self, timeout: float | None) -> int | None: ...

    def exit_fd(self) -> int | None: ...

    def reaped(self) -> bool:
        """The process has been reaped, so its pid may be reused: signal it no more."""
        ...


class PopenChild:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen
        self.pid = popen.pid

    def wait_status(self, timeout: float | None) -> int | None:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def exit_fd(self) -> int | None:
        # A pidfd becomes readable when the process exits (Linux >= 5.3); elsewhere the
        # reader thread learns of the exit from EOF on stderr.
        pidfd_open = getattr(os, "pidfd_open", None)
        if pidfd_open is None:
            return None
        try:
            fd: int = pidfd_open(self.pid)
        except OSError:
            return None
        return fd

    def reaped(self) -> bool:
        return self.popen.returncode is not None  # set by our own wait, which reaps


class ProcessChild:
    def __init__(self, process: Any) -> None:
        self.process = process
        self.pid: int = process.pid

    def wait_status(self, timeout: float | None) -> int | None:
        self.process.join(timeout)
        code: int | None = self.process.exitcode
        return code

    def exit_fd(self) -> int | None:
        # A pidfd becomes readable when the process exits (it cannot name another process:
        # the child is ours and unreaped). The sentinel, where there is no pidfd, can be held
        # open by a grandchild that inherited its write end.
        with contextlib.suppress(AttributeError, OSError):
            fd: int = os.pidfd_open(self.pid)
            return fd
        return os.dup(self.process.sentinel)

    def reaped(self) -> bool:
        # Only our reader thread's join reaps it, and `Port._exited` is set soon after; until
        # then the pid stays reserved (a zombie at worst). Polling here would race that join.
        return False


class Spawner:
    """Forks `Port.open` children from one thread that lives while any opened port does.

    Linux sends ``PR_SET_PDEATHSIG`` when the *thread* that forked the child exits, not the
    process, so children must not be forked from short-lived actor or client threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._live = 0
        self._thread: threading.Thread | None = None

    def popen(
        self,
        argv: list[str],
        *,
        env: Mapping[str, str] | None,
        cwd: str | os.PathLike[str] | None,
    ) -> tuple[subprocess.Popen[bytes], tuple[int, int, int]]:
        """Start `argv`; return its `Popen` and the parent's raw stdin, stdout and stderr fds
        (listed in `PARENT_FDS`; Popen's own file objects are closed)."""
        parent = os.getpid()
        preexec = pdeathsig_preexec(parent) if sys.platform.startswith("linux") else None

        def start() -> tuple[subprocess.Popen[bytes], tuple[int, int, int]]:
            # Popen's pipes must not leak into a `fork` port's child forked meanwhile (a fork
            # copies every fd, O_CLOEXEC or not): they exist only while the guard is held, and
            # the raw fds kept instead are in PARENT_FDS (which such a child drops) before
            # it is released. Else that child would hold this program's stdin open, and
            # closing it would never reach EOF.
            with _fds.FORK_GUARD.creating():
                popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=None if env is None else dict(env),
                    cwd=cwd,
                    start_new_session=True,
                    preexec_fn=preexec,
                )
                try:
                    return popen, raw_fds(popen)
                except BaseException:
                    popen.kill()
                    popen.wait()
                    raise

        with self._lock:
            self._live += 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="dspex-port-spawner", daemon=True
                )
                self._thread.start()
        reply: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._jobs.put((start, reply))
        ok, value = reply.get()
        if not ok:
            self.release()
            raise value
        started: tuple[subprocess.Popen[bytes], tuple[int, int, int]] = value
        return started

    def release(self) -> None:
        """One opened port has been reaped; the last one lets the spawner thread end."""
        with self._lock:
            self._live -= 1
            if self._live == 0 and self._thread is not None:
                self._jobs.put(None)
                self._thread = None

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            start, reply = job
            try:
                reply.put((True, start()))
            except BaseException as exc:
                reply.put((False, exc))


SPAWNER = Spawner()


def raw_fds(popen: subprocess.Popen[bytes]) -> tuple[int, int, int]:
    """Popen's stdin, stdout and stderr as raw fds listed in `PARENT_FDS` (inside
    `_fds.FORK_GUARD.creating()`).

    Only raw fds are kept: the reader thread and send() do their own buffering.
    """
    assert popen.stdin is not None
    assert popen.stdout is not None
    assert popen.stderr is not None
    fds: list[int] = []
    try:
        for stream in (popen.stdin, popen.stdout, popen.stderr):
            fds.append(os.dup(stream.fileno()))
            PARENT_FDS.add(fds[-1])
    except BaseException:
        for fd in fds:
            close_fd(fd)
        raise
    for stream in (popen.stdin, popen.stdout, popen.stderr):
        stream.close()
    return fds[0], fds[1], fds[2]


def pickle_setup(
    handler: Callable[..., Any], args: tuple[Any, ...], codec: Codec, max_frame: int
) -> bytes:
    """What a ``"spawn"`` or ``"forkserver"`` child needs, dill-pickled (by value: closures)."""
    import dill

    try:
        setup: bytes = dill.dumps((handler, args, codec.name, max_frame), recurse=True)
    except Exception as exc:
        raise InvalidOption("handler", handler, f"picklable by dill with its args ({exc})") from exc
    return setup


@attrs.frozen
class Started:
    """A process just started for a port.

    Attributes:
        child: how to wait for it and learn of its exit.
        stdin_fd: the parent's end of its stdin pipe (listed in `PARENT_FDS`).
        stdout_fd: the parent's end of its stdout pipe.
        stderr_fd: the parent's end of its stderr pipe.
        on_reaped: call once the port has reaped it (releases what the start holds: the
            lifeline, the spawner thread, the fork server).
        abandon: call instead if no port adopts it: kills it, closes every fd, releases.
    """

    child: Child
    stdin_fd: int
    stdout_fd: int
    stderr_fd: int
    on_reaped: Callable[[], None]
    abandon: Callable[[], None]


def start_program(
    argv: list[str], env: Mapping[str, str] | None, cwd: str | os.PathLike[str] | None
) -> Started:
    """Start the program `argv` with `subprocess.Popen`, from the spawner thread."""
    popen, (stdin_fd, stdout_fd, stderr_fd) = SPAWNER.popen(argv, env=env, cwd=cwd)

    def abandon() -> None:
        popen.kill()
        popen.wait()
        for fd in (stdin_fd, stdout_fd, stderr_fd):
            close_fd(fd)
        SPAWNER.release()

    return Started(PopenChild(popen), stdin_fd, stdout_fd, stderr_fd, SPAWNER.release, abandon)


def spawn_argv() -> list[str]:
    """The command line of a ``"spawn"`` child: a fresh interpreter that imports only
    dspex_actors (multiprocess's own "spawn" would re-run the parent's ``__main__``, which
    breaks unguarded scripts) and reads its handler as the first frame."""
    boot = (
        f"import sys; sys.path[:0] = {sys.path!r}; "
        "from dspex_actors._ports._worker import spawn_entry; spawn_entry()"
    )
    return [sys.executable, "-c", boot]


def start_spawned() -> Started:
    """Start a ``"spawn"`` child; the caller writes its handler (`pickle_setup`) as a frame."""
    return start_program(spawn_argv(), None, None)


def start_forked(
    handler: Callable[..., Any], args: tuple[Any, ...], codec: Codec, max_frame: int, name: str
) -> Started:
    """Fork a ``"fork"`` child of this process serving `handler`."""
    import multiprocess
    from multiprocess.connection import Connection

    ctx = multiprocess.get_context("fork")
    # Serialised with every other fork of ours: a child forked meanwhile would inherit
    # this one's child-side pipe ends (and its sentinel's write end) and keep them open,
    # so this child's EOF and exit event would never come while that one lives.
    with _fds.FORK_GUARD.forking():
        in_r, in_w = os.pipe()  # parent -> child frames
        out_r, out_w = os.pipe()  # child -> parent frames
        err_r, err_w = os.pipe()  # child's stdout and stderr
        life_r, life_w = os.pipe()  # never written: EOF in the child = the parent died
        parent_fds = (in_w, out_r, err_r, life_w)
        child_ends = [Connection(fd) for fd in (in_r, out_w, err_w, life_r)]
        PARENT_FDS.update(parent_fds)
        try:
            process = ctx.Process(
                target=fork_child_main,
                args=(handler, args, *child_ends, codec.name, max_frame, os.getpid()),
                name=f"dspex-port-{name}",
                daemon=False,
            )
            process.start()
        except BaseException:
            for fd in parent_fds:
                close_fd(fd)
            raise
        finally:
            for conn in child_ends:
                conn.close()

    def forget_fds() -> None:
        close_fd(life_w)

    def abandon() -> None:
        process.kill()
        process.join()
        for fd in parent_fds:
            close_fd(fd)

    return Started(ProcessChild(process), in_w, out_r, err_r, forget_fds, abandon)


def start_forkserver_worker(setup: bytes, timeout: float) -> Started:
    """Have the fork server fork a worker serving `setup` (`pickle_setup`'s bytes)."""
    return _through_forkserver(lambda server: server.start_worker(setup, timeout))


def start_forkserver_program(
    argv: list[str],
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
    timeout: float,
) -> Started:
    """Have the fork server start the program `argv` (this process forks nothing)."""
    return _through_forkserver(lambda server: server.start_program(argv, env, cwd, timeout))


def _through_forkserver(start: Callable[[Any], tuple[Any, tuple[int, int, int, int]]]) -> Started:
    server = _forkserver.FORK_SERVER
    # Held until the port has reaped the process: the server reports its exit.
    server.acquire()
    try:
        child, (in_w, out_r, err_r, life_w) = start(server)
    except BaseException:
        server.release()
        raise

    def forget() -> None:
        close_fd(life_w)
        server.release()

    def abandon() -> None:
        abandon_worker(child, (in_w, out_r, err_r, life_w))
        server.release()

    return Started(child, in_w, out_r, err_r, forget, abandon)


def _reset_spawner_in_child() -> None:
    # A forked child does not have the parent's spawner thread: it starts its own if needed.
    global SPAWNER
    SPAWNER = Spawner()


on_fork_in_child(_reset_spawner_in_child)
