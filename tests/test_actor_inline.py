"""`run_inline`: a thread handles one message in an idle actor's place.

The actor loop dequeues and handles each message while holding `proc.exec_lock`; a thread
that takes that lock (without blocking) and finds the inbox empty may run a handler itself,
exactly as if the message had been queued. These tests pin down when it may (idle, started,
not exiting) and when it must refuse (busy, messages queued, starting, exiting, exited), and
what a handler's exception, `KeyboardInterrupt` or `exit(reason)` does to the actor.

Every wait is bounded and synchronised on events, `sync` or `gate`; nothing sleeps.

White-box: `run_inline` is internal (the pool's inline checkout is its public face, see
test_pool_inline.py), so this file imports `dspex_actors._actor` for it and for the actor's
`_Proc` (its exec lock and `started` event) and `_Inbox`, to put a message in the inbox with no
one handling it and to hold an actor between its `on_start` and its start's answer.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pykka
import pytest
from pykka._envelope import Envelope

import dspex_actors as da
from dspex_actors._actor import _Inbox, _Proc, run_inline
from dspex_actors.testing import gate, sync, wait_for

WAIT = 5.0


# --- helpers ---------------------------------------------------------------------------------


@attrs.frozen
class Block:
    """Tell it to a `Box`: it sets `entered`, then waits (bounded) for `release`."""

    entered: threading.Event
    release: threading.Event


@attrs.frozen
class Append:
    """Tell it to a `Box` (or run it inline): it appends `item` to the box's log."""

    item: Any


@attrs.frozen
class ExitWith:
    """Run it inline in a `Box`: calls `self.exit(reason)`, then appends "after exit"."""

    reason: Any


@attrs.frozen
class Crash:
    """Run it inline in a `Box`: raises `error`."""

    error: BaseException


class Box(da.Actor):
    """An actor with a log shared with the test; records which cleanup hook ran."""

    def __init__(
        self,
        log: list[Any],
        stop_entered: threading.Event | None = None,
        stop_release: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.log = log
        self.stop_entered = stop_entered
        self.stop_release = stop_release

    def on_receive(self, message: Any) -> Any:
        match message:
            case Block(entered, release):
                entered.set()
                assert release.wait(WAIT), "the test never released the block"
            case Append(item):
                self.log.append(item)
            case ExitWith(reason):
                self.exit(reason)
                self.log.append("after exit")
            case Crash(error):
                raise error
            case "log":
                return list(self.log)
        return None

    def on_stop(self) -> None:
        self.log.append(("on_stop", self.exit_reason))
        if self.stop_entered is not None and self.stop_release is not None:
            self.stop_entered.set()
            assert self.stop_release.wait(WAIT), "the test never released on_stop"

    def on_failure(self, *exc_info: Any) -> None:
        self.log.append(("on_failure", self.exit_reason))


class Caller(da.Actor):
    """Runs `run_inline` on another actor from inside its own handler (an ask)."""

    def on_receive(self, message: Any) -> Any:
        proc, handler, payload = message
        before = da.current_actor()
        ran = run_inline(proc, handler, payload)
        after = da.current_actor()
        return before, ran, after, threading.current_thread()


def proc_of(ref: pykka.ActorRef[Any]) -> _Proc:
    proc = ref._dspex_proc  # type: ignore[attr-defined]
    assert isinstance(proc, _Proc)
    return proc


def actor_of(ref: pykka.ActorRef[Any]) -> Any:
    """The actor object behind `ref` (to use one of its methods as the inline handler)."""
    actor = ref._actor_weakref()
    assert actor is not None
    return actor


class Recorder:
    """An inline handler that records what it saw: the message, its thread, current_actor()."""

    def __init__(self, body: Callable[[Any], Any] | None = None) -> None:
        self.calls: list[tuple[Any, threading.Thread, Any]] = []
        self._body = body

    def __call__(self, message: Any) -> None:
        self.calls.append((message, threading.current_thread(), da.current_actor()))
        if self._body is not None:
            self._body(message)


def idle(ref: pykka.ActorRef[Any]) -> None:
    """Wait until the actor has handled everything sent before and sits idle.

    `sync` returns once its ask is answered, but the reply is set while the actor still holds
    its exec lock (it is inside that message): wait for the lock too, so that the next
    `run_inline` finds the actor idle for sure.
    """
    sync(ref)
    proc = proc_of(ref)
    wait_for(lambda: not proc.exec_lock.locked(), WAIT)


def stop(ref: pykka.ActorRef[Any]) -> None:
    if ref.is_alive():
        with contextlib.suppress(pykka.ActorDeadError):  # it may exit meanwhile
            ref.stop(timeout=WAIT)
    da.wait_exit(ref, WAIT)


@pytest.fixture
def log() -> list[Any]:
    return []


@pytest.fixture
def box(log: list[Any]) -> Iterator[pykka.ActorRef[Any]]:
    ref = Box.start(log)
    try:
        yield ref
    finally:
        stop(ref)


# --- 1. who runs it, and as whom ------------------------------------------------------------


def test_an_idle_actor_s_message_runs_in_the_calling_thread_as_that_actor(
    box: pykka.ActorRef[Any],
) -> None:
    """Runs in the calling thread; current_actor() is the actor, then restored."""
    handler = Recorder()
    assert da.current_actor() is None
    assert run_inline(proc_of(box), handler, "hello") is True
    assert handler.calls == [("hello", threading.current_thread(), box)]
    assert da.current_actor() is None


def test_from_inside_another_actor_current_actor_is_the_target_then_the_caller_again(
    box: pykka.ActorRef[Any],
) -> None:
    """The caller is itself an actor: its own identity comes back after the handler."""
    caller = Caller.start()
    try:
        handler = Recorder()
        before, ran, after, caller_thread = caller.ask(
            (proc_of(box), handler, "from-actor"), timeout=WAIT
        )
        assert ran is True
        assert isinstance(caller_thread, threading.Thread)
        assert before == caller
        assert after == caller
        assert handler.calls == [("from-actor", caller_thread, box)]
        assert caller_thread is not threading.current_thread()
        assert caller_thread.name == "dspex:Caller"
    finally:
        stop(caller)


# --- 2. busy ---------------------------------------------------------------------------------


def test_a_busy_actor_is_not_run_inline(box: pykka.ActorRef[Any], log: list[Any]) -> None:
    """While the actor handles a message, run_inline returns False and runs nothing."""
    entered, release = threading.Event(), threading.Event()
    box.tell(Block(entered, release))
    try:
        assert entered.wait(WAIT)
        handler = Recorder()
        assert run_inline(proc_of(box), handler, "busy") is False
        assert handler.calls == []
    finally:
        release.set()
    idle(box)
    handler = Recorder()
    assert run_inline(proc_of(box), handler, "idle") is True
    assert [c[0] for c in handler.calls] == ["idle"]


def test_a_gated_actor_refuses_inline_until_released(box: pykka.ActorRef[Any]) -> None:
    """The same with `dspex_actors.testing.gate` holding the actor between messages."""
    with gate(box):
        handler = Recorder()
        assert run_inline(proc_of(box), handler, "gated") is False
        assert handler.calls == []
    idle(box)
    assert run_inline(proc_of(box), Recorder(), "free") is True


# --- 3. queued messages come first ------------------------------------------------------------


def test_a_message_queued_before_is_handled_first_and_its_effect_is_seen_inline(
    box: pykka.ActorRef[Any], log: list[Any]
) -> None:
    """Tell B queued behind A: inline refuses; after B is handled, inline sees B."""
    entered, release = threading.Event(), threading.Event()
    box.tell(Block(entered, release))  # A
    try:
        assert entered.wait(WAIT)
        box.tell(Append("B"))
        refused = Recorder()
        assert run_inline(proc_of(box), refused, "too early") is False
        assert refused.calls == []
    finally:
        release.set()
    idle(box)
    seen: list[list[Any]] = []
    handler = Recorder(lambda message: seen.append(list(log)))
    assert run_inline(proc_of(box), handler, "after B") is True
    assert seen == [["B"]]


def test_a_non_empty_inbox_refuses_even_when_nothing_is_being_handled(
    box: pykka.ActorRef[Any], log: list[Any]
) -> None:
    """The exec lock is free but a message waits in the inbox: False, and the queued
    message is handled before anything the caller sends next."""
    proc = proc_of(box)
    inbox = box.actor_inbox
    assert isinstance(inbox, _Inbox)
    # Wait until the loop sleeps on the inbox's condition (idle, exec lock free). Under the
    # inbox mutex, put a message in *without* notifying: the loop stays asleep, so the only
    # thing between a caller and the actor's state is the "inbox not empty" check.
    waiters = inbox.not_empty._waiters  # type: ignore[attr-defined]
    wait_for(lambda: len(waiters) == 1, WAIT)
    with inbox.mutex:
        assert len(waiters) == 1  # still asleep: it cannot wake without a notify
        inbox.queue.append(Envelope(Append("queued")))
        inbox.unfinished_tasks += 1
    assert not proc.exec_lock.locked()
    handler = Recorder()
    assert run_inline(proc, handler, "jumps the queue") is False
    assert handler.calls == []
    assert log == []
    with inbox.mutex:
        inbox.not_empty.notify()
    idle(box)
    assert log == ["queued"]
    seen: list[list[Any]] = []
    assert run_inline(proc, Recorder(lambda message: seen.append(list(log))), "now") is True
    assert seen == [["queued"]]


# --- 4. exiting and exited --------------------------------------------------------------------


def test_an_exiting_or_exited_actor_is_not_run_inline(log: list[Any]) -> None:
    """During on_stop (exiting) and after the exit: False, nothing runs."""
    stop_entered, stop_release = threading.Event(), threading.Event()
    ref = Box.start(log, stop_entered, stop_release)
    proc = proc_of(ref)
    try:
        da.send_exit(ref, da.SHUTDOWN)
        assert stop_entered.wait(WAIT)
        handler = Recorder()
        assert run_inline(proc, handler, "while exiting") is False
        assert handler.calls == []
    finally:
        stop_release.set()
    assert da.wait_exit(ref, WAIT) is da.SHUTDOWN
    handler = Recorder()
    assert run_inline(proc, handler, "after exit") is False
    assert handler.calls == []
    assert log == [("on_stop", da.SHUTDOWN)]


def test_an_actor_stopped_by_stop_refuses_inline_afterwards(
    log: list[Any],
) -> None:
    """After a plain `stop()` too (the FIFO stop request path)."""
    ref = Box.start(log)
    proc = proc_of(ref)
    ref.stop(timeout=WAIT)
    assert da.wait_exit(ref, WAIT) is da.NORMAL
    handler = Recorder()
    assert run_inline(proc, handler, "late") is False
    assert handler.calls == []


# --- 5. never before on_start has finished ----------------------------------------------------


class SlowStart(da.Actor):
    """Publishes its ref from `__init__`; `on_start` waits for `release`.

    `hold_loop` (optional) holds its thread before the actor loop starts at all, to pin the
    window between "the ref exists" and "on_start holds the exec lock".
    """

    def __init__(
        self,
        log: list[Any],
        published: list[pykka.ActorRef[Any]],
        entered: threading.Event,
        release: threading.Event,
        hold_loop: threading.Event | None = None,
    ) -> None:
        super().__init__()
        self.log = log
        self.entered = entered
        self.release = release
        self.hold_loop = hold_loop
        published.append(self.actor_ref)

    def _actor_loop(self) -> None:
        if self.hold_loop is not None:
            assert self.hold_loop.wait(WAIT), "the test never let the actor loop start"
        super()._actor_loop()

    def on_start(self) -> None:
        self.entered.set()
        assert self.release.wait(WAIT), "the test never released on_start"
        self.log.append("on_start done")


class Starter:
    """Starts a `SlowStart` in a plain thread (its `start()` blocks until on_start returns)."""

    def __init__(self, log: list[Any], hold_loop: threading.Event | None = None) -> None:
        self.published: list[pykka.ActorRef[Any]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, args=(log, hold_loop), name="test-starter"
        )
        self._thread.start()

    def _run(self, log: list[Any], hold_loop: threading.Event | None) -> None:
        try:
            SlowStart.start(log, self.published, self.entered, self.release, hold_loop)
        except BaseException as exc:
            self.error = exc

    def join(self) -> pykka.ActorRef[Any]:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "start() did not return"
        assert self.error is None, self.error
        return self.published[0]


def attempt_in_thread(proc: _Proc, handler: Recorder, message: Any) -> bool:
    """`run_inline` from another thread, bounded: a blocking attempt fails the test."""
    results: list[bool] = []
    thread = threading.Thread(
        target=lambda: results.append(run_inline(proc, handler, message)), name="test-inline"
    )
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "run_inline blocked instead of returning False"
    return results[0]


def test_while_on_start_runs_inline_returns_false_without_blocking(
    log: list[Any],
) -> None:
    """on_start holds the exec lock: a non-blocking attempt gets False at once."""
    starter = Starter(log)
    ref: pykka.ActorRef[Any] | None = None
    try:
        assert starter.entered.wait(WAIT)
        handler = Recorder()
        assert attempt_in_thread(proc_of(starter.published[0]), handler, "early") is False
        assert handler.calls == []
    finally:
        starter.release.set()
        ref = starter.join()
    try:
        seen: list[list[Any]] = []
        assert run_inline(proc_of(ref), Recorder(lambda m: seen.append(list(log))), "x") is True
        assert seen == [["on_start done"]]
    finally:
        stop(ref)


def test_before_the_actor_thread_has_even_entered_on_start_inline_returns_false(
    log: list[Any],
) -> None:
    """The ref (and its proc) exist before the actor's thread takes the exec lock for
    on_start; an attempt in that window must not run ahead of on_start either."""
    hold_loop = threading.Event()
    starter = Starter(log, hold_loop)
    try:
        wait_for(lambda: starter.published and hasattr(starter.published[0], "_dspex_proc"))
        assert not starter.entered.is_set()  # held before on_start
        handler = Recorder()
        assert attempt_in_thread(proc_of(starter.published[0]), handler, "too early") is False
        assert handler.calls == []
    finally:
        hold_loop.set()
        assert starter.entered.wait(WAIT)
        starter.release.set()
        ref = starter.join()
        try:
            assert log == ["on_start done"]
            assert run_inline(proc_of(ref), Recorder(), "after start") is True
        finally:
            stop(ref)


class GatedStarted(threading.Event):
    """A `_Proc.started` whose `set()` from the actor's own thread waits for `release`."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def set(self) -> None:
        if threading.current_thread().name.startswith("dspex:"):
            self.entered.set()
            assert self.release.wait(WAIT), "the test never released started.set()"
        super().set()


def test_after_on_start_but_before_start_has_its_answer_inline_returns_false(
    log: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """on_start has returned and released the exec lock, but `started` is not set yet
    (`start()` has not returned, or may still decide it timed out): still too early."""
    gates: list[GatedStarted] = []
    real_init = _Proc.__init__

    def init(self: _Proc, ref: Any, ours: bool) -> None:
        real_init(self, ref, ours)
        if ours:
            self.started = gate_ = GatedStarted()
            gates.append(gate_)

    monkeypatch.setattr(_Proc, "__init__", init)
    starter = Starter(log)
    starter.release.set()  # on_start returns at once
    try:
        wait_for(lambda: bool(gates))
        assert gates[0].entered.wait(WAIT)  # on_start is done, started.set() is held
        assert log == ["on_start done"]
        handler = Recorder()
        assert attempt_in_thread(proc_of(starter.published[0]), handler, "early") is False
        assert handler.calls == []
    finally:
        for gate_ in gates:
            gate_.release.set()
        ref = starter.join()
    try:
        assert run_inline(proc_of(ref), Recorder(), "after start") is True
    finally:
        stop(ref)


# --- 6. an exception crashes the actor, not the caller -----------------------------------------


def test_an_exception_in_the_handler_crashes_the_actor_and_is_not_raised_here(
    log: list[Any],
) -> None:
    """Not raised to the caller; exit reason is the exception; on_failure, not on_stop;
    a monitor gets Down with that reason."""
    ref = Box.start(log)
    downs: list[da.Down] = []
    got_down = threading.Event()

    def on_down(down: da.Down) -> None:
        downs.append(down)
        got_down.set()

    mref = da.monitor(ref, on_down)
    error = ValueError("inline boom")
    assert run_inline(proc_of(ref), actor_of(ref).on_receive, Crash(error)) is True
    assert da.wait_exit(ref, WAIT) is error
    assert got_down.wait(WAIT)
    assert downs == [da.Down(mref, ref, error)]
    assert downs[0].reason is error
    assert log == [("on_failure", error)]
    assert run_inline(proc_of(ref), Recorder(), "after crash") is False


# --- 7. KeyboardInterrupt reaches the caller ----------------------------------------------------


def test_a_keyboard_interrupt_in_the_handler_is_re_raised_and_ends_the_actor(
    log: list[Any],
) -> None:
    """Re-raised in the caller; the actor exits with it as its reason."""
    ref = Box.start(log)
    interrupt = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt) as info:
        run_inline(proc_of(ref), actor_of(ref).on_receive, Crash(interrupt))
    assert info.value is interrupt
    assert da.current_actor() is None  # restored on the way out too
    assert da.wait_exit(ref, WAIT) is interrupt
    assert log == [("on_failure", interrupt)]


def test_system_exit_zero_in_the_handler_is_re_raised_and_is_a_normal_exit(
    log: list[Any],
) -> None:
    """`SystemExit(0)` is a BaseException too: re-raised; the exit is NORMAL (on_stop),
    as it is for a handler run by the actor's own thread."""
    ref = Box.start(log)
    with pytest.raises(SystemExit):
        run_inline(proc_of(ref), actor_of(ref).on_receive, Crash(SystemExit(0)))
    assert da.wait_exit(ref, WAIT) is da.NORMAL
    assert log == [("on_stop", da.NORMAL)]


# --- 8. exit(reason) from an inline handler -----------------------------------------------------


def test_exit_called_inline_ends_the_actor_after_the_handler_with_on_stop(
    log: list[Any],
) -> None:
    """The handler finishes, then the actor exits with the reason; on_stop runs."""
    ref = Box.start(log)
    reason = da.Shutdown("inline exit")
    assert run_inline(proc_of(ref), actor_of(ref).on_receive, ExitWith(reason)) is True
    # Already asked to exit: nothing more runs inline, whatever the loop is doing right now.
    late = Recorder()
    assert run_inline(proc_of(ref), late, "after exit()") is False
    assert late.calls == []
    assert da.wait_exit(ref, WAIT) == reason
    assert log == ["after exit", ("on_stop", reason)]


# --- 9. stress ---------------------------------------------------------------------------------

THREADS = 4
PER_THREAD = 2000


@attrs.frozen
class Incr:
    thread: int
    seq: int


class Counter(da.Actor):
    """Counts increments; each thread's sequence numbers must arrive exactly in order."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.last: dict[int, int] = {}

    def on_receive(self, message: Any) -> Any:
        match message:
            case Incr(thread, seq):
                last = self.last.get(thread, -1)
                if seq != last + 1:
                    raise AssertionError(f"thread {thread}: got {seq} after {last}")
                self.last[thread] = seq
                self.count += 1
            case "count":
                return self.count
            case "last":
                return dict(self.last)
        return None


def count_of(ref: pykka.ActorRef[Any]) -> int:
    count = ref.ask("count", timeout=WAIT)
    assert isinstance(count, int)
    return count


def test_concurrent_inline_and_told_increments_are_exact_and_in_order_per_thread() -> None:
    """4 threads x 2000 increments, inline when possible (else told), plus asks."""
    ref = Counter.start()
    proc = proc_of(ref)
    handler = actor_of(ref).on_receive
    inline_runs = [0] * THREADS
    errors: list[BaseException] = []
    go = threading.Event()

    def work(t: int) -> None:
        try:
            assert go.wait(WAIT)
            seen = 0
            for seq in range(PER_THREAD):
                # Every tenth is told regardless, so both paths interleave within each thread;
                # the asks (barriers) drain the inbox now and then, so inline attempts succeed.
                if seq % 10 != 9 and run_inline(proc, handler, Incr(t, seq)):
                    inline_runs[t] += 1
                else:
                    ref.tell(Incr(t, seq))
                if seq % 25 == 0:
                    count = count_of(ref)
                    assert seen <= count <= THREADS * PER_THREAD
                    seen = count
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(t,), name=f"test-incr-{t}") for t in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(60)
    try:
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        idle(ref)
        assert ref.is_alive(), da.exit_reason(ref)
        assert count_of(ref) == THREADS * PER_THREAD, f"inline runs per thread: {inline_runs}"
        assert ref.ask("last", timeout=WAIT) == dict.fromkeys(range(THREADS), PER_THREAD - 1)
        idle(ref)
        # Idle now: the next increment runs inline for sure, and continues every sequence.
        assert run_inline(proc, handler, Incr(0, PER_THREAD)) is True
        assert count_of(ref) == THREADS * PER_THREAD + 1
    finally:
        stop(ref)


def test_an_out_of_order_increment_is_detected_by_the_counter() -> None:
    """The order check itself can fail: a sequence that goes backwards crashes it."""
    ref = Counter.start()
    handler = actor_of(ref).on_receive
    assert run_inline(proc_of(ref), handler, Incr(0, 0)) is True
    assert run_inline(proc_of(ref), handler, Incr(0, 0)) is True  # ran, and crashed it
    reason = da.wait_exit(ref, WAIT)
    assert isinstance(reason, AssertionError)
    assert "got 0 after 0" in str(reason)


def test_a_handler_that_declines_with_false_makes_run_inline_return_false(
    box: pykka.ActorRef[Any], log: list[Any]
) -> None:
    """A handler returning False declined the message (the caller sends it instead);
    None, or any other value, means handled. The actor runs on either way."""
    proc = proc_of(box)
    assert run_inline(proc, lambda message: False, "declined") is False
    assert da.current_actor() is None
    assert run_inline(proc, lambda message: None, "handled") is True
    assert run_inline(proc, lambda message: True, "handled too") is True
    box.tell(Append("still running"))
    idle(box)
    assert log == ["still running"]
