"""End-of-run plots: per-source training loss and validation recall over steps (PNG files)."""

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
