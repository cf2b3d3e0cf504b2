"""Telemetry events: named occurrences with numbers attached, pushed to whoever listens.

This is Erlang's ``:telemetry`` for Python. The library *emits* events at the moments that
matter (a checkout is served, a child restarts, a worker process exits); an application
*attaches* handlers to the events it cares about and turns them into metrics, traces or
alerts. With no handler attached an event costs one attribute read at its call site.

- An **event** is a tuple of strings, e.g. ``("dspex", "pool", "checkout", "stop")``.
- Each is emitted with **measurements** (a dict of numbers: durations in seconds as floats,
  counts) and **metadata** (a dict of anything that says what it was about: the pool's name,
  the worker's id, the reason).
- `attach(handler_id, events, handler)` calls ``handler(event, measurements, metadata, config)``
  for each of `events`; with ``prefix=True`` each of `events` is a prefix and the handler gets
  every event that starts with it. `detach(handler_id)` removes it; `list_handlers()` lists
  them.
- A handler that raises is detached at once and logged (logger ``dspex_actors.telemetry``,
  event ``telemetry_handler_detached``); the code that emitted the event never notices.
- `span(prefix, metadata)` times a block: ``prefix + ("start",)`` on entry, then
  ``prefix + ("stop",)`` with its ``duration``, or ``prefix + ("exception",)`` with its
  ``duration``, ``kind`` and ``reason`` if the block raised (which is re-raised). The three
  events of one span carry the same ``telemetry_span_context`` in their metadata, so a tracer
  can pair them.

Logs and telemetry are two sides of one story: every record `dspex_actors` logs stays as it is
(see `dspex_actors._logging`); telemetry is the numbers side, for machines.

How the library's own call sites keep the cost near zero: the module attribute `active` is
True exactly while some handler is attached, and hot paths test it before building any dict::

    from .. import _telemetry

    if _telemetry.active:
        _telemetry.emit(_telemetry.PORT_OPENED, {"count": 1}, {"port_id": 7})

(Read it as ``_telemetry.active`` every time: ``from ._telemetry import active`` would copy the
value once and never see it change.)

Thread safety: handlers may be attached and detached from any thread while other threads emit.
The handler table is copy-on-write: `attach` and `detach` build a new table under a lock and
swap it in with one assignment; `emit` reads whichever table is current and takes no lock.

When not to use it: to find out why something failed, read the logs (they carry the
traceback); to ask what a pool or supervisor looks like *now*, call its `status()` or
`which_children()` (the pull side, which the events agree with).

Example:
    >>> seen = []
    >>> attach("doc-example", [("my_app", "job", "stop")],
    ...        lambda event, measurements, metadata, config: seen.append(metadata["job"]))
    >>> with span(("my_app", "job"), {"job": "nightly"}):
    ...     pass
    >>> seen
    ['nightly']
    >>> detach("doc-example")
    True
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self

import attrs

from ._errors import InvalidOption
from ._logging import area_logger, log_event

__all__ = [
    "BRIDGE_AFFINITY_HIT",
    "BRIDGE_AFFINITY_MISS",
    "BRIDGE_COMMAND",
    "BRIDGE_COMMAND_EXCEPTION",
    "BRIDGE_COMMAND_START",
    "BRIDGE_COMMAND_STOP",
    "EVENTS",
    "POOL_CHECKIN",
    "POOL_CHECKOUT",
    "POOL_CHECKOUT_EXCEPTION",
    "POOL_CHECKOUT_START",
    "POOL_CHECKOUT_STOP",
    "POOL_WORKER_INIT",
    "POOL_WORKER_INIT_EXCEPTION",
    "POOL_WORKER_INIT_START",
    "POOL_WORKER_INIT_STOP",
    "POOL_WORKER_PING",
    "POOL_WORKER_RECYCLED",
    "POOL_WORKER_REMOVED",
    "PORT_EXITED",
    "PORT_OPENED",
    "PROCESS_POOL_REQUEST",
    "PROCESS_POOL_REQUEST_EXCEPTION",
    "PROCESS_POOL_REQUEST_START",
    "PROCESS_POOL_REQUEST_STOP",
    "SPAN_CONTEXT",
    "SUPERVISOR_CHILD_EXITED",
    "SUPERVISOR_CHILD_RESTARTED",
    "SUPERVISOR_CHILD_STARTED",
    "SUPERVISOR_INTENSITY_EXCEEDED",
    "Event",
    "Handler",
    "HandlerInfo",
    "Span",
    "active",
    "attach",
    "detach",
    "emit",
    "list_handlers",
    "monotonic_time",
    "span",
    "start_span",
    "system_time",
]

_log = area_logger("telemetry")

# --- public types ------------------------------------------------------------------------------

Event = tuple[str, ...]
"""An event's name: a non-empty tuple of strings, most general first."""

Handler = Callable[[Event, Mapping[str, float], Mapping[str, Any], Any], None]
"""``handler(event, measurements, metadata, config) -> None``: see `attach`."""

SPAN_CONTEXT: Final = "telemetry_span_context"
"""The metadata key under which the start, stop and exception events of one span carry the
same value (an `int` unique in this process), as Erlang's ``:telemetry.span/3`` does."""

monotonic_time: Final = time.monotonic
"""Seconds on the monotonic clock: what every ``duration`` in the catalogue is measured with."""

system_time: Final = time.time
"""Seconds since the Unix epoch: the ``system_time`` measurement of start events."""


@attrs.frozen
class HandlerInfo:
    """One attached handler, as `list_handlers` reports it.

    Attributes:
        id: the id it was attached with.
        events: the events (or, with `prefix`, the event prefixes) it was attached to.
        prefix: whether `events` are prefixes.
        function: the handler.
        config: the `config` passed to it on every call.
    """

    id: Hashable
    events: tuple[Event, ...]
    prefix: bool
    function: Handler = attrs.field(repr=False)
    config: Any = None


# --- the event catalogue -----------------------------------------------------------------------
# Durations are seconds (float) on `monotonic_time`; `count` is always 1, so that summing it
# counts events. The start event of a span carries `system_time` and `monotonic_time`, its stop
# and exception events `duration` and `monotonic_time` (the moment it ended). Metadata names:
# `pool` is the pool's label (`Pool.name`), `supervisor` the supervisor's (its registered name,
# or the one its own supervisor registers it under, else its actor ref), `reason` the raw
# reason object, `worker_id` a pool's worker id (as in `From.worker_id` and
# `WorkerStats.worker_id`).

POOL_CHECKOUT: Final[Event] = ("dspex", "pool", "checkout")
"""Span prefix of a checkout (`checkout`, `lease`, `acheckout`, `alease`, and so every
`ProcessPool.call` and bridge command): from the call until a worker is granted (or the
call fails). Emitted in the caller's thread."""

POOL_CHECKOUT_START: Final[Event] = (*POOL_CHECKOUT, "start")
"""A caller asks a pool for a worker (its arguments are valid: bad ones raise
`InvalidOption` with no event).

Measurements: ``system_time``, ``monotonic_time``. Metadata: ``pool``, ``telemetry_span_context``.
"""

POOL_CHECKOUT_STOP: Final[Event] = (*POOL_CHECKOUT, "stop")
"""A worker was granted to the caller (counted in `PoolStatus.checkouts`).

Measurements: ``duration`` (the whole checkout call until the grant), ``queue_wait`` (the part
of it spent in the pool's queue, from the moment the request found no worker to give until
the caller had one; 0.0 when one was idle), ``monotonic_time``. Metadata: ``pool``,
``worker_id``, ``telemetry_span_context``.
"""

POOL_CHECKOUT_EXCEPTION: Final[Event] = (*POOL_CHECKOUT, "exception")
"""A checkout failed: no worker in time (``reason`` a `PoolTimeout`), the pool is gone
(`NoProc`), `WorkerBusy`, a `Skip` error, a callback's invalid return
(`CallbackReturnError`), or an awaiting task was cancelled while queued (`CancelledError`).

Measurements: ``duration``, ``monotonic_time``. Metadata: ``pool``, ``kind`` (the exception's
class name), ``reason`` (the exception), ``telemetry_span_context``.
"""

POOL_CHECKIN: Final[Event] = ("dspex", "pool", "checkin")
"""A lease ended: the caller gave its worker back (or the lease was cancelled). Emitted in
the caller's thread, once per `POOL_CHECKOUT_STOP` (a checkout whose start went unobserved
has neither).

Measurements: ``hold_time`` (seconds from the grant to the checkin). Metadata: ``pool``,
``worker_id``, ``result``: ``"ok"`` (checked in with a non-error state), ``"error"`` (an error
checkin state: ``("error", reason)`` or an exception; both as `WorkerStats.successful_checkins`
and `error_checkins` count them) or ``"removed"`` (the lease was cancelled: the checkout
function or the ``with`` block raised, the function returned no pair, the caller's thread
ended, or the caller gave up by timeout or cancellation just as the pool granted it the
worker; the worker is removed). A lease held by an actor that exits has no checkin: its
worker's `POOL_WORKER_REMOVED` (reason ``"DOWN"``) tells.
"""

POOL_WORKER_INIT: Final[Event] = ("dspex", "pool", "worker", "init")
"""Span prefix of a worker start (`init_worker`, including an `Async` start's function).
Emitted in the pool's thread (or a caller's, for a lazy pool's start during its checkout)."""

POOL_WORKER_INIT_START: Final[Event] = (*POOL_WORKER_INIT, "start")
"""A pool starts a worker.

Measurements: ``system_time``, ``monotonic_time``. Metadata: ``pool``, ``telemetry_span_context``.
"""

POOL_WORKER_INIT_STOP: Final[Event] = (*POOL_WORKER_INIT, "stop")
"""A worker has started and joined the pool (counted in `PoolStatus.workers_started`).

Measurements: ``duration`` (how long the start took), ``monotonic_time``. Metadata: ``pool``,
``worker_id``, ``telemetry_span_context``.
"""

POOL_WORKER_INIT_EXCEPTION: Final[Event] = (*POOL_WORKER_INIT, "exception")
"""A worker start failed (it raised or returned something invalid); the pool retries it.
(An `Async` start still running when the pool stops ends with no event.)

Measurements: ``duration``, ``monotonic_time``. Metadata: ``pool``, ``kind``, ``reason``,
``telemetry_span_context``.
"""

POOL_WORKER_REMOVED: Final[Event] = ("dspex", "pool", "worker", "removed")
"""A pool removed a worker, for any reason but a recycle (see `POOL_WORKER_RECYCLED`): a
`Remove` result, a cancelled lease (``"timeout"``, ``"DOWN"``, ``"error"``, ``"exit"``,
``"cancelled"``), a raising callback (the exception), a dismissed overflow worker
(``"overflow"``). Workers terminated by the pool's own stop are not removals.

Measurements: ``count``. Metadata: ``pool``, ``worker_id``, ``reason``.
"""

POOL_WORKER_RECYCLED: Final[Event] = ("dspex", "pool", "worker", "recycled")
"""A pool decided to retire a healthy worker (`Remove(Recycle(why))`); it leaves once its
replacement has joined.

Measurements: ``count``. Metadata: ``pool``, ``worker_id``, ``reason`` (the `Recycle`'s
``why``).
"""

POOL_WORKER_PING: Final[Event] = ("dspex", "pool", "worker", "ping")
"""A pool pinged an idle worker (`handle_ping`).

Measurements: ``count``. Metadata: ``pool``, ``worker_id``, ``result``: ``"ok"`` (it returned
`Ok`), ``"removed"`` (`Remove`, or it raised or returned something invalid: the worker is
removed, or recycled) or ``"stop"`` (`Stop`: the pool stops).
"""

SUPERVISOR_CHILD_STARTED: Final[Event] = ("dspex", "supervisor", "child", "started")
"""A supervisor started a child (at its own start, by `start_child` / `restart_child`, or as a
restart).

Measurements: ``count``. Metadata: ``supervisor``, ``child_id`` (None under a
`DynamicSupervisor` unless the spec has one), ``child_type`` (``"worker"`` or
``"supervisor"``), ``ref`` (the child's `ActorRef`).
"""

SUPERVISOR_CHILD_EXITED: Final[Event] = ("dspex", "supervisor", "child", "exited")
"""A supervised child exited on its own (not stopped by its supervisor): a crash, or a normal
exit.

Measurements: ``count``. Metadata: ``supervisor``, ``child_id``, ``ref``, ``reason`` (the exit
reason: `NORMAL`, `SHUTDOWN`, `Shutdown(info)`, `KILLED` or the exception), ``normal``
(`is_normal_exit(reason)`), ``restart`` (whether it will be restarted, by its restart type).
"""

SUPERVISOR_CHILD_RESTARTED: Final[Event] = ("dspex", "supervisor", "child", "restarted")
"""A supervisor restarted a child successfully (once per child a strategy restarts).

Measurements: ``count``. Metadata: ``supervisor``, ``child_id``, ``ref`` (the new `ActorRef`,
the one `which_children()` now lists).
"""

SUPERVISOR_INTENSITY_EXCEEDED: Final[Event] = ("dspex", "supervisor", "intensity", "exceeded")
"""A supervisor reached its maximum restart intensity: it gives up and exits with `SHUTDOWN`.

Measurements: ``count``. Metadata: ``supervisor``, ``child_id`` (the offender),
``max_restarts``, ``max_seconds``.
"""

PORT_OPENED: Final[Event] = ("dspex", "port", "opened")
"""A port's process has started (`Port.open`, `Port.spawn`, and so every process-pool worker).

Measurements: ``count``. Metadata: ``port`` (the `Port`), ``port_id``, ``os_pid``,
``program`` (`argv[0]`'s base name, or the handler's name).
"""

PORT_EXITED: Final[Event] = ("dspex", "port", "exited")
"""A port's process has exited and been reaped (the moment `PortExited` is sent).

Measurements: ``count``, ``lifetime`` (seconds since it was opened). Metadata: ``port``,
``port_id``, ``os_pid``, ``program``, ``status`` (the exit status; negative: killed by that
signal, ``-9`` for SIGKILL; None if unknown), ``signal`` (the signal's name, e.g.
``"SIGKILL"``, or None), ``closing`` (True when `close` asked for it; `kill` alone leaves it
False).

Emitted before the exit is visible to anyone else (`wait_exit`, `exit_status`, a `recv`
ending): who sees the exit can count on its event having been emitted.
"""

PROCESS_POOL_REQUEST: Final[Event] = ("dspex", "process_pool", "request")
"""Span prefix of one `ProcessPool.call` or `acall` (retries included; each attempt's own
checkout is a `POOL_CHECKOUT` span inside it). Emitted in the caller's thread."""

PROCESS_POOL_REQUEST_START: Final[Event] = (*PROCESS_POOL_REQUEST, "start")
"""A `ProcessPool.call` begins (its request is encoded: one that cannot be is refused with
`ProtocolError` and no event).

Measurements: ``system_time``, ``monotonic_time``. Metadata: ``pool``, ``telemetry_span_context``.
"""

PROCESS_POOL_REQUEST_STOP: Final[Event] = (*PROCESS_POOL_REQUEST, "stop")
"""A `ProcessPool.call` returned a reply.

Measurements: ``duration``, ``monotonic_time``, ``attempts`` (the workers it was handed to:
1, plus one per retry after a crash or an undelivered request). Metadata: ``pool``,
``worker`` (the port that answered, as text: ``"#Port<3>"``), ``worker_id`` (its pool worker
id), ``telemetry_span_context``.
"""

PROCESS_POOL_REQUEST_EXCEPTION: Final[Event] = (*PROCESS_POOL_REQUEST, "exception")
"""A `ProcessPool.call` raised (`RemoteError`, `WorkerCrashed`, `CallTimeout`, `PoolTimeout`,
`CancelledError`...).

Measurements: ``duration``, ``monotonic_time``, ``attempts`` (0 if no worker was lent).
Metadata: ``pool``, ``worker`` and ``worker_id`` (the last worker lent, if any), ``kind``,
``reason``, ``telemetry_span_context``.
"""

BRIDGE_COMMAND: Final[Event] = ("dspex", "bridge", "command")
"""Span prefix of one bridge command (`SessionPool.execute_in_session` / `execute_anonymous`
and their awaitable twins, and the same on a single `Bridge`, whose ``pool`` is its actor
ref), the steps that rebuild its session on the worker included. Emitted in the caller's
thread."""

BRIDGE_COMMAND_START: Final[Event] = (*BRIDGE_COMMAND, "start")
"""A bridge command begins (its arguments are valid: bad ones raise `InvalidOption` or
`ProtocolError` with no event).

Measurements: ``system_time``, ``monotonic_time``. Metadata: ``pool``, ``command``,
``session_id`` (``"anonymous"`` outside a session), ``telemetry_span_context``.
"""

BRIDGE_COMMAND_STOP: Final[Event] = (*BRIDGE_COMMAND, "stop")
"""A bridge command returned its result.

Measurements: ``duration``, ``monotonic_time``. Metadata: ``pool``, ``command``,
``session_id``, ``worker`` (the port that ran it, as text), ``telemetry_span_context``.
"""

BRIDGE_COMMAND_EXCEPTION: Final[Event] = (*BRIDGE_COMMAND, "exception")
"""A bridge command raised (`CommandError`, `CommandTimeout`, `WorkerCrashed`, `PoolTimeout`,
`WorkerBusy`...).

Measurements: ``duration``, ``monotonic_time``. Metadata: ``pool``, ``command``,
``session_id``, ``worker`` (if one was lent), ``kind``, ``reason``, ``telemetry_span_context``.
"""

BRIDGE_AFFINITY_HIT: Final[Event] = ("dspex", "bridge", "affinity", "hit")
"""A session command was served by the worker that served the session last (emitted where
`SessionPoolStatus.affinity_hits` counts it; a session's first command is neither a hit nor
a miss).

Measurements: ``count``. Metadata: ``pool``, ``session_id``, ``worker_id``.
"""

BRIDGE_AFFINITY_MISS: Final[Event] = ("dspex", "bridge", "affinity", "miss")
"""A session command was served by another worker, which rebuilt the session first (counted
in `SessionPoolStatus.affinity_misses`).

Measurements: ``count``. Metadata: ``pool``, ``session_id``, ``worker_id``.
"""

EVENTS: Final[tuple[Event, ...]] = (
    POOL_CHECKOUT_START,
    POOL_CHECKOUT_STOP,
    POOL_CHECKOUT_EXCEPTION,
    POOL_CHECKIN,
    POOL_WORKER_INIT_START,
    POOL_WORKER_INIT_STOP,
    POOL_WORKER_INIT_EXCEPTION,
    POOL_WORKER_REMOVED,
    POOL_WORKER_RECYCLED,
    POOL_WORKER_PING,
    SUPERVISOR_CHILD_STARTED,
    SUPERVISOR_CHILD_EXITED,
    SUPERVISOR_CHILD_RESTARTED,
    SUPERVISOR_INTENSITY_EXCEEDED,
    PORT_OPENED,
    PORT_EXITED,
    PROCESS_POOL_REQUEST_START,
    PROCESS_POOL_REQUEST_STOP,
    PROCESS_POOL_REQUEST_EXCEPTION,
    BRIDGE_COMMAND_START,
    BRIDGE_COMMAND_STOP,
    BRIDGE_COMMAND_EXCEPTION,
    BRIDGE_AFFINITY_HIT,
    BRIDGE_AFFINITY_MISS,
)
"""Every event dspex_actors emits, in catalogue order."""


# --- the handler table (copy-on-write) ---------------------------------------------------------


class _Entry:
    """An attached handler. `attached` goes False on detach, so an emit that read the table
    just before the detach skips it (unless it was already inside the call)."""

    __slots__ = ("attached", "info")

    def __init__(self, info: HandlerInfo) -> None:
        self.info = info
        self.attached = True


_CACHE_LIMIT: Final = 1024  # distinct events whose matching handlers a table remembers


class _Table:
    """An immutable set of attached handlers, and which of them each event reaches.

    Replaced whole by `attach` and `detach`; `emit` reads `_table` once and uses that table
    throughout. `cache` is filled lazily by `emit` (a dict assignment is atomic: two threads
    that race compute the same tuple).
    """

    __slots__ = ("by_event", "by_prefix", "cache", "entries")

    def __init__(self, entries: tuple[_Entry, ...]) -> None:
        self.entries = entries
        self.by_event: dict[Event, tuple[_Entry, ...]] = {}
        self.by_prefix: dict[Event, tuple[_Entry, ...]] = {}
        for entry in entries:
            index = self.by_prefix if entry.info.prefix else self.by_event
            for event in entry.info.events:
                if entry not in index.get(event, ()):
                    index[event] = (*index.get(event, ()), entry)
        self.cache: dict[Event, tuple[_Entry, ...]] = {}

    def handlers_of(self, event: Event) -> tuple[_Entry, ...]:
        """The entries `event` reaches, in attach order, each once."""
        found = self.cache.get(event)
        if found is not None:
            return found
        matched = set(self.by_event.get(event, ()))
        if self.by_prefix:
            for length in range(len(event) + 1):
                matched.update(self.by_prefix.get(event[:length], ()))
        found = tuple(e for e in self.entries if e in matched)
        if len(self.cache) < _CACHE_LIMIT:
            self.cache[event] = found
        return found


_EMPTY: Final = _Table(())
_table: _Table = _EMPTY
_lock = threading.Lock()  # serialises attach and detach (emit never takes it)

active: bool = False
"""True exactly while at least one handler is attached. Call sites read it as
``_telemetry.active`` before building an event's dicts."""


# --- public API --------------------------------------------------------------------------------


def attach(
    handler_id: Hashable,
    events: Sequence[Event],
    handler: Handler,
    config: Any = None,
    *,
    prefix: bool = False,
) -> None:
    """Attach `handler` to `events` under `handler_id` (Erlang's ``:telemetry.attach_many``).

    The handler is called as ``handler(event, measurements, metadata, config)``:

    - *Runs in*: the thread that emits the event (a caller's thread, a pool's or supervisor's
      actor thread, a port's reader thread), synchronously, before the emitting code goes on.
      Several threads may call it at once.
    - *Receives*: the event tuple; `measurements` and `metadata` as the catalogue describes
      them (the same dicts are passed to every handler: do not change them); `config` as
      given here.
    - *Must return*: nothing (a return value is ignored).
    - *If it raises* an `Exception`: it is detached at once and the failure is logged at
      ERROR (logger ``dspex_actors.telemetry``, event ``telemetry_handler_detached``, with the
      traceback); the emitting code is not affected. A `BaseException` such as
      `KeyboardInterrupt` is not caught.

    !!! warning
        A handler holds up the code that emitted the event: keep it short, and never call
        back into the actor that emitted it (a supervisor's or pool's events run in that
        actor's thread, so asking it anything from the handler waits until the call times
        out).

    A handler may still be called once by an `emit` that was already under way when
    `detach` returned.

    Args:
        handler_id: any hashable id, unique among attached handlers (e.g. ``"my_app.metrics"``).
        events: a non-empty list of events, each a non-empty tuple of strings.
        handler: the function to call.
        config: passed to every call as the fourth argument.
        prefix: if True, each of `events` is a prefix: the handler gets every event that
            starts with one of them (``("dspex", "pool")`` gets every pool event, ``("dspex",)``
            all of them, ``()`` every event emitted by anyone).

    Raises:
        InvalidOption: `handler_id` is already attached (code ``"already_exists"``, as
            Erlang's ``{error, already_exists}``) or is not hashable, `events` is not a
            non-empty list of event tuples, or `handler` is not callable.

    Example:
        >>> attach("doc-prefix", [("dspex", "pool")], print, prefix=True)
        >>> next(h.events for h in list_handlers() if h.id == "doc-prefix")
        (('dspex', 'pool'),)
        >>> detach("doc-prefix")
        True
    """
    global _table, active
    try:
        hash(handler_id)
    except TypeError:
        raise InvalidOption("handler_id", handler_id, "a hashable id") from None
    checked = _check_events(events, prefix)
    if not callable(handler):
        raise InvalidOption(
            "handler", handler, "a callable (event, measurements, metadata, config)"
        )
    info = HandlerInfo(handler_id, checked, bool(prefix), handler, config)
    with _lock:
        if any(e.info.id == handler_id for e in _table.entries):
            raise InvalidOption(
                "handler_id", handler_id, "an id that is not attached already", "already_exists"
            )
        # The new table first, then the flag: an emit that sees `active` finds a table.
        _table = _Table((*_table.entries, _Entry(info)))
        active = True


def detach(handler_id: Hashable) -> bool:
    """Detach the handler attached as `handler_id`; False if there was none (idempotent)."""
    global _table, active
    with _lock:
        kept = tuple(e for e in _table.entries if e.info.id != handler_id)
        if len(kept) == len(_table.entries):
            return False
        for entry in _table.entries:
            if entry.info.id == handler_id:
                entry.attached = False
        _table = _Table(kept) if kept else _EMPTY
        active = bool(kept)
        return True


def list_handlers(event_prefix: Event = ()) -> list[HandlerInfo]:
    """The attached handlers, in attach order; with `event_prefix`, only those attached to an
    event (or a prefix) that starts with it (Erlang's ``:telemetry.list_handlers/1``)."""
    size = len(event_prefix)
    return [
        e.info
        for e in _table.entries
        if any(event[:size] == event_prefix for event in e.info.events)
    ]


def emit(event: Event, measurements: Mapping[str, float], metadata: Mapping[str, Any]) -> None:
    """Call every handler attached to `event` (Erlang's ``:telemetry.execute/3``).

    Never raises because of a handler: one that raises is detached and logged (see `attach`).
    Cheap when nothing is attached, but a hot path should still test ``_telemetry.active``
    first, to skip building the two dicts.
    """
    for entry in _table.handlers_of(event):
        if not entry.attached:
            continue
        info = entry.info
        try:
            info.function(event, measurements, metadata, info.config)
        except Exception as exc:
            _handler_failed(entry, event, exc)


class Span:
    """A timed piece of work: emits ``prefix + ("start",)``, then ``("stop",)`` or
    ``("exception",)`` once, with its ``duration``.

    Use it as a context manager (`span`), or, where the work does not fit a ``with`` block,
    start it with `start_span` and end it with `stop` or `exception` (a second end is ignored).
    The three events carry ``telemetry_span_context`` (`SPAN_CONTEXT`) in their metadata.

    A span whose start found no handler attached (`active` False) stays silent to its end, even
    if a handler is attached meanwhile. A handler attached while others are, during a span,
    sees that span's end without its start.

    Attributes:
        prefix: the event prefix.
        metadata: the metadata of every event of the span; code inside the span may add to it
            (e.g. the worker it got), and the stop or exception event carries the additions.
        start_time: `monotonic_time` at the start.
        context: the value of ``telemetry_span_context``.
    """

    __slots__ = ("_ended", "context", "metadata", "prefix", "start_time")

    def __init__(self, prefix: Event, metadata: Mapping[str, Any] | None = None) -> None:
        self.prefix = prefix
        self.metadata: dict[str, Any] = dict(metadata) if metadata else {}
        self.context = 0
        self.start_time = 0.0
        self._ended = True  # until started, and forever if nothing listened at the start

    def start(self, measurements: Mapping[str, float] | None = None) -> Self:
        """Emit the start event (with ``system_time`` and ``monotonic_time``); returns self."""
        self.start_time = monotonic_time()
        if not active:
            return self
        self._ended = False
        self.context = next(_span_contexts)
        self.metadata[SPAN_CONTEXT] = self.context
        values = {"system_time": system_time(), "monotonic_time": self.start_time}
        if measurements:
            values.update(measurements)
        emit((*self.prefix, "start"), values, dict(self.metadata))
        return self

    def stop(
        self,
        measurements: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Emit the stop event with ``duration`` (plus `measurements`, `metadata`)."""
        if self._ended:
            return
        self._ended = True
        self._end("stop", measurements, metadata)

    def exception(
        self,
        exc: BaseException,
        measurements: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Emit the exception event with ``duration``, ``kind`` (the class name of `exc`) and
        ``reason`` (`exc`)."""
        if self._ended:
            return
        self._ended = True
        extra = {"kind": type(exc).__name__, "reason": exc}
        if metadata:
            extra.update(metadata)
        self._end("exception", measurements, extra)

    def _end(
        self,
        suffix: str,
        measurements: Mapping[str, float] | None,
        metadata: Mapping[str, Any] | None,
    ) -> None:
        now = monotonic_time()
        values = {"duration": now - self.start_time, "monotonic_time": now}
        if measurements:
            values.update(measurements)
        if metadata:
            self.metadata.update(metadata)
        emit((*self.prefix, suffix), values, dict(self.metadata))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.stop()
        else:
            self.exception(exc)  # and the exception propagates

    def __repr__(self) -> str:
        return f"Span({self.prefix!r}, context={self.context})"


def span(prefix: Event, metadata: Mapping[str, Any] | None = None) -> Span:
    """Time a ``with`` block as a span (Erlang's ``:telemetry.span/3``).

    Emits ``prefix + ("start",)`` (measurements ``system_time``, ``monotonic_time``) on entry;
    on a normal exit ``prefix + ("stop",)`` (``duration``, ``monotonic_time``); if the block
    raises, ``prefix + ("exception",)`` (``duration``, ``monotonic_time``; metadata ``kind``,
    ``reason``) and the exception propagates unchanged. Every event's metadata is `metadata`
    plus ``telemetry_span_context``, and the `Span` the block gets lets it add metadata for
    the end event.

    Example:
        >>> with span(("my_app", "render"), {"page": "home"}) as s:
        ...     s.metadata["bytes"] = 512
    """
    return Span(prefix, metadata)


def start_span(prefix: Event, metadata: Mapping[str, Any] | None = None) -> Span:
    """Start a span now (its start event is emitted); end it with `Span.stop` or
    `Span.exception`. For work that does not fit one ``with`` block."""
    return Span(prefix, metadata).start()


# --- private helpers ---------------------------------------------------------------------------

_span_contexts = itertools.count(1)  # next() on a count is atomic: no two spans share one


def _check_events(events: Any, prefix: bool) -> tuple[Event, ...]:
    expected = 'a non-empty list of event tuples of strings, such as [("dspex", "pool", "checkin")]'
    if isinstance(events, str | bytes) or not isinstance(events, Sequence) or not events:
        raise InvalidOption("events", events, expected)
    if all(isinstance(part, str) for part in events):
        # One bare event: ambiguous with a list of events, so refused with the fix.
        raise InvalidOption("events", events, expected + " (wrap one event in a list)")
    checked: list[Event] = []
    for event in events:
        empty_ok = prefix  # the empty prefix matches every event
        if (
            not isinstance(event, tuple)
            or not all(isinstance(part, str) for part in event)
            or (not event and not empty_ok)
        ):
            raise InvalidOption("events", events, expected)
        checked.append(event)
    return tuple(checked)


def _handler_failed(entry: _Entry, event: Event, exc: Exception) -> None:
    """Detach a handler that raised (only the entry that raised: one attached again under the
    same id meanwhile stays) and log why."""
    global _table, active
    with _lock:
        if entry not in _table.entries:
            return  # detached meanwhile (by its owner, or by another thread's failure)
        entry.attached = False
        kept = tuple(e for e in _table.entries if e is not entry)
        _table = _Table(kept) if kept else _EMPTY
        active = bool(kept)
    log_event(
        _log,
        "ERROR",
        "telemetry_handler_detached",
        "telemetry handler {handler_id!r} raised on event {event!r} and was detached",
        handler_id=entry.info.id,
        event=event,
        exc=exc,
    )
