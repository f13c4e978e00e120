"""``realsynth compare``: does the synthetic data help? Three runs with the same budget.

1. ``real_only``: the real sources alone (``MULTI_DATASET.ENABLED: false``), weights 1.0;
2. ``naive``: every source, each batch's share proportional to the source's size, weights 1.0
   (what plain concatenation + shuffling gives);
3. ``mix``: the configured mix (by default the note's: 0.7 real, synthetic weight 0.5).

Each run goes to ``OUTPUT_DIR/<name>``; the real-validation Recall@50 of the three is printed
side by side and written to ``OUTPUT_DIR/compare.json``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from realsynth.engine.tables import markdown_table, percent
from realsynth.engine.train import train
from realsynth.utils.atomic import atomic_write_json

VARIANTS: dict[str, dict] = {
    "real_only": {"ENABLED": False},
    "naive": {"RATIO_BY_SIZE": True, "REAL_LOSS_WEIGHT": 1.0, "SYNTHETIC_LOSS_WEIGHT": 1.0},
    "mix": {},
}


def variant_config(cfg: DictConfig, name: str) -> DictConfig:
    """``cfg`` with variant ``name``'s ``MULTI_DATASET`` settings and its own output folder."""
    datasets: dict = {"MULTI_DATASET": VARIANTS[name]}
    if name == "naive":
        # Explicit per-source values would override the naive settings: drop them.
        datasets["SOURCES"] = [
            {**OmegaConf.to_container(source), "RATIO": None, "LOSS_WEIGHT": None}
            for source in cfg.DATASETS.SOURCES
        ]
    return OmegaConf.merge(
        cfg, {"OUTPUT_DIR": str(Path(cfg.OUTPUT_DIR) / name), "DATASETS": datasets}
    )


def compare(cfg: DictConfig, variants: tuple[str, ...] = tuple(VARIANTS)) -> dict[str, dict]:
    """Train every variant and return ``{variant: {source: metrics}}``; prints the comparison."""
    results = {name: train(variant_config(cfg, name)) for name in variants}
    atomic_write_json(Path(cfg.OUTPUT_DIR) / "compare.json", results)
    print(format_comparison(results))
    return results


def format_comparison(results: dict[str, dict], metric: str = "R@50") -> str:
    """``metric`` in percent per validation source (rows) and variant (columns)."""
    sources = sorted({s for per_source in results.values() for s in per_source})
    rows = [[s, *(percent(results[v].get(s, {}).get(metric)) for v in results)] for s in sources]
    header = ["source", *(f"{v} {metric} %" for v in results)]
    return "Validation, same training budget:\n" + markdown_table(header, rows)
