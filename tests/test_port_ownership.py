"""Who may use a port: its owner (a thread or an actor), `connect`, `validate_port` and
`safe_connect`, with every outcome of a handover pinned by scripted `is_alive` answers.

Every child is a ``sys.executable -c`` echo program.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import pykka
import pytest

import dspex_actors as da
from dspex_actors import Port, safe_connect, validate_port

from support.ports import ECHO, Ports, py
from support.threads import outcome

# --- ownership ---------------------------------------------------------------------------------


def test_only_the_owner_may_send_receive_request_or_connect(ports: Ports) -> None:
    port = ports.open(ECHO)
    for attempt in (
        lambda: port.send(1),
        lambda: port.recv(timeout=0.01),
        lambda: port.request({"x": 1}),
        lambda: port.connect(threading.current_thread()),
    ):
        error = outcome(attempt)
        assert isinstance(error, da.PortNotOwned)
        assert error.owner is threading.current_thread()


def test_connect_hands_the_port_to_a_new_owner_thread(ports: Ports) -> None:
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


def test_an_actor_owns_the_ports_it_opens() -> None:
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


def test_connect_to_a_dead_thread_fails_with_target_dead(ports: Ports) -> None:
    port = ports.open(ECHO)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    with pytest.raises(da.ConnectFailed) as info:
        port.connect(dead)
    assert info.value.reason == "target_dead"
    assert port.owner is threading.current_thread()


# --- validate_port and safe_connect: every outcome ----------------------------------------------


def test_validate_port_returns_info_or_raises_not_a_port_not_owned_or_closed(ports: Ports) -> None:
    port = ports.open(ECHO)
    assert validate_port(port) == port.info()
    with pytest.raises(da.NotAPort):
        validate_port("not a port")
    assert isinstance(outcome(lambda: validate_port(port)), da.PortNotOwned)
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


def test_safe_connect_hands_over_a_valid_port(ports: Ports) -> None:
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


def test_safe_connect_wraps_each_validation_error_as_the_reason(ports: Ports) -> None:
    port = ports.open(ECHO)
    me = threading.current_thread()
    with pytest.raises(da.ConnectFailed) as not_a_port:
        safe_connect(42, me)
    assert isinstance(not_a_port.value.reason, da.NotAPort)
    not_owned = outcome(lambda: safe_connect(port, me))
    assert isinstance(not_owned, da.ConnectFailed)
    assert isinstance(not_owned.reason, da.PortNotOwned)
    port.close()
    with pytest.raises(da.ConnectFailed) as closed:
        safe_connect(port, me)
    assert isinstance(closed.value.reason, da.PortClosed)
    assert closed.value.__cause__ is closed.value.reason


def test_safe_connect_to_a_dead_target_is_target_dead(ports: Ports) -> None:
    port = ports.open(ECHO)
    with pytest.raises(da.ConnectFailed) as info:
        safe_connect(port, ScriptedThread([False]))
    assert info.value.reason == "target_dead"


def test_a_process_dying_between_check_and_connect_is_process_died(ports: Ports) -> None:
    port = ports.open(ECHO)

    def close_then_alive() -> bool:
        port.close()
        return True

    target = ScriptedThread([close_then_alive, True])
    with pytest.raises(da.ConnectFailed) as info:
        safe_connect(port, target)
    assert info.value.reason == "process_died"


def test_a_target_exiting_during_connect_is_connect_exited_and_the_port_returns(
    ports: Ports,
) -> None:
    port = ports.open(ECHO)
    with pytest.raises(da.ConnectExited) as info:
        safe_connect(port, ScriptedThread([True, False]))
    assert info.value.reason == "target_exited"
    assert port.owner is threading.current_thread()
    assert port.request({"still": "mine"}, timeout=10)["still"] == "mine"


def test_an_unexpected_error_during_connect_is_connect_error(ports: Ports) -> None:
    port = ports.open(ECHO)
    with pytest.raises(da.ConnectError) as info:
        safe_connect(port, ScriptedThread([True, OSError("weird")]))
    assert info.value.kind == "OSError"
    assert isinstance(info.value.reason, OSError)
