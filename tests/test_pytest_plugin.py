"""The pytest plugin that ships with the package: opt-in leak check, layers, test modes.

Each test runs a small pytest session of another project (`pytester`, in a subprocess), the
way a project that merely installed dspex_actors would run its own suite.
"""

from __future__ import annotations

import sys

import pytest

pytest_plugins = ["pytester"]

LEAKY = """
    import dspex_actors as da

    class Idle(da.Actor):
        use_daemon_thread = True  # the leaked actor must not keep the session's process alive

    def test_leaves_an_actor_running():
        Idle.start()  # never stopped
"""

LEAKY_MARKED = """
    import pytest
    import dspex_actors as da

    class Idle(da.Actor):
        use_daemon_thread = True  # the leaked actor must not keep the session's process alive

    @pytest.mark.leak_check
    def test_leaves_an_actor_running():
        Idle.start()
"""


MODULE_POOL = """
    import pytest
    import dspex_actors as da

    pytestmark = pytest.mark.leak_check

    class Lazy(da.PoolWorker):
        def init_worker(self, pool_state):
            return da.Async(lambda: "worker", pool_state)  # started in a thread of the pool's

        def handle_checkout(self, command, from_, worker_state, pool_state):
            return da.Ok(worker_state, worker_state, pool_state)

    @pytest.fixture(scope="module")
    def pool():
        pool = da.Pool.start(Lazy, None, pool_size=2, lazy=True)
        yield pool
        pool.stop()

    def use(pool):
        return pool.checkout(None, lambda from_, worker: (worker, "ok"), timeout=5)

    def test_the_first_checkout_starts_a_worker(pool):
        assert use(pool) == "worker"

    def test_two_leases_start_the_second(pool):
        with pool.lease(None, timeout=5), pool.lease(None, timeout=5) as second:
            assert second.client_state == "worker"
"""


def test_a_pool_that_outlives_a_test_keeps_its_start_threads_without_a_leak(
    pytester: pytest.Pytester,
) -> None:
    """The threads a pool keeps waiting for its next worker start are the pool's: a test that
    had it start a worker leaks nothing (the pool is stopped by its module fixture)."""
    pytester.makepyfile(MODULE_POOL)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=2)


IDLE_RAY_WORKER = """
    import subprocess, sys
    import pytest

    pytestmark = pytest.mark.leak_check
    # A child that takes `name` as its process name, says so, and runs until its stdin closes
    # (when this session's process exits).
    NAMED = (
        "import sys; open('/proc/self/comm', 'w').write(sys.argv[1]); print(flush=True);"
        " sys.stdin.read()"
    )
    kept = []

    def start(name):
        child = subprocess.Popen(
            [sys.executable, "-c", NAMED, name], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert child.stdout.readline() == b"\\n"
        kept.append(child)

    def test_leaves_an_idle_ray_worker():
        start("ray::IDLE")

    def test_leaves_a_ray_actor():
        start("ray::Worker")
"""


@pytest.mark.skipif(sys.platform != "linux", reason="names a process through /proc/self/comm")
def test_a_ray_instances_idle_workers_are_not_a_tests_leak(pytester: pytest.Pytester) -> None:
    """Ray starts and ends its idle workers (``ray::IDLE``) as it sees fit: they are the Ray
    instance's. Any other process the test left is a leak, a Ray actor's included."""
    pytester.makepyfile(IDLE_RAY_WORKER)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_leaves_a_ray_actor*", "*child processes: * ray::Worker*"])
    assert "ray::IDLE" not in result.stdout.str()


def test_installing_the_package_changes_no_other_projects_test_run(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_leak_check_runs_for_every_test_with_the_ini_option(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndspex_leak_check = true\n")
    pytester.makepyfile(LEAKY)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, errors=1)  # the test passes; its teardown fails
    result.stdout.fnmatch_lines(["*dspex_actors leak check: still running after the test*"])


def test_the_leak_check_runs_for_one_test_with_its_marker(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(LEAKY_MARKED)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*leak check*actors*Idle*"])


def test_the_layer_markers_and_test_mode_are_available_to_any_project(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.layer_1
        def test_unit():
            pass

        @pytest.mark.layer_3
        def test_integration():
            pass
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--strict-markers", "--test-mode=mock_adapter", "-rs"
    )
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*layer_3 test skipped in TEST_MODE=mock_adapter*"])
