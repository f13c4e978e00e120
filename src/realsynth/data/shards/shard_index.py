"""``index.json``: the shard list of a sharded source, in wids' descriptor layout.

Layout (wids reads it as is; the ``realsynth`` part is ours)::

    {"wids_version": 1, "name": "...",
     "shardlist": [{"url": "shard-000000.tar", "nsamples": 1000, "filesize": 123456}, ...],
     "realsynth": {"format_version": 1, "classes": [...], "predicates": [...],
                   "object_counts": [...], "relation_counts": [...],
                   "rescale_on_size_mismatch": false, "converted_from": {...}}}

Shard URLs are relative to the folder of ``index.json`` (absolute URLs are allowed). Everything a
run needs before it reads a sample is here: the per-shard counts (the index of a source of 10^8
images is its shard list, a few MB), the label names and the label counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.data.shards.locations import (
    ShardLocationError,
    is_remote,
    join_location,
    read_location,
)
from realsynth.utils.atomic import atomic_write_text

INDEX_NAME = "index.json"
FORMAT_VERSION = 1


@dataclass
class ShardIndex:
    """A sharded source's shard list and label space.

    Attributes:
        urls: every shard's location, resolved (paths or URLs), in sample order.
        counts: int64 [S] samples per shard.
        classes / predicates: label names by 0-based index (no background entry).
        object_counts: int64 [C] objects per class; ``relation_counts`` int64 [R] relations per
            predicate, over the whole source.
        rescale_on_size_mismatch: boxes follow an image whose size differs from its annotation
            (VG150's convention) instead of the sample being an error.
        converted_from: what ``realsynth data convert`` read (path, format), for reports.
        location: where the index was read from.
    """

    urls: list[str]
    counts: np.ndarray
    classes: list[str]
    predicates: list[str]
    object_counts: np.ndarray
    relation_counts: np.ndarray
    rescale_on_size_mismatch: bool = False
    converted_from: dict[str, Any] = field(default_factory=dict)
    location: str = ""

    @property
    def starts(self) -> np.ndarray:
        """int64 [S + 1]: shard k holds samples ``starts[k]`` to ``starts[k + 1] - 1``."""
        return np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)


def index_location(location: str | Path) -> str:
    """The ``index.json`` of a source given as its folder, the file itself, or a URL of either."""
    text = str(location)
    if text.endswith(".json"):
        return text
    if not is_remote(text) and not Path(text).is_dir() and Path(text).exists():
        return text  # an index under another name
    return join_location(text, INDEX_NAME)


def read_shard_index(location: str | Path) -> ShardIndex:
    """Reads and checks the ``index.json`` of a sharded source.

    Args:
        location: the shard folder or its ``index.json``, as a path or URL.

    Raises:
        ShardLocationError: the index cannot be read.
        ValueError: it is not a realsynth shard index (names the file and the field).
    """
    where = index_location(location)
    try:
        data = json.loads(read_location(where))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not valid JSON: {exc}") from None
    meta = data.get("realsynth") if isinstance(data, dict) else None
    if not isinstance(meta, dict) or not isinstance(data.get("shardlist"), list):
        raise ValueError(
            f"{where}: not a realsynth shard index (expected 'shardlist' and 'realsynth'; "
            "write one with: realsynth data convert SRC OUT)"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{where}: realsynth.format_version {meta.get('format_version')!r}: this realsynth "
            f"reads version {FORMAT_VERSION}"
        )
    base = where.rsplit("/", 1)[0] if "/" in where else "."
    shards = data["shardlist"]
    for k, shard in enumerate(shards):
        count = shard.get("nsamples") if isinstance(shard, dict) else None
        if not isinstance(shard, dict) or not isinstance(shard.get("url"), str):
            raise ValueError(f"{where}: shardlist[{k}]: expected {{'url': ..., 'nsamples': ...}}")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError(f"{where}: shardlist[{k}].nsamples: expected a positive integer")
    if not shards:
        raise ValueError(f"{where}: shardlist is empty")
    return ShardIndex(
        urls=[join_location(base, s["url"]) for s in shards],
        counts=np.array([s["nsamples"] for s in shards], dtype=np.int64),
        classes=[str(c) for c in _field(meta, "classes", where)],
        predicates=[str(p) for p in _field(meta, "predicates", where)],
        object_counts=np.asarray(_field(meta, "object_counts", where), dtype=np.int64),
        relation_counts=np.asarray(_field(meta, "relation_counts", where), dtype=np.int64),
        rescale_on_size_mismatch=bool(meta.get("rescale_on_size_mismatch", False)),
        converted_from=dict(meta.get("converted_from", {})),
        location=where,
    )


def _field(meta: dict[str, Any], key: str, where: str) -> list[Any]:
    value = meta.get(key)
    if not isinstance(value, list):
        raise ValueError(f"{where}: realsynth.{key}: expected a list")
    return value


def write_shard_index(
    folder: str | Path,
    shards: list[dict[str, Any]],
    *,
    name: str,
    classes: list[str],
    predicates: list[str],
    object_counts: np.ndarray,
    relation_counts: np.ndarray,
    rescale_on_size_mismatch: bool,
    converted_from: dict[str, Any],
) -> Path:
    """Writes ``folder/index.json`` atomically (the last file a conversion writes).

    Args:
        shards: ``{"url", "nsamples", "filesize"}`` per shard, urls relative to ``folder``.

    Returns:
        the written path.
    """
    if len(object_counts) != len(classes) or len(relation_counts) != len(predicates):
        raise ValueError("write_shard_index: one count per class and per predicate expected")
    data = {
        "wids_version": 1,
        "name": name,
        "shardlist": shards,
        "realsynth": {
            "format_version": FORMAT_VERSION,
            "classes": list(classes),
            "predicates": list(predicates),
            "object_counts": [int(c) for c in object_counts],
            "relation_counts": [int(c) for c in relation_counts],
            "rescale_on_size_mismatch": bool(rescale_on_size_mismatch),
            "converted_from": converted_from,
        },
    }
    return atomic_write_text(Path(folder) / INDEX_NAME, json.dumps(data, indent=1))


__all__ = [
    "INDEX_NAME",
    "ShardIndex",
    "ShardLocationError",
    "index_location",
    "read_shard_index",
    "write_shard_index",
]
