"""VG150: the Neural-Motifs / Scene-Graph-Benchmark files, with Scene-Graph-Benchmark semantics.

Files: ``VG-SGG-with-attri.h5`` (or ``VG-SGG.h5``), ``VG-SGG-dicts-with-attri.json`` (or
``VG-SGG-dicts.json``), ``image_data.json`` and the ``VG_100K/`` image folder.

h5 datasets used: ``split`` [I] (0 train pool, 2 test); ``img_to_first_box``,
``img_to_last_box``, ``img_to_first_rel``, ``img_to_last_rel`` [I] (inclusive, -1 for none);
``labels`` [B, 1] (1-based); ``boxes_{box_scale}`` [B, 4] cx, cy, w, h in pixels of the image
scaled so its longest side is ``box_scale``; ``relationships`` [R, 2] (global box indices);
``predicates`` [R, 1] (1-based). Rows align with ``image_data.json`` once image ids 1592, 1722,
4616, 4617 (corrupted) are dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from realsynth.data.images import RelationDataset
from realsynth.data.transforms import Transform

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


def split_rows(
    split_flags: np.ndarray,
    first_box: np.ndarray,
    first_rel: np.ndarray,
    *,
    split: str,
    num_val_images: int,
    filter_empty_rels: bool,
) -> np.ndarray:
    """h5 row indices of a split: flag match, at least one box, (optionally) one relation; val is
    the first ``num_val_images`` of the filtered train pool and train the rest."""
    if split not in SPLIT_FLAGS:
        raise ValueError(f"split must be one of {list(SPLIT_FLAGS)}, got {split!r}")
    mask = (split_flags == SPLIT_FLAGS[split]) & (first_box >= 0)
    if filter_empty_rels:
        mask &= first_rel >= 0
    rows = np.flatnonzero(mask)
    if num_val_images > 0 and split == "val":
        rows = rows[:num_val_images]
    elif num_val_images > 0 and split == "train":
        rows = rows[num_val_images:]
    return rows


def _overlapping(boxes: np.ndarray, relations: np.ndarray) -> np.ndarray:
    """Mask of relations whose boxes intersect, with SGB's inclusive-pixel (+1) convention."""
    a, b = boxes[relations[:, 0]], boxes[relations[:, 1]]
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1
    return (iw.clip(min=0) * ih.clip(min=0)) > 0


class VG150Dataset(RelationDataset):
    """Visual Genome 150/50 in the Scene-Graph-Benchmark h5 format.

    Args:
        h5_file, dicts_file, image_data_file: the three annotation files.
        image_root: folder of ``{image_id}.jpg``.
        split: "train", "val" or "test".
        box_scale: longest side the h5 boxes are expressed at (``boxes_{box_scale}``).
        num_val_images: size of val, carved from the start of the filtered train pool.
        filter_empty_rels: drop images without relations.
        filter_duplicate_rels: (train only) keep one randomly drawn predicate per (subject,
            object) pair, drawn from the item's generator.
        filter_non_overlap: (train only) keep relations whose boxes intersect; drop images left
            without any.
        transforms, source, seed, skip_bad_samples: see :class:`RelationDataset`.
    """

    rescale_on_size_mismatch = True

    def __init__(
        self,
        h5_file: str | Path,
        dicts_file: str | Path,
        image_data_file: str | Path,
        image_root: str | Path,
        *,
        split: str,
        box_scale: int = 1024,
        num_val_images: int = 5000,
        filter_empty_rels: bool = True,
        filter_duplicate_rels: bool = True,
        filter_non_overlap: bool = False,
        transforms: Transform | None = None,
        source: str = "vg150",
        seed: int = 0,
        skip_bad_samples: bool = False,
    ) -> None:
        super().__init__(
            source=source, transforms=transforms, seed=seed, skip_bad_samples=skip_bad_samples
        )
        self.split = split
        self.image_root = Path(image_root)
        self.box_scale = int(box_scale)
        self.filter_duplicate_rels = filter_duplicate_rels and split == "train"
        self.classes, self.predicates = load_vg_dicts(dicts_file)
        with h5py.File(h5_file, "r") as h5:
            missing = [key for key in H5_REQUIRED if key not in h5]
            if missing:
                raise ValueError(f"{h5_file}: missing h5 datasets {missing} (VG-SGG schema)")
            rows = split_rows(
                h5["split"][:],
                h5["img_to_first_box"][:],
                h5["img_to_first_rel"][:],
                split=split,
                num_val_images=num_val_images,
                filter_empty_rels=filter_empty_rels,
            )
            image_data = load_vg_image_data(image_data_file, int(h5["split"].shape[0]))
            self._load_graphs(h5, rows, filter_non_overlap and split == "train", Path(h5_file))
        self.image_info = [image_data[r] for r in self.rows]

    def _load_graphs(self, h5: h5py.File, rows: np.ndarray, non_overlap: bool, name: Path) -> None:
        key = f"boxes_{self.box_scale}"
        if key not in h5:
            raise ValueError(f"{name}: no dataset '{key}' (box_scale={self.box_scale})")
        cxcywh = h5[key][:].astype(np.float32)
        if (cxcywh[:, :2] < 0).any() or (cxcywh[:, 2:] <= 0).any():
            bad = int(np.flatnonzero((cxcywh[:, :2] < 0).any(1) | (cxcywh[:, 2:] <= 0).any(1))[0])
            raise ValueError(
                f"{name}: {key}[{bad}] = {cxcywh[bad].tolist()} needs cx, cy >= 0 and w, h > 0"
            )
        xyxy = np.concatenate(
            [cxcywh[:, :2] - cxcywh[:, 2:] / 2, cxcywh[:, :2] + cxcywh[:, 2:] / 2], 1
        )
        labels = h5["labels"][:, 0].astype(np.int64) - 1
        pairs = h5["relationships"][:].astype(np.int64)
        predicates = h5["predicates"][:, 0].astype(np.int64) - 1
        first_box, last_box = h5["img_to_first_box"][:], h5["img_to_last_box"][:]
        first_rel, last_rel = h5["img_to_first_rel"][:], h5["img_to_last_rel"][:]
        self.rows, self._boxes, self._labels, self._relations = [], [], [], []
        for row in rows.tolist():
            b0, b1 = int(first_box[row]), int(last_box[row]) + 1
            boxes = xyxy[b0:b1]
            if first_rel[row] >= 0:
                r0, r1 = int(first_rel[row]), int(last_rel[row]) + 1
                rels = np.column_stack([pairs[r0:r1] - b0, predicates[r0:r1]])
                if rels.size and (rels[:, :2].min() < 0 or rels[:, :2].max() >= len(boxes)):
                    raise ValueError(
                        f"{name}: row {row}: relationships {r0}..{r1 - 1} point outside "
                        f"boxes {b0}..{b1 - 1}"
                    )
            else:
                rels = np.zeros((0, 3), dtype=np.int64)
            if non_overlap:
                rels = rels[_overlapping(boxes, rels)]
                if len(rels) == 0:
                    continue
            self.rows.append(row)
            self._boxes.append(boxes)
            self._labels.append(labels[b0:b1])
            self._relations.append(rels)

    def __len__(self) -> int:
        return len(self.rows)

    def image_path(self, index: int) -> Path:
        return self.image_root / f"{self.image_info[index]['image_id']}.jpg"

    def annotation(self, index: int) -> dict[str, Any]:
        info = self.image_info[index]
        width, height = int(info["width"]), int(info["height"])
        boxes = self._boxes[index] * (max(width, height) / self.box_scale)
        return {
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
            "labels": torch.from_numpy(self._labels[index].copy()),
            "relations": torch.from_numpy(self._relations[index].astype(np.int64)),
            "image_id": int(info["image_id"]),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "file_name": f"{info['image_id']}.jpg",
            "source": self.source,
        }

    def sample_annotation(self, target: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Train only: one predicate per (subject, object), drawn uniformly among duplicates."""
        if not self.filter_duplicate_rels or len(target["relations"]) == 0:
            return target
        groups: dict[tuple[int, int], list[int]] = {}
        for s, o, p in target["relations"].tolist():
            groups.setdefault((s, o), []).append(p)
        rels = [(s, o, preds[int(rng.integers(len(preds)))]) for (s, o), preds in groups.items()]
        return {**target, "relations": torch.tensor(rels, dtype=torch.int64).reshape(-1, 3)}


def vg150_from_folder(
    folder: str | Path, *, split: str, image_root: str | Path | None = None, **kwargs: Any
) -> VG150Dataset:
    """Builds a :class:`VG150Dataset` from a folder laid out as :func:`find_vg150_files` expects
    (``image_root`` defaults to ``folder/VG_100K``)."""
    files = find_vg150_files(folder)
    root = image_root if image_root is not None else files["image_root"]
    return VG150Dataset(
        files["h5"], files["dicts"], files["image_data"], root, split=split, **kwargs
    )
