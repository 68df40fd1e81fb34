"""The import rule, checked on the source: storage <- radixkv's cache <- engine <- entry points.

Every import counts, function-local ones included (only `if TYPE_CHECKING:` blocks, which never
run, are left out). A module may import its own layer or a lower one; there must be no cycle
between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "radixkv", "engine")
# the user-facing entry points inside radixkv: they sit above the engine
ENTRY_POINTS = ("radixkv", "radixkv.facade", "radixkv.serve", "radixkv.cli", "radixkv.bench")
LAYERS = {"storage": 0, "radixkv": 1, "engine": 2, "entry": 3}
LAYER_NAMES = {v: k for k, v in LAYERS.items()}


def layer_of(module: str) -> int:
    if module in ENTRY_POINTS or module.startswith("radixkv.bench"):
        return LAYERS["entry"]
    return LAYERS[module.split(".")[0]]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """module -> modules of `packages` it imports (`from pkg import name` resolves to the
    submodule pkg.name when that is a module)."""
    files = {module_name(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names
                ]
            for t in targets:
                while t and t not in files:  # `import a.b.c` of a non-module attribute
                    t = t.rpartition(".")[0]
                if t and t.split(".")[0] in packages and t != mod:
                    deps.add(t)
        graph[mod] = deps
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [
        f"{mod} ({LAYER_NAMES[layer_of(mod)]}) imports {dep} ({LAYER_NAMES[layer_of(dep)]})"
        for mod, deps in sorted(graph.items())
        for dep in sorted(deps)
        if layer_of(dep) > layer_of(mod)
    ]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(mod: str) -> list[str] | None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(graph.get(mod, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[mod] = 2
        return None

    for mod in sorted(graph):
        if mod not in state and (found := visit(mod)):
            return found
    return None


def test_no_import_goes_up_a_layer():
    assert layer_violations(import_graph(ROOT, PACKAGES)) == []


def test_no_import_cycle():
    assert find_cycle(import_graph(ROOT, PACKAGES)) is None


def test_the_checks_catch_a_planted_cycle_and_an_upward_import(tmp_path):
    """A tree with radixkv.a -> radixkv.b -> radixkv.a (function-local) and storage -> engine."""
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "radixkv" / "a.py").write_text("from radixkv.b import g\n")
    (tmp_path / "radixkv" / "b.py").write_text("def g():\n    from radixkv import a\n")
    (tmp_path / "storage" / "s.py").write_text("import engine.e\n")
    (tmp_path / "engine" / "e.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from radixkv.facade import X\n"
    )
    graph = import_graph(tmp_path, PACKAGES)
    assert find_cycle(graph) == ["radixkv.a", "radixkv.b", "radixkv.a"]
    assert layer_violations(graph) == ["storage.s (storage) imports engine.e (engine)"]
    assert graph["engine.e"] == set()  # a TYPE_CHECKING import never runs
