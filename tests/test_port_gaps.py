"""Robustness gaps closed in the ports layer (issue 5, DESIGN §3.5): ids pg_01...

- pg_01..pg_04: a worker exits while a detached grandchild (its own session, outside the
  port's process group) still holds the port's stdout: the owner gets `PortClosed` (the pool:
  `WorkerCrashed`) on the exit event, after every frame written before the exit, instead of
  `CallTimeout` when its timeout runs out.
- pg_05: `Port.spawn`'s setup frame is written with a bounded timeout.
- pg_06..pg_07: a payload the 4-byte prefix cannot express is a `ProtocolError`, and a
  `max_frame` above it is refused.
- pg_08: `Port.open`'s pipe ends never leak into a `fork` port's child forked meanwhile.
- pg_10..pg_11: stdout is read without polling first (a reply already there costs one read),
  and a frame that arrives in parts still waits for the rest.
- pg_12: a reply far larger than a pipe holds is written in parts and read whole, both ways.

Every child is real (a ``sys.executable -c`` program or a `Port.spawn` handler).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psutil
import pytest

from dspex_actors import Port
from dspex_actors._errors import (
    CallTimeout,
    InvalidOption,
    PortClosed,
    ProtocolError,
    WorkerCrashed,
)
from dspex_actors._ports import _launch
from dspex_actors._ports._framing import encode_frame
from dspex_actors._ports._process_pool import ProcessPool
from dspex_actors.testing import wait_for

STALL = "import time; time.sleep(30)"  # sleep-ok: a stalled child program that never reads
GRANDCHILD = "import time; time.sleep(60)"  # sleep-ok: a detached grandchild holding stdout

_IO = """
import json, os, struct, subprocess, sys
r, w = sys.stdin.buffer, sys.stdout.buffer
def read():
    h = r.read(4)
    return None if len(h) < 4 else json.loads(r.read(struct.unpack(">I", h)[0]))
def write(value):
    data = json.dumps(value).encode()
    w.write(struct.pack(">I", len(data)) + data)
    w.flush()
def detach():
    # Its own session: outside the port's process group, so the port never signals it. It
    # inherits stdin, stdout and stderr.
    return subprocess.Popen([sys.executable, "-c", GRANDCHILD], start_new_session=True).pid
"""

# Writes the grandchild's pid and two more frames, then exits with status 5.
DETACH_AND_EXIT = (
    f"GRANDCHILD = {GRANDCHILD!r}\n"
    + _IO
    + """
write(detach())
write("one")
write("two")
sys.exit(5)
"""
)

# Writes the grandchild's pid, then exits (status 4) on the first request without answering.
DETACH_THEN_DIE_ON_REQUEST = (
    f"GRANDCHILD = {GRANDCHILD!r}\n"
    + _IO
    + """
write(detach())
read()
sys.exit(4)
"""
)

# A pool worker: the first request any worker of the pool sees (the marker file does not exist
# yet) detaches a grandchild, records its pid in the marker and exits; later ones are answered.
POOL_WORKER = (
    f"GRANDCHILD = {GRANDCHILD!r}\n"
    + _IO
    + """
marker = sys.argv[1]
while (msg := read()) is not None:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        write({"id": msg["id"], "double": msg["n"] * 2})
        continue
    os.write(fd, str(detach()).encode())
    os.close(fd)
    sys.exit(4)
"""
)

# Exits as soon as stdin reaches EOF (the graceful step of close()).
READ_TO_EOF = "import sys; sys.stdin.buffer.read()"


def echo(request: Any) -> Any:
    return request


class Grandchildren:
    """Kills the detached grandchildren a test's workers started (they are not our children)."""

    def __init__(self) -> None:
        self.pids: list[int] = []
        self.markers: list[Path] = []

    def kill(self) -> None:
        for marker in self.markers:
            with contextlib.suppress(FileNotFoundError, ValueError):
                self.pids.append(int(marker.read_text()))
        for pid in self.pids:
            # Not our child any more (its parent, the worker, has exited): init reaps it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def grandchildren() -> Iterator[Grandchildren]:
    g = Grandchildren()
    try:
        yield g
    finally:
        g.kill()


@pytest.fixture
def ports() -> Iterator[list[Port]]:
    opened: list[Port] = []
    try:
        yield opened
    finally:
        for port in opened:
            port.close(timeout=5)


# --- item 1: a grandchild holding stdout does not hide the worker's exit ---------------------


def test_pg_01_frames_written_before_exit_arrive_then_port_closed_though_a_grandchild_holds_stdout(
    ports: list[Port], grandchildren: Grandchildren
) -> None:
    """pg_01: the exit is known before `recv` runs; stdout never reaches EOF (the grandchild
    holds it). Every frame written before the exit is delivered, then `PortClosed`."""
    port = Port.open([sys.executable, "-c", DETACH_AND_EXIT])
    ports.append(port)
    assert port.wait_exit(30) == 5
    grandchildren.pids.append(port.recv(timeout=30))
    assert psutil.pid_exists(grandchildren.pids[0])  # stdout is still held open
    assert port.recv(timeout=30) == "one"
    assert port.recv(timeout=30) == "two"
    with pytest.raises(PortClosed, match="status 5"):
        port.recv(timeout=30)
    with pytest.raises(PortClosed):  # and stays closed
        port.recv(timeout=30)


def test_pg_02_a_request_whose_process_exits_while_a_grandchild_holds_stdout_is_port_closed(
    ports: list[Port], grandchildren: Grandchildren
) -> None:
    """pg_02: the owner is waiting for a reply when the process exits: the exit wakes it
    (`PortClosed`), it does not wait for its 30 s timeout (`CallTimeout`)."""
    port = Port.open([sys.executable, "-c", DETACH_THEN_DIE_ON_REQUEST])
    ports.append(port)
    grandchildren.pids.append(port.recv(timeout=30))
    with pytest.raises(PortClosed, match="status 4"):
        port.request({"op": "anything"}, timeout=30)
    assert port.exit_status == 4


def test_pg_03_a_pool_worker_exiting_mid_request_with_a_grandchild_on_stdout_is_worker_crashed(
    tmp_path: Path, grandchildren: Grandchildren
) -> None:
    """pg_03: `ProcessPool.call` raises `WorkerCrashed`, not `CallTimeout`."""
    marker = tmp_path / "grandchild-pid"
    grandchildren.markers.append(marker)
    pool = ProcessPool.start(argv=[sys.executable, "-c", POOL_WORKER, str(marker)], pool_size=1)
    try:
        with pytest.raises(WorkerCrashed) as info:
            pool.call({"n": 1}, timeout=30)
        assert info.value.exit_status == 4
        assert pool.call({"n": 2}, timeout=30)["double"] == 4  # the replacement serves
    finally:
        pool.stop(timeout=30)


def test_pg_04_with_retries_the_call_succeeds_on_another_worker(
    tmp_path: Path, grandchildren: Grandchildren
) -> None:
    """pg_04: the crash is a `WorkerCrashed`, so ``retries=1`` runs the request again."""
    marker = tmp_path / "grandchild-pid"
    grandchildren.markers.append(marker)
    pool = ProcessPool.start(
        argv=[sys.executable, "-c", POOL_WORKER, str(marker)], pool_size=2, retries=1
    )
    try:
        assert pool.call({"n": 21}, timeout=30)["double"] == 42
        assert marker.exists()  # a worker did crash first
        wait_for(lambda: pool.status().workers_removed == 1, timeout=10)
    finally:
        pool.stop(timeout=30)


# --- item 2: the setup frame of Port.spawn is bounded ------------------------------------------


def test_pg_05_spawn_gives_up_on_a_child_that_never_reads_its_setup_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pg_05: a 2 MiB handler (more than a pipe holds) sent to a child that never reads:
    `CallTimeout` after the setup timeout, and the child is killed and reaped."""
    monkeypatch.setattr(_launch, "SETUP_TIMEOUT", 0.5)
    monkeypatch.setattr(_launch, "spawn_argv", lambda: [sys.executable, "-c", STALL])
    blob = os.urandom(2 << 20)

    def handler(request: Any) -> Any:
        return len(blob)

    before = {child.pid for child in psutil.Process().children()}
    with pytest.raises(CallTimeout, match="spawn"):
        Port.spawn(handler)
    # Killed and reaped before spawn raised: no child of ours is left, not even a zombie.
    assert {child.pid for child in psutil.Process().children()} == before


# --- item 3: payloads the 4-byte prefix cannot express -----------------------------------------


class _HugePayload:
    """Claims 4 GiB without holding them: only its length is ever looked at."""

    def __len__(self) -> int:
        return 2**32

    def __radd__(self, other: bytes) -> bytes:
        raise AssertionError("a 4 GiB payload must be refused before it is concatenated")


def test_pg_06_a_payload_over_4_gib_is_a_protocol_error_not_a_struct_error() -> None:
    """pg_06: even when `max_frame` would allow it, the prefix holds at most 2**32 - 1."""
    payload = cast(bytes, _HugePayload())
    with pytest.raises(ProtocolError, match="4-byte"):
        encode_frame(payload, max_frame=2**40)
    with pytest.raises(ProtocolError, match="max_frame"):
        encode_frame(payload)  # the default max_frame refuses it first


def test_pg_07_a_max_frame_the_prefix_cannot_express_is_refused_before_anything_starts() -> None:
    """pg_07: ``max_frame`` above 2**32 - 1 is `InvalidOption` for `Port.open`, `Port.spawn` and
    `ProcessPool.start`; 2**32 - 1 itself is accepted."""
    with pytest.raises(InvalidOption, match="max_frame"):
        Port.open([sys.executable, "-c", STALL], max_frame=2**32)
    with pytest.raises(InvalidOption, match="max_frame"):
        Port.spawn(echo, max_frame=2**32)
    with pytest.raises(InvalidOption, match="max_frame"):
        ProcessPool.start(target=echo, pool_size=1, max_frame=2**32)
    port = Port.open([sys.executable, "-c", READ_TO_EOF], max_frame=2**32 - 1)
    port.close(timeout=10)
    assert port.exit_status == 0


# --- item 4: Port.open's pipes and a concurrent fork ---------------------------------------------


def test_pg_08_a_fork_port_started_while_an_open_port_starts_does_not_inherit_its_stdin(
    monkeypatch: pytest.MonkeyPatch, ports: list[Port]
) -> None:
    """pg_08: a `fork` port's child forked after `Port.open`'s program started, but before its
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
def test_pg_09_a_fork_port_child_holds_no_pipe_end_of_an_open_port(
    monkeypatch: pytest.MonkeyPatch, ports: list[Port]
) -> None:
    """pg_09: the same window, checked on the fds themselves: the `fork` child has none of
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


# --- the read path: no poll when the reply is there, a wait when it is not --------------------

# Writes the first 3 bytes of a 5-byte frame, waits for SIGUSR1, then writes the rest.
SPLIT_FRAME = """
import signal, struct, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
out = sys.stdout.buffer
frame = struct.pack(">I", 5) + b'"abc"'
out.write(frame[:3]); out.flush()
signal.sigwait([signal.SIGUSR1])
out.write(frame[3:]); out.flush()
sys.stdin.buffer.read()
"""


class PollSpy:
    """Wraps a port's poller: counts its polls and sets `polled` on each."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.polls = 0
        self.polled = threading.Event()

    def poll(self, ms: int) -> Any:
        self.polls += 1
        self.polled.set()
        return self.real.poll(ms)

    def register(self, *args: Any) -> None:
        self.real.register(*args)

    def unregister(self, fd: int) -> None:
        self.real.unregister(fd)


def test_pg_10_a_reply_already_in_the_pipe_is_read_without_polling(ports: list[Port]) -> None:
    port = Port.spawn(echo)
    ports.append(port)
    port.request("warm", timeout=30)
    spy = PollSpy(port._poller)
    port._poller = spy  # type: ignore[assignment]
    port.send([99, "hello"], timeout=5)  # the envelope request() sends: [id, request]
    fd = cast(int, port._stdout_fd)
    assert select.select([fd], [], [], 10)[0] == [fd], "no reply within 10 s"
    assert port.recv(timeout=5) == [99, True, "hello"]
    assert spy.polls == 0
    # With nothing there, recv waits (polls) and still times out as it should.
    with pytest.raises(CallTimeout):
        port.recv(timeout=0.05)
    assert spy.polls >= 1


def test_pg_11_a_frame_arriving_in_parts_is_waited_for_and_read_whole(ports: list[Port]) -> None:
    port = Port.open([sys.executable, "-c", SPLIT_FRAME])
    ports.append(port)
    spy = PollSpy(port._poller)
    port._poller = spy  # type: ignore[assignment]
    fd = cast(int, port._stdout_fd)
    assert select.select([fd], [], [], 10)[0] == [fd], "no first part within 10 s"

    def finish_the_frame() -> None:
        # recv has read the first part and found nothing more: now the rest may come.
        if spy.polled.wait(10):
            os.kill(port.os_pid, signal.SIGUSR1)

    helper = threading.Thread(target=finish_the_frame)
    helper.start()
    try:
        assert port.recv(timeout=10) == "abc"
    finally:
        spy.polled.set()
        helper.join(10)
    assert spy.polls >= 1


def repeat(request: Any) -> Any:
    text, times = request
    return text * times


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_pg_12_a_reply_larger_than_a_pipe_holds_arrives_whole(
    ports: list[Port], start_method: str
) -> None:
    port = Port.spawn(repeat, start_method=start_method, max_frame=8 << 20)
    ports.append(port)
    big = port.request(["ab", 1 << 20], timeout=30)  # 2 MiB of JSON string: many writes
    assert big == "ab" * (1 << 20)
    assert port.request(["c", 3], timeout=30) == "ccc"  # the stream is still in step
