"""What `Supervisor` and `DynamicSupervisor` share: one base actor, its messages, its rules.

Both kinds of supervisor start children from `ChildSpec`s, link them, restart them by
`ChildSpec.restarts_after` under one restart intensity, retry a failed restart through their
own inbox (never in a loop, so a queued `stop` or API call is served between attempts), stop
children by OTP's shutdown protocol, and report every event as a structured log record (and
the starts, exits, restarts and give-ups as telemetry events, see `dspex_actors._telemetry`).
This module holds all of that once; the two supervisors add only how they keep and order
their children.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Final

import attrs
import pykka

from .. import _telemetry
from .._actor import (
    Actor,
    InternalMessage,
    acting_for,
    in_handler,
    kill,
    monitor,
    send_exit,
    start_limit,
)
from .._checks import is_int, is_number, os_timeout
from .._child_spec import (
    BRUTAL_KILL,
    ChildSpec,
    ChildType,
    Restart,
    child_name,
    is_inline_start,
    starting_child_named,
)
from .._clock import Clock
from .._errors import (
    AlreadyNamed,
    AlreadyStarted,
    BadStartReturn,
    InvalidOption,
    NoProc,
    StartError,
)
from .._logging import area_logger, log_event
from .._naming._names import register
from .._reasons import KILLED, SHUTDOWN, Down, Exit, MonitorRef, is_normal_exit
from ._intensity import add_restart

__all__ = [
    "ABANDON_AFTER",
    "KILL_TIMEOUT",
    "RESTARTING",
    "ChildCounts",
    "ChildInfo",
    "count_children",
    "offender",
    "start_spec",
    "validate_intensity",
]

_log = area_logger("supervisor")


class _Restarting:
    def __repr__(self) -> str:
        return "RESTARTING"

    def __reduce__(self) -> str:
        return "RESTARTING"


RESTARTING: Final = _Restarting()
"""In `ChildInfo.ref`: the child failed to restart and a retry is queued."""

KILL_TIMEOUT: Final = 5.0
"""Seconds to wait for a killed actor that was not inside a handler to exit (it does so at
once; this only bounds the wait)."""
ABANDON_AFTER: Final = 0.05
"""Seconds to wait for a killed actor that is inside a handler before abandoning it: a
handler about to return still makes it."""


@attrs.frozen
class ChildInfo:
    """One line of `which_children()`.

    Attributes:
        id: the child's id (None under a `DynamicSupervisor`).
        ref: its `ActorRef` while running, `None` when stopped, `RESTARTING` between failed
            restart attempts.
        type: `ChildType.WORKER` or `ChildType.SUPERVISOR`.
        abandoned: the `ActorRef` of an earlier instance that was killed but whose thread is
            still inside a handler (Python cannot kill a thread): it counts as exited with
            `KILLED` and lingers until its handler returns. None when there is none.
    """

    id: Any
    ref: pykka.ActorRef[Any] | _Restarting | None = attrs.field(repr=str)
    type: ChildType
    abandoned: pykka.ActorRef[Any] | None = attrs.field(default=None, repr=str)


@attrs.frozen
class ChildCounts:
    """`count_children()`: `specs` known, `active` running, and totals by type."""

    specs: int
    active: int
    supervisors: int
    workers: int


# --- shared child mechanics (also used by DynamicSupervisor) ---------------------------------


class _StartFailure(Exception):
    def __init__(self, reason: Any) -> None:
        self.reason = reason
        super().__init__(reason)


def start_spec(spec: ChildSpec, extra_args: tuple[Any, ...] = ()) -> pykka.ActorRef[Any] | None:
    """Call a spec's start function and normalise what it returns (OTP start result rules).

    Raises:
        _StartFailure: the start function raised, or returned something invalid.
    """
    try:
        with starting_child_named(spec.name):
            result = spec.start(*extra_args, *spec.args, **spec.kwargs)
    except StartError as exc:
        raise _StartFailure(exc.reason) from exc
    except Exception as exc:
        raise _StartFailure(exc) from exc
    if result is None:
        return None
    if isinstance(result, pykka.ActorRef):
        return result
    ref = getattr(result, "actor_ref", None)
    if isinstance(ref, pykka.ActorRef):
        return ref
    raise _StartFailure(BadStartReturn(result))


def offender(spec: ChildSpec, ref: Any) -> dict[str, Any]:
    """OTP's offender fields, for error reports."""
    return {
        "id": spec.id,
        "ref": str(ref) if ref is not None else None,
        "start": spec.start_description,
        "restart": spec.restart.value,
        "shutdown": spec.shutdown,
        "type": spec.type.value,
        "significant": spec.significant,
    }


class _Waiter:
    """A one-shot `Down` catcher: the selective receive OTP's shutdown does on a monitor.

    Once the child is abandoned (`abandon`), its late `Down` is forwarded instead.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: Any = None
        self.mref: MonitorRef | None = None
        self._lock = threading.Lock()
        self._late: Callable[[], None] | None = None

    def __call__(self, down: Down) -> None:
        with self._lock:
            self.reason = down.reason
            self.event.set()
            late = self._late
        if late is not None:
            late()

    def abandon(self, late: Callable[[], None]) -> bool:
        """Call `late()` when the child finally exits; False if it has exited already."""
        with self._lock:
            if self.event.is_set():
                return False
            self._late = late
            return True


class _StartRun:
    """A start function running in a thread of its own, and what came of it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = False
        self.abandoned = False  # the supervisor stopped waiting: a late child is stopped
        self.ref: pykka.ActorRef[Any] | None = None
        self.failure: _StartFailure | None = None


class _SupervisorBase(Actor):
    """The actor both supervisors are: linking, starting and stopping children, intensity."""

    trap_exits = True
    start_timeout = None  # like start_link for supervisors: wait for every child (infinity)
    _QUERIES: ClassVar[tuple[type, ...]] = ()  # set below, once the messages are defined

    def __init__(
        self, max_restarts: int, max_seconds: float, clock: Clock, parent: Any, label: Any
    ) -> None:
        super().__init__()
        self._max_restarts = max_restarts
        self._max_seconds = max_seconds
        self._clock = clock
        self._parent = parent
        # Its name, else the name its own supervisor registers it under (same every restart).
        self._label = label if label is not None else child_name()
        self._restarts: tuple[float, ...] = ()
        # Every child by its key (its id, or a number under a DynamicSupervisor), and the key
        # of each running child's ref: a child's exit signal names only its ref.
        self._children: dict[Any, Any] = {}
        self._by_ref: dict[pykka.ActorRef[Any], Any] = {}
        # Killed children still inside a handler, by key, until their thread exits.
        self._abandoned: dict[Any, pykka.ActorRef[Any]] = {}

    @property
    def _name(self) -> str:
        return str(self._label) if self._label is not None else str(self.actor_ref)

    def _link_parent(self) -> None:
        """Link to the actor that started us, as OTP's ``start_link`` does.

        Done last in `on_start`: a failed start reports its error to the caller and sends it no
        exit signal (OTP 26+ synchronous init failure).
        """
        if isinstance(self._parent, pykka.ActorRef):
            self.link(self._parent)

    def _intensity_exceeded(self) -> bool:
        self._restarts, exceeded = add_restart(
            self._restarts, self._clock.monotonic(), self._max_restarts, self._max_seconds
        )
        return exceeded

    def _give_up(self, spec: ChildSpec, ref: Any) -> None:
        if _telemetry.active:
            _telemetry.emit(
                _telemetry.SUPERVISOR_INTENSITY_EXCEEDED,
                {"count": 1},
                {
                    "supervisor": self._name,
                    "child_id": spec.id,
                    "max_restarts": self._max_restarts,
                    "max_seconds": self._max_seconds,
                },
            )
        log_event(
            _log,
            "ERROR",
            "reached_max_restart_intensity",
            "supervisor {supervisor} reached max restart intensity; offender {child_id!r}",
            supervisor=self._name,
            child_id=spec.id,
            reason="reached_max_restart_intensity",
            offender=offender(spec, ref),
        )
        self.exit(SHUTDOWN)

    def _run_start(
        self, spec: ChildSpec, extra_args: tuple[Any, ...] = ()
    ) -> pykka.ActorRef[Any] | None:
        """Call `spec`'s start function, bounded by `spec.start_timeout`.

        An actor's (or framework handle's) `start` is called here, with its wait for
        `on_start` capped at the spec's limit. Any other start function runs in a thread of
        its own while this supervisor keeps answering queries (`which_children`,
        `count_children`...) and a `stop`: a start function that blocks never wedges it.
        Past the limit (or on a stop) the start fails with a `TimeoutError` reason and is
        abandoned; whatever it starts later is stopped at once.

        Raises:
            _StartFailure: the start function raised, returned something invalid, or did not
                return in time.
        """
        timeout = spec.start_timeout
        limit = timeout if isinstance(timeout, float | int) else None  # None: INFINITY
        if is_inline_start(spec.start):
            with start_limit(limit):
                return start_spec(spec, extra_args)
        run = _StartRun()
        me = self.actor_ref

        def start(ready: Callable[[], None]) -> None:
            def body() -> None:
                with acting_for(me):  # what it starts is our child (linked to us)
                    try:
                        ref = start_spec(spec, extra_args)
                    except _StartFailure as failure:
                        run.failure, ref = failure, None
                with run.lock:
                    run.done, run.ref = True, ref
                    abandoned = run.abandoned
                if not abandoned:
                    ready()
                elif ref is not None:
                    _stop_late_child(spec, ref)

            threading.Thread(target=body, name=f"dspex-start-{spec.id}", daemon=True).start()

        self._wait_serving(start, limit, self._is_query)
        with run.lock:
            if not run.done:
                run.abandoned = True
        if not run.done:
            raise _StartFailure(
                TimeoutError(f"start function of {spec.id!r} did not return within {limit}s")
                if self._dspex_proc.pending() is None
                else RuntimeError(f"the supervisor stopped while {spec.id!r} was starting")
            )
        if run.failure is not None:
            raise run.failure
        return run.ref

    def _is_query(self, message: Any) -> bool:
        """A message answered even while a start function runs: it reads, never changes."""
        return isinstance(message, self._QUERIES)

    def _link_started(self, spec: ChildSpec, ref: pykka.ActorRef[Any]) -> None:
        """Link a freshly started child and register its name; a name clash stops it again."""
        self.link(ref)
        if spec.name is not None:
            try:
                register(spec.name, ref)
            except NoProc:
                if ref.is_alive():  # the NoProc came from elsewhere (a Via's stopped registry)
                    self.unlink(ref)
                    self._shutdown(spec, ref)
                    raise _StartFailure(NoProc(repr(spec.name), "register")) from None
                # it already exited: its exit signal is queued and handled as any other
            except (AlreadyStarted, AlreadyNamed) as exc:
                self.unlink(ref)
                self._shutdown(spec, ref)
                raise _StartFailure(exc) from exc
        log_event(
            _log,
            "DEBUG",
            "child_started",
            "supervisor {supervisor} started child {child_id!r}: {ref}",
            supervisor=self._name,
            child_id=spec.id,
            ref=str(ref),
        )
        if _telemetry.active:
            _telemetry.emit(
                _telemetry.SUPERVISOR_CHILD_STARTED,
                {"count": 1},
                {
                    "supervisor": self._name,
                    "child_id": spec.id,
                    "child_type": spec.type.value,
                    "ref": ref,
                },
            )

    def _shutdown(self, spec: ChildSpec, ref: pykka.ActorRef[Any], key: Any = None) -> Any:
        """Stop one child by OTP's shutdown protocol and return the reason it exited with."""
        waiter = self._begin_shutdown(spec, ref)
        if spec.shutdown is not BRUTAL_KILL:
            limit = spec.shutdown if isinstance(spec.shutdown, float | int) else None
            if not waiter.event.wait(os_timeout(limit)):
                kill(ref)
        return self._finish_shutdown(spec, ref, waiter, key)

    def _begin_shutdown(self, spec: ChildSpec, ref: pykka.ActorRef[Any]) -> _Waiter:
        """Unlink, monitor, then signal the child (kill it for `BRUTAL_KILL`)."""
        self.unlink(ref)
        waiter = _Waiter()
        # Monitor before sending the signal, so a child that unlinked itself cannot hang us.
        waiter.mref = monitor(ref, waiter)
        if spec.shutdown is BRUTAL_KILL:
            kill(ref)
        else:
            send_exit(ref, SHUTDOWN, sender=self.actor_ref)
        return waiter

    def _finish_shutdown(
        self, spec: ChildSpec, ref: pykka.ActorRef[Any], waiter: _Waiter, key: Any = None
    ) -> Any:
        """Wait for a signalled or killed child's exit; report unexpected reasons.

        A killed thread actor exits at its next message boundary: at once if it is idle. One
        that is inside a handler cannot be killed (Python cannot kill a thread) and is not
        waited for: it is *abandoned*, reported as `KILLED` (event ``child_abandoned``) and
        listed as `ChildInfo.abandoned` until it finally exits.
        """
        wait = ABANDON_AFTER if in_handler(ref) else KILL_TIMEOUT
        if not waiter.event.wait(wait):
            key = spec.id if key is None else key
            me = self.actor_ref

            def gone() -> None:
                with contextlib.suppress(pykka.ActorDeadError):
                    me.tell(_AbandonedExited(key, ref))

            if waiter.abandon(gone):
                self._abandoned[key] = ref
                log_event(
                    _log,
                    "ERROR",
                    "child_abandoned",
                    "supervisor {supervisor}: child {child_id!r} is stuck in a handler and "
                    "cannot be killed; reported as KILLED, abandoned (its thread exits when the "
                    "handler returns)",
                    supervisor=self._name,
                    child_id=spec.id,
                    ref=str(ref),
                    offender=offender(spec, ref),
                )
                return KILLED
        reason = waiter.reason
        expected = KILLED if spec.shutdown is BRUTAL_KILL else SHUTDOWN
        fine = reason is expected or (
            spec.restart is not Restart.PERMANENT and is_normal_exit(reason)
        )
        if not fine:
            log_event(
                _log,
                "ERROR",
                "shutdown_error",
                "supervisor {supervisor}: child {child_id!r} shut down with {reason}",
                supervisor=self._name,
                child_id=spec.id,
                reason=repr(reason),
                offender=offender(spec, ref),
            )
        return reason

    def _report_exit(self, spec: ChildSpec, ref: Any, reason: Any) -> None:
        normal = is_normal_exit(reason)
        if _telemetry.active:
            _telemetry.emit(
                _telemetry.SUPERVISOR_CHILD_EXITED,
                {"count": 1},
                {
                    "supervisor": self._name,
                    "child_id": spec.id,
                    "ref": ref,
                    "reason": reason,
                    "normal": normal,
                    "restart": spec.restarts_after(reason),
                },
            )
        level = "DEBUG" if normal else "ERROR"
        log_event(
            _log,
            level,
            "child_terminated",
            "supervisor {supervisor}: child {child_id!r} exited with {reason}",
            supervisor=self._name,
            child_id=spec.id,
            reason=repr(reason),
            offender=offender(spec, ref),
        )

    # -- exits, restarts and retries: one rule for both supervisors --

    def on_exit_signal(self, exit: Exit) -> None:
        key = self._by_ref.get(exit.ref) if exit.ref is not None else None
        child = self._children.get(key) if key is not None else None
        if child is not None and child.ref is exit.ref:
            self._child_exited(child, exit.ref, exit.reason)
        elif exit.ref is not None and exit.ref is self._parent:
            # Our parent exited, for any reason (gen_server's rule for a trapping process):
            # terminate, children first (`on_stop` does it, also when the parent was killed:
            # only our own kill skips the hook).
            self.exit(exit.reason)
        # An exit signal from anything else (a child we already let go) is ignored, as a
        # trapping OTP supervisor ignores an 'EXIT' from a process that is not its child.

    def _child_exited(self, child: Any, ref: Any, reason: Any) -> None:
        """A child exited on its own: report it, then restart it or let it go."""
        self._report_exit(child.spec, ref, reason)
        if child.spec.restarts_after(reason):
            self._restart(child)
        else:
            self._let_go(child)

    def _restart_failed(self, child: Any, failure: _StartFailure) -> None:
        """A restart attempt failed: mark the child restarting and retry through our inbox.

        The retry is a message, not a loop, so a `stop` or an API call queued meanwhile is
        served first; each attempt counts toward the restart intensity.
        """
        log_event(
            _log,
            "ERROR",
            "start_error",
            "supervisor {supervisor} failed to restart child {child_id!r}: {reason}",
            supervisor=self._name,
            child_id=child.spec.id,
            reason=repr(failure.reason),
            offender=offender(child.spec, None),
        )
        self._set_ref(child, RESTARTING)
        self.actor_ref.tell(_TryAgainRestart(child.key))

    def _restarted(self, child: Any, ref: pykka.ActorRef[Any] | None) -> None:
        """Record a successful restart (OTP's progress report: the child is back)."""
        self._set_ref(child, ref)
        log_event(
            _log,
            "INFO",
            "child_restarted",
            "supervisor {supervisor} restarted child {child_id!r}: {ref}",
            supervisor=self._name,
            child_id=child.spec.id,
            ref=str(ref),
        )
        if _telemetry.active:
            _telemetry.emit(
                _telemetry.SUPERVISOR_CHILD_RESTARTED,
                {"count": 1},
                {"supervisor": self._name, "child_id": child.spec.id, "ref": ref},
            )

    def _try_again(self, key: Any) -> None:
        child = self._children.get(key)
        if child is not None and child.ref is RESTARTING:
            self._restart(child)

    def on_receive(self, message: Any) -> Any:
        match message:
            case _TryAgainRestart(key):
                self._try_again(key)
                return None
            case _AbandonedExited(key, ref):
                if self._abandoned.get(key) is ref:
                    del self._abandoned[key]
                return None
            case _StartChild(spec):
                return self._api_start_child(spec)
            case _TerminateChild(key):
                return self._api_terminate_child(key)
            case _WhichChildren():
                return self._which_children()
            case _CountChildren():
                return count_children((c.spec, c.ref) for c in self._children.values())
        return self._on_other(message)

    def _on_other(self, message: Any) -> Any:
        """A message only one kind of supervisor serves (by default: none)."""
        self._unexpected(message)
        return None

    def _unexpected(self, message: Any) -> None:
        log_event(
            _log,
            "WARNING",
            "unexpected_message",
            "supervisor {supervisor} received unexpected message {message!r}",
            supervisor=self._name,
            message=message,
        )

    def on_stop(self) -> None:
        self._terminate_children()

    def on_failure(self, *_exc_info: Any) -> None:
        self._terminate_children()

    # -- what each supervisor defines --

    def _restart(self, child: Any) -> None:
        """One restart attempt for `child` (counted toward the intensity)."""
        raise NotImplementedError

    def _let_go(self, child: Any) -> None:
        """A child that is not restarted after its exit."""
        raise NotImplementedError

    def _set_ref(self, child: Any, ref: pykka.ActorRef[Any] | _Restarting | None) -> None:
        raise NotImplementedError

    def _api_start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any] | None:
        raise NotImplementedError

    def _api_terminate_child(self, key: Any) -> None:
        raise NotImplementedError

    def _which_children(self) -> list[ChildInfo]:
        raise NotImplementedError

    def _terminate_children(self) -> None:
        raise NotImplementedError


# --- messages both supervisors serve ----------------------------------------------------------


@attrs.frozen
class _StartChild:
    spec: ChildSpec


@attrs.frozen
class _TerminateChild:
    key: Any  # a child id (Supervisor) or ref (DynamicSupervisor)


@attrs.frozen
class _WhichChildren:
    pass


@attrs.frozen
class _CountChildren:
    pass


@attrs.frozen
class _AbandonedExited(InternalMessage):
    """An abandoned child's thread has finally exited."""

    key: Any
    ref: Any


@attrs.frozen
class _TryAgainRestart(InternalMessage):
    """A failed restart's retry, sent to the supervisor itself."""

    key: Any


_SupervisorBase._QUERIES = (_WhichChildren, _CountChildren)


def _stop_late_child(spec: ChildSpec, ref: pykka.ActorRef[Any]) -> None:
    """A child whose start was abandoned came up after all: stop it (nobody supervises it)."""
    log_event(
        _log,
        "WARNING",
        "late_child_stopped",
        "a start of {child_id!r} returned after it was given up; its child is stopped",
        child_id=spec.id,
        ref=str(ref),
    )
    with contextlib.suppress(pykka.ActorDeadError):
        ref.stop(block=False)


def count_children(children: Iterable[tuple[ChildSpec, Any]]) -> ChildCounts:
    """`ChildCounts` of `(spec, ref)` pairs: restarting or stopped children are not active."""
    specs = active = supervisors = 0
    for spec, ref in children:
        specs += 1
        if isinstance(ref, pykka.ActorRef) and ref.is_alive():
            active += 1
        if spec.type is ChildType.SUPERVISOR:
            supervisors += 1
    return ChildCounts(
        specs=specs, active=active, supervisors=supervisors, workers=specs - supervisors
    )


def validate_intensity(max_restarts: Any, max_seconds: Any) -> None:
    """OTP's intensity (an integer >= 0) and period (a finite number of seconds > 0)."""
    if not is_int(max_restarts) or max_restarts < 0:
        raise InvalidOption(
            "max_restarts", max_restarts, "an integer >= 0", code="invalid_intensity"
        )
    if not is_number(max_seconds) or not max_seconds > 0 or max_seconds == float("inf"):
        raise InvalidOption(
            "max_seconds", max_seconds, "a finite number of seconds > 0", code="invalid_period"
        )
