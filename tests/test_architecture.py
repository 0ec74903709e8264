"""The module graph of `uniroute_jax._src` has no import cycle (lazy imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import uniroute_jax

SRC = Path(uniroute_jax.__file__).parent / "_src"


def _imports() -> dict[str, set[str]]:
    modules = {p.stem for p in SRC.glob("*.py")}
    graph = {}
    for name in modules:
        deps = set()
        for node in ast.walk(ast.parse((SRC / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "uniroute_jax._src":
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("uniroute_jax._src."):
                deps.add(node.module.split(".")[2])
        graph[name] = deps & modules
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished

    def visit(node, path):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_no_import_cycle_among_modules():
    assert _find_cycle(_imports()) is None, f"import cycle: {' -> '.join(_find_cycle(_imports()))}"


def test_cycle_finder_sees_a_planted_cycle():
    graph = _imports()
    graph["routing"] = graph["routing"] | {"curves"}  # the cycle this layout removed
    assert _find_cycle(graph) is not None
    assert set(_find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()})) == {"a", "b", "c"}
