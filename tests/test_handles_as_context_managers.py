"""Every handle a `start` returns is a context manager: leaving the block stops the actor.

- ``with Pool.start(...) as pool``: the pool is stopped (its default reason) and has exited
  when the block is left, also when the block raised (the exception goes on);
- an actor stopped inside the block is no error at the exit;
- ``with Supervisor.start(...)``: the tree is shut down, children first;
- ``async with ProcessPool.start(...)``: stopped without blocking the loop; its worker
  processes are gone.
"""

from __future__ import annotations

import asyncio
import os

import pykka
import pytest

import dspex_actors as da
from dspex_actors.testing import EchoWorker

from support.processes import wait_gone

pytestmark = pytest.mark.leak_check


class Quiet(da.Actor):
    def on_receive(self, message: object) -> object:
        return message


def test_leaving_the_block_stops_the_pool_and_waits_for_its_exit() -> None:
    with da.Pool.start(EchoWorker, pool_size=1) as pool:
        ref = pool.actor_ref
        assert pool.status().pool_size == 1
    assert not ref.is_alive()
    assert da.wait_exit(ref, 0) is da.NORMAL


def test_a_block_that_raises_still_stops_the_actor_and_the_error_goes_on() -> None:
    pool = da.Pool.start(EchoWorker, pool_size=1)

    def use() -> None:
        with pool:
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        use()
    assert not pool.is_alive()


def test_an_actor_stopped_inside_the_block_is_no_error_at_its_exit() -> None:
    with da.Pool.start(EchoWorker, pool_size=1) as pool:
        pool.stop()
    with pytest.raises(da.NoProc):
        pool.stop()  # it is really gone: the exit did not start another one


def test_leaving_a_supervisors_block_shuts_the_tree_down() -> None:
    with da.Supervisor.start([Quiet.child_spec(id="quiet")]) as sup:
        [child] = sup.which_children()
        child_ref = child.ref
        assert isinstance(child_ref, pykka.ActorRef)
        sup_ref = sup.actor_ref
    assert not child_ref.is_alive()
    assert da.wait_exit(sup_ref, 0) is da.SHUTDOWN
    assert da.wait_exit(child_ref, 0) is da.SHUTDOWN


def pid_of(_request: object) -> int:
    return os.getpid()


def test_async_with_stops_a_process_pool_and_its_workers() -> None:
    async def main() -> tuple[int, da.ProcessPool]:
        async with da.ProcessPool.start(target=pid_of, pool_size=1) as pool:
            return await pool.acall(None, timeout=30), pool

    pid, pool = asyncio.run(main())
    assert not pool.is_alive()
    assert wait_gone(pid, 10), "the worker outlived its pool"
