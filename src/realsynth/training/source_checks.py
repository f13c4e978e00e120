"""Start-up checks of a run's sources: paths that exist and that a config.yaml can record,
validation and test sets with relationships to score, training sets without any (a warning),
and one label space shared by every source."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import Dataset

from realsynth.config import ConfigError
from realsynth.data.paths import is_utf8, shown
from realsynth.utils.distributed import get_rank

_PATH_KEYS = ("PATH", "VAL_PATH", "TEST_PATH", "IMAGE_ROOT", "VAL_IMAGE_ROOT", "TEST_IMAGE_ROOT")


def require_utf8_paths(cfg: DictConfig) -> None:
    """A source path that is not valid UTF-8 (bytes a file name may hold) opens, but the run's
    config.yaml, written in UTF-8, cannot record it: refuse it now, naming it."""
    for src in cfg.DATASETS.SOURCES:
        for key in _PATH_KEYS:
            if src[key] and not is_utf8(src[key]):
                raise ConfigError(
                    f"DATASETS.SOURCES {src.NAME}.{key}: {shown(src[key])} is not valid UTF-8, "
                    "which a run's config.yaml cannot record; rename it, or link it from a "
                    "UTF-8 path",
                    f"DATASETS.SOURCES.{src.NAME}.{key}",
                )


def existing_path(path: str, key: str) -> Path:
    """``path`` as a Path; refused, naming the config ``key``, when it does not exist."""
    if not path or not Path(path).exists():
        raise ConfigError(f"DATASETS.SOURCES {key}: {path!r} does not exist")
    return Path(path)


def shared_labels(sources: list[Any], datasets: list[Dataset]) -> tuple[list[str], list[str]]:
    """The class and predicate names every source shares; refused when two sources differ."""
    classes, predicates = list(datasets[0].classes), list(datasets[0].predicates)
    for src, dataset in zip(sources[1:], datasets[1:]):
        for what, ours in (("classes", classes), ("predicates", predicates)):
            theirs = list(getattr(dataset, what))
            if theirs != ours:
                raise ConfigError(
                    f"source {src.NAME!r} has different {what} from {sources[0].NAME!r} "
                    f"({len(theirs)} vs {len(ours)}; first difference at index "
                    f"{next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), None)}): "
                    "map both to one label space before mixing them"
                )
    return classes, predicates


def source_file(src: Any, split: str) -> str:
    """The annotation file behind a source's split, as its config names it."""
    if src.FORMAT == "vg150":
        return f"{shown(src.PATH)} (split {src.VAL_SPLIT if split == 'val' else split})"
    return shown(src[f"{'' if split == 'train' else split.upper() + '_'}PATH"])


def require_relationships(src: Any, split: str, dataset: Dataset) -> None:
    """A validation or test set without a relationship cannot be scored: refuse it now rather
    than at the first evaluation."""
    if dataset.label_counts()[1].sum():
        return
    key = f"{src.NAME}.{'PATH' if src.FORMAT == 'vg150' else split.upper() + '_PATH'}"
    what = "validation" if split == "val" else "test"
    raise ConfigError(
        f"{what} source '{src.NAME}': {source_file(src, split)} has no relationships in its "
        f"{len(dataset)} image(s), so Recall@K cannot be computed on it (DATASETS.SOURCES "
        f"{key}); give it a file with relationships (`realsynth data check` says what was "
        "left out)",
        f"DATASETS.SOURCES.{key}",
    )


#: (source, file) pairs already warned about in this process: one warning each.
_WARNED_WITHOUT_RELATIONSHIPS: set[tuple[str, str]] = set()


def warn_without_relationships(src: Any, images: int) -> None:
    """A training source without a relationship trains, but teaches only "no relation": say so
    once (rank 0)."""
    where = (str(src.NAME), source_file(src, "train"))
    if where in _WARNED_WITHOUT_RELATIONSHIPS:
        return
    _WARNED_WITHOUT_RELATIONSHIPS.add(where)
    if get_rank() == 0:
        print(
            f"realsynth: warning: training source '{where[0]}': {where[1]} has no "
            f"relationships in its {images} image(s); its share of every batch teaches "
            "only boxes and 'no relation'",
            file=sys.stderr,
        )
