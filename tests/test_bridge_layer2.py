"""Layer 2 (``bridge_mock``): a `SessionPool` of mock worker processes, misbehaving as scripted.

The script (`MockScript`: ``fail``, ``error_rate``, ``crash_after``) applies to every command
but the pool's init ping, which is served as it is and not counted: else no worker could ever
start (a scripted ``ping`` failure, an error rate, a crash at the first command). The steps
that rebuild a session on a worker are commands like the caller's: a scripted failure of one
fails the caller's command with it, and ``crash_after`` counts them. Here the workers start
with each of those set, a scripted failure reaches the caller as the right typed error
(`CommandError`, `WorkerCrashed`), and a scripted crash is survived: the replacement worker
is rebuilt and serves.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors.bridge import (
    BridgeAdapter,
    CommandError,
    MockScript,
    SessionPool,
    adapter_for_layer,
)
from dspex_actors.testing import wait_for

from support.sessions import SIGNATURE, WAIT, kill_workers, ready, worker_pids

pytestmark = pytest.mark.leak_check

QUESTION = {"question": "What is 2+2?"}


@pytest.fixture
def adapters() -> Iterator[list[BridgeAdapter]]:
    """Layer-2 adapters started by the test; each stops its pool at the end."""
    started: list[BridgeAdapter] = []
    try:
        yield started
    finally:
        for adapter in started:
            adapter.close()


def start(adapters: list[BridgeAdapter], script: MockScript, pool_size: int) -> SessionPool:
    """A layer-2 pool of `pool_size` mock workers run with `script`, once every worker is
    ready (each answered its init ping)."""
    adapter = adapter_for_layer(
        "layer_2", session_id="s", script=script, pool_size=pool_size, checkout_timeout=WAIT
    )
    assert isinstance(adapter, BridgeAdapter)
    adapters.append(adapter)
    pool = adapter.client
    assert isinstance(pool, SessionPool)
    wait_for(lambda: ready(pool, pool_size), timeout=WAIT)
    return pool


def create(pool: SessionPool, program_id: str) -> dict[str, Any]:
    args = {"id": program_id, "signature": SIGNATURE}
    return pool.execute_in_session("s", "create_program", args)


def execute(pool: SessionPool, program_id: str) -> dict[str, Any]:
    args = {"program_id": program_id, "inputs": QUESTION}
    return pool.execute_in_session("s", "execute_program", args)


def listed(pool: SessionPool) -> list[str]:
    return [p["id"] for p in pool.execute_in_session("s", "list_programs")["programs"]]


def test_workers_told_to_fail_ping_start_and_the_callers_ping_gets_the_scripted_error(
    adapters: list[BridgeAdapter],
) -> None:
    script = MockScript(fail=frozenset({"ping", "create_program"}))
    pool = start(adapters, script, pool_size=2)  # every init ping answered all the same
    with pytest.raises(CommandError) as info:
        pool.execute_anonymous("ping")
    assert (info.value.command, info.value.message) == ("ping", "scripted failure of ping")
    with pytest.raises(CommandError) as info:
        create(pool, "p")
    assert info.value.message == "scripted failure of create_program"
    assert info.value.session_id == "s"
    assert listed(pool) == []  # what is not scripted to fail serves
    status = pool.status()
    assert status.pool.workers_removed == 0  # an error reply keeps its worker
    assert sum(s.error_checkins for s in pool.worker_stats()) == 2
    assert adapters[0].health_check() is False  # DSPex's health check: a failing ping


def test_an_error_rate_spares_the_init_ping_and_a_failed_rebuild_fails_the_callers_command(
    adapters: list[BridgeAdapter],
) -> None:
    # Each worker draws from its own random.Random(seed), once per command: with
    # this seed the first draw fails (an init ping that drew would fail, and no worker would
    # ever start), the next two pass, the fourth fails.
    seed, rate = 1, 0.5
    draws = random.Random(seed)
    passes = [draws.random() >= rate for _ in range(4)]
    assert passes == [False, True, True, False]
    pool = start(adapters, MockScript(error_rate=rate, seed=seed), pool_size=1)

    with pytest.raises(CommandError) as info:
        create(pool, "p")
    assert info.value.message == "scripted random failure of create_program"
    assert create(pool, "p")["status"] == "created"
    assert set(execute(pool, "p")["outputs"]) == {"answer"}
    with pytest.raises(CommandError, match="scripted random failure of ping"):
        pool.execute_in_session("s", "ping")

    kill_workers(pool)  # the replacement draws afresh: its first draw fails again
    with pytest.raises(CommandError) as info:
        listed(pool)
    # The program is created again on the new worker before the caller's command: that
    # rebuild step took the failing draw, and the caller's command failed with it.
    assert info.value.message == "scripted random failure of create_program"
    assert listed(pool) == ["p"]  # the rebuild again (draw 2), then the listing (draw 3)
    assert pool.status().pool.workers_removed == 1  # only the one killed


def test_crash_after_counts_every_command_but_the_init_ping_and_each_crash_is_survived(
    adapters: list[BridgeAdapter],
) -> None:
    pool = start(adapters, MockScript(crash_after=3), pool_size=1)
    [first] = worker_pids(pool).values()

    create(pool, "p")  # 1: the init ping did not count
    before = execute(pool, "p")["outputs"]  # 2
    with pytest.raises(da.WorkerCrashed) as crashed:
        execute(pool, "p")  # 3
    assert crashed.value.exit_status == 70
    assert crashed.value.delivered is True

    # The replacement creates the program again (1) before the caller's command (2).
    assert execute(pool, "p")["outputs"] == before  # 1, 2
    [second] = worker_pids(pool).values()
    assert second != first
    with pytest.raises(da.WorkerCrashed):
        pool.execute_in_session("s", "ping")  # 3
    assert listed(pool) == ["p"]  # a third worker: the rebuild (1), the listing (2)
    assert pool.status().pool.workers_removed == 2
