"""Telemetry: a handler of your own, and a pool's metrics exported to Prometheus.

Run it: ``python examples/telemetry_prometheus.py`` (needs the ``prometheus`` extra:
``pip install 'dspex-actors[prometheus]'``). Four client threads share a pool of two
"connections". A handler attached to `POOL_CHECKOUT_STOP` collects how long each checkout
waited in the queue; a `PrometheusExporter` counts the same events and reads the pool's idle,
busy and queued gauges from ``status()`` at each scrape. The scrape's ``dspex_pool_`` lines are
printed, as Prometheus would read them from ``/metrics``.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from dspex_actors import From, Ok, Pool, PoolWorker, telemetry


class Connection(PoolWorker):
    """A stand-in for a database connection: worker n is the string ``"conn-n"``."""

    def init_pool(self, init_arg: Any) -> Ok:
        return Ok(0)

    def init_worker(self, pool_state: Any) -> Ok:
        return Ok(f"conn-{pool_state + 1}", pool_state + 1)

    def handle_checkout(self, command: Any, from_: From, conn: Any, pool_state: Any) -> Ok:
        return Ok(conn, conn, pool_state)


def query(from_: From, conn: str) -> tuple[str, str]:
    time.sleep(0.001)  # sleep-ok: the query's round trip to the database
    return conn, conn


def main() -> int:
    registry = CollectorRegistry()  # in a service: the default registry, served on /metrics
    exporter = telemetry.PrometheusExporter(registry)
    exporter.attach()
    waits: list[float] = []

    def on_checkout(
        event: telemetry.Event,
        measurements: Mapping[str, float],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        if metadata["pool"] == "example_db":
            waits.append(measurements["queue_wait"])

    telemetry.attach("example.queue_waits", [telemetry.POOL_CHECKOUT_STOP], on_checkout)
    pool = Pool.start(Connection, pool_size=2, name="example_db")
    exporter.watch(pool)
    try:
        clients = [
            threading.Thread(target=lambda: [pool.checkout("select", query) for _ in range(10)])
            for _ in range(4)
        ]
        for client in clients:
            client.start()
        for client in clients:
            client.join()
        print(
            f"{len(waits)} checkouts; {sum(1 for w in waits if w > 0)} waited in the queue, "
            f"median wait {statistics.median(waits) * 1000:.2f} ms"
        )
        for line in generate_latest(registry).decode().splitlines():
            name = line.split("{")[0]
            counted = name.endswith(("_total", "_count", "_workers", "_checkouts"))
            if counted and name.startswith("dspex_pool_") and 'pool="example_db"' in line:
                print(line)
    finally:
        telemetry.detach("example.queue_waits")
        pool.stop()
        exporter.detach()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
