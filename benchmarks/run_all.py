"""``make bench``: run every benchmark, then assemble BENCHMARKS.md from their result sections."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from common import RESULTS_DIR

from realsynth.utils.atomic import atomic_write_text

HERE = Path(__file__).resolve().parent
ORDER = ("sampler", "criterion", "data", "scale", "train", "sweep", "gpu")
#: Sections that `make bench` does not run (hours): `make study` writes tool_study.
STUDIES = ("tool_study",)
HEADER = """# Benchmarks

Measured with `make bench` (each script also runs alone: `python benchmarks/bench_<name>.py`,
`--quick` for a short run). Peers are optional benchmark dependencies (`pip install -e .[bench]`);
a peer that is not installed is reported as such. Ratios compare runs made side by side in the
same process or the same session; absolute times depend on the machine and its load.
"""


def assemble(names: tuple[str, ...] = ORDER + STUDIES) -> str:
    """BENCHMARKS.md text from ``benchmarks/results/<name>.md`` (missing sections are named)."""
    parts = [HEADER]
    for name in names:
        path = RESULTS_DIR / f"{name}.md"
        text = path.read_text() if path.exists() else f"## {name}\n\nNot measured yet.\n"
        parts.append(text.strip() + "\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    failed = []
    # --assemble: only rebuild BENCHMARKS.md from the existing result sections.
    for name in () if "--assemble" in argv else ORDER:
        print(f"== bench_{name} ==", flush=True)
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), *argv]
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(name)
    atomic_write_text(HERE.parent / "BENCHMARKS.md", assemble())
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
