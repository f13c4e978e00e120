"""The tables of ``tool_study.py``: one per preset, real test R@50 and mR@50 with intervals and
each variant's paired difference to the fixed mix (``benchmarks/results/tool_study.md``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from common import write_result

#: What each variant is, in the words of the README.
DESCRIPTIONS = {
    "real_only": "real only",
    "naive": "naive concatenation (shares by size, weights 1.0)",
    "mix": "the default fixed mix (0.7 real per batch, synthetic weight 0.5)",
    "sweep_pick": "the fixed mix `realsynth sweep` picks at this budget",
    "mix_filtered": "the fixed mix, synthetic labels filtered (`data filter`, ignore mode)",
    "mix_no_background": "the fixed mix, synthetic background weight 0",
    "pretrain_finetune": "`pretrain_finetune` (synthetic only for the first 30% of steps)",
    "adaptive": "adaptive mixing, `SCORE: cosine` (the default)",
    "adaptive_projection": "adaptive mixing, `SCORE: projection`",
}
PRESETS = ("mild", "noisy", "shifted")


def _interval(cell: dict[str, float], scale: float = 100.0) -> str:
    return f"{scale * cell['value']:.2f} [{scale * cell['low']:.2f}, {scale * cell['high']:.2f}]"


def _difference(cell: dict[str, float] | None) -> str:
    if cell is None:
        return ""
    return f"{cell['value']:+.3f} [{cell['low']:+.3f}, {cell['high']:+.3f}]"


def preset_table(study: dict) -> list[str]:
    """Markdown rows of one preset's table."""
    r50, mr50 = study["R@50"], study["mR@50"]
    lines = [
        "| variant | real test R@50 % | real test mR@50 % | R@50 vs the fixed mix | "
        "mR@50 vs the fixed mix |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, per_source in r50["variants"].items():
        diff_r = r50["differences"].get(name, {}).get("real")
        diff_m = mr50["differences"].get(name, {}).get("real")
        lines.append(
            f"| {DESCRIPTIONS.get(name, name)} | {_interval(per_source['real'])} | "
            f"{_interval(mr50['variants'][name]['real'])} | {_difference(diff_r)} | "
            f"{_difference(diff_m)} |"
        )
    if r50.get("failed"):
        lines.append("")
        lines += [f"- failed: {failure}" for failure in r50["failed"]]
    return lines


def choices_line(folder: Path) -> str:
    """What the sweep picked and what the filter flagged, against the corruption record."""
    best = json.loads((folder / "sweep" / "sweep.json").read_text())["best"]["params"]
    pick = ", ".join(f"{key.rsplit('.', 1)[1]} {value:.2f}" for key, value in best.items())
    flagged = json.loads((folder / "filtered" / "annotations.report.json").read_text())
    record = json.loads((folder / "demo/synthetic/train/corruption.json").read_text())
    wrong = {b["annotation_id"] for b in record["boxes"]}
    ids = set(flagged["doubtful_annotation_ids"])
    return (
        f"The sweep picked {pick}. The filter (real-only seed-0 model, IoU 0.3, score 0.1) "
        f"ignored {len(ids):,} boxes, {len(ids & wrong):,} of them with a wrong class "
        f"(of {len(wrong):,} wrong classes), and {len(flagged['doubtful_relationships']):,} "
        "relationships."
    )


def adaptive_shares(folder: Path, variants: list[str]) -> list[str]:
    """The synthetic share each adaptive variant ended with, per seed, and its lowest."""
    lines = []
    for name in variants:
        finals, lowest = [], []
        for run in sorted((folder / "compare" / name).glob("seed*")):
            records = [json.loads(line) for line in (run / "metrics.jsonl").open()]
            shares = [r["decided_share/synthetic"] for r in records if r.get("kind") == "adaptive"]
            if shares:
                finals.append(f"{shares[-1]:.2f}")
                lowest.append(f"{min(shares):.2f}")
        if finals:
            lines.append(
                f"{DESCRIPTIONS.get(name, name)}: synthetic share at the end "
                f"{' / '.join(finals)} (seeds), lowest {' / '.join(lowest)}; it started at 0.30."
            )
    return lines


def write_report(out: Path, machine: Callable[[], str]) -> Path:
    """Collect every preset's ``study.json`` under ``out`` into the results section."""
    lines = [
        "## Which tool helps on which synthetic data (tool_study.py)",
        "",
        f"Machine: {machine()}",
        "",
    ]
    for preset in PRESETS:
        path = out / preset / "study.json"
        if not path.exists():
            lines += [f"### {preset}", "", "Not run.", ""]
            continue
        study = json.loads(path.read_text())
        steps = study["steps"]
        lines += [
            f"### {preset}",
            "",
            f"{steps} steps of 16 per run, one-to-one matching, seeds "
            f"{study['R@50']['seeds']}; real test split (500 images); differences: paired "
            "bootstrap over seed and image, 95%.",
            "",
            *preset_table(study),
            "",
            choices_line(out / preset),
            "",
            *adaptive_shares(
                out / preset, [n for n in study["R@50"]["variants"] if n.startswith("adaptive")]
            ),
            "",
        ]
    return write_result("tool_study", "\n".join(lines))
