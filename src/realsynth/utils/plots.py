"""End-of-run plots: per-source training loss, validation recall and the mix over steps (PNG
files)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402

from realsynth.utils.atomic import atomic_write  # noqa: E402


def plot_source_losses(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Plot each source's unweighted total loss (``source_loss/<name>``) against the step.

    A synthetic curve that falls far faster than the real one is the sign of a domain gap.
    Returns the written path, or None when the records hold no per-source loss.
    """
    train = [r for r in records if r.get("kind") == "train"]
    keys = sorted({k for r in train for k in r if k.startswith("source_loss/")})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        steps = [r["step"] for r in train if key in r]
        ax.plot(steps, _smooth([r[key] for r in train if key in r]), label=key.split("/", 1)[1])
    ax.set(xlabel="step", ylabel="unweighted loss (smoothed)", title="Training loss per source")
    ax.set_yscale("log")
    ax.legend()
    return save_figure(fig, path)


def plot_recall(
    records: list[dict[str, Any]], path: str | Path, metric: str = "R@50"
) -> Path | None:
    """Plot ``metric`` of every validation source against the step (records of kind ``eval``)."""
    evals = [r for r in records if r.get("kind") == "eval"]
    keys = sorted({k for r in evals for k in r if k.endswith(f"/{metric}")})
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        points = [(r["step"], r[key]) for r in evals if key in r]
        ax.plot(*zip(*points), marker="o", label=key.rsplit("/", 1)[0])
    ax.set(xlabel="step", ylabel=metric, ylim=(0, 1), title=f"Validation {metric} per source")
    ax.legend()
    return save_figure(fig, path)


def plot_mix_schedule(records: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Target vs achieved share of every source, and its loss weight, against the step.

    The achieved share is the items of the source over all items of each logged step,
    averaged over windows of about 1% of the run (one batch holds floor or ceil of the target,
    so single steps jump). Returns None when the records hold no mix fields.
    """
    train = [r for r in records if r.get("kind") == "train"]
    names = sorted({k.split("/", 1)[1] for r in train for k in r if k.startswith("items/")})
    if not names or not any("target_share/" + names[0] in r for r in train):
        return None
    steps = [r["step"] for r in train]
    window = max(1, len(train) // 100)
    fig, (shares, weights) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for name in names:
        total = [sum(r.get(f"items/{n}", 0.0) for n in names) or 1.0 for r in train]
        achieved = [r.get(f"items/{name}", 0.0) / t for r, t in zip(train, total)]
        targets = [r.get(f"target_share/{name}") for r in train]
        line = shares.plot(steps, targets, label=name, drawstyle="steps-post")
        centers, means = _window_means(steps, achieved, window)
        shares.plot(centers, means, ".", color=line[0].get_color(), markersize=3)
        weights.plot(steps, [r.get(f"weight/{name}") for r in train], drawstyle="steps-post")
    shares.set(ylabel="share of the batch", ylim=(-0.02, 1.02))
    shares.set_title("Target share (lines) and achieved share (dots) per source")
    weights.set(xlabel="step", ylabel="loss weight", title="Loss weight per source")
    shares.legend()
    return save_figure(fig, path)


def _window_means(
    steps: list[int], values: list[float], window: int
) -> tuple[list[float], list[float]]:
    starts = range(0, len(values), window)
    centers = [sum(steps[i : i + window]) / len(steps[i : i + window]) for i in starts]
    means = [sum(values[i : i + window]) / len(values[i : i + window]) for i in starts]
    return centers, means


def _smooth(values: list[float], alpha: float = 0.1) -> list[float]:
    out, running = [], None
    for value in values:
        running = value if running is None else (1 - alpha) * running + alpha * value
        out.append(running)
    return out


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
