"""Local names: find an actor by a name instead of holding its ref (Erlang's registered names).

`register(name, ref)` gives a running actor a process-wide name; `whereis(name)` returns its
current `ActorRef`, or None; `unregister(name)` takes the name back. A supervisor re-registers a
child's `ChildSpec.name` after every restart, so `whereis("pool")` always finds the current
instance, which a ref captured before a crash cannot do.

The rules are those of `Process.register` / `erlang:register/2`:

- one name per actor, one actor per name: a name held by a live actor raises `NameTaken`, an actor
  that already has a name raises `AlreadyNamed`;
- only a running actor can be registered (`NoProc` otherwise);
- `None`, `True` and `False` are reserved (`None` is what `whereis` returns for "nobody", and the
  booleans are Erlang's reserved atoms; `1 == True` in Python would make them ambiguous too), and
  a name must be hashable: `InvalidOption` otherwise. Any other hashable is a name: a string, an
  enum member, a class (the way Elixir names processes after modules), a tuple. Names compare
  like dict keys (``1 == 1.0``).
- the name is freed when its actor exits, for any reason. A monitor frees it as soon as the
  actor has exited (in the exiting actor's thread, before `wait_exit` returns), not on the next
  lookup; and in the short window between "stopped" and "monitor ran" `whereis` already returns
  None and `register` already treats the name as free. That is how a restarted child never loses
  a race with its dead predecessor's registration (the ``already_started`` restart loop of
  Registry/gproc users).

`whereis` checks liveness, but the answer can still be stale by the time you use it: the actor
may exit right after the lookup. Code that sends to a name must expect `NoProc` /
`pykka.ActorDeadError`, exactly as in Erlang.

A `Via(registry, key)` (made by `Registry.via(key)`) can be used wherever a name is expected
(`register`, `whereis`, `unregister`, `name=` options, `ChildSpec.name`): the name then lives in
that unique `Registry` instead of the process-wide table (Elixir's ``{:via, Registry, ...}``).

When not to use names: for actors you started yourself and hold a ref to (pass the ref), and for
many actors sharing one key (use a duplicate `Registry`).

Example:
    >>> import dspex_actors as da
    >>> class Echo(da.Actor):
    ...     def on_receive(self, message):
    ...         return message
    >>> ref = Echo.start()
    >>> da.register("echo", ref)
    >>> da.whereis("echo").ask("hi", timeout=5)
    'hi'
    >>> ref.stop()
    True
    >>> da.whereis("echo") is None
    True
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from typing import Any, Protocol

import attrs
import pykka

from .._actor import demonitor, monitor
from .._errors import AlreadyNamed, InvalidOption, NameNotRegistered, NameTaken, NoProc
from .._logging import area_logger, log_event
from .._reasons import Down, MonitorRef

__all__ = ["Via", "register", "unregister", "whereis"]

_log = area_logger("naming")


# --- public types ----------------------------------------------------------------------------


class ViaTarget(Protocol):
    """What a `Via` name needs from its registry (implemented by `Registry`)."""

    def _via_register(self, key: Any, ref: pykka.ActorRef[Any], value: Any) -> None: ...

    def _via_unregister(self, key: Any) -> None: ...

    def _via_whereis(self, key: Any) -> pykka.ActorRef[Any] | None: ...


@attrs.frozen
class Via:
    """A name kept in a unique `Registry` under `key` (Elixir ``{:via, Registry, {reg, key}}``).

    Build it with `Registry.via(key, value)`, which refuses duplicate registries.

    Attributes:
        registry: the `Registry` holding the name.
        key: the key the actor is registered under.
        value: the value stored with the registration.
    """

    registry: ViaTarget = attrs.field(repr=str)
    key: Any
    value: Any = None


# --- public API ------------------------------------------------------------------------------


def register(name: Any, ref: Any) -> None:
    """Register a running actor under `name`, for `whereis(name)` to find.

    Callable from any thread, including an actor's own thread (from `on_start`); it never waits
    for an actor. A holder that has stopped but whose exit is not yet fully processed does not
    count: its name is taken over at once.

    Args:
        name: any hashable but `None`, `True` and `False`, or a `Via`.
        ref: the actor's `pykka.ActorRef`, or a handle with an `actor_ref` (a `Supervisor`...).

    Raises:
        NameTaken: a live actor holds `name` (it is `exc.ref`); also subclasses `AlreadyStarted`.
        AlreadyNamed: the actor already holds another name.
        NoProc: the actor is not running.
        InvalidOption: `name` is reserved or unhashable.
        TypeError: `ref` is not an actor ref or handle.
    """
    actor_ref = _as_ref(ref)
    if isinstance(name, Via):
        name.registry._via_register(name.key, actor_ref, name.value)
        return
    _check_name(name)
    urn = actor_ref.actor_urn
    with _lock:
        if not actor_ref.is_alive():
            raise NoProc(str(actor_ref), "register")
        holder = _by_name.get(name)
        if holder is not None:
            if holder.ref.is_alive():
                raise NameTaken(name, holder.ref)
            # Stopped, but its monitor has not run yet: the name is already free.
            _forget(name, holder)
        existing = _by_urn.get(urn)
        if existing is not None:
            raise AlreadyNamed(actor_ref, existing, name)
        holder = _Holder(actor_ref)
        _by_name[name] = holder
        _by_urn[urn] = name
    # Outside the lock: a target that has already exited runs the callback at once, here.
    mref = monitor(actor_ref, lambda down: _on_down(name, holder, down))
    with _lock:
        current = _by_name.get(name) is holder
        if current:
            holder.mref = mref
    if not current:  # unregistered (or freed) while we installed the monitor
        demonitor(mref)
    log_event(
        _log, "DEBUG", "name_registered", "{name!r} registered: {ref}", name=name, ref=str(ref)
    )


def unregister(name: Any) -> None:
    """Remove a name, so `whereis(name)` returns None; the actor keeps running.

    Raises:
        NameNotRegistered: no live actor holds `name` (including one that has just stopped).
    """
    if isinstance(name, Via):
        name.registry._via_unregister(name.key)
        return
    _check_name(name)
    with _lock:
        holder = _by_name.get(name)
        if holder is not None:
            _forget(name, holder)
    if holder is None or not holder.ref.is_alive():
        raise NameNotRegistered(name)
    if holder.mref is not None:
        demonitor(holder.mref)


def whereis(name: Any) -> pykka.ActorRef[Any] | None:
    """The `ActorRef` registered under `name`, or None if none is, or its actor has stopped.

    Never returns an actor that had stopped when it looked; it may stop right after (see the
    module docs). Never raises for an unknown or unhashable name: the answer is None.
    """
    if isinstance(name, Via):
        return name.registry._via_whereis(name.key)
    try:
        holder = _by_name.get(name)  # a single dict read is atomic: no lock needed
    except TypeError:  # unhashable: it cannot be registered, so nobody holds it
        return None
    if holder is None:
        return None
    ref = holder.ref
    return ref if ref.is_alive() else None


# --- private helpers -------------------------------------------------------------------------


@attrs.define(eq=False)
class _Holder:
    """One registration; compared by identity so a late monitor never frees a newer holder."""

    ref: pykka.ActorRef[Any]
    mref: MonitorRef | None = None


_lock = threading.Lock()
_by_name: dict[Hashable, _Holder] = {}
_by_urn: dict[str, Hashable] = {}


def holder_of(name: Any) -> pykka.ActorRef[Any] | None:
    """The registered ref even if its actor has stopped (not yet freed); for `detect_service`."""
    if isinstance(name, Via):
        return name.registry._via_whereis(name.key)
    try:
        holder = _by_name.get(name)
    except TypeError:
        return None
    return holder.ref if holder is not None else None


def _on_down(name: Hashable, holder: _Holder, down: Down) -> None:
    """Free the name once its actor has exited; runs in the exiting actor's thread."""
    with _lock:
        if _by_name.get(name) is not holder:
            return  # already unregistered, or taken over by a successor
        _forget(name, holder)
    log_event(
        _log,
        "DEBUG",
        "name_freed",
        "{name!r} freed: {ref} exited with {reason}",
        name=name,
        ref=str(down.ref),
        reason=repr(down.reason),
    )


def _forget(name: Hashable, holder: _Holder) -> None:
    """Drop a registration; the caller holds `_lock`."""
    del _by_name[name]
    urn = holder.ref.actor_urn
    if _by_urn.get(urn) == name:
        del _by_urn[urn]


def _check_name(name: Any) -> None:
    if name is None or name is True or name is False:
        raise InvalidOption(
            "name", name, "a hashable value other than None, True or False", code="invalid_name"
        )
    try:
        hash(name)
    except TypeError:
        raise InvalidOption("name", name, "hashable", code="invalid_name") from None


def _as_ref(ref: Any) -> pykka.ActorRef[Any]:
    """An `ActorRef` from a ref or a handle with `actor_ref`."""
    if isinstance(ref, pykka.ActorRef):
        return ref
    inner = getattr(ref, "actor_ref", None)
    if isinstance(inner, pykka.ActorRef):
        return inner
    raise TypeError(f"expected a pykka ActorRef or a handle with .actor_ref, got: {ref!r}")
