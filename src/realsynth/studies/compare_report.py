"""The statistics of ``realsynth compare``: intervals over seeds, paired bootstrap against a
reference, verdicts in words, the table and the bar chart.

Inputs are per-image evaluation records (``eval_records.npz`` of each run), so every metric,
mean Recall@K included, is recomputed from the resampled images rather than approximated.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.evaluation.recall import SceneGraphEvaluator
from realsynth.evaluation.records import Records
from realsynth.studies.statistics import mean_interval, paired_bootstrap
from realsynth.utils.tables import markdown_table


def comparison_report(
    records: dict[str, list[Records]],
    template: SceneGraphEvaluator,
    *,
    reference: str,
    metric: str,
    replicates: int,
    seed: int,
) -> dict[str, Any]:
    """Mean and 95% interval of ``metric`` per variant and source, and every variant against the
    reference (paired bootstrap over seeds and images), with a verdict line each.

    Args:
        records: per variant, per seed, the records of every validation source.
        template: summarizes records (its ks, protocol, predicates).
        reference: the variant the others are compared with.
        metric: e.g. ``R@50`` or ``mR@50``.
        replicates: bootstrap draws.
        seed: seed of the bootstrap.
    """

    def score(rows: np.ndarray) -> float:
        return template.summarize(rows)[metric]

    sources = sorted(records[reference][0])
    report: dict[str, Any] = {"metric": metric, "reference": reference, "variants": {}}
    report["differences"], report["verdicts"] = {}, []
    for name, per_seed in records.items():
        report["variants"][name] = {}
        for source in sources:
            values = [score(run[source]) for run in per_seed]
            interval = mean_interval(values)
            report["variants"][name][source] = {"per_seed": values, **interval.to_dict()}
        if name == reference:
            continue
        report["differences"][name] = {}
        for source in sources:
            result = paired_bootstrap(
                [run[source] for run in per_seed],
                [run[source] for run in records[reference]],
                score,
                replicates=replicates,
                seed=seed,
            )
            report["differences"][name][source] = result.to_dict()
            report["verdicts"].append(verdict(name, reference, source, metric, result.to_dict()))
    return report


def verdict(name: str, reference: str, source: str, metric: str, diff: dict[str, float]) -> str:
    """One line in words: who wins by how much with the 95% interval, or that nobody does."""
    value, low, high = diff["value"], diff["low"], diff["high"]
    interval = f"[{low:+.3f}, {high:+.3f}]"
    if low > 0:
        return f"{name} beats {reference} on {source} by {value:+.3f} {metric} {interval}"
    if high < 0:  # the reference wins: state its gain, with the interval of that gain
        flipped = f"[{-high:+.3f}, {-low:+.3f}]"
        return f"{reference} beats {name} on {source} by {-value:+.3f} {metric} {flipped}"
    return (
        f"{name} vs {reference} on {source}: no difference detectable at this budget "
        f"({value:+.3f} {metric} {interval}, P(better) = {diff['probability_positive']:.2f})"
    )


def _cell(entry: dict[str, float]) -> str:
    if math.isnan(entry["low"]):
        return f"{100 * entry['value']:.2f}"
    return f"{100 * entry['value']:.2f} [{100 * entry['low']:.2f}, {100 * entry['high']:.2f}]"


def format_report(report: dict[str, Any]) -> str:
    """The table (mean and 95% interval over seeds, percent) and the verdict lines."""
    metric = report["metric"]
    sources = sorted(next(iter(report["variants"].values())))
    rows = [
        [name, *(_cell(per_source[s]) for s in sources)]
        for name, per_source in report["variants"].items()
    ]
    seeds = report.get("seeds", [])
    lines = [
        f"{metric} on the {report.get('split', 'val')} sets, mean and 95% interval over "
        f"{len(seeds)} seed(s), same training budget:",
        markdown_table(["variant", *(f"{s} {metric} %" for s in sources)], rows),
        "",
        f"Against {report['reference']} (paired bootstrap over seeds and images, 95%):",
        *(f"- {line}" for line in report["verdicts"]),
    ]
    return "\n".join(lines)


def plot_comparison(report: dict[str, Any], path: Path) -> Path:
    """Grouped bars (sources x variants) of the mean with its 95% interval."""
    from realsynth.utils.plots import plt, save_figure

    variants = list(report["variants"])
    sources = sorted(next(iter(report["variants"].values())))
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(sources) * len(variants) / 2, 4))
    width = 0.8 / len(variants)
    for v, name in enumerate(variants):
        entries = [report["variants"][name][s] for s in sources]
        means = np.array([e["value"] for e in entries])
        low = np.array([e["low"] for e in entries])
        high = np.array([e["high"] for e in entries])
        errors = np.nan_to_num(np.stack([means - low, high - means]), nan=0.0)
        x = np.arange(len(sources)) + (v - (len(variants) - 1) / 2) * width
        ax.bar(x, means, width, yerr=errors, capsize=4, label=name)
    ax.set_xticks(np.arange(len(sources)), [f"{s} val" for s in sources])
    ax.set(ylabel=report["metric"], ylim=(0, 1), title=f"{report['metric']}, mean and 95% interval")
    ax.legend()
    return save_figure(fig, path)
