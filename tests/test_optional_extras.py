"""``import realsynth`` and its commands work without the optional extras (transformers,
safetensors, psycopg, wids, orjson): a fresh interpreter that cannot import them loads every
module."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = ("transformers", "safetensors", "psycopg", "psycopg2", "wids", "webdataset", "orjson")

SCRIPT = f"""
import importlib, pkgutil, sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Blocker())
import realsynth
for module in pkgutil.walk_packages(realsynth.__path__, "realsynth."):
    importlib.import_module(module.name)
from realsynth.cli import main
assert main(["config", "show", "SOLVER.MAX_ITER=3"]) == 0
print("imported", len(sys.modules))
"""


def test_every_module_imports_and_a_command_runs_without_the_extras():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stdout
    assert "MAX_ITER: 3" in done.stdout
