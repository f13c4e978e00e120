"""One sample of a shard: the image file's bytes and its annotation as JSON.

WebDataset's layout: the files of a sample share a key (``000000042.jpg``,
``000000042.json``). The JSON holds what :meth:`RelationDataset.annotation` returns, boxes xyxy
in pixels of the annotated size, 0-based labels and predicates::

    {"image_id": 42, "file_name": "a/b.jpg", "height": 480, "width": 640,
     "boxes": [[x0, y0, x1, y1], ...], "labels": [3, ...], "relations": [[s, o, p], ...],
     "eval_boxes": [...],                                   (optional: VG150's clipped boxes)
     "box_weights": [...], "box_ignore": [...],             (optional: per-instance trust)
     "relation_weights": [...], "relation_ignore": [...]}

float32 values survive the round trip exactly (a float32 is a double, and JSON keeps doubles).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

#: Extensions an image of a sample may have (the file's own, lower case).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "ppm")
_FLOAT_LISTS = ("boxes", "eval_boxes", "box_weights", "relation_weights")
_BOOL_LISTS = ("box_ignore", "relation_ignore")


def encode_annotation(annotation: dict[str, Any]) -> bytes:
    """The JSON bytes of an annotation as ``RelationDataset.annotation`` returns it."""
    height, width = (int(v) for v in annotation["orig_size"])
    out: dict[str, Any] = {
        "image_id": int(annotation["image_id"]),
        "file_name": str(annotation["file_name"]),
        "height": height,
        "width": width,
        "labels": annotation["labels"].tolist(),
        "relations": annotation["relations"].reshape(-1, 3).tolist(),
    }
    for key in (*_FLOAT_LISTS, *_BOOL_LISTS):
        if key in annotation:
            out[key] = annotation[key].tolist()
    return json.dumps(out, separators=(",", ":")).encode()


def decode_annotation(data: bytes, *, source: str, where: str) -> dict[str, Any]:
    """The annotation of a sample's JSON, as ``RelationDataset.annotation`` returns it.

    Raises:
        ValueError: not an annotation (names ``where``, the shard and key).
    """
    try:
        raw = json.loads(data)
        n = len(raw["labels"])
        out: dict[str, Any] = {
            "boxes": torch.tensor(raw["boxes"], dtype=torch.float32).reshape(n, 4),
            "labels": torch.tensor(raw["labels"], dtype=torch.int64),
            "relations": torch.tensor(raw["relations"], dtype=torch.int64).reshape(-1, 3),
            "image_id": int(raw["image_id"]),
            "orig_size": torch.tensor([raw["height"], raw["width"]], dtype=torch.int64),
            "file_name": str(raw["file_name"]),
            "source": source,
        }
        for key in _FLOAT_LISTS[1:]:
            if key in raw:
                out[key] = torch.from_numpy(np.asarray(raw[key], dtype=np.float32))
        for key in _BOOL_LISTS:
            if key in raw:
                out[key] = torch.from_numpy(np.asarray(raw[key], dtype=bool))
        if "eval_boxes" in out:
            out["eval_boxes"] = out["eval_boxes"].reshape(n, 4)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"{where}: not a realsynth annotation: {exc}") from None
    return out


def image_entry(sample: dict[str, Any]) -> tuple[str, bytes] | None:
    """(extension, bytes) of the image in a sample read by wids, or None."""
    for ext in IMAGE_EXTENSIONS:
        data = sample_bytes(sample, ext)
        if data is not None:
            return ext, data
    return None


def sample_bytes(sample: dict[str, Any], ext: str) -> bytes | None:
    """The bytes of the file ``ext`` of a sample read by wids (keys with or without a dot)."""
    for key in (ext, f".{ext}"):
        if key in sample:
            data = sample[key]
            return data.getvalue() if hasattr(data, "getvalue") else bytes(data)
    return None
