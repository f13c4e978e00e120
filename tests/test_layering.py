"""Imports only run down the layers: cli -> engine -> config -> data | modeling -> utils."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "realsynth"
# Higher numbers may import lower ones; data and modeling never import each other.
LAYERS = {
    "utils": 0,
    "data": 1,
    "modeling": 1,
    "config": 2,
    "config_schema": 2,
    "config_checks": 2,
    "source_mix": 2,
    "schedule_config": 2,
    "engine": 3,
    "cli": 4,
    "__main__": 4,
}


def _layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [n for n in names if n == "realsynth" or n.startswith("realsynth.")]


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in PACKAGE.rglob("*.py"):
        module = "realsynth." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        if module.endswith(".__init__"):
            continue
        own = LAYERS[_layer(module)]
        for imported in _imports(path):
            theirs = LAYERS[_layer(imported)]
            same_rank_other_layer = theirs == own and _layer(imported) != _layer(module)
            if theirs > own or (same_rank_other_layer and own == 1):
                upward.append(f"{module} imports {imported}")
    assert upward == []
