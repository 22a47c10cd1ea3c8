"""The layering of ``src/mlplab``: read from the source with ``ast``, function-local imports included.

Three rules (docs/architecture.md): no import cycle among mlplab modules; each layer imports only
downward (the table below); no source file is longer than 600 lines. Registry strings such as
``"mlplab.torch.backend:TorchBackend"`` are data, not imports, and are not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "mlplab"
MAX_LINES = 600

#: layer (a module-name prefix) -> the layers it must never import
FORBIDDEN = {
    "mlplab.nn": ("mlplab.training", "mlplab.torch", "mlplab.commands", "mlplab.tools"),
    "mlplab.optim": ("mlplab.training", "mlplab.torch", "mlplab.commands", "mlplab.tools"),
    "mlplab.data": ("mlplab.training", "mlplab.torch", "mlplab.commands", "mlplab.tools"),
    "mlplab.errors": ("mlplab.training", "mlplab.torch", "mlplab.commands", "mlplab.tools"),
    "mlplab.training": ("mlplab.torch", "mlplab.sweep", "mlplab.hessian", "mlplab.report", "mlplab.commands"),
    "mlplab.torch": ("mlplab.training", "mlplab.sweep", "mlplab.commands", "mlplab.report", "mlplab.hessian"),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """Every mlplab module ``path`` imports anywhere in the file (functions and ``if`` blocks included).

    ``from mlplab.x import y`` counts ``mlplab.x.y`` when that is a module, else ``mlplab.x``."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module for alias in node.names]
        else:
            continue
        for target in targets:
            # "import mlplab.a.b" names the deepest known module of the dotted path
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("mlplab") and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = source_files()
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None. A package's ``__init__`` importing its
    own submodules is not a cycle by itself; edges into a package's ``__init__`` from its own submodules are."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def in_layer(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def test_the_import_graph_is_read_from_every_file():
    graph = import_graph()
    assert "mlplab.training.loop" in graph and "mlplab.nn.linear" in graph
    # a function-local import is an edge like any other
    assert "mlplab.torch.model" in graph["mlplab.torch.backend"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_import_only_downward(layer):
    graph = import_graph()
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in graph.items() if in_layer(module, layer)
        for target in targets if any(in_layer(target, banned) for banned in FORBIDDEN[layer])
    )
    assert not wrong, "\n".join(wrong)


def test_no_source_file_over_the_limit():
    long = {name: n for name, path in source_files().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_cycle_finder_reports_the_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
