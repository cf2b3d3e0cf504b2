"""Naming speed: `whereis`, `Registry.lookup`, and register+lookup from 8 threads.

Each figure is printed next to two baselines measured in the same run, on the same machine:

- a plain ``dict`` behind a ``threading.Lock`` (the floor: what any thread-safe table costs);
- a pykka ``ask`` to an actor that owns a dict (what a registry served through an actor's inbox,
  one message per call, would cost).

Usage: ``python bench/registry.py`` (a few seconds) or ``python bench/registry.py --quick``.
Latencies are the median over batches of the mean time per call; throughput is calls per second
of all 8 threads together (median of several runs).
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
from _common import quiet_logs

import dspex_actors as da

THREADS = 8


class DictActor(pykka.ThreadingActor):
    """The pykka baseline: a dict served one message at a time."""

    def __init__(self) -> None:
        super().__init__()
        self.table: dict[Any, Any] = {}

    def on_receive(self, message: Any) -> Any:
        op, key, value = message
        if op == "put":
            self.table[key] = value
            return None
        return self.table.get(key)


class Idle(da.Actor):
    """A registrable actor that does nothing."""


class LockedDict:
    """The floor baseline."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.table: dict[Any, Any] = {}

    def put(self, key: Any, value: Any) -> None:
        with self.lock:
            self.table[key] = value

    def get(self, key: Any) -> Any:
        with self.lock:
            return self.table.get(key)


def latency(fn: Callable[[], Any], batch: int, batches: int) -> float:
    """Median over `batches` of the mean seconds per call in a batch of `batch` calls."""
    means = []
    for _ in range(batches):
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        means.append((time.perf_counter() - start) / batch)
    return statistics.median(means)


Work = Callable[[Any, int], None]


def throughput(work: Work, per_thread: int, runs: int) -> float:
    """Median calls/second of `THREADS` threads each running `work(prefix, per_thread)`.

    `work` does `per_thread` register+lookup pairs under keys starting with its own `prefix`
    (new in every run, so no run sees another's keys); each pair counts as two calls.
    """
    rates = []
    for run in range(runs):
        barrier = threading.Barrier(THREADS + 1)

        def body(t: int, run: int = run, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            work((id(work), run, t), per_thread)

        threads = [threading.Thread(target=body, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        rates.append(2 * THREADS * per_thread / elapsed)
    return statistics.median(rates)


def fmt_latency(seconds: float) -> str:
    return f"{seconds * 1e6:8.2f} us"


def report(title: str, ours: float, floor: float, actor: float, unit: str) -> None:
    if unit == "latency":
        print(f"{title:<34} {fmt_latency(ours)}")
        print(f"{'  dict + lock':<34} {fmt_latency(floor)}   ours / dict  = {ours / floor:6.2f}x")
        print(f"{'  pykka ask':<34} {fmt_latency(actor)}   ours / ask   = {ours / actor:6.3f}x")
    else:
        print(f"{title:<34} {ours:12,.0f} calls/s")
        print(f"{'  dict + lock':<34} {floor:12,.0f} calls/s   ours / dict = {ours / floor:6.3f}x")
        print(f"{'  pykka ask':<34} {actor:12,.0f} calls/s   ours / ask  = {ours / actor:6.2f}x")


def main() -> int:
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    args = parser.parse_args()
    batch, batches = (200, 7) if args.quick else (5000, 21)
    per_thread, runs = (200, 3) if args.quick else (5000, 7)
    ask_per_thread = max(per_thread // 10, 20)  # an ask is ~100x slower: keep the run short

    target = Idle.start()
    dict_actor = DictActor.start()
    registry = da.Registry.start(da.Keys.UNIQUE)
    floor = LockedDict()
    try:
        da.register("bench.target", target)
        registry.register("bench.target", target)
        floor.put("bench.target", target)
        dict_actor.ask(("put", "bench.target", target))

        def ask_get() -> Any:
            return dict_actor.ask(("get", "bench.target", None))

        dict_get = latency(lambda: floor.get("bench.target"), batch, batches)
        ask_latency = latency(ask_get, max(batch // 10, 20), batches)
        print(f"{THREADS} threads for throughput; {'quick' if args.quick else 'full'} run\n")
        report(
            "whereis(name)",
            latency(lambda: da.whereis("bench.target"), batch, batches),
            dict_get,
            ask_latency,
            "latency",
        )
        report(
            "Registry.lookup(key)",
            latency(lambda: registry.lookup("bench.target"), batch, batches),
            dict_get,
            ask_latency,
            "latency",
        )

        # Throughput: every thread registers its own keys for one actor, then looks each up.
        dup = da.Registry.start(da.Keys.DUPLICATE)

        def registry_work(prefix: Any, n: int) -> None:
            for i in range(n):
                dup.register((prefix, i), target, i)
                dup.lookup((prefix, i))

        def dict_work(prefix: Any, n: int) -> None:
            for i in range(n):
                floor.put((prefix, i), target)
                floor.get((prefix, i))

        def ask_work(prefix: Any, n: int) -> None:
            for i in range(n):
                dict_actor.ask(("put", (prefix, i), target))
                dict_actor.ask(("get", (prefix, i), None))

        try:
            ours = throughput(registry_work, per_thread, runs)
            base = throughput(dict_work, per_thread, runs)
            actor = throughput(ask_work, ask_per_thread, runs)
        finally:
            dup.stop()
        print()
        report("register+lookup, 8 threads", ours, base, actor, "throughput")
    finally:
        registry.stop()
        dict_actor.stop()
        target.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
