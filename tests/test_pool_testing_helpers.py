"""The pool test helpers prove something: `Script` catches wrong orders, the readiness wait fails.

`ScriptedWorker` (NimblePool's StatelessPool technique), `start_test_pool` and
`wait_for_pool_ready` (which fails when the pool never gets ready, rather than always
reporting success).
"""

from __future__ import annotations

from typing import Any

import pytest

import dspex_actors as da
from dspex_actors.testing import (
    EchoWorker,
    Script,
    ScriptedWorker,
    start_test_pool,
    sync,
    wait_for_pool_ready,
)

from support.pools import Pools, init, ok_checkin, ok_checkout, script


def test_a_callback_out_of_script_order_fails_assert_drained(pools: Pools) -> None:
    s = script(init("w1"), ok_checkin(), ok_checkout())  # checkin scripted before checkout
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(da.PoolTimeout):
        # The pool's wrapper maps the ScriptError to Remove; the replacement's init_worker is
        # unscripted too, so no worker comes back.
        pool.checkout(None, lambda f, c: (c, c), timeout=0.2)
    with pytest.raises(AssertionError, match="unexpected callback handle_checkout"):
        s.assert_drained()


def test_a_script_with_steps_left_fails_assert_drained(pools: Pools) -> None:
    s = script(init("w1"), ok_checkout(), ok_checkin())
    pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(AssertionError, match=r"not drained .* still expected \['handle_checkout'"):
        s.assert_drained(timeout=0.05)


def test_an_assert_inside_a_step_is_reported_even_though_the_pool_swallows_it(
    pools: Pools,
) -> None:
    def checkout(cmd: Any, from_: da.From, ws: Any, ps: Any) -> da.Ok:
        assert cmd == "expected", "wrong command"
        return da.Ok(ws, ws, ps)

    s = script(init("w1"), ("handle_checkout", checkout))
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(da.PoolTimeout):
        pool.checkout("other", lambda f, c: (c, c), timeout=0.2)
    sync(pool.actor_ref)
    with pytest.raises(AssertionError, match="step handle_checkout failed: wrong command"):
        s.assert_drained()


def test_a_script_rejects_unknown_callback_names() -> None:
    with pytest.raises(ValueError, match="callback name"):
        Script(("handle_checkot", lambda *a: None))
    with pytest.raises(da.StartError, match="needs a Script"):
        da.Pool.start(ScriptedWorker, "not a script", pool_size=1)


def test_wait_for_pool_ready_really_polls_and_times_out(pools: Pools) -> None:
    pool = pools.start(EchoWorker, pool_size=1, lazy=True)
    with pytest.raises(TimeoutError, match=r"not ready after 0\.05s"):
        wait_for_pool_ready(pool, 0.05)
    pool.checkout(None, lambda f, c: (c, c))  # creates the lazy worker
    assert wait_for_pool_ready(pool, 1.0).idle == 1


def test_start_test_pool_takes_overrides_and_stops_the_pool() -> None:
    with start_test_pool(EchoWorker, pool_size=3, max_overflow=1) as pool:
        status = pool.status()
        assert (status.pool_size, status.max_overflow, status.idle) == (3, 1, 3)
    assert not pool.is_alive()
    assert pool.wait(1.0) is da.NORMAL
