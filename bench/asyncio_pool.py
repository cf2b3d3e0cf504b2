"""Awaited process-pool calls against the blocking call and against asyncio's usual way, in one
run.

Run: ``python bench/asyncio_pool.py`` (about a minute) or ``python bench/asyncio_pool.py --quick``.

1. Sequential round trip of a trivial task, one caller, everything pinned to one CPU (as
   ``bench/process_pool.py`` pins its comparison: unpinned, where the scheduler places the
   processes moves a round trip by more than what is measured):
   - ``ProcessPool.call`` from a plain thread (the baseline);
   - ``await pool.acall(...)`` from a coroutine (target <= 1.3x the baseline);
   - ``await loop.run_in_executor(ProcessPoolExecutor, ...)``, asyncio's usual way to run work
     in another process (target: acall >= 2x faster).
2. Event-loop lag under load: 8 tasks keep a pool of 2 workers busy with ``acall`` while a
   ticker task asks to run every millisecond; the ticker's worst and median delay, against the
   same ticker on an idle loop. A call that blocked the loop would show here as a lag as long
   as a round trip.

Figures are medians of several rounds, measured interleaved in the same process.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _common import quiet_logs

import dspex_actors as da


def square(n: int) -> int:
    return n * n


async def per_op(n: int, op: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        await op()
    return (time.perf_counter() - start) / n


def per_op_sync(n: int, op: Callable[[], Any]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        op()
    return (time.perf_counter() - start) / n


async def wait_ready(pool: da.ProcessPool, n: int) -> None:
    while (await pool.astatus()).idle < n:
        await asyncio.sleep(0.005)


async def bench_round_trip(rounds: int, n: int) -> None:
    loop = asyncio.get_running_loop()
    pool = da.ProcessPool.start(target=square, pool_size=1)
    executor = concurrent.futures.ProcessPoolExecutor(
        1, mp_context=multiprocessing.get_context("forkserver")
    )
    try:
        await wait_ready(pool, 1)
        ops: dict[str, Callable[[], Awaitable[float]]] = {
            "ProcessPool.call (blocking, baseline)": lambda: asyncio.to_thread(
                per_op_sync, n, lambda: pool.call(3, timeout=30)
            ),
            "await ProcessPool.acall": lambda: per_op(n, lambda: pool.acall(3, timeout=30)),
            "await run_in_executor(ProcessPoolExecutor)": lambda: per_op(
                n, lambda: loop.run_in_executor(executor, square, 3)
            ),
        }
        for op in ops.values():  # warm: workers up, code paths hot
            await op()
        times: dict[str, list[float]] = {name: [] for name in ops}
        names = list(ops)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(await ops[name]())
    finally:
        await pool.astop()
        executor.shutdown()
    med = {name: statistics.median(t) for name, t in times.items()}
    base = med["ProcessPool.call (blocking, baseline)"]
    ours = med["await ProcessPool.acall"]
    peer = med["await run_in_executor(ProcessPoolExecutor)"]
    print("\n1. Sequential round trip, one caller, pinned to one CPU")
    for name, t in med.items():
        print(f"  {name:44} {t * 1e6:8.1f} us")
    print(f"  acall / call = {ours / base:.2f} (target <= 1.3)")
    print(f"  run_in_executor(ProcessPoolExecutor) / acall = {peer / ours:.2f} (target >= 2)")


async def ticker(stop: asyncio.Event, lags: list[float], period: float = 0.001) -> None:
    """Ask to run every `period` seconds; record how late each wake-up was."""
    while not stop.is_set():
        due = time.perf_counter() + period
        await asyncio.sleep(period)
        lags.append(max(0.0, time.perf_counter() - due))


async def lag_once(load: bool, calls: int) -> list[float]:
    pool = da.ProcessPool.start(target=square, pool_size=2) if load else None
    stop = asyncio.Event()
    lags: list[float] = []
    try:
        if pool is not None:
            await wait_ready(pool, 2)
        tick = asyncio.create_task(ticker(stop, lags))
        if pool is not None:

            async def client() -> None:
                for i in range(calls):
                    await pool.acall(i, timeout=30)

            await asyncio.gather(*(client() for _ in range(8)))
        else:
            await asyncio.sleep(0.5)  # sleep-ok: the idle loop's own lag, for comparison
        stop.set()
        await tick
    finally:
        if pool is not None:
            await pool.astop()
    return lags


async def bench_lag(rounds: int, calls: int) -> None:
    idle = [await lag_once(False, calls) for _ in range(rounds)]
    busy = [await lag_once(True, calls) for _ in range(rounds)]

    def summary(samples: list[list[float]]) -> tuple[float, float]:
        return (
            statistics.median(statistics.median(s) for s in samples),
            statistics.median(max(s) for s in samples),
        )

    idle_med, idle_max = summary(idle)
    busy_med, busy_max = summary(busy)
    print("\n2. Event-loop lag (a ticker asking to run every 1 ms)")
    for label, med, worst in (
        ("idle loop", idle_med, idle_max),
        (f"8 tasks x {calls} acalls on 2 workers", busy_med, busy_max),
    ):
        print(f"  {label:36} median {med * 1e3:6.3f} ms, worst {worst * 1e3:6.2f} ms")


async def amain(rounds: int, n: int, calls: int) -> None:
    if hasattr(os, "sched_setaffinity"):
        everywhere = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(everywhere)})
        try:
            await bench_round_trip(rounds, n)
        finally:
            os.sched_setaffinity(0, everywhere)
    else:
        await bench_round_trip(rounds, n)
    await bench_lag(max(3, rounds // 2), calls)


def main() -> int:
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    opts = parser.parse_args()
    rounds, n, calls = (3, 200, 100) if opts.quick else (7, 1000, 500)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, rounds={rounds}")
    asyncio.run(amain(rounds, n, calls))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
