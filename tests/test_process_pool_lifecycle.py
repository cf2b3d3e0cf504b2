"""`ProcessPool` looking after its workers: supervision, recycling, spares, preload, envelopes.

- Supervised: `ProcessPool.child_spec(...)` under a `Supervisor` or `DynamicSupervisor`; a
  killed pool is restarted with fresh workers and its old worker processes are gone; a killed
  pool with no supervisor kills its workers too.
- Recycling: `max_tasks`, `max_memory`, `max_age` (at checkin and at idle pings) retire a
  healthy worker without failing a call; `recycle_jitter` spreads the limits.
- Spares: a SIGKILLed worker's place is taken at once by the spare (target and argv pools).
- Preload: the fork server imports the modules once, before forking workers (and a replacement
  server imports them again); a module that is missing, raises or starts a thread fails start.
- DSPex's envelope: an `argv` program's ``"success": false`` reply is a `RemoteError`.

Every process is real; every wait is bounded and on a condition (the pool's status, a pidfd, a
process table). White-box: `FORK_SERVER` (no public API exposes the fork server) to find its
pid, check its references and make a preload test start with no server running; `PortWorker`
driven by hand to read each worker's recycling limits.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import dspex_actors as da
from dspex_actors import InvalidOption, PortSpec, PortWorker, ProcessPool
from dspex_actors._pool._contract import From
from dspex_actors._ports._forkserver import FORK_SERVER
from dspex_actors._ports._process_pool import _draw_limits
from dspex_actors._threads import Job, KeptThreads
from dspex_actors.testing import EchoWorker, FakeClock, sync, wait_for

from support.lifecycle import (
    WAIT,
    Modules,
    ProcessPools,
    importers,
    lease_pids,
    seen_pids,
    settled,
    wait_all_gone,
)
from support.logs import Records
from support.processes import PROGRAMS, descendants, wait_forkserver_workers, wait_gone
from support.supervision import Supervisors, ref_of
from support.threads import in_thread

pytestmark = pytest.mark.leak_check

FRAME_WORKER = [sys.executable, os.path.join(PROGRAMS, "frame_worker.py")]
ENVELOPE_WORKER = [sys.executable, os.path.join(PROGRAMS, "envelope_worker.py")]

MIB = 1 << 20


# --- the workers' target -----------------------------------------------------------------------

_kept: list[bytes] = []  # what a worker was told to keep (resident: every byte is written)


def probe(request: Any) -> Any:
    """A worker that says what the tests ask about it.

    ``"pid"``: its pid; ``"rss"``: its resident memory in bytes; ``["loaded", name]``: whether
    module `name` is imported here (looked up, never imported); ``["grow", n]``: keep `n` more
    resident bytes and answer its pid; an int: twice that; anything else: itself.
    """
    if request == "pid":
        return os.getpid()
    if request == "rss":
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    if isinstance(request, list) and request[:1] == ["loaded"]:
        return request[1] in sys.modules
    if isinstance(request, list) and request[:1] == ["grow"]:
        _kept.append(b"x" * request[1])
        return os.getpid()
    if isinstance(request, int):
        return request * 2
    return request


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def sups() -> Iterator[Supervisors]:
    s = Supervisors()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Modules:
    """A directory on `sys.path` for this test's modules, put there while no fork server runs:
    the next server starts with it on its `sys.path` (where preload imports look)."""
    wait_for(lambda: FORK_SERVER.users == 0 and FORK_SERVER.pid is None, timeout=10)
    monkeypatch.syspath_prepend(str(tmp_path))
    return Modules(tmp_path)


def recycled_reasons(records: Records) -> list[Any]:
    """The reasons of the ``pool_worker_recycled`` records, as values."""
    return [ast.literal_eval(r["reason"]) for r in records.of("pool_worker_recycled")]


def next_new_pid(pool: ProcessPool, old: int) -> int:
    """Call until a worker other than `old` answers (bounded); every call must succeed."""
    pid: int = wait_for(lambda: (p := pool.call("pid", timeout=WAIT)) != old and p, WAIT)
    return pid


# --- 1. supervised -------------------------------------------------------------------------------


def test_a_supervised_process_pool_killed_is_restarted_with_fresh_workers_and_no_orphan(
    sups: Supervisors,
) -> None:
    spec = ProcessPool.child_spec(target=probe, pool_size=2, id="pp", name="pp")
    sup = sups.start([spec])
    first = da.whereis("pp")
    assert first is not None
    assert first == ref_of(sup, "pp")
    pool = ProcessPool.from_ref(first)
    wait_for(lambda: settled(pool, 2), timeout=WAIT)
    old = lease_pids(pool, 2)
    old_seen = seen_pids(old)
    assert pool.call(21, timeout=WAIT) == 42

    da.kill(first)
    assert da.wait_exit(first, 10) is da.KILLED
    assert wait_all_gone(old_seen), f"workers of the killed pool still run: {old}"
    second = wait_for(lambda: (r := da.whereis("pp")) is not None and r != first and r, 10)
    assert second == ref_of(sup, "pp")
    again = ProcessPool.from_ref(second)
    wait_for(lambda: settled(again, 2), timeout=WAIT)
    assert not lease_pids(again, 2) & old
    assert again.call(4, timeout=WAIT) == 8


def test_a_process_pool_runs_under_a_dynamic_supervisor_which_restarts_it(
    sups: Supervisors,
) -> None:
    sup = sups.dynamic()
    first = sup.start_child(ProcessPool.child_spec(argv=FRAME_WORKER, pool_size=1))
    assert first is not None
    pool = ProcessPool.from_ref(first)
    reply = pool.call({"x": 4}, timeout=WAIT)
    assert reply["result"] == 40
    old = seen_pids({reply["pid"]})

    da.kill(first)
    assert da.wait_exit(first, 10) is da.KILLED
    assert wait_all_gone(old)

    def restarted() -> Any:
        refs = [c.ref for c in sup.which_children()]
        return refs != [first] and len(refs) == 1 and refs[0] is not da.RESTARTING and refs[0]

    again = ProcessPool.from_ref(wait_for(restarted, 10))
    reply = again.call({"x": 5}, timeout=WAIT)
    assert reply["result"] == 50
    assert reply["pid"] not in {s.pid for s in old}


def test_a_killed_process_pool_with_no_supervisor_kills_its_idle_and_lent_workers(
    process_pools: ProcessPools,
) -> None:
    pool = process_pools.start(target=probe, pool_size=2)
    workers = lease_pids(pool, 2)
    lease = pool.lease(None, timeout=WAIT)
    with lease:
        lent = lease.client_state.os_pid
        da.kill(pool.actor_ref)
        assert da.wait_exit(pool.actor_ref, 10) is da.KILLED
        assert lent in workers
        for pid in workers:
            assert wait_gone(pid, 10), f"worker {pid} outlived its killed pool"
    # Leaving the lease of a dead pool is no error; its fork server reference is dropped.
    wait_for(lambda: FORK_SERVER.users == 0, timeout=10)


@pytest.mark.parametrize(
    "options",
    [
        {"target": probe, "pool_size": 1},
        {"argv": FRAME_WORKER, "pool_size": 1},
    ],
    ids=["target", "argv"],
)
def test_process_pool_child_spec_default_id_is_process_pool(options: dict[str, Any]) -> None:
    assert ProcessPool.child_spec(**options).id == "ProcessPool"


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"target": probe, "pool_size": 1, "pool_sise": 2}, "pool_sise"),
        ({"target": probe, "pool_size": 0}, "pool_size"),
        ({"pool_size": 1}, "argv"),
        ({"target": probe, "pool_size": 1, "max_tasks": 0}, "max_tasks"),
        ({"target": probe, "pool_size": 1, "lazy": True, "spares": 1}, "spares"),
        ({"argv": FRAME_WORKER, "pool_size": 1, "preload": ["json"]}, "preload"),
    ],
    ids=["unknown", "pool_size", "no_program", "max_tasks", "lazy_spares", "argv_preload"],
)
def test_process_pool_child_spec_refuses_bad_options_when_the_spec_is_built(
    options: dict[str, Any], option: str
) -> None:
    with pytest.raises(InvalidOption) as err:
        ProcessPool.child_spec(**options)
    assert err.value.option == option
    assert FORK_SERVER.users == 0  # nothing was started


def test_process_pool_from_ref_refuses_a_ref_that_is_not_a_process_pool() -> None:
    pool = da.Pool.start(EchoWorker, pool_size=1)
    try:
        with pytest.raises(TypeError, match="ProcessPool"):
            ProcessPool.from_ref(pool.actor_ref)
    finally:
        pool.stop()
    actor = da.Actor.start()
    try:
        with pytest.raises(TypeError):
            ProcessPool.from_ref(actor)
    finally:
        actor.stop()


# --- 2. recycling --------------------------------------------------------------------------------


def test_max_tasks_recycles_the_worker_at_its_third_task_and_every_call_is_served(
    process_pools: ProcessPools, records: Records
) -> None:
    pool = process_pools.start(target=probe, pool_size=1, max_tasks=3, recycle_jitter=0)
    first = pool.call("pid", timeout=WAIT)
    assert pool.call("pid", timeout=WAIT) == first
    sync(pool.actor_ref)
    assert pool.status().workers_recycled == 0
    assert pool.call("pid", timeout=WAIT) == first  # its third task: it is due now
    sync(pool.actor_ref)
    assert pool.status().workers_recycled == 1
    assert recycled_reasons(records) == ["max_tasks"]
    # It serves on until its replacement has joined, then leaves.
    second = next_new_pid(pool, first)
    assert wait_gone(first, 10), "the recycled worker did not exit"
    sync(pool.actor_ref)
    status = pool.status()
    assert (status.workers_recycled, status.workers_removed) == (1, 1)
    assert status.recycle_reasons == {"max_tasks": 1}
    assert pool.call("pid", timeout=WAIT) == second


def test_no_call_fails_while_workers_recycle_under_concurrent_callers(
    process_pools: ProcessPools,
) -> None:
    pool = process_pools.start(target=probe, pool_size=2, max_tasks=4, recycle_jitter=0)

    def client(offset: int) -> list[Any]:
        return [pool.call(offset + i, timeout=WAIT) for i in range(20)]

    futures = [in_thread(functools.partial(client, 1000 * t), name=f"caller-{t}") for t in range(4)]
    results = [f.result(timeout=120) for f in futures]
    assert results == [[2 * (1000 * t + i) for i in range(20)] for t in range(4)]
    # Every recycled worker is replaced, and none was removed for any other reason.
    wait_for(
        lambda: settled(pool, 2) and (s := pool.status()).workers_removed == s.workers_recycled > 0,
        timeout=WAIT,
    )


def test_max_memory_recycles_a_worker_that_grew_past_it_with_its_rss_as_the_reason(
    process_pools: ProcessPools, records: Records
) -> None:
    limit = 128 * MIB
    pool = process_pools.start(target=probe, pool_size=1, max_memory=limit, recycle_jitter=0)
    baseline = pool.call("rss", timeout=WAIT)
    assert baseline < limit - 32 * MIB, f"a fresh worker already holds {baseline} bytes"
    sync(pool.actor_ref)
    assert pool.status().workers_recycled == 0
    grown = pool.call(["grow", limit - baseline + 16 * MIB], timeout=WAIT)
    sync(pool.actor_ref)
    assert pool.status().workers_recycled == 1
    assert pool.status().recycle_reasons == {"max_memory": 1}
    [(why, rss)] = recycled_reasons(records)
    assert why == "max_memory"
    assert rss >= limit
    next_new_pid(pool, grown)
    assert wait_gone(grown, 10)


def test_a_max_memory_below_a_fresh_workers_rss_is_warned_about_once(
    process_pools: ProcessPools, records: Records
) -> None:
    """Every worker is over the limit after its first task: each is recycled (no call fails),
    and one WARNING says why that is likely."""
    pool = process_pools.start(target=probe, pool_size=1, max_memory=1024, recycle_jitter=0)
    first = pool.call("pid", timeout=WAIT)
    next_new_pid(pool, first)  # a second worker, over the limit too
    sync(pool.actor_ref)
    assert pool.status().recycle_reasons["max_memory"] >= 2
    [warning] = records.of("pool_memory_limit_low")
    assert warning["level"] == "WARNING"
    assert (warning["limit"], warning["rss"] > 1024) == (1024, True)


def test_max_age_recycles_a_worker_at_its_checkin_on_the_pools_clock(
    process_pools: ProcessPools, records: Records
) -> None:
    """A worker's age is read on the pool's clock: a `FakeClock` ages it, real time does not."""
    clock = FakeClock()
    pool = process_pools.start(
        # No idle pings meanwhile (by default, every quarter of max_age): the checkin alone.
        target=probe,
        pool_size=1,
        max_age=10.0,
        recycle_jitter=0,
        worker_idle_timeout=60,
        clock=clock,
    )
    first = pool.call("pid", timeout=WAIT)
    clock.advance(9.9)
    assert pool.call("pid", timeout=WAIT) == first
    sync(pool.actor_ref)
    assert pool.status().workers_recycled == 0  # 9.9 s old: not yet
    clock.advance(0.1)
    assert pool.call("pid", timeout=WAIT) == first  # served, then retired at its checkin
    sync(pool.actor_ref)
    assert pool.status().recycle_reasons == {"max_age": 1}
    assert recycled_reasons(records) == ["max_age"]
    next_new_pid(pool, first)
    assert wait_gone(first, 10)


def test_max_age_recycles_an_idle_worker_when_it_is_pinged(
    process_pools: ProcessPools, records: Records
) -> None:
    """With no `worker_idle_timeout`, idle workers are pinged every quarter of `max_age` on
    the pool's clock, and one found too old is recycled without any checkout."""
    clock = FakeClock()
    pool = process_pools.start(
        target=probe, pool_size=1, max_age=10.0, recycle_jitter=0, clock=clock
    )
    server = FORK_SERVER.pid
    assert server is not None
    (first,) = wait_forkserver_workers(server)
    clock.advance(5.0)  # two idle pings: it answers them, and is only 5 s old
    sync(pool.actor_ref)
    assert pool.status().workers_recycled == 0
    clock.advance(5.0)
    # No checkout at all: only an idle ping can have seen that it grew too old.
    wait_for(lambda: (s := pool.status()).workers_recycled >= 1 and s.workers_removed >= 1, WAIT)
    assert pool.status().checkouts == 0
    assert recycled_reasons(records) == ["max_age"]
    assert wait_gone(first, 10)
    assert pool.call(21, timeout=WAIT) == 42


def test_an_idle_worker_past_max_age_is_recycled_with_no_ping_period_given(
    process_pools: ProcessPools, records: Records
) -> None:
    """With `max_age` and no `worker_idle_timeout`, idle workers are pinged every quarter of
    the shortest age a worker may draw: one that is never used is recycled all the same."""
    _, options = ProcessPool.options(target=probe, pool_size=1, max_age=2.0, recycle_jitter=0.2)
    assert options["worker_idle_timeout"] == pytest.approx(2.0 * 0.8 / 4)
    _, explicit = ProcessPool.options(target=probe, pool_size=1, max_age=2.0, worker_idle_timeout=9)
    assert explicit["worker_idle_timeout"] == 9
    _, ageless = ProcessPool.options(target=probe, pool_size=1)
    assert ageless["worker_idle_timeout"] is None

    pool = process_pools.start(target=probe, pool_size=1, max_age=0.4, recycle_jitter=0)
    server = FORK_SERVER.pid
    assert server is not None
    (first,) = wait_forkserver_workers(server)
    wait_for(lambda: (s := pool.status()).workers_recycled >= 1 and s.workers_removed >= 1, WAIT)
    assert pool.status().checkouts == 0
    assert recycled_reasons(records)[0] == "max_age"
    assert wait_gone(first, 10)


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_workers_recycled_one_after_another_are_closed_by_one_kept_thread(
    process_pools: ProcessPools, end: str
) -> None:
    """A removed worker is closed off the pool's thread, in a thread kept from one close to
    the next: recycling one worker after another starts no thread per close (whose start
    would hold every caller up). The kept thread ends with the pool, stopped or killed."""

    def closers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "dspex-pool-close"} - before

    before: set[threading.Thread] = set()
    before = closers()  # another pool's, if any
    pool = process_pools.start(target=probe, pool_size=1, max_tasks=1, recycle_jitter=0)
    seen: set[threading.Thread] = set()
    for _ in range(5):
        pid = pool.call("pid", timeout=WAIT)  # its one task: it is recycled
        assert wait_gone(pid, 10), "the recycled worker was not closed"
        seen |= closers()
    assert len(seen) == 1, seen
    (closer,) = seen
    if end == "stop":
        pool.stop()
    else:
        da.kill(pool.actor_ref)
    closer.join(WAIT)
    assert not closer.is_alive()


def test_a_removed_worker_is_closed_in_place_when_no_thread_can_be_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No thread for a close (the process is out of them): the worker is closed there and
    then, and nothing is left counted as closing (a stop would wait for it)."""
    w = PortWorker()
    with hand_driven_workers(PortSpec(target=probe), 1) as ([state], pool_state):
        pid = state.port.os_pid

        class NoThreads(KeptThreads):
            def run(self, job: Job) -> None:
                raise RuntimeError("can't start new thread")

        monkeypatch.setattr(pool_state, "closers", NoThreads("dspex-pool-close"))
        assert w.terminate_worker(da.Recycle("max_tasks"), state, pool_state) == da.Ok(pool_state)
        assert wait_gone(pid, 10)
        assert pool_state.closes == 0
        assert state.port not in pool_state.live


@contextlib.contextmanager
def hand_driven_workers(spec: PortSpec, n: int) -> Iterator[tuple[list[da.PortWorkerState], Any]]:
    """`n` workers started by `PortWorker` driven by hand (this thread plays the pool), and
    the pool state."""
    w = PortWorker()
    result = w.init_pool(spec)
    assert isinstance(result, da.Ok)
    pool_state = result.values[0]
    states: list[da.PortWorkerState] = []
    try:
        for _ in range(n):
            started = w.init_worker(pool_state)
            assert isinstance(started, da.Async)
            states.append(started.fn())
        yield states, pool_state
    finally:
        for state in states:
            w.terminate_worker(da.SHUTDOWN, state, pool_state)
        w.terminate_pool(da.SHUTDOWN, pool_state)


def test_recycle_jitter_draws_each_workers_limits_between_1_minus_jitter_and_1_times_them() -> None:
    spec = PortSpec(
        target=probe, max_tasks=100, max_memory=1000 * MIB, max_age=10.0, recycle_jitter=0.5
    )
    with hand_driven_workers(spec, 4) as (states, _):
        limits = [(s.max_tasks, s.max_memory, s.max_age) for s in states]
    for tasks, memory, age in limits:
        assert tasks is not None
        assert memory is not None
        assert age is not None
        assert 50 <= tasks <= 100, limits
        assert 500 * MIB <= memory <= 1000 * MIB, limits
        assert 5.0 <= age <= 10.0, limits
    assert len({tasks for tasks, _, _ in limits}) > 1, f"no jitter at all: {limits}"
    assert len({memory for _, memory, _ in limits}) > 1, f"no memory jitter: {limits}"
    exact = PortSpec(
        target=probe, max_tasks=100, max_memory=1000 * MIB, max_age=10.0, recycle_jitter=0
    )
    with hand_driven_workers(exact, 1) as (states, _):
        assert (states[0].max_tasks, states[0].max_memory, states[0].max_age) == (
            100,
            1000 * MIB,
            10.0,
        )


@pytest.fixture
def seeded_random() -> Iterator[None]:
    """The global `random` generator seeded for this test (and restored after it): the draws
    of `_draw_limits` are then the same on every run."""
    state = random.getstate()
    random.seed(20261206)
    try:
        yield
    finally:
        random.setstate(state)


def test_a_small_max_tasks_is_jittered_too_rounded_at_random_to_whole_tasks(
    seeded_random: None,
) -> None:
    # 10 tasks less up to 10%: 9.0-10.0 tasks. Rounded to the nearest or up, every worker
    # would get 10 (no jitter at all); rounded at random in proportion, some get 9, and the
    # mean is that of the factor drawn (9.5).
    spec = PortSpec(target=probe, max_tasks=10, recycle_jitter=0.1)
    draws = [_draw_limits(spec)[0] for _ in range(4000)]
    assert set(draws) == {9, 10}, draws[:20]
    assert statistics.mean(d for d in draws if d is not None) == pytest.approx(9.5, abs=0.05)
    # A limit of 1 stays 1 (never 0: a worker serves at least one task).
    one = PortSpec(target=probe, max_tasks=1, recycle_jitter=0.9)
    assert {_draw_limits(one)[0] for _ in range(200)} == {1}
    exact = PortSpec(target=probe, max_tasks=10, recycle_jitter=0)
    assert {_draw_limits(exact)[0] for _ in range(50)} == {10}


FROM = From(pool=None, ref=object())  # type: ignore[arg-type]  # for callbacks called by hand


def test_a_worker_is_recycled_at_its_own_drawn_limits_not_the_pools() -> None:
    # The pool's limits are far away; this worker's own (as if drawn low) are reached at
    # once: its checkins must go by its own.
    spec = PortSpec(target=probe, max_tasks=1000, max_memory=1 << 40, recycle_jitter=0)
    w = PortWorker()
    with hand_driven_workers(spec, 1) as ([state], pool_state):
        state.max_tasks = 2
        first = w.handle_checkin("ok", FROM, state, pool_state)
        assert isinstance(first, da.Ok)
        second = w.handle_checkin("ok", FROM, state, pool_state)
        assert second == da.Remove(da.Recycle("max_tasks"), pool_state)
        state.max_tasks, state.max_memory = None, 1
        third = w.handle_checkin("ok", FROM, state, pool_state)
        assert isinstance(third, da.Remove)
        assert isinstance(third.reason, da.Recycle)
        why, rss = third.reason.why
        assert why == "max_memory"
        assert rss >= 1


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("recycle_jitter", 1),
        ("recycle_jitter", 1.5),
        ("recycle_jitter", -0.1),
        ("recycle_jitter", "0.1"),
        ("max_tasks", 0),
        ("max_tasks", -1),
        ("max_tasks", 2.5),
        ("max_tasks", True),
        ("max_memory", 0),
        ("max_memory", 1.5),
        ("max_age", 0),
        ("max_age", -1.0),
        ("max_age", "60"),
        ("clock", "monotonic"),
        ("clock", 0.0),
    ],
)
def test_recycling_options_are_validated_before_anything_starts(option: str, value: Any) -> None:
    with pytest.raises(InvalidOption) as err:
        ProcessPool.start(target=probe, pool_size=1, **{option: value})
    assert err.value.option == option
    assert FORK_SERVER.users == 0


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("argv", f"{sys.executable} -c pass"),  # one string: it was split into characters
        ("argv", []),
        ("argv", [sys.executable, 3]),
        ("env", {"X": 1}),
        ("env", {"": "1"}),
        ("env", {"A=B": "1"}),
        ("env", {"X": "a\0b"}),
        ("env", ["X=1"]),
        ("cwd", 5),
        ("ping", [1, 2]),  # not a mapping: its reply cannot carry its id
        ("ping", {"x": {1, 2}}),  # not JSON
        ("close_timeout", float("nan")),
        ("close_timeout", float("inf")),
    ],
)
def test_a_bad_program_is_refused_before_anything_starts(option: str, value: Any) -> None:
    options = {"argv": [sys.executable, "-c", "pass"], option: value}
    with pytest.raises(InvalidOption) as err:
        ProcessPool.start(pool_size=1, **options)
    assert err.value.option == option


# --- 3. spares -----------------------------------------------------------------------------------


def call_pid(pool: ProcessPool, program: dict[str, Any]) -> int:
    """The pid of the worker serving one call (a `probe` or a `frame_worker` pool)."""
    if "argv" in program:
        pid: int = pool.call({"x": 1}, timeout=WAIT)["pid"]
    else:
        pid = pool.call("pid", timeout=WAIT)
    return pid


@pytest.mark.parametrize(
    "program", [{"target": probe}, {"argv": FRAME_WORKER}], ids=["target", "argv"]
)
def test_a_sigkilled_worker_is_replaced_at_once_by_the_spare_and_a_new_spare_starts(
    process_pools: ProcessPools, program: dict[str, Any]
) -> None:
    pool = process_pools.start(pool_size=1, spares=1, **program)
    assert pool.status().spares == 1
    regular = call_pid(pool, program)
    before = {p.pid for p in descendants()}
    assert regular in before
    os.kill(regular, signal.SIGKILL)
    wait_for(lambda: pool.status().workers_removed >= 1, timeout=WAIT)
    spare = call_pid(pool, program)  # served at once by the former spare, which existed before
    assert spare != regular
    assert spare in before
    wait_for(lambda: settled(pool, 1, spares=1), timeout=WAIT)  # and a new spare is ready
    assert [s.spare for s in pool.worker_stats()] == [False, True]
    assert {p.pid for p in descendants()} - before, "no new spare process was started"
    assert call_pid(pool, program) == spare


def test_a_recycled_worker_with_a_spare_ready_is_replaced_before_the_next_call(
    process_pools: ProcessPools, records: Records
) -> None:
    pool = process_pools.start(target=probe, pool_size=1, spares=1, max_tasks=2, recycle_jitter=0)
    first = pool.call("pid", timeout=WAIT)
    before = {p.pid for p in descendants()}
    assert pool.call("pid", timeout=WAIT) == first  # its second task: recycled at its checkin
    sync(pool.actor_ref)
    spare = pool.call("pid", timeout=WAIT)  # the former spare took its place at once
    assert spare != first
    assert spare in before
    assert recycled_reasons(records) == ["max_tasks"]
    assert wait_gone(first, 10)
    wait_for(lambda: settled(pool, 1, spares=1), timeout=WAIT)  # and a new spare is ready
    status = pool.status()
    assert (status.workers_recycled, status.workers_removed) == (1, 1)
    # Retired at once (the spare took its place): its reason is still in the status.
    assert status.recycle_reasons == {"max_tasks": 1}


# --- 4. preload ----------------------------------------------------------------------------------


def test_without_preload_a_worker_does_not_have_the_module(
    process_pools: ProcessPools, modules: Modules
) -> None:
    name, marker = modules.marker_module("dspex_test_not_preloaded")
    pool = process_pools.start(target=probe, pool_size=1)
    assert pool.call(["loaded", name], timeout=WAIT) is False
    assert importers(marker) == []


def test_preload_imports_the_module_once_in_the_fork_server_and_every_worker_has_it(
    process_pools: ProcessPools, modules: Modules
) -> None:
    name, marker = modules.marker_module("dspex_test_preloaded")
    pool = process_pools.start(target=probe, pool_size=2, preload=[name])
    server = FORK_SERVER.pid
    assert server is not None
    workers = lease_pids(pool, 2)
    assert [pool.call(["loaded", name], timeout=WAIT) for _ in range(2)] == [True, True]
    # Imported once, by the server: not by the workers (forked with it), nor here.
    assert importers(marker) == [server]
    assert name not in sys.modules
    assert all(psutil.Process(pid).ppid() == server for pid in workers)


def test_a_dotted_preload_name_gives_every_worker_that_submodule(
    process_pools: ProcessPools,
) -> None:
    name = "xml.dom.minidom"
    plain = process_pools.start(target=probe, pool_size=1)
    assert plain.call(["loaded", name], timeout=WAIT) is False  # not there by accident
    plain.stop(timeout=WAIT)
    pool = process_pools.start(target=probe, pool_size=1, preload=[name])
    assert pool.call(["loaded", name], timeout=WAIT) is True


def test_a_missing_preload_module_fails_start_with_module_not_found_error() -> None:
    with pytest.raises(da.StartError) as err:
        ProcessPool.start(target=probe, pool_size=1, preload=["dspex_test_no_such_module"])
    assert isinstance(err.value.reason, ModuleNotFoundError)
    assert "dspex_test_no_such_module" in str(err.value)
    assert (FORK_SERVER.users, FORK_SERVER.pid) == (0, None)


def test_a_preload_module_that_raises_fails_start_with_import_error(modules: Modules) -> None:
    name = modules.add("dspex_test_raises_on_import", "raise ValueError('not today')\n")
    with pytest.raises(da.StartError) as err:
        ProcessPool.start(target=probe, pool_size=1, preload=[name])
    assert isinstance(err.value.reason, ImportError)
    assert name in str(err.value)
    assert (FORK_SERVER.users, FORK_SERVER.pid) == (0, None)


@pytest.mark.parametrize("first", [False, True], ids=["server_running", "first_pool"])
def test_a_preload_module_that_kills_the_fork_server_fails_start_and_poisons_no_server(
    process_pools: ProcessPools, modules: Modules, first: bool
) -> None:
    """It exits the process that imports it: the start fails with `StartError` (it
    succeeded, its workers were spawned without the module, and every later fork server
    died at its start importing it, for every pool), whether a fork server ran already or
    this pool is the first to use one."""
    name = modules.add("dspex_test_exits_on_import", "import os\nos._exit(0)\n")
    holder = None if first else process_pools.start(target=probe, pool_size=1)
    assert (FORK_SERVER.pid is None) is first
    with pytest.raises(da.StartError) as err:
        ProcessPool.start(target=probe, pool_size=1, preload=[name])
    assert isinstance(err.value.reason, RuntimeError)
    assert name in str(err.value)
    # Asked for again at once (a supervisor restarting the pool, say), while servers back off
    # after its deaths: refused at once, killing no server.
    with pytest.raises(da.StartError, match=name):
        ProcessPool.start(target=probe, pool_size=1, preload=[name])
    assert name not in FORK_SERVER._preload  # white-box: no later server imports it
    # Once the start backoff its death set is over, the next pool's workers come from a fork
    # server again.
    wait_for(lambda: time.monotonic() >= FORK_SERVER._retry_at, timeout=WAIT)
    other = process_pools.start(target=probe, pool_size=1)
    (worker,) = lease_pids(other, 1)
    assert psutil.Process(worker).ppid() == FORK_SERVER.pid
    if holder is not None:
        assert holder.call(21, timeout=WAIT) == 42


THREAD_AT_IMPORT = """
import threading
threading.Thread(target=threading.Event().wait, args=(30,), daemon=True).start()
"""


def test_a_preload_module_that_starts_a_thread_fails_start_and_its_fork_server_exits(
    process_pools: ProcessPools, modules: Modules
) -> None:
    name = modules.add("dspex_test_thread_at_import", THREAD_AT_IMPORT)
    # It holds the server: only the import ends it.
    holder = process_pools.start(target=probe, pool_size=1)
    server = FORK_SERVER.pid
    assert server is not None
    with pytest.raises(da.StartError) as err:
        ProcessPool.start(target=probe, pool_size=1, preload=[name])
    assert isinstance(err.value.reason, RuntimeError)
    assert "thread" in str(err.value)
    assert wait_gone(server, 10), "the fork server that started a thread still runs"
    # Seen dead here (the holder may even have started a new server since).
    wait_for(lambda: FORK_SERVER.pid != server, timeout=10)
    # A new server serves the next pool; the holder serves on.
    other = process_pools.start(target=probe, pool_size=1)
    (worker,) = lease_pids(other, 1)
    assert psutil.Process(worker).ppid() == FORK_SERVER.pid != server
    assert holder.call(21, timeout=WAIT) == 42


def test_a_preload_that_starts_a_thread_kills_no_worker_of_another_pool(
    process_pools: ProcessPools, modules: Modules
) -> None:
    name = modules.add("dspex_test_thread_at_import", THREAD_AT_IMPORT)
    holder = process_pools.start(target=probe, pool_size=1)
    before = holder.call("pid", timeout=WAIT)
    worker = seen_pids({before})
    server = FORK_SERVER.pid
    assert server is not None
    with pytest.raises(da.StartError):
        ProcessPool.start(target=probe, pool_size=1, preload=[name])
    assert wait_gone(server, 10)
    # The server reaps what it kills before it exits: the worker's fate is known now.
    assert all(s.running() for s in worker), (
        f"the fork server killed worker {before} of another pool as it left"
    )
    assert holder.call("pid", timeout=WAIT) == before
    sync(holder.actor_ref)
    assert holder.status().workers_removed == 0


@pytest.mark.parametrize(
    "options",
    [
        {"argv": FRAME_WORKER, "preload": ["json"]},
        {"argv": FRAME_WORKER, "start_method": "forkserver", "preload": ["json"]},
        {"target": probe, "start_method": "spawn", "preload": ["json"]},
        {"target": probe, "start_method": "fork", "preload": ["json"]},
        {"target": probe, "preload": "json"},
        {"target": probe, "preload": [""]},
    ],
    ids=["argv", "argv_forkserver", "spawn", "fork", "a_string", "empty_name"],
)
def test_preload_is_refused_unless_target_workers_use_the_fork_server(
    options: dict[str, Any],
) -> None:
    with pytest.raises(InvalidOption) as err:
        ProcessPool.start(pool_size=1, **options)
    assert err.value.option == "preload"
    assert FORK_SERVER.users == 0


def test_a_replacement_fork_server_imports_what_running_pools_preload_and_no_more(
    process_pools: ProcessPools, modules: Modules
) -> None:
    a, marker_a = modules.marker_module("dspex_test_preload_a")
    b, marker_b = modules.marker_module("dspex_test_preload_b")
    pool_a = process_pools.start(target=probe, pool_size=1, preload=[a])
    pool_b = process_pools.start(target=probe, pool_size=1, preload=[b])
    first_server = FORK_SERVER.pid
    assert importers(marker_a) == importers(marker_b) == [first_server]
    pool_a.stop(timeout=WAIT)  # nobody preloads `a` any more
    (old_worker,) = lease_pids(pool_b, 1)
    assert pool_b.call(["loaded", b], timeout=WAIT) is True

    assert first_server is not None
    os.kill(first_server, signal.SIGKILL)
    wait_for(lambda: FORK_SERVER.pid != first_server, timeout=10)  # seen dead here
    os.kill(old_worker, signal.SIGKILL)  # pool_b replaces its worker through a new server
    wait_for(lambda: pool_b.status().workers_removed == 1 and settled(pool_b, 1), WAIT)
    (new_worker,) = lease_pids(pool_b, 1)
    second_server = FORK_SERVER.pid
    assert second_server not in (None, first_server)
    assert psutil.Process(new_worker).ppid() == second_server
    assert pool_b.call(["loaded", b], timeout=WAIT) is True
    assert importers(marker_b) == [first_server, second_server]
    assert importers(marker_a) == [first_server]

    pool_b.stop(timeout=WAIT)
    assert FORK_SERVER.users == 0
    assert not FORK_SERVER._preload  # every preload was released with its pool
    assert FORK_SERVER.pid is None


# --- 5. DSPex's envelope -------------------------------------------------------------------------


def test_a_program_reply_with_success_false_is_remote_error_and_the_worker_stays(
    process_pools: ProcessPools,
) -> None:
    pool = process_pools.start(argv=ENVELOPE_WORKER, pool_size=1)
    pid = pool.call({"mode": "plain"}, timeout=WAIT)["pid"]
    with pytest.raises(da.RemoteError) as err:
        pool.call({"mode": "fail", "error": "boom"}, timeout=WAIT)
    assert isinstance(err.value, da.DspexActorsError)
    assert err.value.message == "boom"
    assert pool.call({"mode": "plain"}, timeout=WAIT)["pid"] == pid  # the same worker
    sync(pool.actor_ref)
    [stats] = pool.worker_stats()
    assert (stats.successful_checkins, stats.error_checkins) == (2, 1)
    assert pool.status().workers_removed == 0


@pytest.mark.parametrize(
    ("mode", "extra"),
    [("ok", {"success": True}), ("plain", {})],
    ids=["success_true", "no_success_key"],
)
def test_a_program_reply_with_success_true_or_without_the_key_is_returned_unchanged(
    process_pools: ProcessPools, mode: str, extra: dict[str, Any]
) -> None:
    pool = process_pools.start(argv=ENVELOPE_WORKER, pool_size=1)
    reply = pool.call({"id": "r1", "mode": mode}, timeout=WAIT)
    assert reply == {"id": "r1", "pid": reply["pid"], "result": "done", **extra}
    sync(pool.actor_ref)
    assert pool.worker_stats()[0].error_checkins == 0


def test_a_target_returning_success_false_is_returned_unchanged(
    process_pools: ProcessPools,
) -> None:
    pool = process_pools.start(target=probe, pool_size=1)
    reply = {"success": False, "error": "not an envelope"}
    assert pool.call(reply, timeout=WAIT) == reply
    sync(pool.actor_ref)
    assert pool.worker_stats()[0].error_checkins == 0


def test_a_failed_preload_is_the_cause_of_the_start_error() -> None:
    with pytest.raises(da.StartError) as caught:
        ProcessPool.start(target=abs, pool_size=1, preload=["no_such_module_for_dspex_tests"])
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)
    assert caught.value.__cause__ is caught.value.reason


def test_a_forked_process_using_the_pools_handle_gets_noproc_and_leaves_the_workers_alone(
    process_pools: ProcessPools,
) -> None:
    """A process forked from this one (a fork-based multiprocessing task, say) holds a copy
    of the handle: using it raises `NoProc` at once. It ran the checkout on its copy of the
    pool, found the worker's pipes gone (the fork let go of them) and killed the parent's
    worker by pid, then waited out its timeout."""
    pool = process_pools.start(target=probe, pool_size=1)
    worker = pool.call("pid", timeout=WAIT)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one call, its outcome's class name through the pipe
        try:
            try:
                pool.call("pid", timeout=5)
                outcome = "answered"
            except BaseException as exc:
                outcome = type(exc).__name__
            os.write(w, outcome.encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        assert wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, WAIT)
        assert os.read(r, 100) == b"NoProc"
    finally:
        os.close(r)
    assert pool.call("pid", timeout=WAIT) == worker  # the same worker, untouched
    assert pool.status().workers_removed == 0


def test_target_options_that_would_be_misread_are_refused_or_taken_as_meant() -> None:
    with pytest.raises(InvalidOption) as err:  # it was split into characters: ("a", "b")
        ProcessPool.options(target=probe, pool_size=1, args="ab")
    assert err.value.option == "args"
    spec, _ = ProcessPool.options(target=probe, pool_size=1, args=["ab"], preload=None)
    assert (spec.args, spec.preload) == (("ab",), ())  # preload=None: none (it raised TypeError)


@pytest.mark.parametrize("timeout", [float("nan"), "5", -1])
def test_a_bad_call_timeout_is_refused_before_any_worker_is_used(
    process_pools: ProcessPools, timeout: Any
) -> None:
    pool = process_pools.start(target=probe, pool_size=1)
    with pytest.raises(InvalidOption):
        pool.call(1, timeout=timeout)
    assert pool.status().checkouts == 0


def test_preload_finds_a_module_on_a_path_added_after_the_fork_server_started(
    process_pools: ProcessPools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server imports preloads on the requester's `sys.path` of now, as its workers take
    it; it used its own, of when it started, and the start failed with `StartError`."""
    first = process_pools.start(target=probe, pool_size=1)
    assert first.call(1, timeout=WAIT) == 2  # a fork server runs now
    monkeypatch.syspath_prepend(str(tmp_path))  # a plugin directory added at run time
    modules = Modules(tmp_path)
    name, marker = modules.marker_module("late_path_preload")
    server = FORK_SERVER.pid
    pool = process_pools.start(target=probe, pool_size=1, preload=[name])
    assert FORK_SERVER.pid == server  # the same server imported it
    assert importers(marker) == [server]
    assert pool.call(["loaded", name], timeout=WAIT) is True


def read_stdin(request: Any) -> Any:
    """What the handler's `sys.stdin` holds (a worker's stdin is /dev/null: nothing)."""
    return sys.stdin.read()


@pytest.mark.parametrize("method", ["spawn", "forkserver", "fork"])
def test_a_handler_reading_stdin_reads_nothing_and_steals_no_request(
    process_pools: ProcessPools, method: str
) -> None:
    """In a "spawn" worker, fd 0 was the request pipe: a handler (or a library) reading
    stdin blocked on, or took, the next request's frame."""
    pool = process_pools.start(target=read_stdin, pool_size=1, start_method=method)
    assert pool.call(1, timeout=WAIT) == ""
    assert pool.call(2, timeout=WAIT) == ""
