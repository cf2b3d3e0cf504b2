"""DSPex's session pool of DSPy workers, under load and a chaos monkey, drawn live.

Run it with `dspex-actors demo` (after the restart-strategies demo) or
``python -m dspex_actors.examples.bridge_demo [--duration S] [--workers N] [--sessions N]
[--chaos RATE]``. It needs DSPy (``pip install 'dspex-actors[bridge]'``); it needs no API key
and no network: no LM is configured, so the workers answer with the bridge's offline
deterministic LM.

A `Supervisor` holds a `SessionPool`: DSPex's pool of DSPy bridge workers, forked from a fork
server that has DSPy imported. Client sessions, one thread each, create DSPy programs (some
``predict``, some ``chain_of_thought``), run them in a loop and list them. Meanwhile a chaos
monkey SIGKILLs random worker processes and, once midway, kills the pool's own actor, which its
supervisor restarts. The pool keeps every session's state in its session store, not in the
workers: a worker that has not served a session (a replacement, or another worker when the
session's own is busy) is brought up to date before it does, so no session loses a program.

How the client counts each request (the summary defines them again):

- **ok**: answered, and the answer is well-formed: the declared output fields, each a
  non-empty string, the same for the same inputs every time (whichever worker ran it);
  `list_programs` lists exactly what the session created.
- **retried**: ok, but the first attempt's worker was SIGKILLed under it (`WorkerCrashed`):
  the client sent it once more, as DSPex's clients do. A request that never reached a worker
  (that worker was already dead, or the pool was being restarted) is sent again without
  counting as a retry: nothing ran.
- **failed**: answered with an error (killed again on the retry, no worker in time...).
- **lost**: never answered (no reply within the operation timeout, or still waiting when the
  demo ends), or answered "program not found": a session's program disappeared.
- **wrong**: answered, but not well-formed.

The exit status is 0 when nothing was lost or wrong and every session is intact.

Worker pids come from leases (`checkout` hands the monkey a worker's `Port`, and
``port.os_pid`` is its process); the monkey kills them later, busy or idle. When stdout is a
terminal the table is redrawn live; otherwise (CI, a pipe) a plain line is printed every few
seconds, then the final table and the summary.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import logging
import math
import os
import random
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pykka
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

import dspex_actors as da
from dspex_actors.bridge import CommandError, CommandTimeout, SessionPool
from dspex_actors.testing import wait_for_pool_ready

console = Console(highlight=False)


def say(text: str) -> None:
    """One line of text, not cut to the console's width (a pipe's lines stay whole)."""
    console.print(text, soft_wrap=True)


DEFAULT_DURATION = 4.0
"""Seconds of load when `main()` is called with no arguments (the test suite runs it so)."""
FULL_DURATION = 12.0
"""Seconds of load that `dspex-actors demo` asks for: with the restart-strategies demo and the
workers' start, the whole command takes about 15 seconds."""
DEFAULT_WORKERS = 4
DEFAULT_SESSIONS = 6
DEFAULT_CHAOS = 2.0  # SIGKILLs per second

POOL_NAME = "bridge_demo"
OP_TIMEOUT = 10.0  # seconds a command waits for its reply (then: lost)
CHECKOUT_TIMEOUT = 10.0  # seconds a command waits for a worker (covers the pool's restart)
UNDELIVERED_RESENDS = 8  # a request that reached no worker is sent again at most this often
PROGRAMS_PER_SESSION = 3
CREATE_EVERY = 40  # a session creates its next program after this many operations
LIST_EVERY = 10  # ... and checks its program list this often
PLAIN_EVERY = 2.0  # seconds between progress lines when stdout is not a terminal

QA = {
    "inputs": [{"name": "question", "description": "a question about the product"}],
    "outputs": [{"name": "answer", "description": "a short answer"}],
}
TRIAGE = {
    "inputs": [{"name": "message", "description": "a customer's message"}],
    "outputs": [
        {"name": "category", "description": "billing, shipping or other"},
        {"name": "reply", "description": "a polite reply"},
    ],
}
SIGNATURES = (QA, TRIAGE)
INPUTS = ("Where is my order?", "Can I pay by card?", "Is it waterproof?", "Refund, please.")


# --- what happened: counters shared by the threads -------------------------------------------


@attrs.define
class SessionRow:
    """One client session, as the table shows it."""

    session_id: str
    program_type: str
    created: list[str] = attrs.field(factory=list)
    ops: int = 0
    last_latency: float | None = None
    retried: int = 0
    problem: str | None = None  # why the session is not intact (None: it is)


class Stats:
    """Request outcomes, latencies and kills; shared by every thread (one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.retried = 0
        self.failed: collections.Counter[str] = collections.Counter()  # by error type
        self.lost: list[str] = []
        self.wrong: list[str] = []
        self.latencies: list[float] = []
        self.worker_kills = 0
        self.pool_kills = 0

    def answered(self, row: SessionRow, latency: float, retried: bool) -> None:
        with self.lock:
            self.ok += 1
            self.retried += retried
            self.latencies.append(latency)
            row.ops += 1
            row.retried += retried
            row.last_latency = latency

    def failure(self, kind: str) -> None:
        with self.lock:
            self.failed[kind] += 1

    def loss(self, row: SessionRow, what: str) -> None:
        with self.lock:
            self.lost.append(f"{row.session_id}: {what}")
            row.problem = row.problem or what

    def bad_answer(self, row: SessionRow, what: str) -> None:
        with self.lock:
            self.wrong.append(f"{row.session_id}: {what}")
            row.problem = row.problem or what


class EventLog(logging.Handler):
    """The library's log records during the run: counted by event and the last few kept, so
    that the live table shows them instead of a flood on stderr."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.guard = threading.Lock()  # emit runs in whichever thread logs
        self.counts: collections.Counter[str] = collections.Counter()
        self.recent: collections.deque[str] = collections.deque(maxlen=3)

    def emit(self, record: logging.LogRecord) -> None:
        event = str(getattr(record, "event", record.levelname.lower()))
        with self.guard:
            self.counts[event] += 1
            self.recent.append(f"{record.levelname.lower()}: {record.getMessage()}")


@contextlib.contextmanager
def captured_logs() -> Iterator[EventLog]:
    """Route dspex_actors' records (INFO and up) to an `EventLog` while the demo runs, and
    put the logger back as it was afterwards."""
    logger = logging.getLogger("dspex_actors")
    handler = EventLog()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


# --- finding the pool: the supervisor may have restarted it ----------------------------------


class PoolFinder:
    """The running pool, looked up by name: after a restart the name leads to the new one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._pool: SessionPool | None = None
        self.incarnations = 0  # pools seen (the first one and each restart)

    def current(self, stale: SessionPool | None = None, timeout: float = 30.0) -> SessionPool:
        """The pool registered under the name now, other than `stale` (one found dead).

        Raises:
            TimeoutError: no running pool within `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pool = self._pool
                if pool is not None and pool is not stale:
                    return pool
                ref = da.whereis(self.name)
                if ref is not None and (stale is None or ref != stale.actor_ref):
                    with contextlib.suppress(TypeError, pykka.ActorDeadError):
                        self._pool = SessionPool.from_ref(ref)
                        self.incarnations += 1
                        return self._pool
            # The supervisor is restarting it: nothing to wait on but the registry.
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no pool registered as {self.name!r} after {timeout}s")
            time.sleep(0.005)


# --- a client session -------------------------------------------------------------------------


class Client:
    """One session's thread: create programs, run them, list them; check every answer."""

    def __init__(
        self, row: SessionRow, finder: PoolFinder, stats: Stats, stop: threading.Event
    ) -> None:
        self.row = row
        self.finder = finder
        self.stats = stats
        self.stop = stop
        self.signatures: dict[str, dict[str, Any]] = {}  # program id -> its signature
        self.seen: dict[tuple[str, str], dict[str, Any]] = {}  # (program, input) -> outputs
        self.thread = threading.Thread(target=self.run, name=f"demo-{row.session_id}")

    def run(self) -> None:
        row = self.row
        try:
            step = 0
            # The first step (its first program) runs even if the demo is already over, so
            # that every session has something to check at the end.
            while row.problem is None and (step == 0 or not self.stop.is_set()):
                if not row.created or (
                    step % CREATE_EVERY == 0 and len(row.created) < PROGRAMS_PER_SESSION
                ):
                    self.create()
                elif step % LIST_EVERY == 0:
                    self.check_list()
                else:
                    program_id = row.created[step % len(row.created)]
                    self.execute(program_id, INPUTS[step % len(INPUTS)])
                step += 1
        except Exception as exc:  # a bug in the demo or the pool: show it, do not hide it
            self.stats.loss(row, f"client crashed: {exc!r}")

    def create(self) -> None:
        program_id = f"{self.row.session_id}-p{len(self.row.created) + 1}"
        signature = SIGNATURES[len(self.row.created) % len(SIGNATURES)]
        args = {"id": program_id, "signature": signature, "program_type": self.row.program_type}
        result = self.request("create_program", args)
        if result is None:
            return
        if result.get("program_id") != program_id or result.get("status") != "created":
            self.stats.bad_answer(self.row, f"create_program answered {result!r}")
            return
        self.row.created.append(program_id)
        self.signatures[program_id] = signature

    def execute(self, program_id: str, text: str) -> None:
        signature = self.signatures[program_id]
        declared = sorted(field["name"] for field in signature["outputs"])
        args = {"program_id": program_id, "inputs": {signature["inputs"][0]["name"]: text}}
        result = self.request("execute_program", args)
        if result is None:
            return
        outputs = result.get("outputs")
        if (
            result.get("program_id") != program_id
            or not isinstance(outputs, dict)
            or sorted(outputs) != declared
            or not all(isinstance(v, str) and v for v in outputs.values())
        ):
            self.stats.bad_answer(self.row, f"execute_program answered {result!r}")
            return
        # The offline LM is deterministic: a program rebuilt on another worker must answer
        # exactly as the one that answered first.
        before = self.seen.setdefault((program_id, text), outputs)
        if before != outputs:
            self.stats.bad_answer(self.row, f"{program_id} said {before!r}, then {outputs!r}")

    def check_list(self) -> None:
        result = self.request("list_programs", {})
        problem = None if result is None else listing_problem(self.row, result)
        if problem is not None:
            self.stats.loss(self.row, problem)

    def request(self, command: str, args: dict[str, Any]) -> dict[str, Any] | None:
        """Send one command in the session; the result, or None (counted as failed or lost)."""
        row = self.row
        began = time.perf_counter()
        crashed = False
        undelivered = 0
        pool = self.finder.current()
        while True:
            try:
                result = pool.execute_in_session(row.session_id, command, args)
            except da.NoProc:
                pool = self.finder.current(stale=pool)  # restarted: send it to the new one
                continue
            except da.WorkerCrashed as exc:
                if not exc.delivered and undelivered < UNDELIVERED_RESENDS:
                    undelivered += 1
                    continue  # the worker was dead before we wrote: nothing ran
                if crashed:
                    self.stats.failure("WorkerCrashed twice")
                    return None
                crashed = True  # killed under this request: send it once more
                continue
            except CommandTimeout:
                self.stats.loss(row, f"{command} got no reply within {OP_TIMEOUT:.0f}s")
                return None
            except CommandError as exc:
                if "not found" in exc.message:
                    self.stats.loss(row, f"{command}: {exc.message}")
                else:
                    self.stats.failure(f"CommandError: {exc.message}")
                return None
            except da.DspexActorsError as exc:  # PoolTimeout, ProtocolError...
                self.stats.failure(type(exc).__name__)
                return None
            self.stats.answered(row, time.perf_counter() - began, crashed)
            return result


def listing_problem(row: SessionRow, result: dict[str, Any]) -> str | None:
    """What is wrong with a `list_programs` answer (None: it lists exactly what the session
    created)."""
    programs = result.get("programs")
    listed = sorted(p.get("id") for p in programs) if isinstance(programs, list) else None
    if result.get("total_count") != len(row.created) or listed != sorted(row.created):
        return (
            f"list_programs: {result.get('total_count')} programs {listed}, created {row.created}"
        )
    return None


# --- the chaos monkey -------------------------------------------------------------------------


class Monkey:
    """SIGKILLs a random worker process `rate` times a second, and the pool's actor once at
    `pool_kill_at` (seconds after the start; None: never)."""

    def __init__(
        self,
        finder: PoolFinder,
        stats: Stats,
        stop: threading.Event,
        rate: float,
        pool_kill_at: float | None,
    ) -> None:
        self.finder = finder
        self.stats = stats
        self.stop = stop
        self.rate = rate
        self.pool_kill_at = pool_kill_at
        self.known: set[int] = set()  # worker pids seen in a lease, not yet killed
        self.rng = random.Random()
        self.thread = threading.Thread(target=self.run, name="demo-chaos-monkey")

    def run(self) -> None:
        start = time.monotonic()
        next_kill = start + self.rng.uniform(0.5, 1.5) / self.rate
        while not self.stop.wait(0.05):
            pool = self.finder.current()
            self.learn(pool)
            now = time.monotonic()
            if self.pool_kill_at is not None and now - start >= self.pool_kill_at:
                self.pool_kill_at = None
                da.kill(pool.actor_ref)  # its workers go with it; its supervisor restarts it
                self.known.clear()
                with self.stats.lock:
                    self.stats.pool_kills += 1
                self.finder.current(stale=pool)
            elif now >= next_kill and self.known:
                pid = self.rng.choice(sorted(self.known))
                self.known.discard(pid)
                # Linux hands out pids in increasing order until they wrap around, so one seen
                # seconds ago is not another process's yet: it is that worker, or nothing.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    with self.stats.lock:
                        self.stats.worker_kills += 1
                next_kill = now + self.rng.uniform(0.5, 1.5) / self.rate

    def learn(self, pool: SessionPool) -> None:
        """Add one worker's pid, from a lease of whichever worker is free first."""
        with contextlib.suppress(da.DspexActorsError, pykka.ActorDeadError):
            pid = pool.checkout(None, lambda from_, port: (port.os_pid, "ok"), 0.2)
            self.known.add(pid)


# --- the live view ------------------------------------------------------------------------------


@attrs.frozen
class Workers:
    """The workers, summed over every incarnation of the pool."""

    alive: int
    starting: int
    started: int
    removed: int
    hits: int
    misses: int


class WorkerCounter:
    """Sums `status()` over the pool's incarnations (each counts from zero)."""

    def __init__(self, finder: PoolFinder) -> None:
        self.finder = finder
        self.last: dict[pykka.ActorRef[Any], da.PoolStatus] = {}
        self.current = Workers(0, 0, 0, 0, 0, 0)

    def poll(self) -> Workers:
        with contextlib.suppress(da.DspexActorsError, pykka.ActorDeadError, TimeoutError):
            pool = self.finder.current(timeout=0.0)
            status = pool.status(timeout=1.0)
            self.last[pool.actor_ref] = status.pool
            self.current = Workers(
                alive=status.pool.idle + status.pool.busy,
                starting=status.pool.initializing,
                started=sum(s.workers_started for s in self.last.values()),
                removed=sum(s.workers_removed for s in self.last.values()),
                hits=status.affinity_hits,
                misses=status.affinity_misses,
            )
        return self.current


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def render(
    elapsed: float,
    duration: float,
    workers: Workers,
    stats: Stats,
    rows: list[SessionRow],
    events: EventLog,
) -> Group:
    """The live view: totals, one line per session, the library's last log records."""
    with stats.lock:
        ok, retried, failed = stats.ok, stats.retried, sum(stats.failed.values())
        lost, wrong = len(stats.lost), len(stats.wrong)
        kills, pool_kills = stats.worker_kills, stats.pool_kills
        sessions = [attrs.evolve(row, created=list(row.created)) for row in rows]
    with events.guard:
        recent = list(events.recent)
    hit_rate = percent(workers.hits, workers.hits + workers.misses)
    head = Table(
        title=f"SessionPool under chaos: {elapsed:4.1f}s of {duration:g}s",
        box=None,
        show_header=False,
    )
    head.add_column(style="bold")
    head.add_column()
    head.add_row(
        "workers",
        f"{workers.alive} alive, {workers.starting} starting; "
        f"{workers.started} started, {workers.removed} removed",
    )
    head.add_row(
        "requests",
        f"[green]{ok} ok[/] ({retried} retried), {failed} failed, "
        f"[{'red' if lost else 'green'}]{lost} lost[/], {wrong} wrong",
    )
    head.add_row("chaos", f"{kills} workers SIGKILLed, {pool_kills} kill(s) of the pool's actor")
    head.add_row("affinity", f"{workers.hits} hits, {workers.misses} misses ({hit_rate} hits)")
    table = Table(box=None)
    for column in ("session", "programs", "type", "ops", "last ms", "retried", "state"):
        right = column in ("programs", "ops", "last ms", "retried")
        table.add_column(column, justify="right" if right else "left")
    for row in sessions:
        latency = "-" if row.last_latency is None else f"{row.last_latency * 1000:.1f}"
        state = "[green]intact[/]" if row.problem is None else f"[red]{row.problem[:40]}[/]"
        table.add_row(
            row.session_id,
            str(len(row.created)),
            row.program_type,
            str(row.ops),
            latency,
            str(row.retried),
            state,
        )
    log = Table(box=None, show_header=False)
    log.add_column("library log (last records)", overflow="ellipsis", no_wrap=True)
    for line in recent:
        log.add_row(f"[dim]{line}[/]")
    return Group(head, table, log)


def progress_line(elapsed: float, workers: Workers, stats: Stats) -> str:
    """One plain line of progress, for a stdout that is not a terminal."""
    with stats.lock:
        return (
            f"{elapsed:4.1f}s: {stats.ok} ok ({stats.retried} retried), "
            f"{sum(stats.failed.values())} failed, {len(stats.lost)} lost; "
            f"{stats.worker_kills} kills; workers {workers.alive} alive, "
            f"{workers.started} started, {workers.removed} removed; affinity "
            f"{percent(workers.hits, workers.hits + workers.misses)} hits"
        )


# --- the demo -------------------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser, *, duration: float) -> None:
    """The demo's flags, on `parser` (the example's own, or `dspex-actors demo`'s)."""
    parser.add_argument(
        "--duration",
        type=_non_negative,
        default=duration,
        metavar="SECONDS",
        help=f"seconds of load and chaos (default: {duration:g})",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"worker processes in the pool (default: {DEFAULT_WORKERS})",
    )
    parser.add_argument(
        "--sessions",
        type=_positive_int,
        default=DEFAULT_SESSIONS,
        metavar="N",
        help=f"client sessions, one thread each (default: {DEFAULT_SESSIONS})",
    )
    parser.add_argument(
        "--chaos",
        type=_non_negative,
        default=DEFAULT_CHAOS,
        metavar="RATE",
        help=f"worker SIGKILLs per second, and one kill of the pool's actor midway; "
        f"0 disables both (default: {DEFAULT_CHAOS:g})",
    )


def run_from(options: argparse.Namespace) -> int:
    """Run the demo with the flags `add_options` defined; return the exit status."""
    return run(
        duration=options.duration,
        workers=options.workers,
        sessions=options.sessions,
        chaos=options.chaos,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (None: no flags, the defaults; never `sys.argv`), run, return the status."""
    parser = argparse.ArgumentParser(
        prog="python -m dspex_actors.examples.bridge_demo",
        description="DSPex's session pool of DSPy workers under load and a chaos monkey.",
    )
    add_options(parser, duration=DEFAULT_DURATION)
    return run_from(parser.parse_args([] if argv is None else argv))


def run(*, duration: float, workers: int, sessions: int, chaos: float) -> int:
    """The demo (see the module docs); returns the exit status."""
    console.rule("[bold]DSPex bridge[/]: a SessionPool of DSPy workers under a chaos monkey")
    if importlib.util.find_spec("dspy") is None:
        say(
            "[red]DSPy is not installed[/]: the bridge demo needs the bridge extra "
            "(pip install 'dspex-actors[bridge]')"
        )
        return 1
    with captured_logs() as events:
        began = time.perf_counter()
        spec = SessionPool.child_spec(
            id="bridge",
            name=POOL_NAME,
            pool_size=workers,
            op_timeout=OP_TIMEOUT,
            checkout_timeout=CHECKOUT_TIMEOUT,
        )
        sup = da.Supervisor.start([spec])
        try:
            finder = PoolFinder(POOL_NAME)
            wait_for_pool_ready(finder.current(), timeout=60, min_idle=workers)
            say(
                f"{plural(workers, 'worker')} ready in {time.perf_counter() - began:.1f}s "
                "(the fork server imported DSPy once; each worker is a fork of it)"
            )
            console.print(da.supervision_tree(sup, label="supervision tree"))
            demo = Load(finder, events, duration, workers, sessions, chaos)
            elapsed = demo.run()
            verdicts = final_check(finder, demo.stats, demo.rows)
            counts = demo.counter.poll()
        finally:
            sup.stop()
    return summary(
        elapsed, counts, demo.stats, demo.rows, verdicts, finder.incarnations - 1, events
    )


class Load:
    """The clients and the monkey, for `duration` seconds, drawn live."""

    def __init__(
        self,
        finder: PoolFinder,
        events: EventLog,
        duration: float,
        workers: int,
        sessions: int,
        chaos: float,
    ) -> None:
        self.finder = finder
        self.events = events
        self.duration = duration
        self.workers = workers
        self.chaos = chaos
        self.stats = Stats()
        self.stop = threading.Event()
        self.rows = [
            SessionRow(f"s{n + 1}", "predict" if n % 2 == 0 else "chain_of_thought")
            for n in range(sessions)
        ]
        self.counter = WorkerCounter(finder)

    def run(self) -> float:
        """Run the load; return the seconds it took (its end included: every client's
        request in flight answered or given up)."""
        clients = [Client(row, self.finder, self.stats, self.stop) for row in self.rows]
        monkey = None
        if self.chaos > 0:
            # The pool's actor is killed once, past the middle: the end shows the pool
            # serving again after its restart.
            monkey = Monkey(self.finder, self.stats, self.stop, self.chaos, self.duration * 0.6)
        say(
            f"{plural(len(clients), 'session')} on {plural(self.workers, 'worker')} "
            f"for {self.duration:g}s; chaos: "
            + (
                f"{self.chaos:g} worker SIGKILLs/s, and one kill of the pool's actor"
                if monkey
                else "off"
            )
        )
        live = Live(console=console, refresh_per_second=8) if console.is_terminal else None
        start = time.perf_counter()
        for client in clients:
            client.thread.start()
        if monkey is not None:
            monkey.thread.start()
        try:
            with live if live is not None else contextlib.nullcontext():
                self.watch(start, live)
                self.stop.set()
                # A client finishes the request it has in flight, within its timeouts.
                deadline = time.monotonic() + OP_TIMEOUT + CHECKOUT_TIMEOUT + 5
                for client in clients:
                    client.thread.join(max(0.0, deadline - time.monotonic()))
                    if client.thread.is_alive():
                        self.stats.loss(client.row, "still waiting for an answer at the end")
                if monkey is not None:
                    monkey.thread.join(deadline - time.monotonic())
                elapsed = time.perf_counter() - start
                frame = self.frame(elapsed)
                if live is not None:
                    live.update(frame)
        finally:
            self.stop.set()
        if live is None:
            console.print(frame)
        return elapsed

    def watch(self, start: float, live: Live | None) -> None:
        """Redraw (or print a line) until the duration is up."""
        next_line = PLAIN_EVERY
        while (elapsed := time.perf_counter() - start) < self.duration:
            # Polled every time: each incarnation of the pool counts its workers from zero,
            # and what one counted after its last poll is lost with it when it is killed.
            workers = self.counter.poll()
            if live is not None:
                live.update(self.frame(elapsed))
            elif elapsed >= next_line:
                say(progress_line(elapsed, workers, self.stats))
                next_line += PLAIN_EVERY
            time.sleep(0.1)  # the redraw period

    def frame(self, elapsed: float) -> Group:
        workers = self.counter.poll()
        return render(elapsed, self.duration, workers, self.stats, self.rows, self.events)


def final_check(finder: PoolFinder, stats: Stats, rows: list[SessionRow]) -> dict[str, str]:
    """Each session's programs, listed once more after the load: its state, by session."""
    verdicts = {}
    for row in rows:
        client = Client(row, finder, stats, threading.Event())
        result = client.request("list_programs", {})
        if row.problem is not None:
            verdicts[row.session_id] = row.problem
        elif result is None:
            verdicts[row.session_id] = "list_programs failed at the end"
        else:
            problem = listing_problem(row, result)
            if problem is not None:
                stats.loss(row, problem)
            verdicts[row.session_id] = problem or "intact"
    return verdicts


def summary(
    elapsed: float,
    workers: Workers,
    stats: Stats,
    rows: list[SessionRow],
    verdicts: dict[str, str],
    restarts: int,
    events: EventLog,
) -> int:
    """Print what happened; return the exit status (1: something lost, wrong or not intact,
    or a session that never got anything done)."""
    intact = sum(1 for v in verdicts.values() if v == "intact")
    latencies = sorted(stats.latencies)
    p50 = statistics.median(latencies) if latencies else 0.0
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else p50
    failed = sum(stats.failed.values())
    with events.guard:
        logged = ", ".join(f"{event} x{n}" for event, n in sorted(events.counts.items()))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    grid.add_row(
        "requests",
        f"[green]{stats.ok} ok[/] in {elapsed:.1f}s, {stats.retried} of them retried (their "
        f"worker was SIGKILLed mid-request; the client sent them once more)",
    )
    grid.add_row(
        "",
        f"{failed} failed (answered with an error"
        + (": " + ", ".join(f"{k} x{n}" for k, n in stats.failed.items()) if failed else "")
        + ")",
    )
    grid.add_row(
        "",
        f"{len(stats.lost)} lost (a request that never got an answer, or a session whose "
        f"programs disappeared: must be 0), {len(stats.wrong)} wrong (a malformed answer)",
    )
    grid.add_row(
        "sessions",
        f"{intact} of {len(rows)} intact: each lists exactly the programs it created ("
        + ", ".join(f"{r.session_id}: {len(r.created)}" for r in rows)
        + ")",
    )
    grid.add_row(
        "chaos",
        f"{stats.worker_kills} workers SIGKILLed and replaced by the pool; the pool's actor "
        f"killed {stats.pool_kills}x, restarted by its supervisor {restarts}x",
    )
    grid.add_row("workers", f"{workers.started} started, {workers.removed} removed")
    grid.add_row(
        "affinity",
        f"{workers.hits} hits, {workers.misses} misses "
        f"({percent(workers.hits, workers.hits + workers.misses)} hits)",
    )
    grid.add_row("latency", f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    grid.add_row("log records", logged or "none")
    console.rule("[bold]bridge summary[/]")
    console.print(grid)
    problems = stats.lost + stats.wrong
    problems += [f"{sid}: {v}" for sid, v in verdicts.items() if v != "intact"]
    problems += [f"{r.session_id}: no answer at all" for r in rows if r.ops == 0]
    if problems:
        for problem in dict.fromkeys(problems):
            say(f"[bold red]problem:[/] {problem}")
        return 1
    console.rule("[bold green]no request lost, every session intact[/]")
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got: {text}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a non-negative number, got: {text}")
    return value


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
