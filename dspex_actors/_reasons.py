"""Exit reasons, and the `Down` / `Exit` notifications that carry them.

An actor's *exit reason* says why it stopped, exactly as in Erlang:

- `NORMAL`: it stopped because it was asked to (`ref.stop()`) or decided to (`self.stop()`).
- `SHUTDOWN` / `Shutdown(info)`: its supervisor (or anyone) shut it down.
- `KILLED`: it was killed (see `kill`): no cleanup hook ran.
- `NOPROC`: only in a `Down`/`Exit` about an actor that was already gone, with no record of why.
- any exception instance: it crashed with that exception.

`is_normal_exit(reason)` is true for `NORMAL`, `SHUTDOWN` and `Shutdown(_)`: the three reasons a
`transient` child is not restarted for.
"""

from __future__ import annotations

import re
from typing import Any, Final, final

import attrs

__all__ = [
    "KILLED",
    "NOPROC",
    "NORMAL",
    "SHUTDOWN",
    "Down",
    "Exit",
    "MonitorRef",
    "Recycle",
    "Shutdown",
    "is_normal_exit",
    "reason_label",
]


@final
class _Atom:
    """A named singleton reason, printed like the Erlang atom it stands for."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name.upper()

    def __reduce__(self) -> str:
        return self._name.upper()


NORMAL: Final = _Atom("normal")
SHUTDOWN: Final = _Atom("shutdown")
KILLED: Final = _Atom("killed")
NOPROC: Final = _Atom("noproc")


@attrs.frozen
class Shutdown:
    """A shutdown with extra information (Erlang ``{shutdown, Info}``); counts as normal."""

    info: Any


def is_normal_exit(reason: object) -> bool:
    """True for `NORMAL`, `SHUTDOWN` and `Shutdown(_)`; false for crashes, `KILLED`, `NOPROC`."""
    return reason is NORMAL or reason is SHUTDOWN or isinstance(reason, Shutdown)


@attrs.frozen
class Recycle:
    """The reason of a `Remove` that retires a healthy worker (it served too many tasks, grew
    too large, got too old): ``Remove(Recycle("max_tasks"), pool_state)``.

    Unlike any other removal, the worker's replacement is started first: the worker is no
    longer lent, and leaves once its replacement has joined (at once if a spare is ready).
    No caller waits for a worker that is only being recycled, and it is not a failure.

    Attributes:
        why: what limit it reached (``"max_tasks"``, ``("max_memory", rss)``...).
    """

    why: Any


def reason_label(reason: Any) -> str:
    """A short label for a reason, from a bounded set of values: a string that reads as an
    atom (a letter, then letters, digits or ``_``, at most 40: ``"closed"``, ``"max_tasks"``)
    as it is and any other string as ``"other"``, an exception's class name, the first
    element of a ``("checkout_failed", code)`` pair (by the same rule), ``"normal"`` /
    ``"shutdown"`` / ``"killed"`` / ``"noproc"`` for the exit reasons, a `Recycle`'s by its
    `why`, else the type's name.

    >>> reason_label(TimeoutError("late")), reason_label(("connect_failed", "target_dead"))
    ('TimeoutError', 'connect_failed')
    >>> reason_label("closed"), reason_label("retired after request #7")
    ('closed', 'other')
    """
    if isinstance(reason, str):
        return reason if _ATOM.fullmatch(reason) else "other"
    if isinstance(reason, BaseException):
        return type(reason).__name__
    if reason is NORMAL or reason is SHUTDOWN or reason is KILLED or reason is NOPROC:
        return repr(reason).lower()
    if isinstance(reason, Shutdown):
        return "shutdown"
    if isinstance(reason, Recycle):
        return reason_label(reason.why)
    if isinstance(reason, tuple | list) and reason and isinstance(reason[0], str):
        return reason_label(reason[0])
    if reason is None:
        return "none"
    return type(reason).__name__


_ATOM = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,39}")
"""A string reason kept as a label: one that reads as an atom (free text would make a new
series per message)."""


@attrs.frozen(eq=False)
class MonitorRef:
    """Identifies one monitor; pass it to `demonitor`. Compared by identity."""

    target: Any = attrs.field(repr=str)


@attrs.frozen
class Down:
    """Delivered to a monitoring actor's `on_down` (or a `monitor` callback) when the target exits.

    Attributes:
        monitor_ref: the `MonitorRef` `monitor` returned.
        ref: the `ActorRef` of the actor that exited.
        reason: its exit reason.
    """

    monitor_ref: MonitorRef
    ref: Any = attrs.field(repr=str)
    reason: Any


@attrs.frozen
class Exit:
    """Delivered to a linked actor's `on_exit_signal` when it traps exits and its peer exits.

    Attributes:
        ref: the `ActorRef` of the peer that exited (or that sent the signal).
        reason: the exit reason.
    """

    ref: Any = attrs.field(repr=str)
    reason: Any
