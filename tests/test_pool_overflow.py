"""Poolboy's overflow on top of NimblePool, and per-worker statistics (`WorkerStats`).

`pool_size` must be positive (the NimblePool rule wins over Poolboy's), so Poolboy's
``(0, 2)`` and ``(0, 0)`` size/overflow examples have no equivalent here.
"""

from __future__ import annotations

from typing import Any

import pytest

import dspex_actors as da
from dspex_actors.testing import EchoWorker, FakeClock, sync

from support.pools import Pools, Waiter, hold, release, wait_queued


def summary(pool: da.Pool) -> tuple[str, int, int, int]:
    """Poolboy's status tuple: (state, idle, overflow, checked_out)."""
    s = pool.status()
    return (s.state, s.idle, s.overflow, s.busy)


def test_overflow_workers_are_created_up_to_max_overflow_then_callers_wait(
    pools: Pools,
) -> None:
    pool = pools.start(EchoWorker, pool_size=1, max_overflow=1)
    first = hold(pool)
    second = hold(pool)  # no idle worker: an overflow worker is created
    assert (first.client_state, second.client_state) == (1, 2)
    assert summary(pool) == ("full", 0, 1, 2)
    with pytest.raises(da.PoolTimeout):  # Poolboy's non-blocking "full"
        pool.checkout(None, lambda f, c: (c, c), timeout=0)
    waiter = Waiter(pool)  # a blocking checkout waits, FIFO
    wait_queued(pool, 1)
    release(first)
    assert waiter.join().result == 1
    release(second)
    sync(pool.actor_ref)
    assert pool.status().workers_started == 2


def test_overflow_workers_are_terminated_on_checkin_when_nobody_waits(
    pools: Pools,
) -> None:
    pool = pools.start(EchoWorker, pool_size=5, max_overflow=5)
    leases = [hold(pool) for _ in range(7)]
    assert summary(pool) == ("overflow", 0, 2, 7)
    for lease in leases:
        release(lease)
    sync(pool.actor_ref)
    status = pool.status()
    assert (status.idle, status.busy, status.overflow) == (5, 0, 0)
    assert (status.workers_started, status.workers_removed) == (7, 2)
    assert len(pool.worker_stats()) == 5


def test_a_checkin_with_waiters_goes_to_the_oldest_waiter_even_in_overflow(
    pools: Pools,
) -> None:
    pool = pools.start(EchoWorker, pool_size=1, max_overflow=1)
    first, second = hold(pool), hold(pool)
    waiter = Waiter(pool)
    wait_queued(pool, 1)
    release(second)  # the overflow worker is not dismissed: someone waits
    assert waiter.join().result == 2
    sync(pool.actor_ref)
    # The waiter checked worker 2 in with nobody waiting: it was dismissed.
    assert summary(pool) == ("overflow", 0, 0, 1)
    release(first)  # back to the pool: no overflow left, so it stays
    sync(pool.actor_ref)
    assert summary(pool) == ("ready", 1, 0, 0)
    assert [s.worker_id for s in pool.worker_stats()] == [1]


def test_a_worker_removed_in_overflow_is_not_replaced(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1, max_overflow=1)
    first, second = hold(pool), hold(pool)
    release(second, error=RuntimeError("worker broke"))
    sync(pool.actor_ref)
    status = pool.status()
    assert (status.overflow, status.workers_started, status.workers_removed) == (0, 2, 1)
    release(first)
    sync(pool.actor_ref)
    assert summary(pool) == ("ready", 1, 0, 0)


def test_a_worker_removed_outside_overflow_is_replaced_for_the_oldest_waiter(
    pools: Pools,
) -> None:
    pool = pools.start(EchoWorker, pool_size=1)
    held = hold(pool)
    waiter = Waiter(pool)
    wait_queued(pool, 1)
    release(held, error=RuntimeError("worker broke"))
    assert waiter.join().result == 2  # the replacement went straight to the waiter
    sync(pool.actor_ref)
    assert summary(pool) == ("ready", 1, 0, 0)


def test_status_follows_poolboy_for_size_2_without_overflow(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=2)
    assert summary(pool) == ("ready", 2, 0, 0)
    a = hold(pool)
    assert summary(pool) == ("ready", 1, 0, 1)
    b = hold(pool)
    assert summary(pool) == ("full", 0, 0, 2)
    release(a)
    release(b)


def test_status_follows_poolboy_for_size_1_overflow_1(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1, max_overflow=1)
    assert summary(pool) == ("ready", 1, 0, 0)
    a = hold(pool)
    assert summary(pool) == ("overflow", 0, 0, 1)
    b = hold(pool)
    assert summary(pool) == ("full", 0, 1, 2)
    release(a)
    release(b)


def test_a_lazy_pool_with_free_slots_is_ready(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=2, lazy=True)
    assert summary(pool) == ("ready", 0, 0, 0)


# --- WorkerStats ---------------------------------------------------------------------------------


def test_the_pool_keeps_per_worker_stats(pools: Pools) -> None:
    clock = FakeClock(start=100.0)
    pool = pools.start(EchoWorker, pool_size=2, clock=clock)
    # sync before each advance: the checkin (async) is stamped with the time it is handled.
    clock.advance(1.0)
    pool.checkout(None, lambda f, c: (c, c))  # worker 1: t=101
    sync(pool.actor_ref)
    clock.advance(1.0)
    pool.checkout(None, lambda f, c: (c, c))  # worker 2: t=102
    sync(pool.actor_ref)
    assert [s.last_activity for s in pool.worker_stats()] == [101.0, 102.0]
    clock.advance(1.0)
    pool.checkout(None, lambda f, c: (c, c))  # worker 1 again: t=103

    def fails(f: da.From, c: Any) -> tuple[Any, Any]:
        raise RuntimeError("client error")

    with pytest.raises(RuntimeError):
        pool.checkout(None, fails)  # worker 2 is removed
    sync(pool.actor_ref)
    stats = {s.worker_id: s for s in pool.worker_stats()}
    assert set(stats) == {1, 3}  # worker 2 is gone, worker 3 replaced it
    one = stats[1]
    assert (one.checkouts, one.successful_checkins, one.error_checkins) == (2, 2, 0)
    assert one.last_activity == 103.0
    assert not one.busy
    assert (stats[3].checkouts, stats[3].last_activity) == (0, 103.0)
    assert pool.status().checkouts == 4
    with pool.lease(None) as lease:
        assert lease.client_state == 1
        assert [s.busy for s in pool.worker_stats()] == [True, False]


def test_error_checkins_count_error_states_of_kept_workers(pools: Pools) -> None:
    class Closing(EchoWorker):
        def handle_checkin(self, cs: Any, from_: da.From, ws: Any, ps: Any) -> da.Remove | da.Ok:
            return da.Remove("closed", ps) if cs == "close" else da.Ok(ws, ps)

    pool = pools.start(Closing, pool_size=1)
    pool.checkout(None, lambda f, c: (c, "ok"))
    pool.checkout(None, lambda f, c: (c, ("error", "bad request")))
    pool.checkout(None, lambda f, c: (c, ValueError("bad input")))
    sync(pool.actor_ref)
    [stats] = pool.worker_stats()
    assert (stats.checkouts, stats.successful_checkins, stats.error_checkins) == (3, 1, 2)
    pool.checkout(None, lambda f, c: (c, "close"))  # removed: a new worker, fresh stats
    sync(pool.actor_ref)
    [after] = pool.worker_stats()
    assert (after.worker_id, after.checkouts, after.error_checkins) == (2, 0, 0)
    assert pool.status().workers_removed == 1
