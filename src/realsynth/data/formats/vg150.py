"""VG150: the Neural-Motifs / Scene-Graph-Benchmark files, with Scene-Graph-Benchmark semantics.

The file layout and box decoding are in :mod:`realsynth.data.formats.vg150_files`, the rules a
row must pass in :mod:`realsynth.data.formats.vg150_rules`; this module turns the rows of one
split into dataset items.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from realsynth.data.formats.vg150_files import (
    SPLIT_FLAGS,
    VGArrays,
    decode_vg_boxes,
    find_vg150_files,
    load_vg_dicts,
    load_vg_image_data,
    read_vg_h5,
)
from realsynth.data.formats.vg150_rules import check_vg150_arrays, row_location
from realsynth.data.image_files import ImageEntry, check_image_files
from realsynth.data.images import RelationDataset, SkippedSample
from realsynth.data.problems import Findings, raise_or_skip
from realsynth.data.transforms import Transform
from realsynth.utils.box_ops import clip_boxes_to_image


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
    the first ``num_val_images`` of the filtered train pool and train the rest.

    Raises:
        ValueError: unknown split; ``val`` with ``num_val_images`` 0; a carve that leaves the
            train pool less than half of its images (names NUM_VAL_IMAGES and a value that works).
    """
    if split not in SPLIT_FLAGS:
        raise ValueError(f"split must be one of {list(SPLIT_FLAGS)}, got {split!r}")
    mask = (split_flags == SPLIT_FLAGS[split]) & (first_box >= 0)
    if filter_empty_rels:
        mask &= first_rel >= 0
    rows = np.flatnonzero(mask)
    if split == "test":
        return rows
    pool = len(rows)
    if split == "val" and num_val_images <= 0:
        raise ValueError(
            "NUM_VAL_IMAGES is 0, so there is no validation split; set NUM_VAL_IMAGES > 0 "
            "or use VAL_SPLIT: test"
        )
    if num_val_images > 0 and pool - num_val_images < pool / 2:
        raise ValueError(
            f"NUM_VAL_IMAGES={num_val_images} would leave {max(0, pool - num_val_images)} of the "
            f"{pool} images of the train pool for training; use at most {pool // 2} "
            f"(e.g. NUM_VAL_IMAGES={max(1, pool // 10)})"
        )
    return rows[:num_val_images] if split == "val" else rows[num_val_images:]


def _overlapping(boxes: np.ndarray, relations: np.ndarray) -> np.ndarray:
    """Mask of relations whose boxes intersect, with SGB's inclusive-pixel (+1) convention."""
    a, b = boxes[relations[:, 0]], boxes[relations[:, 1]]
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1
    return (iw.clip(min=0) * ih.clip(min=0)) > 0


class VG150Dataset(RelationDataset):
    """Visual Genome 150/50 in the Scene-Graph-Benchmark h5 format.

    Every rule of :func:`~realsynth.data.formats.vg150_rules.check_vg150_arrays` is applied to
    the split's rows at construction, and (``check_files``) every image file must exist; an image
    with a problem raises, or with ``skip_bad_samples`` is left out and listed in ``skipped``.

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
        check_files: check that every image file of the split exists (one directory scan).
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
        check_files: bool = True,
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
        arrays = read_vg_h5(h5_file, self.box_scale)
        image_data = load_vg_image_data(image_data_file, len(arrays.split))
        try:
            rows = split_rows(
                arrays.split,
                arrays.first_box,
                arrays.first_rel,
                split=split,
                num_val_images=num_val_images,
                filter_empty_rels=filter_empty_rels,
            )
        except ValueError as exc:
            raise ValueError(f"{h5_file} (source '{source}', split {split}): {exc}") from None
        ids = np.array([int(e["image_id"]) for e in image_data], dtype=np.int64)
        sizes = np.array([[int(e["width"]), int(e["height"])] for e in image_data], np.int64)
        findings = self._findings(arrays, rows, ids, sizes, check_files)
        bad = raise_or_skip(
            f"{h5_file} (source '{source}', split {split})", findings, skip=skip_bad_samples
        )
        self.skipped = [SkippedSample(source, f"{ids[r]}.jpg", p) for r, p in sorted(bad.items())]
        rows = np.array([r for r in rows.tolist() if r not in bad], dtype=np.int64)
        self._load_graphs(arrays, rows, filter_non_overlap and split == "train")
        self.image_info = [image_data[r] for r in self.rows]

    def _findings(
        self,
        arrays: VGArrays,
        rows: np.ndarray,
        ids: np.ndarray,
        sizes: np.ndarray,
        check_files: bool,
    ) -> Findings:
        """The problems of the split's rows (and of the whole file)."""
        every = Findings()
        check_vg150_arrays(
            every,
            arrays,
            ids,
            sizes,
            num_classes=len(self.classes),
            num_predicates=len(self.predicates),
        )
        wanted = set(rows.tolist())
        findings = Findings(
            errors=[p for p in every.errors if p.image is None or p.image in wanted]
        )
        if check_files:
            broken = findings.bad_images()
            entries = [
                ImageEntry(f"{ids[r]}.jpg", (0, 0), r) for r in rows.tolist() if r not in broken
            ]
            locate = lambda r: row_location(r, ids)  # noqa: E731
            check_image_files(findings, self.image_root, entries, locate, check_content=False)
        return findings

    def _load_graphs(self, arrays: VGArrays, rows: np.ndarray, non_overlap: bool) -> None:
        xyxy = decode_vg_boxes(arrays.boxes)
        labels, predicates = arrays.labels - 1, arrays.predicates - 1
        self.rows, self._boxes, self._labels, self._relations = [], [], [], []
        self._trust: list[dict[str, np.ndarray]] | None = [] if arrays.trust else None
        for row in rows.tolist():
            b0, b1 = int(arrays.first_box[row]), int(arrays.last_box[row]) + 1
            boxes = xyxy[b0:b1]
            r0, r1 = 0, 0
            if arrays.first_rel[row] >= 0:
                r0, r1 = int(arrays.first_rel[row]), int(arrays.last_rel[row]) + 1
            rels = np.column_stack([arrays.pairs[r0:r1] - b0, predicates[r0:r1]]).reshape(-1, 3)
            kept = _overlapping(boxes, rels) if non_overlap else np.ones(len(rels), dtype=bool)
            if non_overlap and not kept.any():
                continue
            self.rows.append(row)
            self._boxes.append(boxes)
            self._labels.append(labels[b0:b1])
            self._relations.append(rels[kept])
            if self._trust is not None:
                self._trust.append(_image_trust(arrays.trust, (b0, b1), (r0, r1), kept))

    def __len__(self) -> int:
        return len(self.rows)

    def label_counts(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.concatenate([np.zeros(0, np.int64), *self._labels])
        predicates = np.concatenate([np.zeros(0, np.int64), *(r[:, 2] for r in self._relations)])
        objects = np.bincount(labels, minlength=len(self.classes)).astype(np.int64)
        return objects, np.bincount(predicates, minlength=len(self.predicates)).astype(np.int64)

    def image_path(self, index: int) -> Path:
        return self.image_root / f"{self.image_info[index]['image_id']}.jpg"

    def annotation(self, index: int) -> dict[str, Any]:
        info = self.image_info[index]
        width, height = int(info["width"]), int(info["height"])
        boxes = torch.from_numpy(self._boxes[index] * (max(width, height) / self.box_scale))
        boxes = boxes.to(torch.float32)
        return {
            "boxes": boxes,
            # SGB evaluates its ground truth clipped to the inclusive pixel grid: x in [0, w - 1].
            "eval_boxes": clip_boxes_to_image(boxes, width - 1, height - 1),
            "labels": torch.from_numpy(self._labels[index].copy()),
            "relations": torch.from_numpy(self._relations[index].astype(np.int64)),
            "image_id": int(info["image_id"]),
            "orig_size": torch.tensor([height, width], dtype=torch.int64),
            "file_name": f"{info['image_id']}.jpg",
            "source": self.source,
            **(
                {k: torch.from_numpy(v.copy()) for k, v in self._trust[index].items()}
                if self._trust is not None
                else {}
            ),
        }

    def sample_annotation(self, target: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Train only: one predicate per (subject, object), drawn uniformly among duplicates."""
        if not self.filter_duplicate_rels:
            return target
        return one_predicate_per_pair(target, rng)


def one_predicate_per_pair(target: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """SGB's training filter: one relation per (subject, object) pair, drawn uniformly among the
    pair's relations with ``rng`` (their trust fields follow them)."""
    if len(target["relations"]) == 0:
        return target
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (s, o, _) in enumerate(target["relations"].tolist()):
        groups.setdefault((s, o), []).append(i)
    chosen = torch.tensor(
        [rows[int(rng.integers(len(rows)))] for rows in groups.values()], dtype=torch.int64
    )
    out = {**target, "relations": target["relations"][chosen].reshape(-1, 3)}
    for key in ("relation_weights", "relation_ignore"):  # the chosen relations' trust
        if key in target:
            out[key] = target[key][chosen]
    return out


def _image_trust(
    trust: dict[str, np.ndarray], boxes: tuple[int, int], relations: tuple[int, int], kept
) -> dict[str, np.ndarray]:
    """One image's trust arrays under the target keys (missing datasets: weight 1, not
    ignored)."""
    (b0, b1), (r0, r1) = boxes, relations
    n, m = b1 - b0, int(np.count_nonzero(kept))
    out = {
        "box_weights": np.ones(n, np.float32),
        "box_ignore": np.zeros(n, bool),
        "relation_weights": np.ones(m, np.float32),
        "relation_ignore": np.zeros(m, bool),
    }
    names = {
        "box_loss_weight": "box_weights",
        "box_ignore": "box_ignore",
        "relation_loss_weight": "relation_weights",
        "relation_ignore": "relation_ignore",
    }
    for dataset, key in names.items():
        if dataset in trust:
            part = trust[dataset][b0:b1] if dataset.startswith("box") else trust[dataset][r0:r1]
            out[key] = part if dataset.startswith("box") else part[kept]
    return out


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
