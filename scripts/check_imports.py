"""Check the package's layering: no module imports a layer above its own, and no import cycle.

Layers, bottom to top (a module may import its own layer and the ones below):

    foundation < audio < controls < data < metrics < modules < models < solvers < prepare < entry points

The foundation is four top-level modules that import nothing else of jasco's but each other:
`environment` (paths, team, device), `files` (atomic writes), `hub` (Hugging Face access) and
`safe_load` (reading torch files safely).

Entry points are the top-level modules (`jasco.train`, `jasco.generate`, `jasco.export`),
`jasco.app` (the web page) and `jasco.grids`. Imports under `if TYPE_CHECKING:` count too: a type
is a dependency.

Usage: `python scripts/check_imports.py` (exit status 1 and one line per problem when it fails).
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "jasco"
FOUNDATION = ("environment", "files", "hub", "safe_load")
LAYERS = ("foundation", "audio", "controls", "data", "metrics", "modules", "models", "solvers", "prepare")
ENTRY_POINT_RANK = len(LAYERS)


def module_name(path: Path) -> str:
    """`jasco/data/manifest.py` -> `jasco.data.manifest` (`__init__.py` names its package)."""
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_rank(module: str) -> int:
    """Rank of a `jasco.*` module's layer; the package root and entry points rank highest."""
    parts = module.split(".")
    if len(parts) < 2:
        return ENTRY_POINT_RANK
    if parts[1] in FOUNDATION:
        return 0
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else ENTRY_POINT_RANK


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The `jasco.*` modules a file imports (`from jasco.x import y`: `jasco.x.y` if a module, else `jasco.x`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import sub` imports the submodule; `from pkg import name` the package itself.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("jasco"):
                found.add(name)
    return found


def find_problems() -> list[str]:
    """Upward imports and cycles, one line each."""
    files = {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}
    graph = {name: imported_modules(path, set(files)) - {name} for name, path in files.items()}
    problems = []
    for name, deps in sorted(graph.items()):
        for dep in sorted(deps):
            if dep != "jasco" and layer_rank(dep) > layer_rank(name):
                problems.append(f"upward import: {name} (layer {layer_rank(name)}) imports {dep} "
                                f"(layer {layer_rank(dep)})")
    # Cycles among modules (packages' __init__ re-exports included), by depth-first search.
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                problems.append("import cycle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return problems


def main() -> int:
    """Print every problem; exit status 1 when there is one."""
    problems = find_problems()
    for line in problems:
        print(line)
    if not problems:
        print(f"import graph OK: {len(list(PACKAGE_DIR.rglob('*.py')))} modules, layers {' < '.join(LAYERS)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
