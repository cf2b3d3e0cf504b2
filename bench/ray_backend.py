"""ProcessPool on the Ray backend against bare Ray actors, in one run on a local Ray instance.

Run: ``python bench/ray_backend.py`` (a minute or two) or ``python bench/ray_backend.py --quick``.
Needs the ``ray`` extra; starts its own local Ray instance (``num_cpus=2``) and shuts it down.

1. Sequential round trip of a trivial task (square a number), one caller:
   - baseline: ``ray.get(actor.square.remote(x))`` on a bare actor (the floor for "ask a Ray
     actor and get an answer");
   - `ProcessPool.call` with ``backend="ray"`` (checkout + one actor call + checkin).
   Target: ProcessPool.call / bare actor <= 1.2.
2. SIGKILL of a worker's process, then the time until a call is answered by another process:
   - baseline: Ray's own restart (an actor with ``max_restarts=1``; time until the restarted
     actor answers);
   - a Ray-backed `ProcessPool` of one worker (the pool removes the dead actor and starts a
     new one).
   Reported as ratio pool / Ray restart (no target: the pool starts a new actor, as Ray does).

Figures are medians of several rounds, measured interleaved in the same process.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time
from typing import Any

from _common import quiet_logs

import dspex_actors as da


class Squarer:
    """The bare actor of the baselines."""

    def square(self, x: int) -> int:
        return x * x

    def pid(self) -> int:
        return os.getpid()


def square(x: Any) -> Any:
    if x == "pid":
        return os.getpid()
    return x * x


def report(title: str, rows: list[tuple[str, list[float]]], unit: str, target: str) -> None:
    """Print the medians of the baseline (first row) and ours (second), and their ratio."""
    scale = {"us": 1e6, "ms": 1e3}[unit]
    (base_name, base), (our_name, ours) = ((name, statistics.median(xs)) for name, xs in rows)
    print(f"\n{title}")
    for name, value in ((base_name, base), (our_name, ours)):
        print(f"  {name:44} {value * scale:8.1f} {unit}")
    print(f"  ours / baseline = {ours / base:.2f}{target}")


def round_trip(op: Any, n: int) -> float:
    """Seconds per call, over `n` calls."""
    start = time.perf_counter()
    for i in range(n):
        op(i)
    return (time.perf_counter() - start) / n


def bench_round_trip(ray: Any, rounds: int, n: int) -> None:
    actor = ray.remote(Squarer).remote()
    pool = da.ProcessPool.start(target=square, pool_size=1, backend="ray")
    try:
        ray.get(actor.square.remote(1))
        pool.call(1, timeout=60)
        bare, ours = [], []
        for _ in range(rounds):
            bare.append(round_trip(lambda i: ray.get(actor.square.remote(i)), n))
            ours.append(round_trip(lambda i: pool.call(i, timeout=60), n))
    finally:
        pool.stop()
        ray.kill(actor)
    rows = [("ray.get(actor.square.remote(x))", bare), ("ProcessPool.call (backend=ray)", ours)]
    report("1. Sequential round trip, one caller", rows, "us", " (target <= 1.2)")


def answered_by_another(call: Any, pid: int) -> float:
    """SIGKILL `pid`; seconds until `call()` answers from another process."""
    start = time.perf_counter()
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            if call() != pid:
                return time.perf_counter() - start
        except Exception:  # the dead worker, until its death is known
            continue


def bench_kill(ray: Any, rounds: int) -> None:
    restartable = ray.remote(max_restarts=1, max_task_retries=0)(Squarer)
    pool = da.ProcessPool.start(target=square, pool_size=1, backend="ray")
    restart, replace = [], []
    try:
        for _ in range(rounds):
            actor = restartable.remote()  # a fresh one: one restart each
            pid = ray.get(actor.pid.remote())
            restart.append(answered_by_another(lambda a=actor: ray.get(a.pid.remote()), pid))
            ray.kill(actor)
            pid = pool.call("pid", timeout=60)
            replace.append(answered_by_another(lambda: pool.call("pid", timeout=60), pid))
    finally:
        pool.stop()
    rows = [
        ("Ray restart (max_restarts=1)", restart),
        ("ProcessPool replacement (backend=ray)", replace),
    ]
    report("2. SIGKILL of the worker's process: until another answers", rows, "ms", "")


def main() -> int:
    import ray

    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--rounds", type=int, help="rounds (default 7, or 3 with --quick)")
    parser.add_argument("--calls", type=int, help="calls per round (default 1000, 200)")
    opts = parser.parse_args()
    rounds, n = (3, 200) if opts.quick else (7, 1000)
    rounds, n = opts.rounds or rounds, opts.calls or n
    print(f"python {sys.version.split()[0]}, ray {ray.__version__}, rounds={rounds}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        bench_round_trip(ray, rounds, n)
        bench_kill(ray, max(2, rounds // 2))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
