"""A port against real tiny children: frames and codecs over a pipe, bad input, stderr, options,
`Port.spawn`, the read path, and `PortActor`.

Every child is a ``sys.executable -c`` program (an echo loop, one that writes garbage, one that
stalls, a few that break the protocol in one precise way) or a `Port.spawn` handler. Who may
use a port is in test_port_ownership.py, how it ends in test_port_lifecycle.py, and ports
started around a `fork` in test_port_fork_safety.py.

White-box parts: the spawn setup-frame test shortens `SETUP_TIMEOUT` and swaps the worker's
argv in `dspex_actors._ports._launch` (a child that never reads its setup frame cannot be
asked for through `Port.spawn`), and the read-path tests wrap the port's poller to count polls.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
from typing import Any, cast

import psutil
import pykka
import pytest

import dspex_actors as da
from dspex_actors import (
    PICKLE_CODEC,
    RAW_CODEC,
    CallTimeout,
    InvalidOption,
    Port,
    PortActor,
    PortExited,
    PortInfo,
)
from dspex_actors._ports import _launch
from dspex_actors.testing import wait_for

from support.ports import ECHO, FRAME_IO, READ_TO_EOF, STALL, Ports, echo, gone, py

GARBAGE = (
    FRAME_IO
    + """
w.write(b"this is not a frame at all"); w.flush()
time.sleep(30)  # sleep-ok: a stalled child program
"""
)
BIG_FRAME = (
    FRAME_IO
    + """
write(b"x" * 100)
read()
"""
)
BAD_JSON = (
    FRAME_IO
    + """
write(b"{not json")
write(b'{"ok": true}')
read()
"""
)
WRONG_ID = (
    FRAME_IO
    + """
import json
while (d := read()) is not None:
    msg = json.loads(d)
    msg["id"] = msg["id"] + 1
    write(json.dumps(msg).encode())
"""
)
TRUNCATED = (
    FRAME_IO
    + """
w.write(struct.pack(">I", 10) + b"abc"); w.flush()
"""
)
CHATTY = (
    FRAME_IO
    + """
sys.stderr.write("warming up\\nready\\n"); sys.stderr.flush()
while (d := read()) is not None:
    write(d)
"""
)


# --- framing over a real pipe ------------------------------------------------------------------


def test_frames_round_trip_through_an_echo_child(ports: Ports) -> None:
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


def test_request_adds_an_id_and_matches_the_reply(ports: Ports) -> None:
    port = ports.open(ECHO)
    first = port.request({"command": "ping"}, timeout=10)
    second = port.request({"command": "ping"}, timeout=10)
    assert first["command"] == "ping"
    assert first["id"] != second["id"]
    assert port.request({"command": "x", "id": "mine"}, timeout=10)["id"] == "mine"


def test_the_raw_codec_carries_bytes_unchanged(ports: Ports) -> None:
    port = ports.open(ECHO, codec=RAW_CODEC)
    payload = bytes(range(256)) * 100
    port.send(payload)
    assert port.recv(timeout=10) == payload


# --- bad input ---------------------------------------------------------------------------------


def test_an_outgoing_frame_over_max_frame_is_refused_and_the_port_stays_usable(
    ports: Ports,
) -> None:
    port = ports.open(ECHO, max_frame=64)
    with pytest.raises(da.ProtocolError, match="exceeds max_frame"):
        port.send("x" * 100)
    assert port.request({"n": 1}, timeout=10)["n"] == 1


def test_an_incoming_length_over_max_frame_is_a_protocol_error_and_closes_the_port(
    ports: Ports,
) -> None:
    port = ports.open(BIG_FRAME, max_frame=64)
    with pytest.raises(da.ProtocolError, match="exceeds max_frame"):
        port.recv(timeout=10)
    with pytest.raises(da.PortClosed):
        port.recv(timeout=10)
    assert port.exit_status == -signal.SIGKILL
    assert port.info() is None


def test_garbage_bytes_on_stdout_are_a_protocol_error(ports: Ports) -> None:
    port = ports.open(GARBAGE, max_frame=1024)
    with pytest.raises(da.ProtocolError):
        port.recv(timeout=10)
    assert port.wait_exit(10) == -signal.SIGKILL


def test_invalid_json_is_a_protocol_error_and_the_next_frame_still_reads(
    ports: Ports,
) -> None:
    port = ports.open(BAD_JSON)
    with pytest.raises(da.ProtocolError, match="invalid JSON"):
        port.recv(timeout=10)
    assert port.recv(timeout=10) == {"ok": True}


def test_a_reply_with_the_wrong_id_is_a_protocol_error(ports: Ports) -> None:
    port = ports.open(WRONG_ID)
    with pytest.raises(da.ProtocolError, match="reply id mismatch"):
        port.request({"command": "ping"}, timeout=10)


def test_a_frame_truncated_by_exit_is_a_protocol_error_then_port_closed(
    ports: Ports,
) -> None:
    port = ports.open(TRUNCATED)
    with pytest.raises(da.ProtocolError, match="truncated frame"):
        port.recv(timeout=10)
    with pytest.raises(da.PortClosed, match="status 0"):
        port.recv(timeout=10)


def test_request_needs_a_mapping_on_a_json_open_port(ports: Ports) -> None:
    port = ports.open(ECHO)
    with pytest.raises(da.ProtocolError, match="needs a mapping"):
        port.request(["not", "a", "mapping"])


# --- stderr ------------------------------------------------------------------------------------


def test_stderr_is_captured_separately_and_logged_with_the_port_id(
    ports: Ports, records: Any
) -> None:
    port = ports.open(CHATTY)
    assert port.request({"n": 1}, timeout=10)["n"] == 1  # stdout frames are intact
    wait_for(lambda: port.stderr_tail() == ["warming up", "ready"], timeout=10)
    lines = [r for r in records.of("port_stderr") if r["port"] == str(port)]
    assert [r["line"] for r in lines] == ["warming up", "ready"]


# --- options -------------------------------------------------------------------------------------


ENV_AND_CWD = (
    FRAME_IO
    + """
import json
write(json.dumps({"var": os.environ.get("PORT_TEST_VAR"), "cwd": os.getcwd()}).encode())
read()
"""
)


def test_open_passes_env_and_cwd_to_the_program(ports: Ports, tmp_path: Any) -> None:
    env = {**os.environ, "PORT_TEST_VAR": "from-the-test"}
    port = ports.open(ENV_AND_CWD, env=env, cwd=str(tmp_path))
    reply = port.recv(timeout=10)
    assert reply == {"var": "from-the-test", "cwd": os.path.realpath(tmp_path)}


def test_bad_options_raise_invalid_option_before_anything_starts() -> None:
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


def test_a_max_frame_the_prefix_cannot_express_is_refused_before_anything_starts() -> None:
    """``max_frame`` above 2**32 - 1 is `InvalidOption` for `Port.open`, `Port.spawn` and
    `ProcessPool.start`; 2**32 - 1 itself is accepted."""
    with pytest.raises(InvalidOption, match="max_frame"):
        Port.open([sys.executable, "-c", STALL], max_frame=2**32)
    with pytest.raises(InvalidOption, match="max_frame"):
        Port.spawn(echo, max_frame=2**32)
    with pytest.raises(InvalidOption, match="max_frame"):
        da.ProcessPool.start(target=echo, pool_size=1, max_frame=2**32)
    port = Port.open([sys.executable, "-c", READ_TO_EOF], max_frame=2**32 - 1)
    port.close(timeout=10)
    assert port.exit_status == 0


# --- Port.spawn ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_spawn_serves_a_closure_and_reports_handler_errors(ports: Ports, method: str) -> None:
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


def test_a_handler_that_cannot_be_pickled_is_refused_before_anything_starts() -> None:
    unpicklable = (n for n in range(3))  # a generator cannot cross a process boundary
    with pytest.raises(da.InvalidOption, match="picklable"):
        Port.spawn(lambda request, gen: request, unpicklable)


def test_spawn_with_the_pickle_codec_carries_any_value(ports: Ports) -> None:
    port = ports.spawn(lambda request: {frozenset(request)}, codec=PICKLE_CODEC)
    assert port.request({1, 2}, timeout=30) == {frozenset({1, 2})}


def test_spawn_gives_up_on_a_child_that_never_reads_its_setup_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 2 MiB handler (more than a pipe holds) sent to a child that never reads:
    `CallTimeout` after the setup timeout, and the child is killed and reaped."""
    monkeypatch.setattr(_launch, "SETUP_TIMEOUT", 0.5)
    monkeypatch.setattr(_launch, "spawn_argv", lambda: [sys.executable, "-c", STALL])
    blob = os.urandom(2 << 20)

    def handler(request: Any) -> Any:
        return len(blob)

    before = {child.pid for child in psutil.Process().children()}
    with pytest.raises(CallTimeout, match="spawn"):
        Port.spawn(handler)
    # Killed and reaped before spawn raised: no child of ours is left, not even a zombie.
    assert {child.pid for child in psutil.Process().children()} == before


def repeat(request: Any) -> Any:
    text, times = request
    return text * times


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_a_reply_larger_than_a_pipe_holds_arrives_whole(ports: Ports, start_method: str) -> None:
    port = Port.spawn(repeat, start_method=start_method, max_frame=8 << 20)
    ports.append(port)
    big = port.request(["ab", 1 << 20], timeout=30)  # 2 MiB of JSON string: many writes
    assert big == "ab" * (1 << 20)
    assert port.request(["c", 3], timeout=30) == "ccc"  # the stream is still in step


# --- the read path: no poll when the reply is there, a wait when it is not --------------------


# Writes the first 3 bytes of a 5-byte frame, waits for SIGUSR1, then writes the rest.
SPLIT_FRAME = """
import signal, struct, sys
signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
out = sys.stdout.buffer
frame = struct.pack(">I", 5) + b'"abc"'
out.write(frame[:3]); out.flush()
signal.sigwait([signal.SIGUSR1])
out.write(frame[3:]); out.flush()
sys.stdin.buffer.read()
"""


class PollSpy:
    """Wraps a port's poller: counts its polls and sets `polled` on each."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.polls = 0
        self.polled = threading.Event()

    def poll(self, ms: int) -> Any:
        self.polls += 1
        self.polled.set()
        return self.real.poll(ms)

    def register(self, *args: Any) -> None:
        self.real.register(*args)

    def unregister(self, fd: int) -> None:
        self.real.unregister(fd)


def test_a_reply_already_in_the_pipe_is_read_without_polling(ports: Ports) -> None:
    port = Port.spawn(echo)
    ports.append(port)
    port.request("warm", timeout=30)
    spy = PollSpy(port._poller)
    port._poller = spy  # type: ignore[assignment]
    port.send([99, "hello"], timeout=5)  # the envelope request() sends: [id, request]
    fd = cast(int, port._stdout_fd)
    assert select.select([fd], [], [], 10)[0] == [fd], "no reply within 10 s"
    assert port.recv(timeout=5) == [99, True, "hello"]
    assert spy.polls == 0
    # With nothing there, recv waits (polls) and still times out as it should.
    with pytest.raises(CallTimeout):
        port.recv(timeout=0.05)
    assert spy.polls >= 1


def test_a_frame_arriving_in_parts_is_waited_for_and_read_whole(ports: Ports) -> None:
    port = Port.open([sys.executable, "-c", SPLIT_FRAME])
    ports.append(port)
    spy = PollSpy(port._poller)
    port._poller = spy  # type: ignore[assignment]
    fd = cast(int, port._stdout_fd)
    assert select.select([fd], [], [], 10)[0] == [fd], "no first part within 10 s"

    def finish_the_frame() -> None:
        # recv has read the first part and found nothing more: now the rest may come.
        if spy.polled.wait(10):
            os.kill(port.os_pid, signal.SIGUSR1)

    helper = threading.Thread(target=finish_the_frame)
    helper.start()
    try:
        assert port.recv(timeout=10) == "abc"
    finally:
        spy.polled.set()
        helper.join(10)
    assert spy.polls >= 1


# --- PortActor -----------------------------------------------------------------------------------


def test_a_port_actor_exits_with_port_exited_when_its_process_dies() -> None:
    ref = PortActor.start(argv=py(ECHO))
    pid = ref.proxy().os_pid().get(timeout=10)
    assert ref.proxy().request({"n": 5}).get(timeout=10)["n"] == 5
    os.kill(pid, signal.SIGKILL)
    reason = da.wait_exit(ref, 10)
    assert isinstance(reason, PortExited)
    assert reason.status == -signal.SIGKILL
    assert not da.is_normal_exit(reason)


def test_stopping_or_killing_a_port_actor_closes_its_process() -> None:
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


def test_a_supervisor_restarts_a_port_actor_whose_process_crashed() -> None:
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


@pytest.mark.parametrize("timeout", [float("nan"), "5", -1])
def test_a_bad_timeout_is_refused_before_anything_is_sent(ports: Ports, timeout: Any) -> None:
    """It was a `ValueError` after the request was written: the handler ran, and the port's
    next request read that reply (`ResponseMismatch`)."""
    port = ports.spawn(echo)
    for method in (port.request, port.send):
        with pytest.raises(da.InvalidOption):
            method({"n": 1}, timeout=timeout)
    with pytest.raises(da.InvalidOption):
        port.recv(timeout=timeout)
    with pytest.raises(da.InvalidOption):
        port.ping(timeout=timeout)
    assert port.request({"n": 2}, timeout=10) == {"n": 2}  # nothing was sent before


def test_a_request_whose_id_is_none_gets_a_fresh_id(ports: Ports) -> None:
    """It was sent with a second "id" key, null, which the program answered under."""
    port = ports.open(ECHO)
    reply = port.request({"id": None, "op": "x"}, timeout=10)
    assert reply["op"] == "x"
    assert reply["id"] is not None
