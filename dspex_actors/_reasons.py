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
    "Shutdown",
    "is_normal_exit",
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
