"""A stuck child never wedges its supervisor (issue "No single point of failure, and no hang",
items 9 and 10).

- Item 9: a plain start function that blocks. The supervisor stays responsive while it runs,
  and a bounded start (`ChildSpec(start_timeout=...)`, with a documented default) fails as a
  start failure.
- Item 10: a thread child stuck in a handler. Python cannot kill the thread, but the caller does
  not pay for it: `stop()`/`terminate_child()` return within the child's shutdown setting
  (at once for `BRUTAL_KILL`), and the abandoned thread stays visible while it lingers.

Every blocking piece is released in the test's cleanup (bounded), so a failing test fails by
its own timeout instead of hanging the run, and leaves no thread behind.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import BRUTAL_KILL, ChildSpec

from support.logs import EventLog, Records
from support.supervision import Probe, Supervisors, probe_spec, ref_of


class Blocking:
    """A start function that blocks until released (at most `hold` seconds), then fails."""

    def __init__(self, hold: float = 30.0) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.hold = hold
        self.__qualname__ = "Blocking"

    def __call__(self) -> Any:
        self.entered.set()
        self.release.wait(self.hold)
        raise RuntimeError("released by the test")


class InThread:
    """Runs `fn()` in a thread and keeps its result or exception."""

    def __init__(self, fn: Any) -> None:
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, args=(fn,), name="stuck-child-caller")
        self.thread.start()

    def _run(self, fn: Any) -> None:
        try:
            self.outcome.append(fn())
        except BaseException as exc:
            self.outcome.append(exc)

    def join(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout} s"
        return self.outcome[0]


# --- 9. a blocking start function ---------------------------------------------------------------


def test_a_supervisor_stays_responsive_while_a_start_function_blocks(
    sups: Supervisors, log: EventLog
) -> None:
    """Item 9: `start_child` with a plain start function that blocks. Meanwhile the supervisor
    answers `which_children`, and `stop(timeout=5)` stops its healthy children and returns."""
    start = Blocking()
    sup = sups.start([probe_spec("healthy", log)])
    starter = InThread(lambda: sup.start_child(ChildSpec("slow", start=start), timeout=30))
    try:
        assert start.entered.wait(5)
        try:
            children = sup.which_children(timeout=2)
        except da.CallTimeout:
            pytest.fail("which_children timed out: a blocking start function wedges its supervisor")
        assert "healthy" in [c.id for c in children]
        sup.stop(timeout=5)
        assert log.kinds("stop") == [("healthy", da.SHUTDOWN)]
    finally:
        start.release.set()
        starter.join(40)


def test_a_start_function_that_blocks_past_its_start_timeout_fails_the_supervisor_start(
    log: EventLog,
) -> None:
    """Item 9: `ChildSpec(start_timeout=...)` bounds a start; one that blocks past it is a
    start failure (`SupervisorStartError` for that child, the children started before it
    stopped), reported within the timeout (bound: 1 s, plus 2 s of slack). The option has a
    documented finite default."""
    start = Blocking()
    spec = ChildSpec("slow", start=start, start_timeout=1.0)
    started = time.monotonic()
    starting = InThread(lambda: da.Supervisor.start([probe_spec("healthy", log), spec]))
    try:
        starting.thread.join(3.0)
        took = time.monotonic() - started
    finally:
        start.release.set()
    outcome = starting.join(40)
    if isinstance(outcome, da.Supervisor):
        outcome.stop(timeout=10)
    assert took < 3.0, f"Supervisor.start still blocked after {took:.1f} s"
    assert isinstance(outcome, da.SupervisorStartError), f"Supervisor.start gave {outcome!r}"
    assert outcome.child_id == "slow"
    assert log.kinds("stop") == [("healthy", da.SHUTDOWN)]
    default = ChildSpec("x", start=print).start_timeout
    assert isinstance(default, int | float)
    assert 0 < default < float("inf")


# --- 10. a stuck thread child -------------------------------------------------------------------


class Stuck(Probe):
    """A child that blocks inside a handler when told to (released by the test, at most 30 s)."""

    def __init__(self, name: str, log: EventLog, release: threading.Event) -> None:
        super().__init__(name, log)
        self.release = release

    def on_receive(self, message: Any) -> Any:
        if message == "block":
            self.log.add("blocked", self.name)
            self.release.wait(30)
            return None
        return super().on_receive(message)


def stuck_child(sups: Supervisors, log: EventLog, shutdown: Any) -> tuple[da.Supervisor, Any]:
    release = threading.Event()
    sup = sups.start([Stuck.child_spec("stuck", log, release, id="stuck", shutdown=shutdown)])
    ref = ref_of(sup, "stuck")
    ref.tell("block")
    assert log.wait_len(2)  # ("start", "stuck"), ("blocked", "stuck")
    return sup, (ref, release)


@pytest.mark.parametrize(
    ("shutdown", "bound"),
    [
        pytest.param(BRUTAL_KILL, 1.0, id="brutal-kill-at-once"),
        pytest.param(1.0, 2.5, id="shutdown-1s"),
    ],
)
def test_stop_returns_within_the_shutdown_setting_of_a_stuck_thread_child(
    sups: Supervisors, log: EventLog, records: Records, shutdown: Any, bound: float
) -> None:
    """Item 10: a child stuck in a handler cannot be killed, but `stop()` returns within the
    child's shutdown setting (at once for BRUTAL_KILL; bound 1 s. For 1.0 s: bound 2.5 s), not
    5 s later; the child is reported KILLED and its abandonment logged with its id."""
    sup, (ref, release) = stuck_child(sups, log, shutdown)
    try:
        started = time.monotonic()
        try:
            sup.stop(timeout=bound)
        except da.CallTimeout:
            pytest.fail(f"stop() still running after {bound} s: it waits for a stuck thread")
        assert time.monotonic() - started < bound
        logged = [
            r
            for r in records.of("kill_timeout") + records.of("child_abandoned")
            if r.get("child_id") == "stuck"
        ]
        assert logged, "the abandoned thread is not logged"
        assert ref.is_alive()  # still inside its handler: it lingers
    finally:
        release.set()
    assert da.wait_exit(ref, 5) is da.KILLED


def test_terminate_child_returns_at_once_and_shows_the_abandoned_thread_while_it_lingers(
    sups: Supervisors, log: EventLog
) -> None:
    """Item 10: `terminate_child` of a stuck BRUTAL_KILL child returns at once (bound 1 s);
    `which_child` shows the abandoned thread (`ChildInfo.abandoned`, its ref) while it lingers,
    and no longer once it has exited."""
    sup, (ref, release) = stuck_child(sups, log, BRUTAL_KILL)
    try:
        try:
            sup.terminate_child("stuck", timeout=1.0)
        except da.CallTimeout:
            pytest.fail("terminate_child still running after 1 s: it waits for a stuck thread")
        info = sup.which_child("stuck", timeout=1.0)
        assert info.ref is None
        abandoned = getattr(info, "abandoned", None)
        assert isinstance(abandoned, pykka.ActorRef), f"the lingering thread is not shown: {info}"
        assert abandoned.actor_urn == ref.actor_urn
    finally:
        release.set()
    assert da.wait_exit(ref, 5) is da.KILLED
    info = sup.which_child("stuck", timeout=5)
    assert info.abandoned is None
