"""Training speed of the tiny preset on the demo data: steps/s, images/s, where the time goes.

Each step of a bare loop is split into data loading, model forward, criterion (Hungarian matching
reported on its own), and backward + optimizer step. The real trainer (``realsynth.training.train``:
clipping, LR schedule, NaN check, logging every ``SOLVER.LOG_PERIOD`` steps, progress bar,
checkpoint cadence) runs the same steps in the same process, alternating with the bare loop, and
is reported as a ratio to it, and so is the trainer with adaptive mixing on (its cost: one
alignment measurement every ``ADAPTIVE.INTERVAL`` steps). On a CUDA machine the base preset is
measured as well.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from common import machine, write_result

from realsynth.config import load_config
from realsynth.data.batch_transport import batch_images
from realsynth.training.build import (
    build_optimizer,
    build_train_loader,
)
from realsynth.training.build_model import build_model_and_criterion
from realsynth.training.data_setup import build_data
from realsynth.training.train import train
from realsynth.utils.distributed import seed_all

PHASES = ("data", "forward", "matching", "criterion (rest)", "backward + step")
# One checkpoint inside the timed window of the trainer row (every 100 steps).
CHECKPOINT_PERIOD = 100
REPEATS = 3
ADAPTIVE = "DATASETS.MULTI_DATASET.ADAPTIVE"


@contextmanager
def timed(totals: dict[str, float], phase: str):
    start = time.perf_counter()
    yield
    totals[phase] += time.perf_counter() - start


def measure(overrides: list[str], steps: int, warmup: int) -> dict[str, float]:
    """Seconds per phase summed over ``steps`` timed training steps."""
    cfg = load_config(None, overrides)
    seed_all(cfg.SEED)
    device = torch.device(cfg.MODEL.DEVICE if cfg.MODEL.DEVICE != "auto" else "cpu")
    data = build_data(cfg)
    model, criterion = build_model_and_criterion(cfg, data, device)
    optimizer = build_optimizer(cfg, model)
    batches = endless(build_train_loader(cfg, data))
    totals = dict.fromkeys(PHASES, 0.0)
    assign = criterion.matcher.assign

    def timed_assign(*args, **kwargs):
        with timed(totals, "matching"):
            return assign(*args, **kwargs)

    criterion.matcher.assign = timed_assign
    for step in range(warmup + steps):
        if step == warmup:
            totals = dict.fromkeys(PHASES, 0.0)
        with timed(totals, "data"):
            batch = next(batches)
        with timed(totals, "forward"):
            outputs = model(batch_images(batch, device), batch["pixel_mask"].to(device))
        with timed(totals, "criterion (rest)"):
            targets = [{k: _to(v, device) for k, v in t.items()} for t in batch["targets"]]
            total = criterion.total_loss(criterion(outputs, targets))
        with timed(totals, "backward + step"):
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
    totals["criterion (rest)"] -= totals["matching"]
    totals["batch"] = cfg.SOLVER.IMS_PER_BATCH
    return totals


class _StepClock:
    """Callback: when each step starts, to time steps ``first .. last`` of a real run."""

    def __init__(self) -> None:
        self.starts: dict[int, float] = {}

    def on_step_start(self, step: int) -> None:
        self.starts[step] = time.perf_counter()


def measure_trainer(overrides: list[str], steps: int, warmup: int) -> float:
    """Steps per second of ``train`` over ``steps`` steps after ``warmup`` (final eval excluded)."""
    clock = _StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(
            None,
            [
                *overrides,
                f"SOLVER.MAX_ITER={warmup + steps + 1}",
                "TEST.EVAL_PERIOD=0",
                f"SOLVER.CHECKPOINT_PERIOD={CHECKPOINT_PERIOD}",
                f"OUTPUT_DIR={Path(tmp) / 'run'}",
            ],
        )
        with contextlib.redirect_stdout(io.StringIO()):  # its summary table is not the result
            train(cfg, callbacks=[clock])
    return steps / (clock.starts[warmup + steps + 1] - clock.starts[warmup + 1])


def endless(loader):
    """Batches across epoch boundaries, as the trainer draws them."""
    epoch = 0
    while True:
        loader.batch_sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _to(value, device):
    return value.to(device) if isinstance(value, torch.Tensor) else value


def row(name: str, totals: dict[str, float], steps: int) -> str:
    spent = sum(totals[p] for p in PHASES)
    shares = " | ".join(f"{100 * totals[p] / spent:.0f}%" for p in PHASES)
    per_step = spent / steps
    return (
        f"| {name} | {totals['batch']:.0f} | {1 / per_step:.2f} | "
        f"{totals['batch'] / per_step:.1f} | {1e3 * per_step:.0f} | {shares} |"
    )


def model_rows(steps: int, warmup: int) -> list[str]:
    """Bare-loop steps/s of each model on the CPU against today's (the tiny relation
    transformer), alternating runs, medians of ``REPEATS``."""
    from hf_models import save_detr_r50, save_resnet50

    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "relation transformer, small CNN (today's tiny preset)": [],
            "relation transformer, HF ResNet-50 backbone": [
                f"MODEL.BACKBONE.NAME=hf:{save_resnet50(Path(tmp) / 'r50')}"
            ],
            "hf_detr, small body (MODEL.HF_DETR defaults)": ["MODEL.ARCHITECTURE=hf_detr"],
            "hf_detr, DETR-R50 body": [
                "MODEL.ARCHITECTURE=hf_detr",
                f"MODEL.HF_DETR.PATH={save_detr_r50(Path(tmp) / 'detr')}",
            ],
        }
        base = ["MODEL.DEVICE=cpu", "MODEL.PRESET=tiny"]
        rates: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(REPEATS):
            for name, overrides in models.items():
                totals = measure([*base, *overrides], steps, warmup)
                rates[name].append(steps / sum(totals[p] for p in PHASES))
    median = {name: sorted(values)[REPEATS // 2] for name, values in rates.items()}
    reference = median[next(iter(models))]
    return [
        f"| {name} | {rate:.2f} | {16 * rate:.1f} | {rate / reference:.3f}x |"
        for name, rate in median.items()
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    args = parser.parse_args(argv)
    steps, warmup = (8, 2) if args.quick else (150, 5)
    # The default interval; quick runs take a decision inside their few steps too.
    interval = 4 if args.quick else 50
    adaptive_on = [f"{ADAPTIVE}.ENABLED=true", f"{ADAPTIVE}.INTERVAL={interval}"]
    runs = [("tiny, CPU", ["MODEL.DEVICE=cpu", "MODEL.PRESET=tiny"])]
    if torch.cuda.is_available():
        base = ["MODEL.DEVICE=cuda", "MODEL.PRESET=base", "INPUT.MIN_SIZE_TRAIN=[512]"]
        runs.append(("base, CUDA", base))
    header = " | ".join(PHASES)
    lines = [
        "## Training steps (demo data, the default mix 0.7 / 0.5)",
        "",
        f"Machine: {machine()}. Command: `python benchmarks/bench_train.py"
        f"{' --quick' if args.quick else ''}`; {steps} timed steps after {warmup} warm-up.",
        "",
        f"| run | batch | steps/s | images/s | ms/step | {header} |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(PHASES),
    ]
    trainer_rows, adaptive_rows = [], []
    decisions = (warmup + steps) // interval - warmup // interval
    for name, overrides in runs:
        # Alternate bare loop, trainer and adaptive trainer and compare medians: load drifts
        # on a shared machine, and the three must see the same conditions.
        bare, trainer, adaptive = [], [], []
        for _ in range(REPEATS):
            bare.append(measure(overrides, steps, warmup))
            trainer.append(measure_trainer(overrides, steps, warmup))
            adaptive.append(measure_trainer(overrides + adaptive_on, steps, warmup))
        rates = [steps / sum(t[p] for p in PHASES) for t in bare]
        middle = sorted(range(REPEATS), key=lambda i: rates[i])[REPEATS // 2]
        bare_rate, trainer_rate = rates[middle], sorted(trainer)[REPEATS // 2]
        adaptive_rate = sorted(adaptive)[REPEATS // 2]
        lines.append(row(name, bare[middle], steps))
        trainer_rows.append(
            f"| {name} | {bare_rate:.2f} | {trainer_rate:.2f} | {trainer_rate / bare_rate:.3f}x |"
        )
        per_decision = (steps / adaptive_rate - steps / trainer_rate) / max(1, decisions)
        adaptive_rows.append(
            f"| {name} | {interval} | {trainer_rate:.2f} | {adaptive_rate:.2f} | "
            f"{100 * (trainer_rate / adaptive_rate - 1):+.1f}% | {1e3 * per_decision:.0f} |"
        )
    lines += [
        "",
        f"The real trainer (logging every SOLVER.LOG_PERIOD = 20 steps, gradient clipping, LR "
        f"schedule, NaN check, progress bar, a checkpoint every {CHECKPOINT_PERIOD} steps) against "
        f"the bare loop above, same steps; medians of {REPEATS} alternating runs of each:",
        "",
        "| run | bare loop steps/s | trainer steps/s | trainer / bare |",
        "|---|---:|---:|---:|",
        *trainer_rows,
        "",
        f"Adaptive mixing (gradient alignment, 2 sources, holdout batch 16) against the same "
        f"trainer with a fixed mix; {decisions} decisions in the timed window; medians of "
        f"{REPEATS} alternating runs:",
        "",
        "| run | interval | fixed mix steps/s | adaptive steps/s | extra time | ms per decision |",
        "|---|---:|---:|---:|---:|---:|",
        *adaptive_rows,
    ]
    model_steps, model_warmup = (3, 1) if args.quick else (20, 3)
    lines += [
        "",
        f"Models on the CPU (demo images, batch 16, one-to-one matching, bare loop, "
        f"{model_steps} timed steps after {model_warmup} warm-up, medians of {REPEATS} "
        "alternating runs; random weights of the real architectures):",
        "",
        "| model | steps/s | images/s | vs today's |",
        "|---|---:|---:|---:|",
        *model_rows(model_steps, model_warmup),
    ]
    if not torch.cuda.is_available():
        lines += ["", "No CUDA device here: the base preset on a GPU was not measured."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_result("train", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
