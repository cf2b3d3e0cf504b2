"""The `dspex-actors` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dspex_actors import cli


def test_demo_shows_every_strategy_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    for heading in ("ONE_FOR_ONE", "ONE_FOR_ALL", "REST_FOR_ONE", "intensity", "auto_shutdown"):
        assert heading in out
    assert "restarted: b | kept: a, c" in out  # one_for_one restarted only the crashed child


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip()[0].isdigit()


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["fly"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_console_script_runs_the_demo_in_a_fresh_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dspex_actors.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "all demos behaved as OTP specifies" in result.stdout
