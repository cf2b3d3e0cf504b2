"""A program that forgets `stop()` still exits (issue "No single point of failure, and no
hang", item 5).

Each test runs a script that starts a `ProcessPool` and then a `Supervisor` (two children that
print when they stop) and ends without stopping them: normally, by an uncaught exception, on one
SIGINT (Ctrl-C) or on one SIGTERM. Interpreter exit must stop every running tree and pool, in
reverse start order (the supervisor's children, b then a, while the pool still serves; then the
pool), within their shutdown settings, leave no process behind, and exit with the script's own
status. Every script gets a bounded time to exit and is killed with its whole process tree
otherwise, so a hang fails the test instead of hanging the run.
"""

from __future__ import annotations

import signal

import pytest

from support.processes import Script, leftovers

# Seconds a script gets to exit once it has reported that it is ready: far more than its
# shutdown settings need (children: 5 s shutdown, but they stop at once; pool workers: 1 s
# close_timeout, but they exit on EOF at once).
EXIT_WITHIN = 10.0

SCRIPT = r"""
import sys, threading
import psutil
import dspex_actors as da
from dspex_actors.testing import wait_for

class Child(da.Actor):
    def __init__(self, name, pool):
        super().__init__()
        self.name, self.pool = name, pool

    def on_stop(self):
        try:  # the pool, started before the tree, must still serve while the tree stops
            served = self.pool.call(21, timeout=5)
        except Exception as exc:
            served = type(exc).__name__
        print("stopped", self.name, served, flush=True)

def double(request):
    return request * 2

if __name__ == "__main__":
    how = sys.argv[1]
    pool = da.ProcessPool.start(target=double, pool_size=2)
    wait_for(lambda: pool.status().idle == 2, timeout=60)
    assert pool.call(1, timeout=60) == 2
    tree = da.Supervisor.start(
        [Child.child_spec("a", pool, id="a"), Child.child_spec("b", pool, id="b")]
    )
    pids = [p.pid for p in psutil.Process().children(recursive=True)]
    print("ready", *pids, flush=True)
    if how == "exception":
        raise RuntimeError("the script's own error")
    if how == "signal":
        threading.Event().wait()  # until SIGINT or SIGTERM
"""


def run(how: str, send: signal.Signals | None = None) -> tuple[int, list[str], str]:
    """Run the script to its end, or until `send` (once it is ready); return its exit status,
    its stdout lines after "ready", and its stderr. Fails if it does not exit in time, or if
    any process it started is still running after it exited."""
    script = Script(SCRIPT, how)
    try:
        ready = script.read_line(timeout=60).split()
        assert ready[0] == "ready", ready
        script.report([int(pid) for pid in ready[1:]])
        assert len(script.reported) >= 2, f"expected (at least) the pool's 2 workers: {ready}"
        if send is not None:
            script.proc.send_signal(send)
        status = script.wait(EXIT_WITHIN)
        if status is None:
            out, err = script.rest_of_output(timeout=0.5)
            pytest.fail(
                f"the script ({how}, signal {send!r}) did not exit within {EXIT_WITHIN} s: "
                f"a program that forgets stop() hangs; stdout so far {out!r}, stderr {err[-500:]!r}"
            )
        out, err = script.rest_of_output()
        left = leftovers(script.reported)
        assert left == [], f"still running after the script exited: {left}"
        return status, out.splitlines(), err
    finally:
        script.kill_tree()


def assert_stopped_in_order(lines: list[str]) -> None:
    assert lines == ["stopped b 42", "stopped a 42"], (
        f"the tree was not stopped in order before the pool (children b then a, each served "
        f"by the pool): {lines}"
    )


@pytest.mark.timeout(120)
def test_a_script_that_ends_without_stop_exits_with_its_own_status() -> None:
    status, lines, err = run("end")
    assert status == 0, err[-2000:]
    assert_stopped_in_order(lines)


@pytest.mark.timeout(120)
def test_a_script_that_dies_of_an_uncaught_exception_exits_with_its_own_status() -> None:
    status, lines, err = run("exception")
    assert status == 1
    assert "RuntimeError: the script's own error" in err
    assert_stopped_in_order(lines)


@pytest.mark.timeout(120)
def test_one_ctrl_c_stops_everything_and_exits() -> None:
    status, lines, _ = run("signal", signal.SIGINT)
    assert status in (-signal.SIGINT, 128 + signal.SIGINT), status
    assert_stopped_in_order(lines)


@pytest.mark.timeout(120)
def test_one_sigterm_stops_everything_in_order_and_exits() -> None:
    status, lines, _ = run("signal", signal.SIGTERM)
    assert status in (-signal.SIGTERM, 128 + signal.SIGTERM), status
    assert_stopped_in_order(lines)
