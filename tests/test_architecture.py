"""The import rules of ARCHITECTURE.md: no cycles, lower layers never import higher ones, nothing at run time
imports the test builders, and ``import mmcli.cli`` stays light.

The graph is read from the source with ``ast``: every import counts, at module level, inside functions and
under ``if TYPE_CHECKING:`` (a type a module names is a dependency too, even when only annotations use it);
``from x import y`` is an edge to the module ``x.y`` when there is one, else to ``x``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "mmcli"

# Lowest first. A module belongs to the layer of its longest matching prefix and may import its own layer
# and any layer listed before it, never one after it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("core", ("mmcli.errors", "mmcli.paths", "mmcli.version")),
    ("sources", ("mmcli.sources",)),
    ("sinks", ("mmcli.sinks",)),
    ("config", ("mmcli.userconfig",)),
    ("modeling", ("mmcli.modeling",)),
    ("run", ("mmcli.run",)),
    ("commands", ("mmcli.commands",)),
    ("server", ("mmcli.server",)),
    ("serve command", ("mmcli.commands.serve",)),
    ("api", ("mmcli", "mmcli.client")),
    ("entry", ("mmcli.cli", "mmcli.__main__")),
]
TESTING = "mmcli.testing"


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text("utf-8"))
        package = module if is_package else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(owner(a.name) for a in node.names if a.name.split(".")[0] == "mmcli")
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(base_parts + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != "mmcli":
                    continue
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else owner(base))
        targets.discard(None)
        targets.discard(module)
        graph[module] = {t for t in targets if t is not None}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "mmcli" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), rank)
    return None if best is None else best[1]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_lazy_imports(graph: dict[str, set[str]]) -> None:
    assert len(graph) > 50
    assert "mmcli.run.engines.ray" in graph["mmcli.run.pipeline"]  # imported inside Job.execute


def test_the_graph_sees_annotation_only_imports(graph: dict[str, set[str]]) -> None:
    assert "mmcli.run.lifecycle" in graph["mmcli.run.engines.ray"]  # under if TYPE_CHECKING: (job: JobRun)


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    assert _cycles(graph) == []


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    assert [m for m in graph if layer_of(m) is None and not m.startswith(TESTING)] == []


def test_lower_layers_never_import_higher_ones(graph: dict[str, set[str]]) -> None:
    wrong = []
    for module, targets in graph.items():
        if module.startswith(TESTING):
            continue
        mine = layer_of(module)
        assert mine is not None
        for target in targets:
            theirs = layer_of(target)
            if theirs is not None and theirs > mine:
                wrong.append(f"{module} ({LAYERS[mine][0]}) -> {target} ({LAYERS[theirs][0]})")
    assert wrong == []


def test_nothing_at_run_time_imports_the_test_builders(graph: dict[str, set[str]]) -> None:
    wrong = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        if not m.startswith(TESTING)
        for t in targets
        if t == TESTING or t.startswith(TESTING + ".")
    ]
    assert wrong == []


def test_import_cli_loads_neither_torch_nor_transformers() -> None:
    code = "import sys, mmcli.cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
