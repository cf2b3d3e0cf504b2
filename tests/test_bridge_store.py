"""`SessionStore` alone, no process: what it plans for a worker after a session's commands.

Worker keys here are made-up port ids (10, 20), pool worker ids 1 and 2: the store keeps both,
the key for what a process holds, the pool id for the session's affinity.
"""

from __future__ import annotations

from typing import Any

from dspex_actors.bridge import SessionStore
from dspex_actors.testing import FakeClock

SIGNATURE = {"inputs": [{"name": "question"}], "outputs": [{"name": "answer"}]}
A, B = 10, 20  # two worker processes (port ids) ...
A_ID, B_ID = 1, 2  # ... and their pool worker ids


def store() -> SessionStore:
    return SessionStore(FakeClock(start=100.0), None)


def did(
    s: SessionStore, session_id: str, command: str, worker: int, args: dict[str, Any] | None = None
) -> bool | None:
    """`command` ran in `session_id` on `worker` and succeeded: recorded as the pool records
    it (the session's id injected into `args`)."""
    body = {**(args or {}), "session_id": session_id}
    return s.record(session_id, command, body, worker, A_ID if worker == A else B_ID, ok=True)


def program(session_id: str, program_id: str) -> dict[str, Any]:
    """`create_program`'s args for `program_id`, as the pool sends them in `session_id`."""
    return {"id": program_id, "signature": SIGNATURE, "session_id": session_id}


def catch_up(s: SessionStore, session_id: str, worker: int) -> list[tuple[str, dict[str, Any]]]:
    """Plan `worker`'s steps for `session_id` and report each one done; return them."""
    steps = s.plan(session_id, worker)
    for step, step_args in steps:
        s.applied(worker, step, step_args)
    return steps


def test_a_workers_removal_drops_the_affinity_of_the_sessions_it_served_last() -> None:
    s = store()
    did(s, "on-a", "ping", A)
    did(s, "on-b", "ping", B)
    s.forget_worker(A)
    stats = s.stats()
    assert (stats["on-a"].worker_id, stats["on-b"].worker_id) == (None, B_ID)
    assert s.preferred("on-a") is None
    # Nothing alive was preferred: the next command is neither a hit nor a miss.
    assert did(s, "on-a", "ping", B) is None
    assert (s.hits, s.misses) == (0, 0)
    assert s.stats()["on-a"].worker_id == B_ID
    assert did(s, "on-b", "ping", B) is True  # the other session's affinity is intact
    assert (s.hits, s.misses) == (1, 0)


def test_cleanup_session_drops_the_sessions_lm_so_that_it_is_never_sent_again() -> None:
    s = store()
    did(s, "s", "configure_lm", A, {"model": "session-model"})
    did(s, "s", "create_program", A, program("s", "p"))
    assert [step for step, _ in catch_up(s, "s", B)] == ["configure_lm", "create_program"]

    did(s, "s", "cleanup_session", A)
    assert s.stats()["s"].programs == ()
    assert s.plan("s", A) == []  # A dropped the LM with the programs: nothing to send again
    # B still holds both: it cleans the session up first, and gets no LM back.
    assert catch_up(s, "s", B) == [("cleanup_session", {"session_id": "s"})]
    assert s.plan("s", B) == []
    did(s, "s", "create_program", A, program("s", "q"))
    assert s.plan("s", B) == [("create_program", program("s", "q"))]


def test_a_session_ended_then_used_again_is_cleaned_up_then_rebuilt_with_nothing_to_delete() -> (
    None
):
    s = store()
    did(s, "s", "create_program", A, program("s", "p"))
    assert s.end("s") is True
    did(s, "s", "create_program", B, program("s", "q"))  # the id starts afresh, on B
    # A's cleanup drops p: a delete of p after it would fail ("Program not found").
    assert s.plan("s", A) == [
        ("cleanup_session", {"session_id": "s"}),
        ("create_program", program("s", "q")),
    ]


def test_nothing_is_rebuilt_before_a_command_that_would_undo_it() -> None:
    s = store()
    did(s, "s", "configure_lm", A, {"model": "session-model"})
    did(s, "s", "create_program", A, program("s", "p"))
    assert s.end("gone") is False
    did(s, "old", "create_program", B, program("old", "x"))
    assert s.end("old") is True  # B holds a session that ended: cleaned up at its next use
    for command in ("cleanup", "reset_state", "shutdown", "cleanup_session"):
        assert s.plan("s", B, command) == [], command
    assert [step for step, _ in s.plan("s", B, "execute_program")] == [
        "cleanup_session",
        "configure_lm",
        "create_program",
    ]
    assert s.plan("s", B) == s.plan("s", B, "ping")  # no command: planned as for any other
