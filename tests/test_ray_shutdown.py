"""A Ray-backed pool whose Ray is shut down under it: its workers end, the next request sees
it, no Ray instance is started behind the user's back, and `stop()` does not wait for actors
that went with Ray. A module of its own: its test shuts down the module's Ray instance."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

ray = pytest.importorskip(
    "ray", reason="the Ray backend needs Ray: pip install 'dspex-actors[ray]'"
)

import dspex_actors as da  # noqa: E402
from dspex_actors.testing import wait_for  # noqa: E402

WAIT = 60.0  # bound for actor starts: a new Ray worker process on a loaded machine


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()  # idempotent: the test shut it down already


def test_ray_shut_down_under_a_running_pool_ends_its_workers_without_starting_ray_again() -> None:
    def square(request: Any) -> Any:  # defined here: it crosses to the actor by value
        return request * request

    pool = da.ProcessPool.start(target=square, pool_size=1, backend="ray")
    try:
        assert pool.call(3, timeout=WAIT) == 9
        with pool.lease(None, timeout=WAIT) as lease:
            port = lease.client_state
        ray.shutdown()
        with pytest.raises((da.WorkerCrashed, da.PoolTimeout)):
            pool.call(3, timeout=2)
        assert not ray.is_initialized()  # no new local instance behind the user's back
        wait_for(lambda: port.exit_status is not None or port.info() is None, timeout=WAIT)
    finally:
        with contextlib.suppress(da.NoProc):
            pool.stop(timeout=WAIT)  # no actor to wait for: they went with Ray
    assert not ray.is_initialized()
