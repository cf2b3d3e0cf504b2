"""The metrics both exporters keep, and how each catalogue event updates them: one table.

`PrometheusExporter` and `OpenTelemetryExporter` build their instruments from `METRICS` and
feed them from `updates(event, measurements, metadata)`, so the two always have the same
metrics, fed by the same events. Labels are short strings with few distinct values: reasons
become `reason_label`s (an exception's class name, an atom's name), never free text.

The per-pool gauges (idle, busy, queued) are not here: they are read from the pools
themselves at collection time (`PoolWatch`), so they are exactly what `status()` says.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Final, Literal

import attrs

from .. import _telemetry as t
from .._errors import DspexActorsError, InvalidOption, NoProc, PoolTimeout
from .._naming._names import whereis
from .._pool._contract import PoolStatus
from .._pool._handle import Pool
from .._reasons import reason_label

__all__ = ["METRICS", "Metric", "PoolSample", "PoolWatch", "reason_label", "updates"]

LATENCY_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Histogram bucket bounds in seconds: from a fast checkout (sub-millisecond) to an LLM call."""


@attrs.frozen
class Metric:
    """One metric: a counter (summed) or a histogram (of seconds).

    Its Prometheus name is ``{namespace}_{subsystem}_{name}`` (plus ``_total`` for a counter,
    ``_seconds`` for a histogram); its OpenTelemetry name ``{namespace}.{subsystem}.{name}``.
    """

    kind: Literal["counter", "histogram"]
    subsystem: str
    name: str
    description: str
    labels: tuple[str, ...]


def _counter(subsystem: str, name: str, description: str, *labels: str) -> Metric:
    return Metric("counter", subsystem, name, description, labels)


def _histogram(subsystem: str, name: str, description: str, *labels: str) -> Metric:
    return Metric("histogram", subsystem, name, description, labels)


CHECKOUTS: Final = _counter("pool", "checkouts", "Checkouts served (a worker was granted).", "pool")
CHECKOUT_TIMEOUTS: Final = _counter(
    "pool", "checkout_timeouts", "Checkouts that got no worker in time (PoolTimeout).", "pool"
)
CHECKOUT_ERRORS: Final = _counter(
    "pool", "checkout_errors", "Checkouts that failed, by exception class.", "pool", "kind"
)
CHECKINS: Final = _counter(
    "pool", "checkins", "Leases ended, by result (ok, error, removed).", "pool", "result"
)
WORKERS_STARTED: Final = _counter("pool", "workers_started", "Workers started.", "pool")
WORKER_START_FAILURES: Final = _counter(
    "pool", "worker_start_failures", "Worker starts that failed.", "pool", "kind"
)
WORKERS_REMOVED: Final = _counter(
    "pool", "workers_removed", "Workers removed (recycles excepted), by reason.", "pool", "reason"
)
WORKERS_RECYCLED: Final = _counter(
    "pool", "workers_recycled", "Healthy workers retired, by reason.", "pool", "reason"
)
IDLE_PINGS: Final = _counter(
    "pool", "idle_pings", "Idle workers pinged, by result.", "pool", "result"
)
QUEUE_WAIT: Final = _histogram(
    "pool", "queue_wait", "Time a checkout waited in the queue for a worker.", "pool"
)
HOLD_TIME: Final = _histogram(
    "pool", "hold_time", "Time a worker was lent out, from checkout to checkin.", "pool"
)
WORKER_START_TIME: Final = _histogram(
    "pool", "worker_start", "Time a worker took to start.", "pool"
)
CHILDREN_STARTED: Final = _counter(
    "supervisor", "children_started", "Children started (restarts included).", "supervisor"
)
CHILD_EXITS: Final = _counter(
    "supervisor",
    "child_exits",
    "Children that exited on their own, by reason.",
    "supervisor",
    "reason",
)
RESTARTS: Final = _counter(
    "supervisor", "restarts", "Children restarted.", "supervisor", "child_id"
)
INTENSITY_EXCEEDED: Final = _counter(
    "supervisor",
    "intensity_exceeded",
    "Supervisors that reached their maximum restart intensity and gave up.",
    "supervisor",
)
PORTS_OPENED: Final = _counter("port", "opened", "Port processes started.", "program")
PORT_EXITS: Final = _counter(
    "port", "exits", "Port processes exited, by exit status.", "program", "status"
)
REQUESTS: Final = _counter(
    "process_pool",
    "requests",
    "ProcessPool.call requests, by outcome (ok or the exception class).",
    "pool",
    "outcome",
)
REQUEST_DURATION: Final = _histogram(
    "process_pool", "request_duration", "ProcessPool.call duration, retries included.", "pool"
)
COMMANDS: Final = _counter(
    "bridge",
    "commands",
    "Bridge commands, by outcome (ok or the exception class).",
    "pool",
    "command",
    "outcome",
)
COMMAND_DURATION: Final = _histogram(
    "bridge", "command_duration", "Bridge command duration.", "pool", "command"
)
AFFINITY_HITS: Final = _counter(
    "bridge", "affinity_hits", "Session commands served by the session's last worker.", "pool"
)
AFFINITY_MISSES: Final = _counter(
    "bridge", "affinity_misses", "Session commands served by another worker.", "pool"
)

METRICS: Final[tuple[Metric, ...]] = (
    CHECKOUTS,
    CHECKOUT_TIMEOUTS,
    CHECKOUT_ERRORS,
    CHECKINS,
    WORKERS_STARTED,
    WORKER_START_FAILURES,
    WORKERS_REMOVED,
    WORKERS_RECYCLED,
    IDLE_PINGS,
    QUEUE_WAIT,
    HOLD_TIME,
    WORKER_START_TIME,
    CHILDREN_STARTED,
    CHILD_EXITS,
    RESTARTS,
    INTENSITY_EXCEEDED,
    PORTS_OPENED,
    PORT_EXITS,
    REQUESTS,
    REQUEST_DURATION,
    COMMANDS,
    COMMAND_DURATION,
    AFFINITY_HITS,
    AFFINITY_MISSES,
)
"""Every counter and histogram, in the order the docs list them."""

Update = tuple[Metric, tuple[str, ...], float]
"""One change to make: add to a counter, or observe a value in a histogram, with its labels
(in the metric's label order)."""


def _text(value: Any) -> str:
    """A label value: a string as it is, None as empty, anything else by its repr."""
    if isinstance(value, str):
        return value
    return "" if value is None else repr(value)[:60]


def _pool(md: Mapping[str, Any]) -> tuple[str]:
    return (_text(md.get("pool")),)


def _on_checkout_stop(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    pool = _pool(md)
    return [(CHECKOUTS, pool, 1), (QUEUE_WAIT, pool, m.get("queue_wait", m.get("duration", 0.0)))]


def _on_checkout_exception(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    pool = _pool(md)
    found: list[Update] = [(CHECKOUT_ERRORS, (*pool, _text(md.get("kind"))), 1)]
    if isinstance(md.get("reason"), PoolTimeout):
        found.append((CHECKOUT_TIMEOUTS, pool, 1))
    return found


def _on_checkin(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    pool = _pool(md)
    return [
        (CHECKINS, (*pool, _text(md.get("result"))), 1),
        (HOLD_TIME, pool, m.get("hold_time", 0.0)),
    ]


def _on_worker_started(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    pool = _pool(md)
    return [(WORKERS_STARTED, pool, 1), (WORKER_START_TIME, pool, m.get("duration", 0.0))]


def _on_worker_start_failed(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    return [(WORKER_START_FAILURES, (*_pool(md), _text(md.get("kind"))), 1)]


def _on_worker_removed(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    return [(WORKERS_REMOVED, (*_pool(md), reason_label(md.get("reason"))), 1)]


def _on_worker_recycled(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    return [(WORKERS_RECYCLED, (*_pool(md), reason_label(md.get("reason"))), 1)]


def _on_ping(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    return [(IDLE_PINGS, (*_pool(md), _text(md.get("result"))), 1)]


def _on_child_started(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    return [(CHILDREN_STARTED, (_text(md.get("supervisor")),), 1)]


def _on_child_exited(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    return [(CHILD_EXITS, (_text(md.get("supervisor")), reason_label(md.get("reason"))), 1)]


def _on_child_restarted(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    return [(RESTARTS, (_text(md.get("supervisor")), _text(md.get("child_id"))), 1)]


def _on_intensity(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    return [(INTENSITY_EXCEEDED, (_text(md.get("supervisor")),), 1)]


def _on_port_opened(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    return [(PORTS_OPENED, (_text(md.get("program")),), 1)]


def _on_port_exited(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    status = md.get("status")
    return [
        (PORT_EXITS, (_text(md.get("program")), "unknown" if status is None else str(status)), 1)
    ]


def _on_request_stop(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    pool = _pool(md)
    return [(REQUESTS, (*pool, "ok"), 1), (REQUEST_DURATION, pool, m.get("duration", 0.0))]


def _on_request_exception(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
    pool = _pool(md)
    return [
        (REQUESTS, (*pool, _text(md.get("kind"))), 1),
        (REQUEST_DURATION, pool, m.get("duration", 0.0)),
    ]


def _on_command_end(outcome: str | None) -> Callable[..., Iterable[Update]]:
    def updates(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
        labels = (_text(md.get("pool")), _text(md.get("command")))
        result = outcome if outcome is not None else _text(md.get("kind"))
        return [
            (COMMANDS, (*labels, result), 1),
            (COMMAND_DURATION, labels, m.get("duration", 0.0)),
        ]

    return updates


def _on_affinity(metric: Metric) -> Callable[..., Iterable[Update]]:
    def updates(m: Mapping[str, float], md: Mapping[str, Any]) -> Iterable[Update]:
        return [(metric, _pool(md), 1)]

    return updates


_UPDATES: Final[
    dict[t.Event, Callable[[Mapping[str, float], Mapping[str, Any]], Iterable[Update]]]
] = {
    t.POOL_CHECKOUT_STOP: _on_checkout_stop,
    t.POOL_CHECKOUT_EXCEPTION: _on_checkout_exception,
    t.POOL_CHECKIN: _on_checkin,
    t.POOL_WORKER_INIT_STOP: _on_worker_started,
    t.POOL_WORKER_INIT_EXCEPTION: _on_worker_start_failed,
    t.POOL_WORKER_REMOVED: _on_worker_removed,
    t.POOL_WORKER_RECYCLED: _on_worker_recycled,
    t.POOL_WORKER_PING: _on_ping,
    t.SUPERVISOR_CHILD_STARTED: _on_child_started,
    t.SUPERVISOR_CHILD_EXITED: _on_child_exited,
    t.SUPERVISOR_CHILD_RESTARTED: _on_child_restarted,
    t.SUPERVISOR_INTENSITY_EXCEEDED: _on_intensity,
    t.PORT_OPENED: _on_port_opened,
    t.PORT_EXITED: _on_port_exited,
    t.PROCESS_POOL_REQUEST_STOP: _on_request_stop,
    t.PROCESS_POOL_REQUEST_EXCEPTION: _on_request_exception,
    t.BRIDGE_COMMAND_STOP: _on_command_end("ok"),
    t.BRIDGE_COMMAND_EXCEPTION: _on_command_end(None),
    t.BRIDGE_AFFINITY_HIT: _on_affinity(AFFINITY_HITS),
    t.BRIDGE_AFFINITY_MISS: _on_affinity(AFFINITY_MISSES),
}

METRIC_EVENTS: Final[tuple[t.Event, ...]] = tuple(_UPDATES)
"""The events that feed `METRICS` (the exporters attach to these)."""


def updates(
    event: t.Event, measurements: Mapping[str, float], metadata: Mapping[str, Any]
) -> Iterable[Update]:
    """The metric changes one event makes (none for an event no metric counts)."""
    found = _UPDATES.get(event)
    return () if found is None else found(measurements, metadata)


# --- pool gauges, read from the pools ----------------------------------------------------------


@attrs.frozen
class PoolSample:
    """One pool's gauges at collection time.

    Attributes:
        pool: the pool's label (`Pool.name`), as in its events' ``pool`` metadata.
        status: its `PoolStatus`, exactly as `status()` returned it.
        active_sessions: a `SessionPool`'s live named sessions, else None.
    """

    pool: str
    status: PoolStatus
    active_sessions: int | None


class PoolWatch:
    """The pools an exporter reads its gauges from, at each collection, with `status()`.

    Gauges are read, not derived from events: a handler attached to a running pool has not
    seen its past, and a count kept from events drifts the first time one is missed, while
    `status()` is the pool's own state. So the exporter's gauges are `status()`, by
    construction. A pool that does not answer within `timeout` is left out of that
    collection only. A pool that has stopped is dropped at the next collection, unless it was
    registered under its name (`whereis`): then its supervisor's next incarnation of it is
    read under the same name, and a collection that finds none leaves it out.
    """

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._pools: dict[str, Any] = {}
        self._registered: set[str] = set()  # names the pools are registered under
        self._lock = threading.Lock()
        self._round_lock = threading.Lock()
        self._round: list[PoolSample] | None = None
        self._consumed: set[Hashable] = set()

    def add(self, pool: Any) -> None:
        """Read `pool` from now on (a pool of the same name replaces the one read before).

        Raises:
            InvalidOption: `pool` is no pool handle.
            NoProc: `pool` is not running.
        """
        if not isinstance(pool, Pool):
            raise InvalidOption("pool", pool, "a Pool, ProcessPool or SessionPool handle")
        name = pool.name
        if not pool.is_alive():
            raise NoProc(name, "watch")
        registered = whereis(name) == pool.actor_ref
        with self._lock:
            self._pools[name] = pool
            if registered:
                self._registered.add(name)
            else:
                self._registered.discard(name)

    def remove(self, pool: Any) -> None:
        """Stop reading `pool` (idempotent)."""
        with self._lock:
            for name, known in list(self._pools.items()):
                if known is pool:
                    del self._pools[name]
                    self._registered.discard(name)

    def clear(self) -> None:
        """Stop reading every pool."""
        with self._lock:
            self._pools.clear()
            self._registered.clear()

    def sample(self) -> list[PoolSample]:
        """Each watched pool's `status()`, now."""
        with self._lock:
            pools = list(self._pools.items())
        samples = []
        for name, pool in pools:
            try:
                status = pool.status(self.timeout)
            except NoProc:
                current = self._next_incarnation(name, pool)
                if current is None:
                    continue
                try:
                    status = current.status(self.timeout)
                except DspexActorsError:
                    continue
            except DspexActorsError:
                continue  # busy past the timeout: skipped this time
            inner = getattr(status, "pool", status)  # a SessionPoolStatus wraps a PoolStatus
            if not isinstance(inner, PoolStatus):
                continue
            sessions = getattr(status, "active_sessions", None)
            samples.append(PoolSample(name, inner, sessions if isinstance(sessions, int) else None))
        return samples

    def shared_sample(self, reader: Hashable) -> list[PoolSample]:
        """`sample`, taken once for several readers of one collection (an exporter's gauges):
        each `reader` gets the current sample the first time it asks, and a fresh one is
        taken when a reader asks again. So the gauges of one collection come from one
        `status()` per pool, and agree with each other."""
        with self._round_lock:
            if self._round is None or reader in self._consumed:
                self._round = self.sample()
                self._consumed = set()
            self._consumed.add(reader)
            return self._round

    def _next_incarnation(self, name: str, stopped: Pool) -> Pool | None:
        """The pool now registered under `name` if `stopped` was registered there (None
        meanwhile); else None, and `stopped` is no longer read (its series end here)."""
        with self._lock:
            if self._pools.get(name) is not stopped:
                return None  # replaced or removed meanwhile
            if name not in self._registered:
                del self._pools[name]
                return None
        ref = whereis(name)
        if ref is None or ref == stopped.actor_ref:
            return None  # between incarnations: left out of this collection
        current: Pool = type(stopped).from_ref(ref)
        with self._lock:
            if self._pools.get(name) is stopped:
                self._pools[name] = current
        return current
