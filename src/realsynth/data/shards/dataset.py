"""A sharded source: WebDataset tar shards read at random through wids' indexed reader.

Building one reads ``index.json`` only (the shard list, the per-shard counts and the label
space), so a source of 10^8 images starts as fast as one of 10^3 and holds a few integers per
shard. An item is found by a binary search over the shard starts; its shard is opened with
wids' ``IndexedTarSamples`` (one scan of the tar headers, then every sample by offset, read
through mmap) and kept among the last ``open_shards`` opened. A remote shard is downloaded whole
into the cache folder first (once: the download is locked and renamed into place), so a random
permutation over a remote source downloads every shard again and again unless the sampler keeps
locality (``shard_sizes`` is what :class:`~realsynth.mixing.sampler.MixedBatchSampler` reads to
visit the shards in windows).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.data.formats.vg150 import one_predicate_per_pair
from realsynth.data.images import BadSampleError, RelationDataset
from realsynth.data.shards.locations import (
    ShardLocationError,
    cache_name,
    default_cache_dir,
    download,
    is_remote,
    local_path,
)
from realsynth.data.shards.sample import decode_annotation, image_entry, sample_bytes
from realsynth.data.shards.shard_index import ShardIndex, read_shard_index
from realsynth.data.transforms import Transform

#: Schemes downloaded by :func:`~realsynth.data.shards.locations.download` (atomic, clear
#: errors) rather than by wids' own commands (curl, gsutil, aws).
_OUR_SCHEMES = ("http", "https", "s3", "gs", "gcs", "az", "abfs")


def require_wids() -> None:
    """Raises ImportError with the install command when wids (the ``shards`` extra) is absent."""
    try:
        import wids  # noqa: F401
    except ImportError:
        raise ImportError(
            "sharded sources are read with wids, which is not installed: "
            "pip install 'realsynth[shards]'"
        ) from None


class ShardedDataset(RelationDataset):
    """A folder of WebDataset tar shards and its ``index.json`` (``realsynth data convert``).

    Args:
        location: the shard folder or its ``index.json``: a path, an http(s) URL, an object
            storage URL (through fsspec) or a ``pipe:`` command.
        transforms: seeded transforms ``t(image, target, rng)``.
        source: name in error messages and items (default: the folder's name).
        seed: base of the per-item augmentation generator.
        skip_bad_samples: return a ``SkippedSample`` for an image that cannot be decoded.
        cache_dir: where remote shards are downloaded (default ``$REALSYNTH_SHARD_CACHE`` or
            ``~/.cache/realsynth/shards``); local shards are read in place.
        open_shards: shards kept open per process (at least the sampler's shard window).

    Attributes:
        classes / predicates: label names by 0-based index.
        shard_sizes: int64 [S] samples per shard, in index order.
        accesses / misses: items read and shard opens in this process (the cache hit rate is
            ``1 - misses / accesses``).
    """

    def __init__(
        self,
        location: str | Path,
        *,
        transforms: Transform | None = None,
        source: str | None = None,
        seed: int = 0,
        skip_bad_samples: bool = False,
        cache_dir: str | Path | None = None,
        open_shards: int = 16,
    ) -> None:
        require_wids()
        index = read_shard_index(location)
        name = str(location).rstrip("/").rsplit("/", 1)[-1].removesuffix(".json") or "shards"
        super().__init__(
            source=source or name,
            transforms=transforms,
            seed=seed,
            skip_bad_samples=skip_bad_samples,
        )
        self.index: ShardIndex = index
        self.classes, self.predicates = index.classes, index.predicates
        self.rescale_on_size_mismatch = index.rescale_on_size_mismatch
        self.one_predicate_per_pair = bool(index.converted_from.get("one_predicate_per_pair"))
        self.shard_sizes = index.counts
        self._starts = index.starts
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.open_shards = max(1, int(open_shards))
        self.accesses = self.misses = 0
        self._open: Any = None  # wids' LRUCache of open shards, made in the process reading
        self._last: tuple[int, dict[str, Any] | None] = (-1, None)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict[str, Any]:
        # Open shards (mmaps, file handles) stay in their process; a worker opens its own.
        state = dict(self.__dict__)
        state["_open"], state["_last"] = None, (-1, None)
        return state

    def label_counts(self) -> tuple[np.ndarray, np.ndarray]:
        return self.index.object_counts.copy(), self.index.relation_counts.copy()

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, position within the shard) of item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"source '{self.source}': item {index} of {len(self)}")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return shard, index - int(self._starts[shard])

    def annotation(self, index: int) -> dict[str, Any]:
        sample, where = self._sample(index)
        data = sample_bytes(sample, "json")
        if data is None:
            raise ValueError(f"{where}: the sample has no .json annotation")
        return decode_annotation(data, source=self.source, where=where)

    def image_path(self, index: int) -> Path:
        """``SHARD.tar/KEY.EXT``: the image's place in its shard (it is no file of its own)."""
        sample, _ = self._sample(index)
        entry = image_entry(sample)
        shard = self.index.urls[self.locate(index)[0]].rstrip("/").rsplit("/", 1)[-1]
        return Path(shard) / f"{sample['__key__']}.{entry[0] if entry else 'jpg'}"

    def image_file(self, index: int) -> io.BytesIO:
        sample, where = self._sample(index)
        entry = image_entry(sample)
        if entry is None:
            raise BadSampleError(f"source '{self.source}': {where}: the sample has no image")
        return io.BytesIO(entry[1])

    def sample_annotation(self, target: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """A VG150 training split converted with its duplicate filter draws one predicate per
        pair here, as :class:`~realsynth.data.formats.vg150.VG150Dataset` does."""
        return one_predicate_per_pair(target, rng) if self.one_predicate_per_pair else target

    def _sample(self, index: int) -> tuple[dict[str, Any], str]:
        """The raw sample of item ``index`` and ``SHARD_URL#KEY`` naming it (the last one read is
        kept: an item's annotation and image come from one read)."""
        shard, offset = self.locate(index)
        if self._last[0] != index or self._last[1] is None:
            self._last = (index, self._shard(shard)[offset])
            self.accesses += 1
        sample = self._last[1]
        return sample, f"{self.index.urls[shard]}#{sample['__key__']}"

    def _shard(self, shard: int) -> Any:
        """Shard ``shard`` as wids' ``IndexedTarSamples`` (opened, or among the open ones)."""
        if self._open is None:
            from wids.wids_lru import LRUCache

            self._open = LRUCache(self.open_shards, release_handler=lambda _k, v: v.close())
        if shard not in self._open:
            self._open[shard] = self._open_shard(shard)
            self.misses += 1
        return self._open[shard]

    def _open_shard(self, shard: int) -> Any:
        from wids.wids import IndexedTarSamples
        from wids.wids_dl import default_cmds, download_and_open

        url, expected = self.index.urls[shard], int(self.shard_sizes[shard])
        try:
            if is_remote(url):
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                local = cache_name(self.cache_dir, url)
                handlers = {**default_cmds, **dict.fromkeys(_OUR_SCHEMES, download)}
                with download_and_open(url, local, handlers=handlers) as stream:
                    samples = IndexedTarSamples(path=local, stream=stream)
            else:
                samples = IndexedTarSamples(path=str(local_path(url)))
        except FileNotFoundError:
            raise ShardLocationError(f"source '{self.source}': shard {url} not found") from None
        except (OSError, ValueError) as exc:
            if isinstance(exc, ShardLocationError):
                raise
            raise ShardLocationError(f"source '{self.source}': shard {url}: {exc}") from None
        if len(samples) != expected:
            samples.close()
            raise ValueError(
                f"source '{self.source}': shard {url} holds {len(samples)} samples but "
                f"{self.index.location} says {expected}"
            )
        return samples
