"""Helpers for the process-pool lifecycle tests (supervision, recycling, spares, preload).

- `ProcessPools`: starts `ProcessPool`s for one test, waits until they have settled, stops
  them at teardown and kills every process they showed, wherever it was reparented.
- `settled(pool, size, spares)`: every worker (and spare) is up and idle.
- `lease_pids(pool, n)`: the pids of `n` workers, leased all at once (so they are distinct).
- `wait_all_gone(seen, timeout)`: wait (bounded) until none of the processes runs any more.
- `Modules`: modules written for one test into a directory on `sys.path`, such as
  `marker_module`s, which append the pid of every process that imports them to a file.
"""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path
from typing import Any

import dspex_actors as da
from dspex_actors.testing import wait_for

from support.processes import Seen, descendants, kill_all

WAIT = 30.0  # bound for process starts: a loaded machine starts interpreters slowly


def settled(pool: da.Pool, size: int, spares: int = 0) -> bool:
    """Every worker is started and idle, and every spare is ready."""
    s = pool.status()
    return (s.idle, s.busy, s.initializing, s.spares) == (size, 0, 0, spares)


class ProcessPools:
    """Starts process pools for a test; `close()` stops them and kills what they left."""

    def __init__(self) -> None:
        self.pools: list[da.ProcessPool] = []
        self.seen: set[Seen] = set()

    def start(self, *, ready: bool = True, **options: Any) -> da.ProcessPool:
        """`ProcessPool.start(**options)`; with `ready`, wait until it has settled."""
        pool = da.ProcessPool.start(**options)
        self.pools.append(pool)
        if ready:
            size, spares = options["pool_size"], options.get("spares", 0)
            wait_for(lambda: settled(pool, size, spares), timeout=WAIT)
        self.note()
        return pool

    def note(self) -> None:
        """Remember every process below this one now (killed at teardown if still running)."""
        self.seen |= {s for s in map(Seen.of, descendants()) if s is not None}

    def close(self) -> None:
        try:
            for pool in self.pools:
                if pool.is_alive():
                    with contextlib.suppress(da.NoProc, da.CallTimeout):
                        pool.stop(timeout=WAIT)
        finally:
            self.note()
            kill_all(self.seen)


def lease_pids(pool: da.ProcessPool, n: int) -> set[int]:
    """The pids of `n` workers, leased all at once (and given back)."""
    with contextlib.ExitStack() as stack:
        leases = [stack.enter_context(pool.lease(None, timeout=WAIT)) for _ in range(n)]
        return {lease.client_state.os_pid for lease in leases}


def seen_pids(pids: set[int]) -> set[Seen]:
    """The processes `pids` name now (by pid and start time)."""
    return {s for s in map(Seen.pid_of, pids) if s is not None}


def wait_all_gone(seen: set[Seen], timeout: float = 10.0) -> bool:
    """Wait up to `timeout` s until none of `seen` runs (a zombie counts as gone)."""
    try:
        wait_for(lambda: not any(s.running() for s in seen), timeout=timeout)
    except TimeoutError:
        return False
    return True


MARKER_MODULE = """
import os
with open({marker!r}, "a") as _marker:
    _marker.write(f"{{os.getpid()}}\\n")
"""


class Modules:
    """Modules written for one test into `directory`, which is on `sys.path` (set up by the
    caller before any fork server starts: a server's `sys.path` is the parent's at its start).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, name: str, source: str) -> str:
        """Write module `name` with `source`; return its name."""
        (self.directory / f"{name}.py").write_text(source)
        importlib.invalidate_caches()
        return name

    def marker_module(self, name: str) -> tuple[str, Path]:
        """Module `name`, which appends the pid of each process importing it to a marker file;
        return its name and the marker's path."""
        marker = self.directory / f"{name}.imported-by"
        return self.add(name, MARKER_MODULE.format(marker=str(marker))), marker


def importers(marker: Path) -> list[int]:
    """The pids that imported a `marker_module`, in order ([] if none did)."""
    if not marker.exists():
        return []
    return [int(line) for line in marker.read_text().split()]
