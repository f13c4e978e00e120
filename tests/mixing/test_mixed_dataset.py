"""MixedDataset tagging and lookup, build_mixed_loader wiring."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils.data import Dataset

from realsynth.mixing.mixed_dataset import MixedDataset, Source, build_mixed_loader
from realsynth.mixing.sampler import MixedBatchSampler


class DictDataset(Dataset):
    """Items are dicts holding a nested annotation, to check that tagging never copies it."""

    def __init__(self, name: str, size: int) -> None:
        self.items = [
            {"image_id": f"{name}-{i}", "ann": {"boxes": [[0.5] * 4]}} for i in range(size)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def _sources(real: int = 10, synth: int = 30) -> list[Source]:
    return [
        Source("vg", DictDataset("vg", real), "real", 0.7, 1.0),
        Source("render", DictDataset("render", synth), "synthetic", 0.3, 0.5),
    ]


def test_items_are_tagged_shallow_copies() -> None:
    sources = _sources()
    mixed = MixedDataset(sources)
    item = mixed[12]
    original = sources[1].dataset.items[2]
    assert item["image_id"] == "render-2"
    assert (item["dataset_type"], item["source"], item["loss_weight"], item["source_id"]) == (
        "synthetic",
        "render",
        0.5,
        1,
    )
    assert item["ann"] is original["ann"]  # shallow: nested objects shared, never deep-copied
    assert "source" not in original and set(original) == {"image_id", "ann"}
    assert mixed[0]["dataset_type"] == "real" and mixed[0]["source_id"] == 0


def test_sizes_ratios_and_source_of_with_an_empty_source() -> None:
    mixed = MixedDataset(
        [
            Source("a", DictDataset("a", 3), "real", 0.5, 1.0),
            Source("empty", DictDataset("e", 0), "synthetic", 0.0, 0.5),
            Source("b", DictDataset("b", 4), "synthetic", 0.5, 0.5),
        ]
    )
    assert mixed.sizes == [3, 0, 4] and mixed.ratios == [0.5, 0.0, 0.5] and len(mixed) == 7
    assert [mixed.source_of(i) for i in range(7)] == [
        (0, 0), (0, 1), (0, 2), (2, 0), (2, 1), (2, 2), (2, 3)
    ]  # fmt: skip
    with pytest.raises(IndexError, match=r"index 7 out of range: expected 0 <= index < 7"):
        mixed[7]
    with pytest.raises(IndexError, match=r"index -1 out of range"):
        mixed.source_of(-1)


def test_bad_sources_are_rejected() -> None:
    ds = DictDataset("x", 2)
    with pytest.raises(ValueError, match=r"source 'x': kind must be one of"):
        Source("x", ds, "fake", 0.5, 1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"source 'x': ratio must be in \[0, 1\], got 1.5"):
        Source("x", ds, "real", 1.5, 1.0)
    with pytest.raises(ValueError, match=r"source 'x': loss_weight must be finite and >= 0"):
        Source("x", ds, "real", 0.5, float("nan"))
    with pytest.raises(ValueError, match=r"source names must be unique, repeated: \['x'\]"):
        MixedDataset([Source("x", ds, "real", 0.5, 1.0), Source("x", ds, "synthetic", 0.5, 1.0)])

    class Tuples(Dataset):
        def __len__(self) -> int:
            return 1

        def __getitem__(self, index: int) -> tuple:
            return (index,)

    with pytest.raises(TypeError, match=r"source 't' item 0 is a tuple, expected a dict"):
        MixedDataset([Source("t", Tuples(), "real", 1.0, 1.0)])[0]


def test_loader_batches_hold_the_exact_mix() -> None:
    loader = build_mixed_loader(_sources(), 10, seed=3)
    assert isinstance(loader.batch_sampler, MixedBatchSampler)
    batches = list(loader)
    assert len(batches) == 2  # ceil(10 real / 7 per batch)
    for batch in batches:
        kinds = [item["dataset_type"] for item in batch]
        assert kinds == ["real"] * 7 + ["synthetic"] * 3
        assert [item["loss_weight"] for item in batch] == [1.0] * 7 + [0.5] * 3
    real_ids = [item["image_id"] for b in batches for item in b[:7]]
    assert sorted(real_ids[:10]) == sorted(f"vg-{i}" for i in range(10))


def test_loader_rank_world_size_and_workers() -> None:
    single = [
        [item["image_id"] for item in b]
        for b in build_mixed_loader(_sources(), 10, seed=5, num_batches=4)
    ]
    for rank in range(2):
        loader = build_mixed_loader(
            _sources(), 10, seed=5, rank=rank, world_size=2, num_batches=2, num_workers=1
        )
        got = [[item["image_id"] for item in b] for b in loader]
        assert got == single[rank::2]


def test_loader_epoch_source_is_the_first_real_source() -> None:
    sources = [
        Source("render", DictDataset("render", 100), "synthetic", 0.5, 0.5),
        Source("vg", DictDataset("vg", 4), "real", 0.5, 1.0),
    ]
    loader = build_mixed_loader(sources, 4, seed=0)
    assert len(loader) == 2  # 4 real items, 2 per batch
    draws = np.array([item["source_id"] for b in loader for item in b])
    assert draws.tolist() == [0, 0, 1, 1] * 2
