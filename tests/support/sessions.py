"""Helpers for the `SessionPool` tests (tests/test_bridge_*.py).

- `SessionPools`: starts `SessionPool`s for one test (or one module), waits until they are
  ready, stops them at the end and kills every process they showed.
- `COMPAT`: the argv of `tests/programs/dspex_bridge_compat.py`, the stand-in for DSPex's
  ``dspy_bridge.py``; `CompatLog`: what its workers received (its ``COMPAT_LOG`` file).
- `SIGNATURE` and `create_program`: a program definition every worker accepts.
- `worker_pids(pool)`: each worker's pid by pool worker id, leased all at once.
- `direct(pool, command, args, worker=...)`: a request sent straight to one worker, past the
  session store (nothing is replayed or recorded): what that worker really holds.
- `kill_workers(pool, pids)`: SIGKILL workers and wait until the pool has replaced them.
- `unique(prefix)`: a session id no other test uses (pools shared by a module keep sessions).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import dspex_actors as da
from dspex_actors.bridge import SessionPool
from dspex_actors.testing import wait_for

from support.processes import PROGRAMS, Seen, descendants, kill_all

WAIT = 30.0  # bound for worker starts: a loaded machine starts interpreters slowly

COMPAT = [sys.executable, os.path.join(PROGRAMS, "dspex_bridge_compat.py")]

SIGNATURE: dict[str, Any] = {
    "inputs": [{"name": "question", "type": "str"}],
    "outputs": [{"name": "answer", "type": "str"}],
}

_ids = itertools.count(1)


def unique(prefix: str = "s") -> str:
    """A session (or program) id used by no other test of this process."""
    return f"{prefix}-{next(_ids)}"


def ready(pool: SessionPool, size: int) -> bool:
    """Every worker is started and idle, none starting."""
    s = pool.status().pool
    return (s.idle, s.busy, s.initializing) == (size, 0, 0)


class SessionPools:
    """Starts session pools; `close()` stops them and kills whatever process they left.

    Only processes that appeared after it was made count as its own: a fork server or a pool
    that a longer-lived fixture started before is left alone.
    """

    def __init__(self) -> None:
        self.pools: list[SessionPool] = []
        self.before = self._now()
        self.seen: set[Seen] = set()

    @staticmethod
    def _now() -> set[Seen]:
        return {s for s in map(Seen.of, descendants()) if s is not None}

    def start(self, *, wait: bool = True, **options: Any) -> SessionPool:
        """`SessionPool.start(**options)` (unregistered unless `name` is given); with `wait`
        (and an eager pool), wait until every worker is idle."""
        options.setdefault("name", None)
        pool = SessionPool.start(**options)
        self.pools.append(pool)
        if wait and not options.get("lazy", False):
            size = options.get("pool_size", 4)
            wait_for(lambda: ready(pool, size), timeout=WAIT)
        self.note()
        return pool

    def compat(self, log: CompatLog | None = None, **options: Any) -> SessionPool:
        """A pool of compat workers (`COMPAT`), logging to `log` if given."""
        if log is not None:
            options["env"] = {**os.environ, "COMPAT_LOG": str(log.path)}
        return self.start(worker_argv=COMPAT, **options)

    def note(self) -> None:
        """Remember every process below this one that appeared since this object was made
        (killed at the end if still running)."""
        self.seen |= self._now() - self.before

    def close(self) -> None:
        try:
            for pool in self.pools:
                if pool.is_alive():
                    with contextlib.suppress(da.NoProc, da.CallTimeout):
                        pool.stop(timeout=WAIT)
        finally:
            self.note()
            kill_all(self.seen)


class CompatLog:
    """The messages compat workers received, in order (one JSON line each in `path`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        """Every entry: ``{"pid", "worker_id", "argv", "message"}``."""
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]

    def messages(self, pid: int | None = None) -> list[dict[str, Any]]:
        """The messages received (by process `pid` only, if given)."""
        return [e["message"] for e in self.entries() if pid is None or e["pid"] == pid]

    def commands(self, pid: int | None = None) -> list[str]:
        """The commands received (by process `pid` only, if given), init pings included."""
        return [m["command"] for m in self.messages(pid)]

    def mark(self) -> int:
        """How many entries there are now: pass it to `since`."""
        return len(self.entries())

    def since(self, mark: int, pid: int | None = None) -> list[dict[str, Any]]:
        """The messages received after `mark` (by process `pid` only, if given)."""
        return [e["message"] for e in self.entries()[mark:] if pid is None or e["pid"] == pid]


def create_program(
    pool: SessionPool, session_id: str | None, program_id: str, **extra: Any
) -> dict[str, Any]:
    """Create program `program_id` (`SIGNATURE`) in `session_id` (None: anonymously)."""
    args = {"id": program_id, "signature": SIGNATURE, **extra}
    if session_id is None:
        return pool.execute_anonymous("create_program", args)
    return pool.execute_in_session(session_id, "create_program", args)


def worker_pids(pool: SessionPool, n: int | None = None) -> dict[int, int]:
    """Each worker's pid by its pool worker id: `n` workers (default: the pool's size),
    leased all at once (so they are distinct) and given back."""
    count = pool.status().pool.pool_size if n is None else n
    with contextlib.ExitStack() as stack:
        leases = [stack.enter_context(pool.lease(None, timeout=WAIT)) for _ in range(count)]
        pids: dict[int, int] = {}
        for lease in leases:
            assert lease.from_.worker_id is not None
            pids[lease.from_.worker_id] = lease.client_state.os_pid
        return pids


_direct_ids = itertools.count(10**9)  # far from the pool's own request ids


def direct(
    pool: SessionPool,
    command: str,
    args: dict[str, Any] | None = None,
    *,
    worker: int | None = None,
    timeout: float = WAIT,
) -> dict[str, Any]:
    """Send `command` straight to a worker (worker `worker`, waiting for it if it is busy),
    past the session store: nothing is replayed first, nothing recorded. Return the reply
    envelope ``{"id", "success", "result" | "error", ...}``."""
    message = {"id": next(_direct_ids), "command": command, "args": args or {}}

    def use(from_: da.From, port: da.Port) -> tuple[Any, Any]:
        assert worker is None or from_.worker_id == worker, f"got worker {from_.worker_id}"
        return port.request(message, timeout=timeout), "ok"

    reply: dict[str, Any] = pool.checkout(
        None,
        use,
        timeout,
        worker=worker,
        affinity="prefer" if worker is None else "strict",
    )
    return reply


def held_programs(pool: SessionPool, worker: int | None = None) -> dict[str, list[str]]:
    """The programs one worker really holds, by session (its own ``list_programs`` with no
    session, sent `direct`)."""
    reply = direct(pool, "list_programs", worker=worker)
    assert reply["success"], reply
    held: dict[str, list[str]] = {}
    for entry in reply["result"]["programs"]:
        held.setdefault(entry["session_id"], []).append(entry["id"])
    return held


def kill_workers(pool: SessionPool, pids: dict[int, int] | None = None) -> dict[int, int]:
    """SIGKILL the workers `pids` (default: every worker) and wait until the pool has
    replaced each one and is ready again; return the new workers' pids."""
    if pids is None:
        pids = worker_pids(pool)
    size = pool.status().pool.pool_size
    removed = pool.status().pool.workers_removed
    for pid in pids.values():
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: pool.status().pool.workers_removed >= removed + len(pids), timeout=WAIT)
    wait_for(lambda: ready(pool, size), timeout=WAIT)
    after = worker_pids(pool)
    assert not set(after.values()) & set(pids.values()), "a killed worker still serves"
    return after
