"""What a sweep tells its user: every trial, the compute pruning saved, the response surface,
``best.yaml``, ``sweep.png``, and the chosen mix confirmed on the test split with fresh seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from optuna.trial import TrialState

from realsynth.config import load_config, to_yaml
from realsynth.studies.compare import compare
from realsynth.studies.response_surface import SurfaceFit, fit_response_surface
from realsynth.studies.sweep_space import Parameter, override
from realsynth.utils.atomic import atomic_write_text
from realsynth.utils.plots import plt, save_figure
from realsynth.utils.tables import markdown_table


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial: number, state, parameters, value, steps trained, error."""
    return [
        {
            "number": t.number,
            "state": t.state.name.lower(),
            "params": dict(t.params),
            "value": t.value,
            "steps": t.user_attrs.get("steps"),
            "train_seconds": t.user_attrs.get("train_seconds"),
            "error": t.user_attrs.get("error"),
            "folder": t.user_attrs.get("folder"),
        }
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING
    ]


def sweep_report(cfg: DictConfig, study: Any, space: list[Parameter]) -> dict[str, Any]:
    """The sweep's results (no training): best trial, compute, response surface."""
    rows = trial_rows(study)
    done = [r for r in rows if r["state"] == "complete"]
    # Only what pruning saved: failed trials saved nothing, they only cost their steps.
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    spent = sum(r["steps"] or 0 for r in finished)
    full = cfg.SOLVER.MAX_ITER * len(finished)
    report: dict[str, Any] = {
        "metric": cfg.SWEEP.METRIC,
        "trials": rows,
        "steps_trained": spent,
        "steps_without_pruning": full,
        "compute_saved_by_pruning": 1 - spent / full if full else 0.0,
        "failed_trials": sum(r["state"] == "fail" for r in rows),
        "best": None,
        "surface": None,
    }
    if done:
        best = max(done, key=lambda r: r["value"])
        report["best"] = {
            "number": best["number"],
            "params": best["params"],
            "value": best["value"],
        }
    numeric = [p for p in space if p.numeric]
    surface = _surface(numeric, done, cfg.SEED)
    if surface is not None:
        report["surface"] = surface.to_dict()
    return report


def _surface(numeric: list[Parameter], done: list[dict], seed: int) -> SurfaceFit | None:
    if not numeric or not done:
        return None
    values = np.array([[r["params"][p.key] for p in numeric] for r in done], dtype=np.float64)
    scores = np.array([r["value"] for r in done], dtype=np.float64)
    return fit_response_surface(numeric, values, scores, seed=seed)


def write_best_config(cfg: DictConfig, params: dict[str, Any], path: Path) -> Path:
    """A complete config of the chosen mix that ``realsynth train --config-file`` runs as is."""
    best = load_config(
        None,
        [*(override(k, v) for k, v in params.items()), f"OUTPUT_DIR={path.parent / 'best'}"],
        base_yaml=to_yaml(cfg),
    )
    chosen = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
    header = f"# The best mix of `realsynth sweep` (validation {cfg.SWEEP.METRIC}): {chosen}\n"
    return atomic_write_text(path, header + to_yaml(best))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def confirm(cfg: DictConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The chosen mix, the base config's mix and real only, ``SWEEP.CONFIRM_SEEDS`` fresh seeds
    each, compared on the test split (never seen by the search)."""
    chosen = [override(k, v) for k, v in params.items()]
    settings = load_config(
        None,
        [
            f"OUTPUT_DIR={Path(cfg.OUTPUT_DIR) / 'confirm'}",
            f"SEED={cfg.SEED + 1}",  # the search used SEED: these seeds are fresh
            f"COMPARE.SEEDS={cfg.SWEEP.CONFIRM_SEEDS}",
            "COMPARE.BUILTIN=[real_only,mix]",
            "COMPARE.REFERENCE=real_only",
            "COMPARE.SPLIT=test",
            f"COMPARE.METRIC={cfg.SWEEP.METRIC}",
        ],
        base_yaml=to_yaml(cfg),
    )
    settings = load_config(
        None,
        [f"COMPARE.VARIANTS=[{{NAME: chosen, OVERRIDES: {chosen!r}}}]"],
        base_yaml=to_yaml(settings),
    )
    return compare(settings)


def plot_sweep(report: dict[str, Any], space: list[Parameter], path: Path) -> Path | None:
    """The predicted metric over the first two numeric parameters, the trials on top."""
    numeric = [p for p in space if p.numeric]
    rows = [r for r in report["trials"] if r["state"] in ("complete", "pruned")]
    if not numeric or not rows:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 5))
    x_key = numeric[0].key
    y_key = numeric[1].key if len(numeric) > 1 else None
    if report["surface"] is not None and y_key is not None:
        _draw_surface(ax, report, numeric, fig)
    for state, marker in (("complete", "o"), ("pruned", "x")):
        points = [r for r in rows if r["state"] == state]
        if points:
            ys = [r["params"][y_key] if y_key else (r["value"] or 0) for r in points]
            ax.scatter([r["params"][x_key] for r in points], ys, marker=marker, c="k", label=state)
    if report["best"] is not None:
        best = report["best"]["params"]
        ax.scatter(
            [best[x_key]],
            [best[y_key] if y_key else report["best"]["value"]],
            marker="*",
            s=250,
            c="gold",
            edgecolors="k",
            label="best trial",
        )
    ax.set(xlabel=x_key.rsplit(".", 1)[-1], ylabel=(y_key or report["metric"]).rsplit(".", 1)[-1])
    ax.set_title(f"Sweep: validation {report['metric']}")
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def _draw_surface(ax: Any, report: dict[str, Any], numeric: list[Parameter], fig: Any) -> None:
    from realsynth.studies.response_surface import design_matrix, scale

    px, py = numeric[0], numeric[1]
    xs, ys = np.linspace(px.low, px.high, 60), np.linspace(py.low, py.high, 60)
    grid = np.array([[x, y] for y in ys for x in xs])
    optimum = report["surface"]["optimum"]
    full = np.array([[*g, *(optimum[p.key] for p in numeric[2:])] for g in grid])
    coefficients = np.asarray(report["surface"].get("coefficients", []))
    if coefficients.size == 0:
        return
    z = design_matrix(scale(numeric, full)) @ coefficients
    image = ax.contourf(xs, ys, z.reshape(len(ys), len(xs)), levels=20, cmap="viridis")
    fig.colorbar(image, ax=ax, label=f"predicted {report['metric']}")


def format_sweep(report: dict[str, Any]) -> str:
    """The trials table, the best trial, the compute saved and the predicted optimum."""
    keys = sorted({k for r in report["trials"] for k in r["params"]})
    rows = [
        [
            str(r["number"]),
            r["state"],
            *(
                f"{r['params'][k]:.4g}"
                if isinstance(r["params"].get(k), float)
                else str(r["params"].get(k, "-"))
                for k in keys
            ),
            "-" if r["value"] is None else f"{100 * r['value']:.2f}",
            str(r["steps"] or "-"),
        ]
        for r in report["trials"]
    ]
    short = [k.rsplit(".", 1)[-1] for k in keys]
    lines = [markdown_table(["trial", "state", *short, f"{report['metric']} %", "steps"], rows), ""]
    if report["best"]:
        lines.append(
            f"Best trial {report['best']['number']}: {report['best']['params']} "
            f"({100 * report['best']['value']:.2f}% validation {report['metric']})"
        )
    failed = report.get("failed_trials", 0)
    lines.append(
        f"Compute: {report['steps_trained']} of {report['steps_without_pruning']} steps of the "
        f"finished trials ({100 * report['compute_saved_by_pruning']:.0f}% saved by pruning)"
        + (f"; {failed} trial(s) failed or were stopped" if failed else "")
    )
    if report["surface"]:
        s = report["surface"]
        where = ", ".join(
            f"{k.rsplit('.', 1)[-1]}={v:.3f} [{s['optimum_interval'][k][0]:.3f}, "
            f"{s['optimum_interval'][k][1]:.3f}]"
            for k, v in s["optimum"].items()
        )
        lines.append(
            f"Response surface ({s['num_trials']} trials): predicted optimum {where}, "
            f"{100 * s['predicted']:.2f}% [{100 * s['predicted_interval'][0]:.2f}, "
            f"{100 * s['predicted_interval'][1]:.2f}]"
        )
    return "\n".join(lines)
