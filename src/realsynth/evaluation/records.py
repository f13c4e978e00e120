"""Every image's evaluation record per validation source, saved beside a run's results.

A run's final evaluation writes ``eval_records.npz`` (:data:`EVAL_RECORDS`): one float64 array
``[N, record_size]`` per source (the rows of :class:`SceneGraphEvaluator`) and the evaluator's
settings, so ``compare`` and the diagnostics recompute any metric (mean Recall@K included) on
resampled images.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from realsynth.evaluation.recall import SceneGraphEvaluator
from realsynth.utils.atomic import atomic_write

#: Every final evaluation's per-image records, in the run folder (see :func:`save_records`).
EVAL_RECORDS = "eval_records.npz"

Records = dict[str, np.ndarray]  # validation source -> float64 [N, record_size]


def load_records(path: Path) -> tuple[SceneGraphEvaluator, Records]:
    """An evaluator with the settings the records were made with, and the records by source.

    Raises:
        FileNotFoundError: the run has no records (it has not finished).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist: the run has not finished its evaluation")
    with np.load(path) as data:
        records = {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith("records/")}
        template = SceneGraphEvaluator(
            int(data["num_predicates"]),
            ks=tuple(int(k) for k in data["ks"]),
            protocol=str(data["protocol"]),
            zero_shot_triplets=data["zero_shot"] if "zero_shot" in data.files else None,
        )
    return template, records


def save_records(path: Path, evaluators: dict[str, SceneGraphEvaluator]) -> Path:
    """Every image's record per source (``.npz``, one array per source), for the statistics of
    ``realsynth compare``; the evaluator settings go along so the rows can be summarized again."""
    arrays = {name: ev.records for name, ev in evaluators.items()}
    first = next(iter(evaluators.values()), None)
    meta = {}
    if first is not None:
        meta = {
            "ks": np.array(first.ks),
            "protocol": np.array(first.protocol),
            "num_predicates": np.array(first.num_predicates),
        }
        if first.zero_shot is not None:
            meta["zero_shot"] = first.zero_shot
    buffer = io.BytesIO()
    np.savez(buffer, **{f"records/{k}": v for k, v in arrays.items()}, **meta)
    return atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
