"""The fast path of a clean relcoco file: streamed into columns, its rules checked on arrays.

:func:`index_relcoco` judges every entry one by one and says precisely what is wrong; on a file of
10^6 images that takes minutes and about 12 GB, nearly all of it spent on files that have nothing
wrong. :func:`read_clean_relcoco` reads the file into flat columns, in one pass of compiled
code (``_relcoco_columns.c``, built with the package where a C compiler is at hand) or else a
chunk at a time in Python (:mod:`json_lists`), and checks the same rules on whole arrays: types,
unique ids, references that resolve, boxes that are finite, non-empty and inside their image,
relations within one image. It answers only for a file that passes all of them (warnings, which
training ignores, are not looked for) and returns None at the first doubt, without saying why:
the caller then runs :func:`index_relcoco`, whose report is the one users read. Per-instance
trust fields take the full path too.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.data.formats.json_lists import CHUNK_BYTES, iter_list_batches
from realsynth.data.formats.relcoco_rules import REQUIRED_KEYS, suspect_boxes
from realsynth.data.formats.relcoco_trust import TRUST_KEYS
from realsynth.data.problems import Findings

try:
    from realsynth.data.formats._relcoco_columns import relcoco_columns
except ImportError:  # built without a C compiler: the Python reader serves alone
    relcoco_columns = None

#: A relationship without ``image_id`` (its endpoints alone say where it is).
_ABSENT = -(2**62)


class _Doubt(Exception):
    """Something the fast path does not vouch for: read the file the full way."""


@dataclass
class CleanRelCoco:
    """A clean relcoco file as columns (I images, B boxes, M relations), in file order.

    Attributes:
        classes / category_ids / predicates / predicate_ids: as :class:`RelCocoIndex` has them.
        names: the images' file names.
        image_ids: int64 [I]; ``sizes`` int64 [I, 2] (height, width).
        boxes: float64 [B, 4] ``[x, y, w, h]``; ``labels`` int64 [B]; ``box_image`` int64 [B].
        relations: int64 [M, 3] (subject box within its image, object box, predicate);
            ``relation_image`` int64 [M]; ``relation_id_columns`` the file's subject ids, object
            ids and predicate ids (int64 [M] each) of the relations, for the warnings ``data
            check`` lists (``relation_ids`` stacks them [M, 3]).
    """

    classes: list[str]
    category_ids: list[int]
    predicates: list[str]
    predicate_ids: list[int]
    names: list[str]
    image_ids: np.ndarray
    sizes: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    box_image: np.ndarray
    relations: np.ndarray
    relation_image: np.ndarray
    relation_id_columns: tuple[np.ndarray, np.ndarray, np.ndarray]
    trust: None = None  # a file with trust fields takes the full path
    #: ``names`` already packed (uint8 [bytes], int64 starts [I + 1]) by the compiled reader.
    packed_names: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def relation_ids(self) -> np.ndarray:
        """int64 [M, 3]: (subject id, object id, predicate id) of each relation, as in the file."""
        return np.stack(self.relation_id_columns, axis=1)


def read_clean_relcoco(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> CleanRelCoco | None:
    """The columns of ``path`` when it passes every relcoco rule, else None (see the module);
    the file is read ``chunk_bytes`` at a time."""
    try:
        columns = _compiled_columns(Path(path))
        if columns is None:  # not compiled, or a file it does not vouch for (non-ASCII text...)
            columns = _read_columns(Path(path), chunk_bytes)
        return _judged(columns)
    except (_Doubt, ValueError, KeyError, TypeError, OverflowError, UnicodeDecodeError):
        return None


def _ints(values: list[Any]) -> np.ndarray:
    if set(map(type, values)) - {int}:
        raise _Doubt
    return np.asarray(values, dtype=np.int64)


def _dicts(batch: list[Any]) -> None:
    if set(map(type, batch)) - {dict}:
        raise _Doubt


def _no_trust(batch: list[dict]) -> None:
    if any(key in entry for entry in batch for key in TRUST_KEYS):
        raise _Doubt


def _read_columns(path: Path, chunk_bytes: int) -> dict[str, list]:
    """Every top-level list as lists of per-batch columns (the rules look at them next)."""
    out: dict[str, list] = {key: [] for key in REQUIRED_KEYS}
    for key, batch in iter_list_batches(path, chunk_bytes):
        if key not in out:
            continue
        _dicts(batch)
        out[key].append(_COLUMNS[key](batch))
    if not all(out.values()) or not any(len(b["id"]) for b in out["images"]):
        raise _Doubt  # a list missing (the full path names it) or no image at all
    return out


def _compiled_columns(path: Path) -> dict[str, list] | None:
    """The columns :func:`_read_columns` gives, read by the compiled reader (one batch per
    list), or None when it is not built or does not vouch for the file."""
    if relcoco_columns is None or path.stat().st_size == 0:
        return None
    trust = tuple(key.encode() for key in TRUST_KEYS)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        found = relcoco_columns(mapped, trust, _ABSENT, True)
    if found is None:
        return None
    columns = {key: _arrays(found[key]) for key in REQUIRED_KEYS}
    images = columns["images"]
    buffer, ends = images.pop("names"), images.pop("name_ends")
    bounds = [0, *ends.tolist()]
    text = buffer.decode("ascii")
    images["file_name"] = [text[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    starts = np.concatenate([[0], ends]).astype(np.int64)
    images["packed_names"] = (np.frombuffer(buffer, dtype=np.uint8), starts)
    return {key: [values] for key, values in columns.items()}


def _arrays(found: dict[str, Any]) -> dict[str, Any]:
    """The compiled reader's columns of one list as arrays (int64; ``bbox`` float64 [N, 4])."""
    out = {}
    for name, value in found.items():
        if name == "bbox":
            out[name] = np.frombuffer(value, dtype=np.float64).reshape(-1, 4)
        elif name in ("name", "names"):
            out[name] = value  # names: a list of str, or file names as one ASCII buffer
        else:
            out[name] = np.frombuffer(value, dtype=np.int64)
    return out


def _image_columns(batch: list[dict]) -> dict[str, Any]:
    names = [e["file_name"] for e in batch]
    if set(map(type, names)) - {str}:
        raise _Doubt
    return {
        "id": _ints([e["id"] for e in batch]),
        "width": _ints([e["width"] for e in batch]),
        "height": _ints([e["height"] for e in batch]),
        "file_name": names,
    }


def _annotation_columns(batch: list[dict]) -> dict[str, Any]:
    _no_trust(batch)
    bboxes = [e["bbox"] for e in batch]
    if set(map(type, bboxes)) - {list} or set(map(len, bboxes)) - {4}:
        raise _Doubt
    if {type(v) for b in bboxes for v in b} - {int, float}:
        raise _Doubt
    return {
        "id": _ints([e["id"] for e in batch]),
        "image_id": _ints([e["image_id"] for e in batch]),
        "category_id": _ints([e["category_id"] for e in batch]),
        "bbox": np.asarray(bboxes, dtype=np.float64).reshape(-1, 4),
    }


def _relationship_columns(batch: list[dict]) -> dict[str, Any]:
    _no_trust(batch)
    image = [e.get("image_id", _ABSENT) for e in batch]  # absent: nothing to agree with
    return {
        "subject": _ints([e["subject_id"] for e in batch]),
        "object": _ints([e["object_id"] for e in batch]),
        "predicate": _ints([e["predicate_id"] for e in batch]),
        "image_id": _ints(image),
    }


def _label_columns(batch: list[dict]) -> dict[str, Any]:
    return {"id": _ints([e["id"] for e in batch]), "name": [str(e["name"]) for e in batch]}


_COLUMNS = {
    "images": _image_columns,
    "annotations": _annotation_columns,
    "relationships": _relationship_columns,
    "categories": _label_columns,
    "predicates": _label_columns,
}


def _joined(batches: list[dict[str, Any]], key: str) -> Any:
    """One column of a list's batches (a batch alone as it is: no copy; it may be read-only)."""
    parts = [b[key] for b in batches]
    if len(parts) == 1:
        return parts[0]
    if parts and isinstance(parts[0], list):
        return [x for part in parts for x in part]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _positions(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Position of every ``wanted`` id among the unique ``ids`` (raise _Doubt if one is not)."""
    if len(ids) and _increasing(ids) and ids[-1] - ids[0] == len(ids) - 1:
        # Consecutive ids, as most generated files number them: no sort, no search.
        positions = np.clip(wanted - ids[0], 0, len(ids) - 1)
    else:
        order = np.argsort(ids, kind="stable")
        found = np.searchsorted(ids, wanted, sorter=order)
        found = np.minimum(found, len(ids) - 1)
        positions = order[found] if len(ids) else found
    if len(wanted) and (not len(ids) or (ids[positions] != wanted).any()):
        raise _Doubt
    return positions


def _increasing(ids: np.ndarray) -> bool:
    return bool((ids[1:] > ids[:-1]).all())


def _unique(ids: np.ndarray) -> None:
    if not _increasing(ids) and len(np.unique(ids)) != len(ids):
        raise _Doubt


def _labels(batches: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
    """(names, ids) of ``categories`` or ``predicates``, in increasing id order."""
    ids, names = _joined(batches, "id"), _joined(batches, "name")
    _unique(ids)
    order = np.argsort(ids).tolist()
    return [names[i] for i in order], sorted(ids.tolist())


def _judged(columns: dict[str, list]) -> CleanRelCoco:
    classes, category_ids = _labels(columns["categories"])
    predicates, predicate_ids = _labels(columns["predicates"])
    images, anns = columns["images"], columns["annotations"]
    image_ids = _joined(images, "id")
    _unique(image_ids)
    sizes = np.stack([_joined(images, "height"), _joined(images, "width")], axis=1)
    if (sizes <= 0).any():
        raise _Doubt
    ann_ids = _joined(anns, "id") if anns else np.zeros(0, np.int64)
    _unique(ann_ids)
    box_image = _positions(image_ids, _joined(anns, "image_id"))
    labels = _positions(np.asarray(category_ids), _joined(anns, "category_id"))
    boxes = _joined(anns, "bbox").reshape(-1, 4)
    _check_boxes(boxes, sizes[box_image][:, ::-1].astype(np.float64))
    within = _rank_within_image(box_image, len(image_ids))
    rels = columns["relationships"]
    relation_id_columns = (
        _joined(rels, "subject"),
        _joined(rels, "object"),
        _joined(rels, "predicate"),
    )
    relations, relation_image = _judged_relations(rels, ann_ids, box_image, image_ids)
    relations[:, 0], relations[:, 1] = within[relations[:, 0]], within[relations[:, 1]]
    relations[:, 2] = _positions(np.asarray(predicate_ids), relations[:, 2])
    return CleanRelCoco(
        classes=classes,
        category_ids=category_ids,
        predicates=predicates,
        predicate_ids=predicate_ids,
        names=_joined(images, "file_name"),
        image_ids=image_ids,
        sizes=sizes,
        boxes=boxes,
        labels=labels,
        box_image=box_image,
        relations=relations,
        relation_image=relation_image,
        relation_id_columns=relation_id_columns,
        packed_names=images[0].get("packed_names") if len(images) == 1 else None,
    )


def _check_boxes(boxes: np.ndarray, sizes_wh: np.ndarray) -> None:
    """The box rules of :func:`~realsynth.data.formats.relcoco_rules.box_problem`, on arrays."""
    if suspect_boxes(boxes, sizes_wh).any():
        raise _Doubt


def _rank_within_image(image_of: np.ndarray, num_images: int) -> np.ndarray:
    """int64 [N]: each row's position among its image's rows, in file order."""
    if bool((np.diff(image_of) >= 0).all()):  # rows image by image already: no sort
        return np.arange(len(image_of)) - np.searchsorted(image_of, image_of)
    order = np.argsort(image_of, kind="stable")
    starts = np.searchsorted(image_of[order], np.arange(num_images))
    rank = np.empty(len(image_of), dtype=np.int64)
    rank[order] = np.arange(len(image_of)) - starts[image_of[order]]
    return rank


def _judged_relations(
    batches: list[dict[str, Any]], ann_ids: np.ndarray, box_image: np.ndarray, image_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [M, 3] (subject row, object row, predicate id), int64 [M] image): every relation's
    endpoints known annotations of one image, the one its ``image_id`` names when it has one."""
    subject = _positions(ann_ids, _joined(batches, "subject"))
    target = _positions(ann_ids, _joined(batches, "object"))
    image = box_image[subject]
    named = _joined(batches, "image_id")
    given = named != _ABSENT
    if (image != box_image[target]).any() or (image_ids[image[given]] != named[given]).any():
        raise _Doubt
    return np.stack([subject, target, _joined(batches, "predicate")], axis=1), image


def clean_warnings(clean: CleanRelCoco) -> Findings:
    """The warnings :func:`~realsynth.data.formats.relcoco_rules.index_relcoco` gives a clean
    file, in its order: per relationship (file order) a relation of an annotation with itself,
    then one listed again; then every image without a relation."""
    findings = Findings()
    ids, image = clean.relation_ids, clean.relation_image
    self_rows = np.flatnonzero(ids[:, 0] == ids[:, 1])
    _, first = np.unique(ids, axis=0, return_index=True)
    repeated = np.setdiff1d(np.arange(len(ids)), first)
    events = sorted([(k, 0) for k in self_rows.tolist()] + [(k, 1) for k in repeated.tolist()])
    for k, kind in events:
        sub, obj, pred = (int(v) for v in ids[k])
        if kind == 0:
            message, code = f"subject and object are the same annotation {sub}", "self_relation"
        else:
            message, code = f"{(sub, obj, pred)} listed more than once", "duplicate_relation"
        findings.warn(code, f"relationships[{k}]", message, int(image[k]))
    has_relation = np.zeros(len(clean.image_ids), dtype=bool)
    has_relation[image] = True
    for k in np.flatnonzero(~has_relation).tolist():
        where = f"images[{k}] (id {int(clean.image_ids[k])}, {clean.names[k]})"
        findings.warn("no_relations", where, "image has no valid relation", k)
    return findings
