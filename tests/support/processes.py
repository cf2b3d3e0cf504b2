"""Shared helpers for the tests that watch real OS processes (resilience, orphans, exit).

- `Seen`: a process identity (pid + start time), so a recycled pid is never mistaken for it.
- `descendants()`: every live (non-zombie) descendant of this process.
- `leftovers(seen)`: which of the processes seen are still running (wherever they were
  reparented); `kill_all(seen)` SIGKILLs them.
- `Script`: a Python script run as a subprocess, with a bounded `read_line`, and `kill_tree`
  for cleanup (the script, every descendant, and every pid it reported).
- `wait_gone(pid, timeout)`: wait (bounded) for a process to exit, without reaping it.
- `forkserver_workers(server)`: the fork server's worker children, its zygote left out
  (`wait_forkserver_workers` waits until each child is known).
- `stall_interpreter_starts(...)`: make new Python interpreters stall in their start-up.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import attrs
import psutil

from dspex_actors.testing import wait_for

PROGRAMS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "programs")


@attrs.frozen
class Seen:
    """One process, by pid and start time."""

    pid: int
    started: float

    @classmethod
    def of(cls, process: psutil.Process) -> Seen | None:
        try:
            return cls(process.pid, process.create_time())
        except psutil.Error:
            return None

    @classmethod
    def pid_of(cls, pid: int) -> Seen | None:
        try:
            return cls.of(psutil.Process(pid))
        except psutil.Error:
            return None

    def running(self) -> bool:
        """Still the same process, and not a zombie."""
        try:
            process = psutil.Process(self.pid)
            return (
                process.create_time() == self.started and process.status() != psutil.STATUS_ZOMBIE
            )
        except psutil.Error:
            return False

    def kill(self) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)


def descendants(root: psutil.Process | None = None) -> list[psutil.Process]:
    """The live descendants of `root` (default: this process), zombies left out."""
    try:
        kids = (root or psutil.Process()).children(recursive=True)
    except psutil.Error:
        return []
    alive = []
    for kid in kids:
        try:
            if kid.status() != psutil.STATUS_ZOMBIE:
                alive.append(kid)
        except psutil.Error:
            continue
    return alive


def forkserver_workers(server: int) -> frozenset[int] | None:
    """The live children of the fork server `server` that are workers: its zygote (the
    worker it forks ahead of a request) left out. None while a child is neither a worker
    this process knows nor the zygote the server reported (its report is on its way): poll
    it with `wait_for`."""
    from dspex_actors._ports._forkserver import FORK_SERVER

    running = FORK_SERVER._server
    known = set(running._workers) if running is not None else set()
    zygote = FORK_SERVER.zygote_pid
    kids = set()
    with contextlib.suppress(psutil.Error):
        for kid in psutil.Process(server).children():
            with contextlib.suppress(psutil.Error):
                if kid.status() != psutil.STATUS_ZOMBIE:
                    kids.add(kid.pid)
    if not kids <= known | {zygote}:
        return None
    return frozenset(kids - {zygote})


def wait_forkserver_workers(server: int, timeout: float = 10.0) -> frozenset[int]:
    """`forkserver_workers(server)`, once every child of the server is known (bounded)."""
    found: list[frozenset[int]] = []

    def known() -> bool:
        workers = forkserver_workers(server)
        if workers is not None:
            found.append(workers)
        return workers is not None

    wait_for(known, timeout=timeout)
    return found[-1]


def leftovers(seen: set[Seen]) -> list[Seen]:
    """The processes of `seen` still running, wherever they were reparented."""
    return sorted(s for s in seen if s.running())


def kill_all(seen: set[Seen]) -> None:
    for s in seen:
        s.kill()


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for process `pid` to exit (any parent; never reaps it, so a
    child the library waits for stays the library's); True if it did. Uses a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


class Script:
    """A Python script in a subprocess (stdout and stderr piped), cleaned up by `kill_tree`."""

    def __init__(self, source: str, *args: str, pass_fds: tuple[int, ...] = ()) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", source, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=pass_fds,
        )
        self.reported: set[Seen] = set()
        self._out = bytearray()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self, timeout: float) -> str:
        """The next line of the script's stdout, waited for at most `timeout` seconds.

        Raises:
            AssertionError: no full line in time, or the script ended first.
        """
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._out:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"no line from the script within {timeout}s"
                if sel.select(remaining):
                    chunk = os.read(fd, 65536)
                    assert chunk, f"the script ended without a line (status {self.proc.poll()})"
                    self._out += chunk
        line, _, rest = bytes(self._out).partition(b"\n")
        self._out = bytearray(rest)
        return line.decode()

    def report(self, pids: list[int]) -> None:
        """Remember processes the script reported, to kill them whatever happens."""
        for pid in pids:
            seen = Seen.pid_of(pid)
            if seen is not None:
                self.reported.add(seen)

    def wait(self, timeout: float) -> int | None:
        """The exit status, or None if the script is still running after `timeout` s."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def rest_of_output(self, timeout: float = 5.0) -> tuple[str, str]:
        """What is left on stdout and stderr: read until EOF on both, or `timeout` seconds (a
        leftover process may still hold a pipe)."""
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        got = {self.proc.stdout.fileno(): self._out, self.proc.stderr.fileno(): bytearray()}
        self._out = bytearray()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            for fd in got:
                sel.register(fd, selectors.EVENT_READ)
            while sel.get_map() and (remaining := deadline - time.monotonic()) > 0:
                for key, _ in sel.select(remaining):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        got[key.fd] += chunk
                    else:
                        sel.unregister(key.fd)
        out, err = got.values()
        return out.decode(errors="replace"), err.decode(errors="replace")

    def kill_tree(self) -> None:
        """SIGKILL the script, its descendants and every process it reported; reap it."""
        victims: set[Seen] = set()
        with contextlib.suppress(psutil.Error):
            script = psutil.Process(self.pid)
            victims = {s for s in map(Seen.of, [script, *descendants(script)]) if s}
        kill_all(victims | self.reported)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


STALLING_SITECUSTOMIZE = """
import os, time
_stall = os.environ.get("DSPEX_TEST_STALL")
_deadline = time.monotonic() + 20
while _stall and os.path.exists(_stall) and time.monotonic() < _deadline:
    time.sleep(0.01)  # sleep-ok: a stalled interpreter start, until the test lets it go
"""


def stall_interpreter_starts(directory: str, setenv: Callable[[str, str], None]) -> str:
    """Make every Python interpreter started from now on (with this environment) stall in
    its start-up, before running any code of its own, until the returned file is removed (or
    for 20 s). `setenv` is `monkeypatch.setenv`, so the environment is restored after."""
    stall = os.path.join(directory, "stall")
    with open(stall, "w"):
        pass
    with open(os.path.join(directory, "sitecustomize.py"), "w") as f:
        f.write(STALLING_SITECUSTOMIZE)
    setenv("PYTHONPATH", directory)
    setenv("DSPEX_TEST_STALL", stall)
    return stall
