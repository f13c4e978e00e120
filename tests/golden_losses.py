"""Seeded tiny runs whose logged records are kept as a golden fixture.

``python tests/golden_losses.py --record`` (from the repository root) writes
``tests/fixtures/golden_losses.json``; ``test_golden_losses.py`` trains the same runs and compares.
The fixture was recorded before the package was laid out by concept (one-to-one matching, SpeaQ's
recipe, adaptive mixing with adapted weights, and schedules of the share and the weight), so any
change of behaviour in a refactor shows up as a changed loss.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "fixtures" / "golden_losses.json"
SPEAQ_DEMO = HERE.parent / "configs" / "speaq_demo.yaml"

# A frozen copy of the tiny settings, not tiny_runs.TINY: the fixture was recorded with exactly
# these, and must not follow later edits of the shared helpers.
SIZES = (
    "DATASETS.DEMO.REAL_TRAIN=24",
    "DATASETS.DEMO.REAL_VAL=6",
    "DATASETS.DEMO.SYNTHETIC_TRAIN=48",
    "DATASETS.DEMO.SYNTHETIC_VAL=6",
    "DATASETS.DEMO.REAL_TEST=6",
)
TINY_MODEL = (
    "MODEL.D_MODEL=32",
    "MODEL.NUM_QUERIES=12",
    "MODEL.ENC_LAYERS=1",
    "MODEL.DEC_LAYERS=2",
    "MODEL.DIM_FEEDFORWARD=64",
    "MODEL.BACKBONE.CHANNELS=[8,16,32]",
    "SOLVER.IMS_PER_BATCH=8",
    "SOLVER.WARMUP_ITERS=2",
    "TEST.IMS_PER_BATCH=6",
    "SOLVER.MAX_ITER=6",
    "TEST.EVAL_PERIOD=3",
    "SOLVER.CHECKPOINT_PERIOD=100",
)
A = "DATASETS.MULTI_DATASET.ADAPTIVE"
S = "DATASETS.MULTI_DATASET"

#: name -> (config file or None, overrides)
SCENARIOS: dict[str, tuple[Path | None, tuple[str, ...]]] = {
    "one_to_one": (None, ()),
    "speaq": (SPEAQ_DEMO, ()),
    "adaptive_weights": (
        None,
        (
            "SOLVER.MAX_ITER=9",
            f"{A}.ENABLED=true",
            f"{A}.INTERVAL=3",
            f"{A}.HOLDOUT_IMAGES=5",
            f"{A}.HOLDOUT_BATCH=4",
            f"{A}.STEP_SIZE=4.0",
            f"{A}.SMOOTHING=0.0",
            f"{A}.ADAPT_WEIGHTS=true",
        ),
    ),
    "schedules": (
        None,
        (
            f"{S}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear",
            f"{S}.REAL_SAMPLING_RATIO_SCHEDULE.START_VALUE=0.4",
            f"{S}.REAL_SAMPLING_RATIO_SCHEDULE.END_VALUE=1.0",
            f"{S}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.KIND=linear",
            f"{S}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.START_VALUE=1.0",
            f"{S}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.END_VALUE=0.2",
        ),
    ),
}


def machine() -> dict[str, str]:
    """What the bit-for-bit comparison depends on besides the code (the runs use one thread)."""
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    # A virtual machine may name only the family ("AMD EPYC"): the vector extensions the kernels
    # choose between tell two hosts of one name apart.
    return {"torch": torch.__version__, "cpu": model, "isa": _vector_extensions(cpuinfo)}


def _vector_extensions(cpuinfo: Path) -> str:
    """The AVX / AMX extensions of the CPU, as torch's CPU dispatch sees them."""
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "fma")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return " ".join(f for f in wanted if f in flags)


def run_scenario(name: str, tmp: Path, demo_root: Path) -> list[dict]:
    """Train scenario ``name`` in ``tmp``; its train, eval and adaptive records, in order."""
    from realsynth.config import load_config
    from realsynth.training.run_log import read_metrics
    from realsynth.training.train import train

    config_file, overrides = SCENARIOS[name]
    cfg = load_config(
        config_file,
        [
            *SIZES,
            *TINY_MODEL,
            f"DATASETS.DEMO.ROOT={demo_root}",
            f"OUTPUT_DIR={tmp / name}",
            *overrides,
        ],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reductions split over threads round differently
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return [r for r in read_metrics(tmp / name) if r["kind"] in ("train", "eval", "adaptive")]


def record() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = {name: run_scenario(name, tmp, tmp / "demo") for name in SCENARIOS}
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps({"machine": machine(), "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/golden_losses.py --record")
    record()
