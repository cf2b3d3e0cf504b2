"""A pool's checkout and checkin run in the caller's thread while the pool is idle.

If the pool actor is idle with an empty inbox, the calling thread runs a checkout's or a
checkin's callbacks itself, as the pool; otherwise the request is queued and the pool's thread
handles it. These tests show both paths, and that callback errors and cancellations behave
exactly as the pool documents them on either path ("inline": the pool is idle; "queued": a
`gate` holds the pool thread while the request is sent).
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

import attrs
import pytest

import dspex_actors as da
from dspex_actors.testing import gate, sync, wait_for

from support.pools import Pools

WAIT = 5.0

Mode = Literal["inline", "queued"]
MODES: tuple[Mode, ...] = ("inline", "queued")


# --- a worker that records every callback -------------------------------------------------


@attrs.frozen
class Call:
    """One callback as the spy saw it: which, with what, in which thread, as which actor."""

    kind: str
    args: tuple[Any, ...]
    thread: threading.Thread
    actor: Any

    @property
    def summary(self) -> tuple[Any, ...]:
        """Thread-independent view (exceptions by type and text), to compare two runs."""
        return (self.kind, *(_plain(a) for a in self.args))


def _plain(value: Any) -> Any:
    if isinstance(value, BaseException):
        return (type(value).__name__, str(value))
    return value


class Spy:
    """The pool state: records callbacks and says which of them misbehave."""

    def __init__(
        self,
        *,
        enqueue_error: Exception | None = None,
        checkout_raises: int = 0,
        checkout_bad: bool = False,
        checkin_error: Exception | None = None,
    ) -> None:
        self.enqueue_error = enqueue_error
        self.checkout_raises = checkout_raises  # how many handle_checkout calls raise
        self.checkout_bad = checkout_bad
        self.checkin_error = checkin_error
        self.ids = itertools.count(1)
        self._calls: list[Call] = []
        self._lock = threading.Lock()

    def add(self, kind: str, *args: Any) -> None:
        call = Call(kind, args, threading.current_thread(), da.current_actor())
        with self._lock:
            self._calls.append(call)

    def calls(self, kind: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if kind is None or c.kind == kind]

    def summary(self) -> list[tuple[Any, ...]]:
        return [c.summary for c in self.calls()]


class SpyWorker(da.PoolWorker):
    """Workers are numbered 1, 2, ...; the client state is ``("client", n)``."""

    def init_worker(self, pool_state: Any) -> da.Ok:
        spy: Spy = pool_state
        worker = next(spy.ids)
        spy.add("init", worker)
        return da.Ok(worker, spy)

    def handle_enqueue(self, command: Any, pool_state: Any) -> da.Ok:
        spy: Spy = pool_state
        spy.add("enqueue", command)
        if spy.enqueue_error is not None:
            raise spy.enqueue_error
        return da.Ok(command, spy)

    def handle_checkout(
        self, command: Any, from_: da.From, worker_state: Any, pool_state: Any
    ) -> Any:
        spy: Spy = pool_state
        spy.add("checkout", command, worker_state)
        if spy.checkout_raises > 0:
            spy.checkout_raises -= 1
            raise RuntimeError(f"worker {worker_state} cannot be checked out")
        if spy.checkout_bad:
            return ("ok", worker_state)  # not a result class
        return da.Ok(("client", worker_state), worker_state, spy)

    def handle_checkin(
        self, client_state: Any, from_: da.From, worker_state: Any, pool_state: Any
    ) -> da.Ok:
        spy: Spy = pool_state
        spy.add("checkin", client_state, worker_state)
        if spy.checkin_error is not None:
            raise spy.checkin_error
        return da.Ok(worker_state, spy)

    def handle_cancelled(self, context: Literal["queued", "checked_out"], pool_state: Any) -> None:
        spy: Spy = pool_state
        spy.add("cancelled", context)

    def terminate_worker(self, reason: Any, worker_state: Any, pool_state: Any) -> da.Ok:
        spy: Spy = pool_state
        spy.add("terminate", reason, worker_state)
        return da.Ok(spy)


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def running() -> Iterator[Pools]:
    started = Pools()
    try:
        yield started
    finally:
        started.close()


def pool_thread(pool: da.Pool) -> threading.Thread:
    thread = pool.actor_ref._dspex_proc.thread  # type: ignore[attr-defined]
    assert isinstance(thread, threading.Thread)
    return thread


def settle(pool: da.Pool) -> None:
    """Wait until the pool is idle: everything sent has been handled, its exec lock is free.

    Two barriers: a request handled before the first one may have queued a follow-up (a
    replacement worker's `_InitWorker`) behind it. The lock is released just after the
    barrier's reply is set, so wait for that too: only then does the next request run inline.
    """
    sync(pool.actor_ref)
    sync(pool.actor_ref)
    proc = pool.actor_ref._dspex_proc  # type: ignore[attr-defined]
    wait_for(lambda: not proc.exec_lock.locked(), WAIT)
    assert queued_count(pool) == 0


class Outcome:
    """Runs `body()` in a plain thread (named ``test-caller``) and records what happened."""

    def __init__(self, body: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.actor_after: Any = "not run"
        self.thread = threading.Thread(target=self._run, args=(body,), name="test-caller")
        self.thread.start()

    def _run(self, body: Callable[[], Any]) -> None:
        try:
            self.result = body()
        except BaseException as exc:
            self.error = exc
        self.actor_after = da.current_actor()

    def join(self) -> Outcome:
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the caller did not finish in time"
        return self


def queued_count(pool: da.Pool) -> int:
    """Messages waiting in the pool's inbox (not counting the one being handled)."""
    inbox = pool.actor_ref.actor_inbox
    assert isinstance(inbox, queue.Queue)
    return inbox.qsize()


def run_checkout(
    pool: da.Pool,
    mode: Mode,
    command: Any = "cmd",
    fn: Callable[[da.From, Any], tuple[Any, Any]] | None = None,
) -> Outcome:
    """`pool.checkout(command, fn)` from a plain thread, with the pool idle or gated."""
    body = fn or (lambda from_, client_state: (client_state, client_state))

    def call() -> Any:
        return pool.checkout(command, body, timeout=WAIT)

    settle(pool)
    if mode == "inline":
        return Outcome(call).join()
    with gate(pool.actor_ref):
        outcome = Outcome(call)
        wait_for(lambda: queued_count(pool) == 1, WAIT)  # sent, not run inline
    return outcome.join()


def same_error(a: BaseException | None, b: BaseException | None) -> bool:
    return type(a) is type(b) and str(a) == str(b)


# --- inline while idle ---------------------------------------------------------------------------


def test_an_idle_pool_runs_checkout_and_checkin_callbacks_in_the_calling_thread(
    running: Pools,
) -> None:
    """From a plain thread, every callback runs in that thread, as the pool's actor."""
    spy = Spy()
    pool = running.start(SpyWorker, spy, pool_size=1)
    seen_in_fn: list[Any] = []

    def fn(from_: da.From, client_state: Any) -> tuple[Any, Any]:
        seen_in_fn.append(da.current_actor())
        return ("result", client_state), "checkin-state"

    outcome = Outcome(lambda: pool.checkout("cmd", fn, timeout=WAIT)).join()
    assert outcome.error is None
    assert outcome.result == ("result", ("client", 1))
    # The checkin ran before checkout returned: no settle needed to see it.
    calls = spy.calls()
    assert [c.summary for c in calls if c.kind != "init"] == [
        ("enqueue", "cmd"),
        ("checkout", "cmd", 1),
        ("checkin", "checkin-state", 1),
    ]
    for call in calls:
        if call.kind != "init":
            assert call.thread is outcome.thread, call
            assert call.actor == pool.actor_ref, call
    # The caller's own identity is untouched: fn ran as a plain thread, and so did the rest.
    assert seen_in_fn == [None]
    assert outcome.actor_after is None


def test_a_lease_from_the_test_thread_is_checked_in_before_the_with_block_ends(
    running: Pools,
) -> None:
    """The same for a `Lease` used from the main thread."""
    spy = Spy()
    pool = running.start(SpyWorker, spy, pool_size=1)
    me = threading.current_thread()
    with pool.lease("lease") as lease:
        assert lease.client_state == ("client", 1)
        assert [c.summary for c in spy.calls("checkout")] == [("checkout", "lease", 1)]
        lease.checkin_state = "done"
    checkins = spy.calls("checkin")
    assert [c.summary for c in checkins] == [("checkin", "done", 1)]
    assert checkins[0].thread is me
    assert checkins[0].actor == pool.actor_ref
    assert spy.calls("checkout")[0].thread is me
    assert da.current_actor() is None
    assert pool.status().idle == 1


# --- queued while busy ---------------------------------------------------------------------------


def test_a_busy_pool_serves_the_checkout_from_its_own_thread_once_released(
    running: Pools,
) -> None:
    """With the pool thread held by a gate, the checkout waits, then completes there."""
    spy = Spy()
    pool = running.start(SpyWorker, spy, pool_size=1)
    with gate(pool.actor_ref):
        outcome = Outcome(lambda: pool.checkout("held", lambda f, cs: (cs, "back"), timeout=WAIT))
        wait_for(lambda: queued_count(pool) == 1, WAIT)
        assert spy.calls("enqueue") == []  # not run inline: the pool is busy
        assert outcome.thread.is_alive()
    outcome.join()
    assert outcome.error is None
    assert outcome.result == ("client", 1)
    settle(pool)
    enqueue, checkout = spy.calls("enqueue")[0], spy.calls("checkout")[0]
    assert enqueue.thread is pool_thread(pool)
    assert checkout.thread is pool_thread(pool)
    assert checkout.actor == pool.actor_ref
    # The checkin may have run inline or not (the pool may still have been finishing): either
    # way it ran as the pool.
    (checkin,) = spy.calls("checkin")
    assert checkin.summary == ("checkin", "back", 1)
    assert checkin.actor == pool.actor_ref
    assert pool.status().idle == 1


def test_a_checkin_sent_while_the_pool_is_busy_is_handled_by_the_pool_thread(
    running: Pools,
) -> None:
    """A lease ending while the pool is gated is queued, then checked in there."""
    spy = Spy()
    pool = running.start(SpyWorker, spy, pool_size=1)
    lease = pool.lease("cmd")
    lease.__enter__()
    with gate(pool.actor_ref):
        lease.__exit__(None, None, None)  # does not wait for the pool
        assert queued_count(pool) == 1
        assert spy.calls("checkin") == []
    settle(pool)
    (checkin,) = spy.calls("checkin")
    assert checkin.thread is pool_thread(pool)
    assert checkin.actor == pool.actor_ref
    assert pool.status().idle == 1


# --- callback errors, inline and queued ----------------------------------------------------------


def test_handle_enqueue_raising_is_raised_in_the_caller_on_both_paths(
    running: Pools,
) -> None:
    """ "the caller's checkout raises that exception; the pool carries on"."""
    outcomes: dict[Mode, tuple[BaseException | None, list[tuple[Any, ...]]]] = {}
    for mode in MODES:
        error = ValueError("enqueue refused")
        spy = Spy(enqueue_error=error)
        pool = running.start(SpyWorker, spy, pool_size=1)
        outcome = run_checkout(pool, mode)
        assert outcome.error is error  # the very exception, not a wrapper
        (enqueue,) = spy.calls("enqueue")
        expected = outcome.thread if mode == "inline" else pool_thread(pool)
        assert enqueue.thread is expected
        assert pool.is_alive()
        settle(pool)
        status = pool.status()
        assert (status.idle, status.busy, status.workers_removed) == (1, 0, 0)
        spy.enqueue_error = None
        assert run_checkout(pool, mode).result == ("client", 1)  # still serving
        settle(pool)
        outcomes[mode] = (outcome.error, spy.summary())
    assert same_error(outcomes["inline"][0], outcomes["queued"][0])
    assert outcomes["inline"][1] == outcomes["queued"][1]


def test_handle_checkout_raising_removes_the_worker_and_the_caller_gets_the_next(
    running: Pools,
) -> None:
    """ "logged and treated as Remove(exception)": the caller does not notice."""
    summaries: dict[Mode, list[tuple[Any, ...]]] = {}
    for mode in MODES:
        spy = Spy(checkout_raises=1)
        pool = running.start(SpyWorker, spy, pool_size=1)
        outcome = run_checkout(pool, mode)
        assert outcome.error is None
        assert outcome.result == ("client", 2)
        first = spy.calls("checkout")[0]
        assert first.thread is (outcome.thread if mode == "inline" else pool_thread(pool))
        settle(pool)
        (terminate,) = spy.calls("terminate")
        assert terminate.args[1] == 1
        assert isinstance(terminate.args[0], RuntimeError)
        assert pool.is_alive()
        status = pool.status()
        assert (status.idle, status.workers_started, status.workers_removed) == (1, 2, 1)
        summaries[mode] = spy.summary()
    assert summaries["inline"] == summaries["queued"]
    assert summaries["inline"] == [
        ("init", 1),
        ("enqueue", "cmd"),
        ("checkout", "cmd", 1),
        ("terminate", ("RuntimeError", "worker 1 cannot be checked out"), 1),
        ("init", 2),
        ("checkout", "cmd", 2),
        ("checkin", ("client", 2), 2),
    ]


def test_an_invalid_handle_checkout_return_is_a_callback_return_error_in_the_caller(
    running: Pools,
) -> None:
    """ "the worker is removed and the caller raises CallbackReturnError"."""
    errors: dict[Mode, BaseException | None] = {}
    for mode in MODES:
        spy = Spy(checkout_bad=True)
        pool = running.start(SpyWorker, spy, pool_size=1)
        outcome = run_checkout(pool, mode)
        assert isinstance(outcome.error, da.CallbackReturnError)
        (checkout,) = spy.calls("checkout")
        assert checkout.thread is (outcome.thread if mode == "inline" else pool_thread(pool))
        assert outcome.actor_after is None
        settle(pool)
        assert [c.summary[0] for c in spy.calls("terminate")] == ["terminate"]
        assert isinstance(spy.calls("terminate")[0].args[0], da.CallbackReturnError)
        assert pool.is_alive()
        status = pool.status()
        assert (status.idle, status.busy, status.workers_removed) == (1, 0, 1)
        errors[mode] = outcome.error
    assert same_error(errors["inline"], errors["queued"])


def test_handle_checkin_raising_removes_the_worker_and_keeps_the_result(
    running: Pools,
) -> None:
    """ "logged and treated as Remove(exception)"; the checkout result stands."""
    summaries: dict[Mode, list[tuple[Any, ...]]] = {}
    for mode in MODES:
        spy = Spy(checkin_error=OSError("cannot take it back"))
        pool = running.start(SpyWorker, spy, pool_size=1)
        settle(pool)
        lease = pool.lease("cmd")
        lease.__enter__()
        if mode == "inline":
            settle(pool)
            lease.__exit__(None, None, None)
            assert spy.calls("checkin")[0].thread is threading.current_thread()
        else:
            with gate(pool.actor_ref):
                lease.__exit__(None, None, None)
                assert spy.calls("checkin") == []
        settle(pool)
        (checkin,) = spy.calls("checkin")
        assert checkin.actor == pool.actor_ref
        (terminate,) = spy.calls("terminate")
        assert terminate.args[0] is spy.checkin_error
        assert pool.is_alive()
        status = pool.status()
        assert (status.idle, status.workers_removed) == (1, 1)
        spy.checkin_error = None
        assert run_checkout(pool, mode).result == ("client", 2)  # the replacement, kept
        settle(pool)
        assert pool.status().workers_removed == 1
        summaries[mode] = spy.summary()
    assert summaries["inline"] == summaries["queued"]


# --- cancellation --------------------------------------------------------------------------------


def _cancel_case(pool: da.Pool, spy: Spy, error: BaseException, use_lease: bool) -> tuple[Any, ...]:
    """Check worker 1 out inline, raise `error` in the body, then check out again at once."""
    settle(pool)

    def fail() -> None:
        if use_lease:
            with pool.lease("doomed"):
                raise error
        pool.checkout("doomed", lambda from_, client_state: _raise(error), timeout=WAIT)

    with pytest.raises(type(error)) as info:
        fail()
    assert info.value is error  # propagates unchanged
    # Sent right behind the cancel (inline only if the pool has handled it already): FIFO, so
    # it never sees worker 1.
    result = pool.checkout("next", lambda from_, cs: (cs, cs), timeout=WAIT)
    settle(pool)
    return tuple(result)


def _raise(error: BaseException) -> tuple[Any, Any]:
    raise error


@pytest.mark.parametrize(
    ("error", "reason", "use_lease"),
    [
        (ValueError("body failed"), "error", True),
        (KeyboardInterrupt(), "exit", True),
        (RuntimeError("fn failed"), "error", False),
    ],
    ids=["lease-exception", "lease-keyboard-interrupt", "checkout-fn-exception"],
)
def test_a_lease_whose_body_raises_removes_the_worker_as_before(
    running: Pools, error: BaseException, reason: str, use_lease: bool
) -> None:
    """handle_cancelled("checked_out"), terminate_worker(reason), never a checkin; the
    next checkout gets a new worker, and an ordinary lease is then checked in inline."""
    spy = Spy()
    pool = running.start(SpyWorker, spy, pool_size=1)
    assert _cancel_case(pool, spy, error, use_lease) == ("client", 2)
    kinds = [c.summary for c in spy.calls()]
    assert ("cancelled", "checked_out") in kinds
    assert ("terminate", reason, 1) in kinds
    assert kinds.index(("terminate", reason, 1)) < kinds.index(("checkout", "next", 2))
    assert [c.summary for c in spy.calls("checkin")] == [("checkin", ("client", 2), 2)]
    assert spy.calls("checkout")[0].thread is threading.current_thread()  # was inline
    status = pool.status()
    assert (status.idle, status.busy, status.workers_removed) == (1, 0, 1)
    # The inline checkin path is unaffected: an ordinary lease now keeps its worker.
    settle(pool)
    with pool.lease("fine"):
        pass
    last = spy.calls("checkin")[-1]
    assert last.summary == ("checkin", ("client", 2), 2)
    assert last.thread is threading.current_thread()
    assert pool.status().workers_removed == 1


def test_a_pool_still_answers_after_a_cancel_sent_while_it_was_busy(
    running: Pools,
) -> None:
    """The cancel queued behind a gate is handled in order with what follows it."""
    spy = Spy()
    pool = running.start(SpyWorker, spy, pool_size=2)
    settle(pool)
    lease = pool.lease("doomed")
    lease.__enter__()
    assert lease.client_state == ("client", 1)
    error = ValueError("late failure")
    with gate(pool.actor_ref):
        lease.__exit__(type(error), error, None)  # the cancel is queued
        later = Outcome(lambda: pool.checkout("after", lambda f, cs: (cs, cs), timeout=WAIT))
        wait_for(lambda: queued_count(pool) == 2, WAIT)
    later.join()
    assert later.error is None
    assert later.result == ("client", 2)  # worker 2 was idle; worker 1 is gone
    settle(pool)
    summaries = [c.summary for c in spy.calls()]
    assert summaries.index(("cancelled", "checked_out")) < summaries.index(("checkout", "after", 2))
    assert ("terminate", "error", 1) in summaries
    assert pool.status().workers_removed == 1


def test_a_checkin_with_a_caller_waiting_is_left_to_the_pool_thread(
    running: Pools,
) -> None:
    """A checkin that must also serve a waiter is declined inline and sent: the pool
    thread runs handle_checkin and hands the worker to the waiter."""
    spy = Spy()
    pool = running.start(SpyWorker, spy, pool_size=1)
    lease = pool.lease("first")
    lease.__enter__()
    waiter = Outcome(lambda: pool.checkout("second", lambda f, cs: (cs, "w"), timeout=WAIT))
    wait_for(lambda: pool.status().queued == 1, WAIT)
    settle(pool)  # idle: only the decline keeps this checkin off the calling thread
    lease.__exit__(None, None, None)
    waiter.join()
    assert waiter.error is None
    assert waiter.result == ("client", 1)
    settle(pool)
    first_checkin, second_checkin = spy.calls("checkin")
    assert first_checkin.summary == ("checkin", ("client", 1), 1)
    assert first_checkin.thread is pool_thread(pool)
    assert first_checkin.actor == pool.actor_ref
    checkouts = spy.calls("checkout")
    assert [c.summary for c in checkouts] == [("checkout", "first", 1), ("checkout", "second", 1)]
    assert checkouts[1].thread is pool_thread(pool)
    assert second_checkin.summary == ("checkin", "w", 1)


# --- a checkout that is out of time --------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_timeout_zero_is_pool_timeout_on_both_paths_and_the_worker_stays_idle(
    running: Pools, mode: Mode
) -> None:
    """A checkout whose deadline has passed when the pool handles it is dropped, as
    NimblePool does, and its caller gets `PoolTimeout`: inline (nothing to wait for, so no
    lock is ever made) and queued (the caller gives up on its lock) alike."""
    spy = Spy()
    pool = running.start(SpyWorker, spy, pool_size=1)

    def call() -> Any:
        return pool.checkout("late", lambda f, cs: (cs, cs), timeout=0)

    settle(pool)
    if mode == "inline":
        outcome = Outcome(call).join()
    else:
        with gate(pool.actor_ref):
            outcome = Outcome(call).join()
    assert isinstance(outcome.error, da.PoolTimeout)
    settle(pool)
    assert spy.calls("checkout") == []
    status = pool.status()
    assert (status.idle, status.busy, status.queued) == (1, 0, 0)
    # And the pool serves the next caller as usual.
    assert pool.checkout("next", lambda f, cs: (cs, "ok"), timeout=WAIT) == ("client", 1)
