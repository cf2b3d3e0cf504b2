"""Ports against real tiny children (issue 5 §1 and §3): ids pt_01..pt_30.

Every child is a ``sys.executable -c`` script: an echo loop, one that exits, one that writes
garbage, one that stalls, and a few that break the protocol in one precise way.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any

import psutil
import pykka
import pytest

import dspex_actors as da
from dspex_actors import (
    PICKLE_CODEC,
    RAW_CODEC,
    Port,
    PortActor,
    PortExited,
    PortInfo,
    safe_connect,
    validate_port,
)
from dspex_actors.testing import wait_for

_IO = """
import os, struct, sys, time
r, w = sys.stdin.buffer, sys.stdout.buffer
def read():
    h = r.read(4)
    if len(h) < 4:
        return None
    return r.read(struct.unpack(">I", h)[0])
def write(data):
    w.write(struct.pack(">I", len(data)) + data)
    w.flush()
"""

ECHO = (
    _IO
    + """
while (d := read()) is not None:
    write(d)
"""
)
EXITS = "import sys; sys.exit(3)"
GARBAGE = (
    _IO
    + """
w.write(b"this is not a frame at all"); w.flush()
time.sleep(30)  # sleep-ok: a stalled child program
"""
)
STALL = "import time; time.sleep(30)"  # sleep-ok: a stalled child program
STUBBORN = (
    _IO
    + """
import signal
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = os.fork()
if child == 0:
    time.sleep(30)  # sleep-ok: a stalled child program
    os._exit(0)
write(str(child).encode())
time.sleep(30)  # sleep-ok: a stalled child program
"""
)
BIG_FRAME = (
    _IO
    + """
write(b"x" * 100)
read()
"""
)
BAD_JSON = (
    _IO
    + """
write(b"{not json")
write(b'{"ok": true}')
read()
"""
)
WRONG_ID = (
    _IO
    + """
import json
while (d := read()) is not None:
    msg = json.loads(d)
    msg["id"] = msg["id"] + 1
    write(json.dumps(msg).encode())
"""
)
TRUNCATED = (
    _IO
    + """
w.write(struct.pack(">I", 10) + b"abc"); w.flush()
"""
)
CHATTY = (
    _IO
    + """
sys.stderr.write("warming up\\nready\\n"); sys.stderr.flush()
while (d := read()) is not None:
    write(d)
"""
)


def py(script: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(script)]


class Ports:
    """Opens ports for a test and closes every one at teardown."""

    def __init__(self) -> None:
        self.ports: list[Port] = []

    def open(self, script: str, **options: Any) -> Port:
        port = Port.open(py(script), **options)
        self.ports.append(port)
        return port

    def spawn(self, handler: Any, *args: Any, **options: Any) -> Port:
        port = Port.spawn(handler, *args, **options)
        self.ports.append(port)
        return port

    def close(self) -> None:
        for port in self.ports:
            port.close(timeout=1.0)


@pytest.fixture
def ports() -> Iterator[Ports]:
    p = Ports()
    try:
        yield p
    finally:
        p.close()


def in_thread(fn: Any) -> Any:
    """Run `fn()` in a fresh thread; return its result or the exception it raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not t.is_alive()
    return out[0]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --- framing over a real pipe ------------------------------------------------------------------


def test_pt_01_frames_round_trip_through_an_echo_child(ports: Ports) -> None:
    port = ports.open(ECHO)
    port.send({"hello": [1, 2, 3]})
    port.send("second")
    assert port.recv(timeout=10) == {"hello": [1, 2, 3]}
    assert port.recv(timeout=10) == "second"
    info = port.info()
    assert isinstance(info, PortInfo)
    assert info.os_pid == port.os_pid
    assert info.owner is threading.current_thread()
    assert (info.codec, info.max_frame) == ("json", 16 * 1024 * 1024)


def test_pt_02_request_adds_an_id_and_matches_the_reply(ports: Ports) -> None:
    port = ports.open(ECHO)
    first = port.request({"command": "ping"}, timeout=10)
    second = port.request({"command": "ping"}, timeout=10)
    assert first["command"] == "ping"
    assert first["id"] != second["id"]
    assert port.request({"command": "x", "id": "mine"}, timeout=10)["id"] == "mine"


def test_pt_03_the_raw_codec_carries_bytes_unchanged(ports: Ports) -> None:
    port = ports.open(ECHO, codec=RAW_CODEC)
    payload = bytes(range(256)) * 100
    port.send(payload)
    assert port.recv(timeout=10) == payload


# --- bad input ---------------------------------------------------------------------------------


def test_pt_04_an_outgoing_frame_over_max_frame_is_refused_and_the_port_stays_usable(
    ports: Ports,
) -> None:
    port = ports.open(ECHO, max_frame=64)
    with pytest.raises(da.ProtocolError, match="exceeds max_frame"):
        port.send("x" * 100)
    assert port.request({"n": 1}, timeout=10)["n"] == 1


def test_pt_05_an_incoming_length_over_max_frame_is_a_protocol_error_and_closes_the_port(
    ports: Ports,
) -> None:
    port = ports.open(BIG_FRAME, max_frame=64)
    with pytest.raises(da.ProtocolError, match="exceeds max_frame"):
        port.recv(timeout=10)
    with pytest.raises(da.PortClosed):
        port.recv(timeout=10)
    assert port.exit_status == -signal.SIGKILL
    assert port.info() is None


def test_pt_06_garbage_bytes_on_stdout_are_a_protocol_error(ports: Ports) -> None:
    port = ports.open(GARBAGE, max_frame=1024)
    with pytest.raises(da.ProtocolError):
        port.recv(timeout=10)
    assert port.wait_exit(10) == -signal.SIGKILL


def test_pt_07_invalid_json_is_a_protocol_error_and_the_next_frame_still_reads(
    ports: Ports,
) -> None:
    port = ports.open(BAD_JSON)
    with pytest.raises(da.ProtocolError, match="invalid JSON"):
        port.recv(timeout=10)
    assert port.recv(timeout=10) == {"ok": True}


def test_pt_08_a_reply_with_the_wrong_id_is_a_protocol_error(ports: Ports) -> None:
    port = ports.open(WRONG_ID)
    with pytest.raises(da.ProtocolError, match="reply id mismatch"):
        port.request({"command": "ping"}, timeout=10)


def test_pt_09_a_frame_truncated_by_exit_is_a_protocol_error_then_port_closed(
    ports: Ports,
) -> None:
    port = ports.open(TRUNCATED)
    with pytest.raises(da.ProtocolError, match="truncated frame"):
        port.recv(timeout=10)
    with pytest.raises(da.PortClosed, match="status 0"):
        port.recv(timeout=10)


def test_pt_10_request_needs_a_mapping_on_a_json_open_port(ports: Ports) -> None:
    port = ports.open(ECHO)
    with pytest.raises(da.ProtocolError, match="needs a mapping"):
        port.request(["not", "a", "mapping"])


# --- stderr ------------------------------------------------------------------------------------


def test_pt_11_stderr_is_captured_separately_and_logged_with_the_port_id(
    ports: Ports, records: Any
) -> None:
    port = ports.open(CHATTY)
    assert port.request({"n": 1}, timeout=10)["n"] == 1  # stdout frames are intact
    wait_for(lambda: port.stderr_tail() == ["warming up", "ready"], timeout=10)
    lines = [r for r in records.of("port_stderr") if r["port"] == str(port)]
    assert [r["line"] for r in lines] == ["warming up", "ready"]


# --- ownership ---------------------------------------------------------------------------------


def test_pt_12_only_the_owner_may_send_receive_request_or_connect(ports: Ports) -> None:
    port = ports.open(ECHO)
    for attempt in (
        lambda: port.send(1),
        lambda: port.recv(timeout=0.01),
        lambda: port.request({"x": 1}),
        lambda: port.connect(threading.current_thread()),
    ):
        error = in_thread(attempt)
        assert isinstance(error, da.PortNotOwned)
        assert error.owner is threading.current_thread()


def test_pt_13_connect_hands_the_port_to_a_new_owner_thread(ports: Ports) -> None:
    port = ports.open(ECHO)
    handed = threading.Event()
    done = threading.Event()
    result: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def new_owner() -> None:
        handed.wait(10)
        result.put(port.request({"from": "thread"}, timeout=10)["from"])
        done.wait(10)

    t = threading.Thread(target=new_owner)
    t.start()
    port.connect(t)
    assert port.owner is t
    handed.set()
    assert result.get(timeout=10) == "thread"
    with pytest.raises(da.PortNotOwned):
        port.send("old owner")
    done.set()
    t.join(10)


def test_pt_14_an_actor_owns_the_ports_it_opens() -> None:
    class Opener(da.Actor):
        def open(self) -> Port:
            return Port.open(py(ECHO))

        def ask_echo(self, port: Port) -> Any:
            return port.request({"n": 7}, timeout=10)["n"]

    ref = Opener.start()
    try:
        port = ref.proxy().open().get(timeout=10)
        try:
            assert isinstance(port.owner, pykka.ActorRef)
            assert port.owner.actor_urn == ref.actor_urn
            assert ref.proxy().ask_echo(port).get(timeout=10) == 7
            with pytest.raises(da.PortNotOwned):
                port.send(1)
        finally:
            port.close()
    finally:
        ref.stop()


def test_pt_15_connect_to_a_dead_thread_fails_with_target_dead(ports: Ports) -> None:
    port = ports.open(ECHO)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    with pytest.raises(da.ConnectFailed) as info:
        port.connect(dead)
    assert info.value.reason == "target_dead"
    assert port.owner is threading.current_thread()


# --- validate_port and safe_connect: every outcome ----------------------------------------------


def test_pt_16_validate_port_returns_info_or_raises_each_seed_error(ports: Ports) -> None:
    port = ports.open(ECHO)
    assert validate_port(port) == port.info()
    with pytest.raises(da.NotAPort):
        validate_port("not a port")
    assert isinstance(in_thread(lambda: validate_port(port)), da.PortNotOwned)
    port.close()
    with pytest.raises(da.PortClosed):
        validate_port(port)


class ScriptedThread(threading.Thread):
    """A live thread whose `is_alive` answers are scripted, to pin connect races exactly."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__(target=lambda: None)
        self.answers = answers

    def is_alive(self) -> bool:
        answer = self.answers.pop(0)
        if callable(answer):
            return bool(answer())
        if isinstance(answer, BaseException):
            raise answer
        return bool(answer)


def test_pt_17_safe_connect_hands_over_a_valid_port(ports: Ports) -> None:
    port = ports.open(ECHO)
    release = threading.Event()
    target = threading.Thread(target=release.wait, args=(10,))
    target.start()
    try:
        info = safe_connect(port, target)
        assert info.owner is target
        assert port.owner is target
    finally:
        release.set()
        target.join()


def test_pt_18_safe_connect_wraps_each_validation_error_as_the_reason(ports: Ports) -> None:
    port = ports.open(ECHO)
    me = threading.current_thread()
    with pytest.raises(da.ConnectFailed) as not_a_port:
        safe_connect(42, me)
    assert isinstance(not_a_port.value.reason, da.NotAPort)
    not_owned = in_thread(lambda: safe_connect(port, me))
    assert isinstance(not_owned, da.ConnectFailed)
    assert isinstance(not_owned.reason, da.PortNotOwned)
    port.close()
    with pytest.raises(da.ConnectFailed) as closed:
        safe_connect(port, me)
    assert isinstance(closed.value.reason, da.PortClosed)
    assert closed.value.__cause__ is closed.value.reason


def test_pt_19_safe_connect_to_a_dead_target_is_target_dead(ports: Ports) -> None:
    port = ports.open(ECHO)
    with pytest.raises(da.ConnectFailed) as info:
        safe_connect(port, ScriptedThread([False]))
    assert info.value.reason == "target_dead"


def test_pt_20_a_process_dying_between_check_and_connect_is_process_died(ports: Ports) -> None:
    port = ports.open(ECHO)

    def close_then_alive() -> bool:
        port.close()
        return True

    target = ScriptedThread([close_then_alive, True])
    with pytest.raises(da.ConnectFailed) as info:
        safe_connect(port, target)
    assert info.value.reason == "process_died"


def test_pt_21_a_target_exiting_during_connect_is_connect_exited_and_the_port_returns(
    ports: Ports,
) -> None:
    port = ports.open(ECHO)
    with pytest.raises(da.ConnectExited) as info:
        safe_connect(port, ScriptedThread([True, False]))
    assert info.value.reason == "target_exited"
    assert port.owner is threading.current_thread()
    assert port.request({"still": "mine"}, timeout=10)["still"] == "mine"


def test_pt_22_an_unexpected_error_during_connect_is_connect_error(ports: Ports) -> None:
    port = ports.open(ECHO)
    with pytest.raises(da.ConnectError) as info:
        safe_connect(port, ScriptedThread([True, OSError("weird")]))
    assert info.value.kind == "OSError"
    assert isinstance(info.value.reason, OSError)


# --- death and close -----------------------------------------------------------------------------


def test_pt_23_a_thread_owner_learns_of_death_from_recv_and_on_exit(ports: Ports) -> None:
    exits: queue.SimpleQueue[PortExited] = queue.SimpleQueue()
    port = ports.open(ECHO, on_exit=exits.put)
    os.kill(port.os_pid, signal.SIGKILL)
    event = exits.get(timeout=10)
    assert event.port is port
    assert event.status == -signal.SIGKILL
    with pytest.raises(da.PortClosed, match="status -9"):
        port.recv(timeout=10)
    with pytest.raises(da.PortClosed):
        port.send("anyone there?")
    assert port.info() is None
    assert gone(port.os_pid)


def test_pt_24_an_actor_owner_gets_a_port_exited_message() -> None:
    seen: queue.SimpleQueue[Any] = queue.SimpleQueue()

    class Owner(da.Actor):
        def on_start(self) -> None:
            self.port = Port.open(py(EXITS))

        def on_receive(self, message: Any) -> Any:
            seen.put(message)
            return None

    ref = Owner.start()
    try:
        message = seen.get(timeout=10)
        assert isinstance(message, PortExited)
        assert message.status == 3
    finally:
        ref.stop()


def test_pt_25_close_is_graceful_first_the_child_exits_on_stdin_eof(ports: Ports) -> None:
    port = ports.open(ECHO)
    port.close(timeout=10)
    assert port.exit_status == 0
    assert gone(port.os_pid)
    port.close()  # idempotent


def test_pt_26_close_escalates_to_sigkill_of_the_whole_process_group(ports: Ports) -> None:
    port = ports.open(STUBBORN)
    grandchild = int(port.recv(timeout=10))
    assert psutil.pid_exists(grandchild)
    port.close(timeout=0.1)
    assert port.exit_status == -signal.SIGKILL
    assert gone(port.os_pid)
    wait_for(lambda: gone(grandchild), timeout=5)


def test_pt_27_a_stalled_child_times_out_and_a_blocked_send_gives_up(ports: Ports) -> None:
    port = ports.open(STALL)
    with pytest.raises(da.CallTimeout):
        port.request({"n": 1}, timeout=0.05)
    with pytest.raises(da.CallTimeout):
        port.send("x" * 1_000_000, timeout=0.05)  # the pipe fills; nobody reads it
    # Half a frame is in the pipe: the port killed its process rather than stay out of sync.
    assert port.wait_exit(10) == -signal.SIGKILL
    assert psutil.Process().children() == [] or all(
        c.pid != port.os_pid for c in psutil.Process().children()
    )


ENV_AND_CWD = (
    _IO
    + """
import json
write(json.dumps({"var": os.environ.get("PORT_TEST_VAR"), "cwd": os.getcwd()}).encode())
read()
"""
)


def test_pt_36_open_passes_env_and_cwd_to_the_program(ports: Ports, tmp_path: Any) -> None:
    env = {**os.environ, "PORT_TEST_VAR": "from-the-test"}
    port = ports.open(ENV_AND_CWD, env=env, cwd=str(tmp_path))
    reply = port.recv(timeout=10)
    assert reply == {"var": "from-the-test", "cwd": os.path.realpath(tmp_path)}


def test_pt_28_bad_options_raise_invalid_option_before_anything_starts() -> None:
    with pytest.raises(da.InvalidOption, match="argv"):
        Port.open("python -c pass")
    with pytest.raises(da.InvalidOption, match="argv"):
        Port.open([])
    with pytest.raises(da.InvalidOption, match="max_frame"):
        Port.open([sys.executable], max_frame=0)
    with pytest.raises(da.InvalidOption, match="codec"):
        Port.open([sys.executable], codec=PICKLE_CODEC)
    with pytest.raises(da.InvalidOption, match="start_method"):
        Port.spawn(len, start_method="telepathy")
    with pytest.raises(da.InvalidOption, match="owner"):
        Port.open([sys.executable], owner="me")  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        Port.open(["/nonexistent/program"])


# --- Port.spawn ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_pt_29_spawn_serves_a_closure_and_reports_handler_errors(ports: Ports, method: str) -> None:
    factor = 3

    def handler(request: Any, offset: int) -> Any:
        if request == "boom":
            raise ValueError("no booms")
        print("handled", request)  # goes to stderr, never into the frames
        return request * factor + offset

    port = ports.spawn(handler, 1, start_method=method)
    assert port.request(14, timeout=30) == 43
    with pytest.raises(da.RemoteError, match="no booms") as info:
        port.request("boom", timeout=10)
    assert info.value.kind == "ValueError"
    assert port.request(2, timeout=10) == 7  # still serving
    port.ping(timeout=10)
    wait_for(lambda: "handled 14" in port.stderr_tail(), timeout=10)
    port.close(timeout=10)
    assert port.exit_status == 0


def test_pt_35_a_handler_that_cannot_be_pickled_is_refused_before_anything_starts() -> None:
    unpicklable = (n for n in range(3))  # a generator cannot cross a process boundary
    with pytest.raises(da.InvalidOption, match="picklable"):
        Port.spawn(lambda request, gen: request, unpicklable)


def test_pt_30_spawn_with_the_pickle_codec_carries_any_value(ports: Ports) -> None:
    port = ports.spawn(lambda request: {frozenset(request)}, codec=PICKLE_CODEC)
    assert port.request({1, 2}, timeout=30) == {frozenset({1, 2})}


# --- PortActor -----------------------------------------------------------------------------------


def test_pt_31_a_port_actor_exits_with_port_exited_when_its_process_dies() -> None:
    ref = PortActor.start(argv=py(ECHO))
    pid = ref.proxy().os_pid().get(timeout=10)
    assert ref.proxy().request({"n": 5}).get(timeout=10)["n"] == 5
    os.kill(pid, signal.SIGKILL)
    reason = da.wait_exit(ref, 10)
    assert isinstance(reason, PortExited)
    assert reason.status == -signal.SIGKILL
    assert not da.is_normal_exit(reason)


def test_pt_32_stopping_or_killing_a_port_actor_closes_its_process() -> None:
    for end in ("stop", "kill"):
        ref = PortActor.start(target=lambda request: request)
        pid = ref.proxy().os_pid().get(timeout=10)
        assert ref.proxy().request("hi", 30).get(timeout=30) == "hi"
        if end == "stop":
            ref.stop()
        else:
            da.kill(ref)
        da.wait_exit(ref, 10)
        assert gone(pid)


def test_pt_33_a_supervisor_restarts_a_port_actor_whose_process_crashed() -> None:
    sup = da.Supervisor.start([PortActor.child_spec(argv=py(ECHO), id="echo")])
    try:
        first = sup.which_children()[0].ref
        assert isinstance(first, pykka.ActorRef)
        os.kill(first.proxy().os_pid().get(timeout=10), signal.SIGKILL)
        da.wait_exit(first, 10)

        def restarted() -> Any:
            ref = sup.which_children()[0].ref
            return ref if isinstance(ref, pykka.ActorRef) and ref is not first else None

        second = wait_for(restarted, timeout=10)
        assert second.proxy().request({"n": 1}).get(timeout=10)["n"] == 1
    finally:
        sup.stop()


# --- orphans -------------------------------------------------------------------------------------

ORPHAN_PARENT = """
import sys, time
from dspex_actors import Port
if __name__ == "__main__":
    a = Port.open([sys.executable, "-c", "import time; time.sleep(60)"])  # sleep-ok: stall
    b = Port.spawn(lambda request: request)
    c = Port.spawn(lambda request: request, start_method="fork")
    print(a.os_pid, b.os_pid, c.os_pid, flush=True)
    time.sleep(60)  # sleep-ok: a stalled child program
"""


def test_pt_34_children_exit_within_a_second_when_their_parent_is_sigkilled() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_PARENT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 3
        children = [psutil.Process(pid) for pid in pids]
        assert all(c.is_running() for c in children)
        parent.kill()
        parent.wait(10)
        # Bounded wait: within 1 s every worker is gone (or a zombie awaiting its new parent).
        wait_for(lambda: all(gone(pid) for pid in pids), timeout=1.0)
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
