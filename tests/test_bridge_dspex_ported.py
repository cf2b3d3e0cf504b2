"""DSPex's own V2 pool tests (``test/pool_v2_concurrent_test.exs``, ``test/pool_v2_test.exs``),
ported to `SessionPool` with real DSPy workers.

DSPex proved concurrency with timings (each ping under 1 s, max < 2x average); here it is
proved with events: both workers are stopped (SIGSTOP) while the two requests go out, and the
pool reports both checked out at once with nobody queued, which a pool that serialised its
callers could never show. Every wait is bounded; nothing sleeps.

- True concurrent execution with pre-warmed workers (pool_size 2).
- Blocking operations: three sessions create and list programs at once (pool_size 3).
- Errors do not poison concurrent valid operations (6 callers, the odd ones invalid).
- Session isolation of program listings.
- Session tracking (DSPex's ETS table): operations counted, `end_session` forgets.
- The pool starts lazily, then serves.
- `start_test_pool` / `wait_for_pool_ready` with a `SessionPool`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import pytest

import dspex_actors as da
from dspex_actors.bridge import CommandError, SessionPool
from dspex_actors.testing import start_test_pool, wait_for, wait_for_pool_ready

from support.sessions import WAIT, SessionPools, create_program, ready, unique, worker_pids
from support.threads import in_thread

pytestmark = pytest.mark.leak_check

T = TypeVar("T")


@pytest.fixture(scope="module")
def module_pools() -> Iterator[SessionPools]:
    p = SessionPools()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def two_workers(module_pools: SessionPools) -> SessionPool:
    """DSPex's test pool: two workers, no overflow, pre-warmed (each answered its ping)."""
    return module_pools.start(pool_size=2, max_overflow=0)


@pytest.fixture
def pool(two_workers: SessionPool) -> SessionPool:
    wait_for(lambda: ready(two_workers, 2), timeout=WAIT)
    return two_workers


def behind(barrier: threading.Barrier, fn: Callable[[], T]) -> Future[T]:
    """Run `fn()` in a thread once every party of `barrier` is there."""

    def run() -> T:
        barrier.wait(WAIT)
        return fn()

    return in_thread(run)


def ping(pool: SessionPool, args: dict[str, Any]) -> dict[str, Any]:
    return pool.execute_anonymous("ping", args)


@contextlib.contextmanager
def stopped(pids: list[int]) -> Iterator[None]:
    """The processes `pids` stopped (SIGSTOP) for the block, continued whatever happens."""
    try:
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_true_concurrent_execution_with_pre_warmed_workers(pool: SessionPool) -> None:
    pids = worker_pids(pool)
    barrier = threading.Barrier(3)
    with stopped(list(pids.values())):
        futures = [
            behind(barrier, functools.partial(ping, pool, {"test_id": i, "concurrent": True}))
            for i in range(2)
        ]
        barrier.wait(WAIT)
        # Both requests are in flight at once: each has a worker, neither waits for the other.
        wait_for(lambda: (s := pool.status().pool).busy == 2 and s.queued == 0, timeout=WAIT)
        assert not any(f.done() for f in futures)
    results = [f.result(WAIT) for f in futures]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert {r["pid"] for r in results} == set(pids.values())


def test_pool_handles_blocking_operations_correctly(spools: SessionPools) -> None:
    pool = spools.start(pool_size=3)
    barrier = threading.Barrier(3)

    def create_then_list(i: int) -> dict[str, Any]:
        sid = f"blocking_test_{i}_{unique()}"
        create_program(pool, sid, f"blocking_program_{i}")
        return pool.execute_in_session(sid, "list_programs")

    futures = [behind(barrier, functools.partial(create_then_list, i)) for i in range(3)]
    for i, future in enumerate(futures):
        response = future.result(WAIT)
        assert isinstance(response, dict)
        programs = response["programs"]
        assert isinstance(programs, list)
        assert programs
        assert response["total_count"] >= 1
        assert [p["id"] for p in programs] == [f"blocking_program_{i}"]


def test_errors_from_invalid_commands_do_not_poison_concurrent_valid_operations(
    pool: SessionPool,
) -> None:
    removed = pool.status().pool.workers_removed
    errors = sum(s.error_checkins for s in pool.worker_stats())
    barrier = threading.Barrier(6)

    def operation(i: int) -> dict[str, Any]:
        if i % 2:
            return pool.execute_anonymous("invalid_command", {"index": i})
        return pool.execute_anonymous("ping", {"index": i})

    futures = [behind(barrier, functools.partial(operation, i)) for i in range(6)]
    for i, future in enumerate(futures):
        if i % 2:
            error = future.exception(WAIT)
            assert isinstance(error, CommandError), error
            assert error.message == "Unknown command: invalid_command"
        else:
            assert future.result(WAIT)["status"] == "ok"
    assert pool.status().pool.workers_removed == removed
    assert sum(s.error_checkins for s in pool.worker_stats()) == errors + 3


def test_session_isolation_programs_are_listed_only_in_their_own_session(
    pool: SessionPool,
) -> None:
    a, b = unique("session_a"), unique("session_b")
    create_program(pool, a, "program_a")
    create_program(pool, b, "program_b")
    for _ in range(2):  # on both workers: each call of one session moves to the other one
        worker = pool.status().sessions[a].worker_id
        assert worker is not None
        with pool.lease(None, timeout=WAIT, worker=worker, affinity="strict"):
            in_a = pool.execute_in_session(a, "list_programs")["programs"]
        in_b = pool.execute_in_session(b, "list_programs")["programs"]
        assert [p["id"] for p in in_a] == ["program_a"]
        assert [p["id"] for p in in_b] == ["program_b"]


def test_session_tracking_counts_operations_and_end_session_forgets_it(
    pool: SessionPool,
) -> None:
    sid = unique("tracked")
    assert sid not in pool.status().sessions
    for _ in range(3):
        pool.execute_in_session(sid, "ping")
    info = pool.status().sessions[sid]
    assert info.operations == 3
    assert info.started_at <= info.last_activity
    active = pool.status().active_sessions
    assert pool.end_session(sid) is True
    status = pool.status()
    assert sid not in status.sessions
    assert status.active_sessions == active - 1


def test_pool_starts_lazily_then_serves(spools: SessionPools) -> None:
    pool = spools.start(pool_size=2, lazy=True)
    status = pool.status()
    assert status.pool.pool_size == 2
    assert (status.pool.idle, status.pool.workers_started) == (0, 0)
    assert status.active_sessions == 0
    sid = unique()
    assert pool.execute_in_session(sid, "ping")["status"] == "ok"
    status = pool.status()
    assert status.pool.workers_started == 1
    assert status.active_sessions == 1
    assert list(status.sessions) == [sid]
    spools.note()


def test_start_test_pool_starts_a_session_pool_with_every_worker_ready_and_stops_it(
    spools: SessionPools,
) -> None:
    with start_test_pool(SessionPool, pool_size=2, ready_timeout=WAIT) as pool:
        spools.note()
        assert isinstance(pool, SessionPool)
        assert pool.status().pool.idle == 2  # every worker, not just one
        assert da.whereis(pool.name) == pool.actor_ref  # under a unique test name
        assert pool.execute_anonymous("ping")["status"] == "ok"
    assert not pool.is_alive()


def test_wait_for_pool_ready_waits_for_a_session_pools_workers(spools: SessionPools) -> None:
    pool = spools.start(wait=False, pool_size=2)
    status = wait_for_pool_ready(pool, WAIT, min_idle=2)
    spools.note()
    assert isinstance(status, da.PoolStatus)
    assert status.idle == 2
