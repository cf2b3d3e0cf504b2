"""The pytest plugin that ships with the package: opt-in leak check, layers, test modes.

Each test runs a small pytest session of another project (`pytester`, in a subprocess), the
way a project that merely installed dspex_actors would run its own suite.
"""

from __future__ import annotations

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
