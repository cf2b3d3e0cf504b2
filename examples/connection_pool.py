"""A pool of sqlite3 connections: checkouts, leases, idle health checks, a broken one replaced.

Run it with `python -m dspex_actors.examples.connection_pool`.

`SqliteWorker` is a `PoolWorker` whose workers are sqlite3 connections to one database file.
Callers run their queries in their own thread with `pool.checkout(...)` or
`with pool.lease(...)`; the pool only hands connections out and takes them back.

Every `worker_idle_timeout` seconds the pool pings connections that have been idle that long
(`handle_ping` runs ``select 1``). We break one connection behind the pool's back; its next
health check fails, `handle_ping` returns `Remove(...)`, and the pool terminates it and opens
a replacement, while the data in the database file is untouched. Idle pings run on a
`FakeClock` here so the output is the same on every run; a real program leaves `clock` out.
"""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import attrs

import dspex_actors as da
from dspex_actors.testing import FakeClock, sync


@attrs.define
class Conn:
    """One worker: a connection and its number (the number shows which worker served)."""

    number: int
    conn: sqlite3.Connection


@attrs.define
class PoolState:
    path: str
    opened: int = 0
    log: list[str] = attrs.Factory(list)


class SqliteWorker(da.PoolWorker):
    """Connections to the database file named by the `PoolState` given as `init_arg`."""

    def init_pool(self, init_arg: Any) -> da.Ok:
        if not isinstance(init_arg, PoolState):
            raise TypeError(f"SqliteWorker needs a PoolState, got: {init_arg!r}")
        return da.Ok(init_arg)

    def init_worker(self, pool_state: PoolState) -> da.Ok:
        pool_state.opened += 1
        conn = sqlite3.connect(pool_state.path, check_same_thread=False)
        pool_state.log.append(f"opened connection {pool_state.opened}")
        return da.Ok(Conn(pool_state.opened, conn), pool_state)

    def handle_checkout(self, command: Any, from_: da.From, worker: Conn, ps: PoolState) -> Any:
        return da.Ok(worker.conn, worker, ps)

    def handle_checkin(self, client_state: Any, from_: da.From, worker: Conn, ps: PoolState) -> Any:
        if client_state == "close":  # the caller saw the connection misbehave
            return da.Remove("closed by client", ps)
        return da.Ok(worker, ps)

    def handle_ping(self, worker: Conn, ps: PoolState) -> Any:
        try:
            worker.conn.execute("select 1").fetchone()
        except sqlite3.Error as exc:
            ps.log.append(f"connection {worker.number} failed its health check: {exc}")
            return da.Remove(("health_check_failed", str(exc)))
        ps.log.append(f"connection {worker.number} is healthy")
        return da.Ok(worker)

    def terminate_worker(self, reason: Any, worker: Conn, ps: PoolState) -> da.Ok:
        worker.conn.close()
        ps.log.append(f"closed connection {worker.number} ({reason!r})")
        return da.Ok(ps)


def insert(pool: da.Pool, name: str) -> int:
    def run(from_: da.From, conn: sqlite3.Connection) -> tuple[int, str]:
        with conn:
            cursor = conn.execute("insert into users(name) values (?)", (name,))
        assert cursor.lastrowid is not None
        return cursor.lastrowid, "ok"

    result: int = pool.checkout("insert", run)
    return result


def main() -> int:
    clock = FakeClock()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.db"
        sqlite3.connect(path).execute("create table users(id integer primary key, name text)")
        state = PoolState(path=str(path))  # the pool state; we keep a reference to print its log
        pool = da.Pool.start(
            SqliteWorker, state, pool_size=2, worker_idle_timeout=30.0, clock=clock
        )
        try:
            for name in ("ada", "grace", "barbara"):
                print(f"inserted {name!r} as id {insert(pool, name)}")
            with pool.lease("count") as lease:
                (count,) = lease.client_state.execute("select count(*) from users").fetchone()
                print(f"{count} users")

            # Break one connection behind the pool's back (a dropped server connection).
            with pool.lease("sabotage") as lease:
                lease.client_state.close()
            # Let the pool take the checkin (stamped with the current time) before time moves.
            sync(pool.actor_ref)
            clock.advance(30.0)  # both connections have been idle 30 s: health checks run
            sync(pool.actor_ref)
            sync(pool.actor_ref)  # the replacement's init_worker went through the inbox

            with pool.lease("count") as lease:
                (count,) = lease.client_state.execute("select count(*) from users").fetchone()
                print(f"still {count} users after the replacement")
            status = pool.status()
            print(
                f"status: {status.idle} idle, {status.busy} busy, "
                f"{status.workers_started} opened, {status.workers_removed} replaced"
            )
            for stats in pool.worker_stats():
                print(
                    f"  worker {stats.worker_id}: {stats.checkouts} checkouts, "
                    f"{stats.successful_checkins} clean checkins"
                )
        finally:
            pool.stop()
        print("pool log:")
        for line in state.log:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
