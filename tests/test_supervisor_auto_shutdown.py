"""auto_shutdown and significant children."""

from __future__ import annotations

from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import AutoShutdown, Restart, Strategy
from dspex_actors.testing import sync

from support.logs import EventLog
from support.supervision import Crash, ExitWith, Supervisors, counts, ids, probe_spec, ref_of

ANY = AutoShutdown.ANY_SIGNIFICANT
ALL = AutoShutdown.ALL_SIGNIFICANT


def make_exit(ref: pykka.ActorRef[Any], how: str) -> Any:
    """Make a child exit on its own; return its exit reason once it has exited."""
    match how:
        case "normal":
            ref.tell(ExitWith(da.NORMAL))
        case "shutdown":
            ref.tell(ExitWith(da.Shutdown("done")))
        case "crash":
            ref.tell(Crash())
        case "kill":
            da.kill(ref)
        case _:
            raise AssertionError(how)
    return da.wait_exit(ref, 5)


def significant(name: str, log: EventLog, restart: Restart) -> da.ChildSpec:
    return probe_spec(name, log, restart=restart, significant=True)


@pytest.mark.parametrize("how", ["normal", "shutdown", "crash", "kill"])
def test_any_significant_a_temporary_significant_child_exiting_shuts_the_supervisor_down(
    how: str, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [probe_spec("a", log), significant("s", log, Restart.TEMPORARY), probe_spec("c", log)],
        auto_shutdown=ANY,
    )
    log.clear()
    make_exit(ref_of(sup, "s"), how)
    assert sup.wait(5) is da.SHUTDOWN
    # The others were terminated first, in reverse start order.
    assert [e for e in log.events() if e[1] != "s"] == [
        ("stop", "c", da.SHUTDOWN),
        ("stop", "a", da.SHUTDOWN),
    ]


@pytest.mark.parametrize("how", ["normal", "shutdown"])
def test_any_significant_a_transient_significant_child_exiting_normally_shuts_down(
    how: str, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [probe_spec("a", log), significant("t", log, Restart.TRANSIENT)], auto_shutdown=ANY
    )
    make_exit(ref_of(sup, "t"), how)
    assert sup.wait(5) is da.SHUTDOWN
    assert ("stop", "a", da.SHUTDOWN) in log.events()


@pytest.mark.parametrize("how", ["crash", "kill"])
def test_any_significant_a_transient_significant_child_crashing_is_restarted_instead(
    how: str, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [probe_spec("a", log), significant("t", log, Restart.TRANSIENT)], auto_shutdown=ANY
    )
    old = ref_of(sup, "t")
    make_exit(old, how)
    sync(sup.actor_ref)
    assert sup.is_alive()
    assert ref_of(sup, "t") is not old
    assert counts(sup) == (2, 2, 0, 2)


def test_all_significant_shuts_down_only_when_the_last_significant_child_exits(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [
            probe_spec("a", log),
            significant("s1", log, Restart.TEMPORARY),
            significant("s2", log, Restart.TRANSIENT),
        ],
        auto_shutdown=ALL,
    )
    make_exit(ref_of(sup, "s1"), "normal")
    sync(sup.actor_ref)
    assert sup.is_alive()
    assert ids(sup) == ["s2", "a"]
    make_exit(ref_of(sup, "s2"), "crash")  # transient and abnormal: restarted, no trigger
    sync(sup.actor_ref)
    assert sup.is_alive()
    make_exit(ref_of(sup, "s2"), "normal")
    assert sup.wait(5) is da.SHUTDOWN


def test_all_significant_a_significant_child_stopped_by_api_does_not_count_as_live(
    sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [significant("s1", log, Restart.TRANSIENT), significant("s2", log, Restart.TRANSIENT)],
        auto_shutdown=ALL,
    )
    sup.terminate_child("s1")
    assert sup.is_alive()  # terminate_child never triggers auto_shutdown
    make_exit(ref_of(sup, "s2"), "normal")
    assert sup.wait(5) is da.SHUTDOWN


@pytest.mark.parametrize("mode", [AutoShutdown.NEVER, ANY, ALL])
@pytest.mark.parametrize("restart", [Restart.TEMPORARY, Restart.TRANSIENT])
@pytest.mark.parametrize("how", ["normal", "crash", "kill"])
def test_non_significant_children_never_trigger_auto_shutdown(
    mode: AutoShutdown, restart: Restart, how: str, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [probe_spec("a", log), probe_spec("n", log, restart=restart)], auto_shutdown=mode
    )
    make_exit(ref_of(sup, "n"), how)
    sync(sup.actor_ref)
    assert sup.is_alive()
    assert ref_of(sup, "a").is_alive()


@pytest.mark.parametrize("mode", [ANY, ALL])
def test_terminate_child_on_a_significant_child_never_triggers(
    mode: AutoShutdown, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [probe_spec("a", log), significant("s", log, Restart.TEMPORARY)], auto_shutdown=mode
    )
    sup.terminate_child("s")
    assert sup.is_alive()
    assert ids(sup) == ["a"]


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
@pytest.mark.parametrize("restart", [Restart.TEMPORARY, Restart.TRANSIENT])
def test_significant_children_stopped_as_bystanders_never_trigger(
    strategy: Strategy, restart: Restart, sups: Supervisors, log: EventLog
) -> None:
    sup = sups.start(
        [probe_spec("a", log), significant("s", log, restart)],
        strategy=strategy,
        auto_shutdown=ANY,
    )
    make_exit(ref_of(sup, "a"), "crash")
    sync(sup.actor_ref)
    assert sup.is_alive()
    assert ("stop", "s", da.SHUTDOWN) in log.events()
    if restart is Restart.TRANSIENT:
        assert ref_of(sup, "s").is_alive()  # restarted with the others
    else:
        assert ids(sup) == ["a"]  # a temporary bystander goes for good


def test_auto_shutdown_cascades_through_a_significant_child_supervisor(
    sups: Supervisors, log: EventLog
) -> None:
    b = da.Supervisor.child_spec(
        "B",
        [probe_spec("x", log), significant("C", log, Restart.TEMPORARY)],
        restart="transient",
        significant=True,
        auto_shutdown=ANY,
    )
    a = sups.start([probe_spec("w", log), b], auto_shutdown=ANY)
    b_ref = ref_of(a, "B")
    c = ref_of(da.Supervisor.from_ref(b_ref), "C")
    make_exit(c, "normal")
    assert da.wait_exit(b_ref, 5) is da.SHUTDOWN
    assert a.wait(5) is da.SHUTDOWN
    assert [e[1] for e in log.events() if e[0] == "stop"] == ["C", "x", "w"]


def test_a_non_significant_child_supervisor_auto_shutting_down_leaves_the_parent_running(
    sups: Supervisors, log: EventLog
) -> None:
    b = da.Supervisor.child_spec(
        "B",
        [probe_spec("x", log), significant("C", log, Restart.TEMPORARY)],
        restart="transient",
        auto_shutdown=ANY,
    )
    a = sups.start([probe_spec("w", log), b], auto_shutdown=ANY)
    b_ref = ref_of(a, "B")
    make_exit(ref_of(da.Supervisor.from_ref(b_ref), "C"), "normal")
    assert da.wait_exit(b_ref, 5) is da.SHUTDOWN
    sync(a.actor_ref)
    assert a.is_alive()
    assert a.which_child("B").ref is None  # transient: kept, not restarted
    assert ref_of(a, "w").is_alive()
