"""The package's layering: each layer imports only the layers below it, and nothing cycles.

Read from the source with `ast` (every import, including those inside functions), so that a
new module or an import placed in the wrong layer fails here, naming the offending import.
The layers, bottom up, are described in ``docs/layout.md``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "dspex_actors"

# Bottom up. Within the ground floor the modules are ordered too.
GROUND = [
    "_errors",
    "_reasons",
    "_logging",
    "_clock",
    "_checks",
    "_threads",
    "_aio",
    "_telemetry",
    "_child_spec",
]
LAYERS = [
    *([name] for name in GROUND),
    ["_actor"],
    ["_naming"],
    ["_supervision"],
    ["_pool"],
    ["_ports"],
    ["bridge"],
    ["telemetry", "testing", "cli", "__init__", "examples", "asyncio"],
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every dspex_actors module `path` imports, as dotted names."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("dspex_actors"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if not target.startswith("dspex_actors"):
                continue
            # `from .. import _telemetry` imports a module: it uses that module, not the
            # package's own API (a package is counted only for a name that is no module).
            modules = [f"{target}.{a.name}" for a in node.names if _exists(f"{target}.{a.name}")]
            found.update(modules)
            if len(modules) < len(node.names):
                found.add(target)
    found.discard(module)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def _layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    for index, names in enumerate(LAYERS):
        if top in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__file__}")


MODULES = {
    _module_name(path): path
    for path in sorted(PACKAGE.rglob("*.py"))
    if "__pycache__" not in path.parts
}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_a_module_imports_only_its_own_layer_or_the_layers_below(module: str) -> None:
    upward = sorted(
        target for target in _imports(MODULES[module]) if _layer(target) > _layer(module)
    )
    assert upward == [], f"{module} imports a higher layer: {upward}"


def test_no_import_cycle_anywhere_in_the_package() -> None:
    graph = {module: _imports(path) for module, path in MODULES.items()}
    # Importing `pkg.mod` runs `pkg/__init__.py` first; our subpackage __init__s import
    # nothing, so edges are taken as written.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_subpackage_inits_import_nothing() -> None:
    """A private layer's ``__init__`` is empty, so importing one module loads only what it
    needs (the fork server boots faster) and the graph above has no hidden edges."""
    for path in PACKAGE.glob("_*/__init__.py"):
        tree = ast.parse(path.read_text())
        imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        assert imports == [], f"{path} imports {ast.unparse(imports[0])}"


def test_every_package_of_the_library_is_installed() -> None:
    """A plain (non-editable) install ships the packages pyproject.toml lists: a new layer's
    folder must be listed there, or `pip install .` gives a library that cannot import."""
    import tomllib

    listed = set(
        tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
            "packages"
        ]
    )
    folders = {
        ".".join(path.parent.relative_to(PACKAGE.parent).parts)
        for path in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in path.parts
    }
    assert folders - listed == set()
