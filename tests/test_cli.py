"""The `dspex-actors` command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dspex_actors import cli


def test_demo_shows_every_strategy_and_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["demo", "--only", "strategies"]) == 0
    out = capsys.readouterr().out
    for heading in ("ONE_FOR_ONE", "ONE_FOR_ALL", "REST_FOR_ONE", "intensity", "auto_shutdown"):
        assert heading in out
    assert "restarted: b | kept: a, c" in out  # one_for_one restarted only the crashed child
    assert "DSPex bridge" not in out  # --only strategies: the bridge part did not run


def words(text: str) -> str:
    """`text` with every run of whitespace made one space (the summary wraps its lines)."""
    return " ".join(text.split())


def test_demo_runs_the_bridge_under_chaos_and_loses_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["demo", "--only", "bridge", "--duration", "2", "--workers", "2", "--sessions", "3"]
    assert cli.main(argv) == 0
    out = words(capsys.readouterr().out)
    assert "ONE_FOR_ONE" not in out  # --only bridge: the strategies part did not run
    assert "0 lost" in out
    assert "3 of 3 intact" in out
    assert "killed 1x, restarted by its supervisor 1x" in out
    assert "no request lost, every session intact" in out


def test_demo_without_chaos_kills_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["demo", "--only", "bridge", "--duration", "0.5", "--workers", "1", "--chaos", "0"]
    assert cli.main(argv) == 0
    out = words(capsys.readouterr().out)
    assert "chaos: off" in out
    assert "0 workers SIGKILLed and replaced by the pool; the pool's actor killed 0x" in out
    assert "0 of them retried" in out


def test_demo_help_lists_its_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--only", "--duration", "--workers", "--sessions", "--chaos"):
        assert flag in out
    assert "(default: 12)" in out  # the command runs the full demo, not the test suite's


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--only", "fly"], "invalid choice"),
        (["--workers", "0"], "--workers: must be a positive integer, got: 0"),
        (["--sessions", "two"], "--sessions: must be a positive integer, got: two"),
        (["--chaos", "-1"], "--chaos: must be a non-negative number, got: -1"),
        (["--duration", "nan"], "--duration: must be a non-negative number, got: nan"),
    ],
)
def test_bad_demo_flags_are_usage_errors(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.strip()[0].isdigit()


def test_an_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["fly"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_the_console_script_runs_both_demos_in_a_fresh_interpreter() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dspex_actors.cli", "demo", "--duration", "2"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "all demos behaved as OTP specifies" in result.stdout
    assert "no request lost, every session intact" in result.stdout
