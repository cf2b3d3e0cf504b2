"""Option checks and timeout arithmetic shared by every layer.

Each start function validates its options eagerly, before anything starts, and raises
`InvalidOption` naming the option, the rule and the value (``"pool_size must be a positive
integer, got: 0"``). The rules that more than one start function needs live here, once: what
counts as an integer or a number (``True`` is neither), how a string becomes an enum member,
what a name may be, what a clock is, and how a timeout in seconds becomes something the OS can
wait on.

    >>> from dspex_actors import Strategy
    >>> enum_option("strategy", "rest_for_one", Strategy, "invalid_strategy")
    <Strategy.REST_FOR_ONE: 'rest_for_one'>
    >>> os_timeout(float("inf")) is None   # "forever", which the OS cannot be asked for
    True
"""

from __future__ import annotations

import enum
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ._clock import SYSTEM_CLOCK, Clock
from ._errors import InvalidOption

__all__ = [
    "check_clock",
    "check_name",
    "check_name_option",
    "check_options",
    "check_timeout",
    "enum_member",
    "enum_option",
    "is_hashable",
    "is_int",
    "is_number",
    "lock_timeout",
    "os_timeout",
    "remaining",
]

E = TypeVar("E", bound=enum.Enum)
T = TypeVar("T")


def is_int(value: Any) -> bool:
    """An `int` that is not a `bool`."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An `int` or `float` that is not a `bool`."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_hashable(value: Any) -> bool:
    """True if `hash(value)` works (``("a", [])`` is a `Hashable` tuple that cannot be hashed)."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


def enum_member(value: Any, enum_cls: type[E]) -> E | None:
    """`value` as a member of `enum_cls`: the member itself, or its value or name as a string
    (any case); None if it is neither."""
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        text = value.lower()
        for member in enum_cls:
            if text in (member.value, member.name.lower()):
                return member
    return None


def enum_option(option: str, value: Any, enum_cls: type[E], code: str) -> E:
    """`enum_member`, raising `InvalidOption` (with the OTP error term `code`) for anything
    else."""
    member = enum_member(value, enum_cls)
    if member is None:
        names = ", ".join(m.name for m in enum_cls)
        raise InvalidOption(option, value, f"one of {names}", code=code)
    return member


def check_name(name: Any) -> None:
    """A local name's rule (`register`): hashable, and not None, True or False.

    None is what `whereis` returns for "nobody"; True and False are Erlang's reserved atoms
    (and ``1 == True`` would make them ambiguous in Python).
    """
    if name is None or name is True or name is False:
        raise InvalidOption(
            "name", name, "a hashable value other than None, True or False", code="invalid_name"
        )
    if not is_hashable(name):
        raise InvalidOption("name", name, "hashable", code="invalid_name")


def check_name_option(name: Any) -> None:
    """A ``name=`` option of a start function: None (no name) or a name `check_name` accepts."""
    if name is not None:
        check_name(name)


def check_clock(clock: Any) -> Clock:
    """The clock to use: `SYSTEM_CLOCK` for None, else `clock` if it is a `Clock`."""
    if clock is None:
        return SYSTEM_CLOCK
    if not isinstance(clock, Clock):
        raise InvalidOption("clock", clock, "a Clock (monotonic() and call_later())")
    return clock


def check_timeout(timeout: Any, option: str = "timeout") -> None:
    """A timeout in seconds: a number >= 0, or None (wait forever)."""
    if timeout is not None and (not is_number(timeout) or not timeout >= 0):
        raise InvalidOption(option, timeout, "a non-negative number of seconds or None")


def check_options(check: Callable[..., T], *args: Any, **options: Any) -> T:
    """`check(*args, **options)`, refusing an option `check` does not take, or a missing one
    it requires (keyword-only, without a default), with `InvalidOption` (naming the options it
    does take) instead of a `TypeError`.

    For ``child_spec`` functions, which check a start function's options when the spec is
    built: `check` is the start function's own validation, options with defaults.
    """
    parameters = inspect.signature(check).parameters
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    known = [name for name, p in parameters.items() if p.kind in named]
    for name in options:
        if name not in known:
            raise InvalidOption(name, options[name], f"one of the options {', '.join(known)}")
    for name, p in parameters.items():
        required = p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty
        if required and name not in options:
            raise InvalidOption(name, None, "given: it has no default")
    return check(*args, **options)


def os_timeout(timeout: float | None) -> float | None:
    """A timeout the OS can wait on: beyond `threading.TIMEOUT_MAX` (e.g. ``inf``) is forever
    (None).

    A longer wait raises `OverflowError`, and for an `ask` only after the message was sent.
    """
    if timeout is not None and timeout > threading.TIMEOUT_MAX:
        return None
    return timeout


def lock_timeout(timeout: float | None) -> float:
    """`os_timeout` in `Lock.acquire`'s terms, where forever is -1."""
    bounded = os_timeout(timeout)
    return -1 if bounded is None else bounded


def deadline_in(timeout: float | None) -> float | None:
    """The `time.monotonic` deadline `timeout` seconds from now; None (no deadline) for None
    or a timeout too long for the OS to wait (`os_timeout`: ``inf`` waits forever)."""
    bounded = os_timeout(timeout)
    return None if bounded is None else time.monotonic() + bounded


def remaining(deadline: float | None) -> float | None:
    """Seconds left until `deadline` (a `time.monotonic` value; None: no deadline), never
    negative."""
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())
