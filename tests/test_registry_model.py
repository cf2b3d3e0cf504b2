"""Stateful model test of `Registry` (unique and duplicate) and of local names.

A hypothesis state machine drives a unique and a duplicate registry, the process-wide local
names (`register` / `whereis` / `unregister`, plain and through `Registry.via`), and a few
in-process actors that register, unregister, update values, stop, crash, get killed, or stop
slowly (stopped, cleanup not yet run), and are replaced by new actors. A plain model (dicts
and lists, no dspex_actors code) predicts every answer:

- every query (`lookup`, `whereis`, `keys`, `values`, `count`, `match`, `count_match`,
  `select`, `count_select`, `dispatch`, `meta`, `da.whereis`) equals the model once the step
  has settled (each exit is waited for with `wait_exit`: cleanup runs before it returns);
- a unique key has at most one entry; registering a key held by a live actor raises
  `NameTaken` naming the holder (the holder itself included), and changes nothing;
- a stopped actor owns nothing: no entry (not even a stale one in the table), no key, no name;
- listeners hear exactly the explicit register/unregister calls, in order, and no exit.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pykka
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import dspex_actors as da
from dspex_actors import Entry, Keys, Registry

from support.models import machine_settings
from support.naming import SlowToDie, Worker

pytestmark = pytest.mark.leak_check

KEYS = ["a", "b", ("t", 1)]
NAMES = [("registry_model", "n0"), ("registry_model", "n1")]
META_KEYS = ["m0", "m1"]
MAX_ACTORS = 6
INITIAL_ACTORS = 3
WAIT = 5.0
MISSING = object()


class Listener(da.Actor):
    """Records every `Registered` / `Unregistered` it is told, as plain tuples."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[Any, ...]] = []

    def on_receive(self, message: Any) -> Any:
        if message == "seen?":
            return list(self.seen)
        if isinstance(message, da.Registered):
            self.seen.append(("register", message.key, message.ref.actor_urn, message.value))
        elif isinstance(message, da.Unregistered):
            self.seen.append(("unregister", message.key, message.ref.actor_urn))
        else:
            self.seen.append(("unexpected", repr(message)))
        return None


def even(value: Any) -> bool:
    return isinstance(value, int) and value % 2 == 0


def exited(ref: pykka.ActorRef[Any]) -> None:
    da.wait_exit(ref, WAIT)


class RegistryModel(RuleBasedStateMachine):
    """The registries, names and actors, against `model` / `names` / `events` / `meta`."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[pykka.ActorRef[Any]] = []
        self.others: list[pykka.ActorRef[Any]] = []  # SlowToDie actors, for teardown
        self.listeners = {kind: Listener.start() for kind in Keys}
        self.regs = {kind: Registry.start(kind, listeners=[self.listeners[kind]]) for kind in Keys}
        for _ in range(INITIAL_ACTORS):
            self.refs.append(Worker.start())
        self.alive = [True] * INITIAL_ACTORS
        # model[kind][key] = [(actor index, value), ...] in registration order
        self.model: dict[Keys, dict[Any, list[tuple[int, int]]]] = {kind: {} for kind in Keys}
        self.names: dict[Any, int] = {}  # local name -> actor index
        self.events: dict[Keys, list[tuple[Any, ...]]] = {kind: [] for kind in Keys}
        self.meta: dict[Keys, dict[str, int]] = {kind: {} for kind in Keys}

    # -- helpers --

    def who(self, index: int) -> int:
        return index % len(self.refs)

    def entries(self, kind: Keys, key: Any) -> list[tuple[int, int]]:
        return self.model[kind].setdefault(key, [])

    def holder(self, key: Any) -> int | None:
        entries = self.model[Keys.UNIQUE].get(key, [])
        return entries[0][0] if entries else None

    def model_register(self, kind: Keys, key: Any, who: int, value: Any) -> None:
        self.entries(kind, key).append((who, value))
        self.events[kind].append(("register", key, self.refs[who].actor_urn, value))

    def model_unregister(self, kind: Keys, key: Any, who: int) -> None:
        entries = self.entries(kind, key)
        kept = [(w, v) for w, v in entries if w != who]
        if len(kept) != len(entries):
            self.events[kind].append(("unregister", key, self.refs[who].actor_urn))
        self.model[kind][key] = kept

    def model_exit(self, who: int) -> None:
        """An actor exited: its entries and names go, and listeners hear nothing."""
        self.alive[who] = False
        for table in self.model.values():
            for key, entries in table.items():
                table[key] = [(w, v) for w, v in entries if w != who]
        self.names = {n: w for n, w in self.names.items() if w != who}

    def expect_register(self, kind: Keys, key: Any, who: int, value: Any, call: Any) -> None:
        """Run `call()` (a registration of `who` under `key`) and check it against the model."""
        holder = self.holder(key)
        if not self.alive[who]:
            with pytest.raises(da.NoProc):
                call()
        elif kind is Keys.UNIQUE and holder is not None:
            with pytest.raises(da.NameTaken) as info:
                call()
            assert info.value.ref == self.refs[holder]
        else:
            call()
            self.model_register(kind, key, who, value)

    # -- registry rules --

    @rule(
        kind=st.sampled_from(list(Keys)),
        key=st.sampled_from(KEYS),
        index=st.integers(0, MAX_ACTORS - 1),
        value=st.integers(0, 9),
    )
    def register(self, kind: Keys, key: Any, index: int, value: int) -> None:
        who = self.who(index)
        reg = self.regs[kind]
        self.expect_register(
            kind, key, who, value, lambda: reg.register(key, self.refs[who], value)
        )

    @rule(
        kind=st.sampled_from(list(Keys)),
        key=st.sampled_from(KEYS),
        index=st.integers(0, MAX_ACTORS - 1),
    )
    def unregister(self, kind: Keys, key: Any, index: int) -> None:
        who = self.who(index)
        self.regs[kind].unregister(key, self.refs[who])  # never raises, even for no entry
        self.model_unregister(kind, key, who)

    @rule(key=st.sampled_from(KEYS), index=st.integers(0, MAX_ACTORS - 1), add=st.integers(1, 3))
    def update_value(self, key: Any, index: int, add: int) -> None:
        who = self.who(index)
        result = self.regs[Keys.UNIQUE].update_value(key, self.refs[who], lambda v: v + add)
        entries = self.entries(Keys.UNIQUE, key)
        if entries and entries[0][0] == who:
            old = entries[0][1]
            assert result == (old + add, old)
            entries[0] = (who, old + add)
        else:
            assert result is None
        with pytest.raises(da.InvalidOption):
            self.regs[Keys.DUPLICATE].update_value(key, self.refs[who], lambda v: v)

    @rule(kind=st.sampled_from(list(Keys)), key=st.sampled_from(META_KEYS), value=st.integers())
    def put_meta(self, kind: Keys, key: str, value: int) -> None:
        self.regs[kind].put_meta(key, value)
        self.meta[kind][key] = value

    @rule(kind=st.sampled_from(list(Keys)), key=st.sampled_from(META_KEYS))
    def delete_meta(self, kind: Keys, key: str) -> None:
        self.regs[kind].delete_meta(key)
        self.meta[kind].pop(key, None)

    # -- names: local, and `via` the unique registry --

    @rule(name=st.sampled_from(NAMES), index=st.integers(0, MAX_ACTORS - 1))
    def register_name(self, name: Any, index: int) -> None:
        who, ref = self.who(index), self.refs[self.who(index)]
        holder = self.names.get(name)
        if not self.alive[who]:
            with pytest.raises(da.NoProc):
                da.register(name, ref)
        elif holder is not None:
            with pytest.raises(da.NameTaken) as info:
                da.register(name, ref)
            assert info.value.ref == self.refs[holder]
        elif who in self.names.values():
            with pytest.raises(da.AlreadyNamed):
                da.register(name, ref)
        else:
            da.register(name, ref)
            self.names[name] = who

    @rule(name=st.sampled_from(NAMES))
    def unregister_name(self, name: Any) -> None:
        if name in self.names:
            da.unregister(name)
            del self.names[name]
        else:
            with pytest.raises(da.NameNotRegistered):
                da.unregister(name)

    @rule(
        key=st.sampled_from(KEYS),
        index=st.integers(0, MAX_ACTORS - 1),
        value=st.integers(0, 9),
    )
    def register_via(self, key: Any, index: int, value: int) -> None:
        who = self.who(index)
        via = self.regs[Keys.UNIQUE].via(key, value)
        self.expect_register(Keys.UNIQUE, key, who, value, lambda: da.register(via, self.refs[who]))

    @rule(key=st.sampled_from(KEYS))
    def unregister_via(self, key: Any) -> None:
        holder = self.holder(key)
        via = self.regs[Keys.UNIQUE].via(key)
        if holder is None:
            with pytest.raises(da.NameNotRegistered):
                da.unregister(via)
        else:
            da.unregister(via)
            self.model_unregister(Keys.UNIQUE, key, holder)

    # -- actor lifecycle --

    @rule(index=st.integers(0, MAX_ACTORS - 1), how=st.sampled_from(["stop", "crash", "kill"]))
    def end(self, index: int, how: str) -> None:
        who = self.who(index)
        ref = self.refs[who]
        if how == "stop":
            ref.stop()
        elif how == "crash":
            if self.alive[who]:
                ref.tell("crash")
        else:
            da.kill(ref)
        exited(ref)
        self.model_exit(who)

    @precondition(lambda self: len(self.refs) < MAX_ACTORS)
    @rule()
    def start(self) -> None:
        self.refs.append(Worker.start())
        self.alive.append(True)

    @rule(
        key=st.sampled_from(KEYS),
        name=st.sampled_from(NAMES),
        index=st.integers(0, MAX_ACTORS - 1),
        value=st.integers(0, 9),
    )
    def takeover_while_exiting(self, key: Any, name: Any, index: int, value: int) -> None:
        """A stopped holder not yet cleaned up: invisible to reads, and its key is free."""
        if self.holder(key) is not None or name in self.names:
            return
        successor = self.who(index)  # chosen before the temporary slot exists
        stopping, release = threading.Event(), threading.Event()
        slow = SlowToDie.start(stopping, release)
        self.others.append(slow)
        self.refs.append(slow)  # a temporary slot, so the model's events can name it
        self.alive.append(True)
        slot = len(self.refs) - 1
        try:
            self.regs[Keys.UNIQUE].register(key, slow, value)
            self.model_register(Keys.UNIQUE, key, slot, value)
            self.regs[Keys.DUPLICATE].register(key, slow, value)
            self.model_register(Keys.DUPLICATE, key, slot, value)
            da.register(name, slow)
            slow.stop(block=False)
            assert stopping.wait(WAIT)
            # Stopped, cleanup pending: no read returns it.
            for reg in self.regs.values():
                assert reg.whereis(key) != slow
                assert all(e.ref != slow for e in reg.lookup(key))
                assert reg.keys(slow) == []
                assert reg.values(key, slow) == []
                assert all(e.ref != slow for _, e in reg.select(lambda k, e: True))
            assert da.whereis(name) is None
            assert da.whereis(self.regs[Keys.UNIQUE].via(key)) is None
            # ...and its unique key and its name are free at once, for a live successor.
            if self.alive[successor]:
                self.regs[Keys.UNIQUE].register(key, self.refs[successor], value)
                if successor not in self.names.values():
                    da.register(name, self.refs[successor])
        finally:
            release.set()
        exited(slow)
        self.model_exit(slot)
        if self.alive[successor]:
            self.model_register(Keys.UNIQUE, key, successor, value)
            if successor not in self.names.values():
                self.names[name] = successor
        # Drop the temporary slot (it owns nothing now): indexes of the others are unchanged.
        assert self.refs.pop() is slow
        assert self.alive.pop() is False

    # -- invariants (every step is settled) --

    @invariant()
    def registries_agree_with_the_model(self) -> None:
        for kind, reg in self.regs.items():
            assert reg.kind is kind
            table = self.model[kind]
            expected_all: list[tuple[Any, Any, Any]] = []
            for key in KEYS:
                expected = [Entry(self.refs[w], v) for w, v in table.get(key, [])]
                expected_all += [(key, e.ref, e.value) for e in expected]
                assert reg.lookup(key) == expected
                assert reg._raw_entries(key) == expected  # cleaned up, not merely filtered
                assert reg.whereis(key) == (expected[0].ref if expected else None)
                evens = [e for e in expected if even(e.value)]
                assert reg.match(key, even) == evens
                assert reg.count_match(key, even) == len(evens)
                calls: list[list[Entry]] = []
                reg.dispatch(key, calls.append)
                assert calls == ([expected] if expected else [])
                if kind is Keys.UNIQUE:
                    assert len(expected) <= 1
                    assert da.whereis(reg.via(key)) == reg.whereis(key)
            assert reg.count() == len(expected_all)
            selected = [(k, e.ref, e.value) for k, e in reg.select(lambda k, e: True)]
            assert Counter(map(repr, selected)) == Counter(map(repr, expected_all))
            assert reg.count_select(lambda k, e: even(e.value)) == sum(
                1 for _, _, v in expected_all if even(v)
            )
            for who, ref in enumerate(self.refs):
                own = [(k, v) for k, entries in table.items() for w, v in entries if w == who]
                assert Counter(map(repr, reg.keys(ref))) == Counter(repr(k) for k, _ in own)
                for key in KEYS:
                    assert reg.values(key, ref) == [v for k, v in own if k == key]
                if not self.alive[who]:
                    assert own == []
            for key in META_KEYS:
                assert reg.meta(key, MISSING) == self.meta[kind].get(key, MISSING)

    @invariant()
    def names_agree_with_the_model(self) -> None:
        for name in NAMES:
            who = self.names.get(name)
            assert da.whereis(name) == (self.refs[who] if who is not None else None)
            if who is not None:
                assert self.alive[who]

    @invariant()
    def listeners_heard_exactly_the_explicit_calls(self) -> None:
        for kind, listener in self.listeners.items():
            assert listener.ask("seen?", timeout=WAIT) == self.events[kind]

    def teardown(self) -> None:
        for ref in [*self.refs, *self.others]:
            ref.stop()
        for ref in [*self.refs, *self.others]:
            exited(ref)
        for reg in self.regs.values():
            reg.stop()
            with pytest.raises(da.NoProc):
                reg.lookup(KEYS[0])
        for listener in self.listeners.values():
            listener.stop()
        for name in NAMES:
            assert da.whereis(name) is None


RegistryModel.TestCase.settings = machine_settings(examples=100, steps=25)
test_registry_and_names_agree_with_a_model = RegistryModel.TestCase
