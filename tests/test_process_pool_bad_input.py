"""Bad input to a process pool's public calls is refused with a typed error before anything
is started or any worker is taken, and the messages say what was wrong: a missing or
misspelt option, a bad timeout to `status`, a checkout function that is not callable, a
function passed where a command line goes, a NUL byte in a command line, a relative
`preload` name, `from_ref` of what `whereis` gives for a name with no process, and an
envelope's failure without its error text."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

import dspex_actors as da
from dspex_actors import InvalidOption, ProcessPool
from dspex_actors.testing import sync

from support.lifecycle import WAIT, ProcessPools
from support.processes import PROGRAMS

ENVELOPE_WORKER = [sys.executable, os.path.join(PROGRAMS, "envelope_worker.py")]


def echo(request: Any) -> Any:
    return request


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"target": echo}, "pool_size"),
        ({"target": echo, "pool_sise": 2}, "pool_sise"),
        ({"argv": ["python", "-c", "pass\0"], "pool_size": 1}, "argv"),
        ({"target": echo, "pool_size": 1, "preload": [".json"]}, "preload"),
    ],
    ids=["missing_pool_size", "misspelt_option", "nul_in_argv", "relative_preload"],
)
def test_start_and_child_spec_refuse_bad_options_alike(
    options: dict[str, Any], option: str
) -> None:
    for build in (ProcessPool.start, ProcessPool.child_spec):
        with pytest.raises(InvalidOption) as err:
            build(**options)
        assert err.value.option == option


def test_a_function_passed_as_the_command_line_is_told_to_go_to_target() -> None:
    with pytest.raises(InvalidOption, match="target="):
        ProcessPool.start(echo, pool_size=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", ["5", -1, float("nan")])
def test_status_and_worker_stats_refuse_a_bad_timeout(
    process_pools: ProcessPools, timeout: Any
) -> None:
    pool = process_pools.start(target=echo, pool_size=1)
    for call in (pool.status, pool.worker_stats):
        with pytest.raises(InvalidOption):
            call(timeout)


def test_a_checkout_function_that_is_not_callable_takes_no_worker(
    process_pools: ProcessPools,
) -> None:
    pool = process_pools.start(target=echo, pool_size=1)
    with pytest.raises(InvalidOption, match="fn"):
        pool.checkout(None, 5)  # type: ignore[arg-type]
    sync(pool.actor_ref)
    status = pool.status()
    assert (status.checkouts, status.workers_removed) == (0, 0)
    assert pool.call("still here", timeout=WAIT) == "still here"


def test_from_ref_of_no_process_is_noproc() -> None:
    assert da.whereis("dspex_test_nobody_by_this_name") is None
    with pytest.raises(da.NoProc):
        ProcessPool.from_ref(da.whereis("dspex_test_nobody_by_this_name"))  # type: ignore[arg-type]


def test_an_envelope_failure_without_error_text_says_so(process_pools: ProcessPools) -> None:
    pool = process_pools.start(argv=ENVELOPE_WORKER, pool_size=1)
    with pytest.raises(da.RemoteError) as err:
        pool.call({"mode": "fail_bare"}, timeout=WAIT)
    assert err.value.message == '"success": false, with no "error"'
