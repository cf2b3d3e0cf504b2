"""handle_info for messages the pool does not consume, and idle pings on a FakeClock."""

from __future__ import annotations

from typing import Any

import pytest

import dspex_actors as da
from dspex_actors.testing import EchoWorker, FakeClock, ScriptedWorker, sync

from support.pools import WAIT, Pools, hold, init, ok_checkin, ok_checkout, release, script


def info(expect: Any = None, result: Any = None) -> tuple[str, Any]:
    def step(message: Any, ws: Any) -> Any:
        if expect is not None:
            assert expect(message), f"handle_info got {message!r}"
        return result if result is not None else da.Ok(ws)

    return ("handle_info", step)


def ping(result: Any = None, seen: list[Any] | None = None) -> tuple[str, Any]:
    def step(ws: Any, ps: Any) -> Any:
        if seen is not None:
            seen.append(ws)
        return result if result is not None else da.Ok(ws)

    return ("handle_ping", step)


def terminated(reason: Any, into: list[Any]) -> tuple[str, Any]:
    def step(r: Any, ws: Any, ps: Any) -> da.Ok:
        assert r == reason, f"terminate_worker reason {r!r}"
        into.append(ws)
        return da.Ok(ps)

    return ("terminate_worker", step)


# --- handle_info ---------------------------------------------------------------------------------


def test_an_unconsumed_message_reaches_handle_info_once_per_idle_worker(
    pools: Pools,
) -> None:
    seen: list[Any] = []

    def record(message: Any, ws: Any) -> da.Ok:
        seen.append((message, ws))
        return da.Ok(ws)

    s = script(
        init("w1"),
        init("w2"),
        init("w3"),
        ok_checkout(),
        ("handle_info", record),
        ("handle_info", record),
        ("handle_info", record),
        ("handle_info", record),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=3)
    held = hold(pool)  # w1 is checked out: it does not see the messages
    pool.send_info("hello")
    pool.actor_ref.tell(("raw", 1))  # anything else told to the pool counts too
    sync(pool.actor_ref)
    assert seen == [("hello", "w2"), ("hello", "w3"), (("raw", 1), "w2"), (("raw", 1), "w3")]
    release(held)
    s.assert_drained()


class Linked(da.Actor):
    def __init__(self, pool_ref: Any) -> None:
        super().__init__()
        self.pool_ref = pool_ref

    def on_start(self) -> None:
        self.link(self.pool_ref)

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("linked actor crashed")
        return None


def test_exit_signals_from_linked_non_parents_reach_handle_info(pools: Pools) -> None:
    s = script(init("w1"), info(lambda m: isinstance(m, da.Exit)))
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    linked = Linked.start(pool.actor_ref)
    linked.tell("crash")
    da.wait_exit(linked, WAIT)
    sync(pool.actor_ref)
    s.assert_drained()
    assert pool.is_alive()  # the pool traps exits: a linked crash is information


def test_remove_from_handle_info_terminates_and_replaces(pools: Pools) -> None:
    gone: list[Any] = []
    s = script(
        init("w1"),
        info(result=da.Remove("process died")),
        terminated("process died", gone),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    pool.send_info(("exited", "w1"))
    s.assert_drained()
    assert gone == ["w1"]
    assert pool.status().idle == 1


def test_a_remove_with_a_pool_state_from_handle_info_is_an_invalid_return(pools: Pools) -> None:
    s = script(
        init("w1"),
        info(result=da.Remove("r", "ps")),
        ("terminate_worker", lambda r, ws, ps: da.Ok(ps)),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    pool.send_info("x")
    s.assert_drained()
    assert s.calls[2][1][0].callback == "ScriptedWorker.handle_info"


# --- which workers are pinged --------------------------------------------------------------------


def test_idle_workers_are_pinged_in_queue_order_up_to_max_idle_pings(pools: Pools) -> None:
    clock = FakeClock()
    seen: list[Any] = []
    s = script(
        init("w1"),
        init("w2"),
        init("w3"),
        ping(seen=seen),
        ping(seen=seen),
        ping(seen=seen),
        ping(seen=seen),
    )
    pool = pools.start(
        ScriptedWorker, s, pool_size=3, worker_idle_timeout=10.0, max_idle_pings=2, clock=clock
    )
    clock.advance(10.0)
    sync(pool.actor_ref)
    assert seen == ["w1", "w2"]  # max_idle_pings: 2 of 3, from the head of the queue
    clock.advance(10.0)
    sync(pool.actor_ref)
    assert seen == ["w1", "w2", "w1", "w2"]  # the queue order is kept across cycles
    s.assert_drained()


def test_the_scan_stops_at_the_first_worker_not_idle_long_enough(pools: Pools) -> None:
    clock = FakeClock()
    seen: list[Any] = []
    s = script(init("w1"), init("w2"), ok_checkout(), ok_checkin(), ping(seen=seen))
    pool = pools.start(ScriptedWorker, s, pool_size=2, worker_idle_timeout=10.0, clock=clock)
    clock.advance(5.0)
    pool.checkout(None, lambda f, c: (c, c))  # w1 is checked in at t=5: queue is w2, w1
    sync(pool.actor_ref)
    clock.advance(5.0)  # t=10: w2 idle 10 s, w1 only 5 s
    sync(pool.actor_ref)
    assert seen == ["w2"]
    s.assert_drained()


def test_checked_out_workers_are_never_pinged_and_a_lazy_pool_keeps_its_worker(
    pools: Pools,
) -> None:
    clock = FakeClock()
    s = script(init("w1"), ok_checkout(), ok_checkin())
    pool = pools.start(
        ScriptedWorker, s, pool_size=1, lazy=True, worker_idle_timeout=1.0, clock=clock
    )
    clock.advance(1.0)  # an empty lazy pool: nothing to ping
    sync(pool.actor_ref)
    held = hold(pool)
    clock.advance(1.0)  # its only worker is checked out: not pinged, not removed (nimble #26)
    sync(pool.actor_ref)
    release(held)
    sync(pool.actor_ref)
    s.assert_drained()
    assert pool.status().workers_started == 1


def test_a_worker_without_handle_ping_disables_idle_pings(pools: Pools, records: Any) -> None:
    clock = FakeClock()
    pool = pools.start(EchoWorker, pool_size=1, worker_idle_timeout=1.0, clock=clock)
    assert clock.pending() == 0
    assert records.of("pool_no_handle_ping")
    assert pool.status().idle == 1


# --- the ping results ----------------------------------------------------------------------------


def test_ok_from_ping_updates_the_state_but_not_the_idle_time(pools: Pools) -> None:
    clock = FakeClock()
    seen: list[Any] = []

    def bump(ws: int, ps: Any) -> da.Ok:
        seen.append(ws)
        return da.Ok(ws + 1)

    s = script(init(1), ("handle_ping", bump), ("handle_ping", bump))
    pool = pools.start(ScriptedWorker, s, pool_size=1, worker_idle_timeout=10.0, clock=clock)
    clock.advance(10.0)
    sync(pool.actor_ref)
    clock.advance(10.0)  # pinged again: its idle time was not reset by the ping
    sync(pool.actor_ref)
    assert seen == [1, 2]  # the second ping saw the state the first one returned
    s.assert_drained()


def test_remove_from_ping_terminates_without_stopping_the_pool(pools: Pools) -> None:
    clock = FakeClock()
    gone: list[Any] = []
    s = script(init("w1"), ping(result=da.Remove("stale")), terminated("stale", gone), init("w2"))
    pool = pools.start(ScriptedWorker, s, pool_size=1, worker_idle_timeout=10.0, clock=clock)
    clock.advance(10.0)
    sync(pool.actor_ref)
    s.assert_drained()
    assert gone == ["w1"]
    assert pool.is_alive()


def test_stop_from_ping_terminates_idle_workers_and_stops_the_pool(pools: Pools) -> None:
    clock = FakeClock()
    gone: list[Any] = []
    s = script(
        init("w1"),
        init("w2"),
        ping(result=da.Stop("idle_timeout")),
        terminated(da.Shutdown("idle_timeout"), gone),
        terminated(da.Shutdown("idle_timeout"), gone),
        ("terminate_pool", lambda reason, ps: None),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=2, worker_idle_timeout=10.0, clock=clock)
    clock.advance(10.0)
    assert pool.wait(WAIT) == da.Shutdown("idle_timeout")
    s.assert_drained()
    assert gone == ["w1", "w2"]
    assert s.calls[-1][1][0] == da.Shutdown("idle_timeout")
    assert clock.pending() == 0  # the next idle check was cancelled


@pytest.mark.parametrize("timeout", [0.5, 3])
def test_idle_checks_repeat_every_worker_idle_timeout(pools: Pools, timeout: float) -> None:
    clock = FakeClock()
    s = script(init("w1"), ping(), ping(), ping())
    pool = pools.start(ScriptedWorker, s, pool_size=1, worker_idle_timeout=timeout, clock=clock)
    for _ in range(3):
        assert clock.pending() == 1
        clock.advance(timeout)
        sync(pool.actor_ref)
    s.assert_drained()
