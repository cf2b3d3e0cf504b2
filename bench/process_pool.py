"""ProcessPool speed and SIGKILL behaviour against the Python process pools, in one run.

Run: ``python bench/process_pool.py`` (under a minute) or ``python bench/process_pool.py --quick``.

1. Sequential round trip of a trivial task (square a number), one caller:
   - baseline: a raw `multiprocessing.Pipe` round trip of a pickled dict to a forked echo
     process (the floor for "send to another process and get an answer");
   - `ProcessPool.call` (checkout + request + checkin) with the default forkserver workers and
     with fork workers (like for like with the baseline's forked echo), and a bare
     `Port.request`;
   - `multiprocessing.Pool.apply`, `ProcessPoolExecutor.submit().result()`, loky, pebble.
   Targets: ProcessPool.call / raw pipe <= 2.0; best peer / ProcessPool.call >= 2.0.
   It runs twice: processes free to run on any CPU, then everything pinned to one CPU. On a
   small VM a cross-CPU wake-up costs tens of microseconds, more than the work itself, and
   where the scheduler puts each process differs between contenders (a forked child starts
   on its parent's CPU, an exec'd one is placed anew): the unpinned figures measure placement
   as much as code, so the echo baseline is also shown with a spawn-started child; the pinned
   figures compare the work alone.
2. Throughput: 8 client threads on 2 and 4 workers, every pool doing the same task.
3. SIGKILL of an idle worker: time until a replacement answers, against the fork floor (fork a
   process and get one answer through a pipe, sampled right before each kill: the ratio is
   against the floor sampled alongside that contender), and what each peer does after the
   same kill. Kills come in the steady state: for target workers on the fork server, once
   its zygote (the worker it forks ahead) is ready.
4. SIGKILL of the fork server while 8 clients call a pool of 4 (retries=0): the slowest call
   across the kill, how soon a worker killed right after is replaced (through a new server),
   and the requests lost (target 0).
5. Pools that look after their workers:
   - recovery with ``spares=1``: SIGKILL of the serving worker until a call is answered (by
     the spare), against the fork floor sampled alongside (target <= 1x), for target and argv
     workers;
   - a replacement whose handler needs a heavy module (`hypothesis`, ~0.2 s to import):
     preloaded in the fork server vs imported by each new worker (a cold start);
   - throughput (8 clients, 2 workers) with ``max_tasks=100`` vs without (target >= 0.9x):
     the price of recycling a worker every 100 tasks; beside it, what the process churn alone
     costs on this machine (the pool without recycling while another process forks and reaps
     a process as big as the fork server, as many a second as the pool recycled: no recycling
     can do better), and `multiprocessing.Pool`'s ``maxtasksperchild=100`` vs without; and,
     for scale, the same with tasks of about a tenth of a millisecond and a millisecond of CPU
     instead of a trivial one.

Figures are medians of several rounds, measured interleaved in the same process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
from _common import fork_floor_once, ops_per_second, pipe_echo, quiet_logs, replacement_once

import dspex_actors as da
from dspex_actors._ports._forkserver import FORK_SERVER

DOUBLER = """
import json, struct, sys
r, w = sys.stdin.buffer, sys.stdout.buffer
while len(h := r.read(4)) == 4:
    msg = json.loads(r.read(struct.unpack(">I", h)[0]))
    data = json.dumps({"id": msg["id"], "result": msg["n"] * msg["n"]}).encode()
    w.write(struct.pack(">I", len(data)) + data)
    w.flush()
"""


def square(n: int) -> int:
    return n * n


BUSY = 25_000


def busy(n: int) -> int:
    """About a millisecond of CPU (a loop of `n` additions)."""
    total = 0
    for i in range(n):
        total += i
    return total


def square_or_die(n: int) -> int:
    """A task that kills its own worker (SIGKILL) when given a negative number."""
    if n < 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return n * n


def per_op(n: int, op: Callable[[], Any]) -> float:
    start = time.perf_counter()
    for _ in range(n):
        op()
    return (time.perf_counter() - start) / n


class Contenders:
    """Every pool under test, started once, with the same task behind `ops[name]()`."""

    def __init__(self, workers: int) -> None:
        import loky
        import pebble

        ctx = multiprocessing.get_context("fork")
        self.pipe_parent, child = ctx.Pipe()
        self.pipe_proc = ctx.Process(target=pipe_echo, args=(child,), daemon=True)
        self.pipe_proc.start()
        child.close()
        self.pool = da.ProcessPool.start(target=square, pool_size=workers)
        self.argv_pool = da.ProcessPool.start(
            argv=[sys.executable, "-S", "-c", DOUBLER], pool_size=workers
        )
        self.port = da.Port.spawn(square)
        # Our workers start in the background; the peers below fork this process. A fork
        # while subprocess.Popen waits for its exec (our argv workers) copies Popen's error
        # pipe into the forked child, and Popen then waits until that child exits (CPython
        # issue 103911; see docs/ports.md). Let ours finish starting first.
        deadline = time.monotonic() + 60
        for pool in (self.pool, self.argv_pool):
            while pool.status().idle < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{pool.name}: workers not ready after 60 s")
                time.sleep(0.001)
        self.mp_pool = ctx.Pool(workers)
        self.ppe = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx)
        self.loky = loky.ProcessPoolExecutor(workers)
        self.pebble: Any = pebble.ProcessPool(max_workers=workers, context=ctx)
        self.ops: dict[str, Callable[[], Any]] = {
            "raw Pipe (baseline)": self._pipe_round_trip,
            "ProcessPool.call (target)": lambda: self.pool.call(7),
            "ProcessPool.call (argv)": lambda: self.argv_pool.call({"n": 7}),
            "multiprocessing.Pool.apply": lambda: self.mp_pool.apply(square, (7,)),
            "ProcessPoolExecutor": lambda: self.ppe.submit(square, 7).result(),
            "loky": lambda: self.loky.submit(square, 7).result(),
            "pebble": lambda: self.pebble.schedule(square, (7,)).result(),
        }

    def _pipe_round_trip(self) -> Any:
        self.pipe_parent.send({"n": 7})
        return self.pipe_parent.recv()

    def close(self) -> None:
        self.pool.stop(timeout=30)
        self.argv_pool.stop(timeout=30)
        self.port.close()
        self.mp_pool.terminate()
        self.mp_pool.join()
        self.ppe.shutdown(wait=True, cancel_futures=True)
        self.loky.shutdown(wait=True, kill_workers=True)
        self.pebble.stop()
        self.pebble.join()
        self.pipe_parent.send(None)
        self.pipe_parent.close()
        self.pipe_proc.join(5)


def bench_round_trip(rounds: int, n: int, label: str) -> None:
    c = Contenders(workers=1)
    spawn_ctx = multiprocessing.get_context("spawn")
    spawn_pipe, child = spawn_ctx.Pipe()
    spawn_echo = spawn_ctx.Process(target=pipe_echo, args=(child,), daemon=True)
    spawn_echo.start()
    child.close()

    def spawn_round_trip() -> Any:
        spawn_pipe.send({"n": 7})
        return spawn_pipe.recv()

    # Like for like with the fork-started baseline: a forked child shares the parent's pages.
    fork_pool = da.ProcessPool.start(target=square, pool_size=1, start_method="fork")
    try:
        ops: dict[str, Callable[[], Any]] = {
            **c.ops,
            "ProcessPool.call (target, fork)": lambda: fork_pool.call(7),
            "raw Pipe, spawn-started echo": spawn_round_trip,
            "Port.request (bare)": lambda: c.port.request(7),
            "ProcessPool.checkout, no I/O": lambda: c.pool.checkout(
                None, lambda from_, port: (None, "ok")
            ),
        }
        for op in ops.values():
            for _ in range(50):
                op()
        times: dict[str, list[float]] = {name: [] for name in ops}
        for _ in range(rounds):
            for name, op in ops.items():
                times[name].append(per_op(n, op))
        med = {name: statistics.median(t) for name, t in times.items()}
        base = med["raw Pipe (baseline)"]
        ours = med["ProcessPool.call (target)"]
        print(f"\n1. Sequential round trip (one caller, one worker), {label}")
        print(f"{'contender':32} {'median us':>10} {'vs pipe':>8} {'vs call':>8}")
        for name, t in med.items():
            print(f"{name:32} {t * 1e6:10.1f} {t / base:8.2f} {t / ours:8.2f}")
        peers = ["multiprocessing.Pool.apply", "ProcessPoolExecutor", "loky", "pebble"]
        best = min(peers, key=lambda p: med[p])
        print(f"ProcessPool.call / raw pipe = {ours / base:.2f} (target <= 2.0)")
        print(f"best peer ({best}) / ProcessPool.call = {med[best] / ours:.2f} (target >= 2.0)")
    finally:
        fork_pool.stop(timeout=30)
        c.close()
        spawn_pipe.send(None)
        spawn_pipe.close()
        spawn_echo.join(5)


def bench_throughput(rounds: int, per_client: int) -> None:
    print("\n2. Throughput, 8 client threads (calls per second)")
    for workers in (2, 4):
        c = Contenders(workers=workers)
        try:
            ops = {k: v for k, v in c.ops.items() if k != "raw Pipe (baseline)"}
            results: dict[str, list[float]] = {name: [] for name in ops}
            names = list(ops)
            for name in names:  # warm up: every worker started, every code path hot
                ops_per_second(8, 20, ops[name])
            for r in range(rounds):
                # Rotate the order each round so no contender always runs first or last.
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    results[name].append(ops_per_second(8, per_client, ops[name]))
            med = {name: statistics.median(r) for name, r in results.items()}
            ours = med["ProcessPool.call (target)"]
            print(f"  {workers} workers:")
            for name, rate in med.items():
                print(f"    {name:30} {rate:10.0f}/s  {rate / ours:6.2f}x of ProcessPool")
        finally:
            c.close()


_SHUTDOWN_LIMIT = 10.0  # seconds a peer pool gets to shut down


def _children_pids() -> set[int]:
    """Live (non-zombie) child processes of this process."""
    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                pids.add(child.pid)
        except psutil.Error:
            continue
    return pids


def peer_after_kill(name: str, make: Callable[[], Any], submit: Callable[[Any], Any]) -> str:
    """Kill one idle worker of a peer pool, then submit twice; describe what happened."""
    pool = make()
    try:
        submit(pool)  # warm: the workers exist
        if isinstance(pool, da.ProcessPool):
            # Its workers are the fork server's children: ask the pool for one's pid.
            pid = pool.checkout(None, lambda from_, port: (port.os_pid, "ok"))
            workers = [psutil.Process(pid)]
        else:
            workers = [c for c in psutil.Process().children() if c.pid in _worker_pids_of(pool)]
        if not workers:
            return "could not find a worker to kill" + _shutdown(pool)
        os.kill(workers[0].pid, signal.SIGKILL)
        psutil.wait_procs([workers[0]], timeout=5)
        outcomes = []
        for _ in range(2):
            try:
                submit(pool)
                outcomes.append("ok")
            except concurrent.futures.TimeoutError:
                outcomes.append("hangs")
            except Exception as exc:
                outcomes.append(type(exc).__name__)
        if outcomes == ["ok", "ok"]:
            verdict = "recovers"
        elif outcomes[1] != "ok":
            verdict = f"broken for good ({outcomes[0]}, then {outcomes[1]})"
        else:
            verdict = f"first task fails ({outcomes[0]}), then recovers"
    except BaseException:
        _shutdown(pool)
        raise
    return verdict + _shutdown(pool)


def peer_after_crash(make: Callable[[], Any], submit: Callable[[Any, int], Any]) -> str:
    """A task kills its own worker mid-task; then one normal task. Describe what happened."""
    pool = make()
    try:
        submit(pool, 3)
        outcomes = []
        for n in (-1, 3):
            try:
                submit(pool, n)
                outcomes.append("ok")
            except (concurrent.futures.TimeoutError, multiprocessing.TimeoutError):
                outcomes.append("hangs (gave up after 3 s)")
            except Exception as exc:
                outcomes.append(type(exc).__name__)
    except BaseException:
        _shutdown(pool)
        raise
    return f"crashing task: {outcomes[0]}; next task: {outcomes[1]}" + _shutdown(pool)


def _worker_pids_of(pool: Any) -> set[int]:
    # Every live child is a worker, except a resource tracker (it runs no tasks; killing it
    # proves nothing).
    workers = set()
    for pid in _children_pids():
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if "resource_tracker" not in cmdline and "semaphore_tracker" not in cmdline:
            workers.add(pid)
    return workers


def _shutdown(pool: Any) -> str:
    """Shut `pool` down, bounded: returns "" or, if that hangs, a note (its workers are then
    SIGKILLed and the shutdown is abandoned). `multiprocessing.Pool.terminate()` waits forever
    for its task queue's lock when the worker killed was holding it (an idle worker waiting
    for a task holds it)."""
    done = threading.Event()

    def run() -> None:
        try:
            _shutdown_now(pool)
        finally:
            done.set()

    threading.Thread(target=run, name="bench-shutdown", daemon=True).start()
    if done.wait(_SHUTDOWN_LIMIT):
        return ""
    for process in getattr(pool, "_pool", []):  # multiprocessing.Pool's workers
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    return f"; then terminate() hangs (gave up after {_SHUTDOWN_LIMIT:.0f} s)"


def _shutdown_now(pool: Any) -> None:
    if isinstance(pool, da.ProcessPool):
        pool.stop(timeout=30)
    elif hasattr(pool, "terminate"):
        pool.terminate()
        pool.join()
    elif hasattr(pool, "stop"):
        pool.stop()
        pool.join()
    else:
        try:
            pool.shutdown(wait=True, kill_workers=True)
        except TypeError:
            pool.shutdown(wait=True, cancel_futures=True)


def bench_sigkill(rounds: int) -> None:
    import loky
    import pebble

    print("\n3. SIGKILL of an idle worker (each kill right after a fork-floor sample)")
    floors: list[float] = []
    results: list[tuple[str, float, float]] = []
    for label, options in (
        ("ProcessPool (target, forkserver*)", {"target": square}),
        ("ProcessPool (target, fork)", {"target": square, "start_method": "fork"}),
        ("ProcessPool (target, spawn)", {"target": square, "start_method": "spawn"}),
        ("ProcessPool (argv, python -S)", {"argv": [sys.executable, "-S", "-c", DOUBLER]}),
        (
            "ProcessPool (argv, forkserver)",
            {"argv": [sys.executable, "-S", "-c", DOUBLER], "start_method": "forkserver"},
        ),
    ):
        pool = da.ProcessPool.start(pool_size=1, **options)
        request = {"n": 3} if "argv" in options else 3
        # The floor and the kill alternate, so that a noisy spell hits both alike.
        mine: list[float] = []
        samples: list[float] = []
        try:
            for _ in range(rounds):
                mine.append(fork_floor_once())
                samples.append(
                    replacement_once(
                        pool,
                        functools.partial(pool.call, request, timeout=30),
                        zygote="forkserver*" in label,
                    )
                )
        finally:
            pool.stop(timeout=30)
        floors += mine
        results.append((label, statistics.median(samples), statistics.median(mine)))
    floor = statistics.median(floors)
    print(f"  fork floor (fork + one answer through a pipe): {floor * 1e3:.1f} ms")
    for label, t, its_floor in results:
        print(
            f"  {label:32} replacement answering after {t * 1e3:7.1f} ms"
            f" = {t / its_floor:5.1f}x floor"
        )
    ctx = multiprocessing.get_context("fork")
    timeout = 5.0
    peers: list[tuple[str, Callable[[], Any], Callable[[Any], Any]]] = [
        (
            "ProcessPool (ours)",
            lambda: da.ProcessPool.start(target=square, pool_size=2),
            lambda p: p.call(3, timeout=timeout),
        ),
        (
            "multiprocessing.Pool",
            lambda: ctx.Pool(2),
            lambda p: p.apply_async(square, (3,)).get(timeout),
        ),
        (
            "ProcessPoolExecutor",
            lambda: concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx),
            lambda p: p.submit(square, 3).result(timeout),
        ),
        (
            "loky",
            lambda: loky.ProcessPoolExecutor(2),
            lambda p: p.submit(square, 3).result(timeout),
        ),
        (
            "pebble",
            lambda: pebble.ProcessPool(max_workers=2, context=ctx),
            lambda p: p.schedule(square, (3,)).result(timeout),
        ),
    ]
    print("  (* the default start method of a ProcessPool's target workers)")
    print("  after SIGKILL of one idle worker, the next two tasks:")
    for name, make, submit in peers:
        print(f"    {name:24} {peer_after_kill(name, make, submit)}")
    wait = 3.0
    crashers: list[tuple[str, Callable[[], Any], Callable[[Any, int], Any]]] = [
        (
            "ProcessPool (ours)",
            lambda: da.ProcessPool.start(target=square_or_die, pool_size=2),
            lambda p, n: p.call(n, timeout=wait),
        ),
        (
            "multiprocessing.Pool",
            lambda: ctx.Pool(2),
            lambda p, n: p.apply_async(square_or_die, (n,)).get(wait),
        ),
        (
            "ProcessPoolExecutor",
            lambda: concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx),
            lambda p, n: p.submit(square_or_die, n).result(wait),
        ),
        (
            "loky",
            lambda: loky.ProcessPoolExecutor(2),
            lambda p, n: p.submit(square_or_die, n).result(wait),
        ),
        (
            "pebble",
            lambda: pebble.ProcessPool(max_workers=2, context=ctx),
            lambda p, n: p.schedule(square_or_die, (n,)).result(wait),
        ),
    ]
    print("  a task SIGKILLs its own worker mid-task:")
    for name, make2, submit2 in crashers:
        print(f"    {name:24} {peer_after_crash(make2, submit2)}")


def _kill_and_close(from_: Any, port: da.Port) -> tuple[None, str]:
    os.kill(port.os_pid, signal.SIGKILL)
    return None, "close"


def fork_server_kill_once(clients: int = 8) -> tuple[float, float, int, int]:
    """SIGKILL the fork server while `clients` threads call a pool of 4 (retries=0).

    Returns: the longest any call took across the kill (the pool never stops serving: its
    workers outlive the server), the time from the kill until a worker killed right after it
    is replaced and answering (through a new server, or "spawn" while none is up), the
    requests lost (failed calls: target 0) and the calls served meanwhile.
    """
    pool = da.ProcessPool.start(target=square, pool_size=4, retries=0)
    stop = threading.Event()
    lost = served = 0
    slowest = 0.0
    lock = threading.Lock()

    def client() -> None:
        nonlocal lost, served, slowest
        while not stop.is_set():
            began = time.perf_counter()
            try:
                ok = pool.call(3, timeout=30) == 9
            except Exception:
                ok = False
            took = time.perf_counter() - began
            with lock:
                served += ok
                lost += not ok
                slowest = max(slowest, took)

    try:
        while pool.status().idle < 4:
            time.sleep(0.001)
        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        time.sleep(0.2)  # load on
        server = FORK_SERVER.pid
        assert server is not None
        with lock:
            slowest = 0.0
        start = time.perf_counter()
        os.kill(server, signal.SIGKILL)
        # A worker killed right after, inside our own lease (checked in "close": no client
        # ever gets it), so that its replacement must come through a new server.
        pool.checkout(None, _kill_and_close)
        while pool.status().workers_started < 5:  # the replacement is up and answered
            time.sleep(0.0005)
        replaced = time.perf_counter() - start
        time.sleep(0.2)  # load on, after the kill
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        pool.stop(timeout=30)
    return slowest, replaced, lost, served


def bench_fork_server_kill(rounds: int) -> None:
    print("\n4. SIGKILL of the fork server under load (8 clients, a pool of 4, retries=0)")
    results = [fork_server_kill_once() for _ in range(rounds)]
    slowest = statistics.median(r[0] for r in results)
    replaced = statistics.median(r[1] for r in results)
    lost = sum(r[2] for r in results)
    served = sum(r[3] for r in results)
    print(f"  slowest call across the kill (median of {rounds}): {slowest * 1000:7.1f} ms")
    print(f"  a worker killed right after it, replaced and answering: {replaced * 1000:7.1f} ms")
    print(f"  requests lost: {lost} of {lost + served} (target 0)")


def uses_heavy(n: int) -> int:
    import hypothesis  # noqa: F401  (what the handler needs; preloaded or not)

    return n


def bench_self_managing(rounds: int, per_client: int) -> None:
    print("\n5. Pools that look after their workers")
    print("  SIGKILL of the serving worker of a pool of 1 with spares=1:")
    for label, options, request in (
        ("target (forkserver)", {"target": square}, 3),
        (
            "argv (python -S, ping)",
            # With a ping, a spare joins once its program answers: it is ready, not booting.
            {"argv": [sys.executable, "-S", "-c", DOUBLER], "ping": {"n": 0}},
            {"n": 3},
        ),
    ):
        pool = da.ProcessPool.start(pool_size=1, spares=1, **options)
        floors: list[float] = []
        samples: list[float] = []
        try:
            for _ in range(rounds):
                floors.append(fork_floor_once())
                samples.append(
                    replacement_once(
                        pool,
                        functools.partial(pool.call, request, timeout=30),
                        spares=1,
                        zygote="target" in label,
                    )
                )
        finally:
            pool.stop(timeout=30)
        t, floor = statistics.median(samples), statistics.median(floors)
        print(
            f"    {label:22} answering after {t * 1e3:6.2f} ms = {t / floor:5.2f}x fork floor"
            f" ({floor * 1e3:.1f} ms) (target <= 1)"
        )

    print("  SIGKILL -> replacement answering, the handler needing `hypothesis`:")
    medians = {}
    for label, preload in (("imported by each worker", ()), ("preloaded", ("hypothesis",))):
        pool = da.ProcessPool.start(target=uses_heavy, pool_size=1, preload=preload)
        try:
            samples = [
                replacement_once(pool, functools.partial(pool.call, 3, timeout=30), zygote=True)
                for _ in range(rounds)
            ]
        finally:
            pool.stop(timeout=30)
        medians[label] = statistics.median(samples)
        print(f"    {label:26} {medians[label] * 1e3:7.1f} ms")
    cold, warm = medians["imported by each worker"], medians["preloaded"]
    print(f"    preloaded / cold = {warm / cold:.3f} ({cold / warm:.0f}x faster)")

    print("  throughput, 8 clients on 2 workers, recycling every 100 (and 1000) tasks:")
    med, recycled, rate = recycling_throughput(square, 3, (None, 100, 1000), rounds, per_client)
    print(f"    max_tasks=1000 / no recycling = {med[1000] / med[None]:.2f}")
    print(
        f"    max_tasks=100 / no recycling = {med[100] / med[None]:.2f}"
        f" ({recycled} workers recycled, {rate:.0f}/s) (target >= 0.9)"
    )
    print(f"  what process churn alone costs here, at the same {rate:.0f} processes a second:")
    floor = churn_floor(rate, rounds, per_client)
    print(
        f"    no recycling, while another process forks and reaps one as big as the fork"
        f" server:\n      with churn / without = {floor:.2f} (the best any recycling can do)"
    )
    peer = mp_recycling(rounds, per_client)
    print(f"    multiprocessing.Pool(2, maxtasksperchild=100) / without = {peer}")
    for label, loops, share in (
        ("a tenth of a millisecond", BUSY // 10, 2),
        ("a millisecond", BUSY, 8),
    ):
        print(f"  the same with a task of about {label} of CPU (for scale):")
        med, _, _ = recycling_throughput(
            busy, loops, (None, 100), rounds, max(1, per_client // share)
        )
        print(f"    max_tasks=100 / no recycling = {med[100] / med[None]:.2f}")


def recycling_throughput(
    target: Callable[[int], int],
    request: int,
    limits: tuple[int | None, ...],
    rounds: int,
    per_client: int,
) -> tuple[dict[int | None, float], int, float]:
    """Calls per second (medians; 8 clients on 2 workers) of a pool of `target` for each
    `max_tasks` in `limits` (None: no recycling), the pools measured in turn each round; how
    many workers the pool with the smallest limit recycled, and how many a second while it
    was measured."""
    pools = {
        limit: da.ProcessPool.start(target=target, pool_size=2, max_tasks=limit) for limit in limits
    }
    smallest = min(limit for limit in limits if limit is not None)
    try:
        results: dict[int | None, list[float]] = {limit: [] for limit in pools}
        ops = {limit: functools.partial(p.call, request, timeout=30) for limit, p in pools.items()}
        for op in ops.values():
            ops_per_second(8, max(1, per_client // 20), op)  # warm
        order = list(ops)
        measured = 0.0  # seconds the smallest limit's pool was measured
        before = pools[smallest].status().workers_recycled
        for r in range(rounds):
            for limit in order[r % len(order) :] + order[: r % len(order)]:
                start = time.perf_counter()
                results[limit].append(ops_per_second(8, per_client, ops[limit]))
                if limit == smallest:
                    measured += time.perf_counter() - start
        recycled = pools[smallest].status().workers_recycled
    finally:
        for pool in pools.values():
            pool.stop(timeout=30)
    med = {limit: statistics.median(r) for limit, r in results.items()}
    for limit, rate in med.items():
        label = "no recycling" if limit is None else f"max_tasks={limit}"
        print(f"    {label:26} {rate:10.0f}/s")
    return med, recycled, (recycled - before) / measured


CHURN = """
import gc, os, select, sys, time
# What the fork server imports: each fork here is as big as one of the server's.
import dill
from dspex_actors._ports._forkserver_server import server_main
gc.collect()
gc.freeze()
rate = float(sys.argv[1])
print("ready", flush=True)
start, n = time.monotonic(), 0
while True:
    wait = start + n / rate - time.monotonic()
    if wait > 0 and select.select([sys.stdin], [], [], wait)[0]:
        break  # stdin closed: stop
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    n += 1
"""


def churn_floor(rate: float, rounds: int, per_client: int) -> float:
    """Throughput (8 clients, 2 workers, no recycling) while another process forks a child
    as big as a fork server's and reaps it, `rate` times a second, over the same without:
    what the process churn of recycling costs on this machine by itself, before any of
    the work of starting a worker."""
    pool = da.ProcessPool.start(target=square, pool_size=2)
    op = functools.partial(pool.call, 3, timeout=30)
    with_churn: list[float] = []
    without: list[float] = []
    try:
        ops_per_second(8, max(1, per_client // 20), op)  # warm
        for _ in range(rounds):
            without.append(ops_per_second(8, per_client, op))
            churn = subprocess.Popen(
                [sys.executable, "-c", CHURN, str(rate)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            try:
                assert churn.stdout is not None
                if churn.stdout.readline() != b"ready\n":
                    raise RuntimeError("the churning process did not start")
                with_churn.append(ops_per_second(8, per_client, op))
            finally:
                churn.communicate(timeout=30)  # closes its stdin: it stops
    finally:
        pool.stop(timeout=30)
    return statistics.median(with_churn) / statistics.median(without)


_PEER_TASK_LIMIT = 30.0  # seconds a peer's task gets before the peer counts as hung


def mp_recycling(rounds: int, per_client: int) -> str:
    """The peer: `multiprocessing.Pool` (fork) throughput with ``maxtasksperchild=100`` over
    the same without (8 clients, 2 workers), formatted; or what went wrong. It forks its
    replacements from a thread of this process while other threads run, so a replacement can
    deadlock on a lock one of them held: a task it never answers is waited for
    `_PEER_TASK_LIMIT` seconds, then the rest of the run is skipped."""
    ctx = multiprocessing.get_context("fork")
    pools = {limit: ctx.Pool(2, maxtasksperchild=limit) for limit in (None, 100)}
    hung = threading.Event()

    def task(pool: Any) -> None:
        if hung.is_set():
            return
        try:
            pool.apply_async(square, (3,)).get(timeout=_PEER_TASK_LIMIT)
        except multiprocessing.TimeoutError:
            hung.set()

    notes = ""
    try:
        results: dict[int | None, list[float]] = {limit: [] for limit in pools}
        for pool in pools.values():
            ops_per_second(8, max(1, per_client // 20), functools.partial(task, pool))
        for _ in range(rounds):
            for limit, pool in pools.items():
                results[limit].append(ops_per_second(8, per_client, functools.partial(task, pool)))
    finally:
        for pool in pools.values():
            notes += _shutdown(pool)
    if hung.is_set():
        return f"hung: a task got no answer within {_PEER_TASK_LIMIT:.0f} s{notes}"
    return f"{statistics.median(results[100]) / statistics.median(results[None]):.2f}{notes}"


def main() -> int:
    quiet_logs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    parser.add_argument("--only", type=int, choices=range(1, 6), help="run only this section (1-5)")
    opts = parser.parse_args()
    rounds, n, per_client = (3, 200, 100) if opts.quick else (7, 1000, 400)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, rounds={rounds}")

    def wanted(section: int) -> bool:
        return opts.only in (None, section)

    if wanted(1):
        bench_round_trip(rounds, n, "processes free to run on any CPU")
        if hasattr(os, "sched_setaffinity"):
            everywhere = os.sched_getaffinity(0)
            # Threads and processes started from now on inherit it (the contenders start
            # afresh).
            os.sched_setaffinity(0, {min(everywhere)})
            bench_round_trip(rounds, n, "every thread and process pinned to one CPU")
            os.sched_setaffinity(0, everywhere)
    if wanted(2):
        bench_throughput(max(1, rounds // 2), per_client)
    if wanted(3):
        bench_sigkill(rounds + 2)
    if wanted(4):
        bench_fork_server_kill(rounds)
    if wanted(5):
        bench_self_managing(rounds, per_client)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
