"""A timeout longer than the OS can wait (``inf``, ``1e10`` s) means no deadline, on every path
that takes one: ports, pools, process pools and the bridge, blocking and awaited. (Each used to
raise a bare `OverflowError` once the request was written, and a pool lost the worker.)"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors.bridge import Bridge, SessionPool

from support.ports import Ports

pytestmark = pytest.mark.leak_check

LONG = [math.inf, 1e10, 1e9, 3e6]  # beyond what one poll may wait (about 24 days) too
MOCK_WORKER = [sys.executable, "-m", "dspex_actors.bridge.worker", "--backend", "mock"]
SIGNATURE = {"inputs": [{"name": "question"}], "outputs": [{"name": "answer"}]}


def double(n: int) -> int:
    return 2 * n


@pytest.mark.parametrize("timeout", LONG)
def test_a_port_sends_receives_and_requests_with_no_deadline(ports: Ports, timeout: float) -> None:
    port = ports.spawn(double)
    port.ping(timeout=timeout)
    assert port.request(21, timeout=timeout) == 42
    port.send([7, 4], timeout=timeout)  # an enveloped request: [id, value]
    assert port.recv(timeout=timeout) == [7, True, 8]  # [id, ok, value]


@pytest.mark.parametrize("timeout", LONG)
def test_a_process_pool_call_checkout_and_acall_take_no_deadline(timeout: float) -> None:
    with da.ProcessPool.start(target=double, pool_size=1) as pool:
        assert pool.call(21, timeout=timeout) == 42
        assert pool.checkout(None, lambda f, port: (port.request(1), "ok"), timeout) == 2
        assert asyncio.run(pool.acall(5, timeout=timeout)) == 10
        assert pool.status().workers_removed == 0


@pytest.mark.parametrize("timeout", LONG)
def test_a_session_pool_command_takes_no_deadline(timeout: float) -> None:
    with SessionPool.start(pool_size=1, worker_argv=MOCK_WORKER, name=None) as pool:
        args = {"id": "p", "signature": SIGNATURE}
        pool.execute_in_session("s", "create_program", args, timeout=timeout)
        listed = asyncio.run(pool.aexecute_in_session("s", "list_programs", timeout=timeout))
        assert listed["total_count"] == 1
        assert pool.status().pool.workers_removed == 0


def test_a_session_pools_op_timeout_may_be_unbounded() -> None:
    with SessionPool.start(
        pool_size=1, worker_argv=MOCK_WORKER, name=None, op_timeout=math.inf
    ) as pool:
        assert pool.execute_anonymous("ping")["status"] == "ok"


@pytest.mark.parametrize("timeout", LONG)
def test_a_single_bridge_command_takes_no_deadline(timeout: float) -> None:
    bridge = Bridge.start(worker_argv=MOCK_WORKER, name=None)
    try:
        create: Callable[..., Any] = bridge.execute_in_session
        create("s", "create_program", {"id": "p", "signature": SIGNATURE}, timeout=timeout)
        assert bridge.execute_in_session("s", "list_programs", timeout=timeout)["total_count"] == 1
    finally:
        bridge.stop()
