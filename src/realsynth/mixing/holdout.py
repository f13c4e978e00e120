"""The real holdout of adaptive mixing: images set aside from training, never used to report.

By default a number of images of the first real source are carved from its training set (a
seeded draw, the same for every rank and every resume); training uses the rest. Alternatively a
whole source's training file is the holdout (that source is then not trained on). Either way the
holdout is read with the evaluation transforms, and ``holdout.json`` in the run folder lists its
images.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from realsynth.utils.atomic import atomic_write_json

HOLDOUT_FILE = "holdout.json"


class IndexSubset(Dataset):
    """Items ``indices`` of a relation dataset, in that order; other attributes are the
    dataset's (``classes``, ``predicates``, ``source``, ...), but not ``label_counts``, which
    would count the whole dataset."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]

    def get_item(self, i: int, rng: np.random.Generator) -> Any:
        return self.dataset.get_item(self.indices[i], rng)

    def annotation(self, i: int) -> dict[str, Any]:
        return self.dataset.annotation(self.indices[i])

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices", "label_counts") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


@dataclass
class Holdout:
    """The holdout set and where it came from."""

    source: str
    dataset: Dataset
    indices: list[int] | None  # positions in the source's training set; None: all of it

    def write(self, run_dir: str | Path) -> None:
        """``holdout.json``: the source and the image of every holdout item."""
        base = getattr(self.dataset, "dataset", self.dataset)
        positions = self.indices if self.indices is not None else list(range(len(self.dataset)))
        images = [_image_name(base, i) for i in positions]
        atomic_write_json(
            Path(run_dir) / HOLDOUT_FILE,
            {"source": self.source, "indices": positions, "images": images},
        )


def carve_holdout(
    dataset: Dataset, name: str, num_images: int, seed: int, eval_transforms: Any
) -> tuple[Holdout, IndexSubset]:
    """``num_images`` random items of ``dataset`` as the holdout, the rest for training.

    Returns:
        (the holdout, read with ``eval_transforms``; the training subset, in index order).

    Raises:
        ValueError: the holdout would take half the source or more.
    """
    size = len(dataset)
    if not 0 < num_images <= (size - 1) // 2:
        raise ValueError(
            f"source {name!r} has {size} training images; the holdout must hold "
            f"1 .. {max(0, (size - 1) // 2)} of them (at most half, so that training keeps the "
            "rest)"
        )
    # A generator of its own: the carve must not shift any other random stream of the run.
    chosen = np.sort(np.random.default_rng([seed, 7417]).permutation(size)[:num_images])
    rest = np.setdiff1d(np.arange(size), chosen)
    return (
        Holdout(
            name, IndexSubset(_with_transforms(dataset, eval_transforms), chosen), chosen.tolist()
        ),
        IndexSubset(dataset, rest),
    )


def whole_source_holdout(dataset: Dataset, name: str, eval_transforms: Any) -> Holdout:
    """A whole source (its training file) as the holdout."""
    return Holdout(name, _with_transforms(dataset, eval_transforms), None)


def _with_transforms(dataset: Dataset, transforms: Any) -> Dataset:
    """A shallow copy reading the same index with other transforms (no augmentation)."""
    view = copy.copy(dataset)
    view.transforms = transforms
    view.skip_bad_samples = False  # a holdout image that cannot be read stops the decision
    return view


def _image_name(dataset: Any, index: int) -> str:
    if hasattr(dataset, "image_path"):
        return str(dataset.image_path(index).name)
    return str(index)


def holdout_items(size: int, decision: int, batch: int, rank: int, world: int) -> list[int]:
    """This rank's holdout positions for decision ``decision`` (0-based): the decision's
    ``batch`` consecutive positions (cycling through the holdout), every ``world``-th one.

    Args:
        size: holdout images.
        decision: how many decisions came before.
        batch: holdout images per decision (all ranks together).
        rank / world: this process and the number of processes.
    """
    first = decision * batch
    return [(first + i) % size for i in range(rank, batch, world)]
