"""ProcessPool under SIGKILL chaos; orphans after the parent dies.

The workers are a tiny ``python -c`` JSON program (fast to start) so the killer can keep the
pool busy replacing workers without the test taking long on a loaded machine.

White-box: the killer reads the fork server's pid (`FORK_SERVER`, from
`dspex_actors._ports._forkserver`, with no public API) to spare the server and kill only its
children, the workers.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil
import pytest

import dspex_actors as da
from dspex_actors import ProcessPool
from dspex_actors._ports._forkserver import FORK_SERVER
from dspex_actors.testing import wait_for

from support.processes import forkserver_workers

DOUBLER = textwrap.dedent(
    """
    import json, struct, sys
    r, w = sys.stdin.buffer, sys.stdout.buffer
    while len(h := r.read(4)) == 4:
        msg = json.loads(r.read(struct.unpack(">I", h)[0]))
        data = json.dumps({"id": msg["id"], "double": msg["n"] * 2}).encode()
        w.write(struct.pack(">I", len(data)) + data)
        w.flush()
    """
)
ARGV = [sys.executable, "-S", "-c", DOUBLER]
POOL_SIZE = 4


def live_workers(parent: psutil.Process | None = None) -> list[psutil.Process]:
    """The live children of `parent` (default: this process)."""
    alive = []
    for child in (parent or psutil.Process()).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.NoSuchProcess:
            continue
    return alive


class Killer(threading.Thread):
    """SIGKILLs a random worker every `period` seconds until stopped; counts its kills.

    The workers are the live children of `parent` (default: this process; for forkserver
    workers, the fork server, which itself is spared; its zygote, the worker it forks ahead,
    is among the targets on purpose).
    """

    def __init__(self, period: float, parent: psutil.Process | None = None) -> None:
        super().__init__(name="chaos-killer")
        self.period = period
        self.parent = parent
        self.stopped = threading.Event()
        self.kills = 0
        self.rng = random.Random(5)

    def run(self) -> None:
        while not self.stopped.wait(self.period):  # sleep-ok: chaos pacing
            workers = live_workers(self.parent)
            if workers:
                try:
                    os.kill(self.rng.choice(workers).pid, signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass


def hammer(
    pool: ProcessPool, threads: int, calls: int, check: Callable[[int, Any], None]
) -> list[BaseException]:
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        for i in range(calls):
            n = offset * 100_000 + i
            try:
                reply = pool.call({"n": n}, timeout=30)
            except BaseException as exc:
                reply = exc
            try:
                check(n, reply)
            except BaseException as exc:
                with lock:
                    errors.append(exc)

    clients = [threading.Thread(target=client, args=(t,)) for t in range(threads)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(120)
    assert not any(t.is_alive() for t in clients)
    return errors


def run_chaos(retries: int, calls: int, check: Callable[[int, Any], None], **options: Any) -> int:
    # The ping makes a new worker join the pool only once it answers: callers never wait on
    # a booting process, which the killer could otherwise hit again and again.
    pool = ProcessPool.start(pool_size=POOL_SIZE, retries=retries, **options)
    server = None
    if FORK_SERVER.pid is not None:  # forkserver workers: the killer spares their server
        server = psutil.Process(FORK_SERVER.pid)
        assert {w.pid for w in live_workers()} == {server.pid}
    killer = Killer(period=0.05, parent=server)
    try:
        killer.start()
        errors = hammer(pool, threads=8, calls=calls, check=check)
        killer.stopped.set()
        killer.join(10)
        assert errors == []
        assert killer.kills > 0

        def back_to_full_size() -> bool:
            # Every idle worker's process alive too: a worker killed by the killer's last
            # shot counts as idle until the pool hears of its death.
            status = pool.status()
            if server is None:
                workers: frozenset[int] | None = frozenset(w.pid for w in live_workers())
            else:  # its zygote (the worker it forks ahead) left out
                workers = forkserver_workers(server.pid)
            return (
                status.idle == POOL_SIZE
                and status.busy == 0
                and status.initializing == 0
                and workers is not None
                and len(workers) == POOL_SIZE
            )

        wait_for(back_to_full_size, timeout=20)
        assert pool.call({"n": 1}, timeout=30)["double"] == 2
    finally:
        killer.stopped.set()
        killer.join(10)
        pool.stop(timeout=30)
    assert live_workers() == []
    return killer.kills


def test_with_retries_every_call_succeeds_while_workers_are_sigkilled() -> None:
    """8 client threads x 500 requests, a random worker SIGKILLed every 50 ms, retries=2:
    every call returns its own correct result; afterwards the pool is back at full size and,
    once stopped, no child process remains."""

    def check(n: int, reply: Any) -> None:
        assert not isinstance(reply, BaseException), reply
        assert reply["double"] == 2 * n

    run_chaos(retries=2, calls=500, check=check, argv=ARGV, ping={"n": 0})


def test_without_retries_every_call_is_correct_or_worker_crashed() -> None:
    crashed = []

    def check(n: int, reply: Any) -> None:
        if isinstance(reply, da.WorkerCrashed):
            crashed.append(reply)
            return
        assert not isinstance(reply, BaseException), reply
        assert reply["double"] == 2 * n

    run_chaos(retries=0, calls=150, check=check, argv=ARGV, ping={"n": 0})


def doubler(request: Any) -> Any:
    return {"double": request["n"] * 2}


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"target": doubler}, id="target-default"),
        pytest.param({"argv": ARGV, "ping": {"n": 0}, "start_method": "forkserver"}, id="argv"),
    ],
)
def test_forkserver_workers_survive_the_same_chaos(options: dict[str, Any]) -> None:
    """The same chaos with workers the fork server starts (the default for `target` pools, a
    choice for `argv` pools): the killer SIGKILLs the server's children, the workers; every
    call still succeeds with retries=2, and the pool is back at full size."""

    def check(n: int, reply: Any) -> None:
        assert not isinstance(reply, BaseException), reply
        assert reply["double"] == 2 * n

    assert run_chaos(retries=2, calls=300, check=check, **options) > 0


ORPHAN_PARENT = """
import sys, time
import psutil
from dspex_actors import ProcessPool
from dspex_actors._ports._forkserver import FORK_SERVER
from dspex_actors.testing import wait_for
if __name__ == "__main__":
    stall = [sys.executable, "-c", "import time; time.sleep(60)"]  # sleep-ok: stall
    a = ProcessPool.start(argv=stall, pool_size=2)
    b = ProcessPool.start(target=lambda request: request, pool_size=2)  # forkserver
    c = ProcessPool.start(target=lambda request: request, pool_size=1, start_method="spawn")
    d = ProcessPool.start(argv=stall, pool_size=1, start_method="forkserver")
    for pool, size in ((a, 2), (b, 2), (c, 1), (d, 1)):
        wait_for(lambda: pool.status().idle == size, timeout=60)
    assert b.call("up", timeout=60) == "up" and c.call("up", timeout=60) == "up"
    wait_for(lambda: FORK_SERVER.zygote_pid is not None, timeout=60)
    # The fork server and its workers (grandchildren) too.
    print(*[c.pid for c in psutil.Process().children(recursive=True)], flush=True)
    time.sleep(60)  # sleep-ok: a stalled child program
"""


def test_a_pools_workers_are_gone_within_a_second_of_the_parent_being_sigkilled() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        # 2 argv, the fork server with its 2 target workers, 1 argv worker and its zygote,
        # 1 spawned
        assert len(pids) == 8
        parent.kill()
        parent.wait(10)
        killed_at = time.monotonic()

        def all_gone() -> bool:
            for pid in pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        return False
                except psutil.NoSuchProcess:
                    continue
            return True

        wait_for(all_gone, timeout=max(0.0, 1.0 - (time.monotonic() - killed_at)))
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
