"""ProcessPool: no single point of failure and no caller harmed by another's mistake (issue
"No single point of failure, and no hang", items 1, 2, 3, 6, 7, 8 and the pool parts of 11).

Every test here is a reproduction: it fails on the code the issue was written against, for the
reason the issue gives, and passes once the item's "Want" is implemented. Processes are real;
every wait is bounded and synchronised on an event (a pidfd, a FIFO, a marker file, the pool's
own status), and every process a test saw is killed in its cleanup, wherever it was reparented.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import dspex_actors as da
from dspex_actors.testing import sync, wait_for

from support.lifecycle import ProcessPools as Pools
from support.lifecycle import settled
from support.processes import (
    PROGRAMS,
    Seen,
    descendants,
    kill_all,
    leftovers,
    stall_interpreter_starts,
    wait_gone,
)

FRAME_WORKER = [sys.executable, os.path.join(PROGRAMS, "frame_worker.py")]


# --- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def pools() -> Iterator[Pools]:
    p = Pools()
    try:
        yield p
    finally:
        p.close()


def causes(error: BaseException) -> list[BaseException]:
    """`error` and everything it carries (`__cause__`, `__context__`), in order."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def is_public(error: BaseException) -> bool:
    """A builtin exception, or one `dspex_actors` exports."""
    kind = type(error)
    if kind.__module__ == "builtins":
        return True
    return kind.__name__ in da.__all__ and getattr(da, kind.__name__) is kind


def worker_pid(request: Any) -> Any:
    if request == "pid":
        return os.getpid()
    return request * 2 if isinstance(request, int) else request


def fifo_reader(request: Any) -> Any:
    """`"pid"`: the worker's pid; a path: block until a writer opens that FIFO, return what it
    wrote (so a test knows the handler is inside its request once its open returns)."""
    if request == "pid":
        return os.getpid()
    with open(request, "rb") as fifo:
        return fifo.read().decode()


def open_fifo_writer(path: Path, timeout: float = 10.0) -> int:
    """Open `path` for writing once its reader has opened it (ENXIO until then)."""

    def attempt() -> int | None:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return None
            raise

    fd: int = wait_for(attempt, timeout=timeout)
    return fd


def fork_server_of(worker: int) -> int:
    """The process that forked a forkserver worker: the fork server (not this process)."""
    server = psutil.Process(worker).ppid()
    assert server not in (os.getpid(), 0, 1), f"worker {worker} is not a fork-server child"
    return server


# --- 1. the fork server is not a single point of failure ---------------------------------------


def test_a_worker_outlives_a_sigkilled_fork_server(pools: Pools) -> None:
    """Item 1: a worker's death signal and lifeline point at the pool's owner, not at the fork
    server: SIGKILLing the server loses no worker, and the pool serves on with the same ones."""
    pool = pools.start(target=worker_pid, pool_size=2)
    with pool.lease(None, timeout=10) as a, pool.lease(None, timeout=10) as b:
        workers = {a.client_state.os_pid, b.client_state.os_pid}
    server = fork_server_of(next(iter(workers)))
    os.kill(server, signal.SIGKILL)
    assert wait_gone(server, 10), "the fork server did not die"
    served = set()
    for _ in range(8):
        try:
            served.add(pool.call("pid", timeout=10))
        except da.WorkerCrashed as exc:
            pytest.fail(f"a worker died with the fork server: {exc!r}")
    assert served <= workers, (
        f"calls after the fork server's death were served by {served - workers}, not by the "
        f"original workers {workers}: they died with the server"
    )
    sync(pool.actor_ref)
    assert pool.status().workers_removed == 0


def test_a_request_in_flight_survives_a_sigkilled_fork_server(pools: Pools, tmp_path: Path) -> None:
    """Item 1: losing the server loses no in-flight request (retries=0: nothing to hide it)."""
    fifo = tmp_path / "in-flight"
    os.mkfifo(fifo)
    pool = pools.start(target=fifo_reader, pool_size=1, retries=0)
    server = fork_server_of(pool.call("pid", timeout=10))
    outcome: list[Any] = []
    caller = threading.Thread(
        target=lambda: outcome.append(_call(pool, str(fifo), timeout=30)), name="in-flight"
    )
    caller.start()
    fd = -1
    try:
        fd = open_fifo_writer(fifo)  # returns once the handler is inside the request
        os.kill(server, signal.SIGKILL)
        assert wait_gone(server, 10), "the fork server did not die"
        with contextlib.suppress(BrokenPipeError):  # the worker died with the server
            os.write(fd, b"answered after the server died")
    finally:
        if fd >= 0:
            os.close(fd)
        caller.join(40)
    assert not caller.is_alive()
    assert outcome == ["answered after the server died"], (
        f"the request in flight when the fork server died got {outcome[0]!r}"
    )


def _call(pool: da.ProcessPool, request: Any, timeout: float) -> Any:
    try:
        return pool.call(request, timeout=timeout)
    except Exception as exc:
        return exc


def double_slowly(request: Any) -> Any:
    # The request's own work: 10 ms, so that 800 requests span many kills (not a sync point).
    time.sleep(0.01)  # sleep-ok: simulated work in the worker
    return {"double": request["n"] * 2}


class AnyDescendantKiller(threading.Thread):
    """SIGKILLs a random live descendant of this process (fork server, workers, anything
    booting) every `period` seconds until stopped; remembers every process it ever saw. Its
    first victim is the fork server (so every run kills it at least once)."""

    def __init__(self, period: float) -> None:
        super().__init__(name="chaos-killer-any-descendant")
        self.period = period
        self.stopped = threading.Event()
        self.kills = 0
        self.server_kills = 0
        self.seen: set[Seen] = set()
        self.rng = random.Random(12)

    def run(self) -> None:
        me = os.getpid()
        while not self.stopped.wait(self.period):  # the chaos cadence, not a synchronisation
            victims = descendants()
            self.seen |= {s for s in map(Seen.of, victims) if s is not None}
            if not victims:
                continue
            servers = [v for v in victims if _is_fork_server(v, me)]
            victim = servers[0] if servers and not self.kills else self.rng.choice(victims)
            try:
                is_server = _is_fork_server(victim, me)
                os.kill(victim.pid, signal.SIGKILL)
            except (ProcessLookupError, psutil.Error):
                continue
            self.kills += 1
            self.server_kills += is_server


def _is_fork_server(process: psutil.Process, me: int) -> bool:
    """A child of this process that has children of its own: the fork server."""
    try:
        return process.ppid() == me and bool(process.children())
    except psutil.Error:
        return False


@pytest.mark.timeout(300)
def test_every_request_is_served_while_any_descendant_is_sigkilled_every_50_ms() -> None:
    """Item 1's chaos: 8 clients x 100 calls on a default (forkserver) target pool of 4 with
    retries=3, while any descendant of this process, the fork server included, is SIGKILLed
    every 50 ms. Every request is served with its own answer, the pool is back at full size
    afterwards, and nothing is left running after stop() (wherever it was reparented)."""
    clients, calls, size = 8, 100, 4
    pool = da.ProcessPool.start(target=double_slowly, pool_size=size, retries=3)
    killer = AnyDescendantKiller(period=0.05)
    failures: list[tuple[int, Any]] = []
    served = [0]
    lock = threading.Lock()
    abort = threading.Event()  # the first failure ends the run: one is enough to fail it

    def client(offset: int) -> None:
        for i in range(calls):
            if abort.is_set():
                return
            n = offset * 1000 + i
            try:
                reply = pool.call({"n": n}, timeout=15)
            except Exception as exc:
                reply = exc
            with lock:
                if isinstance(reply, dict) and reply.get("double") == 2 * n:
                    served[0] += 1
                else:
                    failures.append((n, reply))
                    abort.set()

    threads = [
        threading.Thread(target=client, args=(t,), name=f"chaos-client-{t}") for t in range(clients)
    ]
    try:
        wait_for(lambda: settled(pool, size), timeout=30)
        killer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        assert not any(t.is_alive() for t in threads), "a client is still waiting"
        killer.stopped.set()
        killer.join(10)
        assert failures == [], (
            f"served {served[0]} of {clients * calls} before the first failure; "
            f"{killer.kills} kills ({killer.server_kills} of a fork server with workers); "
            f"first failures: {failures[:3]}"
        )
        assert served[0] == clients * calls
        assert killer.kills > 0
        assert killer.server_kills > 0
        wait_for(lambda: settled(pool, size), timeout=30)  # back at full size
        assert pool.call({"n": 21}, timeout=30) == {"double": 42}
    finally:
        abort.set()
        killer.stopped.set()
        if killer.is_alive() or killer.ident is not None:
            killer.join(10)
        for t in threads:
            if t.ident is not None:
                t.join(30)
        seen_before_stop = {s for s in map(Seen.of, descendants()) if s is not None}
        with contextlib.suppress(da.NoProc):
            pool.stop(timeout=60)
        everything = killer.seen | seen_before_stop
        left = leftovers(everything)
        kill_all(everything)
    assert left == [], f"still running after stop(): {left}"


# --- 2. a leftover frame never reaches the next caller ------------------------------------------


def test_a_leftover_frame_never_reaches_the_next_caller_with_caller_chosen_ids(
    pools: Pools,
) -> None:
    """Item 2: a worker that wrote two frames for one request (progress, then reply) still holds
    the reply at checkin. It must be removed: B, C and D each get the reply to their own request,
    never the previous caller's (ids chosen by the caller, as the docs allow)."""
    pool = pools.start(argv=FRAME_WORKER, pool_size=1)
    first = pool.call({"id": "req", "x": 1, "progress": True}, timeout=10)
    assert first["x"] == 1
    for x in (2, 3, 4):
        reply = pool.call({"id": "req", "x": x}, timeout=10)
        assert reply.get("x") == x, (
            f"the caller asking x={x} got {reply}: a reply produced for another caller"
        )
        assert reply.get("result") == 10 * x
    sync(pool.actor_ref)
    assert pool.status().workers_removed == 1  # the worker with the unread frame, at checkin


def test_a_leftover_frame_never_reaches_the_next_caller_with_generated_ids(pools: Pools) -> None:
    """Item 2: with generated ids the leftover frame made the next caller's request fail with
    `ProtocolError: reply id mismatch` although it ran; it must get its own reply."""
    pool = pools.start(argv=FRAME_WORKER, pool_size=1)
    assert pool.call({"x": 1, "progress": True}, timeout=10)["x"] == 1
    reply = pool.call({"x": 2}, timeout=10)
    assert reply["x"] == 2
    assert reply["result"] == 20


def test_a_frame_written_while_idle_never_reaches_the_next_caller(
    pools: Pools, tmp_path: Path
) -> None:
    """Item 2: a frame an idle worker writes (here: on SIGUSR1, after its reply) must not be
    lent to the next caller as its reply; that worker is never lent again."""
    marker = tmp_path / "stray-written"
    pool = pools.start(argv=FRAME_WORKER, pool_size=1)
    first = pool.call({"id": "req", "x": 1, "stray": str(marker)}, timeout=10)
    assert first["x"] == 1
    os.kill(first["pid"], signal.SIGUSR1)
    wait_for(marker.exists, timeout=10)  # the stray frame is in the idle worker's stdout
    reply = pool.call({"id": "req", "x": 2}, timeout=10)
    assert reply.get("x") == 2, (
        f"the caller asking x=2 got {reply}: a frame its worker wrote while idle"
    )
    assert not reply.get("stray")


# --- 3. a worker that can never start -----------------------------------------------------------


def test_a_missing_program_fails_calls_with_its_file_not_found_error(pools: Pools) -> None:
    """Item 3: a call on a pool whose program does not exist raises an error that carries the
    start failure (`FileNotFoundError` naming the program as its cause), not a bare
    `PoolTimeout`; no private exception class reaches the caller."""
    pool = pools.start(argv=["/nonexistent/prog"], pool_size=2, ready=False)
    with pytest.raises(da.DspexActorsError) as info:
        pool.call({"x": 1}, timeout=3)
    chain = causes(info.value)
    missing = [e for e in chain if isinstance(e, FileNotFoundError)]
    assert missing, f"{info.value!r} does not carry the start failure; it carries {chain}"
    assert "/nonexistent/prog" in str(missing[0])
    assert is_public(info.value), f"a private exception class reached the caller: {info.value!r}"


STARTS_THEN_FAILS = 'echo start >> "$1"; echo "cannot load the model" >&2; exit 3'


def test_a_worker_that_exits_at_once_fails_calls_with_its_exit_status_and_stderr_tail(
    pools: Pools, tmp_path: Path
) -> None:
    """Item 3: the error a caller gets carries the start failure: the exit status (3) and the
    tail of what the program wrote on stderr (on the error or on an exception it carries, as
    `exit_status` / `stderr_tail` attributes or in its message)."""
    argv = ["/bin/sh", "-c", STARTS_THEN_FAILS, "sh", str(tmp_path / "starts")]
    pool = pools.start(argv=argv, pool_size=1, ping={"x": 0}, ready=False)
    with pytest.raises(da.DspexActorsError) as info:
        pool.call({"x": 1}, timeout=3)
    chain = causes(info.value)
    assert any(getattr(e, "exit_status", None) == 3 for e in chain), (
        f"{info.value!r} does not carry the worker's exit status 3; it carries {chain}"
    )

    def mentions_stderr(e: BaseException) -> bool:
        tail = getattr(e, "stderr_tail", None) or []
        return any("cannot load the model" in line for line in tail) or (
            "cannot load the model" in str(e)
        )

    assert any(mentions_stderr(e) for e in chain), f"no stderr tail in {chain}"
    assert is_public(info.value), f"a private exception class reached the caller: {info.value!r}"


def test_no_private_exception_reaches_a_caller_when_the_program_exits_at_once(
    pools: Pools,
) -> None:
    """Item 3: `/bin/true` (no ping: each worker joins the pool as soon as it is started, and is
    often dead before the request is written) must never leak a private exception class to a
    caller. Which way each call fails is a race (a dead worker, or none started in time while
    starts back off), so 10 calls are made (retries=3)."""
    pool = pools.start(argv=["/bin/true"], pool_size=1, retries=3, ready=False)
    private = []
    for _ in range(10):
        try:
            pool.call({"x": 1}, timeout=1)
        except Exception as exc:
            if not is_public(exc):
                private.append(exc)
    assert private == [], (
        f"{len(private)} of 10 calls raised a private exception class: "
        f"{type(private[0]).__module__}.{type(private[0]).__qualname__}"
    )


def test_start_failures_back_off_instead_of_restarting_in_a_storm(
    pools: Pools, tmp_path: Path
) -> None:
    """Item 3: a program that always fails to start is started again with exponential, capped
    backoff, not hundreds of times a second: a pool of 2 must not reach 40 starts within 3 s
    (room for any sane backoff; the storm gets there in milliseconds), and it does retry."""
    counter = tmp_path / "starts"
    argv = ["/bin/sh", "-c", STARTS_THEN_FAILS, "sh", str(counter)]

    def starts() -> int:
        return len(counter.read_text().splitlines()) if counter.exists() else 0

    pool = pools.start(argv=argv, pool_size=2, ping={"x": 0}, ready=False)
    began = time.monotonic()
    try:
        wait_for(lambda: starts() >= 40, timeout=3.0, interval=0.05)
    except TimeoutError:
        pass  # fewer than 40 starts in 3 s: backing off
    else:
        took = time.monotonic() - began
        pytest.fail(f"{starts()} starts within {took:.2f} s: a restart storm, no backoff")
    pool.stop(timeout=30)
    assert starts() >= 2, "the pool gave up instead of retrying with backoff"


# --- 6. a thread that ends inside a lease -------------------------------------------------------


def test_a_thread_that_ends_inside_a_lease_gives_its_worker_back(pools: Pools) -> None:
    """Item 6: two client threads enter a lease and end without leaving it. Their workers must
    be returned (or removed and replaced), as an actor client's are: later calls are served."""
    pool = pools.start(target=worker_pid, pool_size=2)
    entered: list[bool] = []

    def leave_without_checkin() -> None:
        lease = pool.lease(None, timeout=10)
        lease.__enter__()  # and the thread ends here, inside the lease
        entered.append(True)

    threads = [threading.Thread(target=leave_without_checkin) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert entered == [True, True]
    try:
        assert pool.call(21, timeout=5) == 42
    except da.PoolTimeout:
        pytest.fail(f"the workers of two dead threads are still checked out: {pool.status()}")
    wait_for(lambda: settled(pool, 2), timeout=10)


# --- 7. a caller's bad request never touches a worker --------------------------------------------


def circular() -> Any:
    items: list[Any] = [1]
    items.append(items)
    return {"items": items}


BAD_REQUESTS = [
    pytest.param(lambda: {"items": [1, {1, 2}]}, "set", id="set"),
    pytest.param(lambda: {"items": [1, object()]}, "object", id="object"),
    pytest.param(lambda: {"items": [1, b"raw"]}, "bytes", id="bytes"),
    pytest.param(lambda: {"items": [1, math.nan]}, "float", id="nan"),
    pytest.param(circular, "list", id="circular-list"),
]


@pytest.mark.parametrize(("make", "kind"), BAD_REQUESTS)
def test_a_request_that_cannot_be_encoded_is_refused_and_the_worker_kept(
    pools: Pools, make: Any, kind: str
) -> None:
    """Item 7: a request the codec cannot encode is the caller's mistake: `ProtocolError` before
    any worker is touched, the worker kept, and the message names the offending value's type and
    where it sits (under ``items``), not the envelope ("cannot encode list/dict")."""
    pool = pools.start(target=worker_pid, pool_size=1)
    pid = pool.call("pid", timeout=10)
    sync(pool.actor_ref)
    before = pool.status()
    with pytest.raises(da.ProtocolError) as info:
        pool.call(make(), timeout=10)
    sync(pool.actor_ref)
    after = pool.status()
    assert after.workers_removed == before.workers_removed, (
        f"a healthy worker was removed for the caller's bad request ({info.value})"
    )
    assert after.checkouts == before.checkouts, "a worker was checked out for a request never sent"
    assert pool.call("pid", timeout=10) == pid
    message = str(info.value)
    assert kind in message, f"the message does not name the offending {kind}: {message!r}"
    assert "items" in message, f"the message does not say where the {kind} sits: {message!r}"


def bad_result(request: str) -> Any:
    """Returns the bad value named by `request` (as `BAD_REQUESTS` builds them)."""
    import math

    if request == "circular-list":
        items: list[Any] = [1]
        items.append(items)
        return {"items": items}
    values = {"set": {1, 2}, "object": object(), "bytes": b"raw", "nan": math.nan}
    return {"items": [1, values[request]]}


@pytest.mark.parametrize(
    ("request_", "kind"),
    [("set", "set"), ("object", "object"), ("bytes", "bytes"), ("nan", "float")],
)
def test_a_result_that_cannot_be_encoded_is_remote_error_naming_where_it_sits(
    pools: Pools, request_: str, kind: str
) -> None:
    """The handler's result cannot be encoded: `RemoteError` of kind ``"ProtocolError"``,
    the worker kept, and the message names the value's type and where it sits in the result
    (under ``items``), not in the reply's envelope (``[2]``)."""
    pool = pools.start(target=bad_result, pool_size=1)
    with pytest.raises(da.RemoteError) as info:
        pool.call(request_, timeout=10)
    assert info.value.kind == "ProtocolError"
    message = info.value.message
    assert message.startswith("the handler's result: "), message
    assert kind in message, message
    assert "items" in message, message
    assert "[2]" not in message, message
    sync(pool.actor_ref)
    assert pool.status().workers_removed == 0


def test_an_oversized_request_is_refused_and_the_worker_kept(pools: Pools) -> None:
    """Item 7: a request over `max_frame` is refused with nothing written: the worker stays."""
    pool = pools.start(target=worker_pid, pool_size=1, max_frame=1024)
    pid = pool.call("pid", timeout=10)
    with pytest.raises(da.ProtocolError, match="max_frame"):
        pool.call("x" * 4096, timeout=10)
    sync(pool.actor_ref)
    assert pool.status().workers_removed == 0, (
        "a healthy worker was removed for an oversized request"
    )
    assert pool.call("pid", timeout=10) == pid


# --- 8. stop() closes stubborn workers concurrently -----------------------------------------------


@pytest.mark.timeout(120)
def test_stop_closes_stubborn_workers_concurrently(pools: Pools) -> None:
    """Item 8: 6 workers that ignore EOF on stdin and SIGTERM. Closing one costs close_timeout,
    then the 1 s SIGTERM grace, then SIGKILL; closed one after another that is 6 x 1.5 s. Closed
    concurrently, stop() costs about one worker's close whatever the pool size: the bound is
    twice that, plus 1 s of slack (the issue's requirement, not a speed measurement)."""
    close_timeout, term_grace, size = 0.5, 1.0, 6
    pool = pools.start(
        argv=[*FRAME_WORKER, "--stubborn"],
        pool_size=size,
        ping={"x": 0},
        close_timeout=close_timeout,
    )
    workers = [p.pid for p in descendants()]
    assert len(workers) == size
    started = time.monotonic()
    pool.stop(timeout=60)
    took = time.monotonic() - started
    assert all(wait_gone(pid, 10) for pid in workers)
    bound = 2 * (close_timeout + term_grace) + 1.0
    assert took < bound, f"stop() took {took:.1f} s for {size} stubborn workers (bound {bound} s)"


# --- 11. smaller: pool parts --------------------------------------------------------------------


def test_a_fork_worker_that_dies_while_its_grandchild_holds_its_pipes_is_retried(
    pools: Pools, tmp_path: Path
) -> None:
    """Item 11: a ``"fork"`` worker forks a grandchild (its own session, holding every pipe the
    worker had) and dies mid-request. The death must be seen as `WorkerCrashed` (so `retries`
    reruns the request), not waited out as a `CallTimeout`."""
    pidfile = tmp_path / "grandchild"

    def dies_leaving_a_grandchild(request: Any, pidfile: str) -> Any:
        if not os.path.exists(pidfile):
            child = os.fork()
            if child == 0:
                os.setsid()
                time.sleep(30)  # sleep-ok: a stalled grandchild (killed by the test)
                os._exit(0)
            with open(pidfile, "w") as f:
                f.write(str(child))
            os.kill(os.getpid(), signal.SIGKILL)
        return request

    pool = pools.start(
        target=dies_leaving_a_grandchild,
        args=(str(pidfile),),
        pool_size=1,
        retries=1,
        start_method="fork",
    )
    try:
        started = time.monotonic()
        try:
            result = pool.call("again", timeout=5)
        except da.CallTimeout:
            pytest.fail(
                f"the worker's death went unseen for {time.monotonic() - started:.1f} s "
                f"(CallTimeout, not WorkerCrashed: no retry) while its grandchild held its pipes"
            )
        assert result == "again"
    finally:
        if pidfile.exists():
            grandchild = Seen.pid_of(int(pidfile.read_text()))
            if grandchild is not None:
                grandchild.kill()


def test_a_call_right_after_an_idle_worker_is_sigkilled_is_served_with_retries(
    pools: Pools,
) -> None:
    """Item 11: SIGKILLing an idle worker and calling at once may race the signal (the request
    is written before the worker dies); with ``retries=1`` the caller never sees it."""
    pool = pools.start(target=worker_pid, pool_size=1, retries=1)
    for _ in range(30):
        victim = pool.call("pid", timeout=10)
        os.kill(victim, signal.SIGKILL)
        assert pool.call(21, timeout=10) == 42


def test_the_docs_say_when_a_caller_can_still_see_an_idle_workers_death_and_what_retries_buys() -> (
    None
):
    """Item 11: docs/ports.md said an idle worker's death is seen by nobody, but a call right
    after the kill (before the signal lands) gets `WorkerCrashed` unless `retries` covers it."""
    docs = Path(__file__).parent.parent / "docs" / "ports.md"
    rows = [
        line for line in docs.read_text().splitlines() if line.startswith("| an idle worker died")
    ]
    assert rows, "docs/ports.md has no failure-table row for an idle worker's death"
    row = rows[0]
    assert "WorkerCrashed" in row, f"the row does not say a caller can still see it: {row}"
    assert "retries" in row, f"the row does not say what retries buys: {row}"


def test_stop_reaps_a_spawn_worker_still_writing_its_setup(
    pools: Pools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 11: a ``"spawn"`` worker whose interpreter stalls before reading its setup frame
    (bigger than a pipe) blocks `Port.spawn` in the setup write (30 s, not the pool's
    timeouts); a pool stopped meanwhile must not leave that process running."""
    stall = stall_interpreter_starts(str(tmp_path), monkeypatch.setenv)
    pool = pools.start(
        target=echo_with, args=(b"x" * (1 << 20),), pool_size=1, start_method="spawn", ready=False
    )
    try:
        wait_for(descendants, timeout=10)  # the worker's interpreter is up, stalled
        pool.stop(timeout=30)
        try:
            wait_for(lambda: not descendants(), timeout=5)
        except TimeoutError:
            pytest.fail(f"a worker still starting outlived stop(): {descendants()}")
    finally:
        os.unlink(stall)  # let a stalled start go on (and fail), so that its thread ends


def echo_with(request: Any, payload: bytes) -> Any:
    return request


def test_a_pool_whose_fork_server_cannot_come_up_starts_its_workers_with_spawn(
    pools: Pools, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 1: a fork server that dies at every start (here: its interpreter exits at once)
    backs off, and the pool starts its workers the other way (`"spawn"`) meanwhile: it
    serves, and every worker is this process's own child (no server stands in between)."""
    from dspex_actors._ports import _forkserver

    monkeypatch.setattr(_forkserver._Server, "BOOT", "import os; os._exit(3)  # {fd} {parent}")
    pool = pools.start(target=worker_pid, pool_size=2)
    pids = {pool.call("pid", timeout=30) for _ in range(6)}
    me = os.getpid()
    assert all(psutil.Process(pid).ppid() == me for pid in pids)
    assert pool.call(21, timeout=30) == 42
