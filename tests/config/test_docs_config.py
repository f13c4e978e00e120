"""docs/config.md and the README's command lines stay true to the config."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from realsynth.config import load_config
from realsynth.config.schema import DemoConfig

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_table_documents_every_demo_key() -> None:
    text = (ROOT / "docs" / "config.md").read_text()
    table = re.search(r"\| `DATASETS\.DEMO\.` key \|.*?\n\n", text, flags=re.S)
    assert table is not None, "docs/config.md: no DATASETS.DEMO table"
    rows = {
        name: line
        for line in table.group(0).splitlines()[2:]  # after the header and its rule
        for name in re.findall(r"`([A-Z_]+)`", line.split("|")[1] if line else "")
    }
    assert set(rows) == {f.name for f in dataclasses.fields(DemoConfig)}
    assert "0 = none" in rows["REAL_TEST"] and "test images" in rows["REAL_TEST"]


def test_the_readme_filters_with_a_run_that_a_command_above_it_creates() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Command line\n\n```bash\n(.*?)```", readme, flags=re.S).group(1)
    lines = block.splitlines()
    (at,) = [k for k, line in enumerate(lines) if "data filter --run" in line]
    run = re.search(r"--run (\S+)", lines[at]).group(1)
    created = set()
    cfg = load_config()
    for line in lines[:at]:
        out = re.search(r"OUTPUT_DIR=(\S+)", line)
        if line.startswith("realsynth train") and out:
            created.add(out.group(1))
        elif line.startswith("realsynth compare") and out:  # OUTPUT_DIR/<variant>/seed<k>
            created |= {
                f"{out.group(1)}/{variant}/seed{k}"
                for variant in cfg.COMPARE.BUILTIN
                for k in range(cfg.COMPARE.SEEDS)
            }
    assert run in created, f"README: `data filter --run {run}`: no command above creates it"
