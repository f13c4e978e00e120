"""The statistics of ``realsynth compare``: intervals over seeds, paired bootstrap against a
reference, verdicts in words, each variant's training budget, the table and the bar chart.

Inputs are per-image evaluation records (``eval_records.npz`` of each run), so every metric,
mean Recall@K included, is recomputed from the resampled images rather than approximated.
Only the variants whose every seed finished are scored; the report lists the failed runs with
their errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from realsynth.evaluation.recall import SceneGraphEvaluator
from realsynth.evaluation.records import Records
from realsynth.studies.statistics import mean_interval, paired_bootstrap
from realsynth.utils.tables import markdown_table


def comparison_report(
    records: dict[str, list[Records]],
    template: SceneGraphEvaluator | None,
    *,
    reference: str,
    metric: str,
    replicates: int,
    seed: int,
) -> dict[str, Any]:
    """Mean and 95% interval of ``metric`` per variant and source, and every variant against the
    reference (paired bootstrap over seeds and images), with a verdict line each.

    Args:
        records: per variant whose every seed finished, per seed, the records of every
            validation source (a failed variant is missing).
        template: summarizes records (its ks, protocol, predicates); None when none finished.
        reference: the variant the others are compared with.
        metric: e.g. ``R@50`` or ``mR@50``.
        replicates: bootstrap draws.
        seed: seed of the bootstrap.
    """

    def score(rows: np.ndarray) -> float:
        return template.summarize(rows)[metric]

    report: dict[str, Any] = {"metric": metric, "reference": reference, "variants": {}}
    report["differences"], report["verdicts"] = {}, []
    sources = sorted(next(iter(records.values()))[0]) if records else []
    for name, per_seed in records.items():
        report["variants"][name] = {}
        for source in sources:
            values = [score(run[source]) for run in per_seed]
            interval = mean_interval(values)
            report["variants"][name][source] = {"per_seed": values, **interval.to_dict()}
    if reference not in records:
        report["no_differences"] = f"the reference {reference} failed: no paired differences"
        return report
    for name in records:
        if name != reference:
            _add_differences(report, records, name, sources, score, replicates, seed)
    return report


def _add_differences(
    report: dict[str, Any],
    records: dict[str, list[Records]],
    name: str,
    sources: list[str],
    score: Callable[[np.ndarray], float],
    replicates: int,
    seed: int,
) -> None:
    """Variant ``name`` against the reference on every source: differences and verdicts."""
    reference = report["reference"]
    report["differences"][name] = {}
    for source in sources:
        result = paired_bootstrap(
            [run[source] for run in records[name]],
            [run[source] for run in records[reference]],
            score,
            replicates=replicates,
            seed=seed,
        ).to_dict()
        report["differences"][name][source] = result
        report["verdicts"].append(verdict(name, reference, source, report["metric"], result))


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


def run_budgets(configs: dict[str, DictConfig]) -> dict[str, Any]:
    """Each variant's training budget (steps, global batch, images seen = their product),
    whether they are all the same, and a sentence saying so or naming who saw how many."""
    budgets = {
        name: {
            "steps": cfg.SOLVER.MAX_ITER,
            "global_batch": cfg.SOLVER.IMS_PER_BATCH,
            "images_seen": cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH,
        }
        for name, cfg in configs.items()
    }
    groups: dict[tuple[int, int], list[str]] = {}
    for name, budget in budgets.items():
        groups.setdefault((budget["steps"], budget["global_batch"]), []).append(name)
    if len(groups) == 1:
        (steps, batch), _ = next(iter(groups.items()))
        note = (
            f"Same training budget for every variant: {steps} steps x {batch} images (global "
            f"batch) = {steps * batch:,} images seen per run."
        )
    else:
        each = "; ".join(
            f"{', '.join(names)}: {steps * batch:,} ({steps} steps x {batch})"
            for (steps, batch), names in groups.items()
        )
        note = (
            f"Training budgets DIFFER between variants (images seen per run): {each}. A "
            "difference between variants with different budgets is partly the budget's."
        )
    return {"budgets": budgets, "same_budget": len(groups) == 1, "budget_note": note}


def _cell(entry: dict[str, float]) -> str:
    if math.isnan(entry["low"]):
        return f"{100 * entry['value']:.2f}"
    return f"{100 * entry['value']:.2f} [{100 * entry['low']:.2f}, {100 * entry['high']:.2f}]"


def _sources(report: dict[str, Any]) -> list[str]:
    return sorted(next(iter(report["variants"].values()), {}))


def _rows(report: dict[str, Any], sources: list[str]) -> list[list[str]]:
    """One row per variant, in the order they ran; a variant with a failed seed says so."""
    failed: dict[str, int] = {}
    for entry in report.get("failed", []):
        failed[entry["variant"]] = failed.get(entry["variant"], 0) + 1
    budgets = report.get("budgets", {})
    rows = []
    for name in budgets or report["variants"]:
        seen = [f"{budgets[name]['images_seen']:,}"] if budgets else []
        if name in failed:
            what = f"failed ({failed[name]} of {len(report.get('seeds', [])) or '?'} seeds)"
            rows.append([name, *seen, *([what] * max(len(sources), 1))])
        else:
            rows.append([name, *seen, *(_cell(report["variants"][name][s]) for s in sources)])
    return rows


def format_report(report: dict[str, Any]) -> str:
    """The budgets, the table (mean and 95% interval over seeds, percent), the failed runs and
    the verdict lines."""
    metric, reference = report["metric"], report["reference"]
    sources = _sources(report)
    header = ["variant", *(["images seen"] if "budgets" in report else [])]
    header += [f"{s} {metric} %" for s in sources] or ["result"]
    lines = [
        f"{metric} on the {report.get('split', 'val')} sets, mean and 95% interval over "
        f"{len(report.get('seeds', []))} seed(s):",
        *([report["budget_note"]] if "budget_note" in report else []),
        markdown_table(header, _rows(report, sources)),
    ]
    failed = report.get("failed", [])
    if failed:
        lines += ["", "Failed runs (run the same command again to retry them):"]
        lines += [f"- {f['run']} (seed {f['seed']}): {f['error']}" for f in failed]
    lines += ["", f"Against {reference} (paired bootstrap over seeds and images, 95%):"]
    if "no_differences" in report:
        lines.append(f"- {report['no_differences']}")
    lines += [f"- {line}" for line in report["verdicts"]]
    not_compared = sorted({f["variant"] for f in failed} - {reference})
    if not_compared and "no_differences" not in report:
        lines.append(f"- not compared (failed): {', '.join(not_compared)}")
    return "\n".join(lines)


def plot_comparison(report: dict[str, Any], path: Path) -> Path:
    """Grouped bars (sources x variants) of the mean with its 95% interval; failed variants in
    the legend only; each variant's images seen in its label when the budgets differ."""
    from realsynth.utils.plots import plt, save_figure

    variants, sources = list(report["variants"]), _sources(report)
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * max(len(sources) * len(variants), 2) / 2, 4))
    width = 0.8 / max(len(variants), 1)
    for v, name in enumerate(variants):
        entries = [report["variants"][name][s] for s in sources]
        means = np.array([e["value"] for e in entries])
        low = np.array([e["low"] for e in entries])
        high = np.array([e["high"] for e in entries])
        errors = np.nan_to_num(np.stack([means - low, high - means]), nan=0.0)
        x = np.arange(len(sources)) + (v - (len(variants) - 1) / 2) * width
        ax.bar(x, means, width, yerr=errors, capsize=4, label=_label(report, name))
    for name in dict.fromkeys(f["variant"] for f in report.get("failed", [])):
        ax.plot([], [], " ", label=f"{_label(report, name)}: failed")
    ax.set_xticks(np.arange(len(sources)), [f"{s} {report.get('split', 'val')}" for s in sources])
    ax.set(ylabel=report["metric"], ylim=(0, 1), title=f"{report['metric']}, mean and 95% interval")
    ax.legend()
    return save_figure(fig, path)


def _label(report: dict[str, Any], name: str) -> str:
    if report.get("same_budget", True):
        return name
    return f"{name} ({report['budgets'][name]['images_seen']:,} images)"
