"""relcoco: COCO detection JSON plus ``predicates`` and ``relationships``.

File layout::

    {"images": [{"id", "file_name", "width", "height"}],
     "annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h] (pixels)}],
     "categories": [{"id", "name"}],
     "predicates": [{"id", "name"}],
     "relationships": [{"image_id", "subject_id", "object_id", "predicate_id"}]}

``subject_id`` / ``object_id`` are annotation ids. Category and predicate ids map to contiguous
0-based indices in increasing id order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from realsynth.data.images import RelationDataset
from realsynth.data.transforms import Transform
from realsynth.utils.atomic import atomic_write_text

REQUIRED_KEYS = ("images", "annotations", "categories", "predicates", "relationships")


def load_relcoco_json(ann_file: str | Path) -> dict[str, Any]:
    """Reads a relcoco file and checks that the top-level keys are there.

    Raises:
        ValueError: unreadable JSON or a missing top-level list.
    """
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{ann_file}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{ann_file}: expected a JSON object at the top level")
    missing = [k for k in REQUIRED_KEYS if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(
            f"{ann_file}: missing top-level list(s) {missing} (expected {list(REQUIRED_KEYS)})"
        )
    return data


ENTRY_KEYS = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
    "predicates": ("id", "name"),
    "relationships": ("subject_id", "object_id", "predicate_id"),
}


def require_entry_keys(data: dict[str, Any], ann_file: Path) -> None:
    """Every entry of every list is an object with its keys, and every bbox is [x, y, w, h]
    with w, h > 0.

    Raises:
        ValueError: naming the file, the list, the entry's position and what is wrong.
    """
    for name, keys in ENTRY_KEYS.items():
        for k, entry in enumerate(data[name]):
            missing = [key for key in keys if key not in entry] if isinstance(entry, dict) else keys
            if missing:
                raise ValueError(f"{ann_file}: {name}[{k}] lacks {list(missing)}")
    for k, ann in enumerate(data["annotations"]):
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and box[2] > 0 and box[3] > 0):
            raise ValueError(
                f"{ann_file}: annotations[{k}] (id {ann['id']}): bbox must be [x, y, w, h] "
                f"in pixels with w, h > 0, got {box!r}"
            )


def _id_index(entries: list[dict[str, Any]], what: str, ann_file: Path) -> dict[int, int]:
    """Maps sorted ids to contiguous 0-based indices; duplicates are an error."""
    ids = [e["id"] for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{ann_file}: duplicate {what} ids")
    return {i: k for k, i in enumerate(sorted(ids))}


class RelCocoDataset(RelationDataset):
    """A relcoco annotation file and its image folder.

    Args:
        ann_file: the JSON file.
        image_root: folder that ``file_name`` is relative to.
        transforms: seeded transforms ``t(image, target, rng)``.
        source: name in error messages and items (default: the JSON's parent folder name).
        seed: base of the per-item augmentation generator.
        skip_bad_samples: return None for a bad image instead of raising.

    Attributes:
        classes: category names by 0-based index; ``category_ids`` the file ids.
        predicates: predicate names by 0-based index; ``predicate_ids`` the file ids.
    """

    def __init__(
        self,
        ann_file: str | Path,
        image_root: str | Path,
        *,
        transforms: Transform | None = None,
        source: str | None = None,
        seed: int = 0,
        skip_bad_samples: bool = False,
    ) -> None:
        ann_file = Path(ann_file)
        super().__init__(
            source=source or ann_file.parent.name or "relcoco",
            transforms=transforms,
            seed=seed,
            skip_bad_samples=skip_bad_samples,
        )
        self.ann_file = ann_file
        self.image_root = Path(image_root)
        data = load_relcoco_json(ann_file)
        require_entry_keys(data, ann_file)
        categories = sorted(data["categories"], key=lambda c: c["id"])
        predicates = sorted(data["predicates"], key=lambda p: p["id"])
        self._cat_index = _id_index(categories, "category", ann_file)
        self._pred_index = _id_index(predicates, "predicate", ann_file)
        self.classes = [str(c["name"]) for c in categories]
        self.category_ids = [int(c["id"]) for c in categories]
        self.predicates = [str(p["name"]) for p in predicates]
        self.predicate_ids = [int(p["id"]) for p in predicates]
        self.images = list(data["images"])
        self._build_index(data)

    def _build_index(self, data: dict[str, Any]) -> None:
        image_pos = {img["id"]: k for k, img in enumerate(self.images)}
        if len(image_pos) != len(self.images):
            raise ValueError(f"{self.ann_file}: duplicate image ids")
        self._anns: list[list[dict[str, Any]]] = [[] for _ in self.images]
        ann_where: dict[int, tuple[int, int]] = {}
        for ann in data["annotations"]:
            pos = image_pos.get(ann["image_id"])
            if pos is None:
                raise ValueError(
                    f"{self.ann_file}: annotation {ann['id']}: unknown image_id {ann['image_id']}"
                )
            if ann["category_id"] not in self._cat_index:
                raise ValueError(
                    f"{self.ann_file}: annotation {ann['id']}: "
                    f"unknown category_id {ann['category_id']}"
                )
            if ann["id"] in ann_where:
                raise ValueError(f"{self.ann_file}: duplicate annotation id {ann['id']}")
            ann_where[ann["id"]] = (pos, len(self._anns[pos]))
            self._anns[pos].append(ann)
        self._rels: list[list[tuple[int, int, int]]] = [[] for _ in self.images]
        for k, rel in enumerate(data["relationships"]):
            sub, obj = ann_where.get(rel["subject_id"]), ann_where.get(rel["object_id"])
            if sub is None or obj is None:
                raise ValueError(
                    f"{self.ann_file}: relationships[{k}] points to an unknown annotation id"
                )
            if sub[0] != obj[0]:
                raise ValueError(
                    f"{self.ann_file}: relationships[{k}] joins annotations of two images"
                )
            if rel["predicate_id"] not in self._pred_index:
                raise ValueError(
                    f"{self.ann_file}: relationships[{k}]: "
                    f"unknown predicate_id {rel['predicate_id']}"
                )
            self._rels[sub[0]].append((sub[1], obj[1], self._pred_index[rel["predicate_id"]]))

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.image_root / self.images[index]["file_name"]

    def annotation(self, index: int) -> dict[str, Any]:
        info = self.images[index]
        anns = self._anns[index]
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes = torch.from_numpy(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
        return {
            "boxes": boxes,
            "labels": torch.tensor(
                [self._cat_index[a["category_id"]] for a in anns], dtype=torch.int64
            ),
            "relations": torch.tensor(self._rels[index], dtype=torch.int64).reshape(-1, 3),
            "image_id": int(info["id"]),
            "orig_size": torch.tensor([int(info["height"]), int(info["width"])], dtype=torch.int64),
            "file_name": str(info["file_name"]),
            "source": self.source,
        }


def _image_entries(
    image: Mapping[str, Any], image_id: int, first_ann_id: int, classes: int, predicates: int
) -> tuple[dict, list[dict], list[dict]]:
    boxes = np.asarray(image.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(image.get("labels", []), dtype=np.int64).reshape(-1)
    relations = np.asarray(image.get("relations", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    name = image.get("file_name", f"#{image_id}")
    if len(labels) != len(boxes):
        raise ValueError(
            f"write_relcoco: image {name}: {len(boxes)} boxes but {len(labels)} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"write_relcoco: image {name}: labels must be in [0, {classes})")
    if relations.size and (relations[:, :2].min() < 0 or relations[:, :2].max() >= len(boxes)):
        raise ValueError(
            f"write_relcoco: image {name}: relation box index out of [0, {len(boxes)})"
        )
    if relations.size and (relations[:, 2].min() < 0 or relations[:, 2].max() >= predicates):
        raise ValueError(f"write_relcoco: image {name}: predicates must be in [0, {predicates})")
    info = {
        "id": image_id,
        "file_name": str(image["file_name"]),
        "width": int(image["width"]),
        "height": int(image["height"]),
    }
    anns = []
    for k, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist())):
        w, h = box[2] - box[0], box[3] - box[1]
        anns.append(
            {
                "id": first_ann_id + k,
                "image_id": image_id,
                "category_id": label + 1,
                "bbox": [box[0], box[1], w, h],
                "area": w * h,
                "iscrowd": 0,
            }
        )
    rels = [
        {
            "image_id": image_id,
            "subject_id": first_ann_id + s,
            "object_id": first_ann_id + o,
            "predicate_id": p + 1,
        }
        for s, o, p in relations.tolist()
    ]
    return info, anns, rels


def write_relcoco(
    path: str | Path,
    *,
    classes: Sequence[str],
    predicates: Sequence[str],
    images: Sequence[Mapping[str, Any]],
) -> Path:
    """Writes a relcoco file atomically; ids are assigned 1.. in the given order.

    Args:
        path: output JSON path.
        classes: category names (category id = index + 1).
        predicates: predicate names (predicate id = index + 1).
        images: one mapping per image with ``file_name``, ``width``, ``height``, ``boxes``
            [N, 4] xyxy in pixels, ``labels`` [N] 0-based and ``relations`` [M, 3]
            (subject index, object index, 0-based predicate).

    Returns:
        The written path.
    """
    out: dict[str, list] = {k: [] for k in REQUIRED_KEYS}
    out["categories"] = [{"id": i + 1, "name": str(n)} for i, n in enumerate(classes)]
    out["predicates"] = [{"id": i + 1, "name": str(n)} for i, n in enumerate(predicates)]
    next_ann = 1
    for k, image in enumerate(images):
        info, anns, rels = _image_entries(image, k + 1, next_ann, len(classes), len(predicates))
        next_ann += len(anns)
        out["images"].append(info)
        out["annotations"].extend(anns)
        out["relationships"].extend(rels)
    return atomic_write_text(path, json.dumps(out, separators=(",", ":")))
