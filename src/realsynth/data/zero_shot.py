"""Zero-shot triplets: (subject class, predicate, object class) combinations absent from training.

Two files are read:

- Scene-Graph-Benchmark's ``zeroshot_triplet.pytorch`` (``torch.save`` of an int64 tensor
  [N, 3]). Its columns are **(subject class, object class, predicate)**, 1-based (0 is SGB's
  background): that is the order SGB's ``SGZeroShotRecall`` compares against, which differs from
  the (subject, predicate, object) order of its triplet matching. Any ``.pytorch``, ``.pt`` or
  ``.pth`` file is read this way.
- A JSON list of name triplets, each ``[subject, predicate, object]`` or
  ``{"subject": ..., "predicate": ..., "object": ...}``, names from the dataset's label space.

Both become int64 [N, 3] rows (subject, predicate, object), 0-based: the layout
``SceneGraphEvaluator(zero_shot_triplets=...)`` expects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

TORCH_SUFFIXES = (".pytorch", ".pt", ".pth")


def load_zero_shot_triplets(
    path: str | Path, classes: Sequence[str], predicates: Sequence[str]
) -> np.ndarray:
    """Read a zero-shot triplet file (see the module docstring).

    Args:
        path: SGB's tensor file or a JSON list of name triplets.
        classes: the dataset's class names, 0-based.
        predicates: the dataset's predicate names, 0-based.

    Returns:
        int64 [N, 3] (subject class, predicate, object class), 0-based, duplicates removed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a malformed file, or an entry outside the label space (names the row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix in TORCH_SUFFIXES:
        triplets = _from_sgb_tensor(path, len(classes), len(predicates))
    else:
        triplets = _from_json(path, classes, predicates)
    return np.unique(triplets, axis=0) if len(triplets) else triplets


def _from_sgb_tensor(path: Path, num_classes: int, num_predicates: int) -> np.ndarray:
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable torch tensor file ({exc})") from None
    table = np.asarray(torch.as_tensor(table).long().numpy())
    if table.ndim != 2 or table.shape[1] != 3:
        raise ValueError(f"{path}: expected an [N, 3] tensor, got shape {tuple(table.shape)}")
    subject, obj, predicate = table[:, 0], table[:, 1], table[:, 2]
    for name, column, count in (
        ("subject (column 0)", subject, num_classes),
        ("object (column 1)", obj, num_classes),
        ("predicate (column 2)", predicate, num_predicates),
    ):
        bad = np.flatnonzero((column < 1) | (column > count))
        if bad.size:
            raise ValueError(
                f"{path}: row {int(bad[0])}: {name} is {int(column[bad[0]])}, expected 1..{count} "
                "(SGB's 1-based indices of this dataset's labels)"
            )
    return np.stack([subject - 1, predicate - 1, obj - 1], axis=1).astype(np.int64)


def _from_json(path: Path, classes: Sequence[str], predicates: Sequence[str]) -> np.ndarray:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of [subject, predicate, object] names")
    class_index = {name: i for i, name in enumerate(classes)}
    predicate_index = {name: i for i, name in enumerate(predicates)}
    rows = []
    for k, entry in enumerate(entries):
        names = _names(entry)
        if names is None:
            raise ValueError(
                f"{path}: entry {k} must be [subject, predicate, object] or an object with "
                f"'subject', 'predicate' and 'object', got {entry!r}"
            )
        subject, predicate, obj = names
        for what, name, index in (
            ("subject", subject, class_index),
            ("predicate", predicate, predicate_index),
            ("object", obj, class_index),
        ):
            if name not in index:
                raise ValueError(f"{path}: entry {k}: {what} {name!r} is not a label of the data")
        rows.append((class_index[subject], predicate_index[predicate], class_index[obj]))
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def _names(entry: Any) -> tuple[str, str, str] | None:
    if isinstance(entry, list) and len(entry) == 3:
        return tuple(str(v) for v in entry)  # type: ignore[return-value]
    if isinstance(entry, dict) and {"subject", "predicate", "object"} <= set(entry):
        return str(entry["subject"]), str(entry["predicate"]), str(entry["object"])
    return None
