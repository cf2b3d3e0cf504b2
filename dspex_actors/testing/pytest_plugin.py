"""The dspex_actors pytest plugin (entry point ``pytest11``; active once the package is installed).

- **Leak check** (opt-in): after a test, no pykka actor started during the test may still
  run, no dspex_actors thread may be alive (but those a running pool keeps waiting for its
  next worker start: they are the pool's), and no child process started during the test may
  remain (but the fork server's next worker and a Ray instance's idle workers). Leftovers
  are stopped (so the next test starts clean) and the test fails, naming them.
  Installing dspex_actors changes no one's test run: the check runs only where it is asked
  for, with the ini option ``dspex_leak_check = true`` (every test; dspex_actors' own suite
  does this) or the marker ``@pytest.mark.leak_check`` (one test). The marker
  ``@pytest.mark.no_leak_check`` exempts a test. Waits are bounded (``dspex_leak_timeout`` ini
  option, default 5 s). It needs `psutil` (the ``test`` extra), imported only when it runs.
- **Test layers** (DSPex's three test layers): markers ``layer_1`` (pure unit), ``layer_2``
  (protocol, with a mock bridge) and ``layer_3`` (full integration, real worker processes).
  The mode comes from ``--test-mode`` or the ``TEST_MODE`` environment variable:
  ``mock_adapter`` runs layer 1, ``bridge_mock`` layers 1-2, ``full_integration`` (the
  default) everything. Skipped tests say how to run them. The ``bridge_adapter`` fixture is
  DSPex's adapter for the test's layer (`dspex_actors.bridge.adapter_for_layer`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

_MODES = {"mock_adapter": 1, "bridge_mock": 2, "full_integration": 3}
_LAYER_MODE = {1: "mock_adapter", 2: "bridge_mock", 3: "full_integration"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dspex_actors")
    group.addoption(
        "--test-mode",
        choices=sorted(_MODES),
        default=None,
        help="which test layers run: mock_adapter (1), bridge_mock (1-2), full_integration (all)",
    )
    parser.addini(
        "dspex_leak_check",
        "fail every test that leaks actors/threads/processes (default: only @leak_check tests)",
        type="bool",
        default=False,
    )
    parser.addini("dspex_leak_timeout", "seconds to wait for leftovers to end", default="5")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "layer_1: unit test (runs in every test mode)")
    config.addinivalue_line("markers", "layer_2: protocol test (TEST_MODE=bridge_mock or higher)")
    config.addinivalue_line("markers", "layer_3: integration test (TEST_MODE=full_integration)")
    config.addinivalue_line("markers", "leak_check: run the dspex_actors leak check on this test")
    config.addinivalue_line("markers", "no_leak_check: skip the dspex_actors leak check")


def _mode(config: pytest.Config) -> str:
    mode = config.getoption("--test-mode") or os.environ.get("TEST_MODE") or "full_integration"
    if mode not in _MODES:
        raise pytest.UsageError(f"TEST_MODE must be one of {sorted(_MODES)}, got: {mode!r}")
    return str(mode)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mode = _mode(config)
    level = _MODES[mode]
    for item in items:
        for layer in (2, 3):
            if item.get_closest_marker(f"layer_{layer}") and layer > level:
                needed = _LAYER_MODE[layer]
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"layer_{layer} test skipped in TEST_MODE={mode}; run it with "
                        f"TEST_MODE={needed} pytest (or --test-mode={needed})"
                    )
                )


def _framework_threads(before: set[int]) -> list[threading.Thread]:
    """The live dspex threads not in `before`, those waiting for a running pool's next job (a
    worker's start or close) left out: they belong to the pool (which may outlive a test), not
    to a test."""
    from .._threads import parked_threads

    parked = parked_threads()
    return [
        t
        for t in threading.enumerate()
        if t.ident not in before
        and t.ident not in parked
        and t.is_alive()
        and t.name.startswith("dspex")
    ]


_RAY_IDLE = "ray::IDLE"
"""The name of a Ray worker process that runs nothing: one of the Ray instance's own."""


def _children(before: set[int]) -> list[Any]:
    """The live descendants of this process not in `before`, left out those that belong to
    something that outlives a test rather than to the test: the fork server's zygote (the
    server's, which a pool kept across tests may hold), and a Ray instance's idle workers
    (Ray starts and ends them as it sees fit; an actor's process is named after its class)."""
    import psutil  # the test extra; only the leak check needs it

    from .._ports._forkserver import FORK_SERVER

    try:
        kids = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    zygote = FORK_SERVER.zygote_pid
    alive = []
    for p in kids:
        try:
            if (
                p.pid not in before
                and p.pid != zygote
                and p.status() != psutil.STATUS_ZOMBIE
                and p.name() != _RAY_IDLE
            ):
                alive.append(p)
        except psutil.Error:
            continue
    return alive


def _describe(p: Any) -> str:
    import psutil

    try:
        return f"{p.pid} {p.name()}"
    except psutil.Error:  # it exited between detection and this report
        return f"{p.pid} (exited)"


@pytest.fixture(autouse=True)
def _dspex_leak_check(request: pytest.FixtureRequest) -> Iterator[None]:
    config = request.config
    node = request.node
    wanted = config.getini("dspex_leak_check") or node.get_closest_marker("leak_check")
    if not wanted or node.get_closest_marker("no_leak_check"):
        yield
        return
    actors_before = {r.actor_urn for r in pykka.ActorRegistry.get_all()}
    threads_before = {t.ident for t in threading.enumerate() if t.ident is not None}
    procs_before = {p.pid for p in _children(set())}
    yield
    timeout = float(config.getini("dspex_leak_timeout"))
    deadline = time.monotonic() + timeout
    leaks: dict[str, list[Any]] = {}
    while True:
        actors = [r for r in pykka.ActorRegistry.get_all() if r.actor_urn not in actors_before]
        threads = _framework_threads(threads_before)
        procs = _children(procs_before)
        if not (actors or threads or procs) or time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    if actors:
        leaks["actors"] = [str(r) for r in actors]
        for r in actors:
            r.stop(block=False)
    if procs:
        leaks["child processes"] = [_describe(p) for p in procs]
        for p in procs:
            with contextlib.suppress(Exception):  # it may have exited meanwhile
                p.kill()
                p.wait(2)
    if threads:
        leaks["threads"] = [t.name for t in threads]
    if leaks:
        details = "; ".join(
            f"{kind}: {', '.join(map(str, items))}" for kind, items in leaks.items()
        )
        pytest.fail(
            f"dspex_actors leak check: still running after the test ({details})", pytrace=False
        )


@pytest.fixture
def bridge_adapter(request: pytest.FixtureRequest) -> Iterator[Any]:
    """DSPex's adapter for the test's layer: its ``layer_N`` marker, else the highest layer
    the test mode runs. Layer 1 is the in-process mock (`MockAdapter`), layer 2 a session pool
    of mock worker processes, layer 3 one of DSPy workers (both stopped after the test).
    Asked for by name only: a project that does not use it pays nothing."""
    from dspex_actors.bridge import adapter_for_layer

    layer = _MODES[_mode(request.config)]
    for candidate in (1, 2, 3):
        if request.node.get_closest_marker(f"layer_{candidate}"):
            layer = candidate
            break
    adapter = adapter_for_layer(f"layer_{layer}")
    try:
        yield adapter
    finally:
        close = getattr(adapter, "close", None)
        if close is not None:
            close()
