"""The mix search on the demo data: a 4 x 4 grid against the sweep with pruning.

Both search the real share in [0.1, 1] and the synthetic weight in [0, 1] with the same
per-trial budget; each picks the trial with the best real-validation R@50, and the pick is
scored on the real test split, which neither search saw. Reported: the steps each trained (the
compute), the picks and their test R@50. Also the sweep's bookkeeping (Optuna's sampler,
storage, pruning checks) per trial against a trial's training time.

Run: ``python benchmarks/bench_sweep.py [--quick]`` (about an hour on 2 cores; --quick: minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_result

from realsynth.config import load_config
from realsynth.studies.sweep import sweep
from realsynth.training.reopen import evaluate_checkpoint


def run_search(base: list[str], out: Path, extra: list[str]) -> tuple[dict, float]:
    # No config file: the demo data and the default mix (0.7 / 0.5) with one-to-one matching (the
    # schema defaults, identical to configs/demo.yaml before SpeaQ's recipe became the demo's).
    cfg = load_config(None, [*base, f"OUTPUT_DIR={out}", *extra])
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        report = sweep(cfg)
    return report, time.perf_counter() - start


def test_score(report: dict) -> float:
    folder = next(r["folder"] for r in report["trials"] if r["number"] == report["best"]["number"])
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluate_checkpoint(folder, split="test", quiet=True)
    return results["real"]["R@50"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short trials, small demo")
    parser.add_argument("--steps", type=int, default=1000, help="steps per trial")
    parser.add_argument("--val", type=int, default=500, help="validation images per domain")
    args = parser.parse_args(argv)
    steps = 100 if args.quick else args.steps
    val = 100 if args.quick else args.val
    base = [
        f"SOLVER.MAX_ITER={steps}",
        f"TEST.EVAL_PERIOD={steps // 4}",
        f"SOLVER.CHECKPOINT_PERIOD={steps}",
        "SWEEP.CONFIRM_SEEDS=0",
    ]
    if val != 500:
        base += [f"DATASETS.DEMO.REAL_VAL={val}", f"DATASETS.DEMO.SYNTHETIC_VAL={val}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        grid_settings = ["SWEEP.SAMPLER=grid", "SWEEP.GRID_POINTS=4", "SWEEP.TRIALS=16"]
        grid, grid_time = run_search(
            base, Path(tmp) / "grid", [*grid_settings, "SWEEP.PRUNER=none"]
        )
        tpe_settings = ["SWEEP.SAMPLER=tpe", "SWEEP.TRIALS=12", "SWEEP.PRUNER=successive_halving"]
        tpe, tpe_time = run_search(base, Path(tmp) / "tpe", tpe_settings)
        searches = (("4 x 4 grid", grid, grid_time), ("TPE sweep, pruning", tpe, tpe_time))
        for name, report, seconds in searches:
            best = report["best"]
            params = best["params"]
            rows.append(
                f"| {name} | {len(report['trials'])} | {report['steps_trained']:,} | "
                f"{report['steps_trained'] / grid['steps_trained']:.2f}x | "
                f"{seconds / 60:.0f} min | "
                f"{params['DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO']:.2f} / "
                f"{params['DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT']:.2f} | "
                f"{best['value']:.3f} | {test_score(report):.3f} |"
            )
    # Bookkeeping: the sweep's wall time not spent training, per trial, against the training time
    # of a 500-step trial (from the complete trials' training time per step).
    finished = [r for r in tpe["trials"] if r["train_seconds"]]
    training = sum(r["train_seconds"] for r in finished)
    per_step = sum(r["train_seconds"] for r in finished if r["state"] == "complete") / sum(
        r["steps"] for r in finished if r["state"] == "complete"
    )
    overhead = (tpe_time - training) / len(finished)
    lines = [
        "## Mix search (`benchmarks/bench_sweep.py`)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/bench_sweep.py"
        f"{' --quick' if args.quick else f' --steps {steps} --val {val}'}`; demo data "
        f"({val} validation images per domain, 500 real test images), {steps}-step trials, "
        f"evaluation every {steps // 4} steps, real share in [0.1, 1] x synthetic weight in "
        "[0, 1].",
        "",
        "| search | trials | steps trained | vs grid | wall time | picked share / weight | "
        "val R@50 | test R@50 |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
        *rows,
        "",
        f"Sweep bookkeeping (sampler, storage, pruning checks, report), per trial: "
        f"{overhead:.2f} s, {100 * overhead / (500 * per_step):.1f}% of a 500-step trial "
        f"({500 * per_step:.0f} s here).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_result("sweep", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
