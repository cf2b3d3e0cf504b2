"""Pool start, options, eager/lazy workers, FIFO order, init failures, stop, supervision."""

from __future__ import annotations

import threading
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors.testing import (
    EchoWorker,
    ScriptedWorker,
    kill_and_wait,
    start_test_pool,
    sync,
    wait_for_pool_ready,
)

from support.pools import (
    WAIT,
    Pools,
    Waiter,
    hold,
    init,
    ok_checkin,
    ok_checkout,
    release,
    script,
    terminate,
    wait_queued,
)

# --- options are validated before anything starts ------------------------------------------------


@pytest.mark.parametrize("size", [0, -1, 1.5, "2", True, None])
def test_pool_size_must_be_a_positive_integer(size: Any) -> None:
    with pytest.raises(da.InvalidOption) as err:
        da.Pool.start(EchoWorker, pool_size=size)
    assert str(err.value) == f"pool_size must be a positive integer, got: {size!r}"
    assert err.value.option == "pool_size"


def test_missing_worker_is_a_type_error_and_a_bad_worker_is_invalid() -> None:
    with pytest.raises(TypeError, match="worker"):
        da.Pool.start()  # type: ignore[call-arg]
    with pytest.raises(da.InvalidOption, match="worker must be a PoolWorker subclass"):
        da.Pool.start(None)  # type: ignore[arg-type]
    with pytest.raises(da.InvalidOption, match="the class itself"):
        da.Pool.start(EchoWorker())  # type: ignore[arg-type]

    class NoCheckout(da.PoolWorker):
        def init_worker(self, pool_state: Any) -> da.Ok:
            return da.Ok(1, pool_state)

    with pytest.raises(da.InvalidOption, match="defines handle_checkout"):
        da.Pool.start(NoCheckout)


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("lazy", "yes", "True or False"),
        ("max_overflow", -1, "a non-negative integer"),
        ("worker_idle_timeout", 0, "a positive number of seconds or None"),
        ("max_idle_pings", 0, "a positive integer or None"),
        ("clock", object(), "a Clock"),
    ],
)
def test_every_pool_option_is_validated_eagerly(option: str, value: Any, expected: str) -> None:
    with pytest.raises(da.InvalidOption) as err:
        da.Pool.start(EchoWorker, **{option: value})
    assert str(err.value).startswith(f"{option} must be {expected}")


def test_a_negative_checkout_timeout_is_rejected(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1)
    with pytest.raises(da.InvalidOption, match="timeout must be a non-negative number"):
        pool.checkout(None, lambda f, c: (c, c), timeout=-1)
    with pytest.raises(da.InvalidOption, match="timeout"):
        pool.lease(None, timeout="soon")  # type: ignore[arg-type]
    assert pool.status().idle == 1


# --- eager and lazy ------------------------------------------------------------------------------


def test_an_eager_pool_runs_init_worker_pool_size_times_after_init_pool(pools: Pools) -> None:
    s = script(
        ("init_pool", lambda arg: da.Ok(("ps", arg))),
        init("w1"),
        init("w2"),
        init("w3"),
        init_arg="arg",
    )
    pool = pools.start(ScriptedWorker, s, pool_size=3)
    assert s.names() == ["init_pool", "init_worker", "init_worker", "init_worker"]
    assert s.calls[1][1] == (("ps", "arg"),)  # init_worker sees init_pool's state
    status = pool.status()
    assert (status.idle, status.workers_started) == (3, 3)
    s.assert_drained()


def test_a_lazy_pool_creates_workers_on_demand_and_never_above_pool_size(
    pools: Pools,
) -> None:
    pool = pools.start(EchoWorker, pool_size=2, lazy=True)
    assert pool.status().workers_started == 0
    # Sequential checkouts reuse the one worker they created.
    for _ in range(3):
        assert pool.checkout(None, lambda f, c: (c, c)) == 1
    assert pool.status().workers_started == 1
    # Concurrent checkouts create a second worker, and no third.
    first = hold(pool)
    second = hold(pool)
    assert {first.client_state, second.client_state} == {1, 2}
    with pytest.raises(da.PoolTimeout):
        pool.checkout(None, lambda f, c: (c, c), timeout=0.05)
    status = pool.status()
    assert (status.workers_started, status.busy, status.idle) == (2, 2, 0)
    release(first)
    release(second)
    assert pool.status().idle == 2


# --- FIFO idle queue, FIFO waiters ---------------------------------------------------------------


def test_idle_workers_are_handed_out_fifo(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=2)
    served = [pool.checkout(None, lambda f, c: (c, c)) for _ in range(4)]
    assert served == [1, 2, 1, 2]


def test_waiting_checkouts_are_served_in_arrival_order(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1)
    order: list[int] = []
    lock = threading.Lock()

    def record(n: int) -> Any:
        def fn(from_: da.From, client_state: Any) -> tuple[Any, Any]:
            with lock:
                order.append(n)
            return n, client_state

        return fn

    held = hold(pool)
    waiters = []
    for n in range(4):
        waiters.append(Waiter(pool, fn=record(n)))
        wait_queued(pool, n + 1)
    release(held)
    assert [w.join().result for w in waiters] == [0, 1, 2, 3]
    assert order == [0, 1, 2, 3]


# --- the checkout function -----------------------------------------------------------------------


def test_checkout_runs_fn_in_the_caller_and_checks_in_the_second_element(
    pools: Pools,
) -> None:
    seen: dict[str, Any] = {}

    def checkin(cs: Any, from_: da.From, ws: Any, ps: Any) -> da.Ok:
        seen["checkin"] = (cs, from_)
        return da.Ok(ws, ps)

    s = script(
        init("w1"),
        ("handle_checkout", lambda cmd, from_, ws, ps: da.Ok(("client", cmd), ws, ps)),
        ("handle_checkin", checkin),
        terminate(da.NORMAL, "w1"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)

    def fn(from_: da.From, client_state: Any) -> tuple[Any, Any]:
        seen["thread"] = threading.get_ident()
        seen["from"] = from_
        return ("result", client_state), "checkin-state"

    assert pool.checkout("cmd", fn) == ("result", ("client", "cmd"))
    assert seen["thread"] == threading.get_ident()
    assert seen["from"].pool == pool.actor_ref
    sync(pool.actor_ref)
    assert seen["checkin"] == ("checkin-state", seen["from"])
    pool.stop()
    s.assert_drained()


# --- init_worker failures ------------------------------------------------------------------------


class Flaky(da.PoolWorker):
    """init_worker raises while the class-level `failing` event is set."""

    failing = threading.Event()
    attempts = 0

    def init_worker(self, pool_state: Any) -> da.Ok:
        type(self).attempts += 1
        if self.failing.is_set():
            raise RuntimeError("cannot connect")
        return da.Ok("w", pool_state)

    def handle_checkout(self, command: Any, from_: da.From, ws: Any, ps: Any) -> da.Ok:
        return da.Ok(ws, ws, ps)


def test_a_raising_init_worker_is_retried_through_the_inbox_without_blocking(
    pools: Pools,
) -> None:
    Flaky.failing.set()
    Flaky.attempts = 0
    try:
        pool = pools.start(Flaky, pool_size=1)  # start does not loop on the failure
        # The pool keeps answering calls while the retries go round its inbox.
        first = pool.status()
        assert (first.idle, first.initializing) == (0, 1)
        retried = Flaky.attempts
        assert pool.status().idle == 0
        assert Flaky.attempts >= retried
    finally:
        Flaky.failing.clear()
    wait_for_pool_ready(pool, WAIT)
    assert pool.checkout(None, lambda f, c: (c, c)) == "w"
    assert pool.status().initializing == 0


def test_an_invalid_init_worker_return_fails_start_with_expected_and_got() -> None:
    s = script(("init_worker", lambda ps: ("ok", "w1")))
    with pytest.raises(da.CallbackReturnError) as err:
        da.Pool.start(ScriptedWorker, s, pool_size=1)
    message = str(err.value)
    assert message.startswith("unexpected return from ScriptedWorker.init_worker.")
    assert "Expected:\n    Ok(worker_state, pool_state)\n    Async(fn, pool_state)" in message
    assert "Got: ('ok', 'w1')" in message
    assert "Hint: return the result class Ok(...), not a tuple" in message
    s.assert_drained()


def test_init_pool_stop_or_raise_fails_start() -> None:
    s = script(("init_pool", lambda arg: da.Stop("no config")))
    with pytest.raises(da.StartError, match="no config"):
        da.Pool.start(ScriptedWorker, s)

    def boom(arg: Any) -> Any:
        raise ValueError("bad init")

    s2 = script(("init_pool", boom))
    with pytest.raises(da.StartError) as err:
        da.Pool.start(ScriptedWorker, s2)
    assert isinstance(err.value.reason, ValueError)


# --- stop, names, supervision --------------------------------------------------------------------


def test_stop_terminates_every_idle_worker_then_terminate_pool(pools: Pools) -> None:
    s = script(
        init("w1"),
        init("w2"),
        init("w3"),
        ok_checkout(),
        terminate(da.SHUTDOWN, "w2"),
        terminate(da.SHUTDOWN, "w3"),
        ("terminate_pool", lambda reason, ps: None),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=3)
    held = hold(pool)  # w1 is checked out at stop: it gets no terminate_worker
    assert held.client_state == "w1"
    pool.stop(da.SHUTDOWN)
    assert pool.wait(WAIT) is da.SHUTDOWN
    s.assert_drained()
    assert s.names()[-3:] == ["terminate_worker", "terminate_worker", "terminate_pool"]
    assert s.calls[-1][1][0] is da.SHUTDOWN
    release(held)  # a checkin to a stopped pool is ignored


def test_a_stopped_pool_raises_noproc_and_wakes_its_waiters(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1)
    held = hold(pool)
    waiter = Waiter(pool, timeout=30)
    wait_queued(pool, 1)
    pool.stop()
    assert isinstance(waiter.join().error, da.NoProc)
    with pytest.raises(da.NoProc):
        pool.checkout(None, lambda f, c: (c, c))
    with pytest.raises(da.NoProc):
        pool.status()
    release(held)


def test_start_test_pool_defaults_to_an_eager_named_pool_of_two() -> None:
    with start_test_pool() as pool:
        status = pool.status()
        assert (status.pool_size, status.idle, status.lazy) == (2, 2, False)
        assert pool.name.startswith("test_pool_")
        assert da.whereis(pool.name) == pool.actor_ref
    assert not pool.is_alive()


def test_name_registers_the_pool_and_a_taken_name_fails_start(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1, name="named_pool")
    assert da.whereis("named_pool") == pool.actor_ref
    assert pool.name == "named_pool"
    with pytest.raises(da.NameTaken):
        da.Pool.start(EchoWorker, pool_size=1, name="named_pool")


def test_from_ref_drives_a_running_pool(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1)
    again = da.Pool.from_ref(pool.actor_ref)
    assert again.checkout(None, lambda f, c: (c, c)) == 1
    assert again == pool


class NotAPool(da.Actor):
    """An actor of another kind than a pool."""


def test_pool_from_ref_refuses_the_ref_of_an_actor_that_is_not_a_pool() -> None:
    """`ActorHandle.from_ref` raises TypeError for a ref of another kind of actor."""
    other = NotAPool.start()
    try:
        with pytest.raises(TypeError, match="Pool"):
            da.Pool.from_ref(other)
    finally:
        other.stop()


def test_pool_from_ref_accepts_the_ref_of_a_running_pool() -> None:
    """The kind check accepts a real pool's ref."""
    with start_test_pool(pool_size=1) as pool:
        again = da.Pool.from_ref(pool.actor_ref)
        assert again.checkout("x", lambda _from, state: (state, state)) == 1


def test_a_pool_runs_under_a_supervisor_with_child_spec() -> None:
    spec = da.Pool.child_spec(EchoWorker, pool_size=1, id="db")
    assert spec.id == "db"
    with pytest.raises(da.InvalidOption):
        da.Pool.child_spec(EchoWorker, pool_size=0)
    sup = da.Supervisor.start([spec])
    try:
        ref = sup.which_child("db").ref
        assert isinstance(ref, pykka.ActorRef)
        pool = da.Pool.from_ref(ref)
        assert pool.checkout(None, lambda f, c: (c, c)) == 1
    finally:
        sup.stop()
    assert not pool.is_alive()


class Recording(da.PoolWorker):
    """Workers numbered 1, 2, ...; every terminate callback is recorded in `init_arg`."""

    def init_pool(self, init_arg: Any) -> da.Ok:
        return da.Ok(init_arg)

    def init_worker(self, pool_state: Any) -> da.Ok:
        pool_state["n"] += 1
        return da.Ok(pool_state["n"], pool_state)

    def handle_checkout(
        self, command: Any, from_: da.From, worker_state: Any, pool_state: Any
    ) -> da.Ok:
        return da.Ok(worker_state, worker_state, pool_state)

    def terminate_worker(self, reason: Any, worker_state: Any, pool_state: Any) -> da.Ok:
        pool_state["terminated"].append((worker_state, reason))
        return da.Ok(pool_state)

    def terminate_pool(self, reason: Any, pool_state: Any) -> None:
        pool_state["pool_terminated"].append(reason)


def test_a_pool_whose_parent_is_killed_still_terminates_its_idle_workers() -> None:
    """A pool traps exits, as NimblePool does: its parent's `killed` exit signal runs the
    pool's cleanup, which terminates every idle worker (with reason KILLED) and then the pool,
    so no worker's resource (for a `ProcessPool`, its OS processes) is leaked."""
    record: dict[str, Any] = {"n": 0, "terminated": [], "pool_terminated": []}
    sup = da.Supervisor.start([da.Pool.child_spec(Recording, record, pool_size=2)])
    pool_ref = sup.which_children()[0].ref
    assert isinstance(pool_ref, type(sup.actor_ref))
    assert kill_and_wait(sup.actor_ref) is da.KILLED
    assert da.wait_exit(pool_ref) is da.KILLED
    assert sorted(record["terminated"], key=repr) == [(1, da.KILLED), (2, da.KILLED)]
    assert record["pool_terminated"] == [da.KILLED]


def test_callbacks_are_pinned_in_order_by_the_scripted_worker(pools: Pools) -> None:
    s = script(init("w1"), ok_checkout(), ok_checkin(), terminate())
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    pool.checkout(None, lambda f, c: (c, c))
    pool.stop()
    s.assert_drained()
