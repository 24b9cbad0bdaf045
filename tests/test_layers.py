"""The package's layers: no import loops, and each layer imports only from the layers before it.

Reads every module's imports (module-level and inside functions) with `ast`, so it is fast and needs no imports;
then imports each module in a fresh interpreter of its own, as a user's first import would.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gti_peft

PACKAGE = Path(gti_peft.__file__).parent
# each layer may import from the layers before it, never after (gti_peft/__init__.py assembles the public API)
LAYERS = [
    {"compat", "assets", "_deprecated", "_import_notices"},
    {"method"},
    {"training"},
    {"sharing"},
    {"recsys"},
    {"recipe"},
    {"cli"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, module_level_only: bool) -> set[str]:
    """The gti_peft modules `path` imports (a `from package import name` counts the submodule when it is one)."""
    tree = ast.parse(path.read_text())
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    if module_level_only:  # also imports under `if`/`try` at module level
        nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.ClassDef)) for n in ast.walk(top)]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gti_peft")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("gti_peft"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return found - {name}


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return next((i for i, names in enumerate(LAYERS) if parts[1] in names), None)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_belongs_to_a_layer():
    assert [m for m in MODULES if m != "gti_peft" and layer_of(m) is None] == []


def test_no_import_loops():
    graph = {m: imports(p, module_level_only=False) for m, p in MODULES.items()}
    assert find_cycle(graph) is None


def test_the_loop_check_finds_a_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_each_layer_imports_only_from_layers_before_it():
    upward = sorted(
        f"{module} -> {target}"
        for module, path in MODULES.items()
        if module != "gti_peft"
        for target in imports(path, module_level_only=False)
        if target != "gti_peft" and layer_of(target) > layer_of(module)
    )
    assert upward == []


_IMPORT_EACH_ALONE = """
import importlib, sys, traceback
failures = {}
for module in sys.argv[1:]:
    for name in [n for n in sys.modules if n == "gti_peft" or n.startswith("gti_peft.")]:
        del sys.modules[name]  # third-party modules stay loaded: only gti-peft's own import order is tested
    try:
        importlib.import_module(module)
    except Exception as error:
        failures[module] = repr(error)
print(failures)
"""


def test_each_module_imports_on_its_own():
    """Each module imported first, with no other gti_peft module loaded: an import that only works after some
    other module was imported fails here."""
    modules = [m for m in MODULES if not m.startswith("gti_peft._deprecated")]
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_EACH_ALONE, *modules], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "{}"
