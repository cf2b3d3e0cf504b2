"""Ports and `fork`: a child forked while another port is being set up inherits none of that
port's pipes, and a `fork` worker can start ports of its own.

Every child is real: a ``sys.executable -c`` program or a `Port.spawn` handler.

White-box: to fork inside the window where a port's pipes exist but its port is not built yet,
the tests wrap `os.fork` or the launcher's `PopenChild` (`dspex_actors._ports._launch`); no
public API can stop a port's start half way.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Any

import pytest

from dspex_actors import CallTimeout, Port, PortClosed
from dspex_actors._ports import _launch

from support.ports import READ_TO_EOF, STALL, Ports, echo


def test_a_fork_worker_started_during_another_ones_fork_does_not_hide_its_death(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two `fork` ports started at once (a pool starts its workers concurrently): their forks
    are serialised, so B never inherits A's child-side pipe ends (nor the write end of A's
    process sentinel), and A's SIGKILL is reported while B lives.

    B is started from inside A's fork, after A's pipes exist; it is given a second to fork
    first (it cannot: it waits for A).
    """
    real_fork = os.fork
    first = threading.current_thread()
    b_forked = threading.Event()
    ports: list[Port] = []
    errors: list[BaseException] = []
    started: list[threading.Thread] = []

    def start_b() -> None:
        try:
            ports.append(Port.spawn(echo, start_method="fork", owner=first))
        except BaseException as exc:
            errors.append(exc)

    def fork() -> int:
        if threading.current_thread() is first and not started:
            # A's pipes exist, its fork has not happened: start B now and give it a moment.
            thread = threading.Thread(target=start_b, name="second-fork")
            started.append(thread)
            thread.start()
            b_forked.wait(1.0)  # never set once forks are serialised: B waits for A
        pid = real_fork()
        if pid != 0 and threading.current_thread() is not first:
            b_forked.set()
        return pid

    monkeypatch.setattr(os, "fork", fork)
    a = Port.spawn(echo, start_method="fork")
    try:
        started[0].join(30)
        assert not started[0].is_alive()
        assert not errors
        assert len(ports) == 1
        b = ports[0]
        assert a.request("a", timeout=10) == "a"
        assert b.request("b", timeout=10) == "b"
        a.kill()
        try:
            status = a.wait_exit(5.0)
        except CallTimeout:
            status = None
        assert status == -9, "A's death was never reported while B was alive"
        with pytest.raises(PortClosed):
            a.request("after", timeout=5)
    finally:
        for port in ports:  # B first: it may hold A's pipes open
            port.kill()
            port.close(1.0)
        a.kill()
        a.close(1.0)


def test_a_fork_port_started_while_an_open_port_starts_does_not_inherit_its_stdin(
    monkeypatch: pytest.MonkeyPatch, ports: Ports
) -> None:
    """A `fork` port's child forked after `Port.open`'s program started, but before its
    port was built, must not keep that program's stdin open: else closing it never reaches
    EOF and `close` has to SIGTERM a well-behaved program.

    The fork is forced into that window: building the `PopenChild` (the step between the
    program's start and the port's construction) first spawns a `fork` port.
    """
    real_child = _launch.PopenChild

    def child_after_a_fork(popen: Any) -> Any:
        monkeypatch.setattr(_launch, "PopenChild", real_child)  # only the first one
        ports.append(Port.spawn(echo, start_method="fork"))
        return real_child(popen)

    monkeypatch.setattr(_launch, "PopenChild", child_after_a_fork)
    port = Port.open([sys.executable, "-c", READ_TO_EOF])
    ports.append(port)
    forked = ports[0]
    assert forked.request("still serving", timeout=30) == "still serving"
    # The graceful step alone must end it: its stdin reaches EOF, so it exits with status 0
    # (a leaked write end would keep it reading until close() SIGTERMs it: status -15).
    port.close(timeout=10)
    assert port.exit_status == 0


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/<pid>/fd")
def test_a_fork_port_child_holds_no_pipe_end_of_an_open_port(
    monkeypatch: pytest.MonkeyPatch, ports: Ports
) -> None:
    """The same window, checked on the fds themselves: the `fork` child has none of
    the open port's pipes (stdin, stdout, stderr) open."""
    real_child = _launch.PopenChild

    def child_after_a_fork(popen: Any) -> Any:
        monkeypatch.setattr(_launch, "PopenChild", real_child)
        ports.append(Port.spawn(echo, start_method="fork"))
        return real_child(popen)

    monkeypatch.setattr(_launch, "PopenChild", child_after_a_fork)
    port = Port.open([sys.executable, "-c", READ_TO_EOF])
    ports.append(port)
    forked = ports[0]
    assert forked.request("ready", timeout=30) == "ready"
    program_pipes = _pipes_of(port.os_pid, (0, 1, 2))
    assert len(program_pipes) == 3
    assert not program_pipes & _pipes_of(forked.os_pid, None)


def _pipes_of(pid: int, fds: tuple[int, ...] | None) -> set[str]:
    """The pipe inodes (``pipe:[123]``) process `pid` has open on `fds` (None: all)."""
    base = f"/proc/{pid}/fd"
    names = [str(fd) for fd in fds] if fds is not None else os.listdir(base)
    pipes = set()
    for name in names:
        with contextlib.suppress(OSError):
            target = os.readlink(f"{base}/{name}")
            if target.startswith("pipe:"):
                pipes.add(target)
    return pipes


def open_and_spawn_nested_ports(request: Any) -> list[Any]:
    """A `fork` worker's handler that itself starts ports (runs in the child)."""
    opened = Port.open([sys.executable, "-c", "pass"])
    status = opened.wait_exit(10)
    opened.close(1.0)
    spawned = Port.spawn(echo, start_method="fork")
    reply = spawned.request(request, timeout=10)
    spawned.close(1.0)
    return [status, reply]


def test_a_fork_worker_can_start_ports_of_its_own() -> None:
    """The child of a `fork` port starts the spawner (whose thread fork does not copy) and the
    fork guard afresh: a handler that opens a port of its own gets it."""
    busy = Port.open([sys.executable, "-c", STALL])  # the parent's spawner thread is running
    worker = Port.spawn(open_and_spawn_nested_ports, start_method="fork")
    try:
        assert worker.request("nested", timeout=20) == [0, "nested"]
    finally:
        worker.kill()
        worker.close(1.0)
        busy.kill()
        busy.close(1.0)
