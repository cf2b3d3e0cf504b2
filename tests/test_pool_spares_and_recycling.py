"""`Pool`'s `Recycle` removals, `spares`, and the generic `Pool.child_spec`.

- `Recycle(why)`: a healthy worker is retired without harming anyone: it serves on (lent as
  usual) while its replacement starts, and leaves when that one has joined (at once if idle,
  else at its checkin); a spare takes its place at once if there is one. A replacement that
  cannot start un-marks the worker and postpones recycling by the start backoff (on the pool's
  clock, a `FakeClock` here). Overflow and lazy pools remove a recycled worker plainly.
- `spares=N`: started workers kept ready beyond `pool_size`, never lent while spare, pinged and
  told `handle_info`; one takes a removed worker's place at once, and a new spare starts.
- `Pool.child_spec(MyWorker, init_arg, **options)`: validated when built, usable under a
  supervisor.

Workers are in-process `PoolWorker`s driven by a `Control` (what the test tells them, what
they report); no OS process is involved.
"""

from __future__ import annotations

import threading
from typing import Any

import attrs
import pytest

import dspex_actors as da
from dspex_actors.testing import EchoWorker, FakeClock, sync, wait_for

from support.logs import Records
from support.pools import WAIT, Pools, Waiter, hold, release, wait_queued

MAX_TASKS = da.Recycle("max_tasks")


class Control:
    """What the test tells the workers of one pool, and what they report back.

    Workers are numbered 1, 2, ... in `init_worker` call order (a failed start uses a number
    too); tests that compare these numbers with `WorkerStats.worker_id` (numbered as workers
    arrive) start at most one worker at a time asynchronously. Every callback runs in the pool
    (one at a time), except an `Async` start's function.

    Attributes:
        inits: `init_worker` calls so far.
        init_fails: while set, `init_worker` raises (the start fails).
        gate: if not None, `init_worker` returns `Async` and the worker arrives once the gate is
            set (bounded by `WAIT`); or its start fails then, while `async_fails` is set.
        recycle: worker -> why: `handle_checkin` returns ``Remove(Recycle(why), ps)``.
        remove: worker -> reason: `handle_checkin` and `handle_info` return a plain `Remove`.
        ping_recycle / ping_fail: workers whose `handle_ping` returns ``Remove(Recycle(
            "max_age"))`` / ``Remove("ping_failed")``.
        pinged, infos, terminated: what `handle_ping`, `handle_info` and `terminate_worker`
            saw, in order.
    """

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.inits = 0
        self.init_fails = threading.Event()
        self.async_fails = threading.Event()
        self.gate = gate
        self.recycle: dict[int, Any] = {}
        self.remove: dict[int, Any] = {}
        self.ping_recycle: set[int] = set()
        self.ping_fail: set[int] = set()
        self.pinged: list[int] = []
        self.infos: list[tuple[Any, int]] = []
        self.terminated: list[tuple[int, Any]] = []


@attrs.frozen
class Note:
    """A message for `handle_info`, carrying the pool's `Control`."""

    control: Control
    payload: Any


class Controlled(da.PoolWorker):
    """A worker doing what its pool's `Control` (the pool state) says."""

    def init_worker(self, pool_state: Control) -> da.Ok | da.Async:
        pool_state.inits += 1
        n = pool_state.inits
        if pool_state.init_fails.is_set():
            raise RuntimeError(f"worker {n} cannot start")
        gate = pool_state.gate
        if gate is None:
            return da.Ok(n, pool_state)
        fails = pool_state.async_fails

        def arrive() -> int:
            if not gate.wait(WAIT):
                raise RuntimeError(f"worker {n}: its gate was never opened")
            if fails.is_set():
                raise RuntimeError(f"worker {n} cannot start (async)")
            return n

        return da.Async(arrive, pool_state)

    def handle_checkout(
        self, command: Any, from_: da.From, worker_state: int, pool_state: Control
    ) -> Any:
        return da.Ok(worker_state, worker_state, pool_state)

    def handle_checkin(
        self, client_state: Any, from_: da.From, worker_state: int, pool_state: Control
    ) -> da.Ok | da.Remove:
        if worker_state in pool_state.remove:
            return da.Remove(pool_state.remove[worker_state], pool_state)
        if worker_state in pool_state.recycle:
            return da.Remove(da.Recycle(pool_state.recycle[worker_state]), pool_state)
        return da.Ok(worker_state, pool_state)

    def handle_info(self, message: Any, worker_state: int) -> da.Ok | da.Remove:
        # handle_info gets no pool state: a test's message carries the Control, as `Note`.
        if isinstance(message, Note):
            message.control.infos.append((message.payload, worker_state))
            if worker_state in message.control.remove:
                return da.Remove(message.control.remove[worker_state])
        return da.Ok(worker_state)

    def handle_ping(self, worker_state: int, pool_state: Control) -> da.Ok | da.Remove | da.Stop:
        pool_state.pinged.append(worker_state)
        if worker_state in pool_state.ping_recycle:
            return da.Remove(da.Recycle("max_age"))
        if worker_state in pool_state.ping_fail:
            return da.Remove("ping_failed")
        return da.Ok(worker_state)

    def terminate_worker(self, reason: Any, worker_state: int, pool_state: Control) -> da.Ok:
        pool_state.terminated.append((worker_state, reason))
        return da.Ok(pool_state)


def use(pool: da.Pool, checkin_state: Any = "ok") -> int:
    """Check a worker out and in again (with `checkin_state`); return which worker it was."""
    served: int = pool.checkout(None, lambda from_, n: (n, checkin_state), timeout=WAIT)
    return served


def stats_of(pool: da.Pool, worker: int) -> da.WorkerStats:
    (stats,) = [s for s in pool.worker_stats() if s.worker_id == worker]
    return stats


def counts(pool: da.Pool) -> tuple[int, int, int, int, int]:
    """(idle, busy, spares, workers_recycled, workers_removed)."""
    s = pool.status()
    return (s.idle, s.busy, s.spares, s.workers_recycled, s.workers_removed)


def opened(gate: threading.Event) -> threading.Event:
    gate.set()
    return gate


# --- Recycle: the worker serves on until its replacement has joined -------------------------


def test_a_recycle_at_checkin_starts_the_replacement_and_retires_the_idle_worker(
    pools: Pools, records: Records
) -> None:
    control = Control()
    control.recycle[1] = "max_tasks"
    pool = pools.start(Controlled, control, pool_size=1)
    assert use(pool) == 1
    sync(pool.actor_ref)
    # The replacement started at once (synchronously here) and the idle worker 1 left.
    assert control.inits == 2
    assert control.terminated == [(1, MAX_TASKS)]
    assert counts(pool) == (1, 0, 0, 1, 1)
    assert pool.status().workers_started == 2
    assert use(pool) == 2
    [record] = records.of("pool_worker_recycled")
    assert (record["worker_id"], record["reason"]) == (1, "'max_tasks'")
    assert record["level"] == "INFO"


def test_a_worker_due_for_recycling_is_lent_as_usual_until_its_replacement_joins(
    pools: Pools,
) -> None:
    control = Control(gate=opened(threading.Event()))
    pool = pools.start(Controlled, control, pool_size=1)
    wait_for(lambda: pool.status().idle == 1, WAIT)
    assert control.gate is not None
    control.gate.clear()  # the replacement will wait at its gate
    try:
        control.recycle[1] = "max_tasks"
        assert use(pool) == 1
        status = pool.status()
        assert (status.initializing, status.idle, status.queued) == (1, 1, 0)
        assert (status.workers_recycled, status.workers_removed) == (1, 0)
        assert status.recycle_reasons == {"max_tasks": 1}
        assert stats_of(pool, 1).retiring == "max_tasks"
        # Nobody waits for a worker that is only being recycled: it is lent at once.
        assert [use(pool, "still-ok") for _ in range(3)] == [1, 1, 1]
        assert control.terminated == []
    finally:
        control.gate.set()
    wait_for(lambda: pool.status().initializing == 0, WAIT)
    sync(pool.actor_ref)
    assert control.terminated == [(1, MAX_TASKS)]  # it was idle: it left at once
    assert use(pool) == 2
    assert [s.worker_id for s in pool.worker_stats()] == [2]


def test_a_worker_recycled_again_while_due_starts_no_second_replacement(
    pools: Pools, records: Records
) -> None:
    control = Control(gate=opened(threading.Event()))
    pool = pools.start(Controlled, control, pool_size=1)
    wait_for(lambda: pool.status().idle == 1, WAIT)
    assert control.gate is not None
    control.gate.clear()
    try:
        control.recycle[1] = "max_tasks"
        for _ in range(4):  # each checkin asks to recycle worker 1 again
            assert use(pool) == 1
        sync(pool.actor_ref)
        assert control.inits == 2  # worker 1, and its one replacement
        status = pool.status()
        assert (status.initializing, status.workers_recycled) == (1, 1)
        assert len(records.of("pool_worker_recycled")) == 1
    finally:
        control.gate.set()
    wait_for(lambda: pool.status().initializing == 0, WAIT)
    assert use(pool) == 2
    assert control.inits == 2
    assert counts(pool) == (1, 0, 0, 1, 1)


def test_a_due_worker_lent_when_its_replacement_joins_leaves_at_its_checkin(
    pools: Pools,
) -> None:
    control = Control(gate=opened(threading.Event()))
    pool = pools.start(Controlled, control, pool_size=1)
    wait_for(lambda: pool.status().idle == 1, WAIT)
    assert control.gate is not None
    control.gate.clear()
    try:
        control.recycle[1] = "max_tasks"
        assert use(pool) == 1
        held = hold(pool)
        assert held.client_state == 1
    finally:
        control.gate.set()
    try:
        wait_for(lambda: pool.status().initializing == 0, WAIT)
        sync(pool.actor_ref)
        # The replacement has joined and serves; worker 1 is still out, still due.
        assert control.terminated == []
        assert (pool.status().idle, pool.status().busy) == (1, 1)
        assert stats_of(pool, 1).busy
        assert stats_of(pool, 1).retiring == "max_tasks"
        assert use(pool) == 2
    finally:
        del control.recycle[1]  # its checkin says "keep": it leaves all the same
        release(held, "ok")
    sync(pool.actor_ref)
    assert control.terminated == [(1, MAX_TASKS)]
    assert counts(pool) == (1, 0, 0, 1, 1)
    assert [s.worker_id for s in pool.worker_stats()] == [2]


@pytest.mark.parametrize(
    ("checkin_state", "successful", "errors"),
    [("ok", 1, 0), (("error", "bad request"), 0, 1)],
    ids=["ok", "error"],
)
def test_the_recycling_checkin_still_counts_as_successful_or_error_by_its_state(
    pools: Pools, checkin_state: Any, successful: int, errors: int
) -> None:
    control = Control(gate=opened(threading.Event()))
    pool = pools.start(Controlled, control, pool_size=1)
    wait_for(lambda: pool.status().idle == 1, WAIT)
    assert control.gate is not None
    control.gate.clear()
    try:
        control.recycle[1] = "max_tasks"
        assert use(pool, checkin_state) == 1
        stats = stats_of(pool, 1)
        assert (stats.successful_checkins, stats.error_checkins) == (successful, errors)
        assert stats.retiring == "max_tasks"
    finally:
        control.gate.set()
    wait_for(lambda: pool.status().initializing == 0, WAIT)


def test_many_recycles_in_a_row_count_no_failed_start_and_replace_every_worker(
    pools: Pools,
) -> None:
    clock = FakeClock()
    control = Control()
    pool = pools.start(Controlled, control, pool_size=2, clock=clock)
    for n in range(1, 21):
        control.recycle[n] = "max_tasks"
    assert len({use(pool) for _ in range(10)}) == 10  # each worker served once, then left
    sync(pool.actor_ref)
    assert clock.pending() == 0  # no start retry scheduled: no start failed
    status = pool.status()
    assert (status.idle, status.initializing, status.queued) == (2, 0, 0)
    assert (status.workers_recycled, status.workers_removed, status.workers_started) == (
        10,
        10,
        12,
    )
    assert sorted(w for w, _ in control.terminated) == list(range(1, 11))


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_workers_started_one_after_another_reuse_one_start_thread(pools: Pools, end: str) -> None:
    """An `Async` start runs in a thread that then waits for the next one: replacing workers
    one at a time creates no thread per start. The waiting thread ends with the pool, stopped
    or killed."""

    def starters() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "dspex-pool-async-init"} - before

    before: set[threading.Thread] = set()
    before = starters()  # another pool's, if any
    control = Control(gate=opened(threading.Event()))
    pool = pools.start(Controlled, control, pool_size=1)
    wait_for(lambda: pool.status().idle == 1, WAIT)

    def workers() -> list[int]:
        return [s.worker_id for s in pool.worker_stats()]

    (first,) = starters()
    for n in range(1, 6):
        control.recycle[n] = "max_tasks"
        assert use(pool) == n
        wait_for(lambda: workers() == [n + 1], WAIT)  # noqa: B023 (called in this iteration)
        assert starters() == {first}
    if end == "stop":
        pool.stop()
    else:
        da.kill(pool.actor_ref)
    first.join(WAIT)
    assert not first.is_alive()


def test_starts_run_at_once_each_in_its_thread_and_two_threads_stay_waiting(
    pools: Pools,
) -> None:
    """Four workers starting together take four threads (no start waits for another); once
    they have joined, the pool keeps two of those threads waiting and the others end."""

    def starters() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "dspex-pool-async-init"} - before

    before: set[threading.Thread] = set()
    before = starters()  # another pool's, if any
    gate = threading.Event()
    pool = pools.start(Controlled, Control(gate=gate), pool_size=4)
    try:
        wait_for(lambda: len(starters()) == 4, WAIT)  # all four at their gate together
    finally:
        gate.set()
    wait_for(lambda: pool.status().idle == 4, WAIT)
    wait_for(lambda: len(starters()) == 2, WAIT)


# --- Recycle: a replacement that cannot start -----------------------------------------------


def test_a_failed_replacement_unmarks_the_worker_and_postpones_recycling_by_the_backoff(
    pools: Pools,
) -> None:
    """The due worker serves on; recycling waits start_backoff (1 s), then twice that (2 s), up
    to max_start_backoff (3 s), on the pool's clock: no storm of failing starts."""
    clock = FakeClock()
    control = Control()
    pool = pools.start(
        Controlled, control, pool_size=1, clock=clock, start_backoff=1.0, max_start_backoff=3.0
    )
    control.recycle[1] = "max_tasks"
    control.init_fails.set()

    def recycle_once() -> int:
        """One checkin of worker 1 asking to recycle it; how many starts it triggered."""
        before = control.inits
        assert use(pool) == 1
        sync(pool.actor_ref)
        return control.inits - before

    assert recycle_once() == 1  # tried, failed
    assert stats_of(pool, 1).retiring is None  # un-marked: it serves on
    assert counts(pool) == (1, 0, 0, 1, 0)
    assert recycle_once() == 0  # postponed
    clock.advance(0.5)
    assert recycle_once() == 0
    clock.advance(0.5)  # 1 s: the first backoff is over
    assert recycle_once() == 1
    clock.advance(1.5)
    assert recycle_once() == 0
    clock.advance(0.5)  # 2 s: doubled
    assert recycle_once() == 1
    clock.advance(2.5)
    assert recycle_once() == 0
    clock.advance(0.5)  # 3 s: capped at max_start_backoff (not 4 s)
    assert recycle_once() == 1
    clock.advance(3.0)  # still capped
    control.init_fails.clear()
    assert recycle_once() == 1  # this replacement starts
    assert control.terminated == [(1, MAX_TASKS)]
    assert use(pool) == control.inits
    status = pool.status()
    assert (status.idle, status.workers_removed) == (1, 1)
    assert status.workers_recycled == 1  # one worker, however many tries its replacement took


def test_a_worker_serving_on_does_not_reset_the_backoff_of_failing_starts(
    pools: Pools,
) -> None:
    """Worker 2 is removed and its replacement cannot start; worker 1 serves on meanwhile.
    Its checkins prove nothing about starts: the backoff keeps doubling (1 s, 2 s, 4 s on the
    pool's clock), where resetting it at each of them retried twice a second for ever."""
    clock = FakeClock()
    control = Control()
    pool = pools.start(
        Controlled, control, pool_size=2, clock=clock, start_backoff=1.0, max_start_backoff=60.0
    )
    control.remove[2] = "gone"
    control.init_fails.set()
    assert (use(pool), use(pool)) == (1, 2)  # worker 2 leaves at its checkin
    # Its replacement failed, and was retried at once (through the inbox): failed too, and
    # the pool has set its backoff timer on the clock.
    wait_for(lambda: control.inits == 4, WAIT)
    sync(pool.actor_ref)
    starts_at = []
    for second in range(1, 11):
        before = control.inits
        assert use(pool) == 1  # the pool serves on
        clock.advance(1.0)
        sync(pool.actor_ref)
        starts_at += [second] * (control.inits - before)
    assert starts_at == [1, 3, 7]
    control.init_fails.clear()
    clock.advance(8.0)
    sync(pool.actor_ref)
    wait_for(lambda: pool.status().idle == 2, WAIT)
    assert {use(pool), use(pool)} == {1, control.inits}  # the replacement serves


def test_a_start_that_succeeds_clears_the_error_a_timed_out_caller_is_told_of(
    pools: Pools,
) -> None:
    """A worker's replacement fails to start, then starts: a caller timing out later (every
    worker busy) is not told of that old failure as its cause."""
    clock = FakeClock()
    control = Control()
    pool = pools.start(Controlled, control, pool_size=1, clock=clock, start_backoff=1.0)
    control.remove[1] = "gone"
    control.init_fails.set()
    assert use(pool) == 1  # removed at its checkin; its replacement fails (twice)
    wait_for(lambda: control.inits == 3, WAIT)  # the retry (through the inbox) has failed
    sync(pool.actor_ref)  # and the pool has set its backoff timer on the clock
    with pytest.raises(da.PoolTimeout) as failing:
        use_within(pool, 0)
    assert isinstance(failing.value.__cause__, RuntimeError)  # while starts fail: said
    control.init_fails.clear()
    clock.advance(1.0)
    sync(pool.actor_ref)
    wait_for(lambda: pool.status().idle == 1, WAIT)
    lease = hold(pool)
    try:
        with pytest.raises(da.PoolTimeout) as busy:
            use_within(pool, 0)
        assert busy.value.__cause__ is None  # every worker is up, only busy
    finally:
        release(lease)


def use_within(pool: da.Pool, timeout: float) -> Any:
    return pool.checkout(None, lambda from_, n: (n, "ok"), timeout=timeout)


def test_a_failed_async_replacement_unmarks_the_worker_which_serves_on(pools: Pools) -> None:
    clock = FakeClock()
    control = Control(gate=opened(threading.Event()))
    pool = pools.start(Controlled, control, pool_size=1, clock=clock, start_backoff=1.0)
    wait_for(lambda: pool.status().idle == 1, WAIT)
    control.recycle[1] = "max_tasks"
    control.async_fails.set()  # the replacement's start function raises
    assert use(pool) == 1
    wait_for(lambda: pool.status().initializing == 0, WAIT)
    assert control.inits == 2
    assert stats_of(pool, 1).retiring is None
    assert counts(pool) == (1, 0, 0, 1, 0)
    assert [use(pool) for _ in range(3)] == [1, 1, 1]  # it serves on; recycling is postponed
    sync(pool.actor_ref)
    assert control.inits == 2
    assert control.terminated == []
    control.async_fails.clear()
    clock.advance(1.0)
    assert use(pool) == 1  # recycled again: this replacement joins
    wait_for(lambda: pool.status().initializing == 0, WAIT)
    assert control.terminated == [(1, MAX_TASKS)]
    assert use(pool) == 3


# --- Recycle in overflow and lazy pools: a plain removal ------------------------------------


def test_a_recycle_while_the_pool_is_in_overflow_removes_the_worker_without_a_replacement(
    pools: Pools,
) -> None:
    control = Control()
    control.recycle[1] = "max_tasks"
    pool = pools.start(Controlled, control, pool_size=1, max_overflow=1)
    first = hold(pool)
    second = hold(pool)  # an overflow worker
    assert (first.client_state, second.client_state) == (1, 2)
    assert pool.status().overflow == 1
    release(first)
    sync(pool.actor_ref)
    assert control.terminated == [(1, MAX_TASKS)]
    assert control.inits == 2  # no replacement: the pool shrank back to its size instead
    status = pool.status()
    assert (status.overflow, status.workers_recycled, status.workers_removed) == (0, 1, 1)
    release(second)
    sync(pool.actor_ref)
    assert counts(pool) == (1, 0, 0, 1, 1)
    assert use(pool) == 2


def test_a_recycle_in_a_lazy_pool_removes_the_worker_and_the_next_checkout_creates_one(
    pools: Pools,
) -> None:
    control = Control()
    control.recycle[1] = "max_tasks"
    pool = pools.start(Controlled, control, pool_size=1, lazy=True)
    assert use(pool) == 1
    sync(pool.actor_ref)
    assert control.terminated == [(1, MAX_TASKS)]
    assert control.inits == 1
    assert counts(pool) == (0, 0, 0, 1, 1)
    assert use(pool) == 2


# --- Recycle from handle_ping -------------------------------------------------------------------


def test_a_recycle_from_handle_ping_retires_the_idle_worker_after_its_replacement_joined(
    pools: Pools,
) -> None:
    clock = FakeClock()
    control = Control()
    control.ping_recycle.add(1)
    pool = pools.start(Controlled, control, pool_size=2, worker_idle_timeout=10.0, clock=clock)
    clock.advance(10.0)
    sync(pool.actor_ref)
    assert control.pinged == [1, 2]
    assert control.terminated == [(1, da.Recycle("max_age"))]
    assert counts(pool) == (2, 0, 0, 1, 1)
    assert sorted(s.worker_id for s in pool.worker_stats()) == [2, 3]


# --- spares ----------------------------------------------------------------------------------


def test_spares_start_with_the_pool_and_are_never_lent_nor_counted_idle(pools: Pools) -> None:
    control = Control()
    pool = pools.start(Controlled, control, pool_size=2, spares=1)
    assert control.inits == 3
    assert counts(pool) == (2, 0, 1, 0, 0)
    assert [(s.worker_id, s.spare) for s in pool.worker_stats()] == [
        (1, False),
        (2, False),
        (3, True),
    ]
    first, second = hold(pool), hold(pool)
    try:
        assert {first.client_state, second.client_state} == {1, 2}
        waiter = Waiter(pool, timeout=WAIT)
        wait_queued(pool, 1)  # the spare is not lent: the third caller waits
        assert counts(pool) == (0, 2, 1, 0, 0)
        assert not stats_of(pool, 3).busy
        returned = second.client_state
        release(second)
        assert waiter.join().result == returned
    finally:
        release(first)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"spares": -1}, "spares must be a non-negative integer"),
        ({"spares": 1.0}, "spares must be a non-negative integer"),
        ({"spares": True}, "spares must be a non-negative integer"),
        ({"spares": "1"}, "spares must be a non-negative integer"),
        ({"spares": 1, "lazy": True}, "spares must be 0 for a lazy pool"),
    ],
    ids=["negative", "float", "bool", "str", "lazy"],
)
def test_spares_must_be_a_non_negative_integer_and_are_refused_for_lazy_pools(
    options: dict[str, Any], expected: str
) -> None:
    with pytest.raises(da.InvalidOption) as err:
        da.Pool.start(EchoWorker, pool_size=1, **options)
    assert err.value.option == "spares"
    assert str(err.value).startswith(expected)


def remove_by_checkin(pool: da.Pool, control: Control, worker: int) -> None:
    control.remove[worker] = "broken"
    assert use(pool) == worker


def remove_by_info(pool: da.Pool, control: Control, worker: int) -> None:
    control.remove[worker] = "process died"
    pool.send_info(Note(control, "exited"))


def remove_by_lease_error(pool: da.Pool, control: Control, worker: int) -> None:
    def fail(from_: da.From, n: int) -> tuple[Any, Any]:
        assert n == worker
        raise LookupError("caller bug")

    with pytest.raises(LookupError):
        pool.checkout(None, fail, timeout=WAIT)


@pytest.mark.parametrize(
    "remove", [remove_by_checkin, remove_by_info, remove_by_lease_error], ids=lambda f: f.__name__
)
def test_a_removed_worker_is_replaced_at_once_by_the_spare_and_a_new_spare_starts(
    pools: Pools, remove: Any
) -> None:
    control = Control()
    pool = pools.start(Controlled, control, pool_size=1, spares=1)
    regular, spare = 1, 2
    assert [(s.worker_id, s.spare) for s in pool.worker_stats()] == [(1, False), (2, True)]
    gate = control.gate = threading.Event()  # the new spare waits: the old one serves without it
    try:
        remove(pool, control, regular)
        sync(pool.actor_ref)
        assert [w for w, _ in control.terminated] == [regular]
        status = pool.status()
        assert (status.idle, status.spares, status.initializing) == (1, 0, 1)
        assert use(pool) == spare
        assert not stats_of(pool, spare).spare
    finally:
        gate.set()
    wait_for(lambda: pool.status().spares == 1, WAIT)
    assert [(s.worker_id, s.spare) for s in pool.worker_stats()] == [(spare, False), (3, True)]
    assert counts(pool) == (1, 0, 1, 0, 1)


def test_a_recycled_worker_with_a_spare_ready_leaves_at_once_and_a_new_spare_starts(
    pools: Pools,
) -> None:
    control = Control()
    control.recycle[1] = "max_tasks"
    pool = pools.start(Controlled, control, pool_size=1, spares=1)
    assert use(pool) == 1
    sync(pool.actor_ref)
    assert control.terminated == [(1, MAX_TASKS)]
    assert counts(pool) == (1, 0, 1, 1, 1)
    assert [(s.worker_id, s.spare) for s in pool.worker_stats()] == [(2, False), (3, True)]
    assert use(pool) == 2


def test_spares_are_pinged_and_a_spare_that_fails_its_ping_is_replaced_by_a_new_spare(
    pools: Pools,
) -> None:
    clock = FakeClock()
    control = Control()
    control.ping_fail.add(2)
    pool = pools.start(
        Controlled, control, pool_size=1, spares=1, worker_idle_timeout=10.0, clock=clock
    )
    clock.advance(10.0)
    sync(pool.actor_ref)
    assert sorted(control.pinged) == [1, 2]
    assert control.terminated == [(2, "ping_failed")]
    assert [(s.worker_id, s.spare) for s in pool.worker_stats()] == [(1, False), (3, True)]
    assert counts(pool) == (1, 0, 1, 0, 1)
    assert use(pool) == 1


def test_a_spare_is_pinged_at_every_scan_while_a_busy_worker_is_not(pools: Pools) -> None:
    clock = FakeClock()
    control = Control()
    pool = pools.start(
        Controlled, control, pool_size=1, spares=1, worker_idle_timeout=10.0, clock=clock
    )
    held = hold(pool)
    try:
        for _ in range(2):
            clock.advance(10.0)
            sync(pool.actor_ref)
        assert control.pinged == [2, 2]
    finally:
        release(held)


def test_a_spare_recycled_at_its_ping_is_replaced_by_a_new_spare(pools: Pools) -> None:
    clock = FakeClock()
    control = Control()
    control.ping_recycle.add(2)
    pool = pools.start(
        Controlled, control, pool_size=1, spares=1, worker_idle_timeout=10.0, clock=clock
    )
    clock.advance(10.0)
    sync(pool.actor_ref)
    assert control.terminated == [(2, da.Recycle("max_age"))]
    assert [(s.worker_id, s.spare) for s in pool.worker_stats()] == [(1, False), (3, True)]
    assert use(pool) == 1


def test_a_spare_recycled_at_its_ping_counts_as_recycled(pools: Pools, records: Records) -> None:
    clock = FakeClock()
    control = Control()
    control.ping_recycle.add(2)
    pool = pools.start(
        Controlled, control, pool_size=1, spares=1, worker_idle_timeout=10.0, clock=clock
    )
    clock.advance(10.0)
    sync(pool.actor_ref)
    assert control.terminated == [(2, da.Recycle("max_age"))]
    assert pool.status().workers_recycled == 1
    assert [r["worker_id"] for r in records.of("pool_worker_recycled")] == [2]
    assert records.of("pool_worker_removed") == []


@pytest.mark.parametrize("removed", ["regular", "overflow"])
def test_a_worker_removed_in_overflow_leaves_the_pool_at_its_size_with_its_spare(
    pools: Pools, removed: str
) -> None:
    control = Control()
    pool = pools.start(Controlled, control, pool_size=1, spares=1, max_overflow=1)
    regular, extra = hold(pool), hold(pool)
    assert (regular.client_state, extra.client_state) == (1, 3)  # 2 is the spare
    assert pool.status().overflow == 1
    victim, other = (regular, extra) if removed == "regular" else (extra, regular)
    release(victim, error=LookupError("caller bug"))  # the worker is removed
    release(other)
    sync(pool.actor_ref)
    wait_for(lambda: pool.status().initializing == 0, WAIT)
    status = pool.status()
    assert (status.idle, status.busy, status.overflow) == (1, 0, 0)
    assert status.spares == 1


def test_spares_get_handle_info_like_idle_workers(pools: Pools) -> None:
    control = Control()
    pool = pools.start(Controlled, control, pool_size=2, spares=1)
    held = hold(pool)  # worker 1 is lent: it does not see the message
    try:
        pool.send_info(Note(control, "hello"))
        sync(pool.actor_ref)
        assert sorted(control.infos) == [("hello", 2), ("hello", 3)]
    finally:
        release(held)


def test_stop_terminates_spares_with_the_idle_workers(pools: Pools) -> None:
    control = Control()
    pool = pools.start(Controlled, control, pool_size=1, spares=2)
    pool.stop()
    assert sorted(control.terminated) == [(1, da.NORMAL), (2, da.NORMAL), (3, da.NORMAL)]


# --- Pool.child_spec ------------------------------------------------------------------------


def test_pool_child_spec_passes_the_worker_init_arg_and_options_to_start(
    sups: Any,
) -> None:
    control = Control()
    spec = da.Pool.child_spec(
        Controlled, control, pool_size=2, spares=1, id="controlled", name="controlled_pool"
    )
    assert spec.id == "controlled"
    sups.start([spec])
    ref = da.whereis("controlled_pool")
    assert ref is not None
    pool = da.Pool.from_ref(ref)
    assert counts(pool) == (2, 0, 1, 0, 0)
    assert use(pool) == 1
    assert control.inits == 3  # the init_arg reached init_pool as the pool state


def test_pool_child_spec_default_id_is_the_worker_class_name() -> None:
    assert da.Pool.child_spec(EchoWorker, pool_size=1).id == "EchoWorker"
    assert da.Pool.child_spec(Controlled, Control()).id == "Controlled"


@pytest.mark.parametrize(
    ("args", "options", "option"),
    [
        ((EchoWorker,), {"pool_size": 0}, "pool_size"),
        ((EchoWorker,), {"spares": -1}, "spares"),
        ((EchoWorker,), {"lazy": True, "spares": 1}, "spares"),
        ((EchoWorker,), {"pool_sise": 2}, "pool_sise"),
        ((object,), {}, "worker"),
        ((), {}, "worker"),
    ],
    ids=["pool_size", "spares", "lazy_spares", "unknown", "not_a_worker", "no_worker"],
)
def test_pool_child_spec_refuses_bad_options_when_the_spec_is_built(
    args: tuple[Any, ...], options: dict[str, Any], option: str
) -> None:
    with pytest.raises(da.InvalidOption) as err:
        da.Pool.child_spec(*args, **options)
    assert err.value.option == option
