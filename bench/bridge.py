"""SessionPool (DSPex's session pool of DSPy workers) against its floors, in one run.

Run: ``python bench/bridge.py`` (under two minutes) or ``python bench/bridge.py --quick``.
Needs the bridge extra (DSPy); no network: the workers run programs on the offline LM.

1. Round trip, one caller, one worker, everything pinned to one CPU (unpinned, where the
   scheduler places the two processes moves a round trip by more than what is measured):
   ``execute_in_session(sid, "ping")`` against
   `ProcessPool.call` of a DSPex request to the same worker program (a ``ProcessPool(target=
   worker.handle_request, preload=PRELOAD)``, the request dict built per call as a DSPex
   client builds it). What the session pool adds: the session id, the store's plan and
   record, DSPex's envelope checked. Target <= 1.2x. Then the same for ``execute_program`` on
   an offline ``predict`` program, created beforehand on both (the session store in sync:
   nothing to rebuild), so the ratio is the bare program run plus each pool's costs.
2. Start: from `SessionPool.start(pool_size=8)` until 8 workers are idle, against
   ``pool_size=1`` until 1 is; the fork server already running with DSPy imported for both
   (another pool holds it), so this is the pool's own cost. Target <= 1.5x. The same with a
   cold fork server (started, and DSPy imported, by the pool) is shown for scale, and so is
   the floor: a process as big as the fork server forking 8 children that each answer once
   through a pipe, against forking 1 (what the machine allows before any set-up).
3. SIGKILL of the only (idle) worker of a ``pool_size=1`` SessionPool: time until a session's
   ping is answered by its replacement (the fork server's zygote, DSPy preloaded), against
   the fork floor (fork this process and get one answer through a pipe, as
   ``bench/process_pool.py`` measures it, sampled right before each kill). Each kill comes
   in the steady state: the worker idle and the fork server's zygote ready, as it is unless
   another worker started within the last few milliseconds. Target <= 2x. And
   against a cold start of the worker program (``python -m dspex_actors.bridge.worker --mode
   pool-worker`` answering its init ping): what the fork server saves.
4. Affinity: 8 sessions on 4 workers, one thread per session issuing commands for a fixed
   number of rounds; the share of commands served by the session's last worker
   (hits / (hits + misses)), and the throughput, for ``affinity="prefer"`` and ``"strict"``.

Figures are medians of several rounds, measured interleaved in the same process.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from _common import fork_floor_once, quiet_logs, replacement_once

import dspex_actors as da
from dspex_actors.bridge import SessionPool
from dspex_actors.bridge.worker import PRELOAD, handle_request

QA = {
    "inputs": [{"name": "question", "description": "a question"}],
    "outputs": [{"name": "answer", "description": "a short answer"}],
}
SESSION = "bench"


def dspex_request(n: int, command: str, args: dict[str, Any]) -> dict[str, Any]:
    """A request as DSPex's client builds it (the timestamp in ISO-8601 UTC)."""
    return {
        "id": n,
        "command": command,
        "args": args,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def per_op(n: int, op: Callable[[], Any]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        op()
    return (time.perf_counter() - start) / n


def wait_idle(pool: da.ProcessPool, n: int, timeout: float = 60.0) -> None:
    """Poll until `n` workers are idle (a pool start has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while True:
        status = pool.status()
        if getattr(status, "pool", status).idle >= n:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{pool.name}: {n} workers not idle after {timeout}s")
        time.sleep(0.0005)


# --- 1. round trip ------------------------------------------------------------------------------


def bench_round_trip(rounds: int, n: int) -> None:
    sessions = SessionPool.start(pool_size=1, name=None)
    plain = da.ProcessPool.start(target=handle_request, pool_size=1, preload=list(PRELOAD))
    ids = iter(range(1, 1 << 62))
    try:
        wait_idle(sessions, 1)
        wait_idle(plain, 1)
        # The same program on both workers: the session pool's through its session (so its
        # store is in sync and no command needs a rebuild), the plain pool's directly.
        create = {"id": "qa", "signature": QA, "program_type": "predict"}
        sessions.execute_in_session(SESSION, "create_program", create, timeout=30)
        created = plain.call(
            dspex_request(next(ids), "create_program", {**create, "session_id": SESSION}), 30
        )
        assert created["success"], created
        run = {"program_id": "qa", "inputs": {"question": "What is 2+2?"}}

        def plain_execute() -> Any:
            reply = plain.call(
                dspex_request(next(ids), "execute_program", {**run, "session_id": SESSION})
            )
            assert reply["success"], reply
            return reply

        ops: dict[str, Callable[[], Any]] = {
            "ping: ProcessPool.call": lambda: plain.call(dspex_request(next(ids), "ping", {})),
            "ping: execute_in_session": lambda: sessions.execute_in_session(SESSION, "ping"),
            "execute_program: ProcessPool.call": plain_execute,
            "execute_program: execute_in_session": lambda: sessions.execute_in_session(
                SESSION, "execute_program", run
            ),
        }
        for op in ops.values():  # warm: every code path hot, the offline LM made
            for _ in range(50):
                op()
        times: dict[str, list[float]] = {name: [] for name in ops}
        names = list(ops)
        for r in range(rounds):
            # Rotated each round, so that no contender always runs first or last.
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(per_op(n, ops[name]))
        status = sessions.status()
    finally:
        sessions.stop(timeout=30)
        plain.stop(timeout=30)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        "\n1. Round trip, one caller, one worker (same worker program on both pools; "
        "pinned to one CPU)"
    )
    for name, t in med.items():
        print(f"  {name:38} {t * 1e6:9.1f} us")
    ping = med["ping: execute_in_session"] / med["ping: ProcessPool.call"]
    run_ratio = (
        med["execute_program: execute_in_session"] / med["execute_program: ProcessPool.call"]
    )
    print(f"  ping: execute_in_session / ProcessPool.call = {ping:.2f} (target <= 1.2)")
    print(f"  execute_program: execute_in_session / ProcessPool.call = {run_ratio:.2f}")
    print(
        f"  (affinity hits {status.affinity_hits}, misses {status.affinity_misses}: one worker,"
        " the store in sync, nothing rebuilt)"
    )


# --- 2. start -------------------------------------------------------------------------------------


def square(n: int) -> int:
    return n * n


def ready_time(pool_size: int, plain: bool = False) -> float:
    """Seconds from `SessionPool.start(pool_size=...)` until every worker is idle (`plain`: a
    `ProcessPool` of a trivial target instead, for comparison)."""
    start = time.perf_counter()
    pool = (
        da.ProcessPool.start(target=square, pool_size=pool_size)
        if plain
        else SessionPool.start(pool_size=pool_size, name=None)
    )
    try:
        wait_idle(pool, pool_size)
        return time.perf_counter() - start
    finally:
        pool.stop(timeout=30)


def bench_start(rounds: int, cold_rounds: int) -> None:
    print("\n2. Start: SessionPool.start until every worker is idle")
    cold: dict[int, list[float]] = {1: [], 8: []}
    for _ in range(cold_rounds):
        for size in (1, 8):  # no other pool: the fork server starts, and imports DSPy, each time
            cold[size].append(ready_time(size))
    keeper = SessionPool.start(pool_size=1, name=None)  # holds the fork server, DSPy loaded
    warm: dict[int, list[float]] = {1: [], 8: []}
    plain: dict[int, list[float]] = {1: [], 8: []}
    try:
        wait_idle(keeper, 1)
        ready_time(8)  # warm
        ready_time(8, plain=True)
        for r in range(rounds):
            for size in (1, 8) if r % 2 == 0 else (8, 1):
                warm[size].append(ready_time(size))
                plain[size].append(ready_time(size, plain=True))
    finally:
        keeper.stop(timeout=30)
    w1, w8 = statistics.median(warm[1]), statistics.median(warm[8])
    p1, p8 = statistics.median(plain[1]), statistics.median(plain[8])
    c1, c8 = statistics.median(cold[1]), statistics.median(cold[8])
    print(
        f"  fork server running (DSPy loaded): 1 worker {w1 * 1e3:6.1f} ms, "
        f"8 workers {w8 * 1e3:6.1f} ms"
    )
    print(f"  8 workers / 1 worker, fork server running = {w8 / w1:.2f} (target <= 1.5)")
    f1, f8 = fork_floor_for_eight(rounds)
    print(
        f"  the floor: a process as big as the fork server forks 1 child {f1 * 1e3:.1f} ms, 8"
        f" children {f8 * 1e3:.1f} ms = {f8 / f1:.2f}x (each answers once; nothing set up)"
    )
    print(f"  8 workers / (8 x 1 worker, one after another) = {w8 / (8 * w1):.2f}")
    print(
        f"  the same for a ProcessPool of a trivial target: 1 worker {p1 * 1e3:6.1f} ms, "
        f"8 workers {p8 * 1e3:6.1f} ms = {p8 / p1:.2f}x"
    )
    print(
        f"  cold fork server (started, DSPy imported, by the pool): 1 worker "
        f"{c1 * 1e3:6.1f} ms, 8 workers {c8 * 1e3:6.1f} ms = {c8 / c1:.2f}x (for scale)"
    )


FORKS = """
import gc, importlib, os, statistics, sys, time
from dspex_actors._ports._forkserver_server import server_main  # what the fork server imports
for name in sys.argv[2:]:
    importlib.import_module(name)
gc.collect()
gc.freeze()

def ready(n):
    # Fork n processes, each answering once through a pipe and exiting; until all answered.
    start = time.perf_counter()
    r, w = os.pipe()
    pids = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:
            os.write(w, b".")
            os._exit(0)
        pids.append(pid)
    got = 0
    while got < n:
        got += len(os.read(r, n))
    elapsed = time.perf_counter() - start
    os.close(r)
    os.close(w)
    for pid in pids:
        os.waitpid(pid, 0)
    return elapsed

ready(8)  # warm
times = {1: [], 8: []}
for _ in range(int(sys.argv[1])):
    for n in (1, 8):
        times[n].append(ready(n))
print(statistics.median(times[1]), statistics.median(times[8]))
"""


def fork_floor_for_eight(rounds: int) -> tuple[float, float]:
    """What starting 8 processes at once costs this machine against one, at the least: a
    process as big as the fork server (DSPy and the bridge's commands imported, its heap
    frozen) forks 1, then 8 children that each answer once through a pipe, one fork after
    another as the fork server forks them; seconds until every one has answered (medians)."""
    done = subprocess.run(
        [sys.executable, "-c", FORKS, str(rounds), *PRELOAD],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    one, eight = map(float, done.stdout.split())
    return one, eight


# --- 3. SIGKILL -----------------------------------------------------------------------------------


def cold_start_once() -> float:
    """Start the worker program with a fresh interpreter; time until its init ping answers."""
    argv = [sys.executable, "-m", "dspex_actors.bridge.worker", "--mode", "pool-worker"]
    start = time.perf_counter()
    port = da.Port.open([*argv, "--worker-id", "cold"])
    try:
        reply = port.request(
            {"id": 0, "command": "ping", "args": {"initialization": True}}, timeout=60
        )
        elapsed = time.perf_counter() - start
        assert reply["success"], reply
        return elapsed
    finally:
        port.close()


def bench_sigkill(rounds: int, cold_rounds: int) -> None:
    print("\n3. SIGKILL of a SessionPool's only worker: its replacement answering a session")
    pool = SessionPool.start(pool_size=1, name=None)
    spared = SessionPool.start(pool_size=1, spares=1, name=None)
    plain = da.ProcessPool.start(target=handle_request, pool_size=1, preload=list(PRELOAD))
    ids = iter(range(1, 1 << 62))

    def session_ping() -> Any:
        return pool.execute_in_session(SESSION, "ping", timeout=30)

    def spared_ping() -> Any:
        return spared.execute_in_session(SESSION, "ping", timeout=30)

    def plain_ping() -> Any:
        return plain.call(dspex_request(next(ids), "ping", {}), timeout=30)

    floors: list[float] = []
    samples: list[float] = []
    plain_samples: list[float] = []
    spare_samples: list[float] = []
    trivial_samples: list[float] = []
    try:
        wait_idle(pool, 1)
        wait_idle(plain, 1)
        replacement_once(pool, session_ping, zygote=True)  # warm
        replacement_once(plain, plain_ping, zygote=True)
        replacement_once(spared, spared_ping, spares=1, zygote=True)
        for _ in range(rounds):
            floors.append(fork_floor_once())  # right before each kill: a noisy spell hits both
            samples.append(replacement_once(pool, session_ping, zygote=True))
            plain_samples.append(replacement_once(plain, plain_ping, zygote=True))
            spare_samples.append(replacement_once(spared, spared_ping, spares=1, zygote=True))
    finally:
        pool.stop(timeout=30)
        spared.stop(timeout=30)
        plain.stop(timeout=30)
    # With no pool left, the fork server has stopped: this pool's starts a new one, without
    # DSPy, so its forks are of a small process.
    trivial = da.ProcessPool.start(target=square, pool_size=1)
    try:
        wait_idle(trivial, 1)
        trivial_ping = functools.partial(trivial.call, 3, timeout=30)
        replacement_once(trivial, trivial_ping, zygote=True)
        for _ in range(rounds):
            floors.append(fork_floor_once())
            trivial_samples.append(replacement_once(trivial, trivial_ping, zygote=True))
    finally:
        trivial.stop(timeout=30)
    cold = [cold_start_once() for _ in range(cold_rounds)]
    t, floor, c = statistics.median(samples), statistics.median(floors), statistics.median(cold)
    p, q = statistics.median(plain_samples), statistics.median(trivial_samples)
    s = statistics.median(spare_samples)
    print(f"  fork floor (fork this process + one answer through a pipe): {floor * 1e3:6.1f} ms")
    print(f"  SessionPool: the replacement answering a session's ping:   {t * 1e3:6.1f} ms")
    print(f"  ProcessPool of the same worker program, the same measure:  {p * 1e3:6.1f} ms")
    print(f"  ProcessPool of a trivial target, a fork server without DSPy: {q * 1e3:5.1f} ms")
    print(f"  cold `python -m dspex_actors.bridge.worker` answering:     {c * 1e3:6.1f} ms")
    print(f"  SessionPool with spares=1: the spare answering:            {s * 1e3:6.1f} ms")
    print(f"  SessionPool replacement / fork floor = {t / floor:.2f} (target <= 2)")
    print(f"  SessionPool with spares=1 / fork floor = {s / floor:.2f}")
    print(f"  cold start / replacement = {c / t:.1f} (what the preloaded fork server saves)")


# --- 4. affinity ----------------------------------------------------------------------------------


def affinity_once(
    affinity: str, sessions: int, workers: int, per_session: int
) -> tuple[float, float]:
    """`sessions` threads, one session each, run `per_session` commands at once on a pool of
    `workers`; return the affinity hit rate and the commands per second."""
    pool = SessionPool.start(pool_size=workers, affinity=affinity, name=None)
    try:
        wait_idle(pool, workers)
        run = {"program_id": "qa", "inputs": {"question": "What is 2+2?"}}
        for s in range(sessions):  # each session's program, created before the clock starts
            create = {"id": "qa", "signature": QA, "program_type": "predict"}
            pool.execute_in_session(f"s{s}", "create_program", create, timeout=30)
        before = pool.status()
        barrier = threading.Barrier(sessions + 1)

        def client(session_id: str) -> None:
            barrier.wait()
            for _ in range(per_session):
                pool.execute_in_session(session_id, "execute_program", run, timeout=30)

        threads = [threading.Thread(target=client, args=(f"s{s}",)) for s in range(sessions)]
        for thread in threads:
            thread.start()
        barrier.wait()
        start = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        after = pool.status()
    finally:
        pool.stop(timeout=30)
    hits = after.affinity_hits - before.affinity_hits
    misses = after.affinity_misses - before.affinity_misses
    return hits / (hits + misses), sessions * per_session / elapsed


def bench_affinity(rounds: int, per_session: int) -> None:
    sessions, workers = 8, 4
    print(
        f"\n4. Affinity: {sessions} sessions on {workers} workers, one thread each, "
        f"{per_session} execute_program each"
    )
    results: dict[str, list[tuple[float, float]]] = {"prefer": [], "strict": []}
    for r in range(rounds):
        for affinity in ("prefer", "strict") if r % 2 == 0 else ("strict", "prefer"):
            results[affinity].append(affinity_once(affinity, sessions, workers, per_session))
    for affinity, samples in results.items():
        rate = statistics.median(s[0] for s in samples)
        speed = statistics.median(s[1] for s in samples)
        print(f"  {affinity:7} hits / (hits + misses) = {rate:.3f}   {speed:8.0f} commands/s")


def main() -> int:
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (about 20 seconds)")
    parser.add_argument("--only", type=int, choices=range(1, 5), help="run only this section (1-4)")
    opts = parser.parse_args()
    rounds, n, cold_rounds, per_session = (3, 100, 1, 25) if opts.quick else (7, 500, 3, 100)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, rounds={rounds}")

    def wanted(section: int) -> bool:
        return opts.only in (None, section)

    if wanted(1):
        # Pinned to one CPU, processes and threads alike (they inherit it): unpinned, where
        # the scheduler puts the caller and the worker moves a round trip by tens of
        # microseconds from run to run, more than what is measured (see bench/process_pool.py).
        everywhere = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
        if everywhere is not None:
            os.sched_setaffinity(0, {min(everywhere)})
        try:
            bench_round_trip(rounds, n)
        finally:
            if everywhere is not None:
                os.sched_setaffinity(0, everywhere)
    if wanted(2):
        bench_start(rounds, cold_rounds)
    if wanted(3):
        bench_sigkill(rounds + 2, cold_rounds)
    if wanted(4):
        bench_affinity(rounds, per_session)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
