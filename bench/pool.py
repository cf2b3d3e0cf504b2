"""Pool speed: what a checkout costs next to the one actor hop it needs, and throughput.

Run: ``python bench/pool.py`` (about 30 s) or ``python bench/pool.py --quick``.

1. Uncontended round trip: one thread doing ``pool.checkout(cmd, fn)`` (checkout, run `fn`,
   asynchronous checkin) against a bare pykka ``ask`` to an actor that answers at once, in the
   same run, interleaved, so machine noise hits both. Target: ratio <= 1.2.
2. Throughput: 8 client threads sharing a pool of 4, against the floor of pooling on a
   `queue.Queue` (``get`` a resource, use it, ``put`` it back: no actor, no callbacks).
3. Telemetry: the uncontended checkout with no telemetry handler attached (what every
   checkout pays for telemetry then: one flag test) against the same checkout with a no-op
   handler attached to every event (a span's start and stop, and the checkin), interleaved.

Every figure is the median of several rounds; ratios are medians of per-round ratios.

The process is pinned to one CPU (``--no-pin`` to opt out, e.g. where affinity cannot be set).
Python threads take turns on one GIL anyway, and on a multi-core box each actor thread's wake-up
cost depends on which core the scheduler put it on: a round trip takes ~13 us or ~80 us at
random, per thread, which would make the ratio a coin toss rather than a measurement.
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import time
from collections.abc import Callable
from typing import Any

import pykka
from _common import ops_per_second, quiet_logs

import dspex_actors as da
from dspex_actors import telemetry


class Echo(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


class Resource(da.PoolWorker):
    def init_worker(self, pool_state: Any) -> da.Ok:
        return da.Ok(object(), pool_state)

    def handle_checkout(self, command: Any, from_: da.From, ws: Any, ps: Any) -> da.Ok:
        return da.Ok(ws, ws, ps)


def use(from_: da.From, resource: Any) -> tuple[Any, Any]:
    return resource, resource


def per_op(n: int, op: Callable[[], Any]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        op()
    return (time.perf_counter() - start) / n


def interleaved(
    rounds: int, baseline: Callable[[], float], measured: Callable[[], float]
) -> tuple[float, float, float]:
    """Time `baseline` and `measured` in turns, `rounds` times: their medians, and the median
    of the per-round ratios measured / baseline."""
    bases, values, ratios = [], [], []
    for _ in range(rounds):
        b = baseline()
        m = measured()
        bases.append(b)
        values.append(m)
        ratios.append(m / b)
    return statistics.median(bases), statistics.median(values), statistics.median(ratios)


def round_trip(rounds: int, n: int) -> tuple[float, float, float]:
    echo = Echo.start()
    pool = da.Pool.start(Resource, pool_size=1)
    try:
        for _ in range(500):  # warm up both paths
            echo.ask(1)
            pool.checkout(None, use)
        return interleaved(
            rounds,
            lambda: per_op(n, lambda: echo.ask(1)),
            lambda: per_op(n, lambda: pool.checkout(None, use)),
        )
    finally:
        echo.stop()
        pool.stop()


def throughput(rounds: int, per_client: int) -> tuple[float, float, float]:
    pool = da.Pool.start(Resource, pool_size=4)
    resources: queue.Queue[object] = queue.Queue()
    for _ in range(4):
        resources.put(object())

    def queue_checkout() -> Any:
        resource = resources.get(timeout=5)
        try:
            return resource
        finally:
            resources.put(resource)

    try:
        pools, queues, ratios = [], [], []
        for _ in range(rounds):
            p = ops_per_second(8, per_client, lambda: pool.checkout(None, use))
            q = ops_per_second(8, per_client, queue_checkout)
            pools.append(p)
            queues.append(q)
            ratios.append(q / p)
        return statistics.median(pools), statistics.median(queues), statistics.median(ratios)
    finally:
        pool.stop()


def noop(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
    pass


def telemetry_cost(rounds: int, n: int) -> tuple[float, float, float]:
    """A checkout with a no-op handler on every event, the same with nothing attached, and
    the ratio nothing / attached."""
    pool = da.Pool.start(Resource, pool_size=1)

    def observed() -> float:
        telemetry.attach("bench.noop", [()], noop, prefix=True)
        try:
            return per_op(n, lambda: pool.checkout(None, use))
        finally:
            telemetry.detach("bench.noop")

    try:
        for _ in range(500):
            pool.checkout(None, use)
        return interleaved(rounds, observed, lambda: per_op(n, lambda: pool.checkout(None, use)))
    finally:
        pool.stop()


def main() -> int:
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to one CPU")
    args = parser.parse_args()
    pinned = "not pinned"
    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})  # before any thread starts: they all inherit it
        pinned = f"pinned to CPU {cpu}"
    print(f"bench/pool.py ({pinned})")
    rounds, n, per_client = (5, 2000, 500) if args.quick else (15, 10000, 4000)

    ask, checkout, ratio = round_trip(rounds, n)
    print(f"uncontended round trip (median of {rounds} rounds x {n} ops)")
    print(f"  pykka ask (baseline)        {ask * 1e6:8.1f} us")
    print(f"  pool checkout + checkin     {checkout * 1e6:8.1f} us")
    print(f"  ratio checkout / ask        {ratio:8.2f}   (target <= 1.2)")

    pool_ops, queue_ops, slower = throughput(rounds, per_client)
    print(f"throughput, 8 threads on 4 workers (median of {rounds} rounds)")
    print(f"  queue.Queue pooling (floor) {queue_ops:10.0f} ops/s")
    print(f"  Pool                        {pool_ops:10.0f} ops/s")
    print(f"  ratio queue / Pool          {slower:8.2f}")

    observed, quiet, ratio = telemetry_cost(rounds, n)
    print(f"telemetry, uncontended checkout + checkin (median of {rounds} rounds x {n} ops)")
    print(f"  nothing attached            {quiet * 1e6:8.1f} us")
    print(f"  a no-op handler attached    {observed * 1e6:8.1f} us   (to every event)")
    print(f"  ratio nothing / attached    {ratio:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
