"""Regressions found reviewing the ports layer (issue 5, DESIGN §3.5): ids prr_01...

Every child is real: a ``sys.executable -c`` program or a `Port.spawn` handler.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from dspex_actors import Port
from dspex_actors._errors import CallTimeout, InvalidOption, PortClosed, ProtocolError
from dspex_actors._ports._framing import JSON_CODEC, PICKLE_CODEC, RAW_CODEC
from dspex_actors._ports._process_pool import ProcessPool
from dspex_actors.testing import wait_for

STALL = "import time; time.sleep(30)"  # sleep-ok: a stalled child program that never reads


def echo(request: Any) -> Any:
    return request


def test_prr_01_a_fork_worker_started_during_another_ones_fork_does_not_hide_its_death(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """prr_01: two `fork` ports started at once (a pool starts its workers concurrently).

    If B is forked while A's fork is half done, B inherits A's child-side pipe ends (and the
    write end of A's process sentinel); then A's SIGKILL is never reported while B lives.
    """
    real_fork = os.fork
    first = threading.current_thread()
    b_forked = threading.Event()
    ports: list[Port] = []
    errors: list[BaseException] = []
    started: list[threading.Thread] = []

    def start_b() -> None:
        try:
            ports.append(Port.spawn(echo, start_method="fork", owner=first))
        except BaseException as exc:
            errors.append(exc)

    def fork() -> int:
        if threading.current_thread() is first and not started:
            # A's pipes exist, its fork has not happened: start B now and give it a moment.
            thread = threading.Thread(target=start_b, name="prr-01-b")
            started.append(thread)
            thread.start()
            b_forked.wait(1.0)  # never set once forks are serialised: B waits for A
        pid = real_fork()
        if pid != 0 and threading.current_thread() is not first:
            b_forked.set()
        return pid

    monkeypatch.setattr(os, "fork", fork)
    a = Port.spawn(echo, start_method="fork")
    try:
        started[0].join(30)
        assert not started[0].is_alive()
        assert not errors
        assert len(ports) == 1
        b = ports[0]
        assert a.request("a", timeout=10) == "a"
        assert b.request("b", timeout=10) == "b"
        a.kill()
        try:
            status = a.wait_exit(5.0)
        except CallTimeout:
            status = None
        assert status == -9, "A's death was never reported while B was alive"
        with pytest.raises(PortClosed):
            a.request("after", timeout=5)
    finally:
        for port in ports:  # B first: it may hold A's pipes open
            port.kill()
            port.close(1.0)
        a.kill()
        a.close(1.0)


def start_thread(fn: Callable[[], Any], name: str) -> tuple[threading.Thread, list[Any]]:
    """Run `fn` in a new thread; the list gets its result or the exception it raised."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread, out


def test_prr_02_close_stops_a_process_that_stalls_a_send_without_timeout() -> None:
    """prr_02: `close(timeout)` from another thread is bounded even while the owner is stuck
    in ``send(obj, timeout=None)`` to a process that never reads stdin."""
    port = Port.open([sys.executable, "-c", STALL])
    port_ready = threading.Event()

    def send_forever() -> None:
        port_ready.wait(10)
        port.send("x" * (1 << 20), timeout=None)  # far more than a pipe holds

    sender, sender_out = start_thread(send_forever, "prr-02-sender")
    port._reclaim(sender)  # the sender thread is the owner
    port_ready.set()
    closer: threading.Thread | None = None
    try:
        # 1 MiB never fits in the pipe: once the send holds its lock, it is stuck.
        assert wait_for(port._send_lock.locked, timeout=10)
        closer, _ = start_thread(lambda: port.close(timeout=0.5), "prr-02-closer")
        closer.join(15)
        assert not closer.is_alive(), "close() hung behind a stalled send"
        assert port.info() is None
        assert port.exit_status is not None
        sender.join(10)
        assert not sender.is_alive()
        assert len(sender_out) == 1
        assert isinstance(sender_out[0], PortClosed)
    finally:
        port.kill()  # unblocks a stuck send (EPIPE), hence a stuck close
        sender.join(10)
        if closer is not None:
            closer.join(10)
        port.close(1.0)


HOLDS_FIRST_REPLY = """
import json, struct, sys
r, w = sys.stdin.buffer, sys.stdout.buffer
def read():
    h = r.read(4)
    return None if len(h) < 4 else json.loads(r.read(struct.unpack(">I", h)[0]))
def write(msg):
    data = json.dumps(msg).encode()
    w.write(struct.pack(">I", len(data)) + data)
    w.flush()
held = []
while (msg := read()) is not None:
    if msg.get("hold"):
        held.append(msg)  # answered late: just before the next request's reply
        continue
    for old in held:
        write(old)
    held.clear()
    write(msg)
"""


def test_prr_03_a_lease_that_swallows_a_request_timeout_does_not_pass_the_stale_reply_on() -> None:
    """prr_03: a caller catches `CallTimeout` from `port.request` inside a checkout and checks
    the worker in with ``"ok"``; the next caller (same request id, as a protocol with its own
    ids does) must not read the late reply meant for the first one."""
    pool = ProcessPool.start([sys.executable, "-c", HOLDS_FIRST_REPLY], pool_size=1)
    try:

        def first(from_: Any, port: Port) -> tuple[Any, str]:
            with pytest.raises(CallTimeout):
                port.request({"id": "q", "n": 1, "hold": True}, timeout=0.2)
            return None, "ok"  # the caller swallowed the timeout

        pool.checkout(None, first, timeout=10)

        def second(from_: Any, port: Port) -> tuple[Any, str]:
            return port.request({"id": "q", "n": 2}, timeout=10), "ok"

        assert pool.checkout(None, second, timeout=10)["n"] == 2
    finally:
        pool.stop()


def test_prr_04_the_json_codec_turns_a_too_deeply_nested_value_into_protocol_error() -> None:
    """prr_04: `Codec.decode`/`encode` raise `ProtocolError` for what they cannot handle; a peer
    writing ``[[[[...`` (or a caller passing a deeply nested value) must not leak
    `RecursionError`."""
    with pytest.raises(ProtocolError):
        JSON_CODEC.decode(b"[" * 100_000)
    nested: list[Any] = []
    for _ in range(100_000):
        nested = [nested]
    with pytest.raises(ProtocolError):
        JSON_CODEC.encode(nested)


@pytest.mark.parametrize(
    "options",
    [
        {"target": echo, "max_frame": 0},
        {"target": echo, "codec": "json"},
        {"target": echo, "codec": RAW_CODEC},
        {"argv": [sys.executable, "-c", STALL], "codec": PICKLE_CODEC},
    ],
    ids=["max_frame_0", "codec_not_a_codec", "raw_codec_for_target", "pickle_for_argv"],
)
def test_prr_05_process_pool_start_refuses_a_bad_max_frame_or_codec_before_starting_anything(
    options: dict[str, Any],
) -> None:
    """prr_05: `ProcessPool.start` documents ``InvalidOption: a bad option; nothing was
    started``; a bad `max_frame` or codec must not become a pool whose workers fail forever."""
    try:
        pool = ProcessPool.start(pool_size=1, **options)
    except InvalidOption:
        return
    pool.stop()  # only reached without the check: do not leak the pool
    pytest.fail(f"ProcessPool.start accepted {options}")


def open_and_spawn_nested_ports(request: Any) -> list[Any]:
    """A `fork` worker's handler that itself starts ports (runs in the child)."""
    opened = Port.open([sys.executable, "-c", "pass"])
    status = opened.wait_exit(10)
    opened.close(1.0)
    spawned = Port.spawn(echo, start_method="fork")
    reply = spawned.request(request, timeout=10)
    spawned.close(1.0)
    return [status, reply]


def test_prr_06_a_fork_worker_can_start_ports_of_its_own() -> None:
    """prr_06: the child of a `fork` port inherits the parent's spawner (its thread is not
    copied) and fork guard; both must start afresh in the child, or a handler that opens a
    port of its own waits forever."""
    busy = Port.open([sys.executable, "-c", STALL])  # the parent's spawner thread is running
    worker = Port.spawn(open_and_spawn_nested_ports, start_method="fork")
    try:
        assert worker.request("nested", timeout=20) == [0, "nested"]
    finally:
        worker.kill()
        worker.close(1.0)
        busy.kill()
        busy.close(1.0)


IGNORES_SIGTERM = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "time.sleep(30)"  # sleep-ok: a child that stalls and ignores SIGTERM
)


def test_prr_07_close_gives_up_waiting_when_a_killed_process_is_never_reaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """prr_07: `close` is bounded even after SIGKILL (a process in uninterruptible sleep ignores
    it until its I/O ends). Simulated by a SIGKILL that does nothing and a short reap limit."""
    import dspex_actors._ports._port as port_module

    port = Port.open([sys.executable, "-c", IGNORES_SIGTERM])
    real_kill = Port.kill
    monkeypatch.setattr(port_module, "_REAP_LIMIT", 0.2)
    monkeypatch.setattr(port_module, "_KILL_GRACE", 0.1)
    monkeypatch.setattr(Port, "kill", lambda self: None)
    try:
        closer = threading.Thread(target=lambda: port.close(timeout=0.1), name="prr-07-closer")
        closer.start()
        closer.join(10)
        assert not closer.is_alive(), "close() waited forever for a process that never exits"
        assert port.exit_status is None  # it really is still running: close gave up waiting
    finally:
        real_kill(port)
        port.close(timeout=5)
    assert port.exit_status is not None
