"""`detect_service`: the order it tries its candidates in, the error message, and bad input.

`detect_service` prefers a live ``SessionPool``, falls back to a live ``Bridge``, then to the
Registry, and otherwise says "Python bridge not available". Each case of that decision has a
test here, with plain actors and with a real supervisor restarting the pool.

White-box: one test wraps `dspex_actors._naming._names.holder_of` (the raw name table, with
no public API) to make a candidate die in the middle of detection.
"""

from __future__ import annotations

import functools
import importlib
import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import Keys, Registry, Service, detect_service
from dspex_actors._naming import _names
from dspex_actors.testing import sync, wait_for

from support.naming import SlowToDie
from support.supervision import Supervisors

CANDIDATES = ["session_pool", "bridge"]


class SessionPool(da.Actor):
    """Stands in for the pool service; `"crash"` told makes it crash."""

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("pool crashed")
        return ("pool", message)


class Bridge(da.Actor):
    """Stands in for the single-process bridge service."""

    def on_receive(self, message: Any) -> Any:
        return ("bridge", message)


@pytest.fixture
def services() -> Iterator[dict[str, pykka.ActorRef[Any]]]:
    """A live pool and bridge registered under the candidate names."""
    refs: dict[str, pykka.ActorRef[Any]] = {
        "session_pool": SessionPool.start(),
        "bridge": Bridge.start(),
    }
    for name, ref in refs.items():
        da.register(name, ref)
    yield refs
    for ref in refs.values():
        ref.stop()


@pytest.fixture
def registry() -> Iterator[Registry]:
    reg = Registry.start(Keys.UNIQUE)
    yield reg
    if reg.is_alive():
        reg.stop()


def test_the_pool_is_preferred_when_pool_and_bridge_are_both_alive(
    services: dict[str, pykka.ActorRef[Any]],
) -> None:
    found = detect_service(CANDIDATES)
    assert found == Service("session_pool", services["session_pool"], "local")
    assert found.ref.ask("hi", timeout=5) == ("pool", "hi")


def test_a_dead_pool_falls_back_to_the_live_bridge(
    services: dict[str, pykka.ActorRef[Any]],
) -> None:
    services["session_pool"].tell("crash")
    da.wait_exit(services["session_pool"], 5)
    assert detect_service(CANDIDATES) == Service("bridge", services["bridge"], "local")


def test_a_pool_that_has_stopped_but_still_holds_its_name_is_skipped_as_dead(
    services: dict[str, pykka.ActorRef[Any]],
) -> None:
    stopping, release = threading.Event(), threading.Event()
    stale = SlowToDie.start(stopping, release)
    da.register("stale_pool", stale)
    stale.stop(block=False)
    assert stopping.wait(5)
    try:
        found = detect_service(["stale_pool", "bridge"])
        assert found == Service("bridge", services["bridge"], "local")
        with pytest.raises(da.ServiceUnavailable) as info:
            detect_service(["stale_pool"])
        assert info.value.tried == [("stale_pool", "dead")]
    finally:
        release.set()
    da.wait_exit(stale, 5)


def test_when_no_name_is_registered_the_registry_fallback_finds_the_service(
    registry: Registry,
) -> None:
    bridge = Bridge.start()
    try:
        registry.register("bridge", bridge)
        found = detect_service(CANDIDATES, registry=registry)
        assert found == Service("bridge", bridge, "registry")
    finally:
        bridge.stop()


def test_local_names_of_every_candidate_come_before_the_registry(
    registry: Registry,
) -> None:
    in_registry, by_name = SessionPool.start(), Bridge.start()
    try:
        registry.register("session_pool", in_registry)
        da.register("bridge", by_name)
        # The order: live pool name, live bridge name, then the registry.
        assert detect_service(CANDIDATES, registry=registry) == Service("bridge", by_name, "local")
    finally:
        in_registry.stop()
        by_name.stop()


def test_nothing_alive_raises_service_unavailable_naming_every_candidate(
    registry: Registry,
) -> None:
    with pytest.raises(da.ServiceUnavailable) as info:
        detect_service(CANDIDATES, registry=registry)
    assert str(info.value) == (
        "no service available: tried 'session_pool' (not registered; not in registry), "
        "'bridge' (not registered; not in registry)"
    )
    assert info.value.tried == [
        ("session_pool", "not registered; not in registry"),
        ("bridge", "not registered; not in registry"),
    ]
    assert isinstance(info.value, LookupError)
    with pytest.raises(da.ServiceUnavailable, match=r"^no service available: tried 'x' "):
        detect_service(["x"])


def test_a_stopped_registry_is_reported_not_raised(registry: Registry) -> None:
    registry.stop()
    with pytest.raises(da.ServiceUnavailable) as info:
        detect_service(["bridge"], registry=registry)
    assert info.value.tried == [("bridge", "not registered; registry not running")]


def test_a_service_that_dies_during_detection_is_never_returned(
    services: dict[str, pykka.ActorRef[Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_holder_of = _names.holder_of

    def holder_of_then_die(name: Any) -> pykka.ActorRef[Any] | None:
        ref = real_holder_of(name)
        if name == "session_pool" and ref is not None:
            da.kill(ref)  # the pool dies between its lookup and the return
            da.wait_exit(ref, 5)
        return ref

    monkeypatch.setattr(_names, "holder_of", holder_of_then_die)
    found = detect_service(CANDIDATES)
    assert found == Service("bridge", services["bridge"], "local")
    assert not services["session_pool"].is_alive()


def test_a_registry_entry_that_dies_during_detection_is_never_returned(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    doomed, bridge = SessionPool.start(), Bridge.start()
    try:
        registry.register("session_pool", doomed)
        registry.register("bridge", bridge)
        real_raw_entries = Registry._raw_entries

        def raw_entries_then_die(self: Registry, key: Any) -> list[da.Entry]:
            entries = real_raw_entries(self, key)
            if key == "session_pool":
                for entry in entries:
                    da.kill(entry.ref)
                    da.wait_exit(entry.ref, 5)
            return entries

        monkeypatch.setattr(Registry, "_raw_entries", raw_entries_then_die)
        found = detect_service(CANDIDATES, registry=registry)
        assert found == Service("bridge", bridge, "registry")
    finally:
        doomed.stop()
        bridge.stop()


@pytest.mark.parametrize(
    ("candidates", "registry_arg", "message"),
    [
        ("session_pool", None, "candidates must be a list of names"),
        ([], None, "candidates must be a non-empty list of names"),
        ({"session_pool": 1}, None, "candidates must be a list of names"),
        (42, None, "candidates must be a list of names"),
        (["bridge"], "registry", "registry must be a Registry or None, got: 'registry'"),
    ],
)
def test_bad_arguments_raise_invalid_option(
    candidates: Any, registry_arg: Any, message: str
) -> None:
    with pytest.raises(da.InvalidOption, match=message):
        detect_service(candidates, registry=registry_arg)


def test_detection_follows_a_supervised_pool_through_a_crash_and_restart(
    sups: Supervisors,
) -> None:
    sup = sups.start(
        [
            SessionPool.child_spec(id="pool", name="session_pool"),
            Bridge.child_spec(id="bridge", name="bridge"),
        ]
    )
    first = detect_service(CANDIDATES)
    assert first.name == "session_pool"
    first.ref.tell("crash")
    da.wait_exit(first.ref, 5)
    # Until the supervisor restarts it, the pool is gone and the bridge serves.
    during = detect_service(CANDIDATES)
    assert during.name in ("session_pool", "bridge")
    assert during.ref is not first.ref
    restarted = wait_for(functools.partial(_pool_other_than, first.ref))
    sync(sup.actor_ref)
    assert restarted.ref.ask("again", timeout=5) == ("pool", "again")
    assert [c.ref for c in sup.which_children() if c.id == "pool"] == [restarted.ref]


def _pool_other_than(old: pykka.ActorRef[Any]) -> Service | None:
    found = detect_service(CANDIDATES)
    return found if found.name == "session_pool" and found.ref is not old else None


def test_the_service_detection_example_runs_and_follows_the_pool(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Imported by name: the examples package maps to the repository's examples/ folder.
    example = importlib.import_module("dspex_actors.examples.service_detection")
    assert example.main() == 0
    out = capsys.readouterr().out
    assert "after the pool crashed             -> session_pool (local" in out
    assert "bridge's local name removed        -> bridge (registry" in out
    assert "no service available: tried 'session_pool' (not registered; not in registry)" in out
