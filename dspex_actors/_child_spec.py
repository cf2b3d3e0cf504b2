"""Child specifications: what a supervisor starts, how it restarts it, how it stops it.

A `ChildSpec` is the Python form of OTP's child spec map. It is a frozen attrs class whose
validators run when it is built, so an invalid spec fails at once, with a `ChildSpecError` that
names the field, the value and the OTP error term (``invalid_restart_type``, ...):

    >>> from dspex_actors import ChildSpec, Restart
    >>> ChildSpec("db", start=print, restart="sometimes")
    Traceback (most recent call last):
    ...
    dspex_actors._errors.ChildSpecError: restart must be one of PERMANENT, ...

`start(*args, **kwargs)` must start the child and return its `ActorRef`, a handle with an
`actor_ref` attribute (such as a `Supervisor`), or `None` to ignore this child (OTP ``ignore``).
Anything else, or an exception, is a start failure.

Deliberately not ported: OTP's `modules` field (it exists for hot code upgrade).
"""

from __future__ import annotations

import contextlib
import enum
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final, TypeVar, cast, final

import attrs

from ._checks import enum_member, is_hashable
from ._errors import ChildSpecError, DuplicateChildId
from ._reasons import is_normal_exit

__all__ = [
    "BRUTAL_KILL",
    "INFINITY",
    "AutoShutdown",
    "ChildSpec",
    "ChildType",
    "Restart",
    "Strategy",
    "check_child_specs",
]


class Restart(enum.Enum):
    """When a child is restarted after it exits on its own (OTP restart types)."""

    PERMANENT = "permanent"
    """Always restarted."""
    TRANSIENT = "transient"
    """Restarted only after an abnormal exit (not `NORMAL`, `SHUTDOWN`, `Shutdown(_)`)."""
    TEMPORARY = "temporary"
    """Never restarted; its spec is deleted when it exits."""


class ChildType(enum.Enum):
    """Whether a child is a worker or a supervisor (changes the default `shutdown`)."""

    WORKER = "worker"
    SUPERVISOR = "supervisor"


class Strategy(enum.Enum):
    """Which children a supervisor restarts when one exits."""

    ONE_FOR_ONE = "one_for_one"
    """Only the child that exited."""
    ONE_FOR_ALL = "one_for_all"
    """All children: the others are stopped (reverse start order), then all are started."""
    REST_FOR_ONE = "rest_for_one"
    """The child that exited and every child started after it."""


class AutoShutdown(enum.Enum):
    """When a supervisor shuts itself down because significant children exited (OTP 24+)."""

    NEVER = "never"
    ANY_SIGNIFICANT = "any_significant"
    ALL_SIGNIFICANT = "all_significant"


@final
class _Infinity:
    def __repr__(self) -> str:
        return "INFINITY"

    def __reduce__(self) -> str:
        return "INFINITY"


@final
class _BrutalKill:
    def __repr__(self) -> str:
        return "BRUTAL_KILL"

    def __reduce__(self) -> str:
        return "BRUTAL_KILL"


INFINITY: Final = _Infinity()
"""`shutdown=INFINITY`: wait as long as the child takes to stop (default for supervisors)."""
BRUTAL_KILL: Final = _BrutalKill()
"""`shutdown=BRUTAL_KILL`: kill the child at once, no cleanup (see `kill`)."""

ShutdownSpec = float | _Infinity | _BrutalKill
"""What `ChildSpec.shutdown` holds: seconds, `INFINITY` or `BRUTAL_KILL`."""

_DEFAULT: Final = object()
F = TypeVar("F", bound=Callable[..., Any])
_SPEC_FIELDS = frozenset(
    {"id", "restart", "shutdown", "type", "significant", "name", "start_timeout"}
)


def _to_restart(value: Any) -> Any:
    # An unknown value is left for the validator to reject with a clear message.
    return enum_member(value, Restart) or value


def _to_child_type(value: Any) -> Any:
    return enum_member(value, ChildType) or value


def _check_enum(field: str, code: str, enum_cls: type[enum.Enum]) -> Callable[..., None]:
    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        if not isinstance(value, enum_cls):
            names = ", ".join(m.name for m in enum_cls)
            raise ChildSpecError(
                field, value, f"{field} must be one of {names}, got: {value!r}", code
            )

    return check


def _check_id(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is None:
        raise ChildSpecError("id", value, "a child spec needs an id, got: None", "missing_id")
    if not is_hashable(value):  # e.g. ("a", []) is a Hashable tuple that cannot be hashed
        raise ChildSpecError("id", value, f"id must be hashable, got: {value!r}", "invalid_id")


def _check_start(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is None:
        raise ChildSpecError("start", value, "a child spec needs a start function", "missing_start")
    if not callable(value):
        raise ChildSpecError(
            "start", value, f"start must be callable, got: {value!r}", "invalid_mfa"
        )


def _valid_shutdown(value: Any) -> bool:
    if value is INFINITY or value is BRUTAL_KILL:
        return True
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value >= 0 and math.isfinite(value)


def _check_shutdown(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is not _DEFAULT and not _valid_shutdown(value):
        raise ChildSpecError(
            "shutdown",
            value,
            f"shutdown must be a number of seconds >= 0, BRUTAL_KILL or INFINITY, got: {value!r}",
            "invalid_shutdown",
        )


def _check_start_timeout(_instance: Any, _attribute: Any, value: Any) -> None:
    if value is _DEFAULT or value is INFINITY:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ChildSpecError(
            "start_timeout",
            value,
            f"start_timeout must be a number of seconds > 0 or INFINITY, got: {value!r}",
            "invalid_start_timeout",
        )


def _check_significant(instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, bool):
        raise ChildSpecError(
            "significant",
            value,
            f"significant must be a bool, got: {value!r}",
            "invalid_significant",
        )
    if value and instance.restart is Restart.PERMANENT:
        raise ChildSpecError(
            "significant",
            value,
            "a significant child cannot be PERMANENT (bad_combination: restart=PERMANENT, "
            "significant=True)",
            "bad_combination",
        )


def _check_name(_instance: Any, _attribute: Any, value: Any) -> None:
    # The same rule as `register` (reserved: True/False; must be hashable), checked here so a
    # bad name fails when the spec is built, not when the supervisor starts the child.
    if value is None:
        return
    if value is True or value is False or not is_hashable(value):
        raise ChildSpecError(
            "name",
            value,
            f"name must be None or a hashable value other than True and False, got: {value!r}",
            "invalid_name",
        )


def _to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_args(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, tuple):
        raise ChildSpecError("args", value, f"args must be a tuple, got: {value!r}", "invalid_mfa")


def _to_dict(value: Any) -> Any:
    return dict(value) if isinstance(value, Mapping) else value


def _check_kwargs(_instance: Any, _attribute: Any, value: Any) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ChildSpecError(
            "kwargs", value, f"kwargs must be a mapping of str, got: {value!r}", "invalid_mfa"
        )


@attrs.frozen(kw_only=False)
class ChildSpec:
    """How to start, restart and stop one child (OTP child spec).

    Attributes:
        id: identifies the child within its supervisor (any hashable but None).
        start: called as `start(*args, **kwargs)`; returns an `ActorRef`, a handle with
            `actor_ref`, or `None` (ignore).
        args: positional arguments for `start`.
        kwargs: keyword arguments for `start`.
        restart: `Restart.PERMANENT` (default), `TRANSIENT` or `TEMPORARY`.
        shutdown: seconds to wait for a graceful stop before killing, `BRUTAL_KILL` or
            `INFINITY`. Default: 5.0 for workers, `INFINITY` for supervisors.
        type: `ChildType.WORKER` (default) or `SUPERVISOR`.
        significant: with `auto_shutdown`, this child's exit can shut its supervisor down.
            Only for `TRANSIENT` and `TEMPORARY` children.
        name: if set, the supervisor registers the child under this local name after every
            start, so `whereis(name)` finds the current instance.
        start_timeout: seconds the start function may take before the start counts as
            failed (a `TimeoutError` reason), or `INFINITY`. Default: 5.0 for workers,
            `INFINITY` for supervisors (whose own children's starts are bounded). A start
            function that is not an actor's `start` runs in a thread of its own, so the
            supervisor keeps answering `which_children`, `count_children` and `stop` while
            it runs; one that never returns is abandoned (a child it starts later is
            stopped at once).
    """

    id: Any = attrs.field(validator=_check_id)
    start: Callable[..., Any] = attrs.field(validator=_check_start, repr=False)
    args: tuple[Any, ...] = attrs.field(default=(), converter=_to_tuple, validator=_check_args)
    kwargs: dict[str, Any] = attrs.field(
        factory=dict, converter=_to_dict, validator=_check_kwargs, repr=False
    )
    restart: Restart = attrs.field(
        default=Restart.PERMANENT,
        converter=_to_restart,
        validator=_check_enum("restart", "invalid_restart_type", Restart),
    )
    shutdown: ShutdownSpec = attrs.field(
        default=cast(ShutdownSpec, _DEFAULT), validator=_check_shutdown
    )
    type: ChildType = attrs.field(
        default=ChildType.WORKER,
        converter=_to_child_type,
        validator=_check_enum("type", "invalid_child_type", ChildType),
    )
    significant: bool = attrs.field(default=False, validator=_check_significant)
    name: Any = attrs.field(default=None, validator=_check_name)
    start_timeout: float | _Infinity = attrs.field(
        default=cast(float, _DEFAULT), validator=_check_start_timeout
    )

    def __attrs_post_init__(self) -> None:
        supervisor = self.type is ChildType.SUPERVISOR
        if self.shutdown is _DEFAULT:
            object.__setattr__(self, "shutdown", INFINITY if supervisor else 5.0)
        if self.start_timeout is _DEFAULT:
            object.__setattr__(self, "start_timeout", INFINITY if supervisor else 5.0)

    def replace(self, **changes: Any) -> ChildSpec:
        """A copy with some fields changed, validated again (Elixir's `Supervisor.child_spec/2`).

        Raises:
            ChildSpecError: an unknown field, or an invalid value.
        """
        unknown = set(changes) - {f.name for f in attrs.fields(ChildSpec)}
        if unknown:
            field = sorted(unknown)[0]
            raise ChildSpecError(
                field, changes[field], f"unknown child spec field {field!r}", "unknown_key"
            )
        return attrs.evolve(self, **changes)

    def restarts_after(self, reason: Any) -> bool:
        """Whether a child of this spec is restarted after exiting on its own with `reason`.

        `PERMANENT`: always; `TRANSIENT`: unless the exit is normal (`NORMAL`, `SHUTDOWN`,
        `Shutdown(_)`); `TEMPORARY`: never.
        """
        return self.restart is Restart.PERMANENT or (
            self.restart is Restart.TRANSIENT and not is_normal_exit(reason)
        )

    @property
    def start_description(self) -> str:
        """The start function's name, for logs."""
        return getattr(self.start, "__qualname__", None) or repr(self.start)


def inline_start(start: F) -> F:
    """Mark a start function a supervisor may call in its own thread: one that returns
    within a bound of its own (an actor's `start`, bounded by its `start_timeout`; a
    framework handle's `start`). Any other start function runs in a thread of its own."""
    function: Any = getattr(start, "__func__", start)
    function._dspex_inline_start = True
    return start


def is_inline_start(start: Any) -> bool:
    """Whether `start` was marked with `inline_start` (bound methods included)."""
    return bool(getattr(getattr(start, "__func__", start), "_dspex_inline_start", False))


_starting = threading.local()


@contextlib.contextmanager
def starting_child_named(name: Any) -> Iterator[None]:
    """While a supervisor calls a child's start function in this thread: the name it will
    register the child under (its spec's `name`), for `child_name`."""
    previous = getattr(_starting, "name", None)
    _starting.name = name
    try:
        yield
    finally:
        _starting.name = previous


def child_name() -> Any:
    """The name a supervisor starting a child in this thread registers it under, else None.

    An actor made by a child's start function reads it as its label (in logs, errors and
    telemetry) when it was given no name of its own: every incarnation of a supervised,
    named pool or supervisor carries the same label.
    """
    return getattr(_starting, "name", None)


def split_spec_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword options into (ChildSpec fields, everything else)."""
    spec = {k: v for k, v in options.items() if k in _SPEC_FIELDS}
    rest = {k: v for k, v in options.items() if k not in _SPEC_FIELDS}
    return spec, rest


def check_child_specs(
    specs: Iterable[ChildSpec], auto_shutdown: AutoShutdown | None = None
) -> None:
    """Validate a list of child specs up front, as OTP's `supervisor:check_childspecs/2`.

    Each `ChildSpec` validated its own fields when it was built; this checks what only the list
    (and the supervisor's `auto_shutdown`) can tell: the element types, unique ids and, when
    `auto_shutdown` is given, that significant children are allowed.

    Raises:
        ChildSpecError: ``badarg`` (not a list), ``invalid_child_spec`` (an element is not a
            `ChildSpec`), `DuplicateChildId`, ``bad_combination`` (significant child under
            `AutoShutdown.NEVER`).
    """
    if isinstance(specs, str | bytes | Mapping) or not isinstance(specs, Iterable):
        raise ChildSpecError(
            "children", specs, f"children must be a list, got: {specs!r}", "badarg"
        )
    seen: set[Any] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec):
            raise ChildSpecError(
                "children",
                spec,
                f"each child must be a ChildSpec (e.g. MyActor.child_spec()), got: {spec!r}",
                "invalid_child_spec",
            )
        if spec.id in seen:
            raise DuplicateChildId(spec.id)
        seen.add(spec.id)
        if auto_shutdown is not None:
            check_significant(spec, auto_shutdown)


def check_significant(spec: ChildSpec, auto_shutdown: AutoShutdown) -> None:
    """A significant child needs an `auto_shutdown` other than `NEVER`."""
    if spec.significant and auto_shutdown is AutoShutdown.NEVER:
        raise ChildSpecError(
            "significant",
            True,
            f"child {spec.id!r} is significant but the supervisor's auto_shutdown is NEVER "
            "(bad_combination: auto_shutdown=NEVER, significant=True)",
            "bad_combination",
        )
