"""`Registry`: a key-value store of actors that forgets an actor the moment it exits.

A registry maps keys to `Entry(ref, value)` pairs. With `Keys.UNIQUE` a key has at most one live
holder (service names, session ids); with `Keys.DUPLICATE` any number of actors, each possibly
several times, can share a key (pub/sub topics, worker groups). Entries vanish when their actor
exits, for any reason, without anybody calling `unregister`.

How it works, and what that buys:

- The table is owned by a registry actor (stop the actor and the table is gone: every call then
  raises `NoProc`), but, like Elixir's ETS-backed Registry, reads and writes do not go through the
  actor's inbox: they take a short lock on the table from the calling thread. No call blocks on
  an actor or on user code, so there is nothing to time out, and a lookup costs a few
  microseconds instead of an actor round trip (see ``bench/registry.py``).
- Cleanup is synchronous where Elixir's is asynchronous: each registered actor is monitored, and
  the monitor removes its entries in the exiting actor's own thread, after its cleanup hook and
  before `wait_exit` returns. Once you have seen an actor exit (`wait_exit`, a `Down`), no lookup
  returns it.
- A unique key whose holder has stopped is free at once: `register` takes it over even if the
  monitor has not run yet, so a restarted service never fails with `NameTaken` against its own
  dead predecessor.

What may be stale (the same caveat as Elixir's docs): `lookup`, `whereis` and `dispatch` never
return an actor that had stopped when they looked, but the actor may stop right after. A caller
that sends to a looked-up actor must expect `NoProc` / `pykka.ActorDeadError`. Listeners hear about
explicit `register`/`unregister` calls only; an actor that exits is dropped silently, so a listener
that needs to know must `monitor` the actor itself (as in Elixir).

In Python there is no implicit "calling process": every call names the actor (`ref`)
explicitly; a handle with `actor_ref` works too.

When not to use it: for one well-known service per process, a local name (`register`) is simpler;
for a pool of interchangeable workers with checkout/checkin, use `Pool`.

Example:
    >>> import dspex_actors as da
    >>> class Worker(da.Actor):
    ...     pass
    >>> reg = da.Registry.start(da.Keys.DUPLICATE)
    >>> a, b = Worker.start(), Worker.start()
    >>> reg.register("topic", a, value=1)
    >>> reg.register("topic", b, value=2)
    >>> sorted(e.value for e in reg.lookup("topic"))
    [1, 2]
    >>> a.stop()
    True
    >>> [e.value for e in reg.lookup("topic")]
    [2]
    >>> b.stop(), reg.stop()
    (True, None)
"""

from __future__ import annotations

import contextlib
import enum
import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Final, final

import attrs
import pykka

from .._actor import Actor, ActorHandle, demonitor, monitor, start_actor
from .._child_spec import ChildSpec, inline_start
from .._errors import InvalidOption, NameNotRegistered, NameTaken, NoProc
from .._reasons import Down, MonitorRef
from ._names import Via, _as_ref, whereis
from ._names import register as register_name

__all__ = ["Entry", "Keys", "Registered", "Registry", "Unregistered"]


# --- public types ----------------------------------------------------------------------------


class Keys(enum.Enum):
    """How many entries a key may have."""

    UNIQUE = "unique"
    """At most one live actor per key; a second `register` raises `NameTaken`."""
    DUPLICATE = "duplicate"
    """Any number of entries per key, several from the same actor included."""


@attrs.frozen
class Entry:
    """One registration: the actor and the value stored with it.

    Attributes:
        ref: the registered actor's `ActorRef`.
        value: the value given to `register` (or set by `update_value`).
    """

    ref: pykka.ActorRef[Any] = attrs.field(repr=str)
    value: Any


@attrs.frozen
class Registered:
    """Told to each listener after an explicit `register` (Elixir ``{:register, ...}``).

    Attributes:
        registry: the `Registry` handle.
        key: the key registered.
        ref: the actor registered.
        value: its value.
    """

    registry: Registry = attrs.field(repr=str)
    key: Any
    ref: pykka.ActorRef[Any] = attrs.field(repr=str)
    value: Any


@attrs.frozen
class Unregistered:
    """Told to each listener after an explicit `unregister` that removed entries.

    Never sent when an actor exits: listeners that care must monitor (as in Elixir).

    Attributes:
        registry: the `Registry` handle.
        key: the key unregistered.
        ref: the actor whose entries were removed.
    """

    registry: Registry = attrs.field(repr=str)
    key: Any
    ref: pykka.ActorRef[Any] = attrs.field(repr=str)


# --- public API ------------------------------------------------------------------------------


class Registry(ActorHandle):
    """Handle to a registry actor; see the module docs. Start one with `Registry.start`.

    No method blocks: each takes the table's lock for a short, bounded moment and never runs user
    code while holding it. Every method raises `NoProc` once the registry has stopped.
    """

    def __init__(self, actor_ref: pykka.ActorRef[Any], table: _Table | None = None) -> None:
        if not issubclass(actor_ref.actor_class, _RegistryActor):
            raise TypeError(f"not a Registry actor: {actor_ref}")
        super().__init__(actor_ref)
        if table is None:
            table = self._call(_GetTable(), 5.0, "Registry.from_ref")
        self._table: _Table = table

    @classmethod
    def start(
        cls,
        keys: Keys | str,
        *,
        name: Any = None,
        listeners: Iterable[Any] = (),
        meta: Mapping[Hashable, Any] | None = None,
    ) -> Registry:
        """Start a registry.

        Args:
            keys: `Keys.UNIQUE` or `Keys.DUPLICATE` (or ``"unique"`` / ``"duplicate"``).
            name: register the registry itself under this local name (see `register`).
            listeners: actors (refs or handles) or local names told `Registered` /
                `Unregistered` after each explicit `register` / `unregister`. A name is
                resolved at each event, so a restarted listener keeps hearing.
            meta: initial registry-level metadata (see `meta`).

        Raises:
            InvalidOption: a bad `keys`, `listeners` or `meta` (nothing was started).
            NameTaken: `name` is registered to a live actor.
        """
        table = _Table(*_options(keys, listeners, meta))
        return cls(start_actor(_RegistryActor, table, name), table)

    @classmethod
    def child_spec(
        cls,
        keys: Keys | str,
        *,
        id: Any = "Registry",
        name: Any = None,
        listeners: Iterable[Any] = (),
        meta: Mapping[Hashable, Any] | None = None,
        **spec_options: Any,
    ) -> ChildSpec:
        """A `ChildSpec` that starts a registry under a supervisor.

        `name` is registered by `start` itself on every (re)start. `spec_options` are other
        `ChildSpec` fields (`restart`, `shutdown`...). Options are validated now.

        Raises:
            InvalidOption: a bad `keys`, `listeners` or `meta`.
        """
        _options(keys, listeners, meta)
        return ChildSpec(
            id,
            cls.start,
            args=(keys,),
            kwargs={"name": name, "listeners": tuple(listeners), "meta": meta},
            **spec_options,
        )

    @property
    def kind(self) -> Keys:
        """`Keys.UNIQUE` or `Keys.DUPLICATE`."""
        return self._table.kind

    # -- writes --

    def register(self, key: Any, ref: Any, value: Any = None) -> None:
        """Register `ref` under `key` with `value`.

        In a unique registry a key held by an actor that has stopped is taken over at once.
        A failed register changes nothing.

        Raises:
            NameTaken: (unique registries) a live actor holds `key`; it is `exc.ref`. Raised for
                the same actor registering the key twice too (Elixir ``already_registered``).
            NoProc: `ref` is not running, or the registry has stopped.
            InvalidOption: `key` is unhashable.
        """
        actor_ref = _as_ref(ref)
        _check_key(key)
        self._table.register(key, actor_ref, value)

    def unregister(self, key: Any, ref: Any) -> None:
        """Remove every entry of `ref` under `key`; does nothing if there is none.

        Raises:
            NoProc: the registry has stopped.
        """
        self._table.unregister(key, _as_ref(ref))

    def update_value(self, key: Any, ref: Any, fn: Callable[[Any], Any]) -> tuple[Any, Any] | None:
        """Set the value of `ref`'s entry under `key` to `fn(old)`; return ``(new, old)``.

        Returns None (Elixir ``:error``) when `ref` does not hold `key`. `fn` runs in the caller,
        outside the table lock; if the entry changes meanwhile, `fn` runs again on the new value.

        Raises:
            InvalidOption: this is a duplicate registry (Elixir raises ArgumentError too).
            NoProc: the registry has stopped.
        """
        if self._table.kind is not Keys.UNIQUE:
            raise InvalidOption(
                "keys", self._table.kind, "Keys.UNIQUE to use update_value", code="not_unique"
            )
        return self._table.update_value(key, _as_ref(ref), fn)

    def put_meta(self, key: Hashable, value: Any) -> None:
        """Store registry-level metadata under `key`."""
        self._table.put_meta(key, value)

    def delete_meta(self, key: Hashable) -> None:
        """Remove registry-level metadata (does nothing if absent)."""
        self._table.delete_meta(key)

    # -- reads --

    def meta(self, key: Hashable, default: Any = None) -> Any:
        """The metadata stored under `key`, or `default`."""
        return self._table.read(lambda t: t.meta.get(key, default))

    def lookup(self, key: Any) -> list[Entry]:
        """The live entries under `key`, in registration order (may be stale, see module docs)."""
        return [e for e in self._table.entries_of(key) if e.ref.is_alive()]

    def whereis(self, key: Any) -> pykka.ActorRef[Any] | None:
        """The live actor holding `key` (the first, in a duplicate registry), or None."""
        for entry in self._table.entries_of(key):
            if entry.ref.is_alive():
                return entry.ref
        return None

    def keys(self, ref: Any) -> list[Any]:
        """The keys `ref` is registered under (repeated for repeated duplicate entries).

        Empty if the actor has stopped.
        """
        actor_ref = _as_ref(ref)
        keys: list[Any] = self._table.read(lambda t: list(t.by_urn.get(actor_ref.actor_urn, ())))
        return keys if actor_ref.is_alive() else []

    def values(self, key: Any, ref: Any) -> list[Any]:
        """The values of `ref`'s entries under `key` (empty if none or if it has stopped)."""
        actor_ref = _as_ref(ref)
        if not actor_ref.is_alive():
            return []
        urn = actor_ref.actor_urn
        return [e.value for e in self._table.entries_of(key) if e.ref.actor_urn == urn]

    def count(self) -> int:
        """The number of entries (all keys, all actors)."""
        size: int = self._table.read(lambda t: t.size)
        return size

    def match(self, key: Any, predicate: Callable[[Any], bool]) -> list[Entry]:
        """The live entries under `key` whose value satisfies `predicate` (Elixir `match/3`).

        `predicate` runs in the caller, outside the table lock.
        """
        return [e for e in self.lookup(key) if predicate(e.value)]

    def count_match(self, key: Any, predicate: Callable[[Any], bool]) -> int:
        """How many entries `match(key, predicate)` would return."""
        return len(self.match(key, predicate))

    def select(self, predicate: Callable[[Any, Entry], bool]) -> list[tuple[Any, Entry]]:
        """Every live ``(key, entry)`` for which `predicate(key, entry)` is true (like `select`)."""
        snapshot = self._table.read(
            lambda t: [(k, e) for k, entries in t.entries.items() for e in entries]
        )
        return [(k, e) for k, e in snapshot if e.ref.is_alive() and predicate(k, e)]

    def count_select(self, predicate: Callable[[Any, Entry], bool]) -> int:
        """How many pairs `select(predicate)` would return."""
        return len(self.select(predicate))

    def dispatch(self, key: Any, fn: Callable[[list[Entry]], Any]) -> None:
        """Call `fn(entries)` with the live entries under `key`, in the caller's thread.

        Never called when the key has no live entry; called once otherwise (the table is
        one partition). An exception from `fn` propagates to the caller.
        """
        entries = self.lookup(key)
        if entries:
            fn(entries)

    def via(self, key: Any, value: Any = None) -> Via:
        """A name that lives in this registry, for `register`, `whereis`, `name=`, `ChildSpec.name`.

        Raises:
            InvalidOption: this is a duplicate registry (Elixir: "via is not supported for
                duplicate registries"), or `key` is unhashable.
        """
        if self._table.kind is not Keys.UNIQUE:
            raise InvalidOption(
                "keys", self._table.kind, "Keys.UNIQUE to name actors with via", code="not_unique"
            )
        _check_key(key)
        return Via(self, key, value)

    # -- Via protocol (used by the names module) --

    def _via_register(self, key: Any, ref: pykka.ActorRef[Any], value: Any) -> None:
        self.register(key, ref, value)

    def _via_unregister(self, key: Any) -> None:
        holder = self.whereis(key)
        if holder is None:
            raise NameNotRegistered(Via(self, key))
        self.unregister(key, holder)

    def _via_whereis(self, key: Any) -> pykka.ActorRef[Any] | None:
        try:
            return self.whereis(key)
        except NoProc:
            return None

    def _raw_entries(self, key: Any) -> list[Entry]:
        """Entries including ones whose actor has stopped but is not yet cleaned up."""
        return self._table.entries_of(key)

    def __str__(self) -> str:
        return f"Registry ({self._ref.actor_urn})"


# --- the actor (owns the table's lifetime) ---------------------------------------------------


@final
@attrs.frozen
class _GetTable:
    """Ask for the table (used by `Registry.from_ref`)."""


class _RegistryActor(Actor):
    """Owns a `_Table`: registers the registry's name, and clears the table when it exits."""

    def __init__(self, table: _Table, name: Any) -> None:
        super().__init__()
        self._table = table
        self._register_as = name
        table.owner = self.actor_ref
        # Set before anyone can reach the table, so no register misses its listener event.
        table.handle = Registry(self.actor_ref, table)

    def on_start(self) -> None:
        if self._register_as is not None:
            register_name(self._register_as, self.actor_ref)

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, _GetTable):
            return self._table
        raise TypeError(f"Registry got an unknown message: {message!r}")

    def _dspex_on_exit(self, reason: Any) -> None:
        # Last step before our monitors fire: after this every handle call raises NoProc.
        self._table.close()


# --- the table -------------------------------------------------------------------------------

_PENDING: Final = object()
"""In `_Table.monitors` while the thread that registered an actor installs its monitor."""


class _Table:
    """The registry's state, shared by the actor and every handle; guarded by `lock`.

    Invariants (under `lock`): `entries[key]` is never empty; `by_urn[urn]` lists the keys of
    that actor's entries (with repeats); `monitors` has a slot for every actor with an entry.
    """

    def __init__(self, kind: Keys, listeners: list[Any], meta: dict[Hashable, Any]) -> None:
        self.kind = kind
        self.listeners = listeners
        self.meta = meta
        self.lock = threading.Lock()
        self.entries: dict[Hashable, list[Entry]] = {}
        self.by_urn: dict[str, list[Hashable]] = {}
        self.monitors: dict[str, MonitorRef | object] = {}
        self.size = 0
        self.closed = False
        self.owner: pykka.ActorRef[Any] | None = None
        self.handle: Registry | None = None

    def _check_open(self, call: str) -> None:
        if self.closed:
            raise NoProc(str(self.handle or self.owner), call)

    def read(self, fn: Callable[[_Table], Any]) -> Any:
        with self.lock:
            self._check_open("Registry")
            return fn(self)

    def entries_of(self, key: Any) -> list[Entry]:
        try:
            with self.lock:
                self._check_open("Registry.lookup")
                return list(self.entries.get(key, ()))
        except TypeError:  # unhashable: nothing can be registered under it
            return []

    def register(self, key: Hashable, ref: pykka.ActorRef[Any], value: Any) -> None:
        urn = ref.actor_urn
        with self.lock:
            self._check_open("Registry.register")
            if not ref.is_alive():
                raise NoProc(str(ref), "Registry.register")
            current = self.entries.get(key)
            if current and self.kind is Keys.UNIQUE:
                holder = current[0].ref
                if holder.is_alive():
                    raise NameTaken(key, holder)
                # Stopped but not yet cleaned up: free now, so a restarted actor can take the key.
                self._remove(key, holder.actor_urn)
            self.entries.setdefault(key, []).append(Entry(ref, value))
            self.by_urn.setdefault(urn, []).append(key)
            self.size += 1
            install = urn not in self.monitors
            if install:
                self.monitors[urn] = _PENDING
            # Told under the lock, so every listener sees events in table order.
            self._notify(lambda reg: Registered(reg, key, ref, value))
        if install:
            self._install_monitor(ref)

    def unregister(self, key: Any, ref: pykka.ActorRef[Any]) -> None:
        urn = ref.actor_urn
        with self.lock:
            self._check_open("Registry.unregister")
            try:
                held = key in self.by_urn.get(urn, ())
            except TypeError:
                return
            if not held:
                return
            self._remove(key, urn)
            mref = self._release(urn)
            self._notify(lambda reg: Unregistered(reg, key, ref))
        if isinstance(mref, MonitorRef):
            demonitor(mref)

    def update_value(
        self, key: Any, ref: pykka.ActorRef[Any], fn: Callable[[Any], Any]
    ) -> tuple[Any, Any] | None:
        while True:
            entry = self._own_entry(key, ref)
            if entry is None:
                return None
            new = fn(entry.value)  # user code: outside the lock
            with self.lock:
                self._check_open("Registry.update_value")
                current = self.entries.get(key)
                if current and current[0] is entry:
                    current[0] = Entry(ref, new)
                    return new, entry.value
            # The entry changed while fn ran: start again from its new state.

    def put_meta(self, key: Hashable, value: Any) -> None:
        with self.lock:
            self._check_open("Registry.put_meta")
            self.meta[key] = value

    def delete_meta(self, key: Hashable) -> None:
        with self.lock:
            self._check_open("Registry.delete_meta")
            self.meta.pop(key, None)

    def close(self) -> None:
        with self.lock:
            self.closed = True
            monitors = list(self.monitors.values())
            self.entries.clear()
            self.by_urn.clear()
            self.monitors.clear()
            self.size = 0
        for mref in monitors:
            if isinstance(mref, MonitorRef):
                demonitor(mref)

    # -- private (the caller holds `lock` unless said otherwise) --

    def _own_entry(self, key: Any, ref: pykka.ActorRef[Any]) -> Entry | None:
        for entry in self.entries_of(key):
            if entry.ref.actor_urn == ref.actor_urn:
                return entry
        return None

    def _remove(self, key: Hashable, urn: str) -> None:
        """Remove every entry of the actor `urn` under `key`."""
        kept = [e for e in self.entries[key] if e.ref.actor_urn != urn]
        self.size -= len(self.entries[key]) - len(kept)
        if kept:
            self.entries[key] = kept
        else:
            del self.entries[key]
        remaining = [k for k in self.by_urn[urn] if k != key]
        if remaining:
            self.by_urn[urn] = remaining
        else:
            del self.by_urn[urn]

    def _release(self, urn: str) -> MonitorRef | object | None:
        """Drop the monitor slot of an actor with no entries left; return it to demonitor."""
        if urn in self.by_urn:
            return None
        return self.monitors.pop(urn, None)

    def _install_monitor(self, ref: pykka.ActorRef[Any]) -> None:
        """Monitor a newly registered actor (called without the lock)."""
        urn = ref.actor_urn
        # A target that has already exited runs the callback at once, in this thread.
        mref = monitor(ref, self._on_down)
        with self.lock:
            keep = self.monitors.get(urn) is _PENDING
            if keep:
                self.monitors[urn] = mref
        if not keep:  # its entries were removed meanwhile (unregister, exit, close)
            demonitor(mref)

    def _on_down(self, down: Down) -> None:
        """Remove every entry of an actor that exited; runs in its thread, after its cleanup."""
        urn = down.ref.actor_urn
        with self.lock:
            for key in dict.fromkeys(self.by_urn.get(urn, ())):
                self._remove(key, urn)
            self.monitors.pop(urn, None)

    def _notify(self, event: Callable[[Registry], Any]) -> None:
        if not self.listeners or self.handle is None:
            return
        message = event(self.handle)
        for listener in self.listeners:
            target = listener if isinstance(listener, pykka.ActorRef) else whereis(listener)
            if target is not None:
                # A listener that has exited (or exits right now) misses the event; it must not
                # fail a register/unregister whose table change is already made.
                with contextlib.suppress(pykka.ActorDeadError):
                    target.tell(message)


# --- private helpers -------------------------------------------------------------------------


_KEYS_EXPECTED: Final = "Keys.UNIQUE or Keys.DUPLICATE"


def _options(keys: Any, listeners: Any, meta: Any) -> tuple[Keys, list[Any], dict[Hashable, Any]]:
    """Validate `Registry.start` options, before anything starts."""
    if meta is not None and not isinstance(meta, Mapping):
        raise InvalidOption("meta", meta, "a mapping", code="invalid_meta")
    return _keys_option(keys), _listeners_option(listeners), dict(meta or {})


def _keys_option(keys: Any) -> Keys:
    if isinstance(keys, Keys):
        return keys
    if isinstance(keys, str):
        for member in Keys:
            if keys.lower() in (member.value, member.name.lower()):
                return member
    raise InvalidOption("keys", keys, _KEYS_EXPECTED, code="invalid_keys")


def _listeners_option(listeners: Any) -> list[Any]:
    if isinstance(listeners, str | bytes) or not isinstance(listeners, Iterable):
        raise InvalidOption(
            "listeners", listeners, "a list of actor refs, handles or names", "invalid_listeners"
        )
    result: list[Any] = []
    for listener in listeners:
        if isinstance(listener, pykka.ActorRef):
            result.append(listener)
        elif isinstance(getattr(listener, "actor_ref", None), pykka.ActorRef):
            result.append(listener.actor_ref)
        else:
            try:
                hash(listener)
            except TypeError:
                raise InvalidOption(
                    "listeners", listeners, "actor refs, handles or names", "invalid_listeners"
                ) from None
            result.append(listener)  # a local name, resolved at each event
    return result


def _check_key(key: Any) -> None:
    try:
        hash(key)
    except TypeError:
        raise InvalidOption("key", key, "hashable", code="invalid_key") from None


inline_start(Registry.start)  # a supervisor may call it in its own thread: it is bounded
