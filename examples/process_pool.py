"""A pool of worker processes that shrugs off SIGKILL: ports, ProcessPool, WorkerCrashed.

Run it: ``python examples/process_pool.py``. It starts a `ProcessPool` of two Python worker
processes, serves requests, SIGKILLs an idle worker (the pool replaces it; nobody notices),
kills a worker in the middle of a request (`WorkerCrashed`; the next call is fine), and shows a
bare `Port` talking to an external program. Then a pool that looks after its workers, in a
supervision tree: workers recycled every few tasks, a spare ready for when one is killed, a
module preloaded in the fork server, and the pool itself killed and restarted by its
supervisor. Last, typed remote errors: a handler that raises, and a program answering in
DSPex's envelope with ``"success": false``, each a `RemoteError` that keeps its worker.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from dspex_actors import (
    Port,
    ProcessPool,
    RemoteError,
    Supervisor,
    WorkerCrashed,
    kill,
    whereis,
)
from dspex_actors.testing import wait_for

ECHO_PROGRAM = """
import struct, sys
r, w = sys.stdin.buffer, sys.stdout.buffer
while len(h := r.read(4)) == 4:
    data = r.read(struct.unpack(">I", h)[0])
    w.write(h + data)
    w.flush()
"""


# A program answering in DSPex's envelope: {"success": true, "result": ...} or, for a command
# it does not know, {"success": false, "error": ...}.
ENVELOPE_PROGRAM = """
import json, os, struct, sys
r, w = sys.stdin.buffer, sys.stdout.buffer
while len(h := r.read(4)) == 4:
    msg = json.loads(r.read(struct.unpack(">I", h)[0]))
    reply = {"id": msg["id"], "pid": os.getpid()}
    if msg["command"] == "square":
        reply.update(success=True, result=msg["n"] ** 2)
    else:
        reply.update(success=False, error=f"Unknown command: {msg['command']}")
    data = json.dumps(reply).encode()
    w.write(struct.pack(">I", len(data)) + data)
    w.flush()
"""


def handle(request: Any) -> Any:
    """The worker's code: runs in a child process, one request at a time."""
    if request == "crash":
        os.kill(os.getpid(), signal.SIGKILL)  # a segfault, an OOM kill, a kill -9...
    return {"pid": os.getpid(), "squared": request * request}


def exact_square(request: str) -> dict[str, Any]:
    """A worker that needs a module: `decimal` is preloaded, so no worker imports it."""
    import decimal

    return {"pid": os.getpid(), "squared": str(decimal.Decimal(request) ** 2)}


def current(name: str) -> ProcessPool:
    """The pool registered under `name` now (a supervisor's restart registers the new one)."""
    ref = whereis(name)
    if ref is None:
        raise LookupError(f"no pool is registered as {name!r}")
    return ProcessPool.from_ref(ref)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def main() -> int:
    # Workers are forked from a small fork server (the default start method for pools): safe
    # although this process has threads, and a replacement is answering within milliseconds.
    pool = ProcessPool.start(target=handle, pool_size=2)
    seen: set[int] = set()
    try:
        # Workers join the pool once they answer a ping; early calls wait for the first one.
        wait_for(lambda: pool.status().idle == 2, timeout=30)
        for n in range(1, 4):
            reply = pool.call(n, timeout=30)
            seen.add(reply["pid"])
            print(f"call({n}) -> {reply['squared']} (from worker {reply['pid']})")

        victim = reply["pid"]  # it answered and went back to the pool: it is idle now
        os.kill(victim, signal.SIGKILL)
        print(f"SIGKILLed idle worker {victim}")
        wait_for(lambda: pool.status().workers_removed == 1 and pool.status().idle == 2)
        replies = [pool.call(n, timeout=30) for n in (5, 6)]
        seen.update(r["pid"] for r in replies)
        print(
            f"replaced: call(5) -> {replies[0]['squared']}, call(6) -> {replies[1]['squared']}"
            f" (from workers {sorted({r['pid'] for r in replies})}; {victim} is gone)"
        )

        try:
            pool.call("crash", timeout=30)
        except WorkerCrashed as exc:
            print(f"a worker died mid-request: {exc}")
        reply = pool.call(7, timeout=30)
        seen.add(reply["pid"])
        print(f"the pool still serves: call(7) -> {reply['squared']}")
        print(f"status: {pool.status()}")
    finally:
        pool.stop(timeout=30)
    print(f"after stop, live workers: {sorted(pid for pid in seen if alive(pid))}")

    with Port.open([sys.executable, "-c", ECHO_PROGRAM]) as port:
        reply = port.request({"command": "ping"}, timeout=10)
        print(f"external program on {port}: {reply}")
    print(f"port closed with status {port.exit_status}")
    return self_managing()


def self_managing() -> int:
    """A supervised pool that recycles its workers and keeps a spare."""
    spec = ProcessPool.child_spec(
        target=exact_square,
        pool_size=2,
        spares=1,  # one more worker, started and pinged, for when one dies
        max_tasks=3,  # each worker is replaced after about 3 tasks (less a 10% jitter)
        max_memory=512 * 2**20,  # ... or once it holds 512 MiB (checked after each task)
        max_age=3600.0,  # ... or an hour after its start
        preload=["decimal"],  # imported once, in the fork server
        id="squares",
        name="squares",
    )
    sup = Supervisor.start([spec])
    try:
        pool = current("squares")
        wait_for(lambda: pool.status().spares == 1, timeout=30)
        pids = {pool.call("1.5", timeout=30)["pid"] for _ in range(12)}
        status = pool.status()
        print(
            f"12 calls served by {len(pids)} workers; recycled {status.workers_recycled}"
            f" ({status.recycle_reasons}), none failed"
        )

        wait_for(lambda: pool.status().initializing == 0, timeout=30)  # recycling is done
        removed = pool.status().workers_removed
        victim = pool.call("2", timeout=30)["pid"]
        try:
            os.kill(victim, signal.SIGKILL)
            print(f"SIGKILLed worker {victim}: its place was taken by the spare at once")
        except ProcessLookupError:
            # Its task made it due for recycling: it has left already, and the spare took its
            # place all the same.
            print(f"worker {victim} was recycled before the kill: the spare took its place")
        wait_for(lambda: pool.status().workers_removed > removed, timeout=30)
        print(f"call('2.5') -> {pool.call('2.5', timeout=30)['squared']}")

        old = pool.actor_ref
        kill(old)  # the pool's own actor dies: its workers die with it
        wait_for(lambda: whereis("squares") not in (None, old), timeout=30)
        pool = current("squares")
        print(
            f"pool killed and restarted by its supervisor; call('3') -> "
            f"{pool.call('3', timeout=30)['squared']}"
        )
    finally:
        sup.stop()
    return remote_errors()


def remote_errors() -> int:
    """A worker that reports an error is fine: the call raises `RemoteError`, it stays."""
    with ProcessPool.start(target=exact_square, pool_size=1) as pool:
        try:
            pool.call("not a number", timeout=30)
        except RemoteError as exc:
            print(f"the handler raised: {exc.kind}; the worker serves on:", end=" ")
            print(pool.call("4", timeout=30)["squared"])
    envelope = [sys.executable, "-c", ENVELOPE_PROGRAM]
    with ProcessPool.start(argv=envelope, pool_size=1) as pool:
        first = pool.call({"command": "square", "n": 9}, timeout=30)
        try:
            pool.call({"command": "cube", "n": 9}, timeout=30)
        except RemoteError as exc:
            print(f"the program answered success=false: {exc.message!r}")
        again = pool.call({"command": "square", "n": 3}, timeout=30)
        [stats] = pool.worker_stats()
        print(
            f"same worker before and after ({first['pid'] == again['pid']}),"
            f" error_checkins={stats.error_checkins}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
