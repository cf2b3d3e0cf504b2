"""Crash -> replacement answering an ask, against "start a fresh pykka actor and ask it".

    python bench/supervisor_restart.py [--quick] [--rounds N]

Both are measured in the same run, on the same machine, interleaved, and printed as medians
(microseconds) and a ratio. The ratio is what matters: machines differ, and these are shared.
The supervised path does strictly more (detect the exit, restart-intensity bookkeeping, start,
link, wait for on_start); the target is a ratio <= 2.0.
"""

from __future__ import annotations

import argparse
import queue
import statistics
import time
from typing import Any

import pykka

import dspex_actors as da


class PlainPing(pykka.ThreadingActor):
    def on_receive(self, message: Any) -> Any:
        return message


class Ping(da.Actor):
    """Announces each new instance on a queue, so the client learns of a replacement at once."""

    def __init__(self, announce: queue.SimpleQueue[pykka.ActorRef[Any]]) -> None:
        super().__init__()
        self.announce = announce

    def on_start(self) -> None:
        self.announce.put(self.actor_ref)

    def on_receive(self, message: Any) -> Any:
        if message == "crash":
            raise RuntimeError("crash")
        return message


def fresh_actor_round() -> float:
    start = time.perf_counter()
    ref = PlainPing.start()
    ref.ask("ping")
    elapsed = time.perf_counter() - start
    ref.stop()
    return elapsed


def restart_round(
    old: pykka.ActorRef[Any], announce: queue.SimpleQueue[pykka.ActorRef[Any]]
) -> tuple[float, pykka.ActorRef[Any]]:
    start = time.perf_counter()
    old.tell("crash")
    new = announce.get(timeout=5)  # the replacement, from its on_start
    new.ask("ping")
    elapsed = time.perf_counter() - start
    assert new is not old
    return elapsed, new


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (200 rounds)")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args(argv)
    rounds = args.rounds or (200 if args.quick else 2000)
    # Intensity high enough that the benchmark's own crashes never make the supervisor give up.
    announce: queue.SimpleQueue[pykka.ActorRef[Any]] = queue.SimpleQueue()
    sup = da.Supervisor.start(
        [Ping.child_spec(announce, id="ping")], max_restarts=rounds + 100, max_seconds=3600
    )
    current = announce.get(timeout=5)
    baseline: list[float] = []
    restart: list[float] = []
    try:
        for _ in range(20):  # warm-up
            fresh_actor_round()
            _, current = restart_round(current, announce)
        for _ in range(rounds):
            baseline.append(fresh_actor_round())
            elapsed, current = restart_round(current, announce)
            restart.append(elapsed)
    finally:
        sup.stop()
    base_us = statistics.median(baseline) * 1e6
    ours_us = statistics.median(restart) * 1e6
    print(f"rounds: {rounds}")
    print(f"baseline  start a fresh pykka actor + ask : median {base_us:8.1f} us")
    print(f"dspex     crash -> restart -> ask          : median {ours_us:8.1f} us")
    print(f"ratio (dspex / baseline): {ours_us / base_us:.2f}  (target <= 2.0)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
