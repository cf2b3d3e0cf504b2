"""`ProcessPool` guarantees pinned with real processes, each in the state in between.

- Recycling starts the replacement before the recycled worker leaves: a worker past
  `max_tasks` serves on, marked ``retiring`` in `worker_stats()` and counted once in
  `status().workers_recycled`, while its replacement's start is held back; its process exits
  only once the replacement has answered its ping. One that is lent when its replacement joins
  is not closed under its caller: it leaves at its checkin. No call fails across a recycle.
- Spares: an `argv` pool's spare counts in `status().spares` only once it has answered its
  `ping`; a start that never answers is killed at `init_timeout`, logged and started again,
  and never was a spare.
- No orphan: a pool killed or stopped while a worker start is held back leaves no process of
  that start; a pool killed with a spare ready kills the spare's process too; a
  ``shutdown=BRUTAL_KILL`` pool under a supervisor that is stopped leaves no worker process
  (idle, spare or lent).
- `ProcessPool.child_spec(restart=..., shutdown=...)`: the options reach the spec and the
  supervisor; a killed temporary pool is not restarted (its spec is deleted), a transient one
  is restarted after a kill and not after a normal stop.
- A pool started with ``name=`` under a `DynamicSupervisor`: `whereis(name)` and
  `ProcessPool.from_ref` drive each incarnation, the old one's workers gone.
- DSPex's envelope through `acall`: a program's ``"success": false`` reply is a `RemoteError`
  with the program's text, the worker stays (an error checkin); other replies are unchanged.

Every process is real. A worker start is held back by ``guarantee_gated_worker.py``, which
withholds its answer to the pool's ping (`ping=`) until the test sends it SIGUSR1: every
state in between is waited for on a condition (the program's marker file, the pool's status,
a pidfd, the process table), never on time.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pykka
import pytest

import dspex_actors as da
from dspex_actors import ProcessPool
from dspex_actors._ports._forkserver import FORK_SERVER
from dspex_actors.testing import sync, wait_for

from support.lifecycle import (
    WAIT,
    ProcessPools,
    seen_pids,
    settled,
    wait_all_gone,
)
from support.logs import Records
from support.processes import PROGRAMS, descendants, wait_forkserver_workers, wait_gone
from support.supervision import Supervisors, ref_of

pytestmark = pytest.mark.leak_check

GATED_WORKER = os.path.join(PROGRAMS, "guarantee_gated_worker.py")
FRAME_WORKER = [sys.executable, os.path.join(PROGRAMS, "frame_worker.py")]
ENVELOPE_WORKER = [sys.executable, os.path.join(PROGRAMS, "envelope_worker.py")]
PING = {"op": "ping"}  # what a gated pool's `ping=` sends: the request the program may hold


def probe(request: Any) -> Any:
    """A `target` worker: ``"pid"`` answers its pid, an int twice that, anything else itself."""
    if request == "pid":
        return os.getpid()
    if isinstance(request, int):
        return request * 2
    return request


# --- helpers -------------------------------------------------------------------------------------


class PingGate:
    """The directory of ``guarantee_gated_worker.py`` programs: while it is held (`hold`), a
    worker that gets its pool's ping leaves a ``held.<pid>`` marker and answers only once it
    is released (`release`, one process at a time)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.argv = [sys.executable, GATED_WORKER, str(directory)]

    def hold(self) -> None:
        """From now on, a ping waits for its process's release."""
        (self.directory / "hold").touch()

    def open(self) -> None:
        """From now on, a ping is answered at once (one held already stays held)."""
        (self.directory / "hold").unlink()

    def held(self) -> set[int]:
        """Every process that was held in its ping (released or not, running or not)."""
        return {int(p.name.partition(".")[2]) for p in self.directory.glob("held.*")}

    def wait_held(self, known: set[int] | None = None, timeout: float = WAIT) -> int:
        """The pid of the one process, not in `known`, that got its ping while held: it runs
        and is inside its start's handshake (bounded wait)."""
        new: list[int] = wait_for(lambda: sorted(self.held() - (known or set())), timeout)
        assert len(new) == 1, f"more than one start held at once: {new}"
        return new[0]

    def release(self, pid: int) -> None:
        """Let process `pid` answer the ping it holds."""
        os.kill(pid, signal.SIGUSR1)


@pytest.fixture
def gate(tmp_path: Path) -> PingGate:
    return PingGate(tmp_path)


def served_by(pool: ProcessPool, x: int) -> int:
    """One call to a `frame_worker` or gated pool; the pid of the worker that answered it."""
    reply = pool.call({"x": x}, timeout=WAIT)
    assert reply["result"] == 10 * x, reply
    pid: int = reply["pid"]
    return pid


def program_pids(program: str) -> set[int]:
    """The live processes below this one running `program` (a script's path)."""
    pids = set()
    for process in descendants():
        with contextlib.suppress(psutil.Error):
            if program in process.cmdline():
                pids.add(process.pid)
    return pids


def recycled_reasons(records: Records) -> list[Any]:
    """The reasons of the ``pool_worker_recycled`` records, as values."""
    return [ast.literal_eval(r["reason"]) for r in records.of("pool_worker_recycled")]


def start_failures(records: Records) -> list[dict[str, Any]]:
    """The logged failures of `PortWorker.init_worker` (worker starts that failed)."""
    return [
        r
        for r in records.of("pool_callback_error")
        if r.get("callback") == "PortWorker.init_worker"
    ]


# --- 1. recycling: the replacement first, then the recycled worker leaves ------------------------


def test_a_recycled_worker_serves_on_until_its_replacement_has_answered_and_only_then_exits(
    process_pools: ProcessPools, gate: PingGate, records: Records
) -> None:
    pool = process_pools.start(
        argv=gate.argv, ping=PING, pool_size=1, max_tasks=2, recycle_jitter=0
    )
    first = served_by(pool, 1)
    sync(pool.actor_ref)
    [before] = pool.worker_stats()
    assert before.retiring is None
    assert pool.status().workers_recycled == 0

    gate.hold()
    assert served_by(pool, 2) == first  # its second task: due for recycling at its checkin
    sync(pool.actor_ref)
    replacement = gate.wait_held()  # started, and its ping not answered
    process_pools.note()
    assert replacement != first
    old = seen_pids({first})

    # In between: the old worker is retiring, its process runs, and it still serves.
    [retiring] = pool.worker_stats()
    assert (retiring.worker_id, retiring.retiring) == (before.worker_id, "max_tasks")
    status = pool.status()
    assert (status.idle, status.initializing) == (1, 1)
    assert (status.workers_recycled, status.workers_removed) == (1, 0)
    assert all(s.running() for s in old)
    assert served_by(pool, 3) == first  # no caller waits for the replacement
    sync(pool.actor_ref)
    [retiring] = pool.worker_stats()
    assert (retiring.retiring, retiring.successful_checkins) == ("max_tasks", 3)
    assert pool.status().workers_recycled == 1  # already being replaced: not recycled again
    assert recycled_reasons(records) == ["max_tasks"]
    assert all(s.running() for s in old), "the recycled worker left before its replacement"

    gate.open()
    gate.release(replacement)
    assert wait_gone(first, 10), "the recycled worker did not exit once its replacement answered"
    wait_for(lambda: settled(pool, 1) and pool.status().workers_removed == 1, timeout=WAIT)
    [after] = pool.worker_stats()
    assert after.worker_id != before.worker_id
    assert after.retiring is None
    assert pool.status().workers_recycled == 1
    assert served_by(pool, 4) == replacement
    assert not start_failures(records)


def test_a_retiring_worker_lent_when_its_replacement_joins_leaves_only_at_its_checkin(
    process_pools: ProcessPools, gate: PingGate
) -> None:
    pool = process_pools.start(
        argv=gate.argv, ping=PING, pool_size=1, max_tasks=2, recycle_jitter=0
    )
    first = served_by(pool, 1)
    gate.hold()
    assert served_by(pool, 2) == first
    sync(pool.actor_ref)
    replacement = gate.wait_held()
    process_pools.note()

    with pool.lease(None, timeout=WAIT) as lease:
        port = lease.client_state
        assert port.os_pid == first  # the retiring worker is lent as any other
        gate.open()
        gate.release(replacement)
        wait_for(lambda: (s := pool.status()).initializing == 0 and s.idle == 1, timeout=WAIT)
        stats = pool.worker_stats()
        assert [(s.busy, s.retiring) for s in stats] == [(True, "max_tasks"), (False, None)]
        # Its caller still has it: its process was not closed under it.
        reply = port.request({"x": 5}, timeout=WAIT)
        assert (reply["pid"], reply["result"]) == (first, 50)
    assert wait_gone(first, 10), "the recycled worker did not leave at its checkin"
    sync(pool.actor_ref)
    status = pool.status()
    assert (status.workers_recycled, status.workers_removed) == (1, 1)
    assert [s.retiring for s in pool.worker_stats()] == [None]
    assert served_by(pool, 3) == replacement


# --- 2. spares: ready once they answered their ping ----------------------------------------------


def test_an_argv_spare_counts_only_once_it_answered_its_ping_and_a_silent_start_is_retried(
    process_pools: ProcessPools, gate: PingGate, records: Records
) -> None:
    init_timeout = 4.0
    pool = process_pools.start(
        argv=gate.argv, ping=PING, pool_size=1, spares=1, init_timeout=init_timeout
    )
    regular = served_by(pool, 1)
    workers = program_pids(GATED_WORKER)
    assert regular in workers
    assert len(workers) == 2, workers
    (spare,) = workers - {regular}
    started = pool.status().workers_started

    gate.hold()
    os.kill(spare, signal.SIGKILL)
    wait_for(lambda: pool.status().workers_removed == 1, timeout=WAIT)
    silent = gate.wait_held()  # the new spare's process runs; its ping is not answered
    process_pools.note()
    status = pool.status()
    assert (status.spares, status.initializing, status.idle) == (0, 1, 1)
    assert [s.spare for s in pool.worker_stats()] == [False]
    assert served_by(pool, 2) == regular  # the regular serves meanwhile

    # It never answers: at init_timeout its start fails (logged), its process is killed, and
    # the spare is started again (held again: the gate is still held).
    again = gate.wait_held(known={silent}, timeout=init_timeout + WAIT)
    process_pools.note()
    assert wait_gone(silent, 10), "the process of the failed start still runs"
    assert start_failures(records), "the failed start was not logged"
    status = pool.status()
    assert (status.spares, status.initializing) == (0, 1)
    assert status.workers_started == started  # the silent start never joined

    gate.open()
    gate.release(again)
    wait_for(lambda: settled(pool, 1, spares=1), timeout=WAIT)
    assert [s.spare for s in pool.worker_stats()] == [False, True]
    assert pool.status().workers_started == started + 1
    assert served_by(pool, 3) == regular


# --- 3. no orphan --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_pool_ended_while_a_worker_start_is_held_back_leaves_no_process_of_that_start(
    process_pools: ProcessPools, gate: PingGate, how: str
) -> None:
    gate.hold()
    pool = process_pools.start(ready=False, argv=gate.argv, ping=PING, pool_size=1)
    held = gate.wait_held()
    process_pools.note()
    starting = seen_pids({held})
    assert starting, "the held process is already gone"
    status = pool.status()
    assert (status.idle, status.initializing) == (0, 1)

    if how == "kill":
        da.kill(pool.actor_ref)
        assert da.wait_exit(pool.actor_ref, 10) is da.KILLED
        assert wait_all_gone(starting), f"the start {held} outlived its killed pool"
    else:
        pool.stop(timeout=WAIT)
        # stop() waits for the starts in flight: the process is gone (and reaped) by now.
        assert not any(s.running() for s in starting), f"the start {held} outlived stop()"
    assert program_pids(GATED_WORKER) == set()


def pool_workers(program: dict[str, Any]) -> set[int]:
    """Every worker process of the one pool running: the fork server's workers (a `target`
    pool), or the `frame_worker` processes (an `argv` pool)."""
    if "argv" in program:
        return program_pids(FRAME_WORKER[1])
    server = FORK_SERVER.pid
    assert server is not None
    return set(wait_forkserver_workers(server))


@pytest.mark.parametrize(
    "program", [{"target": probe}, {"argv": FRAME_WORKER}], ids=["target", "argv"]
)
def test_a_pool_killed_with_a_spare_ready_kills_the_spares_process_too(
    process_pools: ProcessPools, program: dict[str, Any]
) -> None:
    pool = process_pools.start(pool_size=1, spares=1, **program)
    regular = served_by(pool, 1) if "argv" in program else pool.call("pid", timeout=WAIT)
    workers = pool_workers(program)
    assert regular in workers
    assert len(workers) == 2, workers
    (spare,) = workers - {regular}
    assert [s.spare for s in pool.worker_stats()] == [False, True]
    processes = seen_pids(workers)

    da.kill(pool.actor_ref)
    assert da.wait_exit(pool.actor_ref, 10) is da.KILLED
    assert wait_all_gone(processes), (
        f"still running after the pool was killed: spare {spare}, regular {regular}"
    )


def test_a_brutal_kill_process_pool_under_a_stopped_supervisor_leaves_no_worker_process(
    sups: Supervisors,
) -> None:
    spec = ProcessPool.child_spec(
        target=probe, pool_size=2, spares=1, id="pp", shutdown=da.BRUTAL_KILL
    )
    assert spec.shutdown is da.BRUTAL_KILL
    sup = sups.start([spec])
    ref = ref_of(sup, "pp")
    pool = ProcessPool.from_ref(ref)
    wait_for(lambda: settled(pool, 2, spares=1), timeout=WAIT)
    server = FORK_SERVER.pid
    assert server is not None
    workers = wait_forkserver_workers(server)
    assert len(workers) == 3, workers  # two regulars and the spare
    processes = seen_pids(set(workers))

    with pool.lease(None, timeout=WAIT) as lease:
        lent = lease.client_state.os_pid
        sup.stop(timeout=WAIT)
        # Killed (no terminate_pool ran): the shutdown option reached the supervisor.
        assert da.wait_exit(ref, 10) is da.KILLED
        assert wait_all_gone(processes), f"workers outlived the brutally killed pool: {workers}"
    assert lent in workers


# --- 4. child_spec's restart and shutdown --------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "end", "restarted"),
    [
        (da.Restart.TEMPORARY, "kill", False),
        (da.Restart.TRANSIENT, "kill", True),
        (da.Restart.TRANSIENT, "stop", False),
    ],
    ids=["temporary_killed", "transient_killed", "transient_stopped"],
)
def test_process_pool_child_spec_restart_and_shutdown_reach_the_supervisor(
    sups: Supervisors, restart: da.Restart, end: str, restarted: bool
) -> None:
    spec = ProcessPool.child_spec(
        argv=FRAME_WORKER, pool_size=1, id="pp", restart=restart.value, shutdown=2.5
    )
    assert (spec.restart, spec.shutdown) == (restart, 2.5)
    sup = sups.start([spec])
    first = ref_of(sup, "pp")
    pool = ProcessPool.from_ref(first)
    old_pid = served_by(pool, 1)
    old = seen_pids({old_pid})

    if end == "kill":
        da.kill(first)
        assert da.wait_exit(first, 10) is da.KILLED
    else:
        pool.stop(timeout=WAIT)
        assert da.wait_exit(first, 10) == da.NORMAL
    assert wait_all_gone(old)

    if restarted:

        def running_again() -> Any:
            ref = sup.which_child("pp").ref
            return isinstance(ref, pykka.ActorRef) and ref != first and ref

        again = ProcessPool.from_ref(wait_for(running_again, timeout=10))
        assert served_by(again, 2) != old_pid
        return
    if restart is da.Restart.TEMPORARY:
        wait_for(lambda: sup.which_children() == [], timeout=10)  # its spec is deleted
        with pytest.raises(da.ChildNotFound):
            sup.get_childspec("pp")
    else:
        wait_for(lambda: [(c.id, c.ref) for c in sup.which_children()] == [("pp", None)], 10)
    sync(sup.actor_ref)
    assert sup.count_children().active == 0
    assert program_pids(FRAME_WORKER[1]) == set()  # no new pool started any worker


# --- 5. a named pool under a DynamicSupervisor ---------------------------------------------------


def test_a_named_process_pool_under_a_dynamic_supervisor_is_driven_by_name_across_restarts(
    sups: Supervisors,
) -> None:
    name = "guarantees.dynamic_pool"
    sup = sups.dynamic()
    first = sup.start_child(ProcessPool.child_spec(target=probe, pool_size=1, name=name))
    assert first is not None
    assert da.whereis(name) == first
    pool = ProcessPool.from_ref(first)
    wait_for(lambda: settled(pool, 1), timeout=WAIT)
    old_pid = pool.call("pid", timeout=WAIT)
    old = seen_pids({old_pid})

    da.kill(first)
    assert da.wait_exit(first, 10) is da.KILLED
    assert wait_all_gone(old), f"workers of the killed incarnation still run: {old}"

    second = wait_for(lambda: (r := da.whereis(name)) is not None and r != first and r, 10)
    assert [c.ref for c in sup.which_children()] == [second]
    again = ProcessPool.from_ref(second)
    assert again.name == pool.name  # every incarnation carries the name as its label
    new_pid = again.call("pid", timeout=WAIT)
    assert new_pid != old_pid
    current = da.whereis(name)
    assert current is not None
    assert current == second
    assert ProcessPool.from_ref(current).call(21, timeout=WAIT) == 42


# --- 6. DSPex's envelope through acall -----------------------------------------------------------


def test_acall_raises_remote_error_for_a_success_false_reply_and_the_worker_stays(
    process_pools: ProcessPools,
) -> None:
    pool = process_pools.start(argv=ENVELOPE_WORKER, pool_size=1)
    text = "the worker's own words"

    async def scenario() -> tuple[Any, da.RemoteError, Any]:
        plain = await pool.acall({"id": "r1", "mode": "plain"}, timeout=WAIT)
        with pytest.raises(da.RemoteError) as err:
            await pool.acall({"mode": "fail", "error": text}, timeout=WAIT)
        ok = await pool.acall({"id": "r2", "mode": "ok"}, timeout=WAIT)
        return plain, err.value, ok

    plain, error, ok = asyncio.run(asyncio.wait_for(scenario(), WAIT * 2))
    pid = plain["pid"]
    assert plain == {"id": "r1", "pid": pid, "result": "done"}  # no envelope: unchanged
    assert error.message == text
    assert ok == {"id": "r2", "pid": pid, "success": True, "result": "done"}  # the same worker
    sync(pool.actor_ref)
    [stats] = pool.worker_stats()
    assert (stats.successful_checkins, stats.error_checkins) == (2, 1)
    assert pool.status().workers_removed == 0
