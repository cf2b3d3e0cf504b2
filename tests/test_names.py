"""Local names: register / unregister / whereis with `Process.register`'s rules.

Also the restart-name clash: a supervisor restarts a named child while its dead predecessor's
name is not yet freed; the new child must win.

White-box: a few tests read the raw name table (`dspex_actors._naming._names.holder_of`,
which also returns a holder that has stopped but is not freed yet) to show the table itself
forgets a name, not just the alive-checking `whereis`.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors._naming import _names
from dspex_actors.testing import sync, wait_for

from support.naming import SlowToDie
from support.naming import Worker as Echo
from support.supervision import Supervisors


class Plain(pykka.ThreadingActor):
    """A plain pykka actor (not a dspex `Actor`)."""


class SelfNaming(da.Actor):
    """Registers itself under `name` from its own thread, in `on_start`."""

    def __init__(self, name: Any) -> None:
        super().__init__()
        self.name = name

    def on_start(self) -> None:
        da.register(self.name, self.actor_ref)


Start = Callable[[], pykka.ActorRef[Any]]


@pytest.fixture
def actors() -> Iterator[Start]:
    """Start `Echo` actors for a test; stop the survivors afterwards."""
    started: list[pykka.ActorRef[Any]] = []

    def start() -> pykka.ActorRef[Any]:
        ref = Echo.start()
        started.append(ref)
        return ref

    yield start
    for ref in started:
        ref.stop()


def test_a_registered_actor_is_found_by_whereis(actors: Start) -> None:
    ref = actors()
    da.register("names.found", ref)
    assert da.whereis("names.found") is ref
    assert ref.ask("hello", timeout=5) == "hello"


def test_whereis_returns_none_for_an_unknown_or_unhashable_name() -> None:
    assert da.whereis("names.never-registered") is None
    assert da.whereis(["not", "hashable"]) is None
    assert da.whereis(None) is None


def test_a_name_held_by_a_live_actor_is_refused_with_name_taken(actors: Start) -> None:
    holder, other = actors(), actors()
    da.register("names.taken", holder)
    with pytest.raises(da.NameTaken) as info:
        da.register("names.taken", other)
    assert info.value.ref is holder
    assert isinstance(info.value, da.AlreadyStarted)  # what a supervisor turns into a start error
    assert "'names.taken' is already registered" in str(info.value)
    # The same actor registering its own name again is refused too, as in Erlang.
    with pytest.raises(da.NameTaken):
        da.register("names.taken", holder)
    assert da.whereis("names.taken") is holder


def test_an_actor_that_has_stopped_cannot_be_registered(actors: Start) -> None:
    ref = actors()
    ref.stop()
    with pytest.raises(da.NoProc, match="register"):
        da.register("names.dead", ref)
    assert da.whereis("names.dead") is None


def test_an_actor_that_already_has_a_name_cannot_take_a_second(actors: Start) -> None:
    ref = actors()
    da.register("names.first", ref)
    with pytest.raises(da.AlreadyNamed) as info:
        da.register("names.second", ref)
    assert (info.value.name, info.value.requested) == ("names.first", "names.second")
    assert da.whereis("names.second") is None
    assert da.whereis("names.first") is ref


@pytest.mark.parametrize("reserved", [None, True, False])
def test_reserved_names_none_true_and_false_are_refused(actors: Start, reserved: Any) -> None:
    with pytest.raises(da.InvalidOption, match="other than None, True or False") as info:
        da.register(reserved, actors())
    assert info.value.code == "invalid_name"


def test_an_unhashable_name_is_refused_with_a_clear_error(actors: Start) -> None:
    with pytest.raises(da.InvalidOption, match=r"name must be hashable, got: \['a'\]"):
        da.register(["a"], actors())


def test_register_refuses_something_that_is_not_an_actor() -> None:
    with pytest.raises(TypeError, match="expected a pykka ActorRef"):
        da.register("names.not-an-actor", object())


@pytest.mark.parametrize("how", ["stop", "crash", "kill"])
def test_the_name_is_freed_when_its_actor_exits_without_any_lookup(actors: Start, how: str) -> None:
    ref = actors()
    da.register(("names.freed", how), ref)
    if how == "stop":
        ref.stop()
    elif how == "crash":
        ref.tell("crash")
    else:
        da.kill(ref)
    da.wait_exit(ref, 5)
    # The table itself has forgotten it (monitor-driven), not just the alive-checking whereis.
    assert _names.holder_of(("names.freed", how)) is None
    successor = actors()
    da.register(("names.freed", how), successor)
    assert da.whereis(("names.freed", how)) is successor


def test_a_plain_pykka_actor_can_be_named_and_its_name_is_freed_when_it_stops() -> None:
    ref = Plain.start()
    da.register("names.plain", ref)
    assert da.whereis("names.plain") is ref
    ref.stop()
    da.wait_exit(ref, 5)
    assert _names.holder_of("names.plain") is None


def test_unregister_frees_the_name_and_the_actor_keeps_running(actors: Start) -> None:
    ref = actors()
    da.register("names.unreg", ref)
    da.unregister("names.unreg")
    assert da.whereis("names.unreg") is None
    assert ref.ask("still here", timeout=5) == "still here"
    da.register("names.unreg.again", ref)  # it holds no name any more, so it may take another
    assert da.whereis("names.unreg.again") is ref


def test_unregister_of_a_name_nobody_holds_raises_name_not_registered() -> None:
    with pytest.raises(da.NameNotRegistered, match=r"'names\.nobody' is not registered"):
        da.unregister("names.nobody")


def test_a_name_can_be_registered_from_the_actors_own_thread_in_on_start() -> None:
    ref = SelfNaming.start("names.self")
    try:
        assert da.whereis("names.self") is ref
    finally:
        ref.stop()


def test_a_stopped_holder_whose_exit_is_not_processed_yet_is_replaced_at_once(
    actors: Start,
) -> None:
    stopping, release = threading.Event(), threading.Event()
    old = SlowToDie.start(stopping, release)
    da.register("names.window", old)
    old.stop(block=False)
    assert stopping.wait(5)
    try:
        assert not old.is_alive()
        assert _names.holder_of("names.window") is old  # its monitor has not run yet ...
        assert da.whereis("names.window") is None  # ... but whereis already says "nobody"
        new = actors()
        da.register("names.window", new)  # ... and the name is free: no NameTaken
        assert da.whereis("names.window") is new
    finally:
        release.set()
    da.wait_exit(old, 5)
    # The predecessor's late monitor must not free its successor's name.
    assert da.whereis("names.window") is new


def test_a_supervised_child_is_found_by_name_after_every_restart(sups: Supervisors) -> None:
    sup = sups.start([Echo.child_spec(id="echo", name="names.supervised")])
    current = da.whereis("names.supervised")
    assert current is not None
    seen = [current]
    for _ in range(2):
        current.tell("crash")
        da.wait_exit(current, 5)
        current = wait_for(functools.partial(_live_other_than, "names.supervised", current))
        assert current.ask("ping", timeout=5) == "ping"
        seen.append(current)
    sync(sup.actor_ref)
    assert len({ref.actor_urn for ref in seen}) == 3
    assert [c.ref for c in sup.which_children()] == [current]


def test_a_restarted_child_wins_the_race_with_its_predecessors_name(
    sups: Supervisors,
) -> None:
    """The restart registers the name before the dead child's monitors have run."""
    entered, release = threading.Event(), threading.Event()
    calls = 0

    def hold(_down: da.Down) -> None:
        # Runs in the dying child's thread before the names table hears of the exit (monitors
        # run in the order they were set, and this one is set before the supervisor registers).
        entered.set()
        release.wait(10)

    def start() -> pykka.ActorRef[Any]:
        nonlocal calls
        calls += 1
        ref = Echo.start()
        if calls == 1:
            da.monitor(ref, hold)
        return ref

    sup = sups.start([da.ChildSpec("echo", start, name="names.race")], max_restarts=1)
    old = da.whereis("names.race")
    assert old is not None
    old.tell("crash")
    assert entered.wait(5)
    try:
        # The old child's name is not freed yet, and the supervisor restarts the child anyway.
        assert _names.holder_of("names.race") is not None
        new = wait_for(lambda: _live_other_than("names.race", old))
    finally:
        release.set()
    da.wait_exit(old, 5)
    sync(sup.actor_ref)
    assert da.whereis("names.race") is new
    assert sup.is_alive()
    assert calls == 2  # one restart, no failed attempts


def test_supervisor_start_with_a_taken_name_raises_name_taken(sups: Supervisors) -> None:
    first = sups.start([], name="names.sup")
    assert da.whereis("names.sup") is first.actor_ref
    with pytest.raises(da.NameTaken):
        da.Supervisor.start([], name="names.sup")
    assert da.whereis("names.sup") is first.actor_ref


def _live_other_than(name: str, old: pykka.ActorRef[Any]) -> pykka.ActorRef[Any] | None:
    ref = da.whereis(name)
    return ref if ref is not None and ref is not old else None


def test_dynamic_supervisor_start_registers_its_name_and_refuses_a_taken_one(
    sups: Supervisors,
) -> None:
    dyn = sups.dynamic(name="names.dynamic")
    assert da.whereis("names.dynamic") is dyn.actor_ref
    with pytest.raises(da.NameTaken):
        da.DynamicSupervisor.start(name="names.dynamic")
    dyn.stop()
    assert da.whereis("names.dynamic") is None
