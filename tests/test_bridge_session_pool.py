"""`SessionPool`: DSPex's session pool of bridge workers, with sessions kept by the pool.

- Protocol: what a worker receives (``{"id", "command", "args", "timestamp"}``, the session
  injected) and the init ping each worker answers before it serves.
- Sessions survive workers: every worker answers the same for a session (DSPex's
  ``list_programs`` flapping 0/1/0/1), a SIGKILL of every worker loses nothing, deletes, ended
  sessions, ``cleanup_session`` (programs and LM) and worker-wide resets reach every worker
  that held them; a ``shutdown`` closes its worker, and the sessions live on a new one.
- ``configure_lm`` replayed on a worker that lacks it.
- Affinity: ``prefer`` (another worker, the session rebuilt there), ``strict`` (wait),
  ``strict_fail_fast`` (`WorkerBusy`); a dead worker's sessions lose their affinity at once.
- Session TTL on a `FakeClock`.
- Errors, each with its effect on the worker (kept with an error checkin, or removed),
  including a worker found dead only by the write of a request, and an init ping answered
  with another id.
- Supervision: `child_spec`, `from_ref`, a killed pool restarted with its sessions.
- Recycling (`max_tasks`, `recycle_jitter`) and spares, sessions intact across both.
- Interop: the DSPex script's stand-in (``tests/programs/dspex_bridge_compat.py``) runs as a
  worker unchanged.
- The real DSPy worker through the pool, forked from a fork server with DSPy preloaded.

Most tests use the compat program (no DSPy: it starts in milliseconds, logs what it receives
and misbehaves on request); the real worker's tests share one module-scoped pool unless they
kill workers. White-box: `direct` (tests/support/sessions.py) talks to one worker past the
session store, to see what that worker really holds.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

import dspex_actors as da
from dspex_actors import telemetry
from dspex_actors._ports._forkserver import FORK_SERVER
from dspex_actors._ports._framing import DEFAULT_MAX_FRAME, JSON_CODEC
from dspex_actors.bridge import BridgeWorker, CommandError, CommandTimeout, SessionPool
from dspex_actors.bridge._protocol import request
from dspex_actors.bridge.worker import PRELOAD, handle_request
from dspex_actors.testing import FakeClock, start_test_pool, wait_for

from support.lifecycle import seen_pids, wait_all_gone
from support.logs import EventLog
from support.sessions import (
    COMPAT,
    SIGNATURE,
    WAIT,
    CompatLog,
    SessionPools,
    create_program,
    direct,
    held_programs,
    kill_workers,
    ready,
    unique,
    worker_pids,
)
from support.supervision import Supervisors
from support.threads import in_thread

pytestmark = pytest.mark.leak_check

QUESTION = {"question": "What is 2+2?"}
MOCK_WORKER = [sys.executable, "-m", "dspex_actors.bridge.worker", "--backend", "mock"]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def log(tmp_path: Path) -> CompatLog:
    return CompatLog(tmp_path / "compat.log")


@pytest.fixture(scope="module")
def real_pools() -> Iterator[SessionPools]:
    p = SessionPools()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def shared_real(real_pools: SessionPools) -> SessionPool:
    """Two real DSPy workers, shared by the module's tests that remove no worker."""
    return real_pools.start(pool_size=2)


@pytest.fixture
def real(shared_real: SessionPool) -> SessionPool:
    wait_for(lambda: ready(shared_real, 2), timeout=WAIT)
    return shared_real


@pytest.fixture(scope="module")
def compat_pools() -> Iterator[SessionPools]:
    p = SessionPools()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def one_compat(compat_pools: SessionPools) -> SessionPool:
    """One compat worker, shared by the module's tests that never reach a worker."""
    return compat_pools.compat(pool_size=1)


@pytest.fixture
def shared_compat(one_compat: SessionPool) -> SessionPool:
    wait_for(lambda: ready(one_compat, 1), timeout=WAIT)
    return one_compat


def other(pool: SessionPool, worker: int) -> int:
    """The id of the pool's other worker (a pool of two)."""
    ids = set(worker_pids(pool))
    assert len(ids) == 2, ids
    assert worker in ids, ids
    return (ids - {worker}).pop()


@contextlib.contextmanager
def holding(pool: SessionPool, worker: int) -> Iterator[da.Lease]:
    """Keep worker `worker` checked out from this thread for the block."""
    with pool.lease(None, timeout=WAIT, worker=worker, affinity="strict") as lease:
        assert lease.from_.worker_id == worker
        yield lease


def affinity_of(pool: SessionPool, session_id: str) -> int:
    worker = pool.status().sessions[session_id].worker_id
    assert worker is not None
    return worker


def execute(pool: SessionPool, session_id: str | None, program_id: str) -> dict[str, Any]:
    args = {"program_id": program_id, "inputs": QUESTION}
    if session_id is None:
        return pool.execute_anonymous("execute_program", args)
    return pool.execute_in_session(session_id, "execute_program", args)


def listed(pool: SessionPool, session_id: str | None) -> list[str]:
    """The ids `list_programs` gives in `session_id` (None: anonymously), checking its count."""
    if session_id is None:
        result = pool.execute_anonymous("list_programs")
    else:
        result = pool.execute_in_session(session_id, "list_programs")
    ids = [entry["id"] for entry in result["programs"]]
    assert result["total_count"] == len(ids)
    return ids


def sent(messages: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Messages as (command, args) pairs."""
    return [(m["command"], m["args"]) for m in messages]


@pytest.fixture
def port_exits() -> Iterator[EventLog]:
    """Every port exit while the test runs, as ``("exited", os_pid, status)`` events."""
    exits = EventLog()

    def record(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        exits.add("exited", metadata["os_pid"], metadata["status"])

    handler_id = ("test-bridge-port-exits", id(exits))
    telemetry.attach(handler_id, [telemetry.PORT_EXITED], record)
    try:
        yield exits
    finally:
        telemetry.detach(handler_id)


# --- 1. protocol -------------------------------------------------------------------------------


def test_a_session_request_is_id_command_args_and_an_iso_utc_timestamp_with_the_session_in_args(
    spools: SessionPools,
) -> None:
    pool = spools.compat(pool_size=1)
    sid = unique()
    received = pool.execute_in_session(sid, "echo", {"x": 1, "session_id": "not-mine"})["received"]
    assert set(received) == {"id", "command", "args", "timestamp"}
    assert received["command"] == "echo"
    assert received["args"] == {"x": 1, "session_id": sid}  # injected, over the caller's
    assert isinstance(received["id"], int)
    assert received["id"] > 0
    stamp = datetime.datetime.fromisoformat(received["timestamp"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    later = pool.execute_in_session(sid, "echo")["received"]
    assert later["id"] > received["id"]  # unique, rising


def test_an_anonymous_request_carries_session_id_anonymous(spools: SessionPools) -> None:
    pool = spools.compat(pool_size=1)
    received = pool.execute_anonymous("echo", {"x": [1, "two"]})["received"]
    assert received["args"] == {"x": [1, "two"], "session_id": "anonymous"}
    assert received["command"] == "echo"


def test_each_worker_answers_an_init_ping_with_id_0_and_its_own_name_before_it_serves(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=2, log=log)
    pids = set(worker_pids(pool).values())
    entries = log.entries()
    assert {e["pid"] for e in entries} == pids
    names = set()
    for pid in pids:
        first = next(e for e in entries if e["pid"] == pid)
        name = first["worker_id"]
        # The pool appended exactly DSPex's arguments to the program's argv.
        assert first["argv"] == ["--mode", "pool-worker", "--worker-id", name]
        message = first["message"]
        assert message["id"] == 0
        assert message["command"] == "ping"
        assert message["args"] == {"initialization": True, "worker_id": name}
        assert datetime.datetime.fromisoformat(message["timestamp"]).utcoffset() is not None
        names.add(name)
    assert len(names) == 2
    assert all(re.fullmatch(r"worker_\d+_\d+", name) for name in names)


# --- 2. sessions survive workers ---------------------------------------------------------------


def test_list_programs_in_a_session_counts_its_one_program_on_every_worker(
    real: SessionPool,
) -> None:
    # DSPex's reported bug: total_count went [0, 1, 0, 1] as the calls alternated workers.
    sid = unique()
    create_program(real, sid, "p")
    counts, served = [], []
    for i in range(6):
        session_worker = affinity_of(real, sid)
        if i % 2:  # every other call, on the other worker
            with holding(real, session_worker):
                counts.append(real.execute_in_session(sid, "list_programs")["total_count"])
        else:
            counts.append(real.execute_in_session(sid, "list_programs")["total_count"])
        served.append(affinity_of(real, sid))
    assert counts == [1] * 6
    assert len(set(served)) == 2  # both workers answered


def test_sessions_and_anonymous_programs_survive_sigkill_of_every_worker(
    spools: SessionPools,
) -> None:
    pool = spools.start(pool_size=2)
    sid = unique()
    create_program(pool, sid, "p")
    create_program(pool, None, "g")
    before = execute(pool, sid, "p")["outputs"]
    assert set(before) == {"answer"}

    kill_workers(pool)
    assert execute(pool, sid, "p")["outputs"] == before  # the offline LM is deterministic
    assert listed(pool, sid) == ["p"]
    assert set(execute(pool, None, "g")["outputs"]) == {"answer"}
    assert listed(pool, None) == ["g"]
    for _ in range(3):
        assert listed(pool, sid) == ["p"]


def test_a_deleted_program_is_gone_from_each_worker_that_had_it_at_its_next_use(
    spools: SessionPools,
) -> None:
    pool = spools.compat(pool_size=2)
    sid = unique()
    create_program(pool, sid, "p")
    first = affinity_of(pool, sid)
    second = other(pool, first)
    with holding(pool, first):
        assert listed(pool, sid) == ["p"]  # rebuilt on the second worker
    assert held_programs(pool, first) == held_programs(pool, second) == {sid: ["p"]}

    pool.execute_in_session(sid, "delete_program", {"program_id": "p"})  # on the second
    assert affinity_of(pool, sid) == second
    assert held_programs(pool, second) == {}
    assert held_programs(pool, first) == {sid: ["p"]}  # not told yet
    with holding(pool, second):
        assert listed(pool, sid) == []  # served by the first, which deletes it first
    assert affinity_of(pool, sid) == first
    assert held_programs(pool, first) == {}
    assert pool.status().sessions[sid].programs == ()


def test_an_ended_session_is_forgotten_and_cleaned_up_on_its_worker_at_the_next_use(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=1, log=log)
    sid, next_sid = unique(), unique()
    create_program(pool, sid, "p")
    assert pool.end_session(sid) is True
    assert pool.end_session(sid) is False  # unknown now
    assert sid not in pool.status().sessions
    assert held_programs(pool) == {sid: ["p"]}  # the worker is told at its next use

    mark = log.mark()
    assert listed(pool, next_sid) == []
    assert sent(log.since(mark)) == [
        ("cleanup_session", {"session_id": sid}),
        ("list_programs", {"session_id": next_sid}),
    ]
    assert held_programs(pool) == {}
    assert listed(pool, sid) == []  # the id starts afresh


def test_end_session_leaves_the_anonymous_sessions_global_programs_alone(
    spools: SessionPools,
) -> None:
    pool = spools.compat(pool_size=1)
    create_program(pool, None, "g")
    with contextlib.suppress(da.InvalidOption):  # refusing it is as good as a no-op
        assert pool.end_session("anonymous") is False
    assert "anonymous" in pool.status().sessions
    assert listed(pool, None) == ["g"]


def test_cleanup_session_clears_the_sessions_programs_in_the_store_and_on_every_worker(
    spools: SessionPools,
) -> None:
    pool = spools.compat(pool_size=2)
    sid = unique()
    create_program(pool, sid, "p")
    first = affinity_of(pool, sid)
    with holding(pool, first):
        listed(pool, sid)  # the second worker holds it too
    second = affinity_of(pool, sid)
    assert second != first

    result = pool.execute_in_session(sid, "cleanup_session")
    assert result["status"] == "cleaned"
    assert pool.status().sessions[sid].programs == ()
    with holding(pool, second):
        assert listed(pool, sid) == []  # the first worker dropped it first
    assert affinity_of(pool, sid) == first
    assert held_programs(pool, first) == {}


@pytest.mark.parametrize("command", ["cleanup", "reset_state"])
def test_a_worker_wide_reset_is_repaired_at_the_next_use_of_that_worker(
    spools: SessionPools, log: CompatLog, command: str
) -> None:
    pool = spools.compat(pool_size=1, log=log)
    sid = unique()
    create_program(pool, sid, "p")
    create_program(pool, None, "g")
    pool.execute_anonymous(command)
    assert held_programs(pool) == {}  # the worker holds nothing now

    mark = log.mark()
    assert listed(pool, sid) == ["p"]
    assert [m["command"] for m in log.since(mark)] == ["create_program", "list_programs"]
    assert listed(pool, None) == ["g"]
    assert held_programs(pool) == {sid: ["p"], "anonymous": ["g"]}


def test_cleanup_session_drops_the_sessions_lm_on_every_worker_and_never_sends_it_again(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=2, log=log)
    sid = unique()
    pool.execute_in_session(sid, "configure_lm", {"model": "session-model"})
    create_program(pool, sid, "p")
    first = affinity_of(pool, sid)
    second = other(pool, first)
    pids = worker_pids(pool)
    with holding(pool, first):
        assert execute(pool, sid, "p")["lm"] == "session-model"  # replayed on the second
    assert pool.execute_in_session(sid, "cleanup_session")["status"] == "cleaned"  # second

    create_program(pool, sid, "q")
    mark = log.mark()
    assert execute(pool, sid, "q")["lm"] is None  # the second got no configure_lm back
    with holding(pool, second):
        assert execute(pool, sid, "q")["lm"] is None  # the first dropped it first
    run_q = {"program_id": "q", "inputs": QUESTION, "session_id": sid}
    assert [
        (m["pid"], m["message"]["command"], m["message"]["args"]) for m in log.entries()[mark:]
    ] == [
        (pids[second], "execute_program", run_q),
        (pids[first], "cleanup_session", {"session_id": sid}),
        (pids[first], "create_program", {"id": "q", "signature": SIGNATURE, "session_id": sid}),
        (pids[first], "execute_program", run_q),
    ]


@pytest.mark.parametrize("kind", ["compat", "mock", "dspy"])
def test_shutdown_through_the_pool_closes_that_worker_and_the_sessions_live_on_a_new_one(
    spools: SessionPools, port_exits: EventLog, kind: str
) -> None:
    # compat: DSPex's script, which only acknowledges; mock: the worker program, which exits
    # after its reply; dspy: the default target worker, which cannot end its own process.
    if kind == "compat":
        pool = spools.compat(pool_size=1)
    else:
        pool = spools.start(pool_size=1, worker_argv=MOCK_WORKER if kind == "mock" else None)
    sid = unique()
    create_program(pool, sid, "p")
    [old] = worker_pids(pool).values()
    removed = pool.status().pool.workers_removed

    result = pool.execute_in_session(sid, "shutdown")
    assert result["status"] == "shutting_down"
    status = pool.status()
    assert status.pool.workers_removed == removed + 1  # at its checkin: never idle again
    assert status.sessions[sid].worker_id is None
    assert status.sessions[sid].programs == ("p",)  # the pool's sessions outlive the worker
    wait_for(lambda: ("exited", old, 0) in port_exits.events(), timeout=WAIT)

    for _ in range(3):  # no call meets the dead worker
        assert listed(pool, sid) == ["p"]
    assert execute(pool, sid, "p")["program_id"] == "p"
    [new] = worker_pids(pool).values()
    assert new != old
    assert pool.status().pool.workers_removed == removed + 1
    [stats] = pool.worker_stats()
    assert stats.error_checkins == 0


@pytest.mark.parametrize("command", ["shutdown", "cleanup", "reset_state", "cleanup_session"])
def test_a_command_that_undoes_the_session_is_sent_without_rebuilding_it_first(
    spools: SessionPools, log: CompatLog, command: str
) -> None:
    pool = spools.compat(pool_size=1, log=log)
    sid = unique()
    create_program(pool, sid, "p")
    [old] = worker_pids(pool).values()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: pool.status().pool.workers_removed == 1 and ready(pool, 1), timeout=WAIT)
    [new] = worker_pids(pool).values()

    pool.execute_in_session(sid, command)
    assert log.commands(new) == ["ping", command]  # its init ping, then the command alone
    if command != "shutdown":
        assert pool.execute_in_session(sid, "ping")["pid"] == new  # the session goes on


# --- 3. configure_lm ---------------------------------------------------------------------------


def test_a_sessions_configured_lm_is_replayed_on_a_new_worker_before_its_programs_run(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=1, log=log)
    sid = unique()
    pool.execute_in_session(sid, "configure_lm", {"model": "first-model"})
    pool.execute_in_session(sid, "configure_lm", {"model": "session-model", "temperature": 0.1})
    create_program(pool, sid, "p")
    assert execute(pool, sid, "p")["lm"] == "session-model"

    [new_pid] = kill_workers(pool).values()
    mark = log.mark()
    assert execute(pool, sid, "p")["lm"] == "session-model"
    assert sent(log.since(mark, new_pid)) == [
        ("configure_lm", {"model": "session-model", "temperature": 0.1, "session_id": sid}),
        ("create_program", {"id": "p", "signature": SIGNATURE, "session_id": sid}),
        ("execute_program", {"program_id": "p", "inputs": QUESTION, "session_id": sid}),
    ]
    mark = log.mark()
    execute(pool, sid, "p")
    assert [m["command"] for m in log.since(mark)] == ["execute_program"]  # once is enough


def test_an_lm_configured_outside_any_session_applies_to_session_programs_on_every_worker(
    spools: SessionPools,
) -> None:
    pool = spools.compat(pool_size=2)
    pool.execute_anonymous("configure_lm", {"model": "global-model"})
    sid = unique()
    create_program(pool, sid, "p")
    lms = []
    for _ in range(2):  # once on each worker
        with holding(pool, affinity_of(pool, sid)):
            lms.append(execute(pool, sid, "p")["lm"])
    assert lms == ["global-model", "global-model"]


# --- 4. affinity -------------------------------------------------------------------------------


def test_a_sessions_commands_stay_on_its_worker_while_that_worker_is_idle(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=2, log=log)
    pids = worker_pids(pool)
    sid = unique()
    create_program(pool, sid, "p")
    worker = affinity_of(pool, sid)
    for _ in range(5):
        execute(pool, sid, "p")
    status = pool.status()
    assert status.affinity == "prefer"
    assert (status.affinity_hits, status.affinity_misses) == (5, 0)
    assert status.sessions[sid].worker_id == worker
    assert status.sessions[sid].operations == 6
    served = {e["pid"] for e in log.entries() if e["message"]["args"].get("session_id") == sid}
    assert served == {pids[worker]}


def test_prefer_serves_a_session_on_another_worker_when_its_own_is_held_and_rebuilds_it_there(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=2, log=log)
    pids = worker_pids(pool)
    sid = unique()
    create_program(pool, sid, "p")
    first = affinity_of(pool, sid)
    second = other(pool, first)
    mark = log.mark()
    with holding(pool, first):
        result = execute(pool, sid, "p")
    assert set(result["outputs"]) == {"answer"}
    assert [m["command"] for m in log.since(mark, pids[second])] == [
        "create_program",
        "execute_program",
    ]
    assert log.since(mark, pids[first]) == []
    status = pool.status()
    assert (status.affinity_hits, status.affinity_misses) == (0, 1)
    assert status.sessions[sid].worker_id == second  # its affinity moved


def test_strict_waits_for_the_sessions_worker_and_serves_once_it_is_released(
    spools: SessionPools,
) -> None:
    pool = spools.compat(pool_size=2, affinity="strict", checkout_timeout=WAIT)
    sid = unique()
    create_program(pool, sid, "p")
    worker = affinity_of(pool, sid)
    with holding(pool, worker):
        future = in_thread(lambda: listed(pool, sid))
        wait_for(lambda: pool.status().pool.queued == 1, timeout=WAIT)
        assert pool.status().pool.idle == 1  # the other worker is free, yet it waits
        assert not future.done()
    assert future.result(timeout=WAIT) == ["p"]
    status = pool.status()
    assert status.sessions[sid].worker_id == worker
    assert (status.affinity_hits, status.affinity_misses) == (1, 0)


def test_strict_fail_fast_raises_worker_busy_when_the_sessions_worker_is_held(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=2, affinity="strict_fail_fast", log=log)
    sid = unique()
    create_program(pool, sid, "p")
    worker = affinity_of(pool, sid)
    mark = log.mark()
    with holding(pool, worker):
        with pytest.raises(da.WorkerBusy) as info:
            execute(pool, sid, "p")
        assert info.value.worker_id == worker
        assert pool.status().pool.idle == 1
    assert log.since(mark) == []  # nothing was sent anywhere
    assert execute(pool, sid, "p")["program_id"] == "p"
    assert pool.status().sessions[sid].worker_id == worker


def test_a_session_whose_worker_died_is_served_by_another_worker_even_with_strict_affinity(
    spools: SessionPools,
) -> None:
    # checkout_timeout bounds the failure: a strict wait for the dead worker would time out.
    pool = spools.compat(pool_size=2, affinity="strict", checkout_timeout=5.0)
    sid, kept = unique(), unique()
    create_program(pool, sid, "p")
    worker = affinity_of(pool, sid)
    survivor = other(pool, worker)
    with holding(pool, worker):
        create_program(pool, kept, "k")  # on the other worker
    assert affinity_of(pool, kept) == survivor
    pids = worker_pids(pool)
    kill_workers(pool, {worker: pids[worker]})

    # The affinity went with the worker, before any command of the session.
    status = pool.status()
    assert status.sessions[sid].worker_id is None
    assert status.sessions[kept].worker_id == survivor
    counts = (status.affinity_hits, status.affinity_misses)
    assert execute(pool, sid, "p")["program_id"] == "p"
    status = pool.status()
    # Nothing alive to prefer: neither a hit nor a miss.
    assert (status.affinity_hits, status.affinity_misses) == counts
    new_worker = affinity_of(pool, sid)
    assert new_worker != worker
    assert listed(pool, sid) == ["p"]
    assert (pool.status().affinity_hits, pool.status().affinity_misses) == (counts[0] + 1, 0)


# --- 5. session TTL ----------------------------------------------------------------------------


def test_a_session_idle_past_its_ttl_expires_and_its_worker_drops_it_at_its_next_use(
    spools: SessionPools, log: CompatLog
) -> None:
    clock = FakeClock(start=100.0)
    pool = spools.compat(pool_size=1, log=log, clock=clock, session_ttl=10)
    sid = unique()
    create_program(pool, sid, "p")
    clock.advance(9)
    assert sid in pool.status().sessions
    listed(pool, sid)  # activity: the TTL starts again
    clock.advance(9)
    assert sid in pool.status().sessions
    clock.advance(2)
    status = pool.status()
    assert sid not in status.sessions
    assert status.uptime == 20.0
    assert held_programs(pool) == {sid: ["p"]}  # the worker is told at its next use

    mark = log.mark()
    pool.execute_anonymous("ping")
    assert sent(log.since(mark))[0] == ("cleanup_session", {"session_id": sid})
    assert held_programs(pool) == {}
    assert listed(pool, sid) == []


def test_the_anonymous_session_never_expires(spools: SessionPools) -> None:
    clock = FakeClock(start=100.0)
    pool = spools.compat(pool_size=1, clock=clock, session_ttl=10)
    create_program(pool, None, "g")
    clock.advance(10_000)
    assert "anonymous" in pool.status().sessions
    assert pool.status().active_sessions == 0
    assert listed(pool, None) == ["g"]


# --- 6. errors ---------------------------------------------------------------------------------


def test_an_error_reply_raises_command_error_with_the_workers_text_and_keeps_the_worker(
    spools: SessionPools,
) -> None:
    pool = spools.compat(pool_size=1)
    [(worker, pid)] = worker_pids(pool).items()
    sid = unique()
    with pytest.raises(CommandError) as info:
        pool.execute_in_session(sid, "no_such_command", {"a": 1})
    error = info.value
    assert error.message == "Unknown command: no_such_command"
    assert str(error) == error.message
    assert error.command == "no_such_command"
    assert error.session_id == sid
    with pytest.raises(CommandError) as anonymous:
        pool.execute_anonymous("no_such_command")
    assert anonymous.value.session_id is None

    assert pool.status().pool.workers_removed == 0
    [stats] = pool.worker_stats()
    assert stats.worker_id == worker
    assert stats.error_checkins == 2
    assert worker_pids(pool) == {worker: pid}


def test_a_worker_refusing_to_rebuild_a_session_fails_the_command_and_is_kept(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=2, log=log)
    pids = worker_pids(pool)
    sid = unique()
    first = next(iter(pids))
    second = other(pool, first)
    with holding(pool, second):  # created on the first worker, refused by the second
        create_program(pool, sid, "p", _fail_on_pids=[pids[second]])
    assert affinity_of(pool, sid) == first
    mark = log.mark()
    with holding(pool, first), pytest.raises(CommandError) as info:
        listed(pool, sid)
    assert info.value.command == "create_program"
    assert info.value.message == f"create_program refused by process {pids[second]}"
    assert [m["command"] for m in log.since(mark)] == ["create_program"]  # no list_programs
    assert pool.status().pool.workers_removed == 0
    assert {s.worker_id: s.error_checkins for s in pool.worker_stats()} == {first: 0, second: 1}
    assert listed(pool, sid) == ["p"]  # its own worker still serves it


@pytest.mark.parametrize(
    ("misbehaviour", "error"),
    [
        ("mismatch", da.ResponseMismatch),
        ("garbage", da.ProtocolError),
        ("no_success", da.ProtocolError),
        ("non_mapping", da.ProtocolError),
        ("die", da.WorkerCrashed),
    ],
)
def test_a_broken_reply_or_a_dying_worker_raises_its_error_and_the_worker_is_replaced(
    spools: SessionPools, misbehaviour: str, error: type[Exception]
) -> None:
    pool = spools.compat(pool_size=1)
    sid = unique()
    create_program(pool, sid, "p")
    [old] = worker_pids(pool).values()
    with pytest.raises(error) as info:
        pool.execute_in_session(sid, "echo", {"_misbehave": misbehaviour})
    if error is da.ProtocolError:
        assert not isinstance(info.value, da.ResponseMismatch)
    wait_for(lambda: pool.status().pool.workers_removed == 1, timeout=WAIT)
    wait_for(lambda: ready(pool, 1), timeout=WAIT)
    [new] = worker_pids(pool).values()
    assert new != old
    assert listed(pool, sid) == ["p"]  # the session lives on
    [stats] = pool.worker_stats()
    assert stats.error_checkins == 0


@pytest.mark.parametrize(
    ("pool_options", "call_options"),
    [({}, {"timeout": 0.2}), ({"op_timeout": 0.2}, {})],
    ids=["the call's timeout", "the pool's op_timeout"],
)
def test_no_reply_in_time_raises_command_timeout_and_the_late_reply_reaches_nobody(
    spools: SessionPools, pool_options: dict[str, Any], call_options: dict[str, Any]
) -> None:
    pool = spools.compat(pool_size=1, **pool_options)
    [old] = worker_pids(pool).values()
    with pytest.raises(CommandTimeout) as info:
        pool.execute_anonymous("echo", {"_misbehave": "hang", "n": 1}, **call_options)
    assert isinstance(info.value, da.CallTimeout)
    wait_for(lambda: pool.status().pool.workers_removed == 1, timeout=WAIT)
    wait_for(lambda: ready(pool, 1), timeout=WAIT)
    # A kept worker would answer the next request with the late reply first.
    result = pool.execute_anonymous("echo", {"n": 2}, timeout=WAIT)
    assert result["received"]["args"]["n"] == 2
    assert result["pid"] != old


def test_a_worker_dead_before_the_request_is_written_is_removed_and_another_worker_answers(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=2, log=log)
    sid = unique()
    create_program(pool, sid, "p")
    victim = affinity_of(pool, sid)
    survivor = other(pool, victim)
    pids = worker_pids(pool)
    # The victim's exit is held unseen (its PORT_EXITED handler runs before anyone can see
    # the exit): the pool still lends it, and the request's write is what finds it dead.
    reaped = EventLog()
    release = threading.Event()

    def hold(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
        if metadata["os_pid"] == pids[victim]:
            reaped.add("reaped", metadata["status"])
            release.wait(WAIT)

    handler_id = ("test-bridge-hold-exit", id(release))
    telemetry.attach(handler_id, [telemetry.PORT_EXITED], hold)
    try:
        removed = pool.status().pool.workers_removed
        os.kill(pids[victim], signal.SIGKILL)
        assert reaped.wait_len(1, WAIT)
        assert reaped.events() == [("reaped", -signal.SIGKILL)]
        mark = log.mark()
        result = execute(pool, sid, "p")  # asks for the victim first (the session's worker)
        assert result["program_id"] == "p"
        status = pool.status()
        assert status.pool.workers_removed == removed + 1  # removed by the failed send
        assert status.sessions[sid].worker_id == survivor
        # The survivor rebuilt the session and answered; the victim received nothing.
        assert [(m["pid"], m["message"]["command"]) for m in log.entries()[mark:]] == [
            (pids[survivor], "create_program"),
            (pids[survivor], "execute_program"),
        ]
        assert not release.is_set()  # all of it while the pool could not know of the death
    finally:
        release.set()
        telemetry.detach(handler_id)
    wait_for(lambda: ready(pool, 2), timeout=WAIT)
    assert pool.status().pool.workers_removed == removed + 1  # its exit, seen late, is no news
    assert listed(pool, sid) == ["p"]


def test_an_init_ping_reply_with_another_id_is_a_response_mismatch() -> None:
    # A target worker's reply comes in the port's envelope, whose id the port checks; the
    # DSPex id inside it is the handshake's to check.
    def wrong_id(request: Any) -> dict[str, Any]:
        return {"id": 99, "success": True, "result": {"status": "ok"}, "timestamp": 0.0}

    port = da.Port.spawn(wrong_id)
    try:
        pool_state = SimpleNamespace(spec=SimpleNamespace(target=wrong_id, init_timeout=WAIT))
        with pytest.raises(da.ResponseMismatch) as info:
            BridgeWorker().handshake(port, pool_state, "worker_1")
        assert (info.value.expected, info.value.got) == (0, 99)
    finally:
        port.close(timeout=WAIT)


def test_a_checkout_that_finds_every_worker_held_raises_pool_timeout(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=1, checkout_timeout=0.05, log=log)
    sid = unique()
    mark = log.mark()
    with pool.lease(None, timeout=WAIT), pytest.raises(da.PoolTimeout):
        pool.execute_in_session(sid, "ping")
    assert log.since(mark) == []
    assert pool.status().pool.workers_removed == 0
    assert pool.execute_in_session(sid, "ping")["status"] == "ok"


def test_a_stopped_pool_raises_noproc(spools: SessionPools) -> None:
    pool = spools.compat(pool_size=1)
    pool.stop()
    with pytest.raises(da.NoProc):
        pool.execute_in_session(unique(), "ping")
    with pytest.raises(da.NoProc):
        pool.execute_anonymous("ping")
    with pytest.raises(da.NoProc):
        pool.status()
    with pytest.raises(da.NoProc):  # as a stopped Bridge (it answered False or True)
        pool.end_session(unique())


@pytest.mark.parametrize("value", [{1, 2}, float("nan")], ids=["a set", "NaN"])
def test_an_unencodable_request_is_refused_before_any_worker_is_used(
    shared_compat: SessionPool, value: Any
) -> None:
    sid = unique()
    before = shared_compat.status().pool.checkouts
    with pytest.raises(da.ProtocolError) as info:
        shared_compat.execute_in_session(sid, "echo", {"x": value})
    assert not isinstance(info.value, da.ResponseMismatch)
    with pytest.raises(da.ProtocolError):
        shared_compat.execute_anonymous("echo", {"x": value})
    status = shared_compat.status()
    assert status.pool.checkouts == before
    assert sid not in status.sessions


def test_a_request_that_fits_max_frame_only_without_its_id_is_refused_before_any_worker(
    spools: SessionPools,
) -> None:
    """The body fits, the frame with the request id a target worker's envelope adds would
    not: refused up front, as any too-large request (it was refused only at its send, and
    cost a healthy worker)."""
    pool = spools.start(pool_size=1)
    sid = unique()
    base = len(JSON_CODEC.encode(request("ping", {"x": "", "session_id": sid})))
    before = pool.status().pool
    with pytest.raises(da.ProtocolError, match="exceeds max_frame"):
        pool.execute_in_session(sid, "ping", {"x": "a" * (DEFAULT_MAX_FRAME - base)})
    after = pool.status().pool
    assert (after.checkouts, after.workers_removed) == (before.checkouts, before.workers_removed)


NOT_A_STRING: Any = 5
NOT_A_MAPPING: Any = [("a", 1)]
NOT_A_NUMBER: Any = "1"

BAD_CALLS: dict[str, Callable[[SessionPool], Any]] = {
    "empty session_id": lambda p: p.execute_in_session("", "ping"),
    "session_id anonymous": lambda p: p.execute_in_session("anonymous", "ping"),
    "non-str session_id": lambda p: p.execute_in_session(NOT_A_STRING, "ping"),
    "non-str command": lambda p: p.execute_anonymous(NOT_A_STRING),
    "empty command": lambda p: p.execute_in_session("s", ""),
    "args not a mapping": lambda p: p.execute_anonymous("ping", NOT_A_STRING),
    "args a list of pairs": lambda p: p.execute_in_session("s", "ping", NOT_A_MAPPING),
    "negative timeout": lambda p: p.execute_anonymous("ping", timeout=-1),
    "NaN timeout": lambda p: p.execute_in_session("s", "ping", timeout=float("nan")),
    "non-number timeout": lambda p: p.execute_anonymous("ping", timeout=NOT_A_NUMBER),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_arguments_raise_invalid_option_before_any_worker_is_used(
    shared_compat: SessionPool, call: Callable[[SessionPool], Any]
) -> None:
    before = shared_compat.status()
    with pytest.raises(da.InvalidOption):
        call(shared_compat)
    after = shared_compat.status()
    assert after.pool.checkouts == before.pool.checkouts
    assert after.sessions.keys() == before.sessions.keys()


# --- 7. supervision ----------------------------------------------------------------------------


def test_a_supervised_session_pool_killed_is_restarted_and_keeps_its_sessions(
    spools: SessionPools, sups: Supervisors
) -> None:
    name = unique("sp_test")
    spec = SessionPool.child_spec(pool_size=1, worker_argv=COMPAT, name=name)
    assert (spec.id, spec.shutdown, spec.name) == ("SessionPool", 10.0, name)
    sups.start([spec])
    first = da.whereis(name)
    assert first is not None
    pool = SessionPool.from_ref(first)
    wait_for(lambda: ready(pool, 1), timeout=WAIT)
    spools.note()
    sid = unique()
    create_program(pool, sid, "p")
    create_program(pool, None, "g")
    old = seen_pids(set(worker_pids(pool).values()))

    da.kill(first)
    assert da.wait_exit(first, 10) is da.KILLED
    assert wait_all_gone(old), "the killed pool's worker still runs"
    second = wait_for(lambda: (r := da.whereis(name)) is not None and r != first and r, 10)
    again = SessionPool.from_ref(second)
    wait_for(lambda: ready(again, 1), timeout=WAIT)
    spools.note()
    assert again.status().sessions[sid].programs == ("p",)
    assert listed(again, sid) == ["p"]
    assert execute(again, sid, "p")["program_id"] == "p"
    assert listed(again, None) == ["g"]


def test_after_a_restart_a_sessions_first_command_on_a_new_worker_is_no_affinity_hit(
    spools: SessionPools, sups: Supervisors
) -> None:
    # Pool worker ids start again at 1 in each incarnation: the new worker 1 is not the
    # process that served the session, and its state had to be rebuilt.
    name = unique("sp_test")
    sups.start([SessionPool.child_spec(pool_size=1, worker_argv=COMPAT, name=name)])
    first = da.whereis(name)
    assert first is not None
    pool = SessionPool.from_ref(first)
    wait_for(lambda: ready(pool, 1), timeout=WAIT)
    spools.note()
    sid = unique()
    create_program(pool, sid, "p")
    assert listed(pool, sid) == ["p"]
    [(old_worker, old_pid)] = worker_pids(pool).items()
    assert pool.status().affinity_hits == 1
    da.kill(first)
    assert da.wait_exit(first, 10) is da.KILLED
    second = wait_for(lambda: (r := da.whereis(name)) is not None and r != first and r, 10)
    again = SessionPool.from_ref(second)
    wait_for(lambda: ready(again, 1), timeout=WAIT)
    spools.note()
    [(new_worker, new_pid)] = worker_pids(again).items()
    assert (new_worker, new_pid != old_pid) == (old_worker, True)  # same id, another process
    assert listed(again, sid) == ["p"]  # rebuilt on the new process
    status = again.status()
    assert status.affinity_hits == 1
    assert status.sessions[sid].worker_id == new_worker
    assert listed(again, sid) == ["p"]
    assert again.status().affinity_hits == 2  # from now on, its own worker


def test_a_session_pool_is_registered_as_session_pool_by_default(spools: SessionPools) -> None:
    pool = SessionPool.start(pool_size=1, worker_argv=COMPAT)
    spools.pools.append(pool)
    assert da.whereis("session_pool") == pool.actor_ref
    assert pool.name == "session_pool"
    pool.stop()
    assert da.whereis("session_pool") is None


def test_from_ref_refuses_a_pool_that_is_not_a_session_pool() -> None:
    process_pool = da.ProcessPool.start(argv=COMPAT, pool_size=1)
    try:
        with pytest.raises(TypeError):
            SessionPool.from_ref(process_pool.actor_ref)
    finally:
        process_pool.stop(timeout=WAIT)
    with start_test_pool() as pool, pytest.raises(TypeError):
        SessionPool.from_ref(pool.actor_ref)


BAD_SPECS: dict[str, dict[str, Any]] = {
    "affinity": {"affinity": "sometimes"},
    "session_ttl": {"session_ttl": 0},
    "pool_size": {"pool_size": 0},
    "checkout_timeout": {"checkout_timeout": -1},
    "op_timeout": {"op_timeout": "soon"},
    "store": {"store": {}},
    "recycle_jitter": {"recycle_jitter": 1},
    "unknown option": {"pool_sise": 2},
    "worker_argv as one string": {"worker_argv": "python -m dspex_actors.bridge.worker"},
    "worker_argv empty": {"worker_argv": []},
    "worker_argv not strings": {"worker_argv": ["python", 3]},
    "env value not a string": {"env": {"X": 1}},
    "env name with =": {"env": {"A=B": "1"}},
    "env not a mapping": {"env": ["X=1"]},
}


@pytest.mark.parametrize("options", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_a_bad_child_spec_option_raises_invalid_option_at_spec_time(
    options: dict[str, Any],
) -> None:
    with pytest.raises(da.InvalidOption):
        SessionPool.child_spec(**{"worker_argv": COMPAT, **options})


BAD_PROGRAMS = {k: v for k, v in BAD_SPECS.items() if "worker_argv" in v or "env" in v}


@pytest.mark.parametrize("options", BAD_PROGRAMS.values(), ids=BAD_PROGRAMS.keys())
def test_a_bad_program_option_raises_invalid_option_before_any_worker_starts(
    options: dict[str, Any],
) -> None:
    """Before, a `worker_argv` given as one string was split into characters, and a bad
    `env` accepted: the pool then failed every worker start, and every command with
    `PoolTimeout`."""
    with pytest.raises(da.InvalidOption) as err:
        SessionPool.start(**{"worker_argv": COMPAT, "name": None, **options})
    assert err.value.option in options


def test_a_child_spec_takes_keyword_options_only() -> None:
    with pytest.raises(da.InvalidOption):
        SessionPool.child_spec(2)


def test_recycle_jitter_reaches_the_workers_spec_from_options_and_child_spec() -> None:
    spec, _ = SessionPool.options(worker_argv=COMPAT, max_tasks=5, recycle_jitter=0)
    assert (spec.max_tasks, spec.recycle_jitter) == (5, 0)
    assert SessionPool.options(worker_argv=COMPAT)[0].recycle_jitter == 0.1  # the default
    child = SessionPool.child_spec(worker_argv=COMPAT, recycle_jitter=0.3)
    assert child.kwargs["recycle_jitter"] == 0.3


# --- 8. recycling and spares -------------------------------------------------------------------


def test_a_worker_recycled_after_max_tasks_hands_its_sessions_over_intact(
    spools: SessionPools, log: CompatLog
) -> None:
    # No jitter: the worker serves exactly max_tasks commands.
    pool = spools.compat(pool_size=1, max_tasks=3, recycle_jitter=0, checkout_timeout=WAIT, log=log)
    sid = unique()
    create_program(pool, sid, "p")  # 1
    first = pool.execute_in_session(sid, "ping")["pid"]  # 2
    before = execute(pool, sid, "p")["outputs"]  # 3: recycled at this checkin
    wait_for(lambda: pool.status().pool.workers_removed == 1 and ready(pool, 1), timeout=WAIT)
    status = pool.status()
    assert (status.pool.workers_recycled, dict(status.pool.recycle_reasons)) == (
        1,
        {"max_tasks": 1},
    )
    assert status.sessions[sid].worker_id is None  # its worker left

    mark = log.mark()
    assert execute(pool, sid, "p")["outputs"] == before
    second = pool.execute_in_session(sid, "ping")["pid"]
    assert second != first
    assert [m["command"] for m in log.since(mark, second)] == [
        "create_program",  # the session rebuilt on the new worker first
        "execute_program",
        "ping",
    ]
    assert listed(pool, sid) == ["p"]  # its third: recycled in turn
    assert pool.status().affinity_misses == 0


def test_max_age_is_read_on_the_session_pools_clock(spools: SessionPools, log: CompatLog) -> None:
    """The clock that expires sessions and drives idle pings also ages workers."""
    clock = FakeClock()
    pool = spools.compat(
        pool_size=1, max_age=10.0, recycle_jitter=0, worker_idle_timeout=60, clock=clock, log=log
    )
    sid = unique()
    create_program(pool, sid, "p")
    first = pool.execute_in_session(sid, "ping")["pid"]
    clock.advance(10.0)
    assert pool.execute_in_session(sid, "ping")["pid"] == first  # served, then retired
    wait_for(lambda: pool.status().pool.workers_removed == 1 and ready(pool, 1), timeout=WAIT)
    assert dict(pool.status().pool.recycle_reasons) == {"max_age": 1}
    assert pool.execute_in_session(sid, "ping")["pid"] != first
    assert listed(pool, sid) == ["p"]  # rebuilt on the replacement


def test_a_spare_takes_the_place_of_a_sigkilled_worker_and_serves_its_sessions(
    spools: SessionPools, log: CompatLog
) -> None:
    pool = spools.compat(pool_size=1, spares=1, log=log)
    wait_for(lambda: pool.status().pool.spares == 1, timeout=WAIT)
    sid = unique()
    create_program(pool, sid, "p")
    [regular] = worker_pids(pool).values()
    started = {e["pid"] for e in log.entries() if e["message"]["command"] == "ping"}
    [spare] = started - {regular}
    assert log.commands(spare) == ["ping"]  # its init ping: a spare is never lent

    os.kill(regular, signal.SIGKILL)
    wait_for(lambda: pool.status().pool.workers_removed == 1, timeout=WAIT)
    assert execute(pool, sid, "p")["program_id"] == "p"  # by the spare, at once
    assert log.commands(spare) == ["ping", "create_program", "execute_program"]
    assert listed(pool, sid) == ["p"]
    wait_for(lambda: pool.status().pool.spares == 1, timeout=WAIT)  # a new spare behind it


def test_a_worker_that_dies_while_the_session_is_rebuilt_on_it_costs_the_command_nothing(
    spools: SessionPools, log: CompatLog
) -> None:
    """The command itself was never written: it goes to another worker, as a command whose
    worker was dead before it was written does (it was a `WorkerCrashed(delivered=True)`)."""
    pool = spools.compat(pool_size=1, spares=1, log=log)
    wait_for(lambda: pool.status().pool.spares == 1, timeout=WAIT)
    [regular] = worker_pids(pool).values()
    [spare] = {e["pid"] for e in log.entries() if e["message"]["command"] == "ping"} - {regular}
    sid = unique()
    args = {"id": "p", "signature": SIGNATURE, "_die_on_pids": [spare]}
    pool.execute_in_session(sid, "create_program", args)  # on the regular worker

    os.kill(regular, signal.SIGKILL)
    wait_for(lambda: pool.status().pool.workers_removed == 1, timeout=WAIT)
    assert listed(pool, sid) == ["p"]  # the spare died rebuilding it; the next worker served
    assert log.commands(spare) == ["ping", "create_program"]  # its last: no list_programs
    assert pool.status().pool.workers_removed == 2


def test_a_session_whose_rebuild_kills_every_worker_fails_after_two_of_them(
    spools: SessionPools,
) -> None:
    """The rebuild may be what kills the workers: the command is sent again once, not to
    every worker the pool can start (each a process lost)."""
    pool = spools.compat(pool_size=1)
    sid = unique()
    first = pool.execute_in_session(sid, "ping")["pid"]
    args = {"id": "p", "signature": SIGNATURE, "_die_unless_pids": [first]}
    pool.execute_in_session(sid, "create_program", args)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: pool.status().pool.workers_removed == 1, timeout=WAIT)

    with pytest.raises(da.WorkerCrashed) as err:
        pool.execute_in_session(sid, "list_programs")
    assert err.value.delivered is False  # the command itself never reached a worker
    assert pool.status().pool.workers_removed == 3  # the killed one, then two rebuilds


def test_only_a_worker_that_read_a_rebuild_step_counts_as_killed_by_the_rebuild() -> None:
    """White-box (`_DspexErrors`): a worker found dead while a rebuild step was being written
    was dead before (the command keeps its 8 retries); one that died after reading it may
    have been killed by it (two such, and the command fails)."""
    from dspex_actors.bridge._session_pool import _DspexErrors

    port: Any = SimpleNamespace(exit_status=-9)
    run: Any = SimpleNamespace(rebuild_crashes=0)

    def crash(errors: _DspexErrors) -> None:
        with errors:
            raise da.PortClosed(port, "gone")

    for written in (False, True):
        errors = _DspexErrors(port, "create_program", 1.0, run)
        errors.sending = not written
        with pytest.raises(da.WorkerCrashed) as err:
            crash(errors)
        assert err.value.delivered is False  # the command itself was never written
        assert run.rebuild_crashes == int(written)


# --- 9. interop: DSPex's own script ------------------------------------------------------------


def test_dspex_bridge_script_serves_dspexs_command_set_through_the_pool_unchanged(
    spools: SessionPools,
) -> None:
    pool = spools.compat(pool_size=2)
    sid = unique()
    assert pool.execute_anonymous("ping")["mode"] == "pool-worker"
    configured = pool.execute_in_session(sid, "configure_lm", {"model": "gemini-1.5-flash"})
    assert configured["status"] == "configured"
    created = create_program(pool, sid, "qa")
    assert (created["program_id"], created["status"]) == ("qa", "created")
    first = affinity_of(pool, sid)
    for worker in (first, other(pool, first)):  # each worker in turn
        with holding(pool, worker):
            result = execute(pool, sid, "qa")
            assert result["outputs"] == {"answer": 'answer for {"question": "What is 2+2?"}'}
            assert result["lm"] == "gemini-1.5-flash"
            assert listed(pool, sid) == ["qa"]
    info = pool.execute_in_session(sid, "get_program_info", {"program_id": "qa"})
    assert info["signature"] == SIGNATURE
    stats = pool.execute_in_session(sid, "get_stats")
    assert stats["mode"] == "pool-worker"
    deleted = pool.execute_in_session(sid, "delete_program", {"program_id": "qa"})
    assert deleted["status"] == "deleted"
    for worker in worker_pids(pool):
        with holding(pool, worker):
            assert listed(pool, sid) == []


# --- 10. the real DSPy worker ------------------------------------------------------------------


def test_a_chain_of_thought_program_runs_in_a_session_and_returns_only_its_declared_outputs(
    real: SessionPool,
) -> None:
    sid = unique()
    created = create_program(real, sid, "cot", program_type="chain_of_thought")
    assert created["program_type"] == "chain_of_thought"
    result = execute(real, sid, "cot")
    assert result["program_id"] == "cot"
    assert set(result["outputs"]) == {"answer"}  # not ChainOfThought's reasoning
    answer = result["outputs"]["answer"]
    assert isinstance(answer, str)
    assert answer


def test_two_sessions_on_real_workers_each_list_only_their_own_programs(
    real: SessionPool,
) -> None:
    a, b = unique(), unique()
    create_program(real, a, "only-in-a")
    create_program(real, b, "only-in-b")
    for worker in worker_pids(real):
        with holding(real, other(real, worker)):  # on each worker in turn
            assert listed(real, a) == ["only-in-a"]
            assert listed(real, b) == ["only-in-b"]
    with pytest.raises(CommandError, match="only-in-b"):
        execute(real, a, "only-in-b")


def test_real_workers_are_named_by_their_init_ping(real: SessionPool) -> None:
    names = set()
    for worker in worker_pids(real):
        reply = direct(real, "ping", worker=worker)
        assert reply["success"], reply
        result = reply["result"]
        assert result["mode"] == "pool-worker"
        assert re.fullmatch(r"worker_\d+_\d+", result["worker_id"]), result
        names.add(result["worker_id"])
    assert len(names) == 2


def test_cleanup_session_on_a_real_worker_leaves_nothing_of_the_session_there(
    real: SessionPool,
) -> None:
    sid = unique()
    real.execute_in_session(sid, "configure_lm", {"model": "openai/gpt-4o-mini"})  # built only
    create_program(real, sid, "p")
    assert real.execute_in_session(sid, "cleanup_session")["status"] == "cleaned"
    assert listed(real, sid) == []  # the session's next command: nothing is sent again
    worker = affinity_of(real, sid)
    # Asked past the store, the worker holds neither the programs nor the LM.
    reply = direct(real, "cleanup_session", {"session_id": sid}, worker=worker)
    assert reply["result"] == {"status": "not_found", "session_id": sid}


def test_a_default_pool_forks_its_workers_from_a_fork_server_with_dspy_preloaded(
    spools: SessionPools,
) -> None:
    spec, _ = SessionPool.options()
    assert spec.target is handle_request
    assert spec.argv is None
    assert spec.method == "forkserver"
    assert tuple(spec.preload) == PRELOAD == ("dspy", "dspex_actors.bridge._commands")

    pool = spools.start(pool_size=1)
    [replacement] = kill_workers(pool).values()
    # The replacement is a child of the fork server, which has DSPy imported: it started
    # with DSPy in sys.modules, before it answered anything.
    server = FORK_SERVER._server
    assert server is not None
    assert psutil.Process(replacement).ppid() == server.pid
    assert set(PRELOAD) <= server.preloaded
    assert pool.execute_anonymous("ping")["dspy_available"] is True


def test_an_unknown_command_on_a_real_worker_is_an_error_checkin(real: SessionPool) -> None:
    removed = real.status().pool.workers_removed
    errors = sum(s.error_checkins for s in real.worker_stats())
    with pytest.raises(CommandError) as info:
        real.execute_anonymous("invalid_command")
    assert info.value.message == "Unknown command: invalid_command"
    assert real.status().pool.workers_removed == removed
    assert sum(s.error_checkins for s in real.worker_stats()) == errors + 1
