"""Checkout semantics: timeouts, cancels, client failures, Remove/Skip, enqueue, update, leases.

Also: Async worker init, `update`, nothing left behind after a checkout, and the deliberate
extras (a non-pair return from the client function, `with pool.lease(...)`).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors.testing import (
    EchoWorker,
    ScriptedWorker,
    gate,
    kill_and_wait,
    start_test_pool,
    sync,
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


def cancelled(context: str) -> tuple[str, Any]:
    def step(ctx: Any, ps: Any) -> None:
        assert ctx == context, f"handle_cancelled({ctx!r}), expected {context!r}"

    return ("handle_cancelled", step)


class Boom(Exception):
    pass


# --- a missing pool, a dead pool, timeouts -------------------------------------------------------


def test_checkout_on_a_missing_pool_raises_noproc(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1)
    pool.stop()
    with pytest.raises(da.NoProc):
        pool.checkout(None, lambda f, c: (c, c))
    with pytest.raises(da.NoProc):
        da.Pool.from_ref(pool.actor_ref).checkout(None, lambda f, c: (c, c))


def test_a_pool_that_dies_while_we_wait_raises_noproc_not_a_timeout(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1)
    pool.status()  # fetch the shared core before the pool goes
    with gate(pool.actor_ref) as g:
        waiter = Waiter(pool, timeout=30)
        da.kill(pool.actor_ref)
        g.release()
    error = waiter.join().error
    assert isinstance(error, da.NoProc)
    assert "checkout" in str(error)


def test_a_checkout_timeout_raises_pool_timeout_naming_the_pool(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1, name="timed_out_pool")
    held = hold(pool)
    with pytest.raises(da.PoolTimeout) as err:
        pool.checkout(None, lambda f, c: (c, c), timeout=0.02)
    assert err.value.pool == "timed_out_pool"
    assert str(err.value) == "checkout from pool timed_out_pool timed out after 0.02s"
    assert isinstance(err.value, TimeoutError)
    release(held)


@pytest.mark.parametrize("forever", [float("inf"), 1e300])
def test_a_checkout_with_an_infinite_timeout_waits_like_none_and_checks_its_worker_in(
    forever: float,
) -> None:
    """`timeout=inf` (or a number too large for the OS to wait on) means "wait forever": the
    caller waits for its worker, gets it, and checks it in; no worker is left busy for a caller
    that has gone."""
    with start_test_pool(pool_size=1) as pool:
        assert pool.checkout("x", lambda _from, state: (state, state), timeout=forever) == 1
        with pool.lease("x", timeout=forever) as lease:
            assert lease.client_state == 1
        status = pool.status()
        assert (status.busy, status.idle, status.workers_removed) == (0, 1, 0)


# --- cancelled while queued ----------------------------------------------------------------------


def test_a_checkout_timing_out_while_queued_removes_nothing(pools: Pools) -> None:
    s = script(
        init("w1"),
        ok_checkout(),
        cancelled("queued"),
        ok_checkin(),
        ok_checkout(),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    held = hold(pool)
    with pytest.raises(da.PoolTimeout):
        pool.checkout(None, lambda f, c: (c, c), timeout=0.02)
    sync(pool.actor_ref)
    assert pool.status().queued == 0  # pruned at once, not when popped (NimblePool #27)
    release(held)  # the first client still checks in fine
    assert pool.checkout(None, lambda f, c: (c, c)) == "w1"
    sync(pool.actor_ref)
    s.assert_drained()
    assert pool.status().workers_removed == 0


def test_a_request_dropped_at_its_deadline_is_cancelled_as_queued(
    pools: Pools,
) -> None:
    s = script(init("w1"), cancelled("queued"))
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with gate(pool.actor_ref) as g:  # the pool is "suspended"
        with pytest.raises(da.PoolTimeout):
            pool.checkout(None, lambda f, c: (c, c), timeout=0.01)
        g.release()
    sync(pool.actor_ref)
    # The request reached the pool past its deadline: dropped without handle_checkout; the
    # cancel that followed found no such request and still reported "queued".
    s.assert_drained()
    status = pool.status()
    assert (status.idle, status.workers_removed, status.queued) == (1, 0, 0)


# --- the client function raises ------------------------------------------------------------------


def test_a_raising_client_cancels_removes_the_worker_and_reraises(pools: Pools) -> None:
    s = script(
        init("w1"),
        ok_checkout(),
        cancelled("checked_out"),
        terminate("error", "w1"),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    error = Boom("client failed")

    def fn(from_: da.From, client_state: Any) -> tuple[Any, Any]:
        raise error

    with pytest.raises(Boom) as raised:
        pool.checkout(None, fn)
    assert raised.value is error
    s.assert_drained()
    assert pool.status().idle == 1


class Interrupt(BaseException):
    pass


def test_a_base_exception_in_the_client_removes_the_worker_with_exit(pools: Pools) -> None:
    s = script(init("w1"), ok_checkout(), terminate("exit", "w1"), init("w2"))
    pool = pools.start(ScriptedWorker, s, pool_size=1)

    def fn(from_: da.From, client_state: Any) -> tuple[Any, Any]:
        raise Interrupt

    with pytest.raises(Interrupt):
        pool.checkout(None, fn)
    s.assert_drained()


def test_handle_cancelled_sees_checked_out_and_queued(pools: Pools) -> None:
    seen: list[str] = []
    s = script(
        init("w1"),
        ok_checkout(),
        ("handle_cancelled", lambda ctx, ps: seen.append(ctx)),  # waiter timed out: queued
        ("handle_cancelled", lambda ctx, ps: seen.append(ctx)),  # holder raised: checked_out
        terminate("error"),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    held = hold(pool)
    with pytest.raises(da.PoolTimeout):
        pool.checkout(None, lambda f, c: (c, c), timeout=0.01)
    release(held, error=Boom())
    s.assert_drained()
    assert seen == ["queued", "checked_out"]


def test_a_timeout_after_the_worker_was_assigned_removes_it_with_timeout(pools: Pools) -> None:
    """The cancel of a caller that gave up just as the pool assigned it a worker removes that
    worker with reason "timeout"."""
    s = script(
        init("w1"),
        ok_checkout(),
        cancelled("checked_out"),
        terminate("timeout", "w1"),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    lease = hold(pool)
    # The exact message `checkout` sends when its wait times out (the race itself cannot be
    # forced from outside without sleeping).
    pool._cancel(lease._active(), "timeout")
    s.assert_drained()
    status = pool.status()
    assert (status.busy, status.idle, status.workers_removed) == (0, 1, 1)


# --- an actor client exits while holding a worker ------------------------------------------------


class Holder(da.Actor):
    def __init__(self, pool: da.Pool) -> None:
        super().__init__()
        self.pool = pool
        self.lease: da.Lease | None = None

    def on_receive(self, message: Any) -> Any:
        if message == "hold":
            self.lease = self.pool.lease("held")
            return self.lease.__enter__().client_state
        if message == "checkout":
            return self.pool.checkout("x", lambda f, c: (c, c))
        if message == "fail":

            def fn(f: da.From, c: Any) -> tuple[Any, Any]:
                raise Boom

            try:
                self.pool.checkout("x", fn)
            except Boom:
                return "failed"
        return None


def test_an_actor_that_exits_holding_a_worker_gets_it_removed_with_down(
    pools: Pools,
) -> None:
    s = script(
        init("w1"),
        ok_checkout(),
        cancelled("checked_out"),
        terminate("DOWN", "w1"),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    client = Holder.start(pool)
    assert client.ask("hold", timeout=WAIT) == "w1"
    assert pool.status().busy == 1
    kill_and_wait(client)
    s.assert_drained()
    status = pool.status()
    assert (status.busy, status.idle, status.workers_removed) == (0, 1, 1)


# --- Remove and Skip from handle_checkout --------------------------------------------------------


def test_remove_from_checkout_serves_the_same_request_with_a_replacement(
    pools: Pools,
) -> None:
    s = script(
        init("w1"),
        ("handle_checkout", lambda cmd, from_, ws, ps: da.Remove("stale", ps)),
        terminate("stale", "w1"),
        init("w2"),
        ok_checkout(),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    assert pool.checkout(None, lambda f, c: (c, c)) == "w2"
    s.assert_drained()


def test_remove_tries_the_next_idle_worker_first(pools: Pools) -> None:
    s = script(
        init("w1"),
        init("w2"),
        ("handle_checkout", lambda cmd, from_, ws, ps: da.Remove("stale", ps)),
        terminate("stale", "w1"),
        ok_checkout(),
        init("w3"),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=2)
    assert pool.checkout(None, lambda f, c: (c, c)) == "w2"
    s.assert_drained()


def test_skip_from_checkout_raises_in_the_caller_and_keeps_the_worker(
    pools: Pools,
) -> None:
    s = script(
        init("w1"),
        ("handle_checkout", lambda cmd, from_, ws, ps: da.Skip(Boom("busy"), ps)),
        ("handle_checkout", lambda cmd, from_, ws, ps: da.Skip(KeyError, ps)),
        ok_checkout(),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(Boom, match="busy"):
        pool.checkout(None, lambda f, c: (c, c))
    with pytest.raises(KeyError):
        pool.checkout(None, lambda f, c: (c, c))
    assert pool.checkout(None, lambda f, c: (c, c)) == "w1"
    s.assert_drained()
    assert pool.status().workers_removed == 0


# --- handle_enqueue ------------------------------------------------------------------------------


def test_handle_enqueue_can_wrap_the_command_and_thread_the_pool_state(
    pools: Pools,
) -> None:
    def checkout(cmd: Any, from_: da.From, ws: Any, ps: Any) -> da.Ok:
        assert cmd == ("wrapped", "cmd")
        assert ps == "ps1"
        return da.Ok(cmd, ws, "ps2")

    s = script(
        ("init_pool", lambda arg: da.Ok("ps0")),
        init("w1"),
        ("handle_enqueue", lambda cmd, ps: da.Ok(("wrapped", cmd), "ps1")),
        ("handle_checkout", checkout),
        ("handle_checkin", lambda cs, from_, ws, ps: da.Ok(ws, ps + "!")),
        terminate(da.NORMAL, "w1"),
        ("terminate_pool", lambda reason, ps: None),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    assert pool.checkout("cmd", lambda f, c: (c, c)) == ("wrapped", "cmd")
    pool.stop()
    s.assert_drained()
    assert s.calls[-1][1] == (da.NORMAL, "ps2!")


def test_skip_from_handle_enqueue_raises_without_handle_checkout(pools: Pools) -> None:
    s = script(init("w1"), ("handle_enqueue", lambda cmd, ps: da.Skip(Boom("refused"), ps)))
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(Boom, match="refused"):
        pool.checkout("cmd", lambda f, c: (c, c))
    s.assert_drained()


def test_a_raising_handle_enqueue_raises_in_the_caller_and_the_pool_lives(pools: Pools) -> None:
    def enqueue(cmd: Any, ps: Any) -> Any:
        raise Boom("enqueue failed")

    s = script(
        init("w1"),
        ("handle_enqueue", enqueue),
        ("handle_enqueue", lambda cmd, ps: ("ok", cmd, ps)),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(Boom):
        pool.checkout("cmd", lambda f, c: (c, c))
    with pytest.raises(da.CallbackReturnError, match=r"ScriptedWorker\.handle_enqueue"):
        pool.checkout("cmd", lambda f, c: (c, c))
    assert pool.is_alive()
    s.assert_drained()


# --- Remove from handle_checkin ------------------------------------------------------------------


def test_remove_from_checkin_terminates_and_replaces_the_worker(pools: Pools) -> None:
    s = script(
        init("w1"),
        ok_checkout(),
        ("handle_checkin", lambda cs, from_, ws, ps: da.Remove(("closed", cs), ps)),
        terminate(("closed", "close"), "w1"),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    assert pool.checkout(None, lambda f, c: ("done", "close")) == "done"
    s.assert_drained()
    assert pool.status().idle == 1


# --- Async init ----------------------------------------------------------------------------------


def test_an_async_worker_is_available_only_when_its_function_returns(
    pools: Pools,
) -> None:
    ready = threading.Event()

    def slow() -> str:
        assert ready.wait(WAIT)
        return "w1"

    s = script(
        ("init_worker", lambda ps: da.Async(slow, ps)),
        ok_checkout(),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    assert pool.status().initializing == 1
    with pytest.raises(da.PoolTimeout):
        pool.checkout(None, lambda f, c: (c, c), timeout=0.02)
    waiter = Waiter(pool)
    wait_queued(pool, 1)
    ready.set()
    assert waiter.join().result == "w1"
    s.assert_drained()


def test_a_crashing_async_init_is_retried(pools: Pools) -> None:
    def crash() -> Any:
        raise Boom("async init failed")

    s = script(
        ("init_worker", lambda ps: da.Async(crash, ps)),
        ("init_worker", lambda ps: da.Async(lambda: "w2", ps)),
        ok_checkout(),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1, lazy=True)
    assert pool.checkout(None, lambda f, c: (c, c)) == "w2"
    s.assert_drained()


# --- update --------------------------------------------------------------------------------------


def test_update_calls_handle_update_and_terminate_sees_the_new_state(
    pools: Pools,
) -> None:
    s = script(
        init("w1"),
        ok_checkout(),
        ("handle_update", lambda msg, ws, ps: da.Ok((ws, msg), ps)),
        terminate("error", ("w1", "owner-changed")),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)

    def fn(from_: da.From, client_state: Any) -> tuple[Any, Any]:
        pool.update(from_, "owner-changed")
        raise Boom

    with pytest.raises(Boom):
        pool.checkout(None, fn)
    s.assert_drained()


def test_update_with_a_foreign_from_is_rejected(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1)
    other = pools.start(EchoWorker, pool_size=1)

    def foreign(from_: da.From, client_state: Any) -> tuple[Any, Any]:
        other.update(from_, "x")
        return client_state, client_state

    with pytest.raises(da.InvalidOption, match="from_"):
        pool.checkout(None, foreign)
    with pytest.raises(da.InvalidOption):
        pool.update("not a from", "x")  # type: ignore[arg-type]


def test_a_raising_handle_update_removes_the_worker_when_its_lease_ends(pools: Pools) -> None:
    def update(msg: Any, ws: Any, ps: Any) -> Any:
        raise Boom("bad update")

    def terminated(reason: Any, ws: Any, ps: Any) -> da.Ok:
        assert isinstance(reason, Boom)
        return da.Ok(ps)

    s = script(
        init("w1"),
        ok_checkout(),
        ("handle_update", update),
        ("terminate_worker", terminated),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pool.lease(None) as lease:
        lease.update("x")
        sync(pool.actor_ref)
    sync(pool.actor_ref)
    s.assert_drained()
    status = pool.status()
    assert (status.workers_removed, status.idle) == (1, 1)


# --- nothing left behind -------------------------------------------------------------------------


def test_no_monitor_is_left_after_a_successful_or_failed_checkout(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1)
    client = Holder.start(pool)
    try:
        assert client.ask("checkout", timeout=WAIT) == 1
        assert client.ask("fail", timeout=WAIT) == "failed"
        sync(pool.actor_ref)
        client_proc = client._dspex_proc  # type: ignore[attr-defined]
        pool_proc = pool.actor_ref._dspex_proc  # type: ignore[attr-defined]
        assert client_proc.monitors == {}  # the pool no longer watches the client
        assert pool_proc.watching == {}
        assert pool_proc.monitors == {}  # and nobody watches the pool on the client's behalf
        assert pool._core.inflight == {}
    finally:
        client.stop()


# --- deliberate extras ---------------------------------------------------------------------------


def test_a_non_pair_return_raises_a_clear_error_and_cancels_the_lease(pools: Pools) -> None:
    s = script(init("w1"), ok_checkout(), terminate("error", "w1"), init("w2"))
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(da.CallbackReturnError) as err:
        pool.checkout(None, lambda f, c: "just the result")  # type: ignore[arg-type,return-value]
    message = str(err.value)
    assert "Expected:\n    (result, checkin_state)" in message
    assert "Got: 'just the result'" in message
    s.assert_drained()
    assert pool.status().busy == 0


def test_a_lease_checks_in_its_checkin_state_and_cancels_on_an_exception(pools: Pools) -> None:
    s = script(
        init("w1"),
        ok_checkout(),
        ("handle_checkin", lambda cs, from_, ws, ps: da.Ok((ws, cs), ps)),
        ok_checkout(),
        cancelled("checked_out"),
        terminate("error", ("w1", "custom")),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pool.lease("cmd") as lease:
        assert lease.client_state == "w1"
        assert lease.from_.pool == pool.actor_ref
        lease.checkin_state = "custom"
    error = Boom("inside the block")
    with pytest.raises(Boom) as raised, pool.lease("cmd") as lease:
        raise error
    assert raised.value is error
    s.assert_drained()
    with pytest.raises(RuntimeError, match="only once"), lease:
        pass
    with pytest.raises(RuntimeError, match="not checked out"):
        _ = lease.client_state


def test_waiters_are_served_by_workers_checked_in_in_any_order(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=2)
    a, b = hold(pool), hold(pool)
    waiters = [Waiter(pool) for _ in range(2)]
    wait_queued(pool, 2)
    release(b)
    release(a)
    assert sorted(w.join().result for w in waiters) == [1, 2]
    assert pool.status().idle == 2


def test_a_checkout_from_inside_a_pool_callback_raises_instead_of_deadlocking(
    pools: Pools,
) -> None:
    class Reentrant(EchoWorker):
        pool: da.Pool | None = None
        error: list[BaseException] = []  # noqa: RUF012

        def handle_info(self, message: Any, worker_state: Any) -> da.Ok:
            assert self.pool is not None
            try:
                self.pool.checkout(None, lambda f, c: (c, c))
            except RuntimeError as exc:
                self.error.append(exc)
            return da.Ok(worker_state)

    pool = pools.start(Reentrant, pool_size=1)
    Reentrant.pool = pool
    pool.send_info("go")
    sync(pool.actor_ref)
    assert "would deadlock" in str(Reentrant.error[0])


def test_a_lazy_pool_whose_checkout_always_removes_does_not_loop_inside_the_pool(
    pools: Pools,
) -> None:
    """On a lazy pool, Remove from handle_checkout creates the next worker at once, but a
    worker that is removed every time is retried through the inbox, so the pool stays
    responsive (status answers) instead of spinning inside one checkout."""

    class AlwaysStale(EchoWorker):
        def handle_checkout(self, command: Any, from_: da.From, ws: Any, ps: Any) -> Any:
            return da.Remove("stale", ps)

    pool = pools.start(AlwaysStale, pool_size=2, lazy=True)
    with pytest.raises(da.PoolTimeout):
        pool.checkout(None, lambda f, c: (c, c), timeout=0.1)
    status = pool.status()  # answered: the pool is not stuck in a loop
    assert status.workers_started >= 2
    assert status.busy == 0
