"""Reading the VG150 files (Neural-Motifs / Scene-Graph-Benchmark layout) and decoding boxes.

Files: ``VG-SGG-with-attri.h5`` (or ``VG-SGG.h5``), ``VG-SGG-dicts-with-attri.json`` (or
``VG-SGG-dicts.json``), ``image_data.json`` and the ``VG_100K/`` image folder. h5 datasets:
``split`` [I] (0 train pool, 2 test); ``img_to_first_box``, ``img_to_last_box``,
``img_to_first_rel``, ``img_to_last_rel`` [I] (inclusive, -1 for none); ``labels`` [B, 1]
(1-based); ``boxes_{box_scale}`` [B, 4] cx, cy, w, h in pixels of the image scaled so its longest
side is ``box_scale``; ``relationships`` [R, 2] (global box indices); ``predicates`` [R, 1]
(1-based). Rows align with ``image_data.json`` once image ids 1592, 1722, 4616, 4617
(corrupted) are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from realsynth.utils.box_ops import box_xywh_to_xyxy

VG_CORRUPTED_IMAGE_IDS = frozenset({1592, 1722, 4616, 4617})
SPLIT_FLAGS = {"train": 0, "val": 0, "test": 2}
H5_NAMES = ("VG-SGG-with-attri.h5", "VG-SGG.h5")
DICTS_NAMES = ("VG-SGG-dicts-with-attri.json", "VG-SGG-dicts.json")


H5_REQUIRED = (
    "split",
    "img_to_first_box",
    "img_to_last_box",
    "img_to_first_rel",
    "img_to_last_rel",
    "labels",
    "relationships",
    "predicates",
)


def find_vg150_files(folder: str | Path) -> dict[str, Path]:
    """Locates ``h5``, ``dicts``, ``image_data`` and ``image_root`` (``VG_100K``) in a folder.

    Raises:
        FileNotFoundError: one of them is missing (names the candidates).
    """
    folder = Path(folder)
    found: dict[str, Path] = {}
    for key, names in (
        ("h5", H5_NAMES),
        ("dicts", DICTS_NAMES),
        ("image_data", ("image_data.json",)),
    ):
        hits = [folder / n for n in names if (folder / n).is_file()]
        if not hits:
            raise FileNotFoundError(f"{folder}: none of {list(names)} found (needed for VG150)")
        found[key] = hits[0]
    found["image_root"] = folder / "VG_100K"
    return found


def load_vg_dicts(dicts_file: str | Path) -> tuple[list[str], list[str]]:
    """Class and predicate names in 0-based order from 1-based ``label_to_idx`` /
    ``predicate_to_idx``.

    Raises:
        ValueError: a mapping is missing or its indices are not exactly 1..K.
    """
    with open(dicts_file, encoding="utf-8") as f:
        info = json.load(f)
    names = []
    for key in ("label_to_idx", "predicate_to_idx"):
        mapping = info.get(key)
        if not isinstance(mapping, dict):
            raise ValueError(f"{dicts_file}: missing mapping '{key}'")
        ordered = sorted(mapping, key=lambda k: mapping[k])
        if [mapping[k] for k in ordered] != list(range(1, len(ordered) + 1)):
            raise ValueError(f"{dicts_file}: '{key}' indices must be exactly 1..{len(ordered)}")
        names.append(ordered)
    return names[0], names[1]


def load_vg_image_data(image_data_file: str | Path, num_rows: int) -> list[dict[str, Any]]:
    """``image_data.json`` entries aligned with the h5 rows (corrupted ids dropped).

    Raises:
        ValueError: the count after dropping differs from the h5 row count.
    """
    with open(image_data_file, encoding="utf-8") as f:
        entries = json.load(f)
    for k, entry in enumerate(entries):
        missing = [key for key in ("image_id", "width", "height") if key not in entry]
        if missing:
            raise ValueError(f"{image_data_file}: entry {k} lacks {missing}")
    kept = [e for e in entries if int(e["image_id"]) not in VG_CORRUPTED_IMAGE_IDS]
    if len(kept) != num_rows:
        raise ValueError(
            f"{image_data_file}: {len(kept)} images after dropping corrupted ids "
            f"{sorted(VG_CORRUPTED_IMAGE_IDS)}, but the h5 has {num_rows} rows"
        )
    return kept


@dataclass(frozen=True)
class VGArrays:
    """The h5 datasets realsynth reads, whole (B boxes, R relations, I rows).

    Attributes:
        split: int64 [I] split flags; ``first_box`` / ``last_box`` / ``first_rel`` /
            ``last_rel`` int64 [I] inclusive ranges (-1 for none).
        labels: int64 [B] 1-based classes; ``boxes`` int64 [B, 4] cx, cy, w, h at ``box_scale``.
        pairs: int64 [R, 2] global box indices; ``predicates`` int64 [R] 1-based.
        trust: the optional per-instance datasets present in the file (:data:`TRUST_DATASETS`:
            ``box_loss_weight`` / ``box_ignore`` [B], ``relation_loss_weight`` /
            ``relation_ignore`` [R]), or None.
    """

    split: np.ndarray
    first_box: np.ndarray
    last_box: np.ndarray
    first_rel: np.ndarray
    last_rel: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    pairs: np.ndarray
    predicates: np.ndarray
    box_scale: int
    trust: dict[str, np.ndarray] | None = None


#: Optional h5 datasets of per-instance trust, aligned with ``labels`` (boxes) and
#: ``relationships``: weights finite and >= 0, ignore flags 0 or 1.
TRUST_DATASETS = {
    "box_loss_weight": "labels",
    "box_ignore": "labels",
    "relation_loss_weight": "predicates",
    "relation_ignore": "predicates",
}


def _read_trust(h5: Any, h5_file: str | Path, arrays: dict[str, np.ndarray]) -> dict | None:
    trust = {}
    for name, aligned in TRUST_DATASETS.items():
        if name not in h5:
            continue
        values = h5[name][:].reshape(-1).astype(np.float64)
        expected = arrays[aligned].reshape(-1).shape[0]
        if values.shape[0] != expected:
            raise ValueError(
                f"{h5_file}: h5 dataset {name!r} has {values.shape[0]} entries, expected "
                f"{expected} (one per row of {aligned!r})"
            )
        if name.endswith("ignore"):
            if not np.isin(values, (0, 1)).all():
                raise ValueError(f"{h5_file}: h5 dataset {name!r} must hold 0 or 1 only")
            trust[name] = values.astype(bool)
        else:
            bad = np.flatnonzero(~np.isfinite(values) | (values < 0))
            if bad.size:
                raise ValueError(
                    f"{h5_file}: h5 dataset {name!r} must be finite and >= 0; row {int(bad[0])} "
                    f"is {values[bad[0]]}"
                )
            trust[name] = values.astype(np.float32)
    return trust or None


def read_vg_h5(h5_file: str | Path, box_scale: int = 1024) -> VGArrays:
    """Read the h5 datasets of :class:`VGArrays` into memory.

    Raises:
        ValueError: a dataset is missing (names the file and the datasets) or unreadable.
    """
    key = f"boxes_{box_scale}"
    try:
        with h5py.File(h5_file, "r") as h5:
            missing = [k for k in (*H5_REQUIRED, key) if k not in h5]
            if missing:
                raise ValueError(f"{h5_file}: missing h5 datasets {missing} (VG-SGG schema)")
            arrays = {k: h5[k][:].astype(np.int64) for k in (*H5_REQUIRED, key)}
            trust = _read_trust(h5, h5_file, arrays)
    except OSError as exc:
        raise ValueError(f"{h5_file}: not a readable h5 file ({exc})") from None
    return VGArrays(
        split=arrays["split"].reshape(-1),
        first_box=arrays["img_to_first_box"].reshape(-1),
        last_box=arrays["img_to_last_box"].reshape(-1),
        first_rel=arrays["img_to_first_rel"].reshape(-1),
        last_rel=arrays["img_to_last_rel"].reshape(-1),
        labels=arrays["labels"].reshape(-1),
        boxes=arrays[key].reshape(-1, 4),
        pairs=arrays["relationships"].reshape(-1, 2),
        predicates=arrays["predicates"].reshape(-1),
        box_scale=int(box_scale),
        trust=trust,
    )


def decode_vg_boxes(cxcywh: np.ndarray) -> np.ndarray:
    """``boxes_{scale}`` (cx, cy, w, h, integers) -> xyxy exactly as Scene-Graph-Benchmark does.

    SGB's ``load_graphs`` subtracts half the size in place on the int32 array, so ``x1 = cx - w/2``
    is truncated toward zero before ``x2 = x1 + w``: ``[11, 100, 3, 20]`` decodes to
    ``[9, 90, 12, 110]``, not ``[9.5, 90, 12.5, 110]``.

    Args:
        cxcywh: int [B, 4] boxes at the file's scale.

    Returns:
        float64 [B, 4] xyxy at the same scale (integer values).
    """
    boxes = np.asarray(cxcywh, dtype=np.float64).reshape(-1, 4)
    corner = np.trunc(boxes[:, :2] - boxes[:, 2:] / 2)  # where SGB's int32 assignment truncates
    xywh = torch.from_numpy(np.concatenate([corner, boxes[:, 2:]], axis=1))
    return box_xywh_to_xyxy(xywh).numpy()
