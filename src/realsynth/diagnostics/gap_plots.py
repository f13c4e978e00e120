"""The domain-gap report's plots (PNG) and its markdown page."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from realsynth.utils.plots import plt, save_figure

HIST_TITLES = {
    "size": "box size (sqrt of area share)",
    "aspect": "box aspect (log2 w / h)",
    "center_x": "box centre x",
    "center_y": "box centre y",
    "objects_per_image": "objects per image",
    "relations_per_image": "relations per image",
}


def plot_gap(report: dict[str, Any], out: Path) -> list[str]:
    """``gap_labels.png`` (class and predicate shares), ``gap_boxes.png`` (box and count
    histograms) and, with recall records, ``gap_recall.png``; returns the names written."""
    sources = report["sources"]
    written = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, names in (
        (axes[0], "class_counts", report["classes"]),
        (axes[1], "predicate_counts", report["predicates"]),
    ):
        width = 0.8 / max(1, len(sources))
        for i, (name, entry) in enumerate(sources.items()):
            counts = np.asarray(entry[key], dtype=np.float64)
            shares = counts / max(counts.sum(), 1)
            ax.bar(np.arange(len(names)) + i * width, shares, width, label=name)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
        ax.set(ylabel="share", title=key.replace("_counts", "es" if key[0] == "c" else "s"))
        ax.legend()
    save_figure(fig, out / "gap_labels.png")
    written.append("gap_labels.png")
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (key, title) in zip(axes.ravel(), HIST_TITLES.items()):
        for name, entry in sources.items():
            hist = np.asarray(entry["histograms"][key], dtype=np.float64)
            ax.plot(hist / max(hist.sum(), 1), drawstyle="steps-mid", label=name)
        ax.set(title=title)
    axes[0, 0].legend()
    save_figure(fig, out / "gap_boxes.png")
    written.append("gap_boxes.png")
    if report["recall"]:
        fig, ax = plt.subplots(figsize=(8, 4))
        names = report["predicates"]
        width = 0.8 / len(report["recall"])
        for i, (name, values) in enumerate(report["recall"].items()):
            heights = [np.nan if v is None else v for v in values]
            ax.bar(np.arange(len(names)) + i * width, heights, width, label=name)
        ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right")
        ax.set(ylabel="R@50", title="Per-predicate recall of each validation source")
        ax.legend()
        save_figure(fig, out / "gap_recall.png")
        written.append("gap_recall.png")
    return written


def format_gap_markdown(report: dict[str, Any], plots: list[str]) -> str:
    """``gap.md``: one table per comparison with the real source, then the plots."""
    real = report["real"]
    lines = [f"# Domain gap: each source against `{real}`", ""]
    rows = [(n, e) for n, e in report["sources"].items() if n != real]
    if "appearance" in report:
        lines += [f"Appearance (domain classifier, Fréchet distance): {report['appearance']}.", ""]
    lines += [
        "| source | images | domain classifier AUC [95%] | Fréchet distance |",
        "|---|---:|---|---:|",
    ]
    for name, entry in rows:
        clf = entry.get("domain_classifier")
        auc = f"{clf['auc']:.3f} [{clf['low']:.3f}, {clf['high']:.3f}]" if clf else "n/a"
        frechet = f"{entry['frechet_distance']:.3g}" if "frechet_distance" in entry else "n/a"
        lines.append(f"| {name} | {entry['images']} | {auc} | {frechet} |")
    keys = ["classes", "predicates", *HIST_TITLES]
    lines += ["", "Jensen-Shannon divergence (base 2; 0 = same distribution, 1 = disjoint):", ""]
    lines += ["| source | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, entry in rows:
        js = entry.get("js_divergence", {})
        cells = [f"{js[k]:.3f}" if k in js else "n/a" for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if report["recall"]:
        sources = list(report["recall"])
        lines += ["", "Per-predicate R@50 of each validation source:", ""]
        lines += ["| predicate | " + " | ".join(sources) + " |", "|---|" + "---:|" * len(sources)]
        for i, predicate in enumerate(report["predicates"]):
            cells = [report["recall"][s][i] for s in sources]
            shown = ["n/a" if v is None else f"{v:.3f}" for v in cells]
            lines.append(f"| {predicate} | " + " | ".join(shown) + " |")
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    return "\n".join(lines)
