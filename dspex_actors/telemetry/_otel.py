"""`OpenTelemetryExporter`: dspex_actors' telemetry events as OpenTelemetry metrics and spans.

Needs the ``otel`` extra (``pip install 'dspex-actors[otel]'``, which installs
``opentelemetry-api`` and ``opentelemetry-sdk``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from .. import _telemetry
from ._metrics import (
    LATENCY_BUCKETS,
    METRIC_EVENTS,
    METRICS,
    Metric,
    PoolSample,
    PoolWatch,
    updates,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import TracerProvider

__all__ = ["OpenTelemetryExporter"]

_MISSING = (
    "OpenTelemetryExporter needs opentelemetry-api and opentelemetry-sdk: install the 'otel' "
    "extra, pip install 'dspex-actors[otel]'"
)

# The span events, with the span each start opens.
_SPAN_NAMES: Final = {
    _telemetry.PROCESS_POOL_REQUEST_START: "dspex.process_pool.request",
    _telemetry.BRIDGE_COMMAND_START: "dspex.bridge.command",
}
_SPAN_ENDS: Final = (
    _telemetry.PROCESS_POOL_REQUEST_STOP,
    _telemetry.PROCESS_POOL_REQUEST_EXCEPTION,
    _telemetry.BRIDGE_COMMAND_STOP,
    _telemetry.BRIDGE_COMMAND_EXCEPTION,
)
_ATTRIBUTES: Final = ("pool", "command", "session_id", "worker")  # metadata kept on spans
_OPEN_SPANS_LIMIT: Final = 10_000  # spans started and not ended that are remembered


class OpenTelemetryExporter:
    """Records dspex_actors' events as OpenTelemetry metrics, and traces process-pool requests
    and bridge commands as spans.

    Metrics: the same counters and histograms as `PrometheusExporter`, named
    ``dspex.<subsystem>.<name>`` (``dspex.pool.checkouts``, ``dspex.pool.queue_wait`` in
    seconds...), with the same attributes; and observable gauges ``dspex.pool.idle_workers``,
    ``dspex.pool.busy_workers``, ``dspex.pool.queued_checkouts`` (and
    ``dspex.bridge.active_sessions``), read from the pools given to `watch` with `status()`
    at each collection.

    Spans: a `ProcessPool.call` becomes a ``dspex.process_pool.request`` span and a bridge
    command a ``dspex.bridge.command`` span, from its start event to its stop or exception
    event (paired by their ``telemetry_span_context``), with attributes ``dspex.pool``,
    ``dspex.command``, ``dspex.session_id``, ``dspex.worker``; a failed one has status ERROR,
    ``error.type`` and the exception recorded. A span's parent is the span current in the
    caller's thread when the request started. The exporter does not make its spans current
    (they are opened and closed by events, not around the caller's code).

    Example:
        >>> from opentelemetry.sdk.metrics import MeterProvider
        >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        >>> from opentelemetry.sdk.trace import TracerProvider
        >>> reader = InMemoryMetricReader()
        >>> exporter = OpenTelemetryExporter(MeterProvider([reader]), TracerProvider())
        >>> exporter.attach()
        >>> # ... run supervisors, pools, ports ...
        >>> exporter.detach()

    Args:
        meter_provider: where the instruments are made (default: the global one).
        tracer_provider: where the spans go (default: the global one).
        status_timeout: seconds a collection waits for each watched pool's `status()`.

    Raises:
        ImportError: the OpenTelemetry API is not installed.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        tracer_provider: TracerProvider | None = None,
        *,
        status_timeout: float = 1.0,
    ) -> None:
        try:
            from opentelemetry import metrics, trace
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        meter = provider.get_meter("dspex_actors")
        tracers = trace.get_tracer_provider() if tracer_provider is None else tracer_provider
        self._tracer = tracers.get_tracer("dspex_actors")
        self._handler_id = f"dspex_actors.telemetry.OpenTelemetryExporter#{id(self):x}"
        self._instruments: dict[Metric, Any] = {}
        for metric in METRICS:
            name = f"dspex.{metric.subsystem}.{metric.name}"
            if metric.kind == "counter":
                self._instruments[metric] = meter.create_counter(
                    name, unit="1", description=metric.description
                )
            else:
                self._instruments[metric] = meter.create_histogram(
                    name,
                    unit="s",
                    description=metric.description,
                    explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
                )
        self._pools = PoolWatch(status_timeout)
        for gauge, description, read in (
            ("pool.idle_workers", "Workers waiting in the idle queue.", _idle),
            ("pool.busy_workers", "Workers checked out.", _busy),
            ("pool.queued_checkouts", "Checkouts waiting for a worker.", _queued),
            ("bridge.active_sessions", "Named sessions alive in a SessionPool.", _sessions),
        ):
            meter.create_observable_gauge(
                f"dspex.{gauge}", [self._observer(read)], unit="1", description=description
            )
        self._spans: collections.OrderedDict[int, OtelSpan] = collections.OrderedDict()
        self._spans_lock = threading.Lock()
        self._events = (*METRIC_EVENTS, *_SPAN_NAMES, *_SPAN_ENDS)

    def attach(self) -> None:
        """Start recording: attach this exporter's telemetry handler (idempotent)."""
        if any(h.id == self._handler_id for h in _telemetry.list_handlers()):
            return
        _telemetry.attach(self._handler_id, list(dict.fromkeys(self._events)), self._handle)

    def close(self) -> None:
        """Stop recording and stop reading the watched pools: the gauges report nothing from
        now on (OpenTelemetry has no way to remove an instrument). Idempotent."""
        self.detach()
        self._pools.clear()

    def detach(self) -> None:
        """Stop recording. Spans still open are ended now. Idempotent."""
        _telemetry.detach(self._handler_id)
        with self._spans_lock:
            open_spans = list(self._spans.values())
            self._spans.clear()
        for span in open_spans:
            span.end()

    def watch(self, pool: Any) -> None:
        """Report `pool`'s idle, busy and queued gauges, read with `pool.status()` at each
        collection.

        Raises:
            InvalidOption: `pool` is not a pool handle.
            NoProc: `pool` is not running.
        """
        self._pools.add(pool)

    def unwatch(self, pool: Any) -> None:
        """Stop reporting `pool`'s gauges (idempotent)."""
        self._pools.remove(pool)

    # -- the handler --

    def _handle(
        self,
        event: _telemetry.Event,
        measurements: Mapping[str, float],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        for metric, labels, value in updates(event, measurements, metadata):
            attributes = dict(zip(metric.labels, labels, strict=True))
            if metric.kind == "counter":
                self._instruments[metric].add(value, attributes)
            else:
                self._instruments[metric].record(value, attributes)
        name = _SPAN_NAMES.get(event)
        if name is not None:
            self._open_span(name, measurements, metadata)
        elif event in _SPAN_ENDS:
            self._close_span(event, measurements, metadata)

    def _open_span(self, name: str, m: Mapping[str, float], md: Mapping[str, Any]) -> None:
        key = md.get(_telemetry.SPAN_CONTEXT)
        if not isinstance(key, int):
            return
        start = m.get("system_time")
        span = self._tracer.start_span(
            name,
            attributes=_attributes(md),
            start_time=None if start is None else int(start * 1e9),
        )
        with self._spans_lock:
            self._spans[key] = span
            if len(self._spans) > _OPEN_SPANS_LIMIT:  # starts whose end never came
                self._spans.popitem(last=False)

    def _close_span(
        self, event: _telemetry.Event, m: Mapping[str, float], md: Mapping[str, Any]
    ) -> None:
        from opentelemetry.trace import Status, StatusCode

        with self._spans_lock:
            span = self._spans.pop(md.get(_telemetry.SPAN_CONTEXT), None)  # type: ignore[arg-type]
        if span is None:
            return  # its start came before this exporter was attached
        span.set_attributes(_attributes(md))
        if event[-1] == "exception":
            kind = str(md.get("kind", "Exception"))
            reason = md.get("reason")
            span.set_attribute("error.type", kind)
            if isinstance(reason, BaseException):
                span.record_exception(reason)
            span.set_status(Status(StatusCode.ERROR, f"{kind}: {reason}"))
        span.end()

    # -- gauges --

    def _observer(self, read: Any) -> Any:
        from opentelemetry.metrics import Observation

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            found = []
            # One status() per pool for all four gauges of a collection.
            for sample in self._pools.shared_sample(read):
                value = read(sample)
                if value is not None:
                    found.append(Observation(value, {"pool": sample.pool}))
            return found

        return observe


def _attributes(md: Mapping[str, Any]) -> dict[str, str]:
    return {f"dspex.{key}": str(md[key]) for key in _ATTRIBUTES if md.get(key) is not None}


def _idle(sample: PoolSample) -> int:
    return sample.status.idle


def _busy(sample: PoolSample) -> int:
    return sample.status.busy


def _queued(sample: PoolSample) -> int:
    return sample.status.queued


def _sessions(sample: PoolSample) -> int | None:
    return sample.active_sessions
