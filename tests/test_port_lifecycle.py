"""How a port ends: its process dying (seen by a thread owner, an actor owner, or while a
detached grandchild still holds its stdout), `close` (graceful first, then the whole process
group, bounded even when the process cannot be reaped), and orphans after a SIGKILLed parent.

Every child is real: a ``sys.executable -c`` program or a `Port.spawn` handler.

White-box parts: one test holds the owner inside a stalled send (it watches the port's send
lock and hands the port to the sending thread with `_reclaim`), and one makes a SIGKILL do
nothing and shortens the reap limit (`dspex_actors._ports._port`), since a process in
uninterruptible sleep cannot be made on demand.
"""

from __future__ import annotations

import fcntl
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import psutil
import pytest

import dspex_actors as da
from dspex_actors import Port, PortClosed, PortExited
from dspex_actors._ports import _port as port_module
from dspex_actors._ports._framing import JSON_CODEC, encode_frame
from dspex_actors.testing import wait_for

from support.ports import (
    DETACH_IO,
    ECHO,
    EXITS,
    FRAME_IO,
    GRANDCHILD,
    STALL,
    Grandchildren,
    Ports,
    gone,
    py,
)

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)  # Linux's (Python 3.10+ names it)
WAIT = 30.0

STUBBORN = (
    FRAME_IO
    + """
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = os.fork()
if child == 0:
    time.sleep(30)  # sleep-ok: a stalled child program
    os._exit(0)
write(str(child).encode())
time.sleep(30)  # sleep-ok: a stalled child program
"""
)

# Writes the grandchild's pid and two more frames, then exits with status 5.
DETACH_AND_EXIT = (
    f"GRANDCHILD = {GRANDCHILD!r}\n"
    + DETACH_IO
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
    + DETACH_IO
    + """
write(detach())
read()
sys.exit(4)
"""
)

DETACH_THEN_STALL = (
    f"GRANDCHILD = {GRANDCHILD!r}\n"
    + DETACH_IO
    + """
import time
write(detach())
time.sleep(60)  # sleep-ok: it never reads stdin (its grandchild holds stdin too)
"""
)

IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "time.sleep(30)"  # sleep-ok: a child that stalls and ignores SIGTERM
)


def start_thread(fn: Callable[[], Any], name: str) -> tuple[threading.Thread, list[Any]]:
    """Run `fn` in a new thread; the list gets its result or the exception it raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread, out


# --- the process dies ----------------------------------------------------------------------------


def test_a_thread_owner_learns_of_death_from_recv_and_on_exit(ports: Ports) -> None:
    exits: queue.SimpleQueue[PortExited] = queue.SimpleQueue()
    port = ports.open(ECHO, on_exit=exits.put)
    os.kill(port.os_pid, signal.SIGKILL)
    event = exits.get(timeout=10)
    assert event.port is port
    assert event.status == -signal.SIGKILL
    with pytest.raises(da.PortClosed, match="status -9"):
        port.recv(timeout=10)
    with pytest.raises(da.PortClosed):
        port.send("anyone there?")
    assert port.info() is None
    assert gone(port.os_pid)


def test_an_actor_owner_gets_a_port_exited_message() -> None:
    seen: queue.SimpleQueue[Any] = queue.SimpleQueue()

    class Owner(da.Actor):
        def on_start(self) -> None:
            self.port = Port.open(py(EXITS))

        def on_receive(self, message: Any) -> Any:
            seen.put(message)
            return None

    ref = Owner.start()
    try:
        message = seen.get(timeout=10)
        assert isinstance(message, PortExited)
        assert message.status == 3
    finally:
        ref.stop()


# --- a detached grandchild holding stdout does not hide the exit -----------------------------


def test_frames_written_before_exit_arrive_then_port_closed_though_a_grandchild_holds_stdout(
    ports: Ports, grandchildren: Grandchildren
) -> None:
    """The exit is known before `recv` runs; stdout never reaches EOF (the grandchild
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


def test_a_request_whose_process_exits_while_a_grandchild_holds_stdout_is_port_closed(
    ports: Ports, grandchildren: Grandchildren
) -> None:
    """The owner is waiting for a reply when the process exits: the exit wakes it
    (`PortClosed`), it does not wait for its 30 s timeout (`CallTimeout`)."""
    port = Port.open([sys.executable, "-c", DETACH_THEN_DIE_ON_REQUEST])
    ports.append(port)
    grandchildren.pids.append(port.recv(timeout=30))
    with pytest.raises(PortClosed, match="status 4"):
        port.request({"op": "anything"}, timeout=30)
    assert port.exit_status == 4


# --- close ---------------------------------------------------------------------------------------


def test_close_is_graceful_first_the_child_exits_on_stdin_eof(ports: Ports) -> None:
    port = ports.open(ECHO)
    port.close(timeout=10)
    assert port.exit_status == 0
    assert gone(port.os_pid)
    port.close()  # idempotent


def test_close_escalates_to_sigkill_of_the_whole_process_group(ports: Ports) -> None:
    port = ports.open(STUBBORN)
    grandchild = int(port.recv(timeout=10))
    assert psutil.pid_exists(grandchild)
    port.close(timeout=0.1)
    assert port.exit_status == -signal.SIGKILL
    assert gone(port.os_pid)
    wait_for(lambda: gone(grandchild), timeout=5)


def test_a_stalled_child_times_out_and_a_blocked_send_gives_up(ports: Ports) -> None:
    port = ports.open(STALL)
    with pytest.raises(da.CallTimeout):
        port.request({"n": 1}, timeout=0.05)
    with pytest.raises(da.CallTimeout):
        port.send("x" * 1_000_000, timeout=0.05)  # the pipe fills; nobody reads it
    # Half a frame is in the pipe: the port killed its process rather than stay out of sync.
    assert port.wait_exit(10) == -signal.SIGKILL
    assert psutil.Process().children() == [] or all(
        c.pid != port.os_pid for c in psutil.Process().children()
    )


def test_a_send_that_wrote_nothing_by_its_timeout_leaves_the_port_usable(ports: Ports) -> None:
    """The pipe is full before the send: nothing of its frame is written, so the stream is
    still in sync and the process is not killed for it (it was)."""
    port = ports.open(STALL)
    assert port._stdin_fd is not None
    size = fcntl.fcntl(port._stdin_fd, F_GETPIPE_SZ)
    port.send("x" * (size - 4 - 2), timeout=WAIT)  # a frame as big as the pipe: it fills it
    with pytest.raises(da.CallTimeout):
        port.send("y", timeout=0.05)
    with pytest.raises(da.CallTimeout):  # not killed (a SIGKILLed one is reaped at once)
        port.wait_exit(0.5)


def test_a_late_write_gives_up_once_its_process_has_exited(
    ports: Ports, grandchildren: Grandchildren
) -> None:
    """A frame finished late (`_write`'s `late`, the single bridge's) to a process whose stdin
    a detached grandchild also holds: the write would wait forever, and held the send lock,
    so the port never saw its process exit. It gives up once the exit is known."""
    port = Port.open([sys.executable, "-c", DETACH_THEN_STALL])
    ports.append(port)
    grandchildren.pids.append(port.recv(timeout=WAIT))
    late: list[threading.Thread] = []

    def finish_late(finish: Callable[[], None]) -> None:
        thread = threading.Thread(target=finish, name="late-write", daemon=True)
        thread.start()
        late.append(thread)

    frame = encode_frame(JSON_CODEC.encode("x" * (4 << 20)))  # far more than a pipe holds
    with pytest.raises(da.CallTimeout):
        port._write(frame, 0.05, finish_late)
    assert port.info() is not None  # the process lives: its frame is finished late
    port.kill()
    assert port.wait_exit(WAIT) == -signal.SIGKILL  # the exit is reported
    late[0].join(WAIT)
    assert not late[0].is_alive()


def test_a_send_with_no_timeout_gives_up_once_its_process_has_exited(
    ports: Ports, grandchildren: Grandchildren
) -> None:
    """The same with an ordinary send that has no deadline: it held the send lock, waiting
    for a pipe the grandchild keeps open, and the port never saw its process exit."""
    port = Port.open([sys.executable, "-c", DETACH_THEN_STALL])
    ports.append(port)
    grandchildren.pids.append(port.recv(timeout=WAIT))
    outcome: list[BaseException] = []

    def send() -> None:
        try:
            port.send("x" * (4 << 20), timeout=None)  # far more than a pipe holds
        except BaseException as exc:
            outcome.append(exc)

    sender = threading.Thread(target=send, name="blocked-send")
    port._reclaim(sender)  # the sender is the owner
    sender.start()
    try:
        assert wait_for(port._send_lock.locked, timeout=WAIT)
        port.kill()
        assert port.wait_exit(WAIT) == -signal.SIGKILL  # the exit is reported
    finally:
        sender.join(WAIT)
    assert not sender.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], PortClosed)


def test_close_stops_a_process_that_stalls_a_send_without_timeout() -> None:
    """`close(timeout)` from another thread is bounded even while the owner is stuck
    in ``send(obj, timeout=None)`` to a process that never reads stdin."""
    port = Port.open([sys.executable, "-c", STALL])
    port_ready = threading.Event()

    def send_forever() -> None:
        port_ready.wait(10)
        port.send("x" * (1 << 20), timeout=None)  # far more than a pipe holds

    sender, sender_out = start_thread(send_forever, "stalled-sender")
    port._reclaim(sender)  # the sender thread is the owner
    port_ready.set()
    closer: threading.Thread | None = None
    try:
        # 1 MiB never fits in the pipe: once the send holds its lock, it is stuck.
        assert wait_for(port._send_lock.locked, timeout=10)
        closer, _ = start_thread(lambda: port.close(timeout=0.5), "closer")
        closer.join(15)
        assert not closer.is_alive(), "close() hung behind a stalled send"
        assert port.info() is None
        assert port.exit_status is not None
        sender.join(10)
        assert not sender.is_alive()
        assert len(sender_out) == 1
        assert isinstance(sender_out[0], PortClosed)
    finally:
        port.kill()  # unblocks a stuck send (EPIPE), hence a stuck close
        sender.join(10)
        if closer is not None:
            closer.join(10)
        port.close(1.0)


def test_close_gives_up_waiting_when_a_killed_process_is_never_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`close` is bounded even after SIGKILL (a process in uninterruptible sleep ignores
    it until its I/O ends). Simulated by a SIGKILL that does nothing and a short reap limit."""
    port = Port.open([sys.executable, "-c", IGNORES_SIGTERM])
    real_kill = Port.kill
    monkeypatch.setattr(port_module, "_REAP_LIMIT", 0.2)
    monkeypatch.setattr(port_module, "_KILL_GRACE", 0.1)
    monkeypatch.setattr(Port, "kill", lambda self: None)
    try:
        closer = threading.Thread(target=lambda: port.close(timeout=0.1), name="closer")
        closer.start()
        closer.join(10)
        assert not closer.is_alive(), "close() waited forever for a process that never exits"
        assert port.exit_status is None  # it really is still running: close gave up waiting
    finally:
        real_kill(port)
        port.close(timeout=5)
    assert port.exit_status is not None


# --- orphans -------------------------------------------------------------------------------------


ORPHAN_PARENT = """
import sys, time
from dspex_actors import Port
if __name__ == "__main__":
    a = Port.open([sys.executable, "-c", "import time; time.sleep(60)"])  # sleep-ok: stall
    b = Port.spawn(lambda request: request)
    c = Port.spawn(lambda request: request, start_method="fork")
    print(a.os_pid, b.os_pid, c.os_pid, flush=True)
    time.sleep(60)  # sleep-ok: a stalled child program
"""


def test_children_exit_within_a_second_when_their_parent_is_sigkilled() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3
        children = [psutil.Process(pid) for pid in pids]
        assert all(c.is_running() for c in children)
        parent.kill()
        parent.wait(10)
        # Bounded wait: within 1 s every worker is gone (or a zombie awaiting its new parent).
        wait_for(lambda: all(gone(pid) for pid in pids), timeout=1.0)
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
