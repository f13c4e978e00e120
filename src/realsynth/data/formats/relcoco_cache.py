"""A binary cache of a relcoco file's index, so that the second start skips the JSON.

Parsing a relcoco file and applying its rules takes about 100 s and 12 GB at 10^6 images; the
index it leaves (flat arrays, file names packed in one buffer) loads from an ``.npz`` in a
fraction of that. The cache of ``a/b/annotations.json`` lives in the cache folder (never beside
the data, which may be read-only) under a name derived from the file's absolute path, and holds
a key: the file's size, its modification time in nanoseconds and a hash of 64 blocks of 64 KiB
spread over its content (plus the cache's format version). Any difference rebuilds it. Only a
file without problems is cached, so a cached start behaves as a full one.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.utils.atomic import atomic_write

CACHE_VERSION = 1
#: A file smaller than this parses in well under a second: not cached.
MIN_CACHED_BYTES = 8 << 20
_BLOCKS, _BLOCK_BYTES = 64, 64 << 10


def default_index_cache() -> Path | None:
    """``$REALSYNTH_INDEX_CACHE`` (``off`` disables caching), else
    ``~/.cache/realsynth/index``."""
    env = os.environ.get("REALSYNTH_INDEX_CACHE")
    if env == "off":
        return None
    return Path(env) if env else Path.home() / ".cache" / "realsynth" / "index"


def cache_key(ann_file: Path) -> str:
    """Size, mtime and a sampled content hash of ``ann_file`` (reads 4 MiB at most)."""
    stat = ann_file.stat()
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{CACHE_VERSION}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    with open(ann_file, "rb") as f:
        step = max(_BLOCK_BYTES, stat.st_size // _BLOCKS)
        for offset in range(0, stat.st_size, step):
            f.seek(offset)
            digest.update(f.read(_BLOCK_BYTES))
    return digest.hexdigest()


def cache_path(folder: Path, ann_file: Path) -> Path:
    """The cache file of ``ann_file`` in ``folder``."""
    # fsencode: a path that is not UTF-8 (surrogate-escaped) hashes by its bytes.
    name = hashlib.blake2b(os.fsencode(ann_file.resolve()), digest_size=12).hexdigest()
    return folder / f"relcoco-{name}.npz"


def load_cached_index(folder: Path, ann_file: Path) -> dict[str, Any] | None:
    """The cached arrays of ``ann_file``, or None (no cache, another key, unreadable)."""
    path = cache_path(folder, ann_file)
    if not path.is_file() or ann_file.stat().st_size < MIN_CACHED_BYTES:
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != cache_key(ann_file):
                return None
            arrays = {name: data[name] for name in data.files if name not in ("key", "meta")}
            meta = json.loads(str(data["meta"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # a damaged cache is rebuilt, never an error
    return {**arrays, **meta}


def save_cached_index(folder: Path, ann_file: Path, arrays: dict[str, Any]) -> Path | None:
    """Writes the cache of ``ann_file`` atomically (None when the file is too small to cache or
    the folder is not writable: caching is never a reason to fail)."""
    if ann_file.stat().st_size < MIN_CACHED_BYTES:
        return None
    meta = {k: v for k, v in arrays.items() if not isinstance(v, np.ndarray)}
    tensors = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
    key = cache_key(ann_file)
    try:
        return atomic_write(
            cache_path(folder, ann_file),
            lambda f: np.savez(
                f, key=np.asarray(key), meta=np.asarray(json.dumps(meta)), **tensors
            ),
        )
    except OSError:
        return None
