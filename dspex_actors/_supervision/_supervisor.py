"""`Supervisor`: OTP's supervisor, with its exact semantics, for dspex_actors and pykka actors.

A supervisor starts its children in order, watches them, restarts them by its `Strategy` when
they exit, gives up (and exits with `SHUTDOWN`) when restarts come too often, and stops them in
reverse order when it stops. Everything follows OTP's ``supervisor`` module: restart types,
restart intensity, the shutdown protocol, init failures, auto-shutdown and significant
children, and the child-management API with its errors. Where Python forces a difference (a
thread cannot be killed), it is documented below and in the supervision guide.

When not to use it: for many short-lived children of one kind, added at run time, use
`DynamicSupervisor`; for a pool of interchangeable resources, use `Pool`.

Example:
    >>> import dspex_actors as da
    >>> class Worker(da.Actor):
    ...     def on_receive(self, message):
    ...         return message
    >>> sup = da.Supervisor.start(
    ...     [Worker.child_spec(id="a"), Worker.child_spec(id="b")],
    ...     strategy=da.Strategy.ONE_FOR_ONE,
    ... )
    >>> [child.id for child in sup.which_children()]
    ['b', 'a']
    >>> sup.stop()

How it works:

- Children are kept as ids in start order plus a dict (rest_for_one and reverse-order shutdown
  fall out of that), and linked to the supervisor, which traps exits. A child's exit reaches
  the supervisor as an exit signal, in order with the API calls it serves.
- Starting, restarting and stopping children run in the supervisor's thread, one at a time,
  exactly as in OTP: a child whose `on_start` calls its own supervisor deadlocks (until the
  child's `start_timeout`).
- A failed restart is retried through the supervisor's own inbox (`_TryAgainRestart`), never in
  a loop, so API calls and `stop()` are served between attempts; every attempt counts toward
  the restart intensity.
- Stopping a child: monitor first (so a child that unlinked itself cannot hang us), send it an
  exit signal `SHUTDOWN`, wait `shutdown` seconds for it to exit, then kill it. A thread
  blocked inside a handler cannot be killed: after `kill_timeout` more seconds the supervisor
  logs ``kill_timeout``, reports the child as `KILLED` and moves on (the thread still exits at
  its next message boundary).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import pykka

from .._actor import ActorHandle, current_actor, start_actor
from .._aio import in_thread
from .._checks import check_clock, check_name_option, enum_option, is_hashable
from .._child_spec import (
    INFINITY,
    AutoShutdown,
    ChildSpec,
    ChildType,
    Restart,
    Strategy,
    check_child_specs,
    inline_start,
)
from .._clock import Clock
from .._errors import (
    AlreadyPresent,
    AlreadyStarted,
    ChildNotFound,
    ChildRestarting,
    ChildRunning,
    InvalidOption,
    StartChildError,
    SupervisorStartError,
)
from .._logging import area_logger, log_event
from .._naming._names import register
from .._reasons import SHUTDOWN
from ._base import (
    RESTARTING,
    ChildCounts,
    ChildInfo,
    _CountChildren,
    _Restarting,
    _StartChild,
    _StartFailure,
    _SupervisorBase,
    _TerminateChild,
    _WhichChildren,
    offender,
    validate_intensity,
)

__all__ = ["Supervisor"]

_log = area_logger("supervisor")


# --- the static supervisor -------------------------------------------------------------------


@attrs.define
class _Child:
    spec: ChildSpec
    ref: pykka.ActorRef[Any] | _Restarting | None = None

    @property
    def key(self) -> Any:
        return self.spec.id


@attrs.frozen
class _RestartChild:
    id: Any


@attrs.frozen
class _DeleteChild:
    id: Any


@attrs.frozen
class _WhichChild:
    id: Any


@attrs.frozen
class _GetChildSpec:
    id: Any


class _SupervisorActor(_SupervisorBase):
    _QUERIES: ClassVar[tuple[type, ...]] = (
        *_SupervisorBase._QUERIES,
        _WhichChild,
        _GetChildSpec,
    )

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        strategy: Strategy,
        max_restarts: int,
        max_seconds: float,
        auto_shutdown: AutoShutdown,
        name: Any,
        clock: Clock,
        parent: Any,
    ) -> None:
        super().__init__(max_restarts, max_seconds, clock, parent, name)
        self._initial = list(specs)
        self._strategy = strategy
        self._auto_shutdown = auto_shutdown
        self._register_as = name
        self._order: list[Any] = []  # child ids in start order
        self._children: dict[Any, _Child] = {}

    # -- init --

    def on_start(self) -> None:
        if self._register_as is not None:
            register(self._register_as, self.actor_ref)
        for spec in self._initial:
            try:
                ref = self._start(spec)
            except _StartFailure as failure:
                log_event(
                    _log,
                    "ERROR",
                    "start_error",
                    "supervisor {supervisor} failed to start child {child_id!r}: {reason}",
                    supervisor=self._name,
                    child_id=spec.id,
                    reason=repr(failure.reason),
                    offender=offender(spec, None),
                )
                self._terminate_children()
                raise SupervisorStartError(spec.id, failure.reason) from None
            self._keep(spec, ref)
        self._initial = []
        self._link_parent()

    def _start(self, spec: ChildSpec) -> pykka.ActorRef[Any] | None:
        ref = self._run_start(spec)
        if ref is not None:
            self._link_started(spec, ref)
        return ref

    def _keep(self, spec: ChildSpec, ref: pykka.ActorRef[Any] | None) -> None:
        """Add a just-started child at the end of the start order (an ignored temporary child
        is not kept: OTP forgets it at once)."""
        if ref is None and spec.restart is Restart.TEMPORARY:
            return
        child = _Child(spec)
        self._order.append(spec.id)
        self._children[spec.id] = child
        self._set_ref(child, ref)

    # -- API --

    def _on_other(self, message: Any) -> Any:
        match message:
            case _RestartChild(child_id):
                return self._api_restart_child(child_id)
            case _DeleteChild(child_id):
                return self._api_delete_child(child_id)
            case _WhichChild(key):
                return self._info(self._find(key))
            case _GetChildSpec(key):
                return self._find(key).spec
        return super()._on_other(message)

    def _which_children(self) -> list[ChildInfo]:
        return [self._info(self._children[i]) for i in reversed(self._order)]

    def _find(self, key: Any) -> _Child:
        if isinstance(key, pykka.ActorRef):
            child_id = self._by_ref.get(key)
            if child_id is None:
                raise ChildNotFound(key)
            child: _Child = self._children[child_id]
            return child
        found: _Child | None = self._children.get(key) if is_hashable(key) else None
        if found is None:
            raise ChildNotFound(key)
        return found

    def _info(self, child: _Child) -> ChildInfo:
        abandoned = self._abandoned.get(child.spec.id)
        return ChildInfo(child.spec.id, child.ref, child.spec.type, abandoned)

    def _api_start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any] | None:
        check_child_specs([spec], self._auto_shutdown)
        existing = self._children.get(spec.id)
        if existing is not None:
            if isinstance(existing.ref, pykka.ActorRef):
                raise AlreadyStarted(spec.id, existing.ref)
            raise AlreadyPresent(spec.id)
        try:
            ref = self._start(spec)
        except _StartFailure as failure:
            if isinstance(failure.reason, AlreadyStarted):  # a name clash passes through
                raise failure.reason from None
            raise StartChildError(spec.id, failure.reason) from None
        self._keep(spec, ref)
        return ref

    def _api_terminate_child(self, key: Any) -> None:
        if isinstance(key, pykka.ActorRef):
            raise ChildNotFound(key)  # a static supervisor's children are named by id, as in OTP
        child = self._find(key)
        self._stop_child(child)
        if child.spec.restart is Restart.TEMPORARY:
            self._forget(child)

    def _api_restart_child(self, child_id: Any) -> pykka.ActorRef[Any] | None:
        child = self._find(child_id)
        self._check_stopped(child)
        try:
            ref = self._start(child.spec)
        except _StartFailure as failure:
            raise StartChildError(child_id, failure.reason) from None
        self._set_ref(child, ref)
        return ref

    def _api_delete_child(self, child_id: Any) -> None:
        child = self._find(child_id)
        self._check_stopped(child)
        self._forget(child)

    @staticmethod
    def _check_stopped(child: _Child) -> None:
        if isinstance(child.ref, pykka.ActorRef):
            raise ChildRunning(child.spec.id)
        if child.ref is RESTARTING:
            raise ChildRestarting(child.spec.id)

    # -- child bookkeeping --

    def _set_ref(self, child: _Child, ref: pykka.ActorRef[Any] | _Restarting | None) -> None:
        if isinstance(child.ref, pykka.ActorRef):
            self._by_ref.pop(child.ref, None)
        child.ref = ref
        if isinstance(ref, pykka.ActorRef):
            self._by_ref[ref] = child.spec.id

    def _forget(self, child: _Child) -> None:
        self._set_ref(child, None)
        self._children.pop(child.spec.id, None)
        self._order.remove(child.spec.id)

    def _stop_child(self, child: _Child) -> None:
        """Terminate a child if it runs; cancel its retry if it is restarting."""
        ref = child.ref
        self._set_ref(child, None)
        if isinstance(ref, pykka.ActorRef):
            self._shutdown(child.spec, ref)

    # -- exits and restarts --

    def _child_exited(self, child: _Child, ref: Any, reason: Any) -> None:
        self._set_ref(child, None)
        super()._child_exited(child, ref, reason)

    def _let_go(self, child: _Child) -> None:
        spec = child.spec
        if spec.restart is Restart.TEMPORARY:
            self._forget(child)
        self._check_auto_shutdown(spec)

    def _check_auto_shutdown(self, spec: ChildSpec) -> None:
        if not spec.significant or self._auto_shutdown is AutoShutdown.NEVER:
            return
        if self._auto_shutdown is AutoShutdown.ALL_SIGNIFICANT and any(
            c.spec.significant and isinstance(c.ref, pykka.ActorRef)
            for c in self._children.values()
        ):
            return
        log_event(
            _log,
            "INFO",
            "auto_shutdown",
            "supervisor {supervisor} shuts down: significant child {child_id!r} exited",
            supervisor=self._name,
            child_id=spec.id,
        )
        self.exit(SHUTDOWN)

    def _restart(self, child: _Child) -> None:
        """One restart attempt (counted), then the strategy; a failure queues a retry."""
        if self._intensity_exceeded():
            self._give_up(child.spec, child.ref)
            return
        index = self._order.index(child.spec.id)
        if self._strategy is Strategy.ONE_FOR_ONE:
            affected = [child.spec.id]
        else:
            start_at = 0 if self._strategy is Strategy.ONE_FOR_ALL else index
            affected = self._order[start_at:]
            # Stop the others in reverse start order, one at a time; temporary ones go for good.
            for other_id in reversed(affected):
                if other_id == child.spec.id:
                    continue
                other = self._children[other_id]
                self._stop_child(other)
                if other.spec.restart is Restart.TEMPORARY:
                    self._forget(other)
            affected = [i for i in affected if i in self._children]
        for child_id in affected:
            target = self._children[child_id]
            try:
                ref = self._start(target.spec)
            except _StartFailure as failure:
                self._restart_failed(target, failure)
                return
            self._restarted(target, ref)

    # -- termination --

    def _terminate_children(self) -> None:
        for child_id in reversed(list(self._order)):
            child = self._children.get(child_id)
            if child is not None:
                self._stop_child(child)
                if child.spec.restart is Restart.TEMPORARY:
                    self._forget(child)


def _check_children(children: Any, auto_shutdown: AutoShutdown) -> list[ChildSpec]:
    # Take a list first: validating a generator would consume it and start no children.
    if isinstance(children, Iterable) and not isinstance(children, str | bytes | Mapping):
        children = list(children)
    check_child_specs(children, auto_shutdown)
    return list(children)


# --- the handle ------------------------------------------------------------------------------


class Supervisor(ActorHandle):
    """Handle to a running supervisor; `Supervisor.start` returns one.

    Every method is a call into the supervisor actor and takes `timeout` in seconds (`None`:
    wait forever). A call on a supervisor that is not running raises `NoProc`; one that gets no
    answer in time raises `CallTimeout`.
    """

    _default_stop_reason: ClassVar[Any] = SHUTDOWN
    _actor_class: ClassVar[type] = _SupervisorActor

    @classmethod
    def start(
        cls,
        children: Iterable[ChildSpec],
        *,
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        auto_shutdown: AutoShutdown | str = AutoShutdown.NEVER,
        name: Any = None,
        clock: Clock | None = None,
    ) -> Supervisor:
        """Start a supervisor and its children, in order; return once all have started.

        Called from inside an actor, the supervisor is linked to that actor once started (OTP's
        ``start_link``): it terminates (children first) when that actor exits, for any reason,
        and its own exit reaches that actor as an exit signal (e.g. `SHUTDOWN` when it gives
        up). A failed start raises here and sends no exit signal.

        Args:
            children: the child specs, started left to right.
            strategy: `Strategy.ONE_FOR_ONE` (default), `ONE_FOR_ALL` or `REST_FOR_ONE`.
            max_restarts: OTP intensity: more than this many restarts ...
            max_seconds: ... within this many seconds (whole seconds, inclusive window) and
                the supervisor gives up and exits with `SHUTDOWN`. Elixir's defaults: 3 in 5.
            auto_shutdown: `AutoShutdown.NEVER` (default), `ANY_SIGNIFICANT`, `ALL_SIGNIFICANT`.
            name: register the supervisor under this local name (see `register`).
            clock: where restart timestamps come from (a `FakeClock` in tests).

        Raises:
            InvalidOption: an invalid option (nothing was started).
            ChildSpecError: an invalid child list (nothing was started).
            SupervisorStartError: a child failed to start; those started before it have been
                stopped in reverse order. `child_id` and `reason` say which and why.
            NameTaken: `name` is registered to a live actor.
        """
        strategy = enum_option("strategy", strategy, Strategy, "invalid_strategy")
        auto_mode: AutoShutdown = enum_option(
            "auto_shutdown", auto_shutdown, AutoShutdown, "invalid_auto_shutdown"
        )
        validate_intensity(max_restarts, max_seconds)
        clock = check_clock(clock)
        check_name_option(name)
        specs = _check_children(children, auto_mode)
        return cls(
            start_actor(
                _SupervisorActor,
                specs,
                strategy,
                max_restarts,
                max_seconds,
                auto_mode,
                name,
                clock,
                current_actor(),
            )
        )

    @classmethod
    def child_spec(
        cls,
        id: Any,
        children: Iterable[ChildSpec],
        *,
        restart: Restart | str = Restart.PERMANENT,
        shutdown: Any = INFINITY,
        significant: bool = False,
        name: Any = None,
        **options: Any,
    ) -> ChildSpec:
        """A `ChildSpec` that runs a nested supervisor (type `SUPERVISOR`, shutdown `INFINITY`).

        `options` are `Supervisor.start` options (`strategy`, `max_restarts`, ...); they and the
        children are validated now, not when the parent starts it.
        """
        strategy = options.get("strategy", Strategy.ONE_FOR_ONE)
        auto = enum_option(
            "auto_shutdown",
            options.get("auto_shutdown", AutoShutdown.NEVER),
            AutoShutdown,
            "invalid_auto_shutdown",
        )
        enum_option("strategy", strategy, Strategy, "invalid_strategy")
        validate_intensity(options.get("max_restarts", 3), options.get("max_seconds", 5.0))
        check_clock(options.get("clock"))
        children = _check_children(children, auto)
        unknown = set(options) - {
            "strategy",
            "max_restarts",
            "max_seconds",
            "auto_shutdown",
            "clock",
        }
        if unknown:
            raise InvalidOption(
                sorted(unknown)[0], options[sorted(unknown)[0]], "a Supervisor.start option"
            )

        @inline_start  # bounded by its children's own start limits
        def start_supervisor() -> Supervisor:
            return cls.start(children, **options)

        start_supervisor.__qualname__ = f"Supervisor.start({id!r})"
        return ChildSpec(
            id,
            start_supervisor,
            restart=restart,
            shutdown=shutdown,
            type=ChildType.SUPERVISOR,
            significant=significant,
            name=name,
        )

    def start_child(
        self, spec: ChildSpec, timeout: float | None = 5.0
    ) -> pykka.ActorRef[Any] | None:
        """Add a child at the end of the start order and start it.

        Returns its ref, or None if its start function returned None (the spec is kept unless
        the child is temporary).

        Raises:
            AlreadyStarted: a child with that id is running (`.ref` is it).
            AlreadyPresent: a child with that id exists but is stopped or restarting.
            ChildSpecError: an invalid spec (e.g. significant under `AutoShutdown.NEVER`).
            StartChildError: the start function failed; nothing is stored.
        """
        check_child_specs([spec])  # a wrong type fails here, in the caller
        result: pykka.ActorRef[Any] | None = self._call(_StartChild(spec), timeout, "start_child")
        return result

    def terminate_child(self, id: Any, timeout: float | None = 5.0) -> None:
        """Stop a child by its shutdown spec; keep its spec (unless temporary). Idempotent.

        On a restarting child it cancels the retries. `timeout` bounds the whole call, so allow
        for the child's `shutdown` time.

        Raises:
            ChildNotFound: no child with that id (a ref is not accepted here, as in OTP).
        """
        self._call(_TerminateChild(id), timeout, "terminate_child")

    def restart_child(self, id: Any, timeout: float | None = 5.0) -> pykka.ActorRef[Any] | None:
        """Start a stopped child again from its spec; return its ref (None if ignored).

        Raises:
            ChildNotFound, ChildRunning, ChildRestarting: as in OTP.
            StartChildError: its start failed (the spec is kept).
        """
        result: pykka.ActorRef[Any] | None = self._call(_RestartChild(id), timeout, "restart_child")
        return result

    def delete_child(self, id: Any, timeout: float | None = 5.0) -> None:
        """Forget a stopped child's spec.

        Raises:
            ChildNotFound, ChildRunning, ChildRestarting: as in OTP.
        """
        self._call(_DeleteChild(id), timeout, "delete_child")

    def which_children(self, timeout: float | None = 5.0) -> list[ChildInfo]:
        """Every child, newest first (reverse start order), as `ChildInfo(id, ref, type)`."""
        result: list[ChildInfo] = self._call(_WhichChildren(), timeout, "which_children")
        return result

    def which_child(self, id: Any, timeout: float | None = 5.0) -> ChildInfo:
        """One child's `ChildInfo`, by id or by ref (OTP 28 `which_child`).

        Raises:
            ChildNotFound: no such child.
        """
        result: ChildInfo = self._call(_WhichChild(id), timeout, "which_child")
        return result

    def count_children(self, timeout: float | None = 5.0) -> ChildCounts:
        """`ChildCounts(specs, active, supervisors, workers)`; restarting ones are not active."""
        result: ChildCounts = self._call(_CountChildren(), timeout, "count_children")
        return result

    def get_childspec(self, id: Any, timeout: float | None = 5.0) -> ChildSpec:
        """The child's full spec (defaults filled in), by id or by ref.

        Raises:
            ChildNotFound: no such child.
        """
        result: ChildSpec = self._call(_GetChildSpec(id), timeout, "get_childspec")
        return result

    def stop(self, reason: Any = SHUTDOWN, timeout: float | None = None) -> None:
        """Stop every child in reverse start order, then the supervisor; wait until done.

        Raises:
            NoProc: the supervisor is not running.
            CallTimeout: not done after `timeout` seconds (it goes on stopping).
        """
        super().stop(reason, timeout)

    # -- awaitable twins: the same calls, awaited without blocking the event loop (each in a
    # thread of its own: cancelling the await stops the waiting, not the call) --

    async def astart_child(
        self, spec: ChildSpec, timeout: float | None = 5.0
    ) -> pykka.ActorRef[Any] | None:
        """Awaitable `start_child`."""
        return await in_thread(self.start_child, spec, timeout)

    async def aterminate_child(self, id: Any, timeout: float | None = 5.0) -> None:
        """Awaitable `terminate_child`."""
        await in_thread(self.terminate_child, id, timeout)

    async def arestart_child(
        self, id: Any, timeout: float | None = 5.0
    ) -> pykka.ActorRef[Any] | None:
        """Awaitable `restart_child`."""
        return await in_thread(self.restart_child, id, timeout)

    async def adelete_child(self, id: Any, timeout: float | None = 5.0) -> None:
        """Awaitable `delete_child`."""
        await in_thread(self.delete_child, id, timeout)

    async def awhich_children(self, timeout: float | None = 5.0) -> list[ChildInfo]:
        """Awaitable `which_children`."""
        return await in_thread(self.which_children, timeout)

    async def awhich_child(self, id: Any, timeout: float | None = 5.0) -> ChildInfo:
        """Awaitable `which_child`."""
        return await in_thread(self.which_child, id, timeout)

    async def acount_children(self, timeout: float | None = 5.0) -> ChildCounts:
        """Awaitable `count_children`."""
        return await in_thread(self.count_children, timeout)

    async def aget_childspec(self, id: Any, timeout: float | None = 5.0) -> ChildSpec:
        """Awaitable `get_childspec`."""
        return await in_thread(self.get_childspec, id, timeout)
