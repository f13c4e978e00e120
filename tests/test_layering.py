"""Imports only run down the layers, by folder:
utils < data | modeling < mixing | evaluation < config < training < studies | diagnostics < cli.

Folders of one rank never import each other; lower layers never import ``config`` (they raise
``ValueError`` naming their argument, and the builder names the config key).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "realsynth"
RANKS = {
    "utils": 0,
    "data": 1,
    "modeling": 1,
    "mixing": 2,
    "evaluation": 2,
    "config": 3,
    "training": 4,
    "studies": 5,
    "diagnostics": 5,
    "cli": 6,
    "__main__": 6,
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


def _modules() -> list[tuple[str, Path]]:
    return [
        ("realsynth." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts), path)
        for path in PACKAGE.rglob("*.py")
    ]


def test_every_module_lives_in_a_known_layer():
    assert {_layer(m) for m, _ in _modules()} - {"__init__"} <= RANKS.keys()


def test_no_module_imports_a_layer_above_or_beside_its_own():
    wrong = []
    for module, path in _modules():
        if module in ("realsynth.__init__", "realsynth.__main__"):
            continue
        own = _layer(module)
        for imported in _imports(path):
            theirs = _layer(imported)
            if theirs != own and RANKS[theirs] >= RANKS[own]:
                wrong.append(f"{module} imports {imported}")
    assert wrong == []


def test_lower_layers_never_name_config_keys_in_messages():
    """A config key (``SECTION.KEY``) in a raised message belongs to config and above."""
    keys = ("DATASETS.", "MODEL.", "SOLVER.", "TEST.", "DATALOADER.", "INPUT.", "SWEEP.")
    named = []
    for module, path in _modules():
        if RANKS.get(_layer(module), 99) >= RANKS["config"]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and node.exc is not None:
                text = ast.unparse(node.exc)
                named += [f"{module}: {text[:80]}" for key in keys if key in text]
    assert named == []
