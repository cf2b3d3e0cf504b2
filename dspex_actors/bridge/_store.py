"""The session store: what each session created, kept by the pool, so no worker owns it.

DSPex's workers keep a session's programs in their own memory; a pool that hands out any
worker then loses them ("Program not found" half the time), and a worker's crash loses them for
good. Here the pool records, per session, the commands that built its state (`configure_lm`,
`create_program`, minus `delete_program`), and per worker process what it has been given. Before
a session's command runs on a worker, `plan` lists the commands that bring that worker up to
date (create what it lacks, delete what the session no longer has, clean up sessions that
ended or that ``cleanup_session`` emptied on another worker); the caller sends them first. A
replacement worker after a crash, or another worker under ``affinity="prefer"``, is rebuilt
this way: killing every worker loses no session's programs.

Sessions idle longer than the TTL (on the pool's clock) expire; anonymous calls share the
``"anonymous"`` session, which never expires (DSPex's global program store).

The store outlives the workers: a worker-wide ``cleanup``, ``reset_state`` or ``shutdown``
empties that worker, not the sessions, whose programs are created on it again at their next
use there. A worker that leaves (`forget_worker`) takes what it held with it, and the sessions
it served last prefer no worker until their next command.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from .._clock import Clock

__all__ = ["ANONYMOUS", "SessionStats", "SessionStore"]

ANONYMOUS = "anonymous"
"""The session of anonymous calls (`SessionPool.execute_anonymous`)."""

# What undoes the whole state on a worker, and every command whose success changes state.
_WORKER_WIDE_RESETS = frozenset({"cleanup", "reset_state", "shutdown"})
_CHANGES = _WORKER_WIDE_RESETS | {
    "create_program",
    "delete_program",
    "configure_lm",
    "cleanup_session",
}
# Commands that undo what a rebuild would send: nothing is rebuilt before them.
_UNDOING = _WORKER_WIDE_RESETS | {"cleanup_session"}


@attrs.frozen
class SessionStats:
    """One session, as `SessionPool.status()` reports it.

    Attributes:
        started_at: pool clock time of its first command.
        last_activity: pool clock time of its last command.
        operations: commands run in it.
        programs: ids of the programs it holds.
        worker_id: the worker that served it last (its affinity), or None.
    """

    started_at: float
    last_activity: float
    operations: int
    programs: tuple[str, ...]
    worker_id: int | None


@attrs.define
class _Session:
    started_at: float
    last_activity: float
    operations: int = 0
    # program id -> the create_program args that built it (session_id included)
    programs: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    lm: dict[str, Any] | None = None  # the last configure_lm args
    lm_version: int = 0
    worker_id: int | None = None  # the pool's id of the worker that served it last
    worker: int | None = None  # and that worker's key (its port's id), while it lives


@attrs.define
class _Held:
    """What one worker process holds of one session."""

    programs: set[str] = attrs.field(factory=set)
    lm_version: int = 0


class SessionStore:
    """Sessions' state and what each worker holds of it; thread-safe (callers' threads)."""

    def __init__(self, clock: Clock, ttl: float | None) -> None:
        self._clock = clock
        self._ttl = ttl
        self._created = clock.monotonic()
        self._next_sweep = self._created
        # (worker, session) pairs found in sync since the last change: no plan to make for
        # them (the common case: a command in a session whose worker has everything).
        self._synced: set[tuple[int, str]] = set()
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        # worker key (its port's id) -> session id -> what it holds
        self._held: dict[int, dict[str, _Held]] = {}
        # worker key -> sessions it holds that ended, expired or were cleaned up on another
        # worker (`cleanup_session`): cleaned up at its next use
        self._stale: dict[int, set[str]] = {}
        self.hits = 0
        self.misses = 0

    # -- what a command needs first --

    def preferred(self, session_id: str) -> int | None:
        """The worker that served `session_id` last (None: none yet, that worker has left
        the pool, or the session is the anonymous one)."""
        # One read of one attribute: no lock needed (a stale answer only moves affinity).
        session = self._sessions.get(session_id)
        return None if session is None or session_id == ANONYMOUS else session.worker_id

    def plan(
        self, session_id: str, worker: int, command: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """The commands that bring worker `worker` up to date for `session_id` before
        `command`, in order: clean up the sessions it holds that are gone, configure the
        session's LM if the worker's is stale, delete the programs the session no longer
        has, create those it lacks. Nothing changes until each step is reported done
        (`applied`). None before a command that would undo them (``cleanup``,
        ``reset_state``, ``shutdown``, ``cleanup_session``)."""
        if command in _UNDOING:
            return []
        if (worker, session_id) in self._synced and self._clock.monotonic() < self._next_sweep:
            return []  # in sync, and nothing can have expired: no lock to take
        with self._lock:
            self._expire()
            if (worker, session_id) in self._synced:
                return []
            steps = self._plan(session_id, worker)
            if not steps:
                self._synced.add((worker, session_id))
            return steps

    def _plan(self, session_id: str, worker: int) -> list[tuple[str, dict[str, Any]]]:
        steps: list[tuple[str, dict[str, Any]]] = [
            ("cleanup_session", {"session_id": gone})
            for gone in sorted(self._stale.get(worker, ()))
        ]
        if session_id != ANONYMOUS:
            # The LM configured outside any session is the worker's own: every session
            # without one of its own runs on it, so it must be there too.
            steps += self._lm_step(ANONYMOUS, worker)
        session = self._sessions.get(session_id)
        if session is None:
            return steps
        steps += self._lm_step(session_id, worker)
        held = self._holding(worker, session_id)
        have = held.programs if held is not None else set()
        for program_id in sorted(have - session.programs.keys()):
            steps.append(("delete_program", {"program_id": program_id, "session_id": session_id}))
        for program_id, args in session.programs.items():
            if program_id not in have:
                steps.append(("create_program", args))
        return steps

    def _lm_step(self, session_id: str, worker: int) -> list[tuple[str, dict[str, Any]]]:
        session = self._sessions.get(session_id)
        if session is None or session.lm is None:
            return []
        held = self._holding(worker, session_id)
        if held is not None and held.lm_version == session.lm_version:
            return []
        return [("configure_lm", session.lm)]

    def _holding(self, worker: int, session_id: str) -> _Held | None:
        """What `worker` holds of `session_id`: None if nothing, or if the session is due
        for a cleanup there (the plan's first steps), which drops whatever it holds."""
        if session_id in self._stale.get(worker, ()):
            return None
        return self._held.get(worker, {}).get(session_id)

    # -- what a command did --

    def applied(self, worker: int, command: str, args: Mapping[str, Any]) -> None:
        """A step of `plan` succeeded on `worker`."""
        with self._lock:
            self._synced.clear()
            self._worker_did(worker, command, args)

    def record(
        self,
        session_id: str,
        command: str,
        args: Mapping[str, Any],
        worker: int,
        worker_id: int | None,
        ok: bool,
    ) -> bool | None:
        """A command ran in `session_id` on `worker` (pool worker `worker_id`): count it, move
        the session's affinity to that worker, and, if it succeeded, keep what it changed.

        A successful ``cleanup_session`` empties the session: its programs and its LM (the
        worker drops both) are not sent to any worker again, and every other worker holding
        the session cleans it up at its next use.

        Returns how the affinity went, as counted in `hits` / `misses`: True (the session's
        last worker served it), False (another one did) or None (counted as neither: the
        session's first command, or the anonymous session)."""
        with self._lock:
            now = self._clock.monotonic()
            session = self._sessions.get(session_id)
            hit = None
            if session is None:
                session = self._sessions[session_id] = _Session(now, now)
            elif session_id != ANONYMOUS and session.worker_id is not None:
                hit = session.worker_id == worker_id
                if hit:
                    self.hits += 1
                else:
                    self.misses += 1
            session.last_activity = now
            session.operations += 1
            if session_id != ANONYMOUS:
                session.worker_id = worker_id
                session.worker = worker
            if not ok or command not in _CHANGES:
                return hit
            self._synced.clear()
            if command == "create_program" and "id" in args:
                session.programs[str(args["id"])] = dict(args)
            elif command == "delete_program" and "program_id" in args:
                session.programs.pop(str(args["program_id"]), None)
            elif command == "configure_lm":
                session.lm = dict(args)
                session.lm_version += 1
            elif command == "cleanup_session":
                target = str(args.get("session_id", session_id))
                gone = self._sessions.get(target)
                if gone is not None:
                    gone.programs.clear()
                    if target != ANONYMOUS:  # the anonymous LM is the worker's own: it stays
                        gone.lm = None
                for other, held_by in self._held.items():
                    if other != worker and target in held_by:
                        self._stale.setdefault(other, set()).add(target)
            self._worker_did(worker, command, args, session)
            return hit

    def _worker_did(
        self,
        worker: int,
        command: str,
        args: Mapping[str, Any],
        session: _Session | None = None,
    ) -> None:
        if command == "shutdown":
            self._held.pop(worker, None)  # it holds nothing any more
            return
        if command in _WORKER_WIDE_RESETS:
            # Its programs are gone, every session's; each session's LM stays with it (so a
            # session that drops its LM later still has it cleaned up there).
            for held in self._held.get(worker, {}).values():
                held.programs.clear()
            return
        held_by = self._held.setdefault(worker, {})
        session_id = str(args.get("session_id", ANONYMOUS))
        held = held_by.setdefault(session_id, _Held())
        if command == "create_program" and "id" in args:
            held.programs.add(str(args["id"]))
        elif command == "delete_program" and "program_id" in args:
            held.programs.discard(str(args["program_id"]))
        elif command == "configure_lm":
            current = session or self._sessions.get(session_id)
            held.lm_version = current.lm_version if current is not None else 0
        elif command == "cleanup_session":
            held_by.pop(session_id, None)
            self._stale.get(worker, set()).discard(session_id)

    # -- sessions ending --

    def end(self, session_id: str) -> bool:
        """Forget `session_id`; every worker holding it cleans it up at its next use. False
        if it was unknown."""
        with self._lock:
            return self._end(session_id)

    def _end(self, session_id: str) -> bool:
        if self._sessions.pop(session_id, None) is None:
            return False
        self._synced.clear()
        for worker, held_by in self._held.items():
            if session_id in held_by:
                self._stale.setdefault(worker, set()).add(session_id)
        return True

    def _expire(self) -> None:
        """End the sessions idle longer than the TTL. Scans at most every eighth of the TTL
        (a session lives up to an eighth longer), so that commands do not each pay a scan
        of every session."""
        if self._ttl is None:
            return
        now = self._clock.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self._ttl / 8
        limit = now - self._ttl
        for session_id in [
            sid
            for sid, session in self._sessions.items()
            if sid != ANONYMOUS and session.last_activity <= limit
        ]:
            self._end(session_id)

    def new_workers(self) -> None:
        """Every worker is new (the pool started again): none holds anything, and no
        session has a worker to prefer."""
        with self._lock:
            self._synced.clear()
            self._held.clear()
            self._stale.clear()
            for session in self._sessions.values():
                session.worker_id = session.worker = None

    def forget_worker(self, worker: int) -> None:
        """Worker `worker` is gone: what it held went with it, and the sessions it served
        last prefer no worker now (their next command counts as neither an affinity hit
        nor a miss: there was nothing alive to prefer)."""
        with self._lock:
            self._synced.clear()
            self._held.pop(worker, None)
            self._stale.pop(worker, None)
            for session in self._sessions.values():
                if session.worker == worker:
                    session.worker_id = session.worker = None

    # -- inspection --

    def stats(self) -> dict[str, SessionStats]:
        """Every live session (expired ones dropped first), anonymous included if used."""
        with self._lock:
            self._expire()
            return {
                session_id: SessionStats(
                    started_at=s.started_at,
                    last_activity=s.last_activity,
                    operations=s.operations,
                    programs=tuple(s.programs),
                    worker_id=s.worker_id,
                )
                for session_id, s in self._sessions.items()
            }

    def uptime(self) -> float:
        """Seconds since this store was made (on its clock)."""
        return self._clock.monotonic() - self._created

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            return iter(list(self._sessions))
