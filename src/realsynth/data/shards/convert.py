"""``realsynth data convert``: a relcoco file or a VG150 split written as WebDataset tar shards.

Shard ``k`` holds items ``k * samples_per_shard`` onward, in the source's order, each an image
file's bytes (unchanged) and its annotation as JSON (:mod:`realsynth.data.shards.sample`). Tar
members carry fixed metadata (mtime 0, owner 0), so the same source gives the same bytes on any
machine. Each shard is written under a temporary name and renamed, so a shard on disk is
complete; a conversion killed half way resumes with the shards it lacks (``plan.json`` records
what is being converted, and a folder holding another conversion is refused). ``index.json`` is
written last: a folder without one is an unfinished conversion, never a smaller source.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import tarfile
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realsynth.data.images import RelationDataset
from realsynth.data.shards.sample import IMAGE_EXTENSIONS, encode_annotation
from realsynth.data.shards.shard_index import INDEX_NAME, write_shard_index
from realsynth.utils.atomic import atomic_write_text

PLAN_NAME = "plan.json"


@dataclass(frozen=True)
class ConvertReport:
    """What a conversion wrote.

    Attributes:
        index: the written ``index.json``.
        shards: shards in the folder; ``written`` of them by this call (the rest were there).
        samples: items converted.
    """

    index: Path
    shards: int
    written: int
    samples: int


def shard_name(shard: int) -> str:
    """File name of shard ``shard``: ``shard-000042.tar``."""
    return f"shard-{shard:06d}.tar"


def convert_to_shards(
    dataset: RelationDataset,
    out: str | Path,
    *,
    samples_per_shard: int = 1000,
    workers: int = 1,
    converted_from: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ConvertReport:
    """Writes every item of ``dataset`` into tar shards in ``out`` and ``out/index.json``.

    Args:
        dataset: the source (its ``annotation`` and ``image_path`` are read; no transforms).
        out: the shard folder (created; one holding another conversion is refused).
        samples_per_shard: items per shard (the last shard holds the rest).
        workers: processes writing shards side by side.
        converted_from: what the source was (path, format), kept in ``index.json``.
        progress: called as ``progress(shards_done, shards_total)`` after each shard.

    Raises:
        ValueError: ``out`` holds another conversion, a setting is out of range, or an image has
            an extension a shard cannot carry.
    """
    if samples_per_shard < 1 or workers < 1:
        raise ValueError("samples_per_shard and workers must be at least 1")
    if len(dataset) == 0:
        raise ValueError("the source has no images to convert")
    out = Path(out)
    origin = dict(converted_from or {})
    origin["one_predicate_per_pair"] = bool(getattr(dataset, "filter_duplicate_rels", False))
    plan = {"samples": len(dataset), "samples_per_shard": samples_per_shard, "source": origin}
    _claim(out, plan)
    num_shards = -(-len(dataset) // samples_per_shard)
    todo = [k for k in range(num_shards) if not (out / shard_name(k)).is_file()]
    ranges = [
        (k, k * samples_per_shard, min(len(dataset), (k + 1) * samples_per_shard)) for k in todo
    ]
    done = num_shards - len(todo)
    if workers == 1 or len(ranges) <= 1:
        for task in ranges:
            _write_shard(dataset, out, *task)
            done += 1
            if progress is not None:
                progress(done, num_shards)
    else:
        context = multiprocessing.get_context("fork" if os.name == "posix" else "spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(_write_shard, dataset, out, *task) for task in ranges]
            for future in futures:
                future.result()
                done += 1
                if progress is not None:
                    progress(done, num_shards)
    objects, relations = dataset.label_counts()
    shards = [
        {
            "url": shard_name(k),
            "nsamples": min(len(dataset), (k + 1) * samples_per_shard) - k * samples_per_shard,
            "filesize": (out / shard_name(k)).stat().st_size,
        }
        for k in range(num_shards)
    ]
    index = write_shard_index(
        out,
        shards,
        name=out.name,
        classes=list(dataset.classes),
        predicates=list(dataset.predicates),
        object_counts=objects,
        relation_counts=relations,
        rescale_on_size_mismatch=dataset.rescale_on_size_mismatch,
        converted_from=origin,
    )
    return ConvertReport(index=index, shards=num_shards, written=len(todo), samples=len(dataset))


def _claim(out: Path, plan: dict[str, Any]) -> None:
    """Starts or resumes the conversion ``plan`` in ``out`` (stale partial shards removed)."""
    out.mkdir(parents=True, exist_ok=True)
    plan_file = out / PLAN_NAME
    if plan_file.is_file():
        previous = json.loads(plan_file.read_text())
        if previous != json.loads(json.dumps(plan)):
            raise ValueError(
                f"{out} holds another conversion ({plan_file}: {previous['samples']} samples of "
                f"{previous['source'].get('path', '?')}, {previous['samples_per_shard']} per "
                "shard); convert into a new folder or remove this one"
            )
    elif any(out.iterdir()):
        raise ValueError(
            f"{out} is not empty and holds no conversion ({PLAN_NAME}): pick a new folder"
        )
    else:
        atomic_write_text(plan_file, json.dumps(plan, indent=1))
    (out / INDEX_NAME).unlink(missing_ok=True)  # rewritten once every shard is there
    for stale in out.glob(".shard-*"):
        stale.unlink()


def _write_shard(dataset: RelationDataset, out: Path, shard: int, start: int, stop: int) -> None:
    """Writes items ``[start, stop)`` as ``out/shard-NNNNNN.tar``, atomically."""
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{shard_name(shard)}.", suffix=".part")
    try:
        with (
            os.fdopen(fd, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar,
        ):
            for index in range(start, stop):
                key = f"{index:09d}"
                path = dataset.image_path(index)
                ext = path.suffix.lower().lstrip(".")
                if ext not in IMAGE_EXTENSIONS:
                    raise ValueError(
                        f"{path}: a shard carries images with the extensions "
                        f"{', '.join(IMAGE_EXTENSIONS)}, not '{path.suffix}'"
                    )
                _add(tar, f"{key}.{ext}", Path(path).read_bytes())
                _add(tar, f"{key}.json", encode_annotation(dataset.annotation(index)))
            tar.close()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out / shard_name(shard))
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))
