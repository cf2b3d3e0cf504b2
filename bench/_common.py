"""Helpers shared by the bench scripts (run them as `python bench/<name>.py`)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import dspex_actors as da
from dspex_actors._ports._forkserver import FORK_SERVER

__all__ = ["fork_floor_once", "ops_per_second", "pipe_echo", "quiet_logs", "replacement_once"]


def quiet_logs() -> None:
    """Silence dspex_actors' log records for the measurement.

    The library reports every crash (with its traceback) and every restart through the
    standard `logging` module; with nothing configured, Python's last-resort handler writes
    each error to stderr. The benches measure the mechanics, not the cost of formatting and
    writing thousands of tracebacks, so they switch the records off (the baselines log
    nothing either).
    """
    logging.getLogger("dspex_actors").setLevel(logging.CRITICAL + 1)


def ops_per_second(clients: int, per_client: int, op: Callable[[], Any]) -> float:
    """Operations per second with `clients` threads each doing `op` `per_client` times.

    The threads start together behind a barrier; the clock runs from their release until the
    last one finishes.
    """
    barrier = threading.Barrier(clients + 1)

    def run() -> None:
        barrier.wait()
        for _ in range(per_client):
            op()

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return clients * per_client / (time.perf_counter() - start)


def pipe_echo(conn: Any) -> None:
    """A process's whole work in the floors: answer ``{"n": n}`` with its square until told
    to stop."""
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        if message is None:  # a forked child holds the parent's end too: EOF never comes
            return
        conn.send({"result": message["n"] * message["n"]})


def fork_floor_once() -> float:
    """Fork a process and get one answer through a pipe: the cheapest possible replacement."""
    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=pipe_echo, args=(child,))
    proc.start()
    child.close()
    parent.send({"n": 3})
    parent.recv()
    elapsed = time.perf_counter() - start
    parent.send(None)
    parent.close()
    proc.join()
    return elapsed


def replacement_once(
    pool: da.ProcessPool, answer: Callable[[], Any], spares: int = 0, zygote: bool = False
) -> float:
    """SIGKILL the only (idle) worker of `pool` (a `ProcessPool` or `SessionPool` of size 1);
    time until `answer()` is answered again, by its replacement (the spare, with `spares`).

    The kill comes in the steady state: the worker idle, the spares ready, nothing starting,
    and (`zygote`: for pools whose workers the fork server forks) the fork server's zygote
    ready, as it is unless another worker started within the last few milliseconds.
    """
    answer()
    while True:
        status = pool.status()
        status = getattr(status, "pool", status)  # a SessionPool's holds the pool's
        if (
            status.idle == 1
            and status.spares == spares
            and status.initializing == 0
            and (not zygote or FORK_SERVER.zygote_pid is not None)
        ):
            break
        time.sleep(0.0005)
    victim: int = pool.checkout(None, lambda from_, port: (port.os_pid, "ok"))
    start = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    while True:
        try:
            answer()
            break
        except da.WorkerCrashed:
            continue  # it reached the dead worker before the pool saw the death
    return time.perf_counter() - start
