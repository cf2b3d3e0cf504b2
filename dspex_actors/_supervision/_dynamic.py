"""`DynamicSupervisor`: a supervisor that starts empty and gets its children at run time.

Elixir's DynamicSupervisor: children have no order and are known by their ref (spec ids are
ignored, so many children may share one spec), the strategy is always one_for_one, and at
shutdown every child gets its signal at once and is killed when its own `shutdown` time runs out.
Restarts follow the same rules as `Supervisor` (restart types, intensity, retries through the
inbox).

When not to use it: when children are known up front or their order matters, use `Supervisor`.

Example:
    >>> import dspex_actors as da
    >>> class Session(da.Actor):
    ...     def __init__(self, user: str) -> None:
    ...         super().__init__()
    ...         self.user = user
    >>> sessions = da.DynamicSupervisor.start(max_children=100)
    >>> ref = sessions.start_child(Session.child_spec("ada", restart="temporary"))
    >>> sessions.count_children().active
    1
    >>> sessions.stop()
"""

from __future__ import annotations

import itertools
import time
from typing import Any, ClassVar

import attrs
import pykka

from .._actor import ActorHandle, current_actor, kill, start_actor
from .._aio import in_thread
from .._checks import check_clock, check_name_option, enum_option, is_int, os_timeout
from .._child_spec import (
    BRUTAL_KILL,
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
    AlreadyStarted,
    ChildNotFound,
    ChildSpecError,
    InvalidOption,
    MaxChildren,
    StartChildError,
)
from .._naming._names import register
from .._reasons import SHUTDOWN
from ._base import (
    ChildCounts,
    ChildInfo,
    _CountChildren,
    _Restarting,
    _StartChild,
    _StartFailure,
    _SupervisorBase,
    _TerminateChild,
    _Waiter,
    _WhichChildren,
    validate_intensity,
)

__all__ = ["DynamicSupervisor"]


@attrs.define
class _DynChild:
    key: int
    spec: ChildSpec
    ref: pykka.ActorRef[Any] | _Restarting
    # Its latest ref, also while it is restarting: `terminate_child` names a child by the ref
    # its caller got, which stays its name until a restart gives it a new one.
    last_ref: pykka.ActorRef[Any]


class _DynamicSupervisorActor(_SupervisorBase):
    def __init__(
        self,
        max_children: int | None,
        max_restarts: int,
        max_seconds: float,
        extra_args: tuple[Any, ...],
        name: Any,
        clock: Clock,
        parent: Any,
    ) -> None:
        super().__init__(max_restarts, max_seconds, clock, parent, name)
        self._max_children = max_children
        self._extra_args = extra_args
        self._register_as = name
        self._keys = itertools.count()
        self._children: dict[int, _DynChild] = {}

    def on_start(self) -> None:
        if self._register_as is not None:
            register(self._register_as, self.actor_ref)
        self._link_parent()

    def _which_children(self) -> list[ChildInfo]:
        running = [ChildInfo(None, c.ref, c.spec.type) for c in self._children.values()]
        # Killed children still stuck in a handler are listed too, until their thread exits.
        abandoned = [
            ChildInfo(None, None, ChildType.WORKER, ref) for ref in self._abandoned.values()
        ]
        return running + abandoned

    def _start(self, spec: ChildSpec) -> pykka.ActorRef[Any] | None:
        ref = self._run_start(spec, self._extra_args)
        if ref is not None:
            self._link_started(spec, ref)
        return ref

    def _api_start_child(self, spec: ChildSpec) -> pykka.ActorRef[Any] | None:
        if spec.significant:  # Elixir refuses it: a dynamic child never shuts its parent down
            raise ChildSpecError(
                "significant",
                True,
                "a DynamicSupervisor child cannot be significant (invalid_significant: True)",
                "invalid_significant",
            )
        if self._max_children is not None and len(self._children) >= self._max_children:
            raise MaxChildren(self._max_children)
        try:
            ref = self._start(spec)
        except _StartFailure as failure:
            if isinstance(failure.reason, AlreadyStarted):
                raise failure.reason from None
            raise StartChildError(spec.id, failure.reason) from None
        if ref is None:
            return None  # an ignored child is not kept
        key = next(self._keys)
        self._children[key] = _DynChild(key, spec, ref, ref)
        self._by_ref[ref] = key
        return ref

    def _api_terminate_child(self, key: Any) -> None:
        found = self._by_ref.get(key) if isinstance(key, pykka.ActorRef) else None
        if found is None:
            raise ChildNotFound(key)
        child = self._remove(found)
        if isinstance(child.ref, pykka.ActorRef):
            self._shutdown(child.spec, child.ref, child.key)

    def _remove(self, key: int) -> _DynChild:
        child = self._children.pop(key)
        self._by_ref.pop(child.last_ref, None)
        return child

    def _set_ref(self, child: _DynChild, ref: pykka.ActorRef[Any] | _Restarting | None) -> None:
        if isinstance(ref, pykka.ActorRef):
            self._by_ref.pop(child.last_ref, None)
            child.last_ref = ref
            self._by_ref[ref] = child.key
        if ref is not None:
            child.ref = ref

    def _let_go(self, child: _DynChild) -> None:
        self._remove(child.key)

    def _restart(self, child: _DynChild) -> None:
        if self._intensity_exceeded():
            self._remove(child.key)
            self._give_up(child.spec, child.last_ref)
            return
        try:
            ref = self._start(child.spec)
        except _StartFailure as failure:
            self._restart_failed(child, failure)
            return
        if ref is None:  # ignored on restart: the child is removed, as in Elixir
            self._remove(child.key)
            return
        self._restarted(child, ref)

    def _terminate_children(self) -> None:
        """Signal every child at once; kill each when its own shutdown time runs out (the
        children of a DynamicSupervisor have no order to stop in)."""
        children = list(self._children.values())
        self._children.clear()
        self._by_ref.clear()
        pending: list[tuple[float, ChildSpec, pykka.ActorRef[Any], _Waiter]] = []
        start = time.monotonic()
        for child in children:
            if not isinstance(child.ref, pykka.ActorRef):
                continue
            ref, spec = child.ref, child.spec
            waiter = self._begin_shutdown(spec, ref)
            if isinstance(spec.shutdown, float | int):
                deadline = start + spec.shutdown
            else:
                deadline = start if spec.shutdown is BRUTAL_KILL else float("inf")
            pending.append((deadline, spec, ref, waiter))
        pending.sort(key=lambda item: item[0])
        for deadline, spec, ref, waiter in pending:
            if spec.shutdown is BRUTAL_KILL:
                continue  # already killed
            remaining = max(0.0, deadline - time.monotonic())
            if not waiter.event.wait(os_timeout(remaining)):
                kill(ref)
        for _deadline, spec, ref, waiter in pending:
            self._finish_shutdown(spec, ref, waiter, ref)


class DynamicSupervisor(ActorHandle):
    """Handle to a running dynamic supervisor; `DynamicSupervisor.start` returns one."""

    _default_stop_reason: ClassVar[Any] = SHUTDOWN
    _actor_class: ClassVar[type] = _DynamicSupervisorActor

    @classmethod
    def start(
        cls,
        *,
        max_children: int | None = None,
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        extra_args: tuple[Any, ...] | list[Any] = (),
        strategy: Strategy | str = Strategy.ONE_FOR_ONE,
        auto_shutdown: AutoShutdown | str = AutoShutdown.NEVER,
        name: Any = None,
        clock: Clock | None = None,
    ) -> DynamicSupervisor:
        """Start an empty dynamic supervisor.

        Called from inside an actor, it is linked to that actor, as `Supervisor.start` is.

        Args:
            max_children: refuse `start_child` beyond this many children (restarting ones
                count); None for no limit.
            max_restarts: see `Supervisor.start`.
            max_seconds: see `Supervisor.start`.
            extra_args: prepended to each spec's `args` at every start and restart.
            strategy: only `Strategy.ONE_FOR_ONE` is accepted (as in Elixir).
            auto_shutdown: only `AutoShutdown.NEVER` is accepted (as in Elixir).
            name: register under this local name.
            clock: where restart timestamps come from.

        Raises:
            InvalidOption: an invalid option.
            NameTaken: `name` is registered to a live actor.
        """
        the_clock = _validate_options(
            max_children, max_restarts, max_seconds, extra_args, strategy, auto_shutdown, clock
        )
        check_name_option(name)
        return cls(
            start_actor(
                _DynamicSupervisorActor,
                max_children,
                max_restarts,
                max_seconds,
                tuple(extra_args),
                name,
                the_clock,
                current_actor(),
            )
        )

    @classmethod
    def child_spec(
        cls,
        id: Any,
        *,
        restart: Restart | str = Restart.PERMANENT,
        name: Any = None,
        **options: Any,
    ) -> ChildSpec:
        """A `ChildSpec` that runs a nested dynamic supervisor (type `SUPERVISOR`).

        `options` are `DynamicSupervisor.start` options; they are validated now, not when the
        parent starts it.
        """
        known = {
            "max_children",
            "max_restarts",
            "max_seconds",
            "extra_args",
            "strategy",
            "auto_shutdown",
            "clock",
        }
        unknown = sorted(set(options) - known)
        if unknown:
            raise InvalidOption(unknown[0], options[unknown[0]], "a DynamicSupervisor.start option")
        _validate_options(
            options.get("max_children"),
            options.get("max_restarts", 3),
            options.get("max_seconds", 5.0),
            options.get("extra_args", ()),
            options.get("strategy", Strategy.ONE_FOR_ONE),
            options.get("auto_shutdown", AutoShutdown.NEVER),
            options.get("clock"),
        )

        @inline_start  # it starts no child of its own
        def start_dynamic_supervisor() -> DynamicSupervisor:
            return cls.start(**options)

        start_dynamic_supervisor.__qualname__ = f"DynamicSupervisor.start({id!r})"
        return ChildSpec(
            id, start_dynamic_supervisor, restart=restart, type=ChildType.SUPERVISOR, name=name
        )

    def start_child(
        self, spec: ChildSpec, timeout: float | None = 5.0
    ) -> pykka.ActorRef[Any] | None:
        """Start a child from `spec` (with `extra_args` prepended); return its ref.

        Returns None, storing nothing, when the start function returns None.

        Raises:
            MaxChildren: `max_children` children already exist.
            ChildSpecError: an invalid spec (e.g. `significant=True`).
            StartChildError: the start function failed.
            AlreadyStarted: the child's `name` is taken.
        """
        check_child_specs([spec])
        result: pykka.ActorRef[Any] | None = self._call(_StartChild(spec), timeout, "start_child")
        return result

    def terminate_child(self, ref: pykka.ActorRef[Any], timeout: float | None = 5.0) -> None:
        """Stop a child (by its ref, also while it is restarting) and forget it.

        Raises:
            ChildNotFound: `ref` is not a child of this supervisor.
        """
        self._call(_TerminateChild(ref), timeout, "terminate_child")

    def which_children(self, timeout: float | None = 5.0) -> list[ChildInfo]:
        """Every child as `ChildInfo(None, ref | RESTARTING, type)`."""
        result: list[ChildInfo] = self._call(_WhichChildren(), timeout, "which_children")
        return result

    def count_children(self, timeout: float | None = 5.0) -> ChildCounts:
        """`ChildCounts`; restarting children count in specs and by type, not as active."""
        result: ChildCounts = self._call(_CountChildren(), timeout, "count_children")
        return result

    def stop(self, reason: Any = SHUTDOWN, timeout: float | None = None) -> None:
        """Stop every child (all at once), then the supervisor; wait until done."""
        super().stop(reason, timeout)

    # -- awaitable twins (each in a thread of its own: cancelling the await stops the
    # waiting, not the call) --

    async def astart_child(
        self, spec: ChildSpec, timeout: float | None = 5.0
    ) -> pykka.ActorRef[Any] | None:
        """Awaitable `start_child`."""
        return await in_thread(self.start_child, spec, timeout)

    async def aterminate_child(self, ref: pykka.ActorRef[Any], timeout: float | None = 5.0) -> None:
        """Awaitable `terminate_child`."""
        await in_thread(self.terminate_child, ref, timeout)

    async def awhich_children(self, timeout: float | None = 5.0) -> list[ChildInfo]:
        """Awaitable `which_children`."""
        return await in_thread(self.which_children, timeout)

    async def acount_children(self, timeout: float | None = 5.0) -> ChildCounts:
        """Awaitable `count_children`."""
        return await in_thread(self.count_children, timeout)


def _validate_options(
    max_children: Any,
    max_restarts: Any,
    max_seconds: Any,
    extra_args: Any,
    strategy: Any,
    auto_shutdown: Any,
    clock: Any,
) -> Clock:
    """Check every `DynamicSupervisor.start` option; return the clock to use."""
    if max_children is not None and (not is_int(max_children) or max_children < 0):
        raise InvalidOption(
            "max_children", max_children, "an integer >= 0 or None", code="invalid_max_children"
        )
    if not isinstance(extra_args, tuple | list):
        raise InvalidOption(
            "extra_args", extra_args, "a tuple or list", code="invalid_extra_arguments"
        )
    if enum_option("strategy", strategy, Strategy, "invalid_strategy") is not Strategy.ONE_FOR_ONE:
        raise InvalidOption("strategy", strategy, "ONE_FOR_ONE", code="invalid_strategy")
    shutdown_mode = enum_option(
        "auto_shutdown", auto_shutdown, AutoShutdown, "invalid_auto_shutdown"
    )
    if shutdown_mode is not AutoShutdown.NEVER:
        raise InvalidOption("auto_shutdown", auto_shutdown, "NEVER", code="invalid_auto_shutdown")
    validate_intensity(max_restarts, max_seconds)
    return check_clock(clock)
