"""`ProcessPool` and its `PortWorker`: calls, failures (crashes, timeouts, bad replies, a
worker exiting while a grandchild holds its stdout), options, and the worker callbacks driven
by hand, where every checkout failure is a `Remove` with a reason naming it.

White-box parts: `FORK_SERVER` (`dspex_actors._ports._forkserver`) is read to tell the fork
server's pid from the workers' and to check that a pool holds the server for exactly its
life (no public API exposes the server), and one test hands a port to a stranger thread with
`Port._reclaim` to make the pool not own it.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import dspex_actors as da
from dspex_actors import (
    PICKLE_CODEC,
    RAW_CODEC,
    Async,
    CallTimeout,
    From,
    InvalidOption,
    Ok,
    Port,
    PortCheckout,
    PortExited,
    PortSpec,
    PortWorker,
    PortWorkerState,
    ProcessPool,
    Remove,
    Skip,
    WorkerCrashed,
)
from dspex_actors._ports._forkserver import FORK_SERVER
from dspex_actors.testing import wait_for

from support.ports import DETACH_IO, GRANDCHILD, STALL, Grandchildren, echo
from support.processes import wait_forkserver_workers

# One program, told how to misbehave by each request.
MODES = textwrap.dedent(
    """
    import json, struct, sys
    r, w = sys.stdin.buffer, sys.stdout.buffer
    def write(data):
        w.write(struct.pack(">I", len(data)) + data)
        w.flush()
    while len(h := r.read(4)) == 4:
        msg = json.loads(r.read(struct.unpack(">I", h)[0]))
        mode = msg.get("mode", "echo")
        if mode == "garbage":
            w.write(b"garbage!"); w.flush()
        elif mode == "bad_json":
            write(b"{not json")
        elif mode == "wrong_id":
            write(json.dumps({"id": -1}).encode())
        elif mode == "truncated":
            w.write(struct.pack(">I", 100) + b"abc"); w.flush()
            sys.exit(0)
        else:
            write(json.dumps({"id": msg["id"], "double": msg["n"] * 2}).encode())
    """
)
ARGV = [sys.executable, "-c", MODES]


def double(request: Any) -> Any:
    if request == "boom":
        raise ValueError("no booms")
    if request == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if isinstance(request, dict) and "sleep" in request:
        time.sleep(request["sleep"])  # sleep-ok: a stalled child program
        return "slept"
    return request * 2


class Pools:
    def __init__(self) -> None:
        self.pools: list[da.ActorHandle] = []

    def start(self, **options: Any) -> ProcessPool:
        """Start a pool and wait until every worker has answered its ping and is idle."""
        pool = ProcessPool.start(**options)
        self.pools.append(pool)
        wait_for(lambda: settled(pool, options["pool_size"]), timeout=30)
        return pool

    def close(self) -> None:
        for pool in self.pools:
            if pool.is_alive():
                pool.stop(timeout=30)


@pytest.fixture
def pools() -> Iterator[Pools]:
    p = Pools()
    try:
        yield p
    finally:
        p.close()


def worker_pids() -> list[int]:
    """The live worker processes: forkserver workers are the fork server's children (its
    zygote, the worker it forks ahead, left out)."""
    server = FORK_SERVER.pid
    if server is not None:
        return sorted(wait_forkserver_workers(server))
    pids = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            continue  # it exited between the listing and the look
    return pids


def settled(pool: ProcessPool, size: int) -> bool:
    status = pool.status()
    return status.idle == size and status.busy == 0 and status.initializing == 0


# --- calls -------------------------------------------------------------------------------------


def test_call_runs_a_closure_in_a_worker_process(pools: Pools) -> None:
    offset = 100
    pool = pools.start(target=lambda request, k: request * k + offset, args=(3,), pool_size=2)
    assert [pool.call(n, timeout=30) for n in range(5)] == [100, 103, 106, 109, 112]
    assert pool.status().workers_started == 2


def test_call_on_an_argv_pool_returns_the_reply_mapping(pools: Pools) -> None:
    pool = pools.start(argv=ARGV, pool_size=1)
    reply = pool.call({"n": 21}, timeout=30)
    assert reply["double"] == 42


def test_worker_stats_count_checkouts_and_checkins_per_worker(pools: Pools) -> None:
    pool = pools.start(target=double, pool_size=1)
    for n in range(3):
        assert pool.call(n, timeout=30) == n * 2
    wait_for(lambda: pool.worker_stats()[0].successful_checkins == 3, timeout=10)
    stats = pool.worker_stats()[0]
    assert (stats.checkouts, stats.error_checkins) == (3, 0)


def test_a_handler_error_is_remote_error_and_the_worker_stays(pools: Pools) -> None:
    pool = pools.start(target=double, pool_size=1)
    with pytest.raises(da.RemoteError, match="no booms") as info:
        pool.call("boom", timeout=30)
    assert info.value.kind == "ValueError"
    assert pool.call(4, timeout=30) == 8
    assert pool.status().workers_removed == 0


def raises_unprintable(request: Any) -> Any:
    """Raises an exception whose ``str()`` raises, or (``"not-a-str"``) returns a non-string."""

    class Unprintable(Exception):
        def __str__(self) -> Any:
            if request == "not-a-str":
                return 42
            raise LookupError("no message")

    if request in ("raise", "not-a-str"):
        raise Unprintable()
    return request


@pytest.mark.parametrize("request_", ["raise", "not-a-str"])
def test_a_handler_error_whose_message_cannot_be_printed_is_still_remote_error(
    pools: Pools, request_: str
) -> None:
    pool = pools.start(target=raises_unprintable, pool_size=1, retries=2)
    with pytest.raises(da.RemoteError) as info:
        pool.call(request_, timeout=30)
    assert (info.value.kind, info.value.message) == ("Unprintable", "<exception str() failed>")
    assert pool.call(4, timeout=30) == 4
    assert pool.status().workers_removed == 0


# --- failures ----------------------------------------------------------------------------------


def test_a_dead_idle_worker_is_replaced_without_any_caller_noticing(pools: Pools) -> None:
    pool = pools.start(target=double, pool_size=2)
    assert pool.call(1, timeout=30) == 2
    victim = worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: pool.status().workers_removed == 1 and settled(pool, 2), timeout=10)
    assert victim not in worker_pids()
    assert [pool.call(n, timeout=30) for n in range(10)] == [n * 2 for n in range(10)]


def test_a_worker_dying_mid_request_raises_worker_crashed(pools: Pools) -> None:
    pool = pools.start(target=double, pool_size=1)
    with pytest.raises(da.WorkerCrashed) as info:
        pool.call("die", timeout=30)
    assert info.value.exit_status == -signal.SIGKILL
    assert pool.call(5, timeout=30) == 10  # the replacement serves
    wait_for(lambda: settled(pool, 1), timeout=10)


def test_retries_rerun_a_request_whose_worker_crashed(pools: Pools, tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"

    def flaky(request: Any, path: str) -> Any:
        if not os.path.exists(path):
            open(path, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return request + 1

    pool = pools.start(target=flaky, args=(str(marker),), pool_size=1, retries=2)
    assert pool.call(41, timeout=30) == 42
    assert pool.status().workers_removed == 1


# A pool worker: the first request any worker of the pool sees (the marker file does not exist
# yet) detaches a grandchild, records its pid in the marker and exits; later ones are answered.
POOL_WORKER = (
    f"GRANDCHILD = {GRANDCHILD!r}\n"
    + DETACH_IO
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


def test_a_pool_worker_exiting_mid_request_with_a_grandchild_on_stdout_is_worker_crashed(
    tmp_path: Path, grandchildren: Grandchildren
) -> None:
    """`ProcessPool.call` raises `WorkerCrashed`, not `CallTimeout`."""
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


def test_retries_rerun_a_call_whose_worker_exited_with_a_grandchild_on_stdout(
    tmp_path: Path, grandchildren: Grandchildren
) -> None:
    """The crash is a `WorkerCrashed`, so ``retries=1`` runs the request again."""
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


def test_a_timed_out_request_removes_its_worker_so_no_one_reads_a_stale_reply(
    pools: Pools,
) -> None:
    pool = pools.start(target=double, pool_size=1)
    assert pool.call(1, timeout=30) == 2
    with pytest.raises(da.CallTimeout):
        pool.call({"sleep": 1.0}, timeout=0.2)
    wait_for(lambda: pool.status().workers_removed == 1, timeout=10)
    # The next caller gets a fresh worker and its own answer, never "slept".
    assert pool.call(21, timeout=30) == 42


HOLDS_FIRST_REPLY = """
import json, struct, sys
r, w = sys.stdin.buffer, sys.stdout.buffer
def read():
    h = r.read(4)
    return None if len(h) < 4 else json.loads(r.read(struct.unpack(">I", h)[0]))
def write(msg):
    data = json.dumps(msg).encode()
    w.write(struct.pack(">I", len(data)) + data)
    w.flush()
held = []
while (msg := read()) is not None:
    if msg.get("hold"):
        held.append(msg)  # answered late: just before the next request's reply
        continue
    for old in held:
        write(old)
    held.clear()
    write(msg)
"""


def test_a_lease_that_swallows_a_request_timeout_does_not_pass_the_stale_reply_on() -> None:
    """A caller catches `CallTimeout` from `port.request` inside a checkout and checks
    the worker in with ``"ok"``; the next caller (same request id, as a protocol with its own
    ids does) must not read the late reply meant for the first one."""
    pool = ProcessPool.start([sys.executable, "-c", HOLDS_FIRST_REPLY], pool_size=1)
    try:

        def first(from_: Any, port: Port) -> tuple[Any, str]:
            with pytest.raises(CallTimeout):
                port.request({"id": "q", "n": 1, "hold": True}, timeout=0.2)
            return None, "ok"  # the caller swallowed the timeout

        pool.checkout(None, first, timeout=10)

        def second(from_: Any, port: Port) -> tuple[Any, str]:
            return port.request({"id": "q", "n": 2}, timeout=10), "ok"

        assert pool.checkout(None, second, timeout=10)["n"] == 2
    finally:
        pool.stop()


@pytest.mark.parametrize("mode", ["garbage", "bad_json", "wrong_id", "truncated"])
def test_bad_replies_are_protocol_errors_the_worker_is_removed_and_the_pool_serves(
    pools: Pools, mode: str
) -> None:
    pool = pools.start(argv=ARGV, pool_size=1, max_frame=1024)
    with pytest.raises(da.ProtocolError):
        pool.call({"mode": mode, "n": 1}, timeout=30)
    wait_for(lambda: pool.status().workers_removed == 1, timeout=10)
    assert pool.call({"n": 2}, timeout=30)["double"] == 4


def test_an_exception_inside_a_lease_removes_the_worker(pools: Pools) -> None:
    pool = pools.start(target=double, pool_size=1)
    seen: list[Port] = []

    def use_then_fail() -> None:
        with pool.lease("work", timeout=30) as lease:
            port = lease.client_state
            assert isinstance(port, Port)
            assert port.owner is threading.current_thread()
            seen.append(port)
            raise RuntimeError("caller bug")

    with pytest.raises(RuntimeError, match="caller bug"):
        use_then_fail()
    port = seen[0]
    wait_for(lambda: pool.status().workers_removed == 1, timeout=10)
    assert port.wait_exit(10) == -signal.SIGKILL
    assert pool.call(3, timeout=30) == 6


def test_checkin_close_removes_the_worker_and_ok_keeps_it(pools: Pools) -> None:
    pool = pools.start(target=double, pool_size=1)

    def use(from_: From, port: Port) -> tuple[Any, str]:
        return port.request(2, timeout=30), "ok"

    assert pool.checkout("keep", use, timeout=30) == 4
    wait_for(lambda: settled(pool, 1), timeout=10)
    assert pool.status().workers_removed == 0

    def use_and_close(from_: From, port: Port) -> tuple[Any, str]:
        return port.request(3, timeout=30), "close"

    assert pool.checkout("drop", use_and_close, timeout=30) == 6
    wait_for(lambda: pool.status().workers_removed == 1, timeout=10)


def test_stopping_the_pool_reaps_every_worker_even_one_checked_out(pools: Pools) -> None:
    pool = pools.start(target=double, pool_size=2)
    lease = pool.lease("held", timeout=30)
    with lease:
        held: Port = lease.client_state
        pids = worker_pids()
        assert len(pids) == 2
        pool.stop(timeout=30)
        assert held.wait_exit(10) is not None
    assert all(not psutil.pid_exists(pid) for pid in pids)


def test_bad_options_raise_invalid_option_before_anything_starts() -> None:
    with pytest.raises(da.InvalidOption, match="argv"):
        ProcessPool.start(pool_size=1)
    with pytest.raises(da.InvalidOption, match="argv"):
        ProcessPool.start(ARGV, double, pool_size=1)
    with pytest.raises(da.InvalidOption, match="retries"):
        ProcessPool.start(target=double, pool_size=1, retries=-1)
    with pytest.raises(da.InvalidOption, match="start_method"):
        ProcessPool.start(target=double, pool_size=1, start_method="teleport")
    with pytest.raises(da.InvalidOption, match="pool_size"):
        ProcessPool.start(target=double, pool_size=0)


@pytest.mark.parametrize(
    "options",
    [
        {"target": echo, "max_frame": 0},
        {"target": echo, "codec": "json"},
        {"target": echo, "codec": RAW_CODEC},
        {"argv": [sys.executable, "-c", STALL], "codec": PICKLE_CODEC},
    ],
    ids=["max_frame_0", "codec_not_a_codec", "raw_codec_for_target", "pickle_for_argv"],
)
def test_process_pool_start_refuses_a_bad_max_frame_or_codec_before_starting_anything(
    options: dict[str, Any],
) -> None:
    """`ProcessPool.start` documents ``InvalidOption: a bad option; nothing was
    started``; a bad `max_frame` or codec must not become a pool whose workers fail forever."""
    try:
        pool = ProcessPool.start(pool_size=1, **options)
    except InvalidOption:
        return
    pool.stop()  # only reached without the check: do not leak the pool
    pytest.fail(f"ProcessPool.start accepted {options}")


def test_a_checkout_command_that_is_not_a_port_checkout_is_skipped() -> None:
    pool = da.Pool.start(PortWorker, PortSpec(target=double), pool_size=1)
    try:
        with pytest.raises(da.InvalidOption, match="PortCheckout"):
            pool.checkout("plain", lambda from_, port: (None, "ok"), timeout=30)
        assert pool.status().workers_removed == 0
    finally:
        pool.stop(timeout=30)


# --- every checkout failure is a Remove naming its reason (PortWorker unit) ------------------


class ScriptedThread(threading.Thread):
    def __init__(self, answers: list[Any]) -> None:
        super().__init__(target=lambda: None)
        self.answers = answers

    def is_alive(self) -> bool:
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return bool(answer)


@pytest.fixture
def worker() -> Iterator[tuple[PortWorker, PortWorkerState, Any]]:
    """A PortWorker driven by hand; this test's thread plays the pool (the port's owner)."""
    w = PortWorker()
    result = w.init_pool(PortSpec(target=double))
    assert isinstance(result, Ok)
    pool_state = result.values[0]
    started = w.init_worker(pool_state)
    assert isinstance(started, Async)
    state = started.fn()  # the worker answered its ping; this thread plays the pool
    try:
        yield w, state, pool_state
    finally:
        w.terminate_worker(da.SHUTDOWN, state, pool_state)
        w.terminate_pool(da.SHUTDOWN, pool_state)  # releases the fork server


FROM = From(pool=None, ref=object())  # type: ignore[arg-type]


def checkout(
    w: PortWorker, state: PortWorkerState, pool_state: Any, owner: Any
) -> Ok | Remove | Skip:
    return w.handle_checkout(PortCheckout(owner, "cmd"), FROM, state, pool_state)


def test_checkout_of_a_dead_port_is_remove_checkout_failed_port_closed(
    worker: tuple[PortWorker, PortWorkerState, Any],
) -> None:
    w, state, pool_state = worker
    state.port.kill()
    state.port.wait_exit(10)
    result = checkout(w, state, pool_state, threading.current_thread())
    assert result == Remove(("checkout_failed", "port_closed"), pool_state)


def test_checkout_of_a_port_the_pool_does_not_own_is_checkout_failed_port_not_owned(
    worker: tuple[PortWorker, PortWorkerState, Any],
) -> None:
    w, state, pool_state = worker
    stranger = threading.Thread(target=lambda: None)
    state.port._reclaim(stranger)
    result = checkout(w, state, pool_state, threading.current_thread())
    assert result == Remove(("checkout_failed", "port_not_owned"), pool_state)
    state.port._reclaim(threading.current_thread())


def test_checkout_of_something_not_a_port_is_checkout_failed_not_a_port(
    worker: tuple[PortWorker, PortWorkerState, Any],
) -> None:
    w, _, pool_state = worker
    broken = PortWorkerState(port="not a port")  # type: ignore[arg-type]
    result = checkout(w, broken, pool_state, threading.current_thread())
    assert result == Remove(("checkout_failed", "not_a_port"), pool_state)


def test_connect_failures_map_to_connect_failed_exited_and_error(
    worker: tuple[PortWorker, PortWorkerState, Any],
) -> None:
    w, state, pool_state = worker
    assert checkout(w, state, pool_state, ScriptedThread([False])) == Remove(
        ("connect_failed", "target_dead"), pool_state
    )
    assert checkout(w, state, pool_state, ScriptedThread([True, False])) == Remove(
        ("connect_exited", "target_exited"), pool_state
    )
    boom = OSError("weird")
    assert checkout(w, state, pool_state, ScriptedThread([True, boom])) == Remove(
        ("connect_error", ("OSError", boom)), pool_state
    )
    assert state.port.owner is threading.current_thread()  # never lost on the way


def test_a_successful_checkout_hands_the_port_over_and_checkin_takes_it_back(
    worker: tuple[PortWorker, PortWorkerState, Any],
) -> None:
    w, state, pool_state = worker
    release = threading.Event()
    client = threading.Thread(target=release.wait, args=(10,))
    client.start()
    try:
        result = checkout(w, state, pool_state, client)
        assert result == Ok(state.port, state, pool_state)
        assert state.port.owner is client
        assert state.current_command == "cmd"
        assert w.handle_checkin("ok", FROM, state, pool_state) == Ok(state, pool_state)
        assert state.port.owner is threading.current_thread()
        assert state.current_command is None
    finally:
        release.set()
        client.join()


def test_ping_and_info_remove_a_worker_whose_process_died(
    worker: tuple[PortWorker, PortWorkerState, Any],
) -> None:
    w, state, pool_state = worker
    assert w.handle_ping(state, pool_state) == Ok(state)
    assert w.handle_info("unrelated", state) == Ok(state)
    state.port.kill()
    status = state.port.wait_exit(10)
    assert w.handle_info(PortExited(state.port, status), state) == Remove(("port_exited", -9))
    assert w.handle_ping(state, pool_state) == Remove(("port_exited", -9))


STALLED = [sys.executable, "-c", "import time; time.sleep(30)"]  # sleep-ok: stall


def test_an_argv_worker_that_does_not_answer_its_ping_is_removed() -> None:
    w = PortWorker()
    ok = w.init_pool(PortSpec(argv=STALLED, ping={"command": "ping"}, init_timeout=0.2))
    assert isinstance(ok, Ok)
    pool_state = ok.values[0]
    port = Port.open(STALLED)
    state = PortWorkerState(port)
    try:
        result = w.handle_ping(state, pool_state)
        assert isinstance(result, Remove)
        assert result.reason[0] == "ping_failed"
        assert isinstance(result.reason[1], da.CallTimeout)
    finally:
        port.close(timeout=0.1)
        w.terminate_pool("normal", pool_state)  # drops the pool's fork-server reference


def test_a_worker_that_never_answers_its_first_ping_is_not_handed_out() -> None:
    w = PortWorker()
    ok = w.init_pool(PortSpec(argv=STALLED, ping={"command": "ping"}, init_timeout=0.2))
    assert isinstance(ok, Ok)
    started = w.init_worker(ok.values[0])
    assert isinstance(started, Async)
    try:
        with pytest.raises(da.WorkerStartError) as info:
            started.fn()  # the pool logs this and retries init_worker
        assert isinstance(info.value.__cause__, da.CallTimeout)
    finally:
        w.terminate_pool("normal", ok.values[0])  # drops the pool's fork-server reference
    assert ok.values[0].live == set()


def pid_and_parent(request: Any) -> list[int]:
    return [os.getpid(), os.getppid()]


@pytest.mark.parametrize(
    ("start_method", "forked_by_server"),
    [(None, True), ("forkserver", True), ("spawn", False), ("fork", False)],
)
def test_target_workers_default_to_the_fork_server_which_the_pool_holds_for_its_life(
    pools: Pools, start_method: str | None, forked_by_server: bool
) -> None:
    """The default start method is safe (no fork of this threaded process) and replaces a
    worker fast; the pool holds the server until it stops, then the server is gone."""
    assert FORK_SERVER.users == 0
    pool = pools.start(target=pid_and_parent, pool_size=2, start_method=start_method)
    pid, parent = pool.call(None, timeout=30)
    server = FORK_SERVER.pid
    if forked_by_server:
        assert FORK_SERVER.users == 3  # the pool's own reference, and one per live port
        assert server is not None
        assert parent == server != os.getpid()
    else:
        assert server is None
        assert parent == os.getpid()
    pool.stop(timeout=30)
    assert FORK_SERVER.users == 0
    assert FORK_SERVER.pid is None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    if server is not None:
        assert not psutil.pid_exists(server)


class CountingPool(ProcessPool):
    """A subclass that wraps `checkout` (as for metrics or a policy)."""

    checkouts = 0

    def checkout(
        self,
        command: Any,
        fn: Any,
        timeout: float | None = 5.0,
        *,
        worker: int | None = None,
        affinity: str = "prefer",
    ) -> Any:
        CountingPool.checkouts += 1
        return super().checkout(command, fn, timeout, worker=worker, affinity=affinity)


def test_call_goes_through_a_subclass_s_checkout() -> None:
    """`call` checks a worker out with `self.checkout`, so an override sees every call."""
    CountingPool.checkouts = 0
    pool = CountingPool.start(target=double, pool_size=1)
    try:
        assert pool.call(7, timeout=30) == double(7)
        assert pool.call(8, timeout=30) == double(8)
    finally:
        pool.stop(timeout=30)
    assert CountingPool.checkouts == 2
