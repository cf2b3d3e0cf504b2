"""Supervision helpers: `Probe` actors that record their lifecycle, and supervisor accessors.

- `Probe`: an `Actor` that records ``("start", name)`` / ``("stop", name, reason)`` into an
  `EventLog` and obeys small commands (`Crash`, `ExitWith`, `Ping`, `UnlinkFrom`).
- `Stubborn`: a `Probe` that traps exits and blocks on an event when told to shut down, for
  shutdown-timeout tests; `ExitsOnSignal`, `Trapper`, `SlowStop`, `PlainProbe`: variants.
- `FlakyStart`: a start function that fails its first N calls (or, from some call on, always).
- `Supervisors`: starts supervisors and stops any still running at teardown (the `sups`
  fixture), so the leak check never sees a leftover.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from typing import Any

import attrs
import pykka

import dspex_actors as da
from dspex_actors.testing import sync

from support.logs import EventLog


@attrs.frozen
class Crash:
    """Tell it to a `Probe`: it raises `RuntimeError(message)` (a crash)."""

    message: str = "boom"


@attrs.frozen
class ExitWith:
    """Tell it to a `Probe`: it exits with `reason` (e.g. `NORMAL`, `Shutdown("x")`)."""

    reason: Any


@attrs.frozen
class UnlinkFrom:
    """Tell it to a `Probe`: it unlinks itself from `ref` (its supervisor)."""

    ref: Any


@attrs.frozen
class Ping:
    """Ask it of a `Probe`: it answers ``("pong", name)``."""


class Probe(da.Actor):
    """An actor that records its lifecycle into an `EventLog`."""

    def __init__(self, name: Any, log: EventLog) -> None:
        super().__init__()
        self.name = name
        self.log = log

    def on_start(self) -> None:
        self.log.add("start", self.name)

    def on_stop(self) -> None:
        self.log.add("stop", self.name, self.exit_reason)

    def on_failure(self, *_exc_info: Any) -> None:
        self.log.add("stop", self.name, self.exit_reason)

    def on_receive(self, message: Any) -> Any:
        match message:
            case Crash(text):
                raise RuntimeError(text)
            case ExitWith(reason):
                self.exit(reason)
                return None
            case Ping():
                return ("pong", self.name)
            case UnlinkFrom(ref):
                self.unlink(ref)
                return None
        return None


class Stubborn(Probe):
    """Traps exits and ignores a shutdown signal until `release` is set (bounded by `hold`).

    Models OTP's "child that traps exits and sleeps past its shutdown timeout": while it waits
    it notices a pending kill (a thread cannot be killed mid-handler, so it returns to its
    message boundary, where the kill takes effect), as a sleeping Erlang process would be
    killed in its receive.
    """

    trap_exits = True

    def __init__(
        self, name: Any, log: EventLog, release: threading.Event, hold: float = 5.0
    ) -> None:
        super().__init__(name, log)
        self.release = release
        self.hold = hold

    def on_exit_signal(self, exit: da.Exit) -> None:
        self.log.add("signal", self.name, exit.reason)
        deadline = time.monotonic() + self.hold
        while not self.release.wait(0.005):
            if self.exit_reason is da.KILLED or time.monotonic() > deadline:
                return
        self.exit(exit.reason)


class ExitsOnSignal(Probe):
    """Traps exits; on an exit signal it exits with its own `reason` instead."""

    trap_exits = True

    def __init__(self, name: Any, log: EventLog, reason: Any) -> None:
        super().__init__(name, log)
        self.reason = reason

    def on_exit_signal(self, exit: da.Exit) -> None:
        self.log.add("signal", self.name, exit.reason)
        self.exit(self.reason)


class Trapper(Probe):
    """Traps exits with the default `on_exit_signal` (exits with the signal's reason)."""

    trap_exits = True


class SlowStop(Probe):
    """Records the beginning and the end of its `on_stop`, to prove stops do not overlap."""

    def on_stop(self) -> None:
        self.log.add("stopping", self.name)
        self.log.add("stopped", self.name, self.exit_reason)


class PlainProbe(pykka.ThreadingActor):
    """A plain pykka actor (not a dspex `Actor`) recording its lifecycle."""

    def __init__(self, name: Any, log: EventLog) -> None:
        super().__init__()
        self.name = name
        self.log = log

    def on_start(self) -> None:
        self.log.add("start", self.name)

    def on_stop(self) -> None:
        self.log.add("stop", self.name, None)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Crash):
            raise RuntimeError(message.message)
        if isinstance(message, Ping):
            return ("pong", self.name)
        return None


class FlakyStart:
    """A start function for a `Probe` that fails on chosen calls.

    Args:
        name: the probe's name.
        log: its event log.
        fail_first: the first `fail_first` calls raise `RuntimeError`.
        fail_from: every call from this call number on (1-based) raises; None: never.
        fail_calls: these call numbers (1-based) raise.
    """

    def __init__(
        self,
        name: Any,
        log: EventLog,
        fail_first: int = 0,
        fail_from: int | None = None,
        fail_calls: frozenset[int] = frozenset(),
    ) -> None:
        self.name = name
        self.log = log
        self.fail_first = fail_first
        self.fail_from = fail_from
        self.fail_calls = fail_calls
        self.calls = 0
        self._lock = threading.Lock()
        self.__qualname__ = f"FlakyStart({name!r})"

    def __call__(self) -> pykka.ActorRef[Any]:
        with self._lock:
            self.calls += 1
            n = self.calls
        failing = n <= self.fail_first or n in self.fail_calls
        if failing or (self.fail_from is not None and n >= self.fail_from):
            self.log.add("start_failed", self.name)
            raise RuntimeError(f"{self.name} cannot start (call {n})")
        return Probe.start(self.name, self.log)


def probe_spec(probe: Any, log: EventLog, /, **options: Any) -> da.ChildSpec:
    """A `ChildSpec` for a `Probe` named `probe`, with id `probe` unless `id=` is given."""
    options.setdefault("id", probe)
    return Probe.child_spec(probe, log, **options)


def ref_of(sup: da.Supervisor, child_id: Any) -> pykka.ActorRef[Any]:
    """The running ref of a child, failing the test if it has none."""
    info = sup.which_child(child_id)
    assert isinstance(info.ref, pykka.ActorRef), f"{child_id!r} is not running: {info}"
    return info.ref


def crash_and_settle(sup: Any, ref: pykka.ActorRef[Any], message: Any = None) -> Any:
    """Make a child exit, wait for it to be gone and for the supervisor to handle it."""
    ref.tell(message if message is not None else Crash())
    reason = da.wait_exit(ref, 5)
    sync(sup.actor_ref)
    return reason


def ids(sup: da.Supervisor) -> list[Any]:
    return [c.id for c in sup.which_children()]


def counts(sup: Any) -> tuple[int, int, int, int]:
    c = sup.count_children()
    return (c.specs, c.active, c.supervisors, c.workers)


class Supervisors:
    """Starts supervisors for a test and stops the ones still running at teardown."""

    def __init__(self) -> None:
        self.started: list[da.ActorHandle] = []

    def start(self, children: Iterable[da.ChildSpec], **options: Any) -> da.Supervisor:
        sup = da.Supervisor.start(children, **options)
        self.started.append(sup)
        return sup

    def dynamic(self, **options: Any) -> da.DynamicSupervisor:
        sup = da.DynamicSupervisor.start(**options)
        self.started.append(sup)
        return sup

    def track(self, handle: da.ActorHandle) -> None:
        self.started.append(handle)

    def close(self) -> None:
        for sup in reversed(self.started):
            if sup.is_alive():
                with contextlib.suppress(da.NoProc):  # it may exit on its own meanwhile
                    sup.stop(timeout=10)
            da.wait_exit(sup.actor_ref, 10)
