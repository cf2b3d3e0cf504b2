"""Crashes are never silent: our records reach the application's own logging, once.

The scripts run in a fresh interpreter, as a service would, so that what they print is what a
user of `logging.basicConfig` (or of nothing at all) really sees.

White-box: one test calls the internal `log_event` / `area_logger` helpers
(`dspex_actors._logging`) directly, to pin how event fields become record attributes.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors._logging import area_logger, log_event
from dspex_actors.testing import wait_for

from support.logs import Records

WAIT = 60


def run_script(source: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 0, done.stderr
    return done


CRASH_AND_RESTART = """
    import dspex_actors as da

    class Worker(da.Actor):
        def on_receive(self, message):
            raise RuntimeError("worker exploded")

    sup = da.Supervisor.start([Worker.child_spec(id="worker")], max_restarts=1, max_seconds=60)
    first = sup.which_children()[0].ref
    first.tell("crash")
    da.wait_exit(first, 10)
    second = da.testing.wait_for(
        lambda: (r := sup.which_children()[0].ref) is not first and r, 10
    )
    second.tell("crash again")  # the second restart in the window: the supervisor gives up
    print("reason:", sup.wait(10))
"""


def test_a_service_on_basicconfig_info_sees_crashes_restarts_and_give_ups() -> None:
    done = run_script(
        "import logging, dspex_actors.testing\n"
        "logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s %(message)s')\n"
        + textwrap.dedent(CRASH_AND_RESTART)
    )
    err = done.stderr
    assert "ERROR dspex_actors.actor" in err
    assert "worker exploded" in err
    assert "ERROR dspex_actors.supervisor" in err
    assert "child 'worker' exited" in err
    assert "INFO dspex_actors.supervisor" in err
    assert "restarted child 'worker'" in err
    assert "reached max restart intensity" in err  # the give-up
    assert "Traceback" in err  # the crash's traceback comes with it
    assert not re.search(r"(?<!re)started child", err)  # progress chatter is DEBUG
    assert done.stdout == "reason: SHUTDOWN\n"


def test_with_no_logging_configured_errors_still_reach_stderr_and_chatter_does_not() -> None:
    """Python's last-resort handler prints WARNING and above when nothing is configured."""
    done = run_script("import dspex_actors.testing\n" + textwrap.dedent(CRASH_AND_RESTART))
    assert "worker exploded" in done.stderr
    assert "reached max restart intensity" in done.stderr
    assert "restarted child" not in done.stderr  # INFO: not shown unconfigured


def test_log_to_loguru_sends_each_record_to_loguru_once_and_not_to_the_standard_handlers() -> None:
    done = run_script(
        """
        import logging, sys
        from loguru import logger
        import dspex_actors as da

        logger.remove()
        seen = []
        logger.add(lambda m: seen.append(m.record), level="DEBUG")
        logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="STD %(name)s")
        da.log_to_loguru()

        class Boom(da.Actor):
            def on_receive(self, message):
                raise ValueError("to loguru")

        ref = Boom.start()
        ref.tell("x")
        da.wait_exit(ref, 10)
        crashes = [r for r in seen if r["extra"].get("event") == "actor_crashed"]
        first = crashes[0]
        print("loguru:", len(crashes), first["level"].name, first["exception"] is not None)
        da.log_to_loguru(False)
        """
    )
    lines = done.stdout.splitlines()
    assert "loguru: 1 ERROR True" in lines
    # Not shown twice: no record of ours reached the standard handlers (pykka's own do).
    assert [line for line in lines if line.startswith("STD dspex_actors")] == []


def test_a_record_carries_its_event_and_fields_as_data(records: Records) -> None:
    class Boom(da.Actor):
        def on_receive(self, message: Any) -> Any:
            raise ValueError("as data")

    sup = da.Supervisor.start([Boom.child_spec(id="boom")], name=None)
    try:
        ref = sup.which_children()[0].ref
        assert isinstance(ref, pykka.ActorRef)
        ref.tell("x")
        restarted = wait_for(lambda: records.of("child_restarted"), 10)
        assert restarted[0]["child_id"] == "boom"
        terminated = records.of("child_terminated")
        assert terminated[0]["level"] == "ERROR"
        assert terminated[0]["offender"]["id"] == "boom"
    finally:
        sup.stop()


def test_fields_are_record_attributes_unless_they_clash_with_logrecords_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="dspex_actors"):
        log_event(area_logger("pool"), "INFO", "probe", "{message} {pool}", message="m", pool="p")
    (record,) = [r for r in caplog.records if getattr(r, "event", None) == "probe"]
    assert record.getMessage() == "m p"
    assert record.pool == "p"  # type: ignore[attr-defined]
    assert record.dspex == {"message": "m", "pool": "p"}  # type: ignore[attr-defined]


def test_importing_the_package_installs_no_process_wide_hook() -> None:
    done = run_script(
        """
        import logging, os
        # Our dependencies first: what they do on import (pykka's NullHandler on "pykka",
        # the random module's at-fork reseed) is theirs, not ours.
        import attrs, dill, multiprocess, pykka, rich.tree, loguru
        hooks = []
        real = os.register_at_fork
        os.register_at_fork = lambda **kw: hooks.append(kw) or real(**kw)
        before = (list(logging.root.handlers), list(logging.getLogger("pykka").handlers))
        import dspex_actors as da
        after = (list(logging.root.handlers), list(logging.getLogger("pykka").handlers))
        print("on import:", len(hooks), before == after, logging.getLogger("dspex_actors").handlers)
        port = da.Port.spawn(len, start_method="fork")
        assert port.request("ab", timeout=30) == 2
        port.close()
        print("after a port:", len(hooks))
        """
    )
    assert done.stdout.splitlines() == ["on import: 0 True []", "after a port: 1"]


def test_a_pool_removing_a_worker_says_so_at_warning(records: Records) -> None:
    class Stale(da.PoolWorker):
        def init_worker(self, pool_state: Any) -> da.Ok:
            return da.Ok("conn", pool_state)

        def handle_checkout(self, command: Any, from_: da.From, ws: Any, ps: Any) -> da.Ok:
            return da.Ok(ws, ws, ps)

        def handle_checkin(self, state: Any, from_: da.From, ws: Any, ps: Any) -> da.Remove:
            return da.Remove(("stale", state), ps)

    pool = da.Pool.start(Stale, pool_size=1)
    try:
        pool.checkout("use", lambda from_, conn: (None, "gone"))
        removed = wait_for(lambda: records.of("pool_worker_removed"), 10)
        assert removed[0]["level"] == "WARNING"
        assert removed[0]["reason"] == "('stale', 'gone')"
    finally:
        pool.stop()
