"""Small, fast training configs for the engine tests (a few CPU seconds per run)."""

from __future__ import annotations

from pathlib import Path

from realsynth.config import load_config

TINY = [
    "DATASETS.DEMO.REAL_TRAIN=24",
    "DATASETS.DEMO.REAL_VAL=6",
    "DATASETS.DEMO.SYNTHETIC_TRAIN=48",
    "DATASETS.DEMO.SYNTHETIC_VAL=6",
    "DATASETS.DEMO.REAL_TEST=6",
    "MODEL.D_MODEL=32",
    "MODEL.NUM_QUERIES=12",
    "MODEL.ENC_LAYERS=1",
    "MODEL.DEC_LAYERS=2",
    "MODEL.DIM_FEEDFORWARD=64",
    "MODEL.BACKBONE.CHANNELS=[8,16,32]",
    "SOLVER.IMS_PER_BATCH=8",
    "SOLVER.WARMUP_ITERS=2",
    "TEST.IMS_PER_BATCH=6",
]


def tiny_config(tmp_path: Path, *overrides: str, demo_root: Path | None = None):
    """A validated config training the tiny model on a tiny demo set inside ``tmp_path``."""
    root = demo_root if demo_root is not None else tmp_path / "demo"
    return load_config(
        None,
        [*TINY, f"DATASETS.DEMO.ROOT={root}", f"OUTPUT_DIR={tmp_path / 'run'}", *overrides],
    )


class AtStep:
    """A training callback that runs ``action()`` when step ``step`` starts (before its forward)."""

    def __init__(self, step: int, action) -> None:
        self.step, self.action = step, action

    def on_step_start(self, step: int) -> None:
        if step == self.step:
            self.action()


def train_records(run: Path) -> list[dict]:
    """The ``train`` records of a run folder's metrics.jsonl."""
    from realsynth.training.run_log import read_metrics

    return [r for r in read_metrics(run) if r["kind"] == "train"]


def assert_same_records(ours: list[dict], theirs: list[dict]) -> None:
    """Two runs logged the same steps with the same values (bit for bit up to float printing)."""
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == b[key], (a["step"], key)
