"""A binary cache of a relcoco file's index, so that the second start skips the JSON.

Reading a relcoco file of 10^6 images takes about a minute (the fast path of a clean file); the
index it leaves (flat arrays, file names packed in one buffer) is memory-mapped from one file
instead. The cache of ``a/b/annotations.json`` lives in the cache folder (never beside the data,
which may be read-only) under a name derived from the file's absolute path, and holds
a key: the file's size, its modification time in nanoseconds and a hash of 64 blocks of 64 KiB
spread over its content (plus the cache's format version). Any difference rebuilds it. Only a
file without problems is cached, so a cached start behaves as a full one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.utils.atomic import atomic_write

CACHE_VERSION = 1
#: A file smaller than this parses in well under a second: not cached.
MIN_CACHED_BYTES = 8 << 20
_BLOCKS, _BLOCK_BYTES = 64, 64 << 10
_MAGIC = b"realsynth relcoco index\n"


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
    return folder / f"relcoco-{name}.index"


def load_cached_index(folder: Path, ann_file: Path) -> dict[str, Any] | None:
    """The cached arrays of ``ann_file`` (memory-mapped, read-only), or None (no cache, another
    key, unreadable)."""
    path = cache_path(folder, ann_file)
    if not path.is_file() or ann_file.stat().st_size < MIN_CACHED_BYTES:
        return None
    try:
        with open(path, "rb") as f:
            if f.read(len(_MAGIC)) != _MAGIC:
                return None
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        if header["key"] != cache_key(ann_file):
            return None
        arrays = {name: _mapped(path, spec) for name, spec in header["arrays"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged cache is rebuilt, never an error
    return {**arrays, **header["meta"]}


def _mapped(path: Path, spec: dict[str, Any]) -> np.ndarray:
    shape = tuple(spec["shape"])
    if 0 in shape:
        return np.zeros(shape, dtype=spec["dtype"])
    return np.memmap(path, dtype=spec["dtype"], mode="r", offset=spec["offset"], shape=shape)


def save_cached_index(folder: Path, ann_file: Path, arrays: dict[str, Any]) -> Path | None:
    """Writes the cache of ``ann_file`` atomically (None when the file is too small to cache or
    the folder is not writable: caching is never a reason to fail).

    Layout: a magic line, the header's length (8 bytes, little-endian), the JSON header (key,
    label lists, each array's dtype, shape and offset), then the arrays, 64-byte aligned, so
    that loading maps them instead of reading them.
    """
    if ann_file.stat().st_size < MIN_CACHED_BYTES:
        return None
    meta = {k: v for k, v in arrays.items() if not isinstance(v, np.ndarray)}
    tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items() if isinstance(v, np.ndarray)}
    specs, offset = {}, 0
    for name, array in tensors.items():
        specs[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "relative": offset}
        offset += -(-array.nbytes // 64) * 64
    start = 4096  # grown until the header fits before the first array
    while True:
        for spec in specs.values():
            spec["offset"] = start + spec["relative"]
        header = {"key": cache_key(ann_file), "meta": meta, "arrays": specs}
        text = json.dumps(header).encode()
        if len(_MAGIC) + 8 + len(text) <= start:
            break
        start = -(-(len(_MAGIC) + 8 + len(text)) // 64) * 64 + 64
    text = text.ljust(start - len(_MAGIC) - 8)  # JSON allows the trailing spaces

    def write(f: Any) -> None:
        f.write(_MAGIC + len(text).to_bytes(8, "little") + text)
        for name, array in tensors.items():
            f.seek(specs[name]["offset"])
            f.write(memoryview(array.reshape(-1)).cast("B"))

    try:
        return atomic_write(cache_path(folder, ann_file), write)
    except OSError:
        return None
