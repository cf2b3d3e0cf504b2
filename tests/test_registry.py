"""The Registry actor: unique/duplicate keys, cleanup on exit, dispatch, listeners.

Plus option validation, `Registry.via` names, supervision of a registry, and a concurrent stress
test (8 threads) proving lookups never return an actor whose exit was already seen, and that no
live entry is ever lost.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import dspex_actors as da
from dspex_actors import Entry, Keys, Registry
from dspex_actors.testing import sync, wait_for

from support.naming import SlowToDie, Worker
from support.supervision import Supervisors


class Listener(da.Actor):
    """Records every message it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[Any] = []

    def on_receive(self, message: Any) -> Any:
        if message == "seen?":
            return list(self.seen)
        self.seen.append(message)
        return None


Start = Callable[[], pykka.ActorRef[Any]]


@pytest.fixture
def workers() -> Iterator[Start]:
    started: list[pykka.ActorRef[Any]] = []

    def start() -> pykka.ActorRef[Any]:
        ref = Worker.start()
        started.append(ref)
        return ref

    yield start
    for ref in started:
        ref.stop()


@pytest.fixture
def unique() -> Iterator[Registry]:
    reg = Registry.start(Keys.UNIQUE)
    yield reg
    if reg.is_alive():
        reg.stop()


@pytest.fixture
def duplicate() -> Iterator[Registry]:
    reg = Registry.start(Keys.DUPLICATE)
    yield reg
    if reg.is_alive():
        reg.stop()


# --- registration and cleanup --------------------------------------------------------------------


def test_a_unique_registry_rejects_a_second_live_registration_of_a_key(
    unique: Registry, workers: Start
) -> None:
    holder, other = workers(), workers()
    unique.register("svc", holder, "v1")
    for contender in (other, holder):  # from another actor, and from the holder itself
        with pytest.raises(da.NameTaken) as info:
            unique.register("svc", contender, "v2")
        assert info.value.ref is holder
    # A failed register leaves nothing behind.
    assert unique.lookup("svc") == [Entry(holder, "v1")]
    assert unique.count() == 1
    assert unique.keys(other) == []


def test_a_duplicate_registry_lets_one_actor_register_a_key_several_times(
    duplicate: Registry, workers: Start
) -> None:
    a, b = workers(), workers()
    duplicate.register("topic", a, 1)
    duplicate.register("topic", a, 2)
    duplicate.register("topic", b, 3)
    duplicate.register("other", a, 4)
    assert duplicate.keys(a) == ["topic", "topic", "other"]
    assert duplicate.values("topic", a) == [1, 2]
    assert sorted(e.value for e in duplicate.lookup("topic")) == [1, 2, 3]
    assert duplicate.count() == 4


@pytest.mark.parametrize("how", ["stop", "crash", "kill"])
def test_entries_vanish_when_their_actor_exits_for_any_reason(
    duplicate: Registry, workers: Start, how: str
) -> None:
    doomed, survivor = workers(), workers()
    duplicate.register("a", doomed, 1)
    duplicate.register("a", doomed, 2)
    duplicate.register("b", doomed)
    duplicate.register("a", survivor, 3)
    if how == "stop":
        doomed.stop()
    elif how == "crash":
        doomed.tell("crash")
    else:
        da.kill(doomed)
    da.wait_exit(doomed, 5)
    # Removed from the table itself (synchronous cleanup), not merely filtered out of lookups.
    assert duplicate._raw_entries("a") == [Entry(survivor, 3)]
    assert duplicate._raw_entries("b") == []
    assert duplicate.count() == 1
    assert duplicate.keys(doomed) == []


def test_whereis_returns_none_for_a_stopped_holder_even_before_cleanup(
    unique: Registry,
) -> None:
    stopping, release = threading.Event(), threading.Event()
    holder = SlowToDie.start(stopping, release)
    unique.register("svc", holder)
    holder.stop(block=False)
    assert stopping.wait(5)
    try:
        assert unique._raw_entries("svc") == [Entry(holder, None)]  # not cleaned up yet
        assert unique.whereis("svc") is None
        assert unique.lookup("svc") == []
        assert da.whereis(unique.via("svc")) is None
    finally:
        release.set()
    da.wait_exit(holder, 5)
    assert unique.count() == 0


def test_a_unique_key_held_by_a_stopped_actor_is_taken_over_at_once(
    unique: Registry, workers: Start
) -> None:
    stopping, release = threading.Event(), threading.Event()
    old = SlowToDie.start(stopping, release)
    unique.register("svc", old, "old")
    old.stop(block=False)
    assert stopping.wait(5)
    try:
        new = workers()
        unique.register("svc", new, "new")  # no NameTaken: the holder has stopped
        assert unique.lookup("svc") == [Entry(new, "new")]
    finally:
        release.set()
    da.wait_exit(old, 5)
    # The old actor's late cleanup leaves its successor alone.
    assert unique.lookup("svc") == [Entry(new, "new")]
    assert unique.keys(new) == ["svc"]


def test_register_refuses_a_stopped_actor_and_an_unhashable_key(
    unique: Registry, workers: Start
) -> None:
    ref = workers()
    with pytest.raises(da.InvalidOption, match="key must be hashable"):
        unique.register(["k"], ref)
    ref.stop()
    with pytest.raises(da.NoProc, match=r"Registry\.register"):
        unique.register("k", ref)
    assert unique.count() == 0


# --- via names -----------------------------------------------------------------------------------


def test_a_via_name_registers_and_finds_an_actor_in_the_registry(
    unique: Registry, workers: Start
) -> None:
    ref = workers()
    da.register(unique.via("svc", value="meta"), ref)
    assert da.whereis(unique.via("svc")) is ref
    assert unique.lookup("svc") == [Entry(ref, "meta")]
    da.unregister(unique.via("svc"))
    assert da.whereis(unique.via("svc")) is None
    with pytest.raises(da.NameNotRegistered):
        da.unregister(unique.via("svc"))


def test_starting_with_a_taken_via_name_raises_already_started(
    unique: Registry, sups: Supervisors
) -> None:
    first = sups.start([], name=unique.via("sup"))
    assert unique.whereis("sup") is first.actor_ref
    with pytest.raises(da.AlreadyStarted) as info:
        da.Supervisor.start([], name=unique.via("sup"))
    assert info.value.ref is first.actor_ref


def test_a_via_name_on_a_duplicate_registry_is_refused(duplicate: Registry) -> None:
    with pytest.raises(da.InvalidOption, match=r"Keys\.UNIQUE to name actors with via"):
        duplicate.via("svc")


def test_a_supervised_child_named_by_via_is_found_after_a_restart(
    unique: Registry, sups: Supervisors
) -> None:
    sup = sups.start([Worker.child_spec(id="w", name=unique.via("worker"))])
    old = unique.whereis("worker")
    assert old is not None
    old.tell("crash")
    da.wait_exit(old, 5)
    new = wait_for(lambda: unique.whereis("worker"))
    assert new is not old
    sync(sup.actor_ref)
    assert [c.ref for c in sup.which_children()] == [new]


# --- dispatch, unregister, update_value, match, meta ---------------------------------------------


def test_dispatch_never_calls_back_for_a_key_without_entries_and_once_otherwise(
    duplicate: Registry, workers: Start
) -> None:
    calls: list[list[Entry]] = []
    duplicate.dispatch("empty", calls.append)
    assert calls == []
    a, b = workers(), workers()
    duplicate.register("topic", a, 1)
    duplicate.register("topic", b, 2)
    duplicate.dispatch("topic", calls.append)
    assert len(calls) == 1
    assert sorted(e.value for e in calls[0]) == [1, 2]
    b.stop()
    a.stop()
    duplicate.dispatch("topic", calls.append)  # every entry gone: not called again
    assert len(calls) == 1


def test_unregister_removes_all_entries_of_the_actor_and_drops_its_monitor(
    duplicate: Registry, workers: Start
) -> None:
    a, b = workers(), workers()
    duplicate.register("topic", a, 1)
    duplicate.register("topic", a, 2)
    duplicate.register("other", a, 3)
    duplicate.register("topic", b, 4)
    duplicate.unregister("topic", a)
    assert duplicate.lookup("topic") == [Entry(b, 4)]
    assert duplicate.keys(a) == ["other"]
    assert a.actor_urn in duplicate._table.monitors  # still has a key: still monitored
    duplicate.unregister("other", a)
    assert a.actor_urn not in duplicate._table.monitors  # no key left: the monitor is gone
    # Unregistering what is not there is fine (Elixir returns :ok).
    duplicate.unregister("never", a)
    duplicate.unregister("topic", a)
    duplicate.unregister(["unhashable"], a)
    assert duplicate.count() == 1


def test_update_value_changes_only_the_actors_own_key_and_returns_new_and_old(
    unique: Registry, workers: Start
) -> None:
    owner, stranger = workers(), workers()
    unique.register("counter", owner, 1)
    assert unique.update_value("counter", owner, lambda v: v + 1) == (2, 1)
    assert unique.lookup("counter") == [Entry(owner, 2)]
    assert unique.update_value("counter", stranger, lambda v: v + 100) is None
    assert unique.update_value("missing", owner, lambda v: v + 100) is None
    assert unique.lookup("counter") == [Entry(owner, 2)]


def test_update_value_on_a_duplicate_registry_raises(duplicate: Registry, workers: Start) -> None:
    ref = workers()
    duplicate.register("k", ref, 1)
    with pytest.raises(da.InvalidOption, match=r"Keys\.UNIQUE to use update_value"):
        duplicate.update_value("k", ref, lambda v: v)


def test_update_value_reruns_the_function_when_the_entry_changed_meanwhile(
    unique: Registry, workers: Start
) -> None:
    owner = workers()
    unique.register("counter", owner, 0)
    seen: list[int] = []

    def bump(value: int) -> int:
        seen.append(value)
        if len(seen) == 1:  # a concurrent update lands while we compute
            unique.update_value("counter", owner, lambda v: v + 10)
        return value + 1

    assert unique.update_value("counter", owner, bump) == (11, 10)
    assert seen == [0, 10]
    assert unique.lookup("counter") == [Entry(owner, 11)]


def test_match_and_select_filter_entries_and_count_them(
    duplicate: Registry, workers: Start
) -> None:
    a, b = workers(), workers()
    duplicate.register("jobs", a, {"size": 1})
    duplicate.register("jobs", b, {"size": 5})
    duplicate.register("other", b, {"size": 9})
    big = duplicate.match("jobs", lambda v: v["size"] > 2)
    assert big == [Entry(b, {"size": 5})]
    assert duplicate.count_match("jobs", lambda v: v["size"] > 0) == 2
    everything_of_b = duplicate.select(lambda _key, entry: entry.ref is b)
    assert sorted(k for k, _ in everything_of_b) == ["jobs", "other"]
    assert duplicate.count_select(lambda key, _entry: key == "other") == 1


def test_meta_put_meta_and_delete_meta_round_trip() -> None:
    reg = Registry.start(Keys.UNIQUE, meta={"custom_key": "custom_value"})
    try:
        assert reg.meta("custom_key") == "custom_value"
        assert reg.meta("missing") is None
        assert reg.meta("missing", default=0) == 0
        reg.put_meta(("tuple", "key"), [1, 2])
        assert reg.meta(("tuple", "key")) == [1, 2]
        reg.delete_meta("custom_key")
        reg.delete_meta("custom_key")  # deleting twice is fine
        assert reg.meta("custom_key") is None
    finally:
        reg.stop()


# --- listeners -----------------------------------------------------------------------------------


def test_listeners_hear_explicit_register_and_unregister_but_not_a_crash(
    workers: Start,
) -> None:
    by_ref, by_name = Listener.start(), Listener.start()
    da.register("registry.listener", by_name)
    reg = Registry.start(Keys.DUPLICATE, listeners=[by_ref, "registry.listener"])
    try:
        ref = workers()
        reg.register("topic", ref, 7)
        reg.unregister("topic", ref)
        reg.unregister("topic", ref)  # nothing removed: nothing to tell
        reg.register("topic", ref, 8)
        ref.tell("crash")
        da.wait_exit(ref, 5)
        assert reg.lookup("topic") == []
        for listener in (by_ref, by_name):
            seen = listener.ask("seen?", timeout=5)
            assert seen == [
                da.Registered(reg, "topic", ref, 7),
                da.Unregistered(reg, "topic", ref),
                da.Registered(reg, "topic", ref, 8),
            ]
    finally:
        reg.stop()
        by_ref.stop()
        by_name.stop()


def test_register_succeeds_and_is_cleaned_up_when_a_listener_has_already_exited() -> None:
    """A listener that is gone is skipped: the register neither fails nor half-happens."""
    listener = Listener.start()
    listener.stop()
    reg = Registry.start(Keys.UNIQUE, listeners=[listener])
    member = Worker.start()
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


# --- the registry as an actor: options, lifetime, names, supervision ------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keys": "both"}, "keys must be Keys.UNIQUE or Keys.DUPLICATE, got: 'both'"),
        ({"keys": None}, "keys must be Keys.UNIQUE or Keys.DUPLICATE, got: None"),
        ({"keys": Keys.UNIQUE, "meta": [("a", 1)]}, "meta must be a mapping"),
        ({"keys": Keys.UNIQUE, "listeners": "me"}, "listeners must be a list of actor refs"),
        ({"keys": Keys.UNIQUE, "listeners": [["x"]]}, "listeners must be actor refs"),
        ({"keys": Keys.UNIQUE, "name": None, "meta": 3}, "meta must be a mapping, got: 3"),
    ],
)
def test_invalid_registry_options_raise_invalid_option_and_start_nothing(
    options: dict[str, Any], message: str
) -> None:
    before = len(pykka.ActorRegistry.get_all())
    with pytest.raises(da.InvalidOption, match=re.escape(message)):
        Registry.start(**options)
    assert len(pykka.ActorRegistry.get_all()) == before


def test_registry_child_spec_validates_its_options_before_anything_starts() -> None:
    with pytest.raises(da.InvalidOption, match="keys must be"):
        Registry.child_spec("bogus", id="reg")
    with pytest.raises(da.InvalidOption, match="meta must be a mapping"):
        Registry.child_spec(Keys.UNIQUE, id="reg", meta=1)  # type: ignore[arg-type]
    spec = Registry.child_spec(Keys.UNIQUE, id="reg", restart="transient")
    assert (spec.id, spec.restart) == ("reg", da.Restart.TRANSIENT)


def test_keys_may_be_given_as_a_string() -> None:
    reg = Registry.start("duplicate")
    try:
        assert reg.kind is Keys.DUPLICATE
    finally:
        reg.stop()


def test_a_stopped_registry_raises_no_proc_and_frees_its_name_and_monitors(
    workers: Start,
) -> None:
    reg = Registry.start(Keys.UNIQUE, name="registry.named")
    assert da.whereis("registry.named") is reg.actor_ref
    ref = workers()
    reg.register("svc", ref)
    reg.stop()
    assert da.whereis("registry.named") is None
    assert reg._table.monitors == {}
    for call in (
        lambda: reg.lookup("svc"),
        lambda: reg.register("svc", ref),
        lambda: reg.unregister("svc", ref),
        lambda: reg.count(),
        lambda: reg.put_meta("k", 1),
    ):
        with pytest.raises(da.NoProc, match="Registry"):
            call()
    assert ref.ask("alive", timeout=5) == "alive"  # registered actors are not affected


def test_a_registry_name_that_is_taken_raises_name_taken_and_leaves_nothing_running() -> None:
    first = Registry.start(Keys.UNIQUE, name="registry.clash")
    try:
        before = len(pykka.ActorRegistry.get_all())
        with pytest.raises(da.NameTaken):
            Registry.start(Keys.UNIQUE, name="registry.clash")
        assert len(pykka.ActorRegistry.get_all()) == before
    finally:
        first.stop()


def test_from_ref_drives_a_running_registry(unique: Registry, workers: Start) -> None:
    ref = workers()
    unique.register("svc", ref)
    again = Registry.from_ref(unique.actor_ref)
    assert again.lookup("svc") == [Entry(ref, None)]
    assert again == unique
    with pytest.raises(TypeError, match="not a Registry actor"):
        Registry.from_ref(ref)


def test_a_supervised_registry_is_restarted_under_its_name(sups: Supervisors) -> None:
    sup = sups.start([Registry.child_spec(Keys.UNIQUE, id="reg", name="registry.supervised")])
    first = da.whereis("registry.supervised")
    assert first is not None
    da.kill(first)
    da.wait_exit(first, 5)
    second = wait_for(lambda: da.whereis("registry.supervised"))
    assert second is not first
    sync(sup.actor_ref)
    Registry.from_ref(second).put_meta("ok", True)
    assert Registry.from_ref(second).meta("ok") is True


# --- concurrency -----------------------------------------------------------------------------


def test_concurrent_register_and_lookup_from_8_threads_never_return_a_seen_dead_actor_nor_lose_an_entry(  # noqa: E501
    workers: Start,
) -> None:
    threads_n, rounds = 8, 150
    reg = Registry.start(Keys.DUPLICATE)
    uniq = Registry.start(Keys.UNIQUE)
    owners = [workers() for _ in range(threads_n)]
    mortals = [workers() for _ in range(threads_n)]
    dead: set[str] = set()  # urns of actors whose exit has fully been seen
    dead_lock = threading.Lock()
    errors: list[str] = []
    start = threading.Barrier(threads_n + 1)

    def exited_before() -> frozenset[str]:
        with dead_lock:
            return frozenset(dead)

    def check(found: list[pykka.ActorRef[Any]], seen_dead: frozenset[str], what: str) -> None:
        for ref in found:
            if ref.actor_urn in seen_dead:
                errors.append(f"{what} returned an actor that had already exited: {ref}")

    def run(t: int) -> None:
        mine, mortal = owners[t], mortals[t]
        reg.register("mortal", mortal, t)
        da.register(("stress.mortal", t), mortal)
        start.wait(10)
        for j in range(rounds):
            reg.register((t, j), mine, j)
            uniq.register((t, j), mine, j)
            da.register(("stress", t), mine)
            seen_dead = exited_before()
            check([e.ref for e in reg.lookup("mortal")], seen_dead, "lookup")
            other = (t + j) % threads_n
            named = da.whereis(("stress.mortal", other))
            check([named] if named is not None else [], seen_dead, "whereis")
            if da.whereis(("stress", t)) is not mine:
                errors.append(f"thread {t} lost its local name in round {j}")
            if uniq.whereis((t, j)) is not mine:
                errors.append(f"thread {t} lost unique key {(t, j)}")
            da.unregister(("stress", t))

    def killer() -> None:
        start.wait(10)
        for ref in mortals:
            da.kill(ref)
            da.wait_exit(ref, 5)
            with dead_lock:
                dead.add(ref.actor_urn)

    pool = [threading.Thread(target=run, args=(t,), name=f"stress-{t}") for t in range(threads_n)]
    pool.append(threading.Thread(target=killer, name="stress-killer"))
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(60)
        assert not any(thread.is_alive() for thread in pool)
        assert errors == []
        # Nothing lost: every entry of a live actor is there; every mortal's entry is gone.
        for t in range(threads_n):
            assert reg.keys(owners[t]) == [(t, j) for j in range(rounds)]
            assert [e.value for e in reg.lookup((t, rounds - 1))] == [rounds - 1]
            assert uniq.whereis((t, 0)) is owners[t]
        assert reg.count() == threads_n * rounds
        assert uniq.count() == threads_n * rounds
        assert reg._raw_entries("mortal") == []
    finally:
        reg.stop()
        uniq.stop()


# --- model-based: any sequence of calls agrees with a plain model -----------------------------


class RegistryMachine(RuleBasedStateMachine):
    """Random register / unregister / kill / update sequences, checked against a list model.

    Covers registration, cleanup and unregister together: clashes, duplicates, cleanup on exit
    (kills), unique takeover after a death, and unregister of all of an actor's entries under a
    key.
    """

    ACTORS = 3

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[pykka.ActorRef[Any]] = [Worker.start() for _ in range(self.ACTORS)]
        self.regs = {kind: Registry.start(kind) for kind in Keys}
        # model[kind][key] = [(actor index, value), ...] in registration order
        self.model: dict[Keys, dict[str, list[tuple[int, int]]]] = {kind: {} for kind in Keys}

    @rule(
        kind=st.sampled_from(list(Keys)),
        key=st.sampled_from(["a", "b"]),
        who=st.integers(0, ACTORS - 1),
        value=st.integers(0, 9),
    )
    def register(self, kind: Keys, key: str, who: int, value: int) -> None:
        ref, entries = self.refs[who], self.model[kind].setdefault(key, [])
        if not ref.is_alive():
            with pytest.raises(da.NoProc):
                self.regs[kind].register(key, ref, value)
        elif kind is Keys.UNIQUE and entries:
            with pytest.raises(da.NameTaken):
                self.regs[kind].register(key, ref, value)
        else:
            self.regs[kind].register(key, ref, value)
            entries.append((who, value))

    @rule(
        kind=st.sampled_from(list(Keys)),
        key=st.sampled_from(["a", "b"]),
        who=st.integers(0, ACTORS - 1),
    )
    def unregister(self, kind: Keys, key: str, who: int) -> None:
        self.regs[kind].unregister(key, self.refs[who])
        entries = self.model[kind].get(key, [])
        self.model[kind][key] = [(w, v) for w, v in entries if w != who]

    @rule(key=st.sampled_from(["a", "b"]), who=st.integers(0, ACTORS - 1))
    def update(self, key: str, who: int) -> None:
        entries = self.model[Keys.UNIQUE].get(key, [])
        result = self.regs[Keys.UNIQUE].update_value(key, self.refs[who], lambda v: v + 1)
        if entries and entries[0][0] == who:
            old = entries[0][1]
            assert result == (old + 1, old)
            entries[0] = (who, old + 1)
        else:
            assert result is None

    @rule(who=st.integers(0, ACTORS - 1))
    def kill(self, who: int) -> None:
        da.kill(self.refs[who])
        da.wait_exit(self.refs[who], 5)
        for table in self.model.values():
            for key, entries in table.items():
                table[key] = [(w, v) for w, v in entries if w != who]

    @rule(who=st.integers(0, ACTORS - 1))
    def respawn(self, who: int) -> None:
        if not self.refs[who].is_alive():
            self.refs[who] = Worker.start()

    @invariant()
    def agrees_with_the_model(self) -> None:
        for kind, reg in self.regs.items():
            expected_count = 0
            for key in ("a", "b"):
                expected = [(self.refs[w], v) for w, v in self.model[kind].get(key, [])]
                assert [(e.ref, e.value) for e in reg.lookup(key)] == expected
                assert [(e.ref, e.value) for e in reg._raw_entries(key)] == expected
                expected_count += len(expected)
            assert reg.count() == expected_count
            for who, ref in enumerate(self.refs):
                model_keys = [
                    k for k, entries in self.model[kind].items() for w, _ in entries if w == who
                ]
                assert sorted(reg.keys(ref)) == sorted(model_keys)

    def teardown(self) -> None:
        for reg in self.regs.values():
            reg.stop()
        for ref in self.refs:
            ref.stop()


RegistryMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, database=None
)
test_random_call_sequences_agree_with_a_model = RegistryMachine.TestCase
