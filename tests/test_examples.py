"""Every example in examples/ runs to completion, prints, and returns 0 (the docs include them)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

EXAMPLES = sorted(
    p.stem for p in (Path(__file__).parent.parent / "examples").glob("*.py") if p.stem != "__init__"
)


def test_there_are_examples() -> None:
    assert "restart_strategies" in EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs_and_returns_zero(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"dspex_actors.examples.{name}")
    assert module.main() == 0
    assert capsys.readouterr().out.strip(), f"example {name} printed nothing"
