"""`Supervisor` against a model of OTP supervisor semantics: a hypothesis state machine.

Each example starts one static `Supervisor` of 2-4 in-process `Probe` children (restart type
drawn per child), with a strategy drawn from one_for_one / one_for_all / rest_for_one,
``max_restarts`` 1-3 and ``max_seconds`` 1-5 on a `FakeClock`. Rules: a running child crashes
(an exception) or exits on its own with `NORMAL`, `SHUTDOWN` or `Shutdown(...)`; the clock
advances; `terminate_child`, `restart_child`, `delete_child` and `start_child` (new ids and
existing ones, plus an unknown id); and, late in an example, `stop()`.

The model is written from OTP's documented supervisor semantics (`docs/supervision.md`; its
traceability to OTP is in `docs/porting.md`), not from the code:

- restart types: permanent always restarted; transient not after a normal exit (spec kept,
  no ref); temporary never, and its spec is deleted;
- intensity: one history per supervisor, whole seconds, inclusive window, checked before the
  restart; exceeded: the supervisor stops its remaining children in reverse start order and
  exits with `SHUTDOWN`;
- strategies: one_for_one restarts the dead child only; one_for_all / rest_for_one stop the
  other affected children in reverse start order (temporary ones for good), then start every
  remaining affected spec in start order, stopped ones included;
- `start_child` appends at the end of the start order; `which_children` is newest first.

After every step, once the supervisor has handled the step (`wait_exit` on the child, then
`sync` on the supervisor, or `wait` for its exit; no sleeps), the test compares: the exact
sequence of child starts/stops (with reasons) recorded by the probes' ``on_start``/``on_stop``,
`which_children` (ids, order, which have a live ref), that restarted children have new refs and
untouched ones keep theirs (and that replaced refs are dead), `count_children`, and whether the
supervisor is alive.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any

import attrs
import pykka
import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import dspex_actors as da
from dspex_actors import Restart, Strategy
from dspex_actors.testing import FakeClock, sync

from support.logs import EventLog
from support.models import EXITS, is_normal, label, machine_settings
from support.supervision import Crash, ExitWith, probe_spec

pytestmark = pytest.mark.leak_check

WAIT = 5.0  # every bounded wait on a condition
MAX_CHILDREN = 6  # start_child adds new children up to this many specs
MIN_STEPS_BEFORE_STOP = 12  # `stop_supervisor` is allowed only late in an example

# --- the model ------------------------------------------------------------------------------


@attrs.define
class MChild:
    id: str
    restart: Restart
    running: bool = True


Event = tuple[Any, ...]


class Model:
    """An OTP static supervisor, as the reference describes it."""

    def __init__(self, strategy: Strategy, max_restarts: int, max_seconds: int) -> None:
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.children: list[MChild] = []  # start order
        self.history: list[int] = []  # restart timestamps, newest first (whole seconds)
        self.alive = True

    def find(self, child_id: str) -> MChild | None:
        return next((c for c in self.children if c.id == child_id), None)

    def ids(self) -> list[str]:
        return [c.id for c in self.children]

    def running(self) -> list[str]:
        return [c.id for c in self.children if c.running]

    def _intensity_exceeded(self, now: float) -> bool:
        """Reference 1.4: add `now` (whole seconds), keep `t >= now - period`, compare."""
        stamp = math.floor(now)
        kept = itertools.takewhile(lambda t: t >= stamp - self.max_seconds, self.history)
        self.history = [stamp, *kept]
        return len(self.history) > self.max_restarts

    def _stop_all(self) -> list[Event]:
        """Supervisor termination: running children stopped in reverse start order."""
        events: list[Event] = []
        for c in reversed(self.children):
            if c.running:
                events.append(("stop", c.id, da.SHUTDOWN))
                c.running = False
        self.alive = False
        return events

    def child_exits(self, child_id: str, reason: Any, now: float) -> tuple[list[Event], set[str]]:
        """A running child exits on its own; returns the expected events and restarted ids."""
        child = self.find(child_id)
        assert child is not None
        assert child.running
        events: list[Event] = [] if reason is da.KILLED else [("stop", child_id, label(reason))]
        child.running = False
        restarted = child.restart is Restart.PERMANENT or (
            child.restart is Restart.TRANSIENT and not is_normal(reason)
        )
        if not restarted:
            if child.restart is Restart.TEMPORARY:
                self.children.remove(child)
            return events, set()
        if self._intensity_exceeded(now):
            return events + self._stop_all(), set()
        if self.strategy is Strategy.ONE_FOR_ONE:
            affected = [child]
        else:
            first = 0 if self.strategy is Strategy.ONE_FOR_ALL else self.children.index(child)
            affected = self.children[first:]
            for other in reversed(affected):
                if other is child:
                    continue
                if other.running:
                    events.append(("stop", other.id, da.SHUTDOWN))
                    other.running = False
                if other.restart is Restart.TEMPORARY:
                    self.children.remove(other)
                    event(f"{self.strategy.value}: a temporary bystander is removed")
            affected = [c for c in affected if c in self.children]
            if any(not c.running and c is not child for c in affected):
                event(f"{self.strategy.value}: a stopped child is started by the restart")
        for c in affected:
            events.append(("start", c.id))
            c.running = True
        return events, {c.id for c in affected}

    def terminate(self, child_id: str) -> list[Event]:
        child = self.find(child_id)
        assert child is not None
        events: list[Event] = []
        if child.running:
            events.append(("stop", child_id, da.SHUTDOWN))
            child.running = False
        if child.restart is Restart.TEMPORARY:
            self.children.remove(child)
        return events

    def stop(self) -> list[Event]:
        return self._stop_all()


# --- the machine ----------------------------------------------------------------------------


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = EventLog()
        self.clock = FakeClock(start=100.0)
        self.sup: da.Supervisor | None = None
        self.model = Model(Strategy.ONE_FOR_ONE, 1, 1)
        self.refs: dict[str, pykka.ActorRef[Any]] = {}  # running child -> its current ref
        self.seen: set[pykka.ActorRef[Any]] = set()  # every child ref ever observed
        self.cursor = 0  # events already checked
        self.steps = 0
        self.new_ids = (f"n{i}" for i in itertools.count())
        self.known: list[str] = []  # every child id ever used, in first-use order

    @property
    def s(self) -> da.Supervisor:
        assert self.sup is not None
        return self.sup

    def _spec(self, child_id: str, restart: Restart) -> da.ChildSpec:
        return probe_spec(child_id, self.log, restart=restart)

    @initialize(
        restarts=st.lists(st.sampled_from(list(Restart)), min_size=2, max_size=4),
        strategy=st.sampled_from(list(Strategy)),
        max_restarts=st.integers(1, 3),
        max_seconds=st.integers(1, 5),
    )
    def start(
        self, restarts: list[Restart], strategy: Strategy, max_restarts: int, max_seconds: int
    ) -> None:
        ids = [f"c{i}" for i in range(len(restarts))]
        self.model = Model(strategy, max_restarts, max_seconds)
        self.model.children = [MChild(i, r) for i, r in zip(ids, restarts, strict=True)]
        self.known = list(ids)
        self.sup = da.Supervisor.start(
            [self._spec(i, r) for i, r in zip(ids, restarts, strict=True)],
            strategy=strategy,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            clock=self.clock,
        )
        self.check([("start", i) for i in ids], set(ids))

    # -- the comparison --

    def check(self, expected: list[Event], fresh: set[str]) -> None:
        """Compare the supervisor with the model after a step."""
        self.steps += 1
        got = [
            (e[0], e[1], label(e[2])) if e[0] == "stop" else e
            for e in self.log.events()[self.cursor :]
        ]
        self.cursor += len(got)
        assert got == expected, f"lifecycle events {got}, the model says {expected}"
        m, sup = self.model, self.s
        if not m.alive:
            assert not sup.is_alive()
            with pytest.raises(da.NoProc):
                sup.which_children()
            for ref in self.refs.values():
                assert not ref.is_alive(), "a child outlived its supervisor"
            self.refs = {}
            return
        infos = sup.which_children()
        assert [(i.id, isinstance(i.ref, pykka.ActorRef)) for i in infos] == [
            (c.id, c.running) for c in reversed(m.children)
        ], "which_children (newest first, running or not) differs from the model"
        refs: dict[str, pykka.ActorRef[Any]] = {}
        for info in infos:
            if not isinstance(info.ref, pykka.ActorRef):
                continue
            assert info.ref.is_alive()
            if info.id in fresh:
                assert info.ref not in self.seen, f"{info.id!r} was (re)started with an old ref"
            else:
                assert info.ref is self.refs.get(info.id), f"{info.id!r} changed its ref"
            refs[info.id] = info.ref
        for child_id, old in self.refs.items():
            if refs.get(child_id) is not old:
                assert not old.is_alive(), f"the replaced or stopped {child_id!r} still runs"
        self.refs = refs
        self.seen |= set(refs.values())
        for c in m.children:
            assert sup.which_child(c.id).ref is refs.get(c.id)
        counts = sup.count_children()
        assert (counts.specs, counts.active) == (len(m.children), len(m.running()))

    def settle(self) -> None:
        """Wait until the supervisor has handled the step: synced, or exited if it gave up."""
        if self.model.alive:
            sync(self.s.actor_ref, WAIT)
        else:
            assert self.s.wait(WAIT) is da.SHUTDOWN, "the supervisor must exit with SHUTDOWN"

    # -- rules --

    def _exit(self, data: st.DataObject, how: str) -> None:
        """A running child (drawn) exits on its own, `how` says with what."""
        child_id = data.draw(st.sampled_from(self.model.running()), label="child")
        ref = self.refs[child_id]
        reason = EXITS[how]
        restart = self.model.find(child_id).restart  # type: ignore[union-attr]
        expected, fresh = self.model.child_exits(child_id, reason, self.clock.monotonic())
        if reason is da.KILLED:
            da.kill(ref)
        else:
            ref.tell(Crash() if reason is None else ExitWith(reason))
        da.wait_exit(ref, WAIT)
        self.settle()
        self.check(expected, fresh)
        event(f"{self.model.strategy.value}: {restart.value} child exits ({how})")
        if not self.model.alive:
            event(f"{self.model.strategy.value}: intensity exceeded, supervisor exits")
        elif len(fresh) > 1:
            event(f"{self.model.strategy.value}: {len(fresh)} children restarted")

    @precondition(lambda self: self.model.alive and bool(self.model.running()))
    @rule(data=st.data(), how=st.sampled_from(["crash", "killed", "other"]))
    def child_crashes(self, data: st.DataObject, how: str) -> None:
        self._exit(data, how)

    @precondition(lambda self: self.model.alive and bool(self.model.running()))
    @rule(data=st.data(), how=st.sampled_from(["normal", "shutdown", "shutdown_info"]))
    def child_exits(self, data: st.DataObject, how: str) -> None:
        self._exit(data, how)

    @rule(seconds=st.sampled_from([0.4, 1.0, 2.0, 3.5, 6.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.check([], set())

    @rule(data=st.data())
    def terminate_child(self, data: st.DataObject) -> None:
        if self.gone():
            return
        child_id = data.draw(st.sampled_from([*self.model.ids(), "ghost"]), label="child")
        if child_id == "ghost":
            with pytest.raises(da.ChildNotFound):
                self.s.terminate_child(child_id)
            self.check([], set())
            return
        expected = self.model.terminate(child_id)
        self.s.terminate_child(child_id, timeout=WAIT)
        self.check(expected, set())

    @rule(data=st.data())
    def restart_child(self, data: st.DataObject) -> None:
        if self.gone():
            return
        child_id = data.draw(st.sampled_from([*self.model.ids(), "ghost"]), label="child")
        child = self.model.find(child_id)
        if child is None:
            with pytest.raises(da.ChildNotFound):
                self.s.restart_child(child_id)
            self.check([], set())
        elif child.running:
            with pytest.raises(da.ChildRunning):
                self.s.restart_child(child_id)
            self.check([], set())
        else:
            ref = self.s.restart_child(child_id, timeout=WAIT)
            child.running = True
            self.check([("start", child_id)], {child_id})
            assert ref is self.refs[child_id]
            event("restart_child of a stopped child")

    @rule(data=st.data())
    def delete_child(self, data: st.DataObject) -> None:
        if self.gone():
            return
        child_id = data.draw(st.sampled_from([*self.model.ids(), "ghost"]), label="child")
        child = self.model.find(child_id)
        if child is None:
            with pytest.raises(da.ChildNotFound):
                self.s.delete_child(child_id)
        elif child.running:
            with pytest.raises(da.ChildRunning):
                self.s.delete_child(child_id)
        else:
            self.s.delete_child(child_id)
            self.model.children.remove(child)
            event("delete_child of a stopped child")
        self.check([], set())

    @rule(data=st.data(), restart=st.sampled_from(list(Restart)))
    def start_child(self, data: st.DataObject, restart: Restart) -> None:
        if self.gone():
            return
        existing = self.model.ids()
        removed = [i for i in self.known if i not in existing]
        choices = [*existing, *removed, "new"] if len(existing) < MAX_CHILDREN else existing
        child_id = data.draw(st.sampled_from(choices), label="child")
        child = self.model.find(child_id)
        if child is None:
            if child_id == "new":
                child_id = next(self.new_ids)
                self.known.append(child_id)
            else:
                event("start_child of a removed id again")
            ref = self.s.start_child(self._spec(child_id, restart), timeout=WAIT)
            self.model.children.append(MChild(child_id, restart))
            self.check([("start", child_id)], {child_id})
            assert ref is self.refs[child_id]
            event("start_child of a new child")
        elif child.running:
            with pytest.raises(da.AlreadyStarted) as caught:
                self.s.start_child(self._spec(child_id, restart))
            assert caught.value.ref is self.refs[child_id]
            self.check([], set())
        else:
            with pytest.raises(da.AlreadyPresent):
                self.s.start_child(self._spec(child_id, restart))
            self.check([], set())

    @precondition(lambda self: self.model.alive and self.steps >= MIN_STEPS_BEFORE_STOP)
    @rule()
    def stop_supervisor(self) -> None:
        expected = self.model.stop()
        self.s.stop(timeout=WAIT * 2)
        event("stop() late in the example")
        assert self.s.wait(WAIT) is da.SHUTDOWN
        self.check(expected, set())

    def gone(self) -> bool:
        """Once the supervisor has exited, the example is over: every API call raises `NoProc`
        and no child starts or stops any more. True if it has exited."""
        if self.model.alive:
            return False
        with pytest.raises(da.NoProc):
            self.s.count_children()
        with pytest.raises(da.NoProc):
            self.s.terminate_child("c0")
        self.check([], set())
        return True

    def teardown(self) -> None:
        event(f"strategy {self.model.strategy.value}")
        event(f"steps: {self.steps // 5 * 5}+")
        sup = self.sup
        if sup is not None:
            if sup.is_alive():
                with contextlib.suppress(da.NoProc):  # it may exit on its own meanwhile
                    sup.stop(timeout=10)
            sup.wait(10)


SupervisorMachine.TestCase.settings = machine_settings(examples=80, steps=20)
test_supervisor_follows_the_otp_model = SupervisorMachine.TestCase
