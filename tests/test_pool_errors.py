"""Raising callbacks and invalid returns: logged, mapped, and the pool lives.

Also: a `handle_checkout` returning ``("error", reason)`` gets a hint to return
``Remove(("checkout_failed", reason), pool_state)``; timeout errors say how long in a few
digits.
"""

from __future__ import annotations

from typing import Any

import pytest

import dspex_actors as da
from dspex_actors.testing import FakeClock, ScriptedWorker, sync

from support.pools import Pools, init, ok_checkin, ok_checkout, script, terminate


class Boom(RuntimeError):
    pass


def raises(*_args: Any) -> Any:
    raise Boom("callback failed")


def terminate_with_boom() -> tuple[str, Any]:
    def step(reason: Any, ws: Any, ps: Any) -> da.Ok:
        assert isinstance(reason, Boom), f"terminate_worker got {reason!r}"
        return da.Ok(ps)

    return ("terminate_worker", step)


# --- a raising callback is treated as Remove(exception) ------------------------------------------


def test_a_raising_handle_checkout_removes_the_worker_and_serves_a_replacement(
    pools: Pools, records: Any
) -> None:
    s = script(
        init("w1"),
        ("handle_checkout", raises),
        terminate_with_boom(),
        init("w2"),
        ok_checkout(),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    assert pool.checkout(None, lambda f, c: (c, c)) == "w2"
    s.assert_drained()
    errors = records.of("pool_callback_error")
    assert [r["callback"] for r in errors] == ["ScriptedWorker.handle_checkout"]
    assert "Boom('callback failed')" in errors[0]["reason"]


def test_a_raising_handle_checkin_removes_and_replaces_the_worker(pools: Pools) -> None:
    s = script(
        init("w1"), ok_checkout(), ("handle_checkin", raises), terminate_with_boom(), init("w2")
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    assert pool.checkout(None, lambda f, c: (c, c)) == "w1"
    s.assert_drained()
    assert pool.is_alive()
    assert pool.status().idle == 1


def test_a_raising_handle_info_removes_and_replaces_the_worker(pools: Pools) -> None:
    s = script(init("w1"), ("handle_info", raises), terminate_with_boom(), init("w2"))
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    pool.send_info("hello")
    s.assert_drained()
    assert pool.is_alive()


def test_a_raising_handle_ping_removes_and_replaces_the_worker(pools: Pools) -> None:
    clock = FakeClock()
    s = script(init("w1"), ("handle_ping", raises), terminate_with_boom(), init("w2"))
    pool = pools.start(ScriptedWorker, s, pool_size=1, worker_idle_timeout=1.0, clock=clock)
    clock.advance(1.0)
    sync(pool.actor_ref)
    s.assert_drained()
    assert pool.is_alive()


# --- invalid handle_checkout returns -------------------------------------------------------------


def test_an_invalid_checkout_return_raises_in_the_caller_and_removes_the_worker(
    pools: Pools, records: Any
) -> None:
    def bad_return(reason: Any, ws: Any, ps: Any) -> da.Ok:
        assert isinstance(reason, da.CallbackReturnError)
        return da.Ok(ps)

    s = script(
        init("w1"),
        ("handle_checkout", lambda cmd, from_, ws, ps: ("ok", ws, ws, ps)),
        ("terminate_worker", bad_return),
        init("w2"),
        ok_checkout(),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(da.CallbackReturnError) as err:
        pool.checkout(None, lambda f, c: (c, c))
    assert str(err.value) == (
        "unexpected return from ScriptedWorker.handle_checkout.\n\n"
        "Expected:\n"
        "    Ok(client_state, worker_state, pool_state)\n"
        "    Remove(reason, pool_state)\n"
        "    Skip(error, pool_state)\n\n"
        "Got: ('ok', 'w1', 'w1', None)\n\n"
        "Hint: return the result class Ok(...), not a tuple"
    )
    assert err.value.callback == "ScriptedWorker.handle_checkout"
    # The pool lives on (deliberately better than NimblePool, which crashes).
    assert pool.checkout(None, lambda f, c: (c, c)) == "w2"
    s.assert_drained()
    assert records.of("pool_callback_invalid_return")


def test_an_error_tuple_from_checkout_gets_the_remove_checkout_failed_hint(
    pools: Pools,
) -> None:
    s = script(
        init("w1"),
        ("handle_checkout", lambda cmd, from_, ws, ps: ("error", "port_closed")),
        ("terminate_worker", lambda reason, ws, ps: da.Ok(ps)),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(da.CallbackReturnError) as err:
        pool.checkout(None, lambda f, c: (c, c))
    assert "Got: ('error', 'port_closed')" in str(err.value)
    assert "return Remove(('checkout_failed', 'port_closed'), pool_state)" in str(err.value)
    s.assert_drained()


def test_remove_checkout_failed_is_served_transparently(pools: Pools) -> None:
    """A worker returning Remove(("checkout_failed", reason)) is replaced; the caller never
    notices."""
    s = script(
        init("w1"),
        ("handle_checkout", lambda cmd, from_, ws, ps: da.Remove(("checkout_failed", "x"), ps)),
        terminate(("checkout_failed", "x"), "w1"),
        init("w2"),
        ok_checkout(),
        ok_checkin(),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    assert pool.checkout(None, lambda f, c: (c, c)) == "w2"
    s.assert_drained()


@pytest.mark.parametrize(
    "bad",
    [
        da.Ok("only", "two"),
        da.Remove("no pool state"),
        da.Skip("not an exception", None),  # type: ignore[arg-type]
        None,
    ],
)
def test_every_wrong_shape_from_checkout_is_rejected(pools: Pools, bad: Any) -> None:
    s = script(
        init("w1"),
        ("handle_checkout", lambda cmd, from_, ws, ps: bad),
        ("terminate_worker", lambda reason, ws, ps: da.Ok(ps)),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    with pytest.raises(da.CallbackReturnError, match=r"Got: "):
        pool.checkout(None, lambda f, c: (c, c))
    s.assert_drained()


def test_an_invalid_checkin_return_is_logged_and_removes_the_worker(
    pools: Pools, records: Any
) -> None:
    s = script(
        init("w1"),
        ok_checkout(),
        ("handle_checkin", lambda cs, from_, ws, ps: da.Ok(ws)),
        ("terminate_worker", lambda reason, ws, ps: da.Ok(ps)),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    pool.checkout(None, lambda f, c: (c, c))
    s.assert_drained()
    [record] = records.of("pool_callback_invalid_return")
    assert record["callback"] == "ScriptedWorker.handle_checkin"
    assert "Ok(worker_state, pool_state)" in record["message"]


# --- handle_ping / terminate_worker invalid returns, terminate_worker raising --------------------


def test_an_invalid_handle_ping_return_is_reported_and_removes_the_worker(
    pools: Pools, records: Any
) -> None:
    clock = FakeClock()
    s = script(
        init("w1"),
        ("handle_ping", lambda ws, ps: "pong"),
        ("terminate_worker", lambda reason, ws, ps: da.Ok(ps)),
        init("w2"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1, worker_idle_timeout=5.0, clock=clock)
    clock.advance(5.0)
    sync(pool.actor_ref)
    s.assert_drained()
    [record] = records.of("pool_callback_invalid_return")
    assert record["message"].startswith("unexpected return from ScriptedWorker.handle_ping.")
    assert (
        "Expected:\n    Ok(worker_state)\n    Remove(reason)\n    Stop(reason)"
        in (record["message"])
    )
    assert pool.is_alive()


def test_a_raising_or_invalid_terminate_worker_is_logged_and_discarded(
    pools: Pools, records: Any
) -> None:
    s = script(
        ("init_pool", lambda arg: da.Ok("ps0")),
        init("w1"),
        ok_checkout(),
        ("handle_checkin", lambda cs, from_, ws, ps: da.Remove("first", ps)),
        ("terminate_worker", raises),
        init("w2"),
        ok_checkout(),
        ("handle_checkin", lambda cs, from_, ws, ps: da.Remove("second", ps)),
        ("terminate_worker", lambda reason, ws, ps: "done"),
        init("w3"),
    )
    pool = pools.start(ScriptedWorker, s, pool_size=1)
    assert pool.checkout(None, lambda f, c: (c, c)) == "w1"
    assert pool.checkout(None, lambda f, c: (c, c)) == "w2"
    s.assert_drained()
    # The pool state was left unchanged by both (init_worker still sees "ps0").
    assert s.calls[-1][1] == ("ps0",)
    assert [r["callback"] for r in records.of("pool_callback_error")] == [
        "ScriptedWorker.terminate_worker"
    ]
    [bad] = records.of("pool_callback_invalid_return")
    assert "Expected:\n    Ok(pool_state)" in bad["message"]
    assert pool.status().workers_removed == 2


@pytest.mark.parametrize(
    ("timeout", "said"),
    [
        (0.9824948239984224, "timed out after 0.982s"),  # what remained of a deadline
        (0.49996894400101155, "timed out after 0.5s"),
        (5, "timed out after 5s"),
        (1234567.5, "timed out after 1234568s"),
        (None, "timed out"),  # not known: nothing made up ("after Nones")
    ],
)
def test_timeouts_are_said_in_a_few_digits(timeout: float | None, said: str) -> None:
    assert str(da.CallTimeout("#Port<1>", "send", timeout)).endswith(said)
    assert str(da.PoolTimeout("pool", timeout)).endswith(said)
    assert da.CallTimeout("#Port<1>", "send", timeout).timeout == timeout  # kept exact
