"""The import rule, checked on the source, by folder:

    storage/         layer 0: pages, tensors, keys, bytes
    radixkv/cache/   layer 1: the hierarchical cache
    engine/          layer 2: the serving engine
    radixkv/         layer 3: the entry points (Engine, serve, cli, bench)

Every import counts, function-local and type-only (`if TYPE_CHECKING:`) ones included. A module
may import its own layer or a lower one, and there must be no cycle between modules (the cache's
helpers type against `radixkv.cache.owner`'s protocol, not the class that owns them). No module
reads another module's underscore names.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "radixkv", "engine")
LAYERS = {"storage": 0, "radixkv.cache": 1, "engine": 2, "radixkv": 3}  # by folder
LAYER_NAMES = {v: k for k, v in LAYERS.items()}


def layer_of(module: str) -> int:
    """The layer of the deepest folder in LAYERS that holds `module`."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if (folder := ".".join(parts[:n])) in LAYERS:
            return LAYERS[folder]
    raise KeyError(f"{module} is in no layer")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _nodes(tree: ast.AST, type_checking: bool):
    """Every node, less those under `if TYPE_CHECKING:` unless `type_checking`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if (
            not type_checking
            and isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test)
        ):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def source_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    return {module_name(root, p): p for pkg in packages for p in (root / pkg).rglob("*.py")}


def import_graph(
    root: Path, packages: tuple[str, ...], *, type_checking: bool = False
) -> dict[str, set[str]]:
    """module -> modules of `packages` it imports (`from pkg import name` resolves to the
    submodule pkg.name when that is a module); `type_checking` counts type-only imports too."""
    files = source_files(root, packages)
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in _nodes(ast.parse(path.read_text(), str(path)), type_checking):
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


# underscore names that are public API elsewhere: namedtuple's methods
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make"}


def _own_underscore_names(tree: ast.AST) -> set[str]:
    """Underscore names a module defines itself: class attributes, dataclass fields, functions
    and `self._x = ...` assignments (reading them anywhere in the module is its own business)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if n.startswith("_")}


def _third_party_names(tree: ast.AST, packages: tuple[str, ...]) -> set[str]:
    """Names a module binds by importing something outside `packages` (torch, numpy...)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if not a.name.startswith(packages)
            )
        elif isinstance(node, ast.ImportFrom) and not (node.module or "").startswith(packages):
            names.update(a.asname or a.name for a in node.names)
    return names


def _root_name(node: ast.expr) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def private_reads(root: Path, packages: tuple[str, ...]) -> list[str]:
    """Where a module imports another module's underscore name (`from m import _x`) or reads
    an underscore attribute of an object of another module (`cache._x`, an attribute the
    reading module does not define itself). Dunders, `self`/`cls`, third-party modules
    (`torch.ops.aten._x`) and namedtuple's `_replace` are left alone."""
    found = []
    for mod, path in sorted(source_files(root, packages).items()):
        tree = ast.parse(path.read_text(), str(path))
        own = _own_underscore_names(tree) | PUBLIC_UNDERSCORE
        outside = _third_party_names(tree, packages)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith(packages)
            ):
                found += [
                    f"{mod}:{node.lineno} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and node.attr not in own
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and _root_name(node.value) not in outside
            ):
                found.append(f"{mod}:{node.lineno} reads {ast.unparse(node)}")
    return found


def test_no_import_goes_up_a_layer():
    """Type-only imports included: a lower layer does not even name a higher one's types."""
    assert layer_violations(import_graph(ROOT, PACKAGES, type_checking=True)) == []


def test_no_import_cycle():
    assert find_cycle(import_graph(ROOT, PACKAGES)) is None


def test_no_cycle_even_through_type_only_imports():
    """Type-only imports counted too: the cache's helpers type against `PageOwner`, not the
    class that owns them, and nothing else needs a TYPE_CHECKING import to hide a cycle."""
    assert find_cycle(import_graph(ROOT, PACKAGES, type_checking=True)) is None


def test_no_source_file_is_over_400_lines():
    """One idea a file: a file past 400 lines holds two (split it along its seam)."""
    long = {
        str(p.relative_to(ROOT)): n
        for p in source_files(ROOT, PACKAGES).values()
        if (n := len(p.read_text().splitlines())) > 400
    }
    assert long == {}


def test_no_module_reads_another_modules_underscore_names():
    assert private_reads(ROOT, PACKAGES) == []


def test_the_checks_catch_a_planted_cycle_an_upward_import_and_a_private_read(tmp_path):
    """A tree with radixkv.a -> radixkv.b -> radixkv.a (function-local), storage -> engine,
    the cache importing an entry point, a type-only cycle in the cache, and private reads."""
    for pkg in (*PACKAGES, "radixkv/cache"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "radixkv" / "a.py").write_text("from radixkv.b import g\n")
    (tmp_path / "radixkv" / "b.py").write_text("def g():\n    from radixkv import a\n")
    (tmp_path / "storage" / "s.py").write_text("import engine.e\n")
    (tmp_path / "engine" / "e.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from radixkv.facade import X\n"
    )
    (tmp_path / "radixkv" / "cache" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from radixkv.cache.d import D\n"
        "def f(x):\n    return x._secret\nclass C:\n    def g(self):\n        return self.x._own\n"
    )
    (tmp_path / "radixkv" / "cache" / "d.py").write_text(
        "from radixkv.cache.c import f\nfrom radixkv.a import _g\nimport radixkv.serve\n"
    )
    (tmp_path / "radixkv" / "serve.py").write_text(
        "class S:\n    def m(self):\n        self._ok = 1\n"
    )
    graph = import_graph(tmp_path, PACKAGES)
    assert find_cycle(graph) == ["radixkv.a", "radixkv.b", "radixkv.a"]
    assert layer_violations(graph) == [
        "radixkv.cache.d (radixkv.cache) imports radixkv.a (radixkv)",
        "radixkv.cache.d (radixkv.cache) imports radixkv.serve (radixkv)",
        "storage.s (storage) imports engine.e (engine)",
    ]
    assert graph["engine.e"] == set()  # a TYPE_CHECKING import never runs
    typed = import_graph(tmp_path, PACKAGES, type_checking=True)
    assert find_cycle({m: d for m, d in typed.items() if m.startswith("radixkv.cache.")}) == [
        "radixkv.cache.c",
        "radixkv.cache.d",
        "radixkv.cache.c",
    ]
    assert private_reads(tmp_path, PACKAGES) == [
        "radixkv.cache.c:5 reads x._secret",
        "radixkv.cache.c:8 reads self.x._own",
        "radixkv.cache.d:2 imports radixkv.a._g",
    ]
