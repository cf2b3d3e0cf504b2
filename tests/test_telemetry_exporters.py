"""The exporters: `PrometheusExporter` and `OpenTelemetryExporter`, fed by real pools,
supervisors, ports and session pools, checked on what they really export.

Prometheus: the registry's text exposition (`generate_latest`), parsed back with
prometheus_client's own parser. OpenTelemetry: an `InMemoryMetricReader` for the metrics and an
`InMemorySpanExporter` for the spans. The gauges (idle, busy, queued) are read while workers
are held on a lease, so their values are pinned, and compared with `status()`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors import telemetry
from dspex_actors.testing import kill_and_wait, sync, wait_for

from support.lifecycle import ProcessPools
from support.logs import EventLog
from support.pools import WAIT, Pools, Waiter, hold, release, settled, wait_queued
from support.ports import STALL, Ports
from support.sessions import SessionPools, create_program, unique
from support.supervision import Crash, Probe, Supervisors, crash_and_settle, probe_spec, ref_of

prometheus_client = pytest.importorskip(
    "prometheus_client", reason="the prometheus extra (prometheus_client) is not installed"
)
otel_sdk = pytest.importorskip(
    "opentelemetry.sdk", reason="the otel extra (opentelemetry-sdk) is not installed"
)

from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode  # noqa: E402
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


class Resource(da.PoolWorker):
    """Worker n hands out n and is kept whatever it is checked in with."""

    def init_pool(self, init_arg: Any) -> da.Ok:
        return da.Ok(0)

    def init_worker(self, pool_state: Any) -> da.Ok:
        return da.Ok(pool_state + 1, pool_state + 1)

    def handle_checkout(self, command: Any, from_: da.From, ws: Any, ps: Any) -> da.Ok:
        return da.Ok(ws, ws, ps)


def keep(from_: da.From, n: Any) -> tuple[Any, Any]:
    return n, n


def double(request: Any) -> Any:
    if request == "boom":
        raise ValueError("no booms")
    return request * 2


# --- Prometheus --------------------------------------------------------------------------------


class Scrape:
    """One scrape of a registry: `value(name, **labels)` of a sample, as Prometheus reads it
    from the text exposition."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.text = generate_latest(registry).decode()
        self.samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(self.text)
            for s in family.samples
        }

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def prometheus() -> Iterator[telemetry.PrometheusExporter]:
    exporter = telemetry.PrometheusExporter(CollectorRegistry())
    exporter.attach()
    try:
        yield exporter
    finally:
        exporter.detach()
    assert telemetry.list_handlers() == []


def test_prometheus_counts_checkouts_and_checkins_and_times_them_in_histograms(
    prometheus: telemetry.PrometheusExporter, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=2)
    for _ in range(7):
        pool.checkout(None, keep)
    pool.checkout(None, lambda from_, n: (n, ("error", "bad")))
    scrape = Scrape(prometheus.registry)
    name = pool.name
    assert scrape.value("dspex_pool_checkouts_total", pool=name) == 8
    assert scrape.value("dspex_pool_checkins_total", pool=name, result="ok") == 7
    assert scrape.value("dspex_pool_checkins_total", pool=name, result="error") == 1
    assert scrape.value("dspex_pool_queue_wait_seconds_count", pool=name) == 8
    assert scrape.value("dspex_pool_queue_wait_seconds_bucket", pool=name, le="0.0005") == 8
    assert scrape.value("dspex_pool_hold_time_seconds_count", pool=name) == 8
    assert scrape.value("dspex_pool_workers_started_total", pool=name) == 2
    assert pool.status().checkouts == 8  # the pull side agrees


def test_prometheus_gauges_are_the_watched_pools_status_at_scrape_time(
    prometheus: telemetry.PrometheusExporter, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=2)
    prometheus.watch(pool)
    name = pool.name
    leases = [hold(pool), hold(pool)]
    waiter = Waiter(pool)
    wait_queued(pool, 1)
    scrape = Scrape(prometheus.registry)
    assert scrape.value("dspex_pool_idle_workers", pool=name) == 0
    assert scrape.value("dspex_pool_busy_workers", pool=name) == 2
    assert scrape.value("dspex_pool_queued_checkouts", pool=name) == 1
    for lease in leases:
        release(lease)
    assert waiter.join().error is None
    assert wait_for(lambda: settled(pool, 2), WAIT)
    scrape = Scrape(prometheus.registry)
    assert scrape.value("dspex_pool_idle_workers", pool=name) == 2
    assert scrape.value("dspex_pool_busy_workers", pool=name) == 0
    assert scrape.value("dspex_pool_queued_checkouts", pool=name) == 0
    assert scrape.value("dspex_pool_queue_wait_seconds_count", pool=name) == 3


def test_a_stopped_pools_gauges_disappear_and_watch_refuses_what_is_not_a_running_pool(
    prometheus: telemetry.PrometheusExporter, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=1)
    prometheus.watch(pool)
    assert Scrape(prometheus.registry).value("dspex_pool_idle_workers", pool=pool.name) == 1
    pool.stop()
    assert Scrape(prometheus.registry).value("dspex_pool_idle_workers", pool=pool.name) is None
    with pytest.raises(da.NoProc):
        prometheus.watch(pool)
    with pytest.raises(da.InvalidOption) as info:
        prometheus.watch("my_pool")
    assert info.value.option == "pool"
    prometheus.unwatch(pool)  # idempotent


def test_prometheus_counts_supervisor_restarts_and_port_exits_by_status(
    prometheus: telemetry.PrometheusExporter, sups: Supervisors, log: EventLog, ports: Ports
) -> None:
    sup = sups.start([Probe.child_spec("w", log, id="w")], name="prom_sup")
    crash_and_settle(sup, ref_of(sup, "w"), Crash("kaboom"))
    port = ports.open(STALL)
    port.kill()
    assert port.wait_exit(WAIT) == -9
    scrape = Scrape(prometheus.registry)
    assert scrape.value("dspex_supervisor_restarts_total", supervisor="prom_sup", child_id="w") == 1
    assert (
        scrape.value(
            "dspex_supervisor_child_exits_total", supervisor="prom_sup", reason="RuntimeError"
        )
        == 1
    )
    assert scrape.value("dspex_port_exits_total", program=port_program(scrape), status="-9") == 1


def port_program(scrape: Scrape) -> str:
    [program] = {
        dict(labels)["program"]
        for name, labels in scrape.samples
        if name == "dspex_port_exits_total"
    }
    return program


@pytest.mark.leak_check
def test_prometheus_counts_process_pool_requests_by_outcome(
    prometheus: telemetry.PrometheusExporter, process_pools: ProcessPools
) -> None:
    pool = process_pools.start(target=double, pool_size=1)
    for n in range(3):
        assert pool.call(n, timeout=30) == n * 2
    with pytest.raises(da.RemoteError):
        pool.call("boom", timeout=30)
    scrape = Scrape(prometheus.registry)
    name = pool.name
    assert scrape.value("dspex_process_pool_requests_total", pool=name, outcome="ok") == 3
    assert scrape.value("dspex_process_pool_requests_total", pool=name, outcome="RemoteError") == 1
    assert scrape.value("dspex_process_pool_request_duration_seconds_count", pool=name) == 4
    assert scrape.value("dspex_pool_checkouts_total", pool=name) == 4


@pytest.mark.leak_check
def test_prometheus_counts_bridge_commands_affinity_and_live_sessions(
    prometheus: telemetry.PrometheusExporter, spools: SessionPools
) -> None:
    pool = spools.compat(pool_size=1, name="prom_bridge")
    prometheus.watch(pool)
    sid = unique()
    create_program(pool, sid, "p")
    pool.execute_in_session(sid, "list_programs")
    with pytest.raises(da.bridge.CommandError):
        pool.execute_anonymous("no_such_command")
    scrape = Scrape(prometheus.registry)
    status = pool.status()
    labels = {"pool": "prom_bridge"}
    assert (
        scrape.value(
            "dspex_bridge_commands_total", command="create_program", outcome="ok", **labels
        )
        == 1
    )
    assert (
        scrape.value(
            "dspex_bridge_commands_total",
            command="no_such_command",
            outcome="CommandError",
            **labels,
        )
        == 1
    )
    assert scrape.value("dspex_bridge_affinity_hits_total", **labels) == status.affinity_hits == 1
    assert scrape.value("dspex_bridge_active_sessions", **labels) == status.active_sessions == 1
    assert scrape.value("dspex_pool_idle_workers", **labels) == status.pool.idle == 1


def test_a_detached_prometheus_exporter_stops_counting_and_keeps_its_values(
    pools: Pools,
) -> None:
    exporter = telemetry.PrometheusExporter(CollectorRegistry())
    exporter.attach()
    exporter.attach()  # idempotent
    pool = pools.start(Resource, pool_size=1)
    pool.checkout(None, keep)
    exporter.detach()
    pool.checkout(None, keep)
    assert telemetry.list_handlers() == []
    assert Scrape(exporter.registry).value("dspex_pool_checkouts_total", pool=pool.name) == 1


def test_the_prometheus_exporter_without_prometheus_client_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"pip install 'dspex-actors\[prometheus\]'"):
        telemetry.PrometheusExporter(CollectorRegistry())


# --- OpenTelemetry -----------------------------------------------------------------------------


class Otel:
    """An `OpenTelemetryExporter` on in-memory SDK providers."""

    def __init__(self) -> None:
        self.reader = InMemoryMetricReader()
        self.meters = MeterProvider(metric_readers=[self.reader])
        self.spans = InMemorySpanExporter()
        self.tracers = TracerProvider()
        self.tracers.add_span_processor(SimpleSpanProcessor(self.spans))
        self.exporter = telemetry.OpenTelemetryExporter(self.meters, self.tracers)

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The data points of metric `name` by their attributes (sum for a counter, the value
        of a gauge, the data point itself for a histogram)."""
        found: dict[tuple[tuple[str, Any], ...], Any] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != name:
                        continue
                    for point in metric.data.data_points:
                        key = tuple(sorted((point.attributes or {}).items()))
                        found[key] = getattr(point, "value", point)
        return found

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def close(self) -> None:
        self.exporter.detach()
        self.meters.shutdown()
        self.tracers.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    o = Otel()
    o.exporter.attach()
    try:
        yield o
    finally:
        o.close()
    assert telemetry.list_handlers() == []


def test_otel_counts_checkouts_and_records_queue_waits(otel: Otel, pools: Pools) -> None:
    pool = pools.start(Resource, pool_size=1)
    for _ in range(5):
        pool.checkout(None, keep)
    key = (("pool", pool.name),)
    assert otel.points("dspex.pool.checkouts") == {key: 5}
    assert otel.points("dspex.pool.checkins")[(("pool", pool.name), ("result", "ok"))] == 5
    histogram = otel.points("dspex.pool.queue_wait")[key]
    assert histogram.count == 5
    assert list(histogram.explicit_bounds)[:2] == [0.0005, 0.001]


def test_otel_gauges_are_the_watched_pools_status_at_collection(otel: Otel, pools: Pools) -> None:
    pool = pools.start(Resource, pool_size=2)
    otel.exporter.watch(pool)
    key = (("pool", pool.name),)
    leases = [hold(pool), hold(pool)]
    waiter = Waiter(pool)
    wait_queued(pool, 1)
    assert otel.points("dspex.pool.idle_workers") == {key: 0}
    assert otel.points("dspex.pool.busy_workers") == {key: 2}
    assert otel.points("dspex.pool.queued_checkouts") == {key: 1}
    for lease in leases:
        release(lease)
    assert waiter.join().error is None
    assert wait_for(lambda: settled(pool, 2), WAIT)
    assert otel.points("dspex.pool.idle_workers") == {key: 2}
    assert otel.points("dspex.pool.busy_workers") == {key: 0}


@pytest.mark.leak_check
def test_otel_traces_process_pool_calls_as_spans_and_marks_failures(
    otel: Otel, process_pools: ProcessPools
) -> None:
    pool = process_pools.start(target=double, pool_size=1, name="otel_pp")
    assert pool.call(21, timeout=30) == 42
    with pytest.raises(da.RemoteError):
        pool.call("boom", timeout=30)
    with pool.lease(None, timeout=WAIT) as lease:
        worker = str(lease.client_state)
    ok, failed = otel.finished()
    assert ok.name == failed.name == "dspex.process_pool.request"
    assert ok.attributes == {"dspex.pool": "otel_pp", "dspex.worker": worker}
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "RemoteError"
    assert [e.name for e in failed.events] == ["exception"]
    assert ok.start_time is not None
    assert ok.end_time is not None
    assert ok.start_time <= ok.end_time
    requests = otel.points("dspex.process_pool.requests")
    assert requests == {
        (("outcome", "ok"), ("pool", "otel_pp")): 1,
        (("outcome", "RemoteError"), ("pool", "otel_pp")): 1,
    }


@pytest.mark.leak_check
def test_otel_traces_bridge_commands_with_their_session(otel: Otel, spools: SessionPools) -> None:
    pool = spools.compat(pool_size=1, name="otel_bridge")
    sid = unique()
    create_program(pool, sid, "p")
    [span] = otel.finished()
    assert span.name == "dspex.bridge.command"
    assert span.attributes is not None
    assert span.attributes["dspex.command"] == "create_program"
    assert span.attributes["dspex.session_id"] == sid
    assert span.attributes["dspex.pool"] == "otel_bridge"


def test_otel_detach_stops_recording(otel: Otel, pools: Pools) -> None:
    pool = pools.start(Resource, pool_size=1)
    pool.checkout(None, keep)
    otel.exporter.detach()
    pool.checkout(None, keep)
    assert otel.points("dspex.pool.checkouts") == {(("pool", pool.name),): 1}


# --- labels that stay few, and exporters that end ------------------------------------------


def test_a_supervised_pool_keeps_its_registered_name_as_label_and_its_gauges_across_restarts(
    prometheus: telemetry.PrometheusExporter, sups: Supervisors
) -> None:
    name = unique("db")
    sup = sups.start([da.Pool.child_spec(Resource, pool_size=2, id="db", name=name)])
    first = da.Pool.from_ref(ref_of(sup, "db"))
    assert first.name == name  # the name its supervisor registers it under
    prometheus.watch(first)
    assert Scrape(prometheus.registry).value("dspex_pool_idle_workers", pool=name) == 2
    kill_and_wait(first.actor_ref)
    sync(sup.actor_ref)
    second = da.Pool.from_ref(ref_of(sup, "db"))
    assert second.actor_ref != first.actor_ref
    assert second.name == name
    # The next incarnation is read under the same name, with the same series.
    assert Scrape(prometheus.registry).value("dspex_pool_idle_workers", pool=name) == 2
    started = [
        (labels, value)
        for (metric, labels), value in Scrape(prometheus.registry).samples.items()
        if metric == "dspex_pool_workers_started_total"
    ]
    assert started == [((("pool", name),), 4.0)]


def test_a_nested_supervisor_is_labelled_by_the_name_its_parent_registers(
    sups: Supervisors, log: EventLog
) -> None:
    seen: list[Any] = []
    telemetry.attach(
        "nested",
        [telemetry.SUPERVISOR_CHILD_STARTED],
        lambda event, m, md, config: seen.append(md["supervisor"]),
    )
    try:
        name = unique("inner")
        inner = da.Supervisor.child_spec("inner", [probe_spec("worker", log)], name=name)
        sup = sups.start([inner])
        inner_ref = ref_of(sup, "inner")
        kill_and_wait(inner_ref)
        sync(sup.actor_ref)
        assert ref_of(sup, "inner") != inner_ref
    finally:
        telemetry.detach("nested")
    # Each incarnation of the inner supervisor reports its child under the same label.
    assert seen.count(name) == 2


def checked_in_with(state: Any, from_: da.From, w: Any) -> tuple[Any, Any]:
    return w, state


class Retiring(Resource):
    """Removed at every checkin, with a reason that is free text."""

    def handle_checkin(self, cs: Any, from_: da.From, ws: Any, ps: Any) -> da.Remove:
        return da.Remove(f"retired after request #{cs}", ps)


def test_free_text_reasons_share_one_other_label(
    prometheus: telemetry.PrometheusExporter, pools: Pools
) -> None:
    pool = pools.start(Retiring, pool_size=1)
    for n in range(4):
        pool.checkout(None, functools.partial(checked_in_with, n))
    assert wait_for(lambda: pool.status().workers_removed == 4, WAIT)
    removed = {
        labels: value
        for (metric, labels), value in Scrape(prometheus.registry).samples.items()
        if metric == "dspex_pool_workers_removed_total"
    }
    assert removed == {(("pool", pool.name), ("reason", "other")): 4}
    assert telemetry.reason_label("closed") == "closed"
    assert telemetry.reason_label(("port_exited", -9)) == "port_exited"


def test_a_closed_prometheus_exporter_leaves_its_registry_and_reads_no_pool(
    pools: Pools,
) -> None:
    registry = CollectorRegistry()
    exporter = telemetry.PrometheusExporter(registry)
    exporter.attach()
    pool = pools.start(Resource, pool_size=1)
    exporter.watch(pool)
    calls = count_status_calls(pool)
    assert "dspex_pool_idle_workers" in Scrape(registry).text
    assert calls == [1]
    exporter.close()
    exporter.close()  # idempotent
    assert telemetry.list_handlers() == []
    assert "dspex_" not in Scrape(registry).text
    assert calls == [1]  # the scrape after close read no pool
    again = telemetry.PrometheusExporter(registry)  # the names are free again
    again.close()


def test_otel_reads_each_pool_once_per_collection_and_nothing_once_closed(
    otel: Otel, pools: Pools
) -> None:
    pool = pools.start(Resource, pool_size=1)
    otel.exporter.watch(pool)
    calls = count_status_calls(pool)
    key = (("pool", pool.name),)
    assert otel.points("dspex.pool.idle_workers") == {key: 1}
    assert calls == [1]  # one status() for the four gauges of that collection
    assert otel.points("dspex.pool.busy_workers") == {key: 0}
    assert calls == [2]
    otel.exporter.close()
    assert otel.points("dspex.pool.idle_workers") == {}
    assert calls == [2]


def count_status_calls(pool: da.Pool) -> list[int]:
    """Count `pool.status` calls made through this handle (what an exporter watches)."""
    calls = [0]
    status = pool.status

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return status(*args, **kwargs)

    pool.status = counted  # type: ignore[method-assign]
    return calls
