"""Concurrency stress: many client threads, one pool of 4, random client errors and removals.

Afterwards every worker is idle (the removed ones were replaced), no request was lost or served
twice, no worker was ever lent to two clients at once, and the status adds up.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import attrs

import dspex_actors as da
from dspex_actors.testing import sync, wait_for

THREADS = 16
CHECKOUTS = 2000  # per thread
POOL_SIZE = 4


@attrs.define
class Ledger:
    """What the workers saw, shared with the test (all callbacks run in the pool thread)."""

    next_worker: int = 0
    served: list[int] = attrs.Factory(list)
    removed_on_checkout: set[int] = attrs.Factory(set)
    terminated: list[int] = attrs.Factory(list)


class StressWorker(da.PoolWorker):
    def init_worker(self, ledger: Ledger) -> da.Ok:
        ledger.next_worker += 1
        return da.Ok(ledger.next_worker, ledger)

    def handle_checkout(self, command: Any, from_: da.From, wid: int, ledger: Ledger) -> Any:
        req_id, action = command
        if action == "remove_on_checkout" and req_id not in ledger.removed_on_checkout:
            ledger.removed_on_checkout.add(req_id)
            return da.Remove("stale", ledger)  # the same request then gets another worker
        ledger.served.append(req_id)
        return da.Ok((wid, req_id), wid, ledger)

    def handle_checkin(self, client_state: Any, from_: da.From, wid: int, ledger: Ledger) -> Any:
        if client_state == "remove":
            return da.Remove("closed", ledger)
        return da.Ok(wid, ledger)

    def terminate_worker(self, reason: Any, wid: int, ledger: Ledger) -> da.Ok:
        ledger.terminated.append(wid)
        return da.Ok(ledger)


class ClientError(Exception):
    pass


def test_sixteen_threads_hammering_a_pool_of_four_lose_nothing() -> None:
    ledger = Ledger()
    pool = da.Pool.start(StressWorker, ledger, pool_size=POOL_SIZE)
    in_use: set[int] = set()
    guard = threading.Lock()
    violations: list[str] = []
    completed: list[list[int]] = [[] for _ in range(THREADS)]
    failures: list[BaseException] = []

    def make_fn(req_id: int, action: str) -> Any:
        def fn(from_: da.From, client_state: Any) -> tuple[Any, Any]:
            wid, served_id = client_state
            with guard:
                if served_id != req_id:
                    violations.append(f"request {req_id} got {served_id}'s worker")
                if wid in in_use:
                    violations.append(f"worker {wid} lent twice")
                in_use.add(wid)
            answer = (req_id, "remove" if action == "remove_on_checkin" else "keep")
            with guard:
                in_use.discard(wid)
            if action == "raise":
                raise ClientError(req_id)
            return answer

        return fn

    def client(n: int) -> None:
        rng = random.Random(n)
        try:
            for i in range(CHECKOUTS):
                req_id = n * CHECKOUTS + i
                roll = rng.random()
                action = (
                    "raise"
                    if roll < 0.05
                    else "remove_on_checkin"
                    if roll < 0.10
                    else "remove_on_checkout"
                    if roll < 0.15
                    else "normal"
                )
                try:
                    result = pool.checkout((req_id, action), make_fn(req_id, action), timeout=30)
                except ClientError as exc:
                    result = exc.args[0]  # the original exception came back unchanged
                if result != req_id:
                    violations.append(f"request {req_id} returned {result!r}")
                completed[n].append(req_id)
        except BaseException as exc:
            failures.append(exc)

    threads = [
        threading.Thread(target=client, args=(n,), name=f"pool-stress-{n}") for n in range(THREADS)
    ]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a client thread is stuck"
        assert failures == []
        assert violations == []
        # Every request was served exactly once, none lost.
        done = [r for per_thread in completed for r in per_thread]
        assert len(done) == THREADS * CHECKOUTS
        assert sorted(ledger_served := pool_call(pool, lambda: list(ledger.served))) == sorted(done)
        assert len(set(ledger_served)) == len(ledger_served)
        # The status adds up: every removed worker was replaced, all are idle again.
        sync(pool.actor_ref)
        status = wait_for(
            lambda: (s := pool.status()).initializing == 0 and s.idle == POOL_SIZE and s, 10
        )
        assert (status.busy, status.queued, status.overflow) == (0, 0, 0)
        assert status.checkouts == THREADS * CHECKOUTS
        assert status.workers_started - status.workers_removed == POOL_SIZE
        assert status.workers_removed == len(ledger.terminated)
        assert status.workers_removed > 0
        live = {s.worker_id for s in pool.worker_stats()}
        assert len(live) == POOL_SIZE
        assert live.isdisjoint(ledger.terminated)
    finally:
        pool.stop(timeout=30)


def pool_call(pool: da.Pool, fn: Any) -> Any:
    """Read the ledger between pool messages (the pool thread is its only writer)."""
    sync(pool.actor_ref)
    return fn()


class TimeoutLedger:
    """Which requests handle_checkout served, and which workers ended with "timeout"."""

    def __init__(self) -> None:
        self.served: set[int] = set()
        self.timeout_terminations: list[int] = []
        self.next_worker = 0
        self.rng = random.Random(7)


class RacingWorker(da.PoolWorker):
    def init_worker(self, ledger: TimeoutLedger) -> da.Ok:
        ledger.next_worker += 1
        return da.Ok(ledger.next_worker, ledger)

    def handle_checkout(self, command: int, from_: da.From, wid: int, ledger: Any) -> da.Ok:
        # A slow checkout now and then (a busy loop of up to 2 ms), so some callers' deadlines
        # pass between the pool's deadline check and its answer: the race under test.
        end = time.perf_counter() + ledger.rng.choice([0.0, 0.0, 0.0005, 0.002])
        while time.perf_counter() < end:
            pass
        ledger.served.add(command)
        return da.Ok(command, wid, ledger)

    def terminate_worker(self, reason: Any, wid: int, ledger: TimeoutLedger) -> da.Ok:
        if reason == "timeout":
            ledger.timeout_terminations.append(wid)
        return da.Ok(ledger)


def test_checkout_timeouts_racing_with_grants_never_leak_a_worker() -> None:
    """A caller that gives up just as the pool assigns it a worker gets
    PoolTimeout, and that worker is removed ("timeout") and replaced, never leaked."""
    ledger = TimeoutLedger()
    pool = da.Pool.start(RacingWorker, ledger, pool_size=2)
    completed: set[int] = set()
    timed_out: set[int] = set()
    lock = threading.Lock()
    failures: list[BaseException] = []

    def client(n: int) -> None:
        rng = random.Random(1000 + n)
        try:
            for i in range(400):
                req_id = n * 400 + i
                timeout = rng.choice([0.0, 0.0005, 0.001, 0.003, 2.0])
                try:
                    pool.checkout(req_id, lambda f, c: (sum(range(300)), c), timeout=timeout)
                except da.PoolTimeout:
                    with lock:
                        timed_out.add(req_id)
                else:
                    with lock:
                        completed.add(req_id)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(n,), name=f"pool-race-{n}") for n in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not any(t.is_alive() for t in threads), "a client thread is stuck"
        assert failures == []
        assert len(completed) + len(timed_out) == 8 * 400
        status = wait_for(lambda: (s := pool.status()).initializing == 0 and s.idle == 2 and s, 10)
        assert (status.busy, status.queued) == (0, 0)
        sync(pool.actor_ref)
        served_then_gave_up = ledger.served & timed_out
        assert completed <= ledger.served
        assert ledger.served == completed | served_then_gave_up
        # Exactly the workers handed to callers that had already given up were removed.
        assert len(ledger.timeout_terminations) == len(served_then_gave_up)
        assert status.workers_removed == len(served_then_gave_up)
        assert status.workers_started - status.workers_removed == 2
    finally:
        pool.stop(timeout=30)
