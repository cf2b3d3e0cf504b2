"""`Pool` worker affinity against a model: a state machine.

A hypothesis state machine drives one generic `Pool` of in-process `Affine` workers (pool_size
1-3, max_overflow 0-1, eager). Every checkout runs in a `Holder` thread that keeps its lease
until the machine releases it (checkin Ok, or ``Remove``): plain checkouts, and checkouts that
ask for a worker (`worker=`) with ``affinity="prefer"``, ``"strict"`` or
``"strict_fail_fast"``, for a live worker (idle or lent) or one that is gone. Other rules
release a lease and remove an idle worker (its `handle_info` returns ``Remove``).

The model is written from docs/pooling.md ("Worker affinity", "Overflow") and the docstrings of
`Pool.checkout` / `WorkerBusy`: ``prefer`` takes the asked worker if idle, else any worker;
``strict`` waits for it (the requests behind are served meanwhile, and when it comes back it
goes to the request that has waited longest among those it can serve: the first request waiting
for it alone, ahead of the requests behind that one, but not ahead of an older request waiting
for any worker); ``strict_fail_fast`` raises
`WorkerBusy` at once if it is lent; a worker that is gone drops the preference in every mode.
Requests waiting for any worker are served in order; a worker checked in while the pool is in
overflow and nobody waits is dismissed; a removed worker is replaced (or the overflow shrinks).

After every step, once the pool has handled everything (`sync`, a bounded wait for pending
starts, `sync` again): each lease the model says is granted was granted (bounded wait: none
times out) with the worker the model predicts; `WorkerBusy` came exactly when predicted;
status (idle, busy, queued, overflow) and `worker_stats` (ids, busy) agree with the model.
Teardown releases every lease, joins every thread and stops the pool; one rule releases all
and checks the pool is back at its size.

It found one bug, now fixed and pinned by the plain tests at the end: a request asking for a
lent worker (``strict`` or ``strict_fail_fast``) that was queued behind a request waiting for
*any* worker was not looked at until it reached the queue's head. So a ``strict_fail_fast``
request waited (and timed out) instead of raising `WorkerBusy`, and a ``strict`` request did
not take its worker ahead of the requests behind it. (The first fix went too far: it gave the
worker to the ``strict`` request ahead of *older* requests for any worker too, which a steady
stream of ``strict`` requests could starve; a plain test pins the order.)
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import attrs
import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import dspex_actors as da
from dspex_actors.testing import sync, wait_for

from support.models import machine_settings
from support.pools import Pools

pytestmark = pytest.mark.leak_check

WAIT = 5.0  # bounded waits for what the model says happens
LEASE_TIMEOUT = 30.0  # a checkout's own timeout (teardown releases everything well before)
HOLD_WAIT = 60.0  # a holder keeps its lease this long at most
MAX_HOLDERS = 6  # leases held or waited for at once, at most
AFFINITIES = ("prefer", "strict", "strict_fail_fast")


# --- the workers ----------------------------------------------------------------------------


@attrs.frozen
class Die:
    """A message for `handle_info`: the worker with this state leaves (`Remove("died")`)."""

    n: int


class Affine(da.PoolWorker):
    """Worker state: its start number. ``("remove", why)`` as checkin state removes it."""

    def init_pool(self, init_arg: Any) -> da.Ok:
        return da.Ok([0])

    def init_worker(self, pool_state: list[int]) -> da.Ok:
        pool_state[0] += 1
        return da.Ok(pool_state[0], pool_state)

    def handle_checkout(
        self, command: Any, from_: da.From, worker_state: int, pool_state: Any
    ) -> da.Ok:
        return da.Ok(worker_state, worker_state, pool_state)

    def handle_checkin(
        self, client_state: Any, from_: da.From, worker_state: int, pool_state: Any
    ) -> da.Ok | da.Remove:
        match client_state:
            case ("remove", reason):
                return da.Remove(reason, pool_state)
            case _:
                return da.Ok(worker_state, pool_state)

    def handle_info(self, message: Any, worker_state: int) -> da.Ok | da.Remove:
        if isinstance(message, Die) and message.n == worker_state:
            return da.Remove("died")
        return da.Ok(worker_state)


class Holder:
    """A thread that checks a worker out (with `options`) and keeps the lease until
    `release(outcome)`; it records the worker it got (`worker_id`, `state`) or the error."""

    def __init__(self, pool: da.Pool, timeout: float = LEASE_TIMEOUT, **options: Any) -> None:
        self.granted = threading.Event()
        self.done = threading.Event()
        self._released = threading.Event()
        self.outcome: tuple[Any, ...] = ("ok",)
        self.worker_id: int | None = None
        self.state: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(pool, timeout, options), name="affinity-holder"
        )
        self._thread.start()

    def _run(self, pool: da.Pool, timeout: float, options: dict[str, Any]) -> None:
        try:
            with pool.lease(None, timeout, **options) as lease:
                self.worker_id = lease.from_.worker_id
                self.state = lease.client_state
                self.granted.set()
                self._released.wait(HOLD_WAIT)
                if self.outcome[0] == "remove":
                    lease.checkin_state = self.outcome
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def release(self, outcome: tuple[Any, ...] = ("ok",)) -> None:
        self.outcome = outcome
        self._released.set()

    def join(self, timeout: float = WAIT) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "a holder thread did not finish in time"

    def alive(self) -> bool:
        return self._thread.is_alive()


# --- the model ------------------------------------------------------------------------------


@attrs.define
class MReq:
    key: int
    prefer: int | None  # the worker it waits for alone (strict), None: any worker


class Model:
    """What the documentation says the pool does with affinity, step by step."""

    def __init__(self, size: int, max_overflow: int) -> None:
        self.size, self.max_overflow = size, max_overflow
        self.next_id = 0
        self.workers: dict[int, int] = {}  # id -> start number (worker state)
        self.idle: list[int] = []  # head first
        self.lent: dict[int, int] = {}  # worker id -> holder key
        self.granted: dict[int, int] = {}  # holder key -> worker id (held now)
        self.queue: list[MReq] = []
        self.overflow = 0
        self.gone: list[int] = []  # ids of workers removed
        for _ in range(size):
            self.idle.append(self.new_worker())

    def new_worker(self) -> int:
        self.next_id += 1
        self.workers[self.next_id] = self.next_id  # every start succeeds, in order
        return self.next_id

    def grant(self, key: int, worker: int) -> None:
        self.lent[worker] = key
        self.granted[key] = worker

    def any_waiter(self) -> bool:
        return any(r.prefer is None for r in self.queue)

    def checkout(self, key: int, worker: int | None, affinity: str) -> str:
        """``"served"``, ``"busy"`` (WorkerBusy) or ``"queued"``."""
        if worker is not None and worker not in self.workers:
            worker = None  # gone: the preference is dropped, whatever the affinity
        if worker is not None:
            if worker in self.idle:
                self.idle.remove(worker)
                self.grant(key, worker)
                return "served"
            if affinity == "strict_fail_fast":
                return "busy"
            if affinity == "strict":
                self.queue.append(MReq(key, worker))
                return "queued"
        # Any worker, after those that came first and wait for any worker.
        if not self.any_waiter():
            if self.idle:
                self.grant(key, self.idle.pop(0))
                return "served"
            if self.overflow < self.max_overflow:
                self.overflow += 1
                self.grant(key, self.new_worker())
                return "served"
        self.queue.append(MReq(key, None))
        return "queued"

    def serve_waiters(self) -> None:
        """Requests waiting for any worker take idle (or new overflow) workers in order; those
        waiting for one lent worker alone are passed over."""
        for req in list(self.queue):
            if req.prefer is not None and req.prefer not in self.workers:
                req.prefer = None
            if req.prefer is not None:
                if req.prefer in self.idle:  # (never: it is served as its worker comes back)
                    self.idle.remove(req.prefer)
                    self.queue.remove(req)
                    self.grant(req.key, req.prefer)
                continue
            if self.idle:
                worker = self.idle.pop(0)
            elif self.overflow < self.max_overflow:
                self.overflow += 1
                worker = self.new_worker()
            else:
                return
            self.queue.remove(req)
            self.grant(req.key, worker)

    def release(self, key: int, remove: bool) -> None:
        worker = self.granted.pop(key)
        del self.lent[worker]
        if remove:
            self.remove(worker)
            return
        if self.overflow > 0 and not self.queue:
            self.overflow -= 1  # dismissed, whichever worker it is
            del self.workers[worker]
            self.gone.append(worker)
            return
        self.idle.append(worker)
        # The longest-waiting request it can serve gets it: the first request waiting for it
        # alone, unless one waiting for any worker is queued ahead (then the queue, in order).
        for req in self.queue:
            if req.prefer is None:
                break
            if req.prefer == worker:
                self.idle.remove(worker)
                self.queue.remove(req)
                self.grant(req.key, worker)
                break
        self.serve_waiters()

    def remove(self, worker: int) -> None:
        """A worker leaves (lent, at its checkin, or idle): replaced, or the overflow shrinks."""
        del self.workers[worker]
        self.gone.append(worker)
        for req in self.queue:
            if req.prefer == worker:
                req.prefer = None
        replace = self.overflow == 0
        if not replace:
            self.overflow -= 1
        self.serve_waiters()
        if replace:  # the replacement starts through the pool's inbox: after the above
            self.idle.append(self.new_worker())
            self.serve_waiters()

    def die(self, worker: int) -> None:
        self.idle.remove(worker)
        self.remove(worker)


# --- the machine ----------------------------------------------------------------------------


class PoolAffinityMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool: da.Pool | None = None
        self.model: Model | None = None
        self.holders: dict[int, Holder] = {}  # key -> holder (granted or queued)
        self.finished: list[Holder] = []  # released or failed: joined at teardown
        self.keys = 0

    @property
    def p(self) -> da.Pool:
        assert self.pool is not None
        return self.pool

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    @initialize(size=st.integers(1, 3), max_overflow=st.integers(0, 1))
    def start(self, size: int, max_overflow: int) -> None:
        self.pool = da.Pool.start(Affine, pool_size=size, max_overflow=max_overflow)
        self.model = Model(size, max_overflow)

    # -- rules --

    @precondition(lambda self: self.model is not None and len(self.holders) < MAX_HOLDERS)
    @rule(data=st.data())
    def checkout(self, data: st.DataObject) -> None:
        """Check out: plainly, or asking for a worker (idle, lent or gone) with an affinity."""
        m = self.m
        kind = data.draw(st.sampled_from(["plain", "idle", "lent", "gone"]))
        pools = {"idle": m.idle, "lent": sorted(m.lent), "gone": m.gone}
        if kind == "plain" or not pools[kind]:
            worker, affinity = None, "prefer"
        else:
            worker = data.draw(st.sampled_from(pools[kind]))
            affinity = data.draw(st.sampled_from(AFFINITIES))
        self.keys += 1
        key = self.keys
        queued_before = len(m.queue)
        expected = m.checkout(key, worker, affinity)
        event(f"checkout {kind} {affinity if worker is not None else 'plain'}: {expected}")
        options: dict[str, Any] = {} if worker is None else {"worker": worker}
        if affinity != "prefer":
            options["affinity"] = affinity
        holder = Holder(self.p, **options)
        if expected == "busy":
            holder.join()
            assert isinstance(holder.error, da.WorkerBusy), f"expected WorkerBusy: {holder.error!r}"
            assert holder.error.worker_id == worker
            self.finished.append(holder)
            return
        self.holders[key] = holder
        if expected == "queued":
            # Queued before the next step (in the pool's order): it has reached the pool.
            wait_for(lambda: self.p.status().queued == queued_before + 1, WAIT)

    @precondition(lambda self: self.model is not None and bool(self.model.granted))
    @rule(data=st.data(), remove=st.booleans())
    def release(self, data: st.DataObject, remove: bool) -> None:
        """Check a held worker in: kept, or removed (``Remove``)."""
        self._release(data.draw(st.sampled_from(sorted(self.m.granted))), remove)

    def _release(self, key: int, remove: bool) -> None:
        holder = self.holders.pop(key)
        holder.release(("remove", "broken") if remove else ("ok",))
        holder.join()
        assert holder.error is None, repr(holder.error)
        self.finished.append(holder)
        self.m.release(key, remove)

    @precondition(lambda self: self.model is not None and bool(self.model.idle))
    @rule(data=st.data())
    def remove_idle(self, data: st.DataObject) -> None:
        """An idle worker leaves: its `handle_info` returns ``Remove``."""
        worker = data.draw(st.sampled_from(self.m.idle))
        self.p.send_info(Die(self.m.workers[worker]))
        self.m.die(worker)

    @precondition(lambda self: self.model is not None and bool(self.model.granted))
    @rule()
    def release_all(self) -> None:
        """Check every lease in, in order, until nothing is held or waiting: the pool is back
        at its size, all idle."""
        while self.m.granted:
            self.settle()
            self._release(min(self.m.granted), remove=False)
        self.settle()
        assert not self.m.queue
        status = self.p.status()
        assert (status.idle, status.busy, status.queued, status.overflow) == (
            self.m.size,
            0,
            0,
            0,
        )

    # -- checks --

    def settle(self) -> None:
        pool = self.p
        sync(pool.actor_ref)
        wait_for(lambda: pool.status().initializing == 0, WAIT)
        sync(pool.actor_ref)
        for key, worker in self.m.granted.items():
            holder = self.holders[key]
            assert holder.granted.wait(WAIT), (
                f"checkout {key} the model says got worker {worker} was not served"
                f" (error: {holder.error!r})"
            )
            assert holder.worker_id == worker, (
                f"checkout {key} got worker {holder.worker_id}, the model says {worker}"
            )
            assert holder.state == self.m.workers[worker]

    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.model is None:
            return
        self.settle()
        m, pool = self.m, self.p
        for key, holder in self.holders.items():
            if key not in m.granted:
                assert not holder.granted.is_set(), (
                    f"checkout {key} got worker {holder.worker_id}; the model says it waits"
                )
                assert holder.error is None, repr(holder.error)
        status = pool.status()
        assert (status.idle, status.busy, status.queued, status.overflow) == (
            len(m.idle),
            len(m.lent),
            len(m.queue),
            m.overflow,
        )
        assert {s.worker_id: s.busy for s in pool.worker_stats()} == {
            w: w in m.lent for w in m.workers
        }
        if any(r.prefer is not None for r in m.queue):
            event("a strict request waits for its worker")
        if m.overflow:
            event("overflow in use")

    def teardown(self) -> None:
        pool = self.pool
        holders = [*self.holders.values(), *self.finished]
        try:
            for holder in holders:
                holder.release()
            deadline = time.monotonic() + WAIT
            for holder in holders:
                holder.done.wait(max(0.0, deadline - time.monotonic()))
        finally:
            if pool is not None:
                if pool.is_alive():
                    with contextlib.suppress(da.NoProc):
                        pool.stop(timeout=10)
                pool.wait(10)
            for holder in holders:
                holder.join(10)


PoolAffinityMachine.TestCase.settings = machine_settings(examples=100, steps=25)
test_pool_affinity_follows_the_model = PoolAffinityMachine.TestCase


# --- the bug the model found ----------------------------------------------------------------


def take_all(pool: da.Pool) -> dict[int, int]:
    """Worker state -> worker id of every idle worker (checked out together, then in)."""
    holders = [Holder(pool) for _ in range(pool.status().idle)]
    try:
        for holder in holders:
            assert holder.granted.wait(WAIT)
        return {h.state: h.worker_id for h in holders if h.state and h.worker_id}
    finally:
        for holder in holders:
            holder.release()
            holder.join()


def test_a_returning_worker_goes_to_the_longest_waiting_request_it_can_serve(
    pools: Pools,
) -> None:
    """Queue: a request for any worker, then one for `worker` alone, then another for any
    worker. `worker` comes back: the oldest request takes it (a strict request never overtakes
    an older one, which a steady stream of strict requests would starve). It comes back again:
    the strict request takes it, ahead of the plain request queued after it."""
    pool = pools.start(Affine, pool_size=1)
    (worker,) = take_all(pool).values()
    held = Holder(pool)
    holders = [held]
    try:
        assert held.granted.wait(WAIT)
        older = Holder(pool)  # waits for any worker
        holders.append(older)
        wait_for(lambda: pool.status().queued == 1, WAIT)
        strict = Holder(pool, worker=worker, affinity="strict")  # waits for `worker` alone
        holders.append(strict)
        wait_for(lambda: pool.status().queued == 2, WAIT)
        younger = Holder(pool)  # waits for any worker, after both
        holders.append(younger)
        wait_for(lambda: pool.status().queued == 3, WAIT)

        held.release()
        assert older.granted.wait(WAIT)
        sync(pool.actor_ref)
        assert not strict.granted.is_set()
        assert not younger.granted.is_set()
        older.release()
        assert strict.granted.wait(WAIT)
        sync(pool.actor_ref)
        assert not younger.granted.is_set()
        strict.release()
        assert younger.granted.wait(WAIT)
    finally:
        for h in holders:
            h.release()
        for h in holders:
            h.join()


def test_strict_fail_fast_behind_a_plain_waiter_raises_worker_busy(pools: Pools) -> None:
    pool = pools.start(Affine, pool_size=1)
    (worker,) = take_all(pool).values()
    held = Holder(pool)
    plain = None
    try:
        assert held.granted.wait(WAIT)
        plain = Holder(pool)  # waits for any worker
        wait_for(lambda: pool.status().queued == 1, WAIT)
        with pytest.raises(da.WorkerBusy):  # before a fix: PoolTimeout after 0.5 s
            pool.checkout(
                None, lambda f, s: (s, s), 0.5, worker=worker, affinity="strict_fail_fast"
            )
    finally:
        held.release()
        if plain is not None:
            plain.release()
        held.join()
        if plain is not None:
            plain.join()
