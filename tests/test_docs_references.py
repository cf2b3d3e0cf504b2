"""The tests the porting pages name as the proof of each behaviour exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _test_names(path: Path) -> set[str]:
    """Test functions, and tests bound by assignment (a hypothesis state machine's TestCase)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {name for name in names if name.startswith("test")}


@pytest.mark.parametrize(("page", "at_least"), [("porting.md", 100), ("porting-dspex.md", 20)])
def test_every_test_a_porting_page_cites_exists(page: str, at_least: int) -> None:
    text = (ROOT / "docs" / page).read_text()
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)", text)
    assert len(cited) >= at_least
    missing = [
        f"{file}::{name}"
        for file, name in cited
        if not (ROOT / file).exists() or name not in _test_names(ROOT / file)
    ]
    assert missing == []
