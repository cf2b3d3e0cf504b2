"""Ports: no orphan outlives its owner, and no dead worker is waited out (issue "No single point
of failure, and no hang", item 4 and the `Port` parts of item 11).

Reproductions: each test fails on the code the issue was written against, for the reason the
issue gives. Owners that must die are separate scripts (run with a bounded wait and killed with
their whole process tree in cleanup); every other wait is on an event (a FIFO, a pidfd, the
port's exit).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import dspex_actors as da

from support.processes import Script, Seen, descendants, stall_interpreter_starts, wait_gone

# --- 4. every worker dies within a second of its SIGKILLed owner --------------------------------

# The worker's handler (or program) tells the test it is running through a FIFO, then holds
# the GIL: catastrophic backtracking in the C regex engine, which never releases it.
HOG = r"""
import os, re
def hog(request, fifo):
    fd = os.open(fifo, os.O_WRONLY)
    os.write(fd, b"x")
    os.close(fd)
    re.match(r"(a+)+$", "a" * 64 + "b")  # years: a Python thread in this process never runs
    return "never"
"""

OWNER = (
    HOG
    + f"HOG = {HOG!r}\n"
    + r"""
import sys
import dspex_actors as da
if __name__ == "__main__":
    kind, fifo = sys.argv[1], sys.argv[2]
    if kind.startswith("argv"):
        program = HOG + "\nhog(None, __import__('sys').argv[1])\n"
        method = "forkserver" if kind == "argv-forkserver" else None
        port = da.Port.open([sys.executable, "-c", program, fifo], start_method=method)
        print(port.os_pid, flush=True)
        port.recv(timeout=None)
    else:
        port = da.Port.spawn(hog, fifo, start_method=kind)
        print(port.os_pid, flush=True)
        port.request("go", timeout=None)
"""
)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["fork", "forkserver", "spawn", "argv", "argv-forkserver"])
def test_a_worker_holding_its_gil_dies_within_a_second_of_its_sigkilled_owner(
    kind: str, tmp_path: Path
) -> None:
    """Item 4: whatever holds the worker's GIL, the kernel ends it (parent-death signal, pidfd
    watched outside Python), not a Python thread that cannot run. The issue's requirement is
    "within 1 s of its owner"; the other kinds take 18-109 ms."""
    fifo = tmp_path / "in-handler"
    os.mkfifo(fifo)
    read_end = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    keep_open = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # no EOF before the worker writes
    owner = Script(OWNER, kind, str(fifo))
    try:
        worker = int(owner.read_line(timeout=60))
        owner.report([worker])
        ready, _, _ = select.select([read_end], [], [], 60)
        assert ready, "the worker's handler never started"
        assert os.read(read_end, 1) == b"x"
        os.kill(owner.pid, signal.SIGKILL)
        assert owner.wait(10) == -signal.SIGKILL
        assert wait_gone(worker, 1.0), (
            f"the {kind!r} worker {worker} is still running 1 s after its owner was SIGKILLed "
            f"(its handler holds the GIL)"
        )
    finally:
        owner.kill_tree()
        os.close(read_end)
        os.close(keep_open)


# --- 11. smaller: stderr floods, grandchildren, setup, ... --------------------------------------

FLOOD = r"""
import os
chunk = (b"x" * 63 + b"\n") * 1024  # 1024 short lines, 64 KiB
for _ in range(1024):  # 64 MiB, 1048576 lines
    os.write(2, chunk)
os.write(2, b"the end\n")
"""


@pytest.mark.timeout(120)
def test_a_worker_flooding_stderr_costs_its_parent_little_cpu_and_keeps_the_tail() -> None:
    """Item 11: a worker writing 64 MiB of short lines on stderr, with logging off (the
    default). Draining it in large reads and keeping only the tail when nobody logs it costs
    the parent about a thousand reads; line-by-line handling cost it a core (5.07 s CPU per
    5 s). The bound (0.5 s of CPU for the whole flood) is for a fixed amount of work, not a
    rate, and far above what large reads cost."""
    before = time.process_time()
    port = da.Port.open([sys.executable, "-S", "-c", FLOOD])
    try:
        assert port.wait_exit(90) == 0
    finally:
        port.close(timeout=5)
    used = time.process_time() - before
    assert port.stderr_tail()[-1] == "the end"
    assert used < 0.5, f"draining 64 MiB of stderr cost this process {used:.2f} s of CPU"


def dies_leaving_a_grandchild(request: Any, pidfile: str) -> Any:
    """Fork a grandchild that starts its own session and keeps every fd this worker had (its
    stdout, stderr, and for a "fork" worker its sentinel), then die mid-request."""
    child = os.fork()
    if child == 0:
        os.setsid()
        time.sleep(30)  # sleep-ok: a stalled grandchild (the test kills it)
        os._exit(0)
    with open(pidfile, "w") as f:
        f.write(str(child))
    os.kill(os.getpid(), signal.SIGKILL)
    return request


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_recv_ends_when_the_worker_dies_although_a_grandchild_holds_its_pipes(
    method: str, tmp_path: Path
) -> None:
    """Item 11: once the worker has died, `recv` ends with `PortClosed` (which a pool turns into
    `WorkerCrashed`, and retries), even while a grandchild in its own session holds the worker's
    stdout; it must not poll to its timeout (`CallTimeout`). Bound: half the timeout."""
    pidfile = tmp_path / "grandchild"
    port = da.Port.spawn(dies_leaving_a_grandchild, str(pidfile), start_method=method)
    try:
        started = time.monotonic()
        try:
            port.request("go", timeout=5)
        except da.PortClosed:
            pass
        except da.CallTimeout:
            pytest.fail(
                f"recv polled to its timeout ({time.monotonic() - started:.1f} s) although the "
                f"{method!r} worker had died: CallTimeout instead of PortClosed"
            )
        else:
            pytest.fail("the worker answered; it should have died")
        took = time.monotonic() - started
        assert took < 2.5, f"the worker's death took {took:.1f} s to end recv"
    finally:
        if pidfile.exists():
            grandchild = Seen.pid_of(int(pidfile.read_text()))
            if grandchild is not None:
                grandchild.kill()
        port.kill()
        port.close(timeout=10)


def echo_with(request: Any, payload: bytes) -> Any:
    return request


def test_port_spawn_gives_up_on_a_stalled_child_within_its_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 11: `Port.spawn`'s setup frame (1 MiB here, more than a pipe holds) is written to a
    child whose interpreter stalls before reading it. The caller bounds the whole start with
    `timeout=` (a new option): `CallTimeout` within it, the child killed and reaped. Today the
    write waits a fixed 30 s that no caller can shorten."""
    stall = stall_interpreter_starts(str(tmp_path), monkeypatch.setenv)
    try:
        started = time.monotonic()
        with pytest.raises(da.CallTimeout):
            da.Port.spawn(echo_with, b"x" * (1 << 20), start_method="spawn", timeout=1.0)
        took = time.monotonic() - started
        assert took < 3.0, f"Port.spawn(timeout=1.0) gave up after {took:.1f} s"
        assert descendants() == []
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stall)
