"""`SessionStore` against real in-process workers: a stateful model of a pool's sessions.

A hypothesis state machine drives one store and a few in-process `MockBridge` workers (mode
``"pool-worker"``: programs per session, as the pool's workers) the way `SessionPool` drives
them: before a session's command, every step of ``plan(session, worker)`` is sent to the
worker (each must succeed: a refused step is a bug) and reported with ``applied``; then the
command is sent and ``record``-ed with the worker's success. Workers die (``forget_worker``)
and new ones, with new keys, take their place; the whole pool may start again
(``new_workers``); sessions end, or expire on the store's fake clock.

The oracle is independent of the store: per session, the programs it created and did not
delete or clean up since, and its LM (the anonymous session's LM is the workers' own), kept
from the success the model predicts for each command (and checks against the worker's). After
every step, for every live worker and every session, a dry run of the plan (on copies of the
store and of the worker) must bring the worker's programs and LMs to the oracle's, and then
every program the session owns runs while every other one is "not found".

The machine found one bug, now fixed: a worker-wide ``cleanup`` / ``reset_state`` made the
store forget every session the worker held, LMs included, although the worker keeps its
sessions' LMs; a session LM dropped afterwards stayed on that worker. The plain test at the end
pins it.
"""

from __future__ import annotations

import copy
import json
import threading
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dspex_actors.bridge import ANONYMOUS, SessionStore, _bridge
from dspex_actors.bridge._bridge import BridgeError
from dspex_actors.bridge._mock import MockBridge, mock_outputs
from dspex_actors.testing import FakeClock

from support.models import machine_settings

TTL = 1000.0  # no session idles this long but across `expire_every_session`'s jump
SESSIONS = ("s1", "s2", "s3")
EVERY_SESSION = (*SESSIONS, ANONYMOUS)
PROGRAMS = ("p1", "p2", "p3")
MODELS = ("m1", "m2", "m3")
SIGNATURE = {"inputs": [{"name": "question"}], "outputs": [{"name": "answer"}]}
BAD_SIGNATURE = {"inputs": [{"name": "question"}], "outputs": []}  # refused by any worker
WORKERS = 3  # live workers at most (the first ones' keys: 1, 2, 3)


class _NoCollect:
    """Stands for the `gc` module in the bridge: its commands' ``gc.collect()`` (about 10 ms
    each under hypothesis, and nothing to do with the state) is skipped."""

    @staticmethod
    def collect() -> int:
        return 0


@pytest.fixture(autouse=True)
def _no_collect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_bridge, "gc", _NoCollect)


def send(worker: MockBridge, command: str, args: dict[str, Any]) -> tuple[bool, Any]:
    """`command` sent to `worker` as over the wire (a JSON copy of `args`): (True, its
    result) or (False, its error)."""
    try:
        return True, worker.handle(command, json.loads(json.dumps(args)))
    except BridgeError as exc:
        return False, str(exc)


def lm_model(lm: Any) -> str | None:
    """The model name of an LM a `MockBridge` made (None: no LM)."""
    return None if lm is None else str(lm["model"])


def pool_id(key: int) -> int:
    """The pool's id of the worker whose port id is `key` (the store keeps both)."""
    return 100 + key


def dry_copy(store: SessionStore, worker: MockBridge) -> tuple[SessionStore, MockBridge]:
    """Deep copies of `store` and `worker` to try a plan on (new locks, the same clock)."""
    store_copy = copy.deepcopy(
        store, {id(store._lock): threading.Lock(), id(store._clock): store._clock}
    )
    worker_copy = copy.deepcopy(
        worker, {id(worker._lock): threading.Lock(), id(worker._random): worker._random}
    )
    return store_copy, worker_copy


class Oracle:
    """What each session should have: its programs and its LM (a model name)."""

    def __init__(self) -> None:
        self.programs: dict[str, set[str]] = {}
        self.lms: dict[str, str | None] = {}
        self.known: set[str] = set()  # sessions the store knows (recorded, not ended)
        self.last_worker: dict[str, int] = {}  # session -> key of the live worker last used

    def owned(self, session: str) -> set[str]:
        return self.programs.get(session, set())

    def lm(self, session: str) -> str | None:
        return self.lms.get(session)

    def end(self, session: str) -> None:
        self.known.discard(session)
        self.programs.pop(session, None)
        self.lms.pop(session, None)
        self.last_worker.pop(session, None)

    def worker_gone(self, key: int) -> None:
        for session in [s for s, k in self.last_worker.items() if k == key]:
            del self.last_worker[session]


def plan_and_apply(
    store: SessionStore, session: str, key: int, worker: MockBridge
) -> list[tuple[str, dict[str, Any]]]:
    """Run `session`'s plan on `worker` as the pool does; every step must succeed."""
    steps = store.plan(session, key)
    for step, step_args in steps:
        ok, reply = send(worker, step, step_args)
        assert ok, f"plan step {step} {step_args} refused by worker {key}: {reply}"
        store.applied(key, step, step_args)
    return steps


def check_in_sync(oracle: Oracle, session: str, worker: MockBridge) -> None:
    """`worker`, its plan for `session` run, holds what `oracle` says the session has, and
    runs exactly the session's programs."""
    held = set(worker.session_programs.get(session, {}))
    assert held == oracle.owned(session), f"programs of {session}"
    # The workers' own LM (the anonymous session's) is there for every session ...
    assert lm_model(worker.lm) == oracle.lm(ANONYMOUS), f"worker LM (for {session})"
    if session != ANONYMOUS:
        # ... and a session's own LM, or none
        assert lm_model(worker.session_lms.get(session)) == oracle.lm(session), f"LM of {session}"
    for program_id in PROGRAMS:
        inputs = {"question": f"{session}/{program_id}?"}
        args = {"program_id": program_id, "session_id": session, "inputs": inputs}
        ok, reply = send(worker, "execute_program", args)
        if program_id in oracle.owned(session):
            assert ok, reply
            assert reply["outputs"] == mock_outputs(["answer"], inputs)
        else:
            assert not ok
            assert reply == f"Program not found in session {session}: {program_id}"


sessions = st.sampled_from(EVERY_SESSION)
picks = st.integers(0, WORKERS - 1)  # a live worker, by rank of its key
program_ids = st.sampled_from(PROGRAMS)


class StoreMachine(RuleBasedStateMachine):
    """Sessions' commands on a changing set of workers, checked against `Oracle`."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(start=100.0)
        self.store = SessionStore(self.clock, TTL)
        self.workers: dict[int, MockBridge] = {}
        self.next_key = 1
        self.oracle = Oracle()
        self.hits = self.misses = 0
        for _ in range(WORKERS):
            self.spawn()

    # -- helpers --

    def key(self, pick: int) -> int:
        keys = sorted(self.workers)
        return keys[pick % len(keys)]

    def spawn(self) -> None:
        key, self.next_key = self.next_key, self.next_key + 1
        self.workers[key] = MockBridge(mode="pool-worker", worker_id=f"w{key}")

    def run(self, session: str, pick: int, command: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """`command` in `session` on a worker, as the pool runs it; the affinity checked."""
        key = self.key(pick)
        worker = self.workers[key]
        plan_and_apply(self.store, session, key, worker)
        # At its use, the worker is up to date.
        check_in_sync(self.oracle, session, worker)
        body = {**args, "session_id": session}
        ok, reply = send(worker, command, body)
        hit = self.store.record(session, command, body, key, pool_id(key), ok=ok)
        oracle = self.oracle
        last = oracle.last_worker.get(session)
        expected_hit = None if session == ANONYMOUS or last is None else last == key
        assert hit == expected_hit
        self.hits += hit is True
        self.misses += hit is False
        oracle.known.add(session)
        if session != ANONYMOUS:
            oracle.last_worker[session] = key
        return ok, reply

    def worker_gone(self, key: int) -> None:
        self.store.forget_worker(key)
        del self.workers[key]
        self.oracle.worker_gone(key)

    # -- a session's commands --

    @rule(session=sessions, pick=picks, program_id=program_ids, valid=st.booleans())
    def create_program(self, session: str, pick: int, program_id: str, valid: bool) -> None:
        signature = SIGNATURE if valid else BAD_SIGNATURE
        args = {"id": program_id, "signature": signature}
        ok, reply = self.run(session, pick, "create_program", args)
        owned = self.oracle.owned(session)
        assert ok == (valid and program_id not in owned), reply
        if program_id in owned:
            assert reply == f"Program with ID '{program_id}' already exists in session {session}"
        if ok:
            self.oracle.programs.setdefault(session, set()).add(program_id)

    @rule(session=sessions, pick=picks, program_id=program_ids)
    def delete_program(self, session: str, pick: int, program_id: str) -> None:
        ok, reply = self.run(session, pick, "delete_program", {"program_id": program_id})
        owned = self.oracle.owned(session)
        assert ok == (program_id in owned), reply
        if ok:
            owned.discard(program_id)
        else:
            assert reply == f"Program not found in session {session}: {program_id}"

    @rule(session=sessions, pick=picks, model=st.sampled_from(MODELS), valid=st.booleans())
    def configure_lm(self, session: str, pick: int, model: str, valid: bool) -> None:
        args = {"model": model, "temperature": 0.2 if valid else "hot"}
        ok, reply = self.run(session, pick, "configure_lm", args)
        assert ok == valid, reply
        if ok:
            self.oracle.lms[session] = model

    @rule(session=sessions, pick=picks)
    def cleanup_session(self, session: str, pick: int) -> None:
        ok, reply = self.run(session, pick, "cleanup_session", {})
        assert ok, reply
        self.oracle.programs.pop(session, None)
        if session != ANONYMOUS:  # the anonymous session's LM is the workers' own: it stays
            self.oracle.lms.pop(session, None)

    @rule(session=sessions, pick=picks, program_id=program_ids)
    def execute_program(self, session: str, pick: int, program_id: str) -> None:
        inputs = {"question": "2+2?"}
        args = {"program_id": program_id, "inputs": inputs}
        ok, reply = self.run(session, pick, "execute_program", args)
        assert ok == (program_id in self.oracle.owned(session)), reply
        if ok:
            assert reply["outputs"] == mock_outputs(["answer"], inputs)
        else:
            assert reply == f"Program not found in session {session}: {program_id}"

    # -- commands that empty a whole worker --

    @rule(session=sessions, pick=picks, command=st.sampled_from(["cleanup", "reset_state"]))
    def worker_wide_reset(self, session: str, pick: int, command: str) -> None:
        ok, reply = self.run(session, pick, command, {})
        assert ok, reply  # the sessions keep what they had: the worker gets it again

    @rule(session=sessions, pick=picks)
    def shutdown(self, session: str, pick: int) -> None:
        key = self.key(pick)
        ok, reply = self.run(session, pick, "shutdown", {})
        assert ok, reply
        # The pool closes a worker that shut down, and starts another.
        self.worker_gone(key)
        self.spawn()

    # -- sessions ending --

    @rule(session=st.sampled_from(SESSIONS))
    def end_session(self, session: str) -> None:
        assert self.store.end(session) == (session in self.oracle.known)
        self.oracle.end(session)

    @rule(seconds=st.integers(0, 5))
    def tick(self, seconds: int) -> None:
        self.clock.advance(seconds)  # 40 steps of at most 5 s: far from the TTL

    @rule()
    def expire_every_session(self) -> None:
        self.clock.advance(2 * TTL)
        self.store.stats()  # the sweep (as `SessionPool.status()`): every session expires
        for session in SESSIONS:
            self.oracle.end(session)

    # -- workers coming and going --

    @precondition(lambda self: len(self.workers) > 1)
    @rule(pick=picks)
    def worker_dies(self, pick: int) -> None:
        self.worker_gone(self.key(pick))

    @precondition(lambda self: len(self.workers) < WORKERS)
    @rule()
    def worker_joins(self) -> None:
        self.spawn()

    @rule()
    def pool_restarts(self) -> None:
        self.store.new_workers()
        self.workers.clear()
        self.oracle.last_worker.clear()
        for _ in range(WORKERS):
            self.spawn()

    # -- invariants --

    @invariant()
    def the_store_keeps_what_the_oracle_keeps(self) -> None:
        stats = self.store.stats()
        oracle = self.oracle
        assert set(stats) == oracle.known
        for session, stat in stats.items():
            assert set(stat.programs) == oracle.owned(session), session
            last = oracle.last_worker.get(session)
            expected = None if session == ANONYMOUS or last is None else pool_id(last)
            assert self.store.preferred(session) == expected
        assert (self.store.hits, self.store.misses) == (self.hits, self.misses)

    @invariant()
    def every_worker_catches_up_with_every_session(self) -> None:
        for key, worker in self.workers.items():
            for session in EVERY_SESSION:
                store, twin = dry_copy(self.store, worker)
                plan_and_apply(store, session, key, twin)
                check_in_sync(self.oracle, session, twin)
                assert store.plan(session, key) == [], "a plan run leaves nothing to do"


StoreMachine.TestCase.settings = machine_settings(examples=200, steps=40)
test_session_store_keeps_every_worker_in_sync_with_a_model = StoreMachine.TestCase


# --- the bug the machine found, as a plain test ------------------------------------------------


@pytest.mark.parametrize("reset", ["cleanup", "reset_state"])
@pytest.mark.parametrize("drop", ["expiry", "end_session", "cleanup_session elsewhere"])
def test_a_session_lm_dropped_after_a_worker_wide_reset_leaves_that_worker(
    reset: str, drop: str
) -> None:
    # The machine's shortest failure: configure_lm(s1) on worker 1, cleanup on worker 1,
    # every session expired: s1's LM stays on worker 1 (the other drops alike).
    clock = FakeClock(start=100.0)
    store = SessionStore(clock, TTL)
    workers = {1: MockBridge(mode="pool-worker"), 2: MockBridge(mode="pool-worker")}

    def run(session: str, key: int, command: str, args: dict[str, Any]) -> None:
        plan_and_apply(store, session, key, workers[key])
        body = {**args, "session_id": session}
        ok, reply = send(workers[key], command, body)
        assert ok, reply
        store.record(session, command, body, key, pool_id(key), ok=ok)

    run("s1", 1, "configure_lm", {"model": "m1"})
    run("s1", 1, reset, {})
    if drop == "expiry":
        clock.advance(2 * TTL)
        assert store.stats() == {}
    elif drop == "end_session":
        assert store.end("s1")
    else:
        run("s1", 2, "cleanup_session", {})
        assert store.stats()["s1"].programs == ()
    # s1 (again) on worker 1, its plan run first: it has no LM of its own any more.
    plan_and_apply(store, "s1", 1, workers[1])
    assert lm_model(workers[1].session_lms.get("s1")) is None
