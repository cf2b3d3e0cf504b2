"""`DynamicSupervisor` against a model of Elixir's DynamicSupervisor: a hypothesis state machine.

Each example starts one empty `DynamicSupervisor` with ``max_children`` None or 1-4,
``extra_args`` (), ``("x",)`` or ``("x", 1)``, ``max_restarts`` 0-3 and ``max_seconds`` 1-5
on a `FakeClock`. Every child is an in-process `Probe` started by a `Starter` of its own (so
its start calls and their arguments are recorded); all specs share one id, which a
DynamicSupervisor ignores. Rules: `start_child` (the start succeeds, returns None or raises);
a running child crashes (an exception, `kill`, another reason) or exits on its own with
`NORMAL`, `SHUTDOWN` or `Shutdown(...)`, its next restart attempts drawn to fail or be
ignored first; the clock advances; `terminate_child` of a child's ref, of a stale ref or of
something that is no ref; and, late in an example, `stop()`.

The model is written from the documented semantics (`docs/supervision.md`, Elixir's
DynamicSupervisor; its traceability is in `docs/porting.md`), not from the code:

- one_for_one only; children have no id (`which_children` shows None) and no order;
- `start_child`: refused with `MaxChildren` when ``max_children`` children exist (nothing is
  started); the start function gets ``(*extra_args, *args)``; a None return is returned and
  nothing is stored; a raising start raises `StartChildError` and stores nothing;
- restart types: permanent always restarted; transient not after a normal exit; temporary
  never; a child not restarted is forgotten;
- a restart gives a new ref and calls the start function with `extra_args` prepended again;
  a failed restart attempt is retried and counts toward the intensity; a restart returning
  None removes the child;
- intensity: one history, whole seconds, inclusive window, checked before each attempt;
  exceeded: the supervisor stops every remaining child (no order is promised: "signals all
  children at once") and exits with `SHUTDOWN`;
- `terminate_child(ref)` stops the child with `SHUTDOWN` and forgets it, whatever its restart
  type; an unknown ref (or a non-ref) raises `ChildNotFound`;
- `stop()` stops every child (no order promised), and the supervisor exits with `SHUTDOWN`.

After every step, once the supervisor has handled it (the child's exit, the expected number
of events in the log, then `sync` on the supervisor, or `wait` for its exit; no sleeps), the
test compares: the lifecycle events recorded by the starters and probes (in order, except the
concurrent shutdown stops, compared as a multiset), `which_children` (no ids, one live ref per
model child, restarted and new children with never-seen refs, the others unchanged, dropped
refs dead), `count_children`, and whether the supervisor is alive.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections import Counter
from typing import Any

import attrs
import pykka
import pytest
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

import dspex_actors as da
from dspex_actors import ChildType, Restart
from dspex_actors.testing import FakeClock, sync

from support.logs import EventLog
from support.models import EXITS, is_normal, label, machine_settings
from support.supervision import Crash, ExitWith, Ping, Probe

pytestmark = pytest.mark.leak_check

WAIT = 5.0  # every bounded wait on a condition
MIN_STEPS_BEFORE_STOP = 12  # `stop_supervisor` is allowed only late in an example
SPEC_ID = "worker"  # every spec's id: a DynamicSupervisor ignores ids


class Starter:
    """One child's start function: records each call ``("call", name, args)``, then fails,
    returns None or starts a `Probe` named `name`, as its `plan` says (then "ok")."""

    def __init__(self, name: str, log: EventLog) -> None:
        self.name = name
        self.log = log
        self.plan: list[str] = []  # outcomes of the next calls: "fail" or "ignore"
        self.__qualname__ = f"Starter({name!r})"

    def __call__(self, *args: Any) -> pykka.ActorRef[Any] | None:
        self.log.add("call", self.name, args)
        outcome = self.plan.pop(0) if self.plan else "ok"
        if outcome == "fail":
            raise RuntimeError(f"{self.name} cannot start")
        if outcome == "ignore":
            return None
        return Probe.start(self.name, self.log)


# --- the model ------------------------------------------------------------------------------


@attrs.define
class MChild:
    name: str
    restart: Restart


Event = tuple[Any, ...]


@attrs.define
class Expected:
    """A step's expected events: `ordered` first, then `unordered` (concurrent stops)."""

    ordered: list[Event] = attrs.Factory(list)
    unordered: list[Event] = attrs.Factory(list)


class Model:
    """An Elixir DynamicSupervisor, as the docs and the reference describe it."""

    def __init__(
        self,
        max_children: int | None,
        extra_args: tuple[Any, ...],
        max_restarts: int,
        max_seconds: int,
    ) -> None:
        self.max_children = max_children
        self.extra_args = extra_args
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.children: list[MChild] = []  # no order is promised; kept as a list for drawing
        self.history: list[int] = []  # restart timestamps, newest first (whole seconds)
        self.alive = True

    def find(self, name: str) -> MChild | None:
        return next((c for c in self.children if c.name == name), None)

    def names(self) -> list[str]:
        return [c.name for c in self.children]

    def full(self) -> bool:
        return self.max_children is not None and len(self.children) >= self.max_children

    def call(self, name: str) -> Event:
        """A start function call: `extra_args` prepended to the spec's args."""
        return ("call", name, (*self.extra_args, name))

    def _intensity_exceeded(self, now: float) -> bool:
        """Reference 1.4: add `now` (whole seconds), keep `t >= now - period`, compare."""
        stamp = math.floor(now)
        kept = itertools.takewhile(lambda t: t >= stamp - self.max_seconds, self.history)
        self.history = [stamp, *kept]
        return len(self.history) > self.max_restarts

    def _stop_all(self) -> list[Event]:
        """Supervisor termination: every child is signalled at once, so no order."""
        events = [("stop", c.name, da.SHUTDOWN) for c in self.children]
        self.children = []
        self.alive = False
        return events

    def child_exits(self, name: str, reason: Any, now: float, plan: list[str]) -> Expected:
        """A running child exits on its own; its next start calls go as `plan` says."""
        child = self.find(name)
        assert child is not None
        expected = Expected([] if reason is da.KILLED else [("stop", name, label(reason))])
        restarted = child.restart is Restart.PERMANENT or (
            child.restart is Restart.TRANSIENT and not is_normal(reason)
        )
        if not restarted:
            self.children.remove(child)
            return expected
        plan = list(plan)
        while True:
            if self._intensity_exceeded(now):
                self.children.remove(child)
                expected.unordered = self._stop_all()
                return expected
            expected.ordered.append(self.call(name))
            outcome = plan.pop(0) if plan else "ok"
            if outcome == "fail":
                event("a restart attempt fails (retried)")
                continue
            if outcome == "ignore":
                event("a restart returns None: the child is removed")
                self.children.remove(child)
                return expected
            expected.ordered.append(("start", name))
            return expected

    def terminate(self, name: str) -> Expected:
        child = self.find(name)
        assert child is not None
        self.children.remove(child)
        return Expected([("stop", name, da.SHUTDOWN)])

    def stop(self) -> Expected:
        return Expected([], self._stop_all())


# --- the machine ----------------------------------------------------------------------------


class DynamicSupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.log = EventLog()
        self.clock = FakeClock(start=100.0)
        self.sup: da.DynamicSupervisor | None = None
        self.model = Model(None, (), 1, 1)
        self.refs: dict[str, pykka.ActorRef[Any]] = {}  # running child -> its current ref
        self.seen: set[pykka.ActorRef[Any]] = set()  # every child ref ever observed
        self.starters: dict[str, Starter] = {}
        self.cursor = 0  # events already checked
        self.steps = 0
        self.new_names = (f"n{i}" for i in itertools.count())

    @property
    def s(self) -> da.DynamicSupervisor:
        assert self.sup is not None
        return self.sup

    @initialize(
        max_children=st.none() | st.integers(1, 4),
        extra_args=st.sampled_from([(), ("x",), ("x", 1)]),
        max_restarts=st.sampled_from([0, 1, 1, 2, 3, 3]),
        max_seconds=st.integers(1, 5),
        initial=st.lists(st.sampled_from(list(Restart)), max_size=3),
    )
    def start(
        self,
        max_children: int | None,
        extra_args: tuple[Any, ...],
        max_restarts: int,
        max_seconds: int,
        initial: list[Restart],
    ) -> None:
        self.model = Model(max_children, extra_args, max_restarts, max_seconds)
        self.sup = da.DynamicSupervisor.start(
            max_children=max_children,
            extra_args=extra_args,
            max_restarts=max_restarts,
            max_seconds=max_seconds,
            clock=self.clock,
        )
        self.check(Expected(), set())
        for restart in initial:  # a few children to begin with (refused beyond max_children)
            self.start_child(restart, "ok")

    # -- the comparison --

    def check(self, expected: Expected, fresh: set[str]) -> None:
        """Compare the supervisor with the model after a step."""
        self.steps += 1
        got = [
            (e[0], e[1], label(e[2])) if e[0] == "stop" else e
            for e in self.log.events()[self.cursor :]
        ]
        self.cursor += len(got)
        n = len(expected.ordered)
        assert got[:n] == expected.ordered, (
            f"lifecycle events {got}, the model says {expected.ordered} then, in any order, "
            f"{expected.unordered}"
        )
        assert Counter(got[n:]) == Counter(expected.unordered), (
            f"lifecycle events {got}, the model says {expected.ordered} then, in any order, "
            f"{expected.unordered}"
        )
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
        assert all(i.id is None for i in infos), "a DynamicSupervisor child has no id"
        assert all(i.type is ChildType.WORKER and i.abandoned is None for i in infos)
        assert all(isinstance(i.ref, pykka.ActorRef) for i in infos), (
            f"a child is not running once the step is handled: {infos}"
        )
        listed = [i.ref for i in infos if isinstance(i.ref, pykka.ActorRef)]
        assert len(set(listed)) == len(listed) == len(m.children), (
            f"which_children lists {len(listed)} children, the model has {m.names()}"
        )
        by_ref = {ref: name for name, ref in self.refs.items()}
        refs: dict[str, pykka.ActorRef[Any]] = {}
        for ref in listed:
            assert ref.is_alive()
            name = by_ref.get(ref)
            if name is None or name in fresh:
                assert ref not in self.seen, "a (re)started child got an old ref"
                pong: tuple[str, str] = ref.ask(Ping(), timeout=WAIT)  # type: ignore[assignment]
                name = pong[1]
                assert name in fresh, f"{name!r} got a new ref, the model says only {fresh}"
            refs[name] = ref
        assert set(refs) == set(m.names()), f"children {sorted(refs)}, model {m.names()}"
        for name, old in self.refs.items():
            if refs.get(name) is not old:
                assert not old.is_alive(), f"the replaced or stopped {name!r} still runs"
        self.refs = refs
        self.seen |= set(refs.values())
        counts = sup.count_children()
        k = len(m.children)
        assert (counts.specs, counts.active, counts.supervisors, counts.workers) == (k, k, 0, k)

    def settle(self, expected: Expected) -> None:
        """Wait until the supervisor has handled the step: the expected events are in the
        log, then synced, or exited if it gave up."""
        total = self.cursor + len(expected.ordered) + len(expected.unordered)
        assert self.log.wait_len(total, WAIT), "the expected events never came"
        if self.model.alive:
            sync(self.s.actor_ref, WAIT)
        else:
            assert self.s.wait(WAIT) is da.SHUTDOWN, "the supervisor must exit with SHUTDOWN"

    # -- rules --

    @rule(
        restart=st.sampled_from(list(Restart)),
        outcome=st.sampled_from(["ok", "ok", "ok", "ignore", "fail"]),
    )
    def start_child(self, restart: Restart, outcome: str) -> None:
        if self.gone():
            return
        name = next(self.new_names)
        starter = Starter(name, self.log)
        if outcome != "ok":
            starter.plan = [outcome]
        spec = da.ChildSpec(SPEC_ID, starter, args=(name,), restart=restart)
        m = self.model
        if m.full():
            with pytest.raises(da.MaxChildren) as refused:
                self.s.start_child(spec, timeout=WAIT)
            assert refused.value.max_children == m.max_children
            self.check(Expected(), set())
            event("start_child refused: max_children")
            return
        if outcome == "fail":
            with pytest.raises(da.StartChildError) as failed:
                self.s.start_child(spec, timeout=WAIT)
            assert isinstance(failed.value.reason, RuntimeError)
            self.check(Expected([m.call(name)]), set())
            event("start_child: the start raises")
            return
        ref = self.s.start_child(spec, timeout=WAIT)
        if outcome == "ignore":
            assert ref is None
            self.check(Expected([m.call(name)]), set())
            event("start_child: the start returns None")
            return
        self.starters[name] = starter
        m.children.append(MChild(name, restart))
        self.check(Expected([m.call(name), ("start", name)]), {name})
        assert ref is self.refs[name]
        event("start_child of a new child")

    def _exit(self, data: st.DataObject, how: str) -> None:
        """A running child (drawn) exits on its own, `how` says with what."""
        name = data.draw(st.sampled_from(self.model.names()), label="child")
        fails = data.draw(st.integers(0, 2), label="failing restart attempts")
        ignore = data.draw(st.booleans(), label="then the restart returns None")
        plan = ["fail"] * fails + (["ignore"] if ignore else [])
        ref = self.refs[name]
        reason = EXITS[how]
        restart = self.model.find(name).restart  # type: ignore[union-attr]
        expected = self.model.child_exits(name, reason, self.clock.monotonic(), plan)
        self.starters[name].plan = list(plan)
        if reason is da.KILLED:
            da.kill(ref)
        else:
            ref.tell(Crash() if reason is None else ExitWith(reason))
        da.wait_exit(ref, WAIT)
        self.settle(expected)
        restarted = ("start", name) in expected.ordered
        self.check(expected, {name} if restarted else set())
        event(f"a {restart.value} child exits ({how})")
        if not self.model.alive:
            event("intensity exceeded, supervisor exits")
            if expected.unordered:
                event("intensity exceeded with other children running")
        elif restarted:
            event("a child is restarted")

    @precondition(lambda self: self.model.alive and bool(self.model.children))
    @rule(data=st.data(), how=st.sampled_from(["crash", "killed", "other"]))
    def child_crashes(self, data: st.DataObject, how: str) -> None:
        self._exit(data, how)

    @precondition(lambda self: self.model.alive and bool(self.model.children))
    @rule(data=st.data(), how=st.sampled_from(["normal", "shutdown", "shutdown_info"]))
    def child_exits(self, data: st.DataObject, how: str) -> None:
        self._exit(data, how)

    @rule(seconds=st.sampled_from([0.4, 1.0, 2.0, 3.5, 6.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.check(Expected(), set())

    @rule(data=st.data())
    def terminate_child(self, data: st.DataObject) -> None:
        if self.gone():
            return
        stale = [r for r in self.seen if r not in self.refs.values()]
        unknown = ["not a ref", *(["stale ref"] if stale else [])]
        names = self.model.names()
        choice = data.draw(
            st.sampled_from(unknown)
            if not names or data.draw(st.integers(0, 4)) == 0
            else st.sampled_from(names),
            label="child",
        )
        if choice in ("not a ref", "stale ref"):
            key: Any = SPEC_ID if choice == "not a ref" else stale[0]
            with pytest.raises(da.ChildNotFound):
                self.s.terminate_child(key, timeout=WAIT)
            self.check(Expected(), set())
            event(f"terminate_child of {choice}")
            return
        expected = self.model.terminate(choice)
        self.s.terminate_child(self.refs[choice], timeout=WAIT)
        self.check(expected, set())
        event("terminate_child of a child")

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
            self.s.terminate_child(SPEC_ID)  # type: ignore[arg-type]
        self.check(Expected(), set())
        return True

    def teardown(self) -> None:
        event(f"steps: {self.steps // 5 * 5}+")
        event(f"max_children {self.model.max_children}, extra_args {self.model.extra_args}")
        sup = self.sup
        if sup is not None:
            if sup.is_alive():
                with contextlib.suppress(da.NoProc):  # it may exit on its own meanwhile
                    sup.stop(timeout=10)
            sup.wait(10)


DynamicSupervisorMachine.TestCase.settings = machine_settings(examples=80, steps=20)
test_dynamic_supervisor_follows_the_elixir_model = DynamicSupervisorMachine.TestCase
