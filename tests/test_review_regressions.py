"""Regression tests for bugs found in review (actor core, supervisors, pools, registry).

Each test names the correct behaviour; each failed before its fix.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors import From, Keys, Ok, Pool, PoolWorker, Registry
from dspex_actors._clock import SystemClock
from dspex_actors.testing import kill_and_wait, start_test_pool


class Echo(da.Actor):
    """Answers every ask with the message."""

    def on_receive(self, message: Any) -> Any:
        return message


# --- Registry ---------------------------------------------------------------------------------


def test_register_succeeds_and_is_cleaned_up_when_a_listener_has_already_exited() -> None:
    """REG-10: a listener that is gone is skipped; it must not fail (or half-do) a register."""
    listener = Echo.start()
    listener.stop()
    reg = Registry.start(Keys.UNIQUE, listeners=[listener])
    member = Echo.start()
    try:
        reg.register("k", member)
        assert reg.whereis("k") is member
        reg.unregister("k", member)
        assert reg.count() == 0
        reg.register("k", member)
    finally:
        member.stop()
    assert da.wait_exit(member) is da.NORMAL
    # The entry was monitored like any other: it vanished with its actor.
    assert reg.count() == 0
    reg.stop()


# --- Pool -------------------------------------------------------------------------------------


def test_pool_from_ref_refuses_the_ref_of_an_actor_that_is_not_a_pool() -> None:
    """`ActorHandle.from_ref` promises a TypeError for a ref of the wrong kind of actor."""
    other = Echo.start()
    try:
        with pytest.raises(TypeError, match="Pool"):
            Pool.from_ref(other)
    finally:
        other.stop()


def test_pool_from_ref_accepts_the_ref_of_a_running_pool() -> None:
    """The TypeError check must not refuse a real pool."""
    with start_test_pool(pool_size=1) as pool:
        again = Pool.from_ref(pool.actor_ref)
        assert again.checkout("x", lambda _from, state: (state, state)) == 1


@pytest.mark.parametrize("forever", [float("inf"), 1e300])
def test_a_checkout_with_an_infinite_timeout_waits_like_none_and_checks_its_worker_in(
    forever: float,
) -> None:
    """`timeout=inf` means "wait forever". The lock wait used to raise OverflowError after the
    request was sent, so the pool granted a worker to a caller that had gone: it stayed busy
    for good."""
    with start_test_pool(pool_size=1) as pool:
        assert pool.checkout("x", lambda _from, state: (state, state), timeout=forever) == 1
        with pool.lease("x", timeout=forever) as lease:
            assert lease.client_state == 1
        status = pool.status()
        assert (status.busy, status.idle, status.workers_removed) == (0, 1, 0)


# --- Supervisor -------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_shutdown_time_beyond_the_os_wait_limit_stops_the_child_like_a_long_timeout(
    dynamic: bool,
) -> None:
    """SUP shutdown protocol: `shutdown=1e10` (finite, so valid) is just a long wait; it used to
    raise OverflowError in the supervisor's `on_stop`, leaving the child running."""
    spec = Echo.child_spec(id="echo", shutdown=1e10)
    child: Any
    sup: da.Supervisor | da.DynamicSupervisor
    if dynamic:
        sup = da.DynamicSupervisor.start()
        child = sup.start_child(spec)
    else:
        sup = da.Supervisor.start([spec])
        child = sup.which_children()[0].ref
    assert isinstance(child, type(sup.actor_ref))
    sup.stop(timeout=10)
    assert da.wait_exit(child, 10) is da.SHUTDOWN
    assert sup.wait(10) is da.SHUTDOWN


# --- Clock ------------------------------------------------------------------------------------


def test_a_timer_too_far_away_to_wait_on_does_not_kill_the_shared_timer_thread() -> None:
    """`call_later(1e12)` (e.g. a pool's huge `worker_idle_timeout`) made the timer thread's
    wait raise OverflowError: the thread died while marked running, and no timer of any pool
    fired again."""
    clock = SystemClock()
    far = threading.Event()
    huge = clock.call_later(1e12, far.set)
    near = threading.Event()
    clock.call_later(0.0, near.set)
    assert near.wait(5)
    thread = clock._thread
    assert thread is not None
    thread.join(0.5)  # bounded: with the bug it dies at once; fixed, it waits for `huge`
    assert thread.is_alive()
    later = threading.Event()
    clock.call_later(0.0, later.set)
    assert later.wait(5)
    huge.cancel()  # the only timer left: the thread exits
    thread.join(5)
    assert not thread.is_alive()
    assert not far.is_set()


# --- Pool under a supervisor that is killed ----------------------------------------------------


class Recording(PoolWorker):
    """Workers numbered 1, 2, ...; every terminate callback is recorded in `init_arg`."""

    def init_pool(self, init_arg: Any) -> Ok:
        return Ok(init_arg)

    def init_worker(self, pool_state: Any) -> Ok:
        pool_state["n"] += 1
        return Ok(pool_state["n"], pool_state)

    def handle_checkout(self, command: Any, from_: From, worker_state: Any, pool_state: Any) -> Ok:
        return Ok(worker_state, worker_state, pool_state)

    def terminate_worker(self, reason: Any, worker_state: Any, pool_state: Any) -> Ok:
        pool_state["terminated"].append((worker_state, reason))
        return Ok(pool_state)

    def terminate_pool(self, reason: Any, pool_state: Any) -> None:
        pool_state["pool_terminated"].append(reason)


def test_a_pool_whose_parent_is_killed_still_terminates_its_idle_workers() -> None:
    """NimblePool traps exits: its parent's `killed` exit signal runs `terminate/2`, which
    terminates every idle worker. The pool used to exit with KILLED and run no cleanup, leaking
    every worker's resource (for a `ProcessPool`, its OS processes)."""
    record: dict[str, Any] = {"n": 0, "terminated": [], "pool_terminated": []}
    sup = da.Supervisor.start([Pool.child_spec(Recording, record, pool_size=2)])
    pool_ref = sup.which_children()[0].ref
    assert isinstance(pool_ref, type(sup.actor_ref))
    assert kill_and_wait(sup.actor_ref) is da.KILLED
    assert da.wait_exit(pool_ref) is da.KILLED
    assert sorted(record["terminated"], key=repr) == [(1, da.KILLED), (2, da.KILLED)]
    assert record["pool_terminated"] == [da.KILLED]


# --- Actor core: "forever" spelled as a huge number ---------------------------------------------


@pytest.mark.parametrize("forever", [float("inf"), 1e300])
def test_a_handle_call_with_an_infinite_timeout_waits_like_none(forever: float) -> None:
    """`timeout=inf` means "wait forever"; it used to raise OverflowError *after* the call was
    sent (a `start_child` then started a child the caller was told had failed)."""
    sup = da.Supervisor.start([])
    child = sup.start_child(Echo.child_spec(id="echo"), timeout=forever)
    assert [info.ref for info in sup.which_children(timeout=forever)] == [child]
    sup.stop(timeout=forever)
    assert da.wait_exit(sup.actor_ref, forever) is da.SHUTDOWN


class PatientStart(da.Actor):
    """Waits for its `on_start` as long as it takes (`start_timeout = inf`)."""

    start_timeout = float("inf")

    def on_start(self) -> None:
        # Still running when start() begins to wait (nobody sets this event: a bounded hold).
        threading.Event().wait(0.3)


def test_an_infinite_start_timeout_waits_for_on_start_like_none() -> None:
    """`start_timeout = inf` used to raise OverflowError out of `start()`, leaving the actor
    running with nobody holding its ref."""
    ref = PatientStart.start()
    assert ref.is_alive()
    ref.stop()
    assert da.wait_exit(ref) is da.NORMAL
