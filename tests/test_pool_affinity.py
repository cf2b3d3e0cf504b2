"""Worker affinity: a checkout may ask for one worker (`worker=`), and say what to do when it
is lent out (`affinity=`): take any idle worker, wait for it, or fail fast. A worker that is
gone drops the preference. This is what DSPex's session pool needed and NimblePool could not
express: the pool itself picks the worker."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

import dspex_actors as da

from support.pools import WAIT, Pools, Waiter, hold, release, wait_queued


class Numbered(da.PoolWorker):
    """Each worker's state is its start number; the client state is the worker state."""

    def init_pool(self, init_arg: Any) -> da.Ok:
        return da.Ok(itertools.count(1))

    def init_worker(self, pool_state: Any) -> da.Ok:
        return da.Ok(next(pool_state), pool_state)

    def handle_checkout(
        self, command: Any, from_: da.From, worker_state: Any, pool_state: Any
    ) -> Any:
        if command == "remove":
            return da.Remove("asked", pool_state)
        return da.Ok(worker_state, worker_state, pool_state)

    def handle_checkin(
        self, checkin_state: Any, from_: da.From, worker_state: Any, pool_state: Any
    ) -> Any:
        if checkin_state == "close":
            return da.Remove("closed", pool_state)
        return da.Ok(worker_state, pool_state)


@pytest.fixture
def pools() -> Iterator[Pools]:
    p = Pools()
    try:
        yield p
    finally:
        p.close()


def ids(pool: da.Pool) -> dict[int, int]:
    """Worker state (its start number) -> worker id, asked of each idle worker in turn."""
    found = {}
    leases = [hold(pool) for _ in range(pool.status().idle)]
    for lease in leases:
        assert lease.from_.worker_id is not None
        found[lease.client_state] = lease.from_.worker_id
    for lease in leases:
        release(lease)
    return found


def take(pool: da.Pool, **options: Any) -> tuple[Any, int | None]:
    """Check a worker out (with `options`); return its state and id."""
    got: tuple[Any, int | None] = pool.checkout(
        None, lambda from_, state: ((state, from_.worker_id), "ok"), WAIT, **options
    )
    return got


def test_from_worker_id_names_the_worker_as_worker_stats_do(pools: Pools) -> None:
    pool = pools.start(Numbered, pool_size=3)
    by_state = ids(pool)
    assert sorted(by_state.values()) == sorted(s.worker_id for s in pool.worker_stats())


def test_a_checkout_asking_for_an_idle_worker_gets_it_whatever_its_place_in_the_queue(
    pools: Pools,
) -> None:
    pool = pools.start(Numbered, pool_size=3)
    by_state = ids(pool)
    for state in (3, 1, 2, 3, 3):
        assert take(pool, worker=by_state[state]) == (state, by_state[state])


@pytest.mark.parametrize("affinity", ["prefer", "strict", "strict_fail_fast"])
def test_a_checkout_asking_for_a_worker_that_is_gone_gets_any_worker(
    pools: Pools, affinity: str
) -> None:
    pool = pools.start(Numbered, pool_size=2)
    by_state = ids(pool)
    pool.checkout(None, lambda from_, state: (None, "close"), WAIT, worker=by_state[1])
    state, worker_id = take(pool, worker=by_state[1], affinity=affinity)
    assert worker_id != by_state[1]
    assert state in (2, 3)


def test_prefer_takes_any_idle_worker_when_the_asked_one_is_lent_out(pools: Pools) -> None:
    pool = pools.start(Numbered, pool_size=2)
    by_state = ids(pool)
    held = pool.lease(None, WAIT, worker=by_state[1])
    with held:
        assert held.client_state == 1
        assert take(pool, worker=by_state[1]) == (2, by_state[2])


def test_strict_fail_fast_raises_worker_busy_and_checks_nothing_out(pools: Pools) -> None:
    pool = pools.start(Numbered, pool_size=2)
    by_state = ids(pool)
    with pool.lease(None, WAIT, worker=by_state[1]):
        with pytest.raises(da.WorkerBusy) as caught:
            take(pool, worker=by_state[1], affinity="strict_fail_fast")
        assert caught.value.worker_id == by_state[1]
        status = pool.status()
        assert (status.busy, status.idle, status.queued) == (1, 1, 0)


def test_strict_waits_for_its_worker_while_requests_behind_it_are_served(pools: Pools) -> None:
    pool = pools.start(Numbered, pool_size=2)
    by_state = ids(pool)
    held = pool.lease(None, WAIT, worker=by_state[1])
    held.__enter__()
    strict = strict_waiter(pool, by_state[1])
    wait_queued(pool, 1)
    assert take(pool) == (2, by_state[2])  # served past the strict request, at once
    assert pool.status().queued == 1
    release(held)
    assert strict.join().result == (1, by_state[1])


def test_a_worker_coming_back_goes_to_the_request_waiting_for_it_alone_first(
    pools: Pools,
) -> None:
    pool = pools.start(Numbered, pool_size=1)
    (worker_id,) = ids(pool).values()
    held = hold(pool)
    plain = Waiter(pool, fn=lambda from_, state: (state, "ok"))
    wait_queued(pool, 1)
    strict = strict_waiter(pool, worker_id)
    wait_queued(pool, 2)
    release(held)  # the plain request came first, but only the strict one needs this worker
    assert strict.join().result == (1, worker_id)
    assert plain.join().result == 1
    assert plain.error is None


def test_a_strict_request_whose_worker_is_removed_while_it_waits_gets_another(
    pools: Pools,
) -> None:
    pool = pools.start(Numbered, pool_size=1)
    (worker_id,) = ids(pool).values()
    held = hold(pool)
    strict = strict_waiter(pool, worker_id)
    wait_queued(pool, 1)
    release(held, "close")  # removed; its replacement is worker 2
    state, got = strict.join().result
    assert state == 2
    assert got != worker_id


def test_a_strict_request_times_out_if_its_worker_stays_lent_out(pools: Pools) -> None:
    pool = pools.start(Numbered, pool_size=2)
    by_state = ids(pool)
    with pool.lease(None, WAIT, worker=by_state[1]):
        with pytest.raises(da.PoolTimeout):
            pool.checkout(None, lambda f, s: (s, "ok"), 0.05, worker=by_state[1], affinity="strict")
        assert pool.status().queued == 0


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"worker": "1"}, "worker"),
        ({"worker": 1.5}, "worker"),
        ({"affinity": "sticky"}, "affinity"),
        ({"worker": 1, "affinity": None}, "affinity"),
    ],
)
def test_bad_affinity_options_are_refused_before_anything_is_checked_out(
    pools: Pools, options: dict[str, Any], option: str
) -> None:
    pool = pools.start(Numbered, pool_size=1)
    with pytest.raises(da.InvalidOption) as caught:
        take(pool, **options)
    assert caught.value.option == option
    with pytest.raises(da.InvalidOption):
        pool.lease(None, WAIT, **options)
    assert pool.status().busy == 0


def strict_waiter(pool: da.Pool, worker_id: int) -> Waiter:
    """A thread checking `worker_id` out with strict affinity; its result: (state, id)."""
    return Waiter(
        pool,
        fn=lambda from_, state: ((state, from_.worker_id), "ok"),
        worker=worker_id,
        affinity="strict",
    )
