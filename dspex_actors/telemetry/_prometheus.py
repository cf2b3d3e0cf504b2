"""`PrometheusExporter`: dspex_actors' telemetry events as Prometheus metrics.

Needs the ``prometheus`` extra (``pip install 'dspex-actors[prometheus]'``, which installs
``prometheus_client``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .. import _telemetry
from ._metrics import LATENCY_BUCKETS, METRIC_EVENTS, METRICS, Metric, PoolWatch, updates

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric as PromMetric

__all__ = ["PrometheusExporter"]

_MISSING = (
    "PrometheusExporter needs prometheus_client: install the 'prometheus' extra, "
    "pip install 'dspex-actors[prometheus]'"
)


class PrometheusExporter:
    """Counts and times dspex_actors' events as Prometheus metrics in `registry`.

    Counters and histograms are fed by the telemetry events once `attach` is called (see the
    telemetry guide for the full list: ``dspex_pool_checkouts_total{pool}``,
    ``dspex_pool_queue_wait_seconds{pool}``, ``dspex_supervisor_restarts_total{supervisor,
    child_id}``, ``dspex_port_exits_total{program,status}``...).

    The per-pool gauges ``dspex_pool_idle_workers``, ``dspex_pool_busy_workers`` and
    ``dspex_pool_queued_checkouts`` (and ``dspex_bridge_active_sessions`` for a
    `SessionPool`) are read at scrape time from the pools given to `watch`, with one
    `status()` call per pool: they are `status()`, so the pull side and the push side cannot
    disagree. A stopped pool's gauges disappear at the next scrape.

    The metrics are registered in `registry` when the exporter is made (one exporter per
    registry and namespace); `detach` stops the counting and keeps the values; `close` also
    stops reading the pools and takes the metrics out of the registry.

    Example:
        >>> from prometheus_client import CollectorRegistry, generate_latest
        >>> registry = CollectorRegistry()
        >>> exporter = PrometheusExporter(registry)
        >>> exporter.attach()
        >>> # ... run supervisors, pools, ports ...
        >>> b"dspex_supervisor_restarts_total" in generate_latest(registry)
        True
        >>> exporter.detach()

    Args:
        registry: where the metrics live (default: prometheus_client's global ``REGISTRY``).
        namespace: the metric name prefix.
        status_timeout: seconds a scrape waits for each watched pool's `status()`; a pool
            that does not answer in time is left out of that scrape.

    Raises:
        ImportError: prometheus_client is not installed.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "dspex",
        *,
        status_timeout: float = 1.0,
    ) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        self.registry: CollectorRegistry = prom.REGISTRY if registry is None else registry
        self.namespace = namespace
        self._handler_id = f"dspex_actors.telemetry.PrometheusExporter#{id(self):x}"
        self._instruments: dict[Metric, Any] = {}
        for metric in METRICS:
            if metric.kind == "counter":
                self._instruments[metric] = prom.Counter(
                    metric.name,
                    metric.description,
                    metric.labels,
                    namespace=namespace,
                    subsystem=metric.subsystem,
                    registry=self.registry,
                )
            else:
                self._instruments[metric] = prom.Histogram(
                    metric.name,
                    metric.description,
                    metric.labels,
                    namespace=namespace,
                    subsystem=metric.subsystem,
                    unit="seconds",
                    buckets=LATENCY_BUCKETS,
                    registry=self.registry,
                )
        self._pools = PoolWatch(status_timeout)
        self._collector = _PoolCollector(self._pools, namespace)
        self.registry.register(self._collector)

    def attach(self) -> None:
        """Start counting: attach this exporter's telemetry handler (idempotent)."""
        if any(h.id == self._handler_id for h in _telemetry.list_handlers()):
            return
        _telemetry.attach(self._handler_id, list(METRIC_EVENTS), self._handle)

    def detach(self) -> None:
        """Stop counting (the values so far stay in the registry). Idempotent."""
        _telemetry.detach(self._handler_id)

    def close(self) -> None:
        """Stop counting, stop reading the watched pools, and take this exporter's metrics
        out of its registry (another exporter may then register there). Idempotent."""
        self.detach()
        self._pools.clear()
        collectors = [self._collector, *self._instruments.values()]
        self._instruments = {}
        for collector in collectors:
            with contextlib.suppress(KeyError):  # unregistered already
                self.registry.unregister(collector)

    def watch(self, pool: Any) -> None:
        """Report `pool`'s idle, busy and queued gauges (a `Pool`, `ProcessPool` or
        `SessionPool`), read with `pool.status()` at each scrape.

        Raises:
            InvalidOption: `pool` is not a pool handle.
            NoProc: `pool` is not running.
        """
        self._pools.add(pool)

    def unwatch(self, pool: Any) -> None:
        """Stop reporting `pool`'s gauges (idempotent)."""
        self._pools.remove(pool)

    def _handle(
        self,
        event: _telemetry.Event,
        measurements: Mapping[str, float],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        for metric, labels, value in updates(event, measurements, metadata):
            child = self._instruments[metric].labels(*labels)
            if metric.kind == "counter":
                child.inc(value)
            else:
                child.observe(value)


class _PoolCollector:
    """The per-pool gauges, read from the watched pools at each scrape."""

    def __init__(self, pools: PoolWatch, namespace: str) -> None:
        self._pools = pools
        self._prefix = f"{namespace}_" if namespace else ""

    def _families(self) -> dict[str, Any]:
        from prometheus_client.core import GaugeMetricFamily

        p = self._prefix
        return {
            "idle": GaugeMetricFamily(
                f"{p}pool_idle_workers", "Workers waiting in the idle queue.", labels=["pool"]
            ),
            "busy": GaugeMetricFamily(
                f"{p}pool_busy_workers", "Workers checked out.", labels=["pool"]
            ),
            "queued": GaugeMetricFamily(
                f"{p}pool_queued_checkouts", "Checkouts waiting for a worker.", labels=["pool"]
            ),
            "sessions": GaugeMetricFamily(
                f"{p}bridge_active_sessions",
                "Named sessions alive in a SessionPool.",
                labels=["pool"],
            ),
        }

    def describe(self) -> Iterator[PromMetric]:
        # Names only: without this, registering the collector would call collect() (and so
        # every watched pool's status()) to learn them.
        yield from self._families().values()

    def collect(self) -> Iterator[PromMetric]:
        families = self._families()
        for sample in self._pools.sample():
            labels = [sample.pool]
            families["idle"].add_metric(labels, sample.status.idle)
            families["busy"].add_metric(labels, sample.status.busy)
            families["queued"].add_metric(labels, sample.status.queued)
            if sample.active_sessions is not None:
                families["sessions"].add_metric(labels, sample.active_sessions)
        yield from families.values()
