"""The awaitable twins: pools, process pools, supervisors, session pools and handles, used
from asyncio without blocking the event loop, and cancellation that means something."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors.bridge import SessionPool

from support.lifecycle import ProcessPools
from support.processes import wait_gone

WAIT = 30.0
MOCK_WORKER = [sys.executable, "-m", "dspex_actors.bridge.worker", "--backend", "mock"]


def gated(request: Any) -> Any:
    """A worker's code: ``["gate", path, n]`` waits until `path` exists (bounded), then
    answers ``n * n``; ``["pid"]`` answers its pid; a number its square."""
    import os
    import time

    if isinstance(request, list) and request[0] == "gate":
        deadline = time.monotonic() + 30
        while not os.path.exists(request[1]) and time.monotonic() < deadline:
            time.sleep(0.001)  # sleep-ok: a worker's gate, polled; the test opens it
        return request[2] * request[2]
    if isinstance(request, list) and request[0] == "pid":
        return os.getpid()
    return request * request


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, WAIT * 2))


async def until(predicate: Any, timeout: float = WAIT) -> None:
    """Await until `predicate()` (an awaitable-returning callable or a plain one) is true."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)  # sleep-ok: polling a pool's status from the loop


# --- the event loop is never blocked -------------------------------------------------------------


@pytest.mark.leak_check
def test_a_hundred_pending_calls_on_two_held_workers_leave_the_loop_free(
    process_pools: ProcessPools, tmp_path: Path
) -> None:
    pool = process_pools.start(target=gated, pool_size=2)
    gate = tmp_path / "open"

    async def scenario() -> list[Any]:
        threads_before = threading.active_count()
        calls = [
            asyncio.ensure_future(pool.acall(["gate", str(gate), n], timeout=WAIT))
            for n in range(100)
        ]

        async def queued() -> bool:
            status = await pool.astatus()
            return bool(status.busy == 2 and status.queued == 98)

        await until(queued)
        # The loop runs other work meanwhile: a task scheduled now completes now.
        other = asyncio.Event()
        asyncio.get_running_loop().call_soon(other.set)
        await asyncio.wait_for(other.wait(), 5)
        assert not any(call.done() for call in calls)
        # Waiting takes no thread per call.
        assert threading.active_count() < threads_before + 5
        gate.touch()
        return list(await asyncio.gather(*calls))

    assert run(scenario()) == [n * n for n in range(100)]


# --- cancellation --------------------------------------------------------------------------------


@pytest.mark.leak_check
def test_cancelling_a_call_that_waits_for_a_worker_takes_it_out_of_the_queue(
    process_pools: ProcessPools, tmp_path: Path
) -> None:
    pool = process_pools.start(target=gated, pool_size=1)
    gate = tmp_path / "open"

    async def scenario() -> None:
        held = asyncio.ensure_future(pool.acall(["gate", str(gate), 2], timeout=WAIT))
        await until(_busy(pool, 1))
        waiting = asyncio.ensure_future(pool.acall(3, timeout=WAIT))
        await until(_queued(pool, 1))
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await until(_queued(pool, 0))
        gate.touch()
        assert await held == 4
        status = await pool.astatus()
        assert status.workers_removed == 0  # nobody's worker was touched

    run(scenario())


# A program that reads a frame of more than 100 kB (more than a pipe holds) only once the
# gate file named by its first argument exists (bounded); it answers {"id", "n": bytes read}.
SLOW_READER = """
import json, os, struct, sys, time
gate = sys.argv[1]
r, w = sys.stdin.buffer, sys.stdout.buffer
while len(h := r.read(4)) == 4:
    n = struct.unpack(">I", h)[0]
    deadline = time.monotonic() + 30
    while n > 100_000 and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.001)  # sleep-ok: the program's gate, polled; the test opens it
    body = r.read(n)
    data = json.dumps({"id": json.loads(body)["id"], "n": len(body)}).encode()
    w.write(struct.pack(">I", len(data)) + data)
    w.flush()
"""


def test_a_request_larger_than_the_pipe_is_written_without_blocking_the_loop(
    process_pools: ProcessPools, tmp_path: Path
) -> None:
    """The program reads the big request only once the loop has run another coroutine (which
    opens its gate) while the request is being written: the write must not hold the loop."""
    gate = tmp_path / "gate"
    argv = [sys.executable, "-c", SLOW_READER, str(gate)]
    pool = process_pools.start(argv=argv, pool_size=1, ping={"ping": 1})
    big = {"blob": "x" * 1_000_000}

    async def scenario() -> Any:
        call = asyncio.ensure_future(pool.acall(big, timeout=WAIT))
        await until(_busy(pool, 1))  # the call has its worker: it is writing
        gate.touch()
        return await call

    reply = run(scenario())
    assert reply["n"] > 1_000_000
    assert pool.status().workers_removed == 0


def test_cancelling_a_call_stuck_writing_its_request_removes_the_worker_and_ends_the_write(
    process_pools: ProcessPools, tmp_path: Path
) -> None:
    """The program never reads the request (its gate stays shut), the call has no timeout of
    its own: the cancellation reaches it, the worker is removed, and the thread that was
    writing ends (the leak check sees no thread left)."""
    argv = [sys.executable, "-c", SLOW_READER, str(tmp_path / "never")]
    pool = process_pools.start(argv=argv, pool_size=1, ping={"ping": 1})

    async def scenario() -> None:
        call = asyncio.ensure_future(pool.acall({"blob": "x" * 1_000_000}, timeout=None))
        await until(_busy(pool, 1))
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await until(_removed(pool, 1))
        assert (await pool.acall({"small": 1}, timeout=WAIT))["n"] > 0  # its replacement

    run(scenario())


def test_stopping_the_pool_while_a_request_is_written_is_noproc_caused_by_the_crash(
    process_pools: ProcessPools, tmp_path: Path
) -> None:
    """The request never reached its worker whole (the program reads nothing yet): the call
    tries again, finds the pool stopped, and says so, with the worker's crash as the cause."""
    argv = [sys.executable, "-c", SLOW_READER, str(tmp_path / "never")]
    pool = process_pools.start(argv=argv, pool_size=1, ping={"ping": 1})

    async def scenario() -> BaseException:
        call = asyncio.ensure_future(pool.acall({"blob": "x" * 1_000_000}, timeout=WAIT))
        await until(_busy(pool, 1))
        await pool.astop()
        with pytest.raises(da.NoProc) as err:
            await call
        return err.value

    error = run(scenario())
    assert isinstance(error.__cause__, da.WorkerCrashed)
    assert error.__cause__.delivered is False


@pytest.mark.leak_check
def test_cancelling_a_call_a_worker_is_running_kills_that_worker_and_it_is_replaced(
    process_pools: ProcessPools, tmp_path: Path
) -> None:
    pool = process_pools.start(target=gated, pool_size=1)
    gate = tmp_path / "never"

    async def scenario() -> None:
        victim = await pool.acall(["pid"], timeout=WAIT)
        call = asyncio.ensure_future(pool.acall(["gate", str(gate), 5], timeout=WAIT))
        await until(_busy(pool, 1))
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await asyncio.to_thread(wait_gone, victim, WAIT)  # the work really stopped
        # Its replacement answers the next caller with its own reply.
        assert await pool.acall(7, timeout=WAIT) == 49
        assert await pool.acall(["pid"], timeout=WAIT) != victim
        status = await pool.astatus()
        assert status.workers_removed == 1

    run(scenario())


@pytest.mark.leak_check
def test_a_call_in_flight_when_its_pool_stops_ends_even_if_the_loop_was_busy_meanwhile(
    process_pools: ProcessPools, tmp_path: Path
) -> None:
    """The pool stops (its worker killed, its pipes closed) while the loop is blocked: the
    awaited call still learns of it at once, with no timeout of its own to save it."""
    pool = process_pools.start(target=gated, pool_size=1)
    gate = tmp_path / "never"

    async def scenario() -> None:
        call = asyncio.ensure_future(pool.acall(["gate", str(gate), 5], timeout=None))
        await until(_busy(pool, 1))
        pool.stop(timeout=WAIT)  # blocks the loop: the exit and the closed pipes come unseen
        with pytest.raises(da.WorkerCrashed):
            await asyncio.wait_for(call, WAIT)

    run(scenario())


@pytest.mark.leak_check
def test_asyncio_timeout_on_a_call_stops_the_worker_as_a_cancellation_does(
    process_pools: ProcessPools, tmp_path: Path
) -> None:
    pool = process_pools.start(target=gated, pool_size=1)
    gate = tmp_path / "never"

    async def scenario() -> None:
        victim = await pool.acall(["pid"], timeout=WAIT)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await pool.acall(["gate", str(gate), 5], timeout=WAIT)
        assert await asyncio.to_thread(wait_gone, victim, WAIT)
        assert await pool.acall(6, timeout=WAIT) == 36

    run(scenario())


@pytest.mark.leak_check
def test_a_call_past_its_own_timeout_raises_call_timeout_and_removes_the_worker(
    process_pools: ProcessPools, tmp_path: Path
) -> None:
    pool = process_pools.start(target=gated, pool_size=1)

    async def scenario() -> None:
        with pytest.raises(da.CallTimeout):
            await pool.acall(["gate", str(tmp_path / "never"), 1], timeout=0.05)
        await until(_removed(pool, 1))
        assert await pool.acall(4, timeout=WAIT) == 16

    run(scenario())


# --- leases and checkouts ------------------------------------------------------------------------


@pytest.mark.leak_check
def test_an_async_lease_hands_out_the_port_and_an_exception_inside_removes_the_worker(
    process_pools: ProcessPools,
) -> None:
    pool = process_pools.start(target=gated, pool_size=1)

    async def scenario() -> None:
        async with pool.alease(None, timeout=WAIT) as lease:
            port = lease.client_state
            assert isinstance(port, da.Port)
        assert (await pool.astatus()).workers_removed == 0
        with pytest.raises(ValueError, match="inside"):
            async with pool.alease(None, timeout=WAIT):
                raise ValueError("inside")
        await until(_removed(pool, 1))

    run(scenario())


@pytest.mark.leak_check
def test_acheckout_takes_a_coroutine_function_or_a_plain_one(process_pools: ProcessPools) -> None:
    pool = process_pools.start(target=gated, pool_size=1)

    async def ask(from_: da.From, port: da.Port) -> tuple[Any, str]:
        request_id, _ = port._send_request(port._prepare(3), WAIT)
        return await port._aawait_reply(request_id, time.monotonic() + WAIT), "ok"

    async def scenario() -> None:
        assert await pool.acheckout(None, ask, WAIT) == 9
        assert await pool.acheckout(None, lambda from_, port: (port.os_pid, "ok"), WAIT) > 0

    run(scenario())


def test_an_async_checkout_of_a_plain_pool_times_out_with_pool_timeout() -> None:
    class Worker(da.PoolWorker):
        def init_worker(self, pool_state: Any) -> Any:
            return da.Ok(1, pool_state)

        def handle_checkout(self, command: Any, from_: da.From, state: Any, ps: Any) -> Any:
            return da.Ok(state, state, ps)

    pool = da.Pool.start(Worker, pool_size=1)

    async def scenario() -> None:
        async with pool.alease(None):
            with pytest.raises(da.PoolTimeout):
                await pool.acheckout(None, lambda f, s: (s, "ok"), 0.05)
        assert await pool.acheckout(None, lambda f, s: (s, "ok"), WAIT) == 1
        await pool.astop()

    run(scenario())


# --- supervisors and handles ---------------------------------------------------------------------


class Echo(da.Actor):
    def on_receive(self, message: Any) -> Any:
        return ("echo", message)


def test_every_supervisor_call_has_an_awaitable_twin() -> None:
    async def scenario() -> None:
        sup = await asyncio.to_thread(da.Supervisor.start, [])
        ref = await sup.astart_child(Echo.child_spec(id="e"))
        assert ref is not None
        assert [c.id for c in await sup.awhich_children()] == ["e"]
        assert (await sup.awhich_child("e")).ref == ref
        assert (await sup.acount_children()).active == 1
        assert (await sup.aget_childspec("e")).id == "e"
        assert await da.ActorHandle(ref).aask("hi") == ("echo", "hi")
        await sup.aterminate_child("e")
        assert (await sup.acount_children()).active == 0
        assert await sup.arestart_child("e") is not None
        await sup.aterminate_child("e")
        await sup.adelete_child("e")
        assert await sup.awhich_children() == []
        await sup.astop()
        assert await sup.until_exit() == da.SHUTDOWN

    run(scenario())


def test_every_dynamic_supervisor_call_has_an_awaitable_twin() -> None:
    async def scenario() -> None:
        sup = await asyncio.to_thread(da.DynamicSupervisor.start)
        ref = await sup.astart_child(Echo.child_spec(id="e"))
        assert ref is not None
        assert [c.ref for c in await sup.awhich_children()] == [ref]
        assert (await sup.acount_children()).active == 1
        await sup.aterminate_child(ref)
        assert (await sup.acount_children()).specs == 0
        await sup.astop()

    run(scenario())


def test_an_awaited_ask_of_a_dead_actor_raises_noproc() -> None:
    async def scenario() -> None:
        ref = Echo.start()
        handle = da.ActorHandle(ref)
        await handle.astop()
        with pytest.raises(da.NoProc):
            await handle.aask("hi")

    run(scenario())


# --- the session pool ----------------------------------------------------------------------------


@pytest.mark.leak_check
def test_a_session_pool_is_awaitable_and_a_cancelled_command_costs_its_worker_not_the_session() -> (
    None
):
    async def scenario() -> None:
        pool = SessionPool.start(pool_size=1, worker_argv=MOCK_WORKER, name=None)
        try:
            sig = {"inputs": ["question"], "outputs": ["answer"]}
            await pool.aexecute_in_session("s", "create_program", {"id": "p", "signature": sig})
            assert (await pool.aexecute_anonymous("ping"))["status"] == "ok"
            victim = pool.checkout(None, lambda from_, port: (port.os_pid, "ok"))
            slow = asyncio.ensure_future(
                pool.aexecute_in_session("s", "ping", {"_mock": {"delay": 60}})
            )
            await until(_busy(pool, 1))
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert await asyncio.to_thread(wait_gone, victim, WAIT)
            listed = await pool.aexecute_in_session("s", "list_programs")
            assert [p["id"] for p in listed["programs"]] == ["p"]  # rebuilt on the new worker
        finally:
            await pool.astop()

    run(scenario())


# --- helpers -------------------------------------------------------------------------------------


def _busy(pool: da.Pool, n: int) -> Any:
    async def check() -> bool:
        status = await pool.astatus()
        return bool(getattr(status, "pool", status).busy == n)  # a SessionPool's holds it

    return check


def _queued(pool: da.Pool, n: int) -> Any:
    async def check() -> bool:
        return bool((await pool.astatus()).queued == n)

    return check


def _removed(pool: da.Pool, n: int) -> Any:
    async def check() -> bool:
        return bool((await pool.astatus()).workers_removed >= n)

    return check
