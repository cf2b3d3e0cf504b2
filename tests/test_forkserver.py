"""The fork server start method: ports, pools and programs whose processes a small
single-threaded server forks, its recovery from SIGKILL, and orphans after the parent dies.

``Port.spawn(..., start_method="forkserver")`` forks each worker from one server process owned
by its users (``Port.open`` can have the server start a program too). Every process here is
real: the server, its workers, and parent processes SIGKILLed with their pools.

White-box: the fork server has no public API of its own, so these tests import its modules
(`dspex_actors._ports._forkserver`, `_fds`, `_launch`, and in child scripts
`_forkserver_server`): `FORK_SERVER` to find the server's pid and count its users, the fork
registry (`_fds.PARENT_FDS`, `_fds.FORK_GUARD`) to check what a fork inherits, and the
launcher's and the server's internals to interrupt a start half way, stall the server, or
drive its state machine by hand.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

import dspex_actors as da
from dspex_actors import InvalidOption, Port, PortExited, PortSpec, ProcessPool
from dspex_actors._ports import _fds, _forkserver, _launch
from dspex_actors._ports._forkserver_server import ZYGOTE
from dspex_actors.testing import wait_for

from support.ports import echo, gone
from support.processes import forkserver_workers, wait_forkserver_workers

FORK_SERVER = _forkserver.FORK_SERVER
FS = "forkserver"


def double(request: Any) -> Any:
    if request == "boom":
        raise ValueError("no booms")
    if request == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    return request * 2


def running_server() -> int | None:
    """The fork server's pid, or None: read afresh each time (mypy must not narrow it)."""
    return FORK_SERVER.pid


def server_pid() -> int:
    pid = FORK_SERVER.pid
    assert pid is not None
    return pid


def settled(pool: ProcessPool, size: int) -> bool:
    status = pool.status()
    return status.idle == size and status.busy == 0 and status.initializing == 0


@pytest.fixture
def ports() -> Iterator[list[Port]]:
    opened: list[Port] = []
    try:
        yield opened
    finally:
        for port in opened:
            port.kill()
            port.close(timeout=10)


@pytest.fixture
def pools() -> Iterator[list[ProcessPool]]:
    started: list[ProcessPool] = []
    try:
        yield started
    finally:
        for pool in started:
            if pool.is_alive():
                pool.stop(timeout=30)


def start_pool(pools: list[ProcessPool], size: int, **options: Any) -> ProcessPool:
    pool = ProcessPool.start(target=double, pool_size=size, start_method=FS, **options)
    pools.append(pool)
    wait_for(lambda: settled(pool, size), timeout=30)
    return pool


# --- ports ------------------------------------------------------------------------------------


def test_a_forkserver_port_answers_requests_and_closures_cross(ports: list[Port]) -> None:
    offset = 100
    port = Port.spawn(lambda request, k: request * k + offset, 3, start_method=FS)
    ports.append(port)
    assert [port.request(n, timeout=30) for n in range(4)] == [100, 103, 106, 109]
    # The worker is the server's child, not ours.
    assert psutil.Process(port.os_pid).ppid() == server_pid()


def test_a_raising_handler_is_remote_error_and_the_port_stays_usable(
    ports: list[Port],
) -> None:
    port = Port.spawn(double, start_method=FS)
    ports.append(port)
    with pytest.raises(da.RemoteError, match="no booms") as info:
        port.request("boom", timeout=30)
    assert info.value.kind == "ValueError"
    assert port.request(21, timeout=30) == 42


def test_exit_status_is_0_after_close_and_minus_9_after_sigkill() -> None:
    closed = Port.spawn(echo, start_method=FS)
    killed = Port.spawn(echo, start_method=FS)
    try:
        assert closed.request("up", timeout=30) == "up"
        assert killed.request("up", timeout=30) == "up"
        closed.close(timeout=10)
        assert closed.exit_status == 0
        os.kill(killed.os_pid, signal.SIGKILL)
        assert killed.wait_exit(10) == -signal.SIGKILL
        with pytest.raises(da.PortClosed):
            killed.request("again", timeout=10)
    finally:
        killed.close(timeout=10)
        closed.close(timeout=10)


def test_an_actor_owner_gets_port_exited_when_its_worker_dies() -> None:
    seen: queue.SimpleQueue[Any] = queue.SimpleQueue()

    class Owner(da.Actor):
        def on_start(self) -> None:
            self.port = Port.spawn(echo, start_method=FS)

        def pid(self) -> int:
            return self.port.os_pid

        def on_receive(self, message: Any) -> Any:
            seen.put(message)
            return None

        def on_stop(self) -> None:
            self.port.close(timeout=10)

    ref = Owner.start()
    try:
        os.kill(ref.proxy().pid().get(timeout=10), signal.SIGKILL)
        message = seen.get(timeout=10)
        assert isinstance(message, PortExited)
        assert message.status == -signal.SIGKILL
    finally:
        ref.stop()


def test_two_ports_share_one_server_which_stops_with_the_last_user() -> None:
    first = Port.spawn(echo, start_method=FS)
    try:
        second = Port.spawn(echo, start_method=FS)
        try:
            server = server_pid()
            assert FORK_SERVER.users == 2
            workers = wait_forkserver_workers(server)
            assert workers == {first.os_pid, second.os_pid}
        finally:
            second.close(timeout=10)
        assert running_server() == server  # the first port still holds it
        assert first.request("still", timeout=30) == "still"
    finally:
        first.close(timeout=10)
    # The last release stopped the server and reaped it before returning.
    assert FORK_SERVER.users == 0
    assert running_server() is None
    assert not psutil.pid_exists(server) or gone(server)
    assert server not in {c.pid for c in psutil.Process().children()}
    assert not [t for t in threading.enumerate() if t.name == "dspex-forkserver"]


def test_workers_outlive_a_killed_server_and_a_new_server_serves_next(
    ports: list[Port],
) -> None:
    """The fork server is no single point of failure: its workers die with their owner, not
    with it. After the server is SIGKILLed they keep serving; one that dies later is still
    seen to exit (its pidfd), with an unknown status since no server can report it."""
    FORK_SERVER.acquire()  # a user that outlives the server: the next start replaces it
    try:
        a = Port.spawn(echo, start_method=FS)
        b = Port.spawn(echo, start_method=FS)
        ports.extend((a, b))
        assert a.request(1, timeout=30) == 1
        assert b.request(2, timeout=30) == 2
        old = server_pid()
        os.kill(old, signal.SIGKILL)
        assert wait_for(lambda: gone(old), timeout=10)
        assert a.request(11, timeout=30) == 11
        assert b.request(12, timeout=30) == 12
        os.kill(b.os_pid, signal.SIGKILL)
        assert b.wait_exit(10) is None  # exited; its status died with the server
        with pytest.raises(da.PortClosed):
            b.request(13, timeout=10)
        c = Port.spawn(echo, start_method=FS)
        ports.append(c)
        assert c.request(3, timeout=30) == 3
        assert server_pid() != old
        assert psutil.Process(c.os_pid).ppid() == server_pid()
        assert a.request(14, timeout=30) == 14  # the orphan still serves
    finally:
        FORK_SERVER.release()


def test_an_unpicklable_handler_is_refused_and_starts_no_server() -> None:
    unpicklable = (n for n in range(3))  # a generator cannot cross a process boundary
    with pytest.raises(InvalidOption, match="picklable"):
        Port.spawn(lambda request, gen: request, unpicklable, start_method=FS)
    assert FORK_SERVER.users == 0
    assert running_server() is None
    with pytest.raises(InvalidOption, match="start_method"):
        Port.spawn(echo, start_method="forkserve")
    with pytest.raises(InvalidOption, match="start_method"):
        PortSpec(target=echo, start_method="forkserve")


# --- fds --------------------------------------------------------------------------------------


def fds_of(pid: int) -> set[str]:
    """What process `pid` has open: ``pipe:[ino]``, ``socket:[ino]``, paths."""
    base = f"/proc/{pid}/fd"
    targets = set()
    for name in os.listdir(base):
        with contextlib.suppress(OSError):
            targets.add(os.readlink(f"{base}/{name}"))
    return targets


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/<pid>/fd")
def test_workers_started_concurrently_hold_no_pipe_of_another_nor_the_servers_socket(
    ports: list[Port],
) -> None:
    """Fork and forkserver workers started at the same time from four threads: no
    worker holds another's pipes, no `fork` child holds the parent's end of the server's
    socket (the server would miss the parent's death), the server keeps no worker's pipes."""
    first = Port.spawn(echo, start_method=FS)
    ports.append(first)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def start(method: str) -> None:
        try:
            barrier.wait(timeout=30)
            ports.append(Port.spawn(echo, start_method=method))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(m,)) for m in ("fork", FS, "fork", FS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert len(ports) == 5
    # Connected from the test's thread before anyone reads: each thread owned its port.
    for port in ports:
        port._reclaim(threading.current_thread())
        assert port.request("ready", timeout=30) == "ready"
    server = server_pid()
    assert FORK_SERVER._server is not None
    parent_end = os.readlink(f"/proc/self/fd/{FORK_SERVER._server._sock.fileno()}")
    held = {port.os_pid: fds_of(port.os_pid) for port in ports}
    # Each port's own pipes: stdin and stdout (seen from our ends) and the worker's stderr.
    own = {port.os_pid: own_pipes(port) for port in ports}
    for pid, targets in held.items():
        assert own[pid] <= targets
        assert parent_end not in targets
        for other, other_targets in held.items():
            if other != pid:
                assert not own[pid] & other_targets
    served = [p.os_pid for p in ports if psutil.Process(p.os_pid).ppid() == server]
    assert len(served) == 3
    for pid in served:
        assert not {t for t in held[pid] if t.startswith("socket:")}
    server_fds = fds_of(server)
    for pipes_of_port in own.values():
        assert not server_fds & pipes_of_port


def own_pipes(port: Port) -> set[str]:
    assert port._stdin_fd is not None
    assert port._stdout_fd is not None
    mine = {os.readlink(f"/proc/self/fd/{fd}") for fd in (port._stdin_fd, port._stdout_fd)}
    mine.add(os.readlink(f"/proc/{port.os_pid}/fd/2"))
    assert all(t.startswith("pipe:") for t in mine)
    assert len(mine) == 3
    return mine


# --- orphans ----------------------------------------------------------------------------------

ORPHAN_PARENT = textwrap.dedent(
    """
    import sys
    import psutil
    from dspex_actors import ProcessPool
    from dspex_actors._ports._forkserver import FORK_SERVER
    from dspex_actors.testing import wait_for
    if __name__ == "__main__":
        pool = ProcessPool.start(
            target=lambda request: request, pool_size=2, start_method="forkserver"
        )
        assert pool.call("up", timeout=60) == "up"
        wait_for(lambda: pool.status().idle == 2, timeout=60)
        wait_for(lambda: FORK_SERVER.zygote_pid is not None, timeout=60)
        print(*[c.pid for c in psutil.Process().children(recursive=True)], flush=True)
        sys.stdin.read()  # until SIGKILLed
    """
)


@contextlib.contextmanager
def parent_process(script: str, *args: str) -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """Run `script`, a parent that prints pids on its first line and then waits to be
    SIGKILLed; yield it and those pids. Afterwards it is killed and its pipes are closed
    (a child of it that reads its stdin sees EOF)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        yield parent, [int(p) for p in parent.stdout.readline().split()]
    finally:
        parent.kill()
        parent.wait(10)
        for stream in (parent.stdin, parent.stdout):
            if stream is not None:
                stream.close()


def test_a_sigkilled_parents_server_and_workers_are_gone_within_bounded_time() -> None:
    with parent_process(ORPHAN_PARENT) as (parent, pids):
        assert len(pids) == 4  # the server, its two workers and its zygote
        servers = [p for p in pids if psutil.Process(p).ppid() == parent.pid]
        assert len(servers) == 1
        workers = [p for p in pids if p not in servers]
        parent.kill()
        parent.wait(10)
        # Workers see EOF on their lifeline at once (within 1 s); the server sees
        # EOF on its socket, SIGKILLs and reaps what is left, and exits.
        assert wait_for(lambda: all(gone(p) for p in workers), timeout=1.0)
        assert wait_for(lambda: gone(servers[0]), timeout=5.0)


# --- pools ------------------------------------------------------------------------------------


def test_a_forkserver_process_pool_calls_and_replaces_a_sigkilled_idle_worker(
    pools: list[ProcessPool],
) -> None:
    pool = start_pool(pools, 2)
    assert [pool.call(n, timeout=30) for n in range(6)] == [n * 2 for n in range(6)]
    server = server_pid()
    workers = wait_forkserver_workers(server)
    assert len(workers) == 2
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: pool.status().workers_removed == 1 and settled(pool, 2), timeout=10)
    now = wait_forkserver_workers(server)
    assert victim not in now
    assert len(now) == 2
    assert [pool.call(n, timeout=30) for n in range(6)] == [n * 2 for n in range(6)]


def test_a_worker_dying_mid_request_raises_worker_crashed(
    pools: list[ProcessPool],
) -> None:
    pool = start_pool(pools, 1)
    with pytest.raises(da.WorkerCrashed) as info:
        pool.call("die", timeout=30)
    assert info.value.exit_status == -signal.SIGKILL
    assert pool.call(5, timeout=30) == 10  # the replacement serves


def test_a_pool_of_one_keeps_its_server_when_its_only_worker_dies(
    pools: list[ProcessPool],
) -> None:
    pool = start_pool(pools, 1)
    server = server_pid()
    assert FORK_SERVER.users == 2  # the pool and its worker's port
    (victim,) = wait_forkserver_workers(server)
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: pool.status().workers_removed == 1 and settled(pool, 1), timeout=10)
    assert server_pid() == server  # the replacement was forked by the same server
    assert pool.call(4, timeout=30) == 8
    pool.stop(timeout=30)
    assert FORK_SERVER.users == 0
    assert running_server() is None
    assert gone(server) or not psutil.pid_exists(server)


def test_the_servers_socket_is_in_the_fork_registry_while_the_server_runs() -> None:
    """The parent's end of the server's socket is listed in `_fds.PARENT_FDS` while the
    server runs and is gone from it (closed) once the server stops."""
    port = Port.spawn(echo, start_method=FS)
    try:
        assert FORK_SERVER._server is not None
        fd = FORK_SERVER._server._sock.fileno()
        assert fd in _fds.PARENT_FDS
    finally:
        port.close(timeout=10)
    assert fd not in _fds.PARENT_FDS


# --- the zygote: the next worker, forked ahead ---------------------------------------------


def ready_zygote() -> int:
    """The fork server's zygote (the worker it forks ahead), once it has one."""
    pid: int = wait_for(lambda: FORK_SERVER.zygote_pid, timeout=30)
    return pid


def next_zygote(after: int) -> int:
    """The fork server's zygote once it is another process than `after`."""
    pid: int = wait_for(
        lambda: FORK_SERVER.zygote_pid not in (None, after) and FORK_SERVER.zygote_pid, timeout=30
    )
    return pid


@pytest.fixture
def zygotes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every zygote the fork server reports from now on."""
    seen: list[int] = []
    real = _forkserver._Server._dispatch

    def dispatch(
        server: _forkserver._Server, kind: int, key: int, value: int, pidfd: int | None = None
    ) -> None:
        if kind == ZYGOTE and value:
            seen.append(key)
        real(server, kind, key, value, pidfd)

    monkeypatch.setattr(_forkserver._Server, "_dispatch", dispatch)
    return seen


@contextlib.contextmanager
def stopped_zygote() -> Iterator[int]:
    """The zygote, SIGSTOPped: a start handed to it is forked once the hand-over limit (1 s)
    has passed. SIGKILLed afterwards, whatever the server did with it."""
    zygote = ready_zygote()
    pidfd = os.pidfd_open(zygote)  # names it even once reaped and its pid taken by another
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGSTOP)
        yield zygote
    finally:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        os.close(pidfd)


def open_fds(pid: int) -> dict[int, str]:
    """The fds `pid` has open, and what each is (one closed as we look is left out)."""
    fds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            fds[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return fds


def frozen_objects(request: Any) -> int:
    import gc

    return gc.get_freeze_count()


def test_a_start_takes_the_zygote_and_the_server_forks_the_next_one(ports: list[Port]) -> None:
    """Once a worker was asked for, the server keeps one forked ahead, holding nothing of
    the server's but its stdio and its own socket: the next start becomes that process (with
    the server's heap frozen for the collector), and a new zygote follows. It dies with the
    server."""
    first = Port.spawn(echo, start_method=FS)
    ports.append(first)
    zygote = ready_zygote()
    assert zygote != first.os_pid
    assert psutil.Process(zygote).ppid() == server_pid()
    # Once it has closed what it inherited from the server:
    held: dict[int, str] = wait_for(lambda: len(fds := open_fds(zygote)) == 4 and fds, timeout=10)
    (mine,) = set(held) - {0, 1, 2}
    assert held[mine].startswith("socket:")
    assert held[mine] not in open_fds(server_pid()).values()  # its own: the server has the peer
    second = Port.spawn(double, start_method=FS)
    ports.append(second)
    assert second.os_pid == zygote
    assert second.request(21, timeout=30) == 42
    with pytest.raises(da.RemoteError, match="no booms"):
        second.request("boom", timeout=30)
    assert second.request(2, timeout=30) == 4  # its stream intact
    frozen = Port.spawn(frozen_objects, start_method=FS)
    ports.append(frozen)
    assert frozen.request(None, timeout=30) > 1000
    last = next_zygote(zygote)
    for port in ports:
        port.close(timeout=10)
    ports.clear()
    assert running_server() is None
    assert gone(last)  # reaped before the last release returned


def test_starts_through_the_zygote_leave_no_fd_in_the_server(ports: list[Port]) -> None:
    first = Port.spawn(echo, start_method=FS)
    ports.append(first)
    zygote = ready_zygote()
    before = open_fds(server_pid())
    for _ in range(5):
        port = Port.spawn(double, start_method=FS)
        assert port.os_pid == zygote
        assert port.request(1, timeout=30) == 2
        port.close(timeout=10)
        zygote = next_zygote(zygote)
    assert len(open_fds(server_pid())) == len(before)


def test_a_killed_zygote_is_replaced_and_a_start_racing_its_death_still_gets_a_worker(
    ports: list[Port],
) -> None:
    """A zygote SIGKILLed unused is replaced; a start that comes as it dies (seen dead, or
    found dead while handing the start over) is forked instead; the dead zygote's exit
    touches no port."""
    first = Port.spawn(echo, start_method=FS)
    ports.append(first)
    for _ in range(5):
        os.kill(ready_zygote(), signal.SIGKILL)
        port = Port.spawn(double, start_method=FS)
        ports.append(port)
        assert port.request(4, timeout=30) == 8
    victim = ready_zygote()
    os.kill(victim, signal.SIGKILL)
    next_zygote(victim)
    port = Port.spawn(double, start_method=FS)
    ports.append(port)
    assert port.request(5, timeout=30) == 10
    assert [p.request(1, timeout=30) for p in ports[1:]] == [2] * 6  # every worker serves


def start_in_thread() -> tuple[threading.Thread, queue.Queue[Port]]:
    """Start a `double` forkserver port in a thread of its own; it hands the port to this
    thread and puts it in the queue."""
    started: queue.Queue[Port] = queue.Queue()
    main = threading.current_thread()

    def start() -> None:
        port = Port.spawn(double, start_method=FS)
        port.connect(main)
        started.put(port)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    return thread, started


def test_a_stopped_zygote_is_killed_at_the_hand_over_limit_and_the_start_forked(
    ports: list[Port], zygotes: list[int]
) -> None:
    """A zygote that does not take its start (stopped: SIGSTOP) is killed once the hand-over
    limit (1 s) has passed, and the worker is forked."""
    first = Port.spawn(echo, start_method=FS)
    ports.append(first)
    with stopped_zygote() as zygote:
        thread, started = start_in_thread()
        thread.join(30)
        port = started.get(timeout=1)
        ports.append(port)
        assert port.os_pid != zygote
        assert port.os_pid not in zygotes  # forked, not a new zygote's
        assert port.request(3, timeout=30) == 6
        assert wait_for(lambda: gone(zygote), timeout=10)


def test_a_start_with_a_large_setup_is_forked_and_leaves_the_zygote_ready(
    ports: list[Port], zygotes: list[int]
) -> None:
    """A handler and arguments that pickle to more than 64 KiB would not fit the zygote's
    socket at once: the start is forked, and the zygote waits for the next one."""
    first = Port.spawn(echo, start_method=FS)
    ports.append(first)
    zygote = ready_zygote()
    blob = os.urandom(100_000)
    port = Port.spawn(double, start_method=FS)
    ports.append(port)
    assert port.os_pid == zygote  # a small setup: the zygote
    zygote = next_zygote(zygote)
    large = Port.spawn(lambda request: len(blob) + request, start_method=FS)
    ports.append(large)
    assert large.os_pid not in [zygote, *zygotes]
    assert large.request(1, timeout=30) == 100_001
    assert FORK_SERVER.zygote_pid == zygote  # still there, still ready
    last = Port.spawn(double, start_method=FS)
    ports.append(last)
    assert last.os_pid == zygote


PATIENT_SERVER = (
    "import dspex_actors._ports._forkserver_server as fs\n"
    "fs._HANDOVER_LIMIT = 600.0\n"
    "fs.server_main({fd}, {parent}, {preload!r})\n"
)


def test_a_pending_hand_over_holds_no_other_start_up_and_its_zygotes_death_forks_it(
    ports: list[Port], zygotes: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a start waits for its zygote (stopped, and the server patient: no deadline for
    minutes), the server serves other starts; when the zygote dies, the start is forked."""
    monkeypatch.setattr(_forkserver._Server, "BOOT", PATIENT_SERVER)
    first = Port.spawn(echo, start_method=FS)
    ports.append(first)
    with stopped_zygote() as zygote:
        thread, started = start_in_thread()
        server = FORK_SERVER._server
        assert server is not None
        wait_for(lambda: server._pending, timeout=30)  # sent: the server has it
        program = Port.open([sys.executable, "-c", "pass"], start_method=FS, timeout=30)
        ports.append(program)
        second = Port.spawn(double, start_method=FS)  # forked: the zygote is taken
        ports.append(second)
        assert second.request(1, timeout=30) == 2
        assert thread.is_alive()  # the first start still waits for its zygote
        os.kill(zygote, signal.SIGKILL)
        thread.join(30)
        port = started.get(timeout=1)
        ports.append(port)
        assert port.os_pid not in [zygote, *zygotes]
        assert port.request(3, timeout=30) == 6


def imported(module: str) -> bool:
    return module in sys.modules


STAND_IN_ZYGOTE = textwrap.dedent(
    """
    import os, selectors, socket, sys
    import dspex_actors._ports._forkserver_server as fs

    def hand_a_start_to(behave, ready=True):
        # A stand-in zygote, driven by hand: it receives a start from a server state made
        # here (if `ready`: it said so), then does `behave(its socket, a pipe to wait on)`
        # and exits 3.
        mine, theirs = socket.socketpair()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            mine.close()
            header = fs._recv_exactly(theirs, fs._ZYGOTE_HEADER.size)
            (size,) = fs._ZYGOTE_HEADER.unpack(header[0])
            fs._recv_exactly(theirs, size)
            behave(theirs, go_r)
            os._exit(3)
        theirs.close()
        parent, server_end = socket.socketpair()
        sel = selectors.DefaultSelector()
        st = fs._State(server_end, sel, os.getpid(), fs._dummy_handler())
        st.zygotes_wanted = True
        st.zygote = fs._Zygote(pid, mine)
        st.zygote.ready = ready
        sel.register(mine, selectors.EVENT_READ, st.zygote)
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(fs.WORKER_FDS)]
        st.fork(7, fds, fs.SERVE + b"setup")
        return st, sel, parent, pid, mine, go_w

    def replies(parent):
        parent.setblocking(False)
        data = parent.recv(4096)
        return [fs.REPLY.unpack_from(data, i) for i in range(0, len(data), fs.REPLY.size)]
    """
)

TAKEN_THEN_GONE = STAND_IN_ZYGOTE + textwrap.dedent(
    """
    # It takes the start at once; then (by argv) it exits before the server reads its
    # answer (reaped first), or lives on while the server is too busy to read the answer
    # before the hand-over's deadline.
    exits = sys.argv[1] == "exits"

    def taken(sock, go_r):
        sock.sendall(fs._TAKEN)
        if not exits:
            os.read(go_r, 1)

    st, sel, parent, pid, mine, go_w = hand_a_start_to(taken)
    with selectors.DefaultSelector() as answer:
        answer.register(mine, selectors.EVENT_READ)
        answer.select(30)  # the answer is there, unread
    if exits:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        st.reap()  # before the batch's hand-over event
    else:
        st.handovers[pid].deadline = 0.0
        st.expire()
    got = replies(parent)
    if exits:
        print(got == [(fs.STARTED, 7, pid), (fs.EXITED, pid, 3)], st.workers == set())
    else:
        print(got in ([(fs.WATCHED, 7, pid)], [(fs.STARTED, 7, pid)]), st.workers == {pid})
        os.kill(pid, 0)  # not killed: it is the worker
        os.write(go_w, b"!")
        print(os.waitpid(pid, 0)[1] == 3 << 8)
    print(st.handovers == {})
    """
)


UNREADY_ZYGOTE = STAND_IN_ZYGOTE + textwrap.dedent(
    """
    # A zygote that has not said it is ready (still warming up): the start is forked
    # instead (the forked worker fails on its made-up setup and exits), and the zygote stays
    # for the next one.
    st, sel, parent, pid, mine, go_w = hand_a_start_to(None, ready=False)
    (kind, request_id, forked), = replies(parent)
    print(kind in (fs.STARTED, fs.WATCHED), request_id == 7, forked != pid)
    print(st.zygote.pid == pid, st.handovers == {})
    os.waitpid(forked, 0)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    """
)


WARM_UP_CHANGES_NOTHING = textwrap.dedent(
    """
    import os, selectors, signal, socket, sys
    import dspex_actors._ports._forkserver_server as fs

    def snapshot():
        handlers = {sig: signal.getsignal(sig) for sig in fs._SIGNALS}
        return dict(os.environ), list(sys.path), fs.process_state(), handlers

    os.environ["DSPEX_ONLY_HERE"] = "1"
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # as if the server's parent ignored it
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    handler_setup = fs._dummy_handler()
    before = snapshot()
    fs._warm_up(handler_setup)  # in the server
    print(snapshot() == before)
    signal.signal(signal.SIGCHLD, lambda *args: None)  # the server's own handler
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a zygote: out of the server's signal handling, then warmed up
        fs._leave_server(socket.socket(), selectors.DefaultSelector())
        before = snapshot()
        fs._warm_up(handler_setup)
        os.write(w, b"1" if snapshot() == before else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    print(os.read(r, 1) == b"1")
    state = (dict(os.environ), list(sys.path), fs.process_state())
    handler, *rest = fs._take_setup(fs.pickle.dumps((state, handler_setup)))
    print(handler(0, None) is None, *rest)
    """
)


def test_a_zygote_warms_up_on_its_own_state_and_changes_nothing() -> None:
    """The warm-up takes a setup of the process's own environment, path and process state
    and the server's dummy handler: it changes none of them (nor any signal's handler), in
    the server and in a zygote out of the server's signal handling; the dummy handler is
    one a worker could serve."""
    done = subprocess.run(
        [sys.executable, "-c", WARM_UP_CHANGES_NOTHING], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "True\nTrue\nTrue () json 1048576\n"), done.stderr


def test_a_zygote_not_yet_ready_is_not_handed_a_start() -> None:
    done = subprocess.run(
        [sys.executable, "-c", UNREADY_ZYGOTE], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (0, "True True True\nTrue True\n"), done.stderr


@pytest.mark.parametrize("how", ["exits", "late"])
def test_a_zygote_that_took_its_start_is_that_worker_even_if_its_answer_is_read_late(
    how: str,
) -> None:
    """The zygote took the start, but the server reaps it (it exited as that worker) or
    reaches the hand-over's deadline before reading its answer: the start is still that
    process (started, then exited with its status; or a live worker), never forked twice."""
    done = subprocess.run(
        [sys.executable, "-c", TAKEN_THEN_GONE, how], capture_output=True, text=True, timeout=60
    )
    expected = "True True\nTrue\n" if how == "exits" else "True True\nTrue\nTrue\n"
    assert (done.returncode, done.stdout) == (0, expected), done.stderr


def test_a_preload_replaces_the_zygote_with_one_that_has_the_module(ports: list[Port]) -> None:
    """The zygote was forked before the preload: it is discarded, and the next one (and so
    every worker started from it) has the module already."""
    module = "colorsys"  # small, and imported by nothing the server loads
    first = Port.spawn(imported, start_method=FS)
    ports.append(first)
    assert first.request(module, timeout=30) is False
    stale = ready_zygote()
    FORK_SERVER.acquire([module])
    try:
        assert wait_for(lambda: gone(stale), timeout=10)
        fresh = next_zygote(stale)
        port = Port.spawn(imported, start_method=FS)
        ports.append(port)
        assert port.os_pid == fresh
        assert port.request(module, timeout=30) is True
    finally:
        FORK_SERVER.release([module])


# --- environment, exit codes, failures half way, a stalled server ----------------------------


def where(probe: str) -> list[Any]:
    return [os.environ.get("DSPEX_FS_PROBE"), os.path.realpath(os.getcwd()), probe in sys.path]


@pytest.mark.parametrize("via_zygote", [True, False], ids=["zygote", "forked"])
def test_a_worker_takes_the_parents_current_environment_cwd_and_sys_path(
    ports: list[Port],
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    zygotes: list[int],
    via_zygote: bool,
) -> None:
    """The server (and its zygote) started before these changed; its workers must not see
    their stale copy, whether the worker was forked ahead or at its start."""
    first = Port.spawn(echo, start_method=FS)
    ports.append(first)
    assert first.request(1, timeout=30) == 1  # the server runs from here on
    zygote = ready_zygote()
    monkeypatch.setenv("DSPEX_FS_PROBE", "set-later")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    with stopped_zygote() if not via_zygote else contextlib.nullcontext(zygote):
        port = Port.spawn(where, start_method=FS)
    ports.append(port)
    assert (port.os_pid == zygote) is via_zygote
    assert (port.os_pid in [*zygotes, zygote]) is via_zygote
    assert port.request(str(tmp_path), timeout=30) == [
        "set-later",
        os.path.realpath(tmp_path),
        True,
    ]


def exits(code: Any) -> Any:
    sys.exit(code)


@pytest.mark.parametrize("method", ["spawn", "fork", FS])
@pytest.mark.parametrize(
    ("code", "status", "printed"), [(None, 0, []), (0, 0, []), (3, 3, []), ("bye", 1, ["bye"])]
)
def test_sys_exit_in_a_handler_gives_the_same_status_with_every_start_method(
    method: str, code: Any, status: int, printed: list[str]
) -> None:
    port = Port.spawn(exits, start_method=method)
    try:
        with pytest.raises(da.PortClosed):
            port.request(code, timeout=30)
        assert port.wait_exit(10) == status
        assert port.stderr_tail() == printed
    finally:
        port.close(timeout=10)


def test_a_port_that_cannot_be_built_leaves_no_worker_fd_or_server_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_start = threading.Thread.start

    def no_port_thread(self: threading.Thread) -> None:
        if self.name.removeprefix("dspex-port-").isdigit():
            raise RuntimeError("can't start new thread")
        real_start(self)

    fds_before = set(_fds.PARENT_FDS)
    monkeypatch.setattr(threading.Thread, "start", no_port_thread)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        Port.spawn(echo, start_method=FS)
    monkeypatch.undo()
    assert FORK_SERVER.users == 0
    assert running_server() is None  # the last reference stopped and reaped it
    assert set(_fds.PARENT_FDS) == fds_before


def test_a_killed_pool_kills_its_workers_and_drops_its_server_reference() -> None:
    """A kill runs no terminate_pool: the pool's exit kills the processes it still has and
    releases the server; the worker's port drops its own reference once it is reaped."""
    pool = ProcessPool.start(target=echo, pool_size=1)
    wait_for(functools.partial(settled, pool, 1), timeout=30)
    assert FORK_SERVER.users == 2  # the pool and its worker's port
    (worker_pid,) = wait_forkserver_workers(server_pid())
    worker = psutil.Process(worker_pid)
    ref = pool.actor_ref
    da.kill(ref)
    da.wait_exit(ref, timeout=10)
    worker.wait(timeout=10)
    wait_for(lambda: FORK_SERVER.users == 0 and running_server() is None, timeout=10)


def test_a_stalled_server_is_replaced_after_the_start_timeout(
    ports: list[Port], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Port.spawn(echo, start_method=FS)
    ports.append(first)
    stalled = server_pid()
    monkeypatch.setattr(_launch, "SETUP_TIMEOUT", 0.5)
    os.kill(stalled, signal.SIGSTOP)
    try:
        with pytest.raises(da.CallTimeout):
            Port.spawn(echo, start_method=FS)
        wait_for(lambda: gone(stalled), timeout=10)  # killed, even though stopped
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stalled, signal.SIGCONT)
    assert first.request(1, timeout=30) == 1  # its worker outlived the replaced server
    second = Port.spawn(echo, start_method=FS)
    ports.append(second)
    assert second.request(2, timeout=30) == 2
    assert server_pid() != stalled
    assert FORK_SERVER.users == 2  # each port holds a reference until it is reaped


def test_an_interrupt_while_waiting_for_the_server_kills_the_worker_it_forked(
    ports: list[Port], monkeypatch: pytest.MonkeyPatch
) -> None:
    warm = Port.spawn(echo, start_method=FS)
    ports.append(warm)
    warm.request(1, timeout=30)
    server = server_pid()
    fds_before = set(_fds.PARENT_FDS)

    class Interrupted(_forkserver._Request):
        """The first wait returns once the server has answered (the worker exists), then
        raises KeyboardInterrupt, as a Ctrl-C at that moment would."""

        def __init__(self, child: Any) -> None:
            super().__init__(child)
            real, first = self.done, [True]

            def wait(timeout: float | None = None) -> bool:
                if first:
                    first.clear()
                    assert real.wait(30)
                    raise KeyboardInterrupt
                return real.wait(timeout)

            self.done = type("Done", (), {"wait": staticmethod(wait), "set": real.set})()

    monkeypatch.setattr(_forkserver, "_Request", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        Port.spawn(echo, start_method=FS)
    monkeypatch.undo()
    wait_for(lambda: forkserver_workers(server) == frozenset({warm.os_pid}))
    assert FORK_SERVER.users == 1
    assert set(_fds.PARENT_FDS) == fds_before


def test_a_worker_the_server_has_reaped_is_never_signalled(
    ports: list[Port], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the server's reap and the port's exit event the pid is free for reuse: kill()
    and close() must not signal it."""
    port = Port.spawn(echo, start_method=FS)
    ports.append(port)
    port.request(1, timeout=30)
    child: Any = port._child
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "killpg", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    monkeypatch.setattr(child, "reaped", lambda: True)  # reaped, before the port has heard
    port.kill()
    monkeypatch.undo()
    assert sent == []
    port.kill()  # not reaped after all: now it is signalled
    assert port.wait_exit(10) == -signal.SIGKILL


def test_a_request_interrupted_half_sent_replaces_the_server(
    ports: list[Port], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a request in the server's stream would swallow the next one: the server is killed
    (its workers live on: they die with their owner, not with it) and the next worker start
    runs a new one."""
    warm = Port.spawn(echo, start_method=FS)
    ports.append(warm)
    warm.request(1, timeout=30)
    server = server_pid()
    real_send = _forkserver._send_bounded

    def half_then_interrupt(sock: Any, view: Any, fds: list[int], *, first: bool = False) -> Any:
        rest = real_send(sock, view[:10], fds, first=first)  # the header and the fds go out
        assert not rest
        raise KeyboardInterrupt

    monkeypatch.setattr(_forkserver, "_send_bounded", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        Port.spawn(echo, start_method=FS)
    monkeypatch.undo()
    wait_for(lambda: gone(server), timeout=10)
    assert warm.request(2, timeout=30) == 2
    port = Port.spawn(echo, start_method=FS)
    ports.append(port)
    assert port.request(3, timeout=30) == 3
    assert server_pid() != server


def test_a_port_start_stuck_in_popen_does_not_stop_forkserver_ports(
    ports: list[Port],
) -> None:
    """CPython issue 103911: another library's fork can leave subprocess.Popen waiting for as
    long as that child lives. Such a Popen holds the fork guard as a creator; other creators
    (a forkserver worker's pipes, a port's exit pipe) go on, only a "fork" port must wait."""
    held, release = threading.Event(), threading.Event()

    def stuck_popen() -> None:
        with _fds.FORK_GUARD.creating():
            held.set()
            release.wait(30)

    forked: list[Port] = []
    me = threading.current_thread()
    stuck = threading.Thread(target=stuck_popen, name="stuck-popen")
    fork_start = threading.Thread(
        target=lambda: forked.append(Port.spawn(echo, start_method="fork", owner=me)),
        name="fork-start",
    )
    stuck.start()
    try:
        assert held.wait(10)
        fork_start.start()  # a "fork" port waits for the guard meanwhile: others must not
        waiters: Any = _fds.FORK_GUARD._cond._waiters  # type: ignore[attr-defined]
        wait_for(lambda: len(waiters) == 1, timeout=10)
        port = Port.spawn(echo, start_method=FS)
        ports.append(port)
        assert port.request(5, timeout=30) == 5
        assert stuck.is_alive()  # all of that while the stuck creator still held the guard
        assert forked == []
    finally:
        release.set()
        stuck.join(10)
        fork_start.join(30)
        ports.extend(forked)
    assert forked[0].request(6, timeout=30) == 6  # and the fork went ahead once it could


def test_the_fork_guard_lets_creators_share_and_makes_a_fork_wait_for_them() -> None:
    guard = _fds.ForkGuard()
    order: list[str] = []
    inside, go, forked = threading.Event(), threading.Event(), threading.Event()

    def creator() -> None:
        with guard.creating():
            inside.set()
            go.wait(10)
            order.append("creator done")

    def fork() -> None:
        with guard.forking():
            order.append("fork")
        forked.set()

    first = threading.Thread(target=creator)
    first.start()
    assert inside.wait(10)
    with guard.creating():  # a second creator is not held up by the first
        order.append("second creator")
    forker = threading.Thread(target=fork)
    forker.start()
    waiters: Any = guard._cond._waiters  # type: ignore[attr-defined]
    wait_for(lambda: len(waiters) == 1, timeout=10)  # the fork is queued on the guard
    assert not forked.is_set()  # and cannot go while the first creator holds it
    go.set()
    first.join(10)
    forker.join(10)
    assert order == ["second creator", "creator done", "fork"]


# --- programs (Port.open) started by the fork server -----------------------------------------

PROGRAM = textwrap.dedent(
    """
    import json, os, resource, struct, sys
    r, w = sys.stdin.buffer, sys.stdout.buffer
    while len(h := r.read(4)) == 4:
        msg = json.loads(r.read(struct.unpack(">I", h)[0]))
        if msg.get("exit") is not None:
            sys.exit(msg["exit"])
        print("seen", msg["id"], file=sys.stderr, flush=True)
        status = open("/proc/self/status").read()
        reply = {"id": msg["id"], "pid": os.getpid(), "ppid": os.getppid(),
                 "pgid": os.getpgid(0), "cwd": os.readlink("/proc/self/cwd"),
                 "foo": os.environ.get("FOO"), "umask": status.split("Umask:")[1].split()[0],
                 "core": resource.getrlimit(resource.RLIMIT_CORE)}
        data = json.dumps(reply).encode()
        w.write(struct.pack(">I", len(data)) + data)
        w.flush()
    """
)


PYTHON_IGNORES = (1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGXFSZ - 1))


def ignored_mask() -> int:
    with open("/proc/self/status") as status:
        return int(status.read().split("SigIgn:")[1].split()[0], 16)


def open_program(ports: list[Port], **options: Any) -> Port:
    port = Port.open([sys.executable, "-S", "-c", PROGRAM], start_method=FS, **options)
    ports.append(port)
    return port


def test_a_program_the_server_starts_talks_frames_with_our_env_cwd_and_session(
    ports: list[Port], tmp_path: Any
) -> None:
    """Port.open(start_method="forkserver"): the server's child, leading its own session,
    in `cwd` with `env`; stderr is the port's; its exit status is reported."""
    port = open_program(ports, env={"FOO": "bar"}, cwd=tmp_path)
    reply = port.request({"n": 1}, timeout=30)
    assert reply["ppid"] == server_pid() != os.getpid()
    assert reply["pid"] == port.os_pid == reply["pgid"]
    assert (reply["cwd"], reply["foo"]) == (str(tmp_path), "bar")
    wait_for(lambda: any("seen 1" in line for line in port.stderr_tail()), timeout=10)
    # By default: our current environment and working directory, as with "spawn".
    os.environ["FOO"] = "current"
    try:
        other = open_program(ports)
        reply = other.request({"n": 2}, timeout=30)
    finally:
        del os.environ["FOO"]
    assert (reply["cwd"], reply["foo"]) == (os.getcwd(), "current")
    other.send({"id": 9, "exit": 3})
    wait_for(lambda: other.exit_status is not None, timeout=30)
    assert other.exit_status == 3


def test_a_program_starts_with_default_signal_dispositions_as_popen_gives(
    ports: list[Port],
) -> None:
    """The server is Python, which ignores SIGPIPE and SIGXFSZ; an ignored signal stays
    ignored across exec, so the program's child resets them (Popen's restore_signals).
    Whatever else this test process ignores (nohup, a background job) stays ignored."""
    shell = "grep SigIgn /proc/$$/status 1>&2; exec cat >/dev/null"
    assert ignored_mask() & PYTHON_IGNORES == PYTHON_IGNORES
    expected = f"SigIgn:\t{ignored_mask() & ~PYTHON_IGNORES:016x}"
    for method in ("spawn", FS):
        port = Port.open(["sh", "-c", shell], start_method=method)
        ports.append(port)
        wait_for(lambda p=port: bool(p.stderr_tail()), timeout=30)  # type: ignore[misc]
        assert port.stderr_tail() == [expected], method


def test_a_missing_program_or_cwd_is_the_error_popen_raises_and_leaves_nothing() -> None:
    # The fds counted here must be this test's alone: earlier tests' garbage is collected
    # first (an abandoned coroutine closes the fd copies it watched when it is collected),
    # and an earlier test's fork server has finished stopping (its socket and pidfd close).
    gc.collect()
    wait_for(lambda: running_server() is None, timeout=30)
    fds_before = set(_fds.PARENT_FDS)
    open_fds = set(os.listdir("/proc/self/fd"))
    for argv, cwd, missing in (
        (["/nonexistent/program"], None, "/nonexistent/program"),
        ([sys.executable, "-c", "pass"], "/nonexistent/dir", "/nonexistent/dir"),
    ):
        for method in ("spawn", FS):
            with pytest.raises(FileNotFoundError) as caught:
                Port.open(argv, cwd=cwd, start_method=method)
            assert caught.value.filename == missing, method
    assert FORK_SERVER.users == 0
    assert running_server() is None  # the last reference stopped and reaped it
    assert set(_fds.PARENT_FDS) == fds_before
    assert set(os.listdir("/proc/self/fd")) == open_fds
    assert [c for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE] == []


def test_a_server_started_program_needs_no_fork_here_nor_the_spawner_thread(
    ports: list[Port], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hazard of docs/ports.md: another library's fork can leave subprocess.Popen (the
    spawner thread's) waiting as long as that child lives. With the server starting the
    program, this process forks nothing and the spawner can be stuck meanwhile."""
    FORK_SERVER.acquire()  # the server runs before the ban below
    try:
        held, release = threading.Event(), threading.Event()

        def stuck_popen() -> tuple[Any, Any]:
            held.set()
            release.wait(30)
            raise RuntimeError("released")

        replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        with _launch.SPAWNER._lock:
            _launch.SPAWNER._live += 1
            if _launch.SPAWNER._thread is None:
                _launch.SPAWNER._thread = threading.Thread(
                    target=_launch.SPAWNER._run, name="dspex-port-spawner", daemon=True
                )
                _launch.SPAWNER._thread.start()
        _launch.SPAWNER._jobs.put((stuck_popen, replies))
        try:
            assert held.wait(10)

            def banned(*args: Any, **kwargs: Any) -> Any:
                raise AssertionError("this process must not fork or exec")

            monkeypatch.setattr(os, "fork", banned)
            monkeypatch.setattr(os, "posix_spawn", banned)
            monkeypatch.setattr(subprocess, "Popen", banned)
            port = open_program(ports)
            assert port.request({"n": 3}, timeout=30)["ppid"] == server_pid()
            monkeypatch.undo()
        finally:
            release.set()
            ok, error = replies.get(timeout=10)
            assert not ok
            assert str(error) == "released"
            _launch.SPAWNER.release()
    finally:
        FORK_SERVER.release()


def test_argv_pools_may_use_the_server_and_refuse_fork(pools: list[ProcessPool]) -> None:
    with pytest.raises(InvalidOption, match="start_method"):
        Port.open([sys.executable, "-c", PROGRAM], start_method="fork")
    with pytest.raises(InvalidOption, match="start_method"):
        PortSpec(argv=[sys.executable], start_method="fork")
    assert PortSpec(argv=[sys.executable]).method == "spawn"  # argv pools: started here
    assert PortSpec(target=echo).method == FS
    pool = ProcessPool.start(
        argv=[sys.executable, "-S", "-c", PROGRAM], pool_size=2, start_method=FS
    )
    pools.append(pool)
    wait_for(lambda: settled(pool, 2), timeout=30)
    assert FORK_SERVER.users == 3  # the pool's own reference, and one per live port
    pids = {pool.call({"n": i}, timeout=30)["pid"] for i in range(4)}
    assert {p.pid for p in psutil.Process(server_pid()).children()} >= pids
    pool.stop(timeout=30)
    assert FORK_SERVER.users == 0
    assert running_server() is None


# --- programs: arguments, cwd, process state, stalls, foreign forks ---------------------------


@pytest.mark.parametrize(
    ("argv", "env", "error"),
    [
        (["cat"], {"A=B": "x"}, ValueError),
        (["cat"], {1: "x"}, TypeError),
        (["cat"], {"A": 3}, TypeError),
        (["cat"], {"A": "x\0y"}, ValueError),
        (["ca\0t"], None, ValueError),
    ],
    ids=["equals_in_name", "int_name", "int_value", "nul_in_value", "nul_in_argv"],
)
def test_bad_arguments_or_environment_raise_what_popen_raises_and_start_nothing(
    argv: list[str], env: Any, error: type[Exception]
) -> None:
    """Checked in this process as Popen checks them, before the server is asked (not as an
    opaque `OSError` from the server's child); nothing is left behind."""
    fds_before = set(_fds.PARENT_FDS)
    for method in ("spawn", FS):
        with pytest.raises(error):
            Port.open(argv, env=env, start_method=method)
    assert FORK_SERVER.users == 0
    assert running_server() is None
    assert set(_fds.PARENT_FDS) == fds_before
    assert [c for c in psutil.Process().children() if c.status() != psutil.STATUS_ZOMBIE] == []


def cwd_link(request: Any) -> str:
    return os.readlink("/proc/self/cwd")


def test_relative_and_deleted_working_directories_are_ours_not_the_servers(
    ports: list[Port], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative `cwd` starts from our working directory, and a deleted one is still
    entered, as a ``"spawn"`` child would: the server's directory is never used."""
    FORK_SERVER.acquire()  # the server runs (in the old directory) before we move
    try:
        (tmp_path / "sub").mkdir()
        monkeypatch.chdir(tmp_path)
        reply = open_program(ports, cwd="sub").request({"n": 1}, timeout=30)
        assert reply["cwd"] == str(tmp_path / "sub")
        with pytest.raises(FileNotFoundError) as caught:
            open_program(ports, cwd="missing")
        assert caught.value.filename == "missing"
        (tmp_path / "gone").mkdir()
        monkeypatch.chdir(tmp_path / "gone")
        (tmp_path / "gone").rmdir()
        deleted = f"{tmp_path / 'gone'} (deleted)"
        assert open_program(ports).request({"n": 2}, timeout=30)["cwd"] == deleted
        for method in ("spawn", FS):
            worker = Port.spawn(cwd_link, start_method=method)
            ports.append(worker)
            assert worker.request(None, timeout=30) == deleted, method
    finally:
        FORK_SERVER.release()


def umask_and_core(request: Any) -> list[Any]:
    import resource

    status = open("/proc/self/status").read()  # noqa: SIM115
    return [status.split("Umask:")[1].split()[0], list(resource.getrlimit(resource.RLIMIT_CORE))]


def test_children_take_our_current_umask_and_resource_limits(ports: list[Port]) -> None:
    """The server's umask and limits are those of when it started; its children take ours."""
    import resource

    FORK_SERVER.acquire()
    old_core = resource.getrlimit(resource.RLIMIT_CORE)
    old_umask = os.umask(0o027)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, old_core[1]))
        reply = open_program(ports).request({"n": 1}, timeout=30)
        assert (reply["umask"], reply["core"]) == ("0027", [0, old_core[1]])
        worker = Port.spawn(umask_and_core, start_method=FS)
        ports.append(worker)
        assert worker.request(None, timeout=30) == ["0027", [0, old_core[1]]]
    finally:
        os.umask(old_umask)
        resource.setrlimit(resource.RLIMIT_CORE, old_core)
        FORK_SERVER.release()


CHANGED_GROUP = textwrap.dedent(
    """
    import os, sys
    from dspex_actors import Port
    from dspex_actors._ports._forkserver import FORK_SERVER
    FORK_SERVER.acquire()
    os.setegid(65534)
    for start in (lambda: Port.open(["cat"], start_method="forkserver"),
                  lambda: Port.spawn(len, start_method="forkserver")):
        try:
            start().close()
        except PermissionError as exc:
            print("refused", "changed since the fork server" in str(exc))
    os.setegid(0)
    port = Port.open(["cat"], start_method="forkserver")
    port.close()
    print("started", port.exit_status is not None)
    FORK_SERVER.release()
    """
)


@pytest.mark.skipif(os.geteuid() != 0, reason="changing the group needs root")
def test_a_start_after_our_user_or_groups_changed_is_refused() -> None:
    """The server's children would run with the credentials of when it started."""
    done = subprocess.run(
        [sys.executable, "-c", CHANGED_GROUP], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == ["refused True", "refused True", "started True", ""]


STALLING_SERVER = (
    "import dspex_actors._ports._forkserver_server as fs, time\n"
    "real = fs._program_main\n"
    "def stalled(fds, setup, *rest):\n"
    "    if b'stall-here' in setup:\n"
    "        time.sleep(120)  # sleep-ok: a child stuck before its exec (a hung mount, say)\n"
    "    real(fds, setup, *rest)\n"
    "fs._program_main = stalled\n"
    "fs.server_main({fd}, {parent})\n"
)


def test_a_program_stuck_before_its_exec_times_out_alone_and_is_killed(
    ports: list[Port], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server waits for no exec: it serves other starts meanwhile, kills the stuck child
    at its deadline (half the start timeout) and answers before the parent gives up."""
    monkeypatch.setattr(_forkserver._Server, "BOOT", STALLING_SERVER)
    monkeypatch.setattr(_launch, "SETUP_TIMEOUT", 6.0)
    FORK_SERVER.acquire()
    try:
        server = server_pid()
        errors: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()

        def start_stalled() -> None:
            try:
                Port.open([sys.executable, "-c", "pass", "stall-here"], start_method=FS)
                errors.put(None)
            except BaseException as exc:
                errors.put(exc)

        thread = threading.Thread(target=start_stalled)
        thread.start()
        try:
            assert wait_for(lambda: len(psutil.Process(server).children()) == 1, timeout=10)
            (stuck,) = psutil.Process(server).children()
            port = open_program(ports)  # served while the other start waits
            assert port.request({"n": 1}, timeout=30)["ppid"] == server
        finally:
            thread.join(30)
        error = errors.get(timeout=1)
        assert isinstance(error, da.CallTimeout)
        assert error.timeout == 3.0
        assert wait_for(lambda: gone(stuck.pid), timeout=10)
        assert server_pid() == server  # not replaced: it answered in time
    finally:
        FORK_SERVER.release()


def test_a_program_that_exits_at_once_has_its_status_reported(ports: list[Port]) -> None:
    """Its exit may be reaped before the exec report is read: reported after its start."""
    for code in range(20):
        port = Port.open(["sh", "-c", f"exit {code}"], start_method=FS)
        ports.append(port)
        assert port.wait_exit(30) == code


FOREIGN_FORK_PARENT = textwrap.dedent(
    """
    import ctypes, os, sys
    import psutil
    from dspex_actors import Port
    program = Port.open(["cat"], start_method="forkserver")
    served = Port.spawn(len, start_method="forkserver")
    forked = Port.spawn(len, start_method="fork")
    assert served.request("ab", timeout=60) == forked.request("ab", timeout=60) == 2
    if sys.argv[1] == "hooks":
        holder = os.fork()  # another library's fork: Python's at-fork hooks run
    else:
        libc = ctypes.PyDLL(None)  # a C-level fork: they do not
        holder = libc.fork()
    if holder == 0:
        os.read(0, 1)  # holds every fd it inherited until the test closes our stdin
        os._exit(0)
    workers = [p.os_pid for p in (program, served, forked)]
    print(holder, *workers, flush=True)
    sys.stdin.read()  # until SIGKILLed
    """
)


@pytest.mark.parametrize("fork", ["hooks", "raw"])
def test_workers_die_with_a_sigkilled_parent_even_if_a_fork_of_it_lives_on(
    fork: str,
) -> None:
    """A fork of the parent (another library's) must not hold our fds' ends: with Python's
    at-fork hooks it lets go of them; without (a C-level fork), the server and each "fork"
    worker watch the parent's pid. Either way every worker is gone within 1 s."""
    holder = 0
    try:
        with parent_process(FOREIGN_FORK_PARENT, fork) as (parent, pids):
            holder, *workers = pids
            assert len(workers) == 3
            parent.kill()
            parent.wait(10)
            assert wait_for(lambda: all(gone(p) for p in workers), timeout=1.0)
            assert not gone(holder)  # it outlived the parent: the case under test
    finally:
        if holder:  # it has read EOF on the parent's stdin: it exits
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(holder).wait(10)


CLOSED_STDIO = textwrap.dedent(
    """
    import os, sys
    report = os.dup(1)
    for fd in (0, 1, 2):
        os.close(fd)  # a daemon's way: our first fds land on these numbers
    from dspex_actors import RAW_CODEC, Port
    replies = []
    for method in ("fork", "spawn", "forkserver"):
        port = Port.spawn(len, start_method=method)
        replies.append(port.request("abc", timeout=60))
        port.close(10)
    program = Port.open(["cat"], codec=RAW_CODEC, start_method="forkserver")
    program.send(b"abc")
    replies.append(program.recv(timeout=60).decode())
    program.close(10)
    os.write(report, repr(replies).encode())
    """
)


def test_a_parent_with_stdin_stdout_and_stderr_closed_starts_every_kind_of_worker() -> None:
    """Neither the fork server's socket nor a worker's pipes take the free numbers 0-2, where
    the server's stdio (for the socket) or the child's own stdio (for a pipe) would replace
    them: every worker answers."""
    done = subprocess.run(
        [sys.executable, "-c", CLOSED_STDIO], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (0, "[3, 3, 3, 'abc']"), done.stderr


def hup_ignored(request: Any) -> bool:
    return signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def test_children_ignore_the_signals_we_ignore_now_as_spawn_children_do(
    ports: list[Port],
) -> None:
    """An ignored signal stays ignored across exec: ours at the start, not the server's of
    its own start, either way round (whatever this test process ignores already: nohup, a
    background job)."""
    shell = "grep SigIgn /proc/$$/status 1>&2; exec cat >/dev/null"
    previous = signal.getsignal(signal.SIGHUP)
    try:
        for server_ignores in (False, True):
            signal.signal(signal.SIGHUP, signal.SIG_IGN if server_ignores else signal.SIG_DFL)
            assert running_server() is None
            FORK_SERVER.acquire()  # the server starts with SIGHUP as set above
            try:
                signal.signal(signal.SIGHUP, signal.SIG_DFL if server_ignores else signal.SIG_IGN)
                expected = f"SigIgn:\t{ignored_mask() & ~PYTHON_IGNORES:016x}"
                for method in ("spawn", FS):
                    port = Port.open(["sh", "-c", shell], start_method=method)
                    ports.append(port)
                    wait_for(lambda p=port: bool(p.stderr_tail()), timeout=30)  # type: ignore[misc]
                    assert port.stderr_tail() == [expected], (method, server_ignores)
                    worker = Port.spawn(hup_ignored, start_method=method)
                    ports.append(worker)
                    assert worker.request(None, timeout=30) is not server_ignores, method
            finally:
                for port in ports:
                    port.kill()
                    port.close(timeout=10)
                ports.clear()
                FORK_SERVER.release()
    finally:
        signal.signal(signal.SIGHUP, previous)


FAULTHANDLER = textwrap.dedent(
    """
    import ctypes, signal
    from dspex_actors import Port

    def crash(request):
        ctypes.string_at(0)  # SIGSEGV: faulthandler (PYTHONFAULTHANDLER) prints a traceback

    for method in ("spawn", "forkserver"):
        port = Port.spawn(crash, start_method=method)
        try:
            port.request(None, timeout=60)
        except Exception:
            pass
        status = port.wait_exit(60)
        print(method, status, any("Fatal Python error" in line for line in port.stderr_tail()))
        port.close(10)
    """
)


def test_forkserver_workers_keep_the_handlers_the_server_installed_like_faulthandler() -> None:
    """Only whether a signal is ignored is changed in a worker: faulthandler's SIGSEGV handler
    (installed when the server started) still reports a crash, as in a "spawn" worker."""
    done = subprocess.run(
        [sys.executable, "-c", FAULTHANDLER],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    assert (done.returncode, done.stdout) == (
        0,
        f"spawn {-signal.SIGSEGV} True\nforkserver {-signal.SIGSEGV} True\n",
    ), done.stderr


FORKED_CHILD_FDS = textwrap.dedent(
    """
    import os
    from dspex_actors import Port
    from dspex_actors._ports import _fds
    port = Port.spawn(len, start_method="forkserver")
    assert port.request("ab", timeout=60) == 2
    listed = sorted(_fds.PARENT_FDS)
    null = os.stat(os.devnull).st_rdev
    r, w = os.pipe()
    pid = os.fork()  # another library's fork
    if pid == 0:
        nulled = all(os.fstat(fd).st_rdev == null for fd in listed)
        os.write(w, repr([nulled, sorted(_fds.PARENT_FDS)]).encode())
        os._exit(0)
    os.close(w)
    print(bool(listed), os.read(r, 1000).decode())
    os.waitpid(pid, 0)
    port.close(10)
    """
)


def test_a_forked_child_nulls_the_parents_port_fds_and_lists_none_of_them() -> None:
    """Listed still, a number the child reuses would be nulled by the child's next fork."""
    done = subprocess.run(
        [sys.executable, "-c", FORKED_CHILD_FDS], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (0, "True [True, []]\n"), done.stderr


SERVER_STATE = textwrap.dedent(
    """
    import os, pickle, selectors, signal, socket
    import dspex_actors._ports._forkserver_server as fs
    from dspex_actors._ports._forkserver import _open_cwd

    signal.signal(signal.SIGCHLD, lambda *a: None)

    def state():
        mine, theirs = socket.socketpair()
        st = fs._State(mine, selectors.DefaultSelector(), os.getpid(), fs._dummy_handler())
        return st, theirs

    def start(st, request_id, argv, limit):
        pipes = [os.pipe() for _ in range(4)]
        fds = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][0], _open_cwd()]
        setup = pickle.dumps(([a.encode() for a in argv], dict(os.environb), None,
                              fs.process_state(), limit))
        st.fork(request_id, fds, fs.EXEC + setup)
        (pid,) = [p for p, s in st.starting.items() if s.request_id == request_id]
        return pid, pipes

    def replies(sock):
        sock.setblocking(False)
        data = b""
        try:
            while chunk := sock.recv(4096):
                data += chunk
        except BlockingIOError:
            pass
        return [fs.REPLY.unpack_from(data, i) for i in range(0, len(data), fs.REPLY.size)]

    # 1. Exec'd and exited, reaped in the batch that finds its deadline passed (limit 0),
    # its report's EOF read in the next: started and exited, not stalled.
    st, theirs = state()
    pid, _ = start(st, 1, ["true"], 0.0)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    st.reap()
    st.expire()
    st.read_report(st.starting[pid])
    print(replies(theirs) == [(fs.STARTED, 1, pid), (fs.EXITED, pid, 0)])

    # 2. The parent goes away: a start reaped already is neither signalled nor waited for.
    st, theirs = state()
    pid, _ = start(st, 2, ["true"], 30.0)
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    st.reap()
    given = []
    fs._stop_workers = lambda workers, wake_r, send: given.append(set(workers))
    st.stop(-1)
    print(given == [set()])

    # 3. The parent is gone as a start succeeds: the program is a worker before the reply
    # fails, so the server's exit kills it.
    st, theirs = state()
    pid, pipes = start(st, 3, ["cat"], 30.0)
    with selectors.DefaultSelector() as sel:
        sel.register(st.starting[pid].report_fd, selectors.EVENT_READ)
        sel.select(30)  # its exec closed the report pipe
    theirs.close()
    try:
        st.read_report(st.starting[pid])
    except OSError:
        pass
    print(pid in st.workers)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    """
)


def test_server_state_start_exit_and_parent_loss_orders() -> None:
    """The server's `_State`, driven by hand: an exit reaped before the exec report is read
    is still a start then an exit; a reaped start is left alone at the parent's loss; a
    program whose start cannot be reported is still killed with the others."""
    done = subprocess.run(
        [sys.executable, "-c", SERVER_STATE], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (0, "True\nTrue\nTrue\n"), done.stderr


def test_a_working_directory_we_cannot_hand_over_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_open = os.open

    def no_search(path: Any, flags: int, *args: Any) -> int:
        if path == ".":
            raise PermissionError(13, "Permission denied", ".")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_search)
    starts: list[Callable[[], Port]] = [
        lambda: Port.spawn(echo, start_method=FS),
        lambda: Port.open(["cat"], start_method=FS),
    ]
    for start in starts:
        with pytest.raises(PermissionError, match=r"working directory.*start_method='spawn'"):
            start()
    monkeypatch.undo()
    assert FORK_SERVER.users == 0


def assert_worker_dies_with_parent(script: str, server_signal: int, *args: str) -> None:
    """Run `script` (it prints its fork server's pid and a worker's), send the server
    `server_signal`, SIGKILL the parent: the worker must be gone within 1 s.

    Afterwards the server (a stopped one dies of SIGKILL too) and a worker left over are
    SIGKILLed, and the server, a child of init now, is waited for."""
    server = worker = 0
    try:
        with parent_process(script, *args) as (parent, (server, worker)):
            os.kill(server, server_signal)
            parent.kill()
            parent.wait(10)
            assert wait_for(lambda: gone(worker), timeout=1.0)
    finally:
        for pid in (worker, server):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if server:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(server).wait(10)


STOPPED_SERVER_PARENT = textwrap.dedent(
    """
    import sys, threading
    from dspex_actors import CallTimeout, Port
    from dspex_actors._ports._forkserver import FORK_SERVER

    from dspex_actors.testing import wait_for

    def handler(request):
        print("blocking", file=sys.stderr, flush=True)
        threading.Event().wait()  # busy: not reading stdin, whose EOF would end it too

    port = Port.spawn(handler, start_method="forkserver")
    try:
        port.request("block", timeout=0.2)  # its first request: nothing answered before
    except CallTimeout:
        pass
    wait_for(lambda: "blocking" in port.stderr_tail(), timeout=60)
    print(FORK_SERVER.pid, port.os_pid, flush=True)
    sys.stdin.read()  # until SIGKILLed
    """
)


def test_a_busy_worker_dies_with_the_parent_even_while_the_server_is_stopped() -> None:
    """A forkserver worker watches its own lifeline before its first handler call: busy in it
    with its server stopped (SIGSTOP), it still dies with the parent within 1 s."""
    assert_worker_dies_with_parent(STOPPED_SERVER_PARENT, signal.SIGSTOP)


BLOCKING_MODULE = textwrap.dedent(
    """
    import os, sys, threading
    if os.environ.get("DSPEX_BLOCK_IMPORT"):  # in the worker only: set after our import
        print("importing", file=sys.stderr, flush=True)
        threading.Event().wait()
    def handler(request):
        return request
    """
)

BOOTING_WORKER_PARENT = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    import blocking_module
    from dspex_actors import Port
    from dspex_actors._ports._forkserver import FORK_SERVER
    from dspex_actors.testing import wait_for
    os.environ["DSPEX_BLOCK_IMPORT"] = "1"
    port = Port.spawn(blocking_module.handler, start_method="forkserver")
    wait_for(lambda: "importing" in port.stderr_tail(), timeout=60)
    print(FORK_SERVER.pid, port.os_pid, flush=True)
    sys.stdin.read()  # until SIGKILLed
    """
)


def test_a_booting_worker_dies_when_its_server_and_parent_die_together(
    tmp_path: Any,
) -> None:
    """Before its first request (stuck importing its handler's module), a worker watches no
    lifeline and reads no stdin; the server would kill it on the parent's death, the parent
    on the server's: if both die at once, its armed lifeline (the kernel's watch) does."""
    (tmp_path / "blocking_module.py").write_text(BLOCKING_MODULE)
    assert_worker_dies_with_parent(BOOTING_WORKER_PARENT, signal.SIGKILL, str(tmp_path))
