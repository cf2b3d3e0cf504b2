"""`Pool` recycling, spares, removals, overflow and lazy pools against a model: a state machine.

A hypothesis state machine drives one generic `Pool` of in-process `Modelled` workers, with a
configuration drawn per example (pool_size 1-3, spares 0-2, max_overflow 0-2, lazy or eager).
Its rules check a worker out and in again with a checkin that keeps it, removes it
(``Remove(reason)``) or recycles it (``Remove(Recycle(why))``); hold leases open across steps
and release them the same three ways; make an idle worker or spare "die" (`send_info`, its
`handle_info` returns ``Remove("died")``); and make the next worker start slow (`Async`,
waiting at a gate the machine opens later), so that a worker due for recycling serves on,
observably ``retiring``, until its replacement joins.

The model is written from the documented behaviour (`Pool.start`, `Recycle`, `PoolStatus`,
`WorkerStats`), not from the pool's counters: per worker its id, whether it is spare, lent,
due for recycling or leaving; the idle queue in order (so it predicts which worker each
checkout gets), the spares, the overflow, a lazy pool's free places, and what was started,
terminated (with which reason), removed and recycled. Checkouts run only when the model says a
worker is there for them now (idle, or created synchronously), with a short timeout; none may
time out.

After every step, once the pool has handled everything sent to it (`sync`, then a bounded wait
for the expected number of starting workers), the pool must agree with the model: its status
(idle, busy, spares, overflow, initializing, started, removed, recycled, recycle reasons), its
`worker_stats` (ids, busy, spare, retiring), and the `terminate_worker` calls the workers saw.
Independently of the model's bookkeeping, once no start is pending: an eager pool has
``pool_size`` regular workers (plus the overflow in use) and ``spares`` spares; a lazy pool's
workers and free places add up to ``pool_size`` (plus overflow); worker ids are never reused;
a worker whose replacement has joined is never lent again; and every recycle is counted once.

It found one bug, now fixed and pinned by the plain test at the end: a worker due for
recycling, checked in while the pool was in overflow, was dismissed as overflow but stayed among
those awaiting a replacement, and the pool ended with pool_size + 1 regular workers. It now
leaves as recycled, and the overflow is dismissed with the next worker back.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

import attrs
import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import dspex_actors as da
from dspex_actors.testing import sync, wait_for

from support.models import machine_settings
from support.pools import WAIT, Pools, hold, release

pytestmark = pytest.mark.leak_check

CHECKOUT_WAIT = 2.0  # a checkout the model says is served now gets this long
GATE_WAIT = 60.0  # a slow start waits this long at most for its gate (teardown opens it)
MAX_HELD = 4  # leases held open at once, at most


# --- the workers ----------------------------------------------------------------------------


class Control:
    """The pool state of a `Modelled` pool: what the test tells its workers and what they saw.

    Workers are numbered 1, 2, ... in `init_worker` call order (their worker state); the pool
    numbers them (`WorkerStats.worker_id`) as they arrive, which differs once a slow start is
    overtaken.

    Attributes:
        inits: `init_worker` calls so far.
        slow_next: if set, the next `init_worker` returns `Async`, its worker arriving once
            this gate is set (then it is cleared, and kept in `slow_gates`).
        slow_gates: worker number -> the gate of its slow start.
        terminated: (worker number, reason) of every `terminate_worker`, in order.
    """

    def __init__(self) -> None:
        self.inits = 0
        self.slow_next: threading.Event | None = None
        self.slow_gates: dict[int, threading.Event] = {}
        self.terminated: list[tuple[int, Any]] = []


@attrs.frozen
class Die:
    """A message for `handle_info`: worker number `n` died (`Remove("died")`)."""

    n: int


class Modelled(da.PoolWorker):
    """A worker whose checkin state says what `handle_checkin` returns: ``("ok",)``,
    ``("remove", reason)`` or ``("recycle", why)``."""

    def init_worker(self, pool_state: Control) -> da.Ok | da.Async:
        pool_state.inits += 1
        n = pool_state.inits
        gate = pool_state.slow_next
        if gate is None:
            return da.Ok(n, pool_state)
        pool_state.slow_next = None
        pool_state.slow_gates[n] = gate

        def arrive() -> int:
            if not gate.wait(GATE_WAIT):
                raise RuntimeError(f"worker {n}: its gate was never opened")
            return n

        return da.Async(arrive, pool_state)

    def handle_checkout(
        self, command: Any, from_: da.From, worker_state: int, pool_state: Control
    ) -> da.Ok:
        return da.Ok(worker_state, worker_state, pool_state)

    def handle_checkin(
        self, client_state: Any, from_: da.From, worker_state: int, pool_state: Control
    ) -> da.Ok | da.Remove:
        match client_state:
            case ("remove", reason):
                return da.Remove(reason, pool_state)
            case ("recycle", why):
                return da.Remove(da.Recycle(why), pool_state)
            case _:
                return da.Ok(worker_state, pool_state)

    def handle_info(self, message: Any, worker_state: int) -> da.Ok | da.Remove:
        if isinstance(message, Die) and message.n == worker_state:
            return da.Remove("died")
        return da.Ok(worker_state)

    def terminate_worker(self, reason: Any, worker_state: int, pool_state: Control) -> da.Ok:
        pool_state.terminated.append((worker_state, reason))
        return da.Ok(pool_state)


def checkout_once(pool: da.Pool, outcome: tuple[Any, ...]) -> int | None:
    """Check a worker out and in again with `outcome`; return the id of the worker lent."""
    lent: list[int | None] = []

    def fn(from_: da.From, client_state: int) -> tuple[int, Any]:
        lent.append(from_.worker_id)
        return client_state, outcome

    pool.checkout(None, fn, timeout=CHECKOUT_WAIT)
    return lent[0]


# --- the model ------------------------------------------------------------------------------


@attrs.define
class MWorker:
    """One worker of the model."""

    id: int
    n: int  # its init_worker number (its worker state)
    spare: bool = False
    busy: bool = False
    retiring: str | None = None  # the Recycle reason while it waits for its replacement
    leaving: bool = False  # its replacement joined while it was lent: it leaves at checkin


class Model:
    """What the documentation says the pool holds, step by step (no waiting checkouts)."""

    def __init__(self, size: int, spares: int, max_overflow: int, lazy: bool) -> None:
        self.size, self.n_spares, self.max_overflow, self.lazy = size, spares, max_overflow, lazy
        self.workers: dict[int, MWorker] = {}
        self.idle: list[int] = []  # ids, head first
        self.spares: list[int] = []  # ids, oldest first
        self.retiring: list[int] = []  # ids due for recycling whose replacement starts
        self.overflow = 0
        self.lazy_left = size if lazy else 0
        self.armed = False  # the next start is slow
        self.pending: list[int] = []  # the slow starts' worker numbers, until they arrive
        self.inits = 0
        self.next_id = 0
        self.started = 0
        self.removed = 0
        self.recycled = 0
        self.reasons: dict[str, int] = {}
        self.terminated: list[tuple[int, Any]] = []
        if not lazy:
            for _ in range(size + spares):
                self.start()

    def by_n(self, n: int) -> MWorker:
        (worker,) = [w for w in self.workers.values() if w.n == n]
        return worker

    def regulars(self) -> int:
        """Workers counting toward pool_size + overflow: neither spare nor due for recycling."""
        return sum(1 for w in self.workers.values() if not w.spare and w.retiring is None)

    def served_now(self) -> bool:
        """A checkout gets a worker at once: one is idle, or one is created synchronously."""
        if self.idle:
            return True
        can_create = self.lazy_left > 0 or self.overflow < self.max_overflow
        return can_create and not self.armed

    # -- starts --

    def start(self) -> None:
        self.inits += 1
        if self.armed:
            self.armed = False
            self.pending.append(self.inits)
            return
        self.arrive(self.inits)

    def arrive(self, n: int) -> None:
        """A worker joins: it replaces the oldest worker due for recycling (which leaves at
        once if idle, else at its checkin), or becomes a spare if one is missing and every
        regular place is taken, or waits idle."""
        self.next_id += 1
        self.started += 1
        worker = MWorker(self.next_id, n)
        self.workers[worker.id] = worker
        if self.retiring:
            old = self.workers[self.retiring.pop(0)]
            if old.id in self.idle:
                self.idle.remove(old.id)
                self.retire(old)
            else:
                old.leaving = True
        elif len(self.spares) < self.n_spares and self.regulars() > self.size + self.overflow:
            worker.spare = True
            self.spares.append(worker.id)
            return
        self.idle.append(worker.id)

    # -- leaving --

    def terminate(self, worker: MWorker, reason: Any) -> None:
        self.terminated.append((worker.n, reason))
        self.removed += 1
        del self.workers[worker.id]

    def retire(self, worker: MWorker) -> None:
        assert worker.retiring is not None
        self.terminate(worker, da.Recycle(worker.retiring))

    def promote_spare(self) -> None:
        spare = self.workers[self.spares.pop(0)]
        spare.spare = False
        self.idle.append(spare.id)

    def remove(self, worker: MWorker, reason: Any) -> None:
        """Terminate a worker off the idle queue (a spare stays listed until here) and replace
        it as the pool documents: a new spare, the overflow shrinking, a lazy place freed, or
        a spare promoted and a new worker started."""
        self.terminate(worker, reason)
        if worker.leaving:
            return  # replaced already
        if worker.retiring is not None:
            self.retiring.remove(worker.id)
            return  # its replacement is starting
        if worker.spare:
            self.spares.remove(worker.id)
            self.start()  # a new spare
            return
        if self.overflow > 0:
            self.overflow -= 1
        elif self.lazy:
            self.lazy_left += 1
        else:
            if self.spares:
                self.promote_spare()
            self.start()

    def checked_in(self, worker: MWorker) -> None:
        if self.overflow > 0:
            if worker.retiring is not None:
                # Due for recycling: it leaves now, as recycled; its replacement, starting,
                # takes its place, and the overflow goes with the next worker back.
                self.retiring.remove(worker.id)
                self.retire(worker)
                return
            self.overflow -= 1  # whichever worker comes back is dismissed
            self.terminate(worker, "overflow")
            return
        self.idle.append(worker.id)

    def recycle(self, worker: MWorker, why: str) -> None:
        if worker.leaving:
            self.retire(worker)
            return
        if worker.retiring is not None:
            self.checked_in(worker)  # already being replaced: not counted again
            return
        self.recycled += 1
        self.reasons[why] = self.reasons.get(why, 0) + 1
        if self.overflow > 0 or self.lazy:
            self.remove(worker, da.Recycle(why))
            return
        worker.retiring = why
        if self.spares:
            self.promote_spare()
            self.retire(worker)
            self.start()
            return
        self.retiring.append(worker.id)
        self.checked_in(worker)
        self.start()

    # -- the steps --

    def checkout(self) -> int:
        if not self.idle:
            if self.lazy_left > 0:
                self.lazy_left -= 1
            else:
                assert self.overflow < self.max_overflow
                self.overflow += 1
            self.start()
        worker = self.workers[self.idle.pop(0)]
        worker.busy = True
        return worker.id

    def checkin(self, worker_id: int, outcome: tuple[Any, ...]) -> None:
        worker = self.workers[worker_id]
        worker.busy = False
        match outcome:
            case ("remove", reason):
                self.remove(worker, reason)
            case ("recycle", why):
                self.recycle(worker, why)
            case _:
                if worker.leaving:
                    self.retire(worker)
                else:
                    self.checked_in(worker)

    def die(self, n: int) -> None:
        worker = self.by_n(n)
        if not worker.spare:
            self.idle.remove(worker.id)
        self.remove(worker, "died")


# --- the machine ----------------------------------------------------------------------------

OUTCOMES = st.sampled_from(
    [("ok",), ("remove", "broken"), ("recycle", "max_tasks"), ("recycle", "max_age")]
)


class PoolRecyclingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pool: da.Pool | None = None
        self.control = Control()
        self.model: Model | None = None
        self.held: list[tuple[int, da.Lease]] = []  # (worker id, lease)
        self.ever: set[int] = set()  # every worker id the pool has shown
        self.live: set[int] = set()  # the ids it showed at the last check
        self.checks = 0

    @property
    def p(self) -> da.Pool:
        assert self.pool is not None
        return self.pool

    @property
    def m(self) -> Model:
        assert self.model is not None
        return self.model

    @initialize(
        size=st.integers(1, 3),
        spares=st.integers(0, 2),
        max_overflow=st.integers(0, 2),
        lazy=st.booleans(),
    )
    def start(self, size: int, spares: int, max_overflow: int, lazy: bool) -> None:
        spares = 0 if lazy else spares  # refused for a lazy pool
        self.pool = da.Pool.start(
            Modelled,
            self.control,
            pool_size=size,
            spares=spares,
            max_overflow=max_overflow,
            lazy=lazy,
        )
        self.model = Model(size, spares, max_overflow, lazy)

    # -- rules --

    def _served(self, worker_id: int | None) -> int:
        """Check the worker a checkout got against the model's prediction."""
        expected = self.m.checkout()
        assert worker_id == expected, f"lent worker {worker_id}, the model says {expected}"
        return expected

    @precondition(lambda self: self.model is not None and self.model.served_now())
    @rule(outcome=OUTCOMES)
    def use(self, outcome: tuple[Any, ...]) -> None:
        """Check a worker out and in again at once."""
        try:
            lent = checkout_once(self.p, outcome)
        except da.PoolTimeout as exc:
            raise AssertionError("a checkout the model says is served now timed out") from exc
        worker = self._served(lent)
        self.m.checkin(worker, outcome)

    @precondition(
        lambda self: (
            self.model is not None and self.model.served_now() and len(self.held) < MAX_HELD
        )
    )
    @rule()
    def hold_one(self) -> None:
        """Check a worker out and keep it across steps."""
        try:
            lease = hold(self.p, timeout=CHECKOUT_WAIT)
        except da.PoolTimeout as exc:
            raise AssertionError("a checkout the model says is served now timed out") from exc
        self.held.append((self._served(lease.from_.worker_id), lease))

    @precondition(lambda self: bool(self.held))
    @rule(data=st.data(), outcome=OUTCOMES)
    def release_one(self, data: st.DataObject, outcome: tuple[Any, ...]) -> None:
        worker, lease = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        release(lease, outcome)
        self.m.checkin(worker, outcome)

    @precondition(lambda self: self.model is not None and bool(self.model.idle + self.model.spares))
    @rule(data=st.data())
    def die(self, data: st.DataObject) -> None:
        """An idle worker or a spare dies: its `handle_info` removes it."""
        waiting = [self.m.workers[i].n for i in self.m.idle + self.m.spares]
        n = data.draw(st.sampled_from(waiting))
        self.p.send_info(Die(n))
        self.m.die(n)

    @precondition(
        lambda self: self.model is not None and not self.m.armed and len(self.m.pending) < 3
    )
    @rule()
    def slow_next_start(self) -> None:
        """The next worker to start arrives only when `open_gate` says so."""
        self.control.slow_next = threading.Event()
        self.m.armed = True

    @precondition(
        lambda self: (
            self.model is not None
            and bool(self.model.idle)
            and not self.model.armed
            and len(self.model.pending) < 3
        )
    )
    @rule(why=st.sampled_from(["max_tasks", "max_age"]))
    def recycle_with_a_slow_replacement(self, why: str) -> None:
        """Recycle a worker whose replacement (if one starts) arrives only at `open_gate`."""
        self.slow_next_start()
        self.use(("recycle", why))

    @precondition(lambda self: self.model is not None and self.model.armed)
    @rule()
    def fast_next_start(self) -> None:
        """Take back `slow_next_start` before any worker started (the machine must be able to
        go on when no step starts a worker)."""
        self.control.slow_next = None
        self.m.armed = False

    @precondition(lambda self: self.model is not None and bool(self.model.pending))
    @rule()
    def open_gate(self) -> None:
        """The oldest slow start's worker arrives (one at a time: their order is known)."""
        n = self.m.pending.pop(0)
        self.control.slow_gates[n].set()
        left = len(self.m.pending)
        wait_for(lambda: self.p.status().initializing == left, WAIT)
        self.m.arrive(n)

    # -- checks --

    @invariant()
    def agrees_with_the_model(self) -> None:
        if self.model is None:
            return
        self.checks += 1
        m, pool = self.m, self.p
        sync(pool.actor_ref)
        starting = len(m.pending)
        wait_for(lambda: pool.status().initializing == starting, WAIT)
        status = pool.status()
        assert self.control.inits == m.inits
        assert self.control.terminated == m.terminated
        assert (status.idle, status.busy, status.spares, status.overflow, status.queued) == (
            len(m.idle),
            sum(1 for w in m.workers.values() if w.busy),
            len(m.spares),
            m.overflow,
            0,
        )
        assert (status.workers_started, status.workers_removed) == (m.started, m.removed)
        assert status.workers_recycled == m.recycled
        assert dict(status.recycle_reasons) == m.reasons
        stats = {s.worker_id: s for s in pool.worker_stats()}
        assert {
            i: (s.busy, s.spare, s.retiring, s.checkouts >= (1 if s.busy else 0))
            for i, s in stats.items()
        } == {i: (w.busy, w.spare, w.retiring, True) for i, w in m.workers.items()}
        # Worker ids are never reused; a lent worker is one the model has lent.
        new = set(stats) - self.live
        assert not new & self.ever, f"worker ids reused: {sorted(new & self.ever)}"
        self.ever |= new
        self.live = set(stats)
        assert {w for w, _ in self.held} <= self.live
        # Independent of the model's steps: the pool's shape once no start is pending.
        if not m.pending:
            assert not m.retiring
            regular = [w for w in m.workers.values() if not w.spare and w.retiring is None]
            if m.lazy:
                assert len(regular) + m.lazy_left == m.size + m.overflow
            else:
                assert len(regular) == m.size + m.overflow
                assert status.spares == m.n_spares
        # A worker whose replacement joined is lent to nobody new: it is held, or gone.
        for w in m.workers.values():
            if w.leaving:
                assert w.busy
                assert w.id in {i for i, _ in self.held}
        for w in m.workers.values():
            if w.retiring is not None:
                event("a worker due for recycling serves on" + (" (lent)" if w.busy else ""))
            if w.leaving:
                event("a lent worker's replacement joined")
        if m.overflow:
            event("overflow in use")
        if m.spares and m.recycled:
            event("spares and recycles")
        # Every recycle counted once: the reasons add up to the recycles.
        assert sum(status.recycle_reasons.values()) == status.workers_recycled

    def teardown(self) -> None:
        event(f"checks: {self.checks // 10 * 10}+")
        if self.control.slow_next is not None:
            self.control.slow_next.set()
        for gate in self.control.slow_gates.values():
            gate.set()
        pool = self.pool
        try:
            for _, lease in self.held:
                with contextlib.suppress(Exception):
                    release(lease, ("ok",))
        finally:
            if pool is not None:
                if pool.is_alive():
                    with contextlib.suppress(da.NoProc):
                        pool.stop(timeout=10)
                pool.wait(10)


PoolRecyclingMachine.TestCase.settings = machine_settings(examples=100, steps=30)
test_pool_recycling_spares_and_overflow_follow_the_model = PoolRecyclingMachine.TestCase


# --- the bug the model found ----------------------------------------------------------------


def test_a_worker_due_for_recycling_dismissed_as_overflow_leaves_the_pool_at_its_size(
    pools: Pools,
) -> None:
    control = Control()
    pool = pools.start(Modelled, control, pool_size=2, max_overflow=1)
    try:
        for worker in (1, 2):  # each is recycled; its replacement (3, 4) waits at a gate
            control.slow_next = threading.Event()
            assert checkout_once(pool, ("recycle", "max_tasks")) == worker
        assert [s.retiring for s in pool.worker_stats()] == ["max_tasks", "max_tasks"]
        first, second = hold(pool, timeout=CHECKOUT_WAIT), hold(pool, timeout=CHECKOUT_WAIT)
        # No worker idle: an overflow worker starts (synchronously) and, as the next worker
        # to start, takes worker 1's place: 1 leaves at its checkin.
        extra = hold(pool, timeout=CHECKOUT_WAIT)
        assert [x.from_.worker_id for x in (first, second, extra)] == [1, 2, 3]
        assert pool.status().overflow == 1
        release(second, ("ok",))  # due, back in overflow: it leaves, as recycled
        release(first, ("ok",))  # its replacement (3) joined: it leaves
        release(extra, ("ok",))  # the overflow: dismissed
        sync(pool.actor_ref)  # in overflow, checkins are handled on the pool's thread
        assert control.terminated == [
            (2, da.Recycle("max_tasks")),
            (1, da.Recycle("max_tasks")),
            (5, "overflow"),  # worker 3, the fifth started (3 and 4 wait at their gates)
        ]
    finally:
        for gate in control.slow_gates.values():
            gate.set()
    wait_for(lambda: pool.status().initializing == 0, WAIT)
    sync(pool.actor_ref)
    status = pool.status()
    # Before the fix: idle == 3 (worker 3 and both slow starts), one worker too many for good.
    assert (status.idle, status.busy, status.overflow) == (2, 0, 0)
