"""The Ray backend: `ProcessPool` and `SessionPool` workers as Ray actors, supervised as local
workers are.

One local Ray instance serves the whole module (``ray.init(num_cpus=2)`` in a module fixture,
shut down at its end). Each test checks a guarantee of the local backend on Ray actors: the
same replies, a killed actor (``ray.kill``, or SIGKILL of its process) removed and replaced by
the pool, the call it was serving raising `WorkerCrashed` (retried with `retries`), no stale
reply after a timeout, `stop()` ending every actor, bad options refused before anything
starts, sessions rebuilt on a replacement worker, and the actors of a driver that dies dying
with it. Targets are defined inside the tests: they cross to the actors by value (dill), so
Ray's worker processes need not import this module. Every wait is bounded; processes are
watched by pid (a pidfd).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

ray = pytest.importorskip(
    "ray", reason="the Ray backend needs Ray: pip install 'dspex-actors[ray]'"
)

import dspex_actors as da  # noqa: E402
from dspex_actors.bridge import SessionPool  # noqa: E402
from dspex_actors.testing import wait_for  # noqa: E402

from support.processes import wait_gone  # noqa: E402
from support.sessions import create_program, unique, worker_pids  # noqa: E402
from support.threads import in_thread  # noqa: E402

WAIT = 60.0  # bound for actor starts: a new Ray worker process on a loaded machine
MOCK_WORKER = [sys.executable, "-m", "dspex_actors.bridge.worker", "--backend", "mock"]


# --- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """A local Ray instance for the module (its processes are the module's, not a test's)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


class RayPools:
    """Starts Ray-backed pools for one test and stops those still running at its end."""

    def __init__(self) -> None:
        self.pools: list[da.ProcessPool] = []

    def start(self, size: int = 2, **options: Any) -> da.ProcessPool:
        options.setdefault("backend", "ray")
        pool = da.ProcessPool.start(pool_size=size, **options)
        self.pools.append(pool)
        wait_for(lambda: settled(pool, size), timeout=WAIT)
        return pool

    def session(self, size: int = 1, **options: Any) -> SessionPool:
        pool = SessionPool.start(
            pool_size=size, worker_argv=MOCK_WORKER, backend="ray", name=None, **options
        )
        self.pools.append(pool)
        wait_for(lambda: settled(pool, size), timeout=WAIT)
        return pool

    def close(self) -> None:
        for pool in self.pools:
            if pool.is_alive():
                with contextlib.suppress(da.NoProc, da.CallTimeout):
                    pool.stop(timeout=WAIT)


@pytest.fixture
def pools() -> Iterator[RayPools]:
    p = RayPools()
    try:
        yield p
    finally:
        p.close()


def settled(pool: da.ProcessPool, size: int) -> bool:
    s = da.Pool.status(pool)
    return (s.idle, s.busy, s.initializing) == (size, 0, 0)


def leased_ports(pool: da.ProcessPool, n: int) -> list[Any]:
    """The ports of `n` workers, leased all at once (so they are distinct) and given back."""
    with contextlib.ExitStack() as stack:
        return [stack.enter_context(pool.lease(None, timeout=WAIT)).client_state for _ in range(n)]


def replaced(pool: da.ProcessPool, removed: int, size: int = 2) -> bool:
    """The pool has removed `removed` workers in all and is back at full size, all idle."""
    return settled(pool, size) and da.Pool.status(pool).workers_removed == removed


def marker_target() -> Callable[[Any], Any]:
    """A target that answers ``"pid"`` with its pid and a ``{"once": path}`` request by
    writing its pid to `path` and hanging until killed, unless `path` exists already (then
    it answers ``"again"``): a call whose first worker dies succeeds on its retry."""

    def target(request: Any) -> Any:
        import os
        import threading

        if request == "pid":
            return os.getpid()
        path = request["once"]
        if os.path.exists(path):
            return "again"
        with open(path + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(path + ".tmp", path)
        threading.Event().wait()  # until the actor is killed
        return None

    return target


def hanging_pid(path: Path) -> int:
    """The pid a `marker_target` worker wrote once it got the request (waits for it)."""
    wait_for(path.exists, timeout=WAIT)
    return int(path.read_text())


# --- replies -----------------------------------------------------------------------------------


def test_a_ray_worker_answers_exactly_as_a_local_worker() -> None:
    def target(request: Any) -> Any:
        import os

        if request == "pid":
            return os.getpid()
        if request == "boom":
            raise KeyError("no such thing")
        return {"echo": request, "pair": (1, 2)}

    local = da.ProcessPool.start(target=target, pool_size=1)
    remote = da.ProcessPool.start(target=target, pool_size=1, backend="ray")
    try:
        requests = [{"n": 1}, [1, "a", None], "text", 3.5]
        assert [remote.call(r, timeout=WAIT) for r in requests] == [
            local.call(r, timeout=WAIT) for r in requests
        ]
        errors = []
        for pool in (local, remote):
            with pytest.raises(da.RemoteError) as caught:
                pool.call("boom", timeout=WAIT)
            errors.append((caught.value.kind, caught.value.message))
        assert errors[0] == errors[1] == ("KeyError", "'no such thing'")
        # The target runs in the actor's own process, not here.
        assert remote.call("pid", timeout=WAIT) not in (os.getpid(), local.call("pid"))
        assert asyncio.run(remote.acall({"n": 2}, timeout=WAIT)) == local.call({"n": 2})
        assert da.Pool.status(remote).workers_removed == 0  # an error reply keeps the worker
    finally:
        local.stop()
        remote.stop()


def test_a_request_ray_cannot_encode_is_refused_before_any_worker(pools: RayPools) -> None:
    pool = pools.start(1, target=lambda request: request)
    with pytest.raises(da.ProtocolError):
        pool.call({"x": object()}, timeout=WAIT)
    assert da.Pool.status(pool).checkouts == 0


# --- deaths ------------------------------------------------------------------------------------


def test_an_idle_actor_killed_with_ray_kill_is_replaced(pools: RayPools) -> None:
    pool = pools.start(2, target=marker_target())
    victim, survivor = leased_ports(pool, 2)
    ray.kill(victim._actor)
    wait_for(lambda: replaced(pool, 1), timeout=WAIT)
    assert victim.exit_status == -signal.SIGKILL  # killed: as a SIGKILL is reported locally
    new = {port.os_pid for port in leased_ports(pool, 2)}
    assert survivor.os_pid in new
    assert victim.os_pid not in new
    assert wait_gone(victim.os_pid, WAIT)


def test_a_call_whose_actor_process_is_sigkilled_raises_worker_crashed(
    pools: RayPools, tmp_path: Path
) -> None:
    pool = pools.start(2, target=marker_target())
    path = tmp_path / "once"
    call = in_thread(lambda: pool.call({"once": str(path)}, timeout=WAIT))
    os.kill(hanging_pid(path), signal.SIGKILL)
    error = call.exception(WAIT)
    assert isinstance(error, da.WorkerCrashed)
    assert error.delivered
    wait_for(lambda: replaced(pool, 1), timeout=WAIT)
    assert pool.call({"once": str(path)}, timeout=WAIT) == "again"


def test_a_call_whose_actor_dies_is_retried_with_retries(pools: RayPools, tmp_path: Path) -> None:
    pool = pools.start(2, target=marker_target(), retries=1)
    path = tmp_path / "once"
    call = in_thread(lambda: pool.call({"once": str(path)}, timeout=WAIT))
    victim = hanging_pid(path)
    os.kill(victim, signal.SIGKILL)
    assert call.result(WAIT) == "again"  # the retry ran on another worker
    wait_for(lambda: replaced(pool, 1), timeout=WAIT)
    assert victim not in {port.os_pid for port in leased_ports(pool, 2)}


def test_an_awaited_call_whose_actor_is_killed_raises_worker_crashed(
    pools: RayPools, tmp_path: Path
) -> None:
    pool = pools.start(1, target=marker_target())
    path = tmp_path / "once"
    call = in_thread(lambda: asyncio.run(pool.acall({"once": str(path)}, timeout=WAIT)))
    os.kill(hanging_pid(path), signal.SIGKILL)
    assert isinstance(call.exception(WAIT), da.WorkerCrashed)
    wait_for(lambda: replaced(pool, 1, size=1), timeout=WAIT)


def test_a_timed_out_call_removes_its_worker_and_no_stale_reply_reaches_anyone(
    pools: RayPools, tmp_path: Path
) -> None:
    def target(request: Any) -> Any:
        import os
        import time

        if isinstance(request, dict):  # answers once `release` exists, late
            while not os.path.exists(request["release"]):
                time.sleep(0.01)  # sleep-ok: a worker's gate, polled; the test opens it
            return "stale"
        return request

    pool = pools.start(1, target=target)
    release = tmp_path / "release"
    with pytest.raises(da.CallTimeout):
        pool.call({"release": str(release)}, timeout=0.5)
    release.touch()  # the late reply could come now, if the worker were still there
    wait_for(lambda: replaced(pool, 1, size=1), timeout=WAIT)
    assert [pool.call(n, timeout=WAIT) for n in range(5)] == list(range(5))


def test_stop_kills_every_actor_the_pool_created(pools: RayPools) -> None:
    pool = pools.start(2, target=marker_target())
    first = {port.os_pid for port in leased_ports(pool, 2)}
    ray.kill(leased_ports(pool, 1)[0]._actor)  # one replacement: three actors in all
    wait_for(lambda: replaced(pool, 1), timeout=WAIT)
    pids = first | {port.os_pid for port in leased_ports(pool, 2)}
    assert len(pids) == 3
    pool.stop()
    assert all(wait_gone(pid, WAIT) for pid in pids)


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"ray_options": {"num_cpus": 1}}, "ray_options"),  # backend="local"
        ({"backend": "dask"}, "backend"),
        ({"backend": "ray", "ray_options": [("num_cpus", 1)]}, "ray_options"),
        ({"backend": "ray", "ray_options": {"max_restarts": 3}}, "ray_options"),
        ({"backend": "ray", "ray_options": {"lifetime": "detached"}}, "ray_options"),
        ({"backend": "ray", "ray_options": {"no_such_option": 1}}, "ray_options"),
        ({"backend": "ray", "ray_options": {"num_cpus": "one"}}, "ray_options"),
        ({"backend": "ray", "ray_options": {"max_pending_calls": 1}}, "ray_options"),
        ({"backend": "ray", "ray_options": {"scheduling_strategy": "bogus"}}, "ray_options"),
        ({"backend": "ray", "start_method": "spawn"}, "start_method"),
        ({"backend": "ray", "max_memory": 10**9}, "max_memory"),
    ],
)
def test_bad_backend_options_are_refused_before_anything_starts(
    options: dict[str, Any], option: str
) -> None:
    before = len(pykka.ActorRegistry.get_all())
    with pytest.raises(da.InvalidOption) as caught:
        da.ProcessPool.start(target=lambda request: request, pool_size=1, **options)
    assert caught.value.option == option
    with pytest.raises(da.InvalidOption):
        SessionPool.start(pool_size=1, name=None, worker_argv=MOCK_WORKER, **options)
    assert len(pykka.ActorRegistry.get_all()) == before


def test_ray_options_reach_each_worker_actor(pools: RayPools) -> None:
    def target(request: Any) -> Any:
        import ray

        return ray.get_runtime_context().get_assigned_resources()  # type: ignore[no-untyped-call]

    pool = pools.start(1, target=target, ray_options={"num_cpus": 0.5})
    assert pool.call(None, timeout=WAIT) == {"CPU": 0.5}


def test_a_pool_started_outside_the_main_thread_needs_ray_initialised_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ray ties its local processes to the thread that starts them: only the main thread may.
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    error = in_thread(
        lambda: da.ProcessPool.start(target=lambda r: r, pool_size=1, backend="ray")
    ).exception(WAIT)
    assert isinstance(error, da.InvalidOption)
    assert error.option == "backend"


# --- sessions ----------------------------------------------------------------------------------


def test_a_session_keeps_its_programs_across_a_killed_ray_worker(pools: RayPools) -> None:
    pool = pools.session(1)
    session = unique()
    create_program(pool, session, "qa")
    run = {"program_id": "qa", "inputs": {"question": "2+2?"}}
    before = pool.execute_in_session(session, "execute_program", run)
    (pid,) = worker_pids(pool).values()
    os.kill(pid, signal.SIGKILL)  # the actor's process; its program dies with it
    wait_for(lambda: replaced(pool, 1, size=1), timeout=WAIT)
    assert pid not in worker_pids(pool).values()
    after = pool.execute_in_session(session, "execute_program", run)
    # Rebuilt on the replacement: the same program gives the same answer.
    assert after["outputs"] == before["outputs"]
    assert after["program_id"] == "qa"
    listed = pool.execute_in_session(session, "list_programs")
    assert [p["id"] for p in listed["programs"]] == ["qa"]
    assert pool.status().pool.workers_removed == 1
    assert wait_gone(pid, WAIT)


# --- the driver --------------------------------------------------------------------------------

_DRIVER = textwrap.dedent(
    """
    import logging, os, sys, threading
    import dspex_actors as da

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("dspex_actors").addHandler(handler)
    pool = da.ProcessPool.start(target=lambda r: os.getpid(), pool_size=2, backend="ray")
    pids = {pool.call(None, timeout=60) for _ in range(50)}
    with pool.lease(None, timeout=60) as a, pool.lease(None, timeout=60) as b:
        pids = {a.client_state.os_pid, b.client_state.os_pid}
    print(any("ray.init()" in m for m in records), *pids, flush=True)
    threading.Event().wait()  # until killed
    """
)


def test_the_actors_of_a_driver_that_dies_die_with_it() -> None:
    # A second driver joins this cluster through RAY_ADDRESS, without calling ray.init
    # itself (the pool does, and says so), then is SIGKILLed: Ray ends the actors it owned.
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "RAY_ADDRESS": address}
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER], stdout=subprocess.PIPE, env=env, text=True
    )
    try:
        assert driver.stdout is not None
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(driver.stdout.readline()))  # type: ignore[union-attr]
        reader.start()
        reader.join(WAIT * 2)
        logged, *pids = line[0].split()
        assert logged == "True"
        assert len(pids) == 2
    finally:
        driver.kill()
        driver.wait(WAIT)
        if driver.stdout is not None:
            driver.stdout.close()
    assert all(wait_gone(int(pid), WAIT) for pid in pids)


_ONE_SHOT = textwrap.dedent(
    """
    import os, struct, sys
    header = sys.stdin.buffer.read(4)
    payload = sys.stdin.buffer.read(struct.unpack(">I", header)[0])
    os.write(1, header + payload)  # the request, echoed: it carries its id
    sys.exit(3)
    """
)


def test_a_program_that_exits_in_its_actor_is_replaced_with_its_status(pools: RayPools) -> None:
    pool = pools.start(1, argv=[sys.executable, "-c", _ONE_SHOT])
    (port,) = leased_ports(pool, 1)
    assert pool.call({"x": 1}, timeout=WAIT) == {"x": 1, "id": 1}
    wait_for(lambda: replaced(pool, 1, size=1), timeout=WAIT)
    assert port.exit_status == 3  # the program's own status, from its actor's watch
    assert wait_gone(port.os_pid, WAIT)  # its actor is killed once its program is gone


def test_importing_dspex_actors_does_not_import_ray() -> None:
    check = "import sys, dspex_actors, dspex_actors.bridge; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, timeout=WAIT, check=True
    )
    assert out.stdout.strip() == "False"


def test_a_pickled_request_or_reply_that_cannot_be_rebuilt_fails_alone_as_locally(
    pools: RayPools,
) -> None:
    """With `PICKLE_CODEC`, a request the actor cannot unpickle is a `RemoteError`, a reply
    this process cannot unpickle an `UndecodableReply`; the worker stays, as a local one
    does."""

    def rebuild_only_in(pid: int) -> Any:
        import os

        if os.getpid() != pid:
            raise LookupError(f"only in process {pid}")
        return pid

    class OnlyHere:
        def __reduce__(self) -> tuple[Any, tuple[int]]:
            import os

            return rebuild_only_in, (os.getpid(),)

    def target(request: Any) -> Any:
        return OnlyHere() if request == "only-here" else request

    pool = pools.start(1, target=target, codec=da.PICKLE_CODEC)
    assert pool.call("before", timeout=WAIT) == "before"
    # Here the actor cannot even import this test module, which the pickle names.
    with pytest.raises(da.RemoteError, match="cannot unpickle") as caught:
        pool.call(OnlyHere(), timeout=WAIT)
    assert caught.value.kind == "ProtocolError"
    with pytest.raises(da.UndecodableReply, match="only in process"):
        pool.call("only-here", timeout=WAIT)
    assert pool.call("after", timeout=WAIT) == "after"
    assert da.Pool.status(pool).workers_removed == 0
