"""Config -> datasets: every source's train, validation and test sets, with one label space
(the demo cache: :mod:`realsynth.training.demo_cache`; the start-up checks of the sources:
:mod:`realsynth.training.source_checks`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from realsynth.config import ConfigError
from realsynth.config.checks import holdout_source_error
from realsynth.config.source_mix import SourceMix, resolve_mix
from realsynth.data.collate import collate_relations
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.formats.relcoco_cache import default_index_cache
from realsynth.data.formats.vg150 import vg150_from_folder
from realsynth.data.shards.dataset import ShardedDataset
from realsynth.data.slot_loader import SlotDataLoader
from realsynth.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transforms,
    predicate_flip_indices,
)
from realsynth.data.zero_shot import load_zero_shot_triplets
from realsynth.mixing.holdout import Holdout, carve_holdout, whole_source_holdout
from realsynth.mixing.mixed_dataset import ignore_interrupts
from realsynth.modeling.backbones import backbone_pixel_stats
from realsynth.training.demo_cache import demo_sources
from realsynth.training.source_checks import (
    existing_path,
    require_relationships,
    require_utf8_paths,
    shared_labels,
    warn_without_relationships,
)
from realsynth.utils.distributed import get_rank, get_world_size


@dataclass
class RunData:
    """The datasets of one run, with one shared label space.

    Attributes:
        names: source names, in config order (real sources first by convention).
        mix: each source's resolved batch share and loss weight.
        train: each source's training dataset.
        val: validation datasets by source name (sources without one are absent).
        classes / predicates: the shared label names (0-based; background is the last index).
        skipped: images left out when the datasets were built (``DATALOADER.SKIP_BAD_SAMPLES``),
            by "source 'NAME' (train|val)"; empty lists are not kept.
        zero_shot: int64 [N, 3] (subject, predicate, object) triplets for zsR@K, or None.
        holdout: adaptive mixing's real holdout (never trained on, never reported), or None.
    """

    names: list[str]
    mix: list[SourceMix]
    train: list[Dataset]
    val: dict[str, Dataset]
    classes: list[str]
    predicates: list[str]
    skipped: dict[str, list[Any]] = field(default_factory=dict)
    zero_shot: np.ndarray | None = None
    holdout: Holdout | None = None

    @property
    def kinds(self) -> dict[str, str]:
        """``real`` or ``synthetic`` by source name (the sources in training)."""
        return {mix.name: mix.kind for mix in self.mix}

    def val_loaders(self, cfg: DictConfig) -> dict[str, DataLoader]:
        """One loader per validation source (see :func:`evaluation_loaders`)."""
        return evaluation_loaders(cfg, self.val)


def evaluation_loaders(cfg: DictConfig, datasets: dict[str, Dataset]) -> dict[str, DataLoader]:
    """One loader per evaluation set; with several ranks each rank gets a disjoint shard."""
    rank, world = get_rank(), get_world_size()
    loaders = {}
    for name, dataset in datasets.items():
        shard = _Shard(dataset, range(rank, len(dataset), world))
        loaders[name] = SlotDataLoader(
            shard,
            batch_size=cfg.TEST.IMS_PER_BATCH,
            shuffle=False,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            collate_fn=collate_relations,
            worker_init_fn=ignore_interrupts,
            pin_memory=torch.cuda.is_available() and cfg.MODEL.DEVICE != "cpu",
        )
    return loaders


class _Shard(Dataset):
    """A fixed subset of a dataset, in order (evaluation sharding over ranks)."""

    def __init__(self, dataset: Dataset, indices: range) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]


def build_data(cfg: DictConfig) -> RunData:
    """Build every source's datasets from ``cfg.DATASETS`` (the demo data when SOURCES is empty).

    Raises:
        ConfigError: a path does not exist, or the sources disagree on class / predicate names.
    """
    require_utf8_paths(cfg)
    sources = run_sources(cfg)
    train, val = [], {}
    for src in sources:
        train.append(_dataset(cfg, src, "train"))
        if src.FORMAT == "vg150" or src.VAL_PATH:
            val[src.NAME] = _dataset(cfg, src, "val")
    classes, predicates = shared_labels(sources, train)
    # Counted before adaptive mixing carves its holdout (the rest is a plain subset).
    without_relationships = {
        src.NAME: len(dataset)
        for src, dataset in zip(sources, train)
        if not dataset.label_counts()[1].sum()
    }
    holdout = None
    md = cfg.DATASETS.MULTI_DATASET
    if md.ENABLED and md.ADAPTIVE.ENABLED:
        holdout, sources, train = _holdout(cfg, sources, train)
    mix = resolve_mix(
        sources,
        cfg.DATASETS.MULTI_DATASET,
        [len(d) for d in train],
        max_iter=cfg.SOLVER.MAX_ITER,
    )
    active = [k for k, m in enumerate(mix) if m.max_ratio > 0]
    for k in active:
        if sources[k].NAME in without_relationships:
            warn_without_relationships(sources[k], without_relationships[sources[k].NAME])
    skipped = {
        f"source '{name}' ({split})": list(dataset.skipped)
        for name, split, dataset in [
            *((sources[k].NAME, "train", train[k]) for k in active),
            *((name, "val", dataset) for name, dataset in val.items()),
        ]
        if getattr(dataset, "skipped", None)
    }
    return RunData(
        names=[sources[k].NAME for k in active],
        mix=[mix[k] for k in active],
        train=[train[k] for k in active],
        val=val,
        classes=classes,
        predicates=predicates,
        skipped=skipped,
        zero_shot=_zero_shot_triplets(cfg, classes, predicates),
        holdout=holdout,
    )


def _holdout(
    cfg: DictConfig, sources: list[Any], train: list[Dataset]
) -> tuple[Holdout, list[Any], list[Dataset]]:
    """Adaptive mixing's holdout, and the sources and training sets left for training."""
    adaptive = cfg.DATASETS.MULTI_DATASET.ADAPTIVE
    names = [s.NAME for s in sources]
    if adaptive.HOLDOUT_SOURCE:
        # The config check knows DATASETS.SOURCES; the demo's sources are only known here.
        kinds = {s.NAME: s.TYPE for s in sources}
        if kinds.get(adaptive.HOLDOUT_SOURCE) != "real":
            key = "DATASETS.MULTI_DATASET.ADAPTIVE.HOLDOUT_SOURCE"
            raise ConfigError(holdout_source_error(adaptive.HOLDOUT_SOURCE, kinds), key)
        k = names.index(adaptive.HOLDOUT_SOURCE)
        eval_transforms = _transforms(
            cfg, dict(sources[k].PREDICATE_FLIP_MAP), train[k].predicates, False
        )
        holdout = whole_source_holdout(train[k], names[k], eval_transforms)
        return holdout, sources[:k] + sources[k + 1 :], train[:k] + train[k + 1 :]
    k = next((i for i, s in enumerate(sources) if s.TYPE == "real"), None)
    if k is None:
        raise ConfigError(
            "DATASETS.MULTI_DATASET.ADAPTIVE needs a real source to carve the holdout from, or "
            "ADAPTIVE.HOLDOUT_SOURCE",
            "DATASETS.MULTI_DATASET.ADAPTIVE",
        )
    eval_transforms = _transforms(
        cfg, dict(sources[k].PREDICATE_FLIP_MAP), train[k].predicates, False
    )
    try:
        holdout, rest = carve_holdout(
            train[k], names[k], adaptive.HOLDOUT_IMAGES, cfg.SEED, eval_transforms
        )
    except ValueError as exc:
        key = "DATASETS.MULTI_DATASET.ADAPTIVE.HOLDOUT_IMAGES"
        raise ConfigError(f"{key}={adaptive.HOLDOUT_IMAGES}: {exc}", key) from None
    return holdout, sources, [*train[:k], rest, *train[k + 1 :]]


def _zero_shot_triplets(
    cfg: DictConfig, classes: list[str], predicates: list[str]
) -> np.ndarray | None:
    """``TEST.ZERO_SHOT_TRIPLETS`` read against the label spaces (None when unset)."""
    if not cfg.TEST.ZERO_SHOT_TRIPLETS:
        return None
    try:
        return load_zero_shot_triplets(cfg.TEST.ZERO_SHOT_TRIPLETS, classes, predicates)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(f"TEST.ZERO_SHOT_TRIPLETS: {exc}", "TEST.ZERO_SHOT_TRIPLETS") from None


def run_sources(cfg: DictConfig) -> list[Any]:
    """The run's ``SourceConfig`` nodes: ``DATASETS.SOURCES``, or the demo's two."""
    return list(cfg.DATASETS.SOURCES) or demo_sources(cfg)


def build_test_sets(cfg: DictConfig) -> dict[str, Dataset]:
    """Every source's test split (relcoco ``TEST_PATH``, VG150's split 2 when ``VAL_SPLIT`` is
    val), by source name: for reports only, never for model selection."""
    return {
        src.NAME: _dataset(cfg, src, "test")
        for src in run_sources(cfg)
        if (src.FORMAT == "vg150" and src.VAL_SPLIT == "val") or src.TEST_PATH
    }


def _dataset(cfg: DictConfig, src: Any, split: str) -> Dataset:
    train = split == "train"
    # Images the rules reject are left out of validation sets too when asked (the start-up
    # report names each one), but an image that cannot be decoded during an evaluation stops
    # the run (its checkpoint kept): a score must not silently cover fewer images.
    common = {
        "source": src.NAME,
        "seed": cfg.SEED,
        "skip_bad_samples": cfg.DATALOADER.SKIP_BAD_SAMPLES,
    }
    if src.FORMAT == "vg150":
        folder = existing_path(src.PATH, f"{src.NAME}.PATH")
        dataset = vg150_from_folder(
            folder,
            split=src.VAL_SPLIT if split == "val" else split,
            image_root=src.IMAGE_ROOT or None,
            num_val_images=src.NUM_VAL_IMAGES,
            filter_duplicate_rels=src.FILTER_DUPLICATE_RELS,
            filter_non_overlap=src.FILTER_NON_OVERLAP,
            **common,
        )
    elif src.FORMAT == "shards":
        dataset = _sharded_dataset(cfg, src, split, common)
    else:
        prefix = "" if train else f"{split.upper()}_"  # PATH / VAL_PATH / TEST_PATH, ...
        ann = existing_path(src[f"{prefix}PATH"], f"{src.NAME}.{prefix}PATH")
        root = src[f"{prefix}IMAGE_ROOT"] or src.IMAGE_ROOT
        root = Path(root) if root else ann.parent / "images"
        dataset = RelCocoDataset(ann, root, index_cache=default_index_cache(), **common)
    if not train:
        dataset.skip_bad_samples = False
        require_relationships(src, split, dataset)
    # The flip map is given by predicate name: translate it with the dataset's own names.
    dataset.transforms = _transforms(cfg, dict(src.PREDICATE_FLIP_MAP), dataset.predicates, train)
    return dataset


def _sharded_dataset(cfg: DictConfig, src: Any, split: str, common: dict[str, Any]) -> Dataset:
    """``FORMAT: shards``: the split's shard folder or URL (PATH / VAL_PATH / TEST_PATH)."""
    key = f"{src.NAME}.{'' if split == 'train' else split.upper() + '_'}PATH"
    location = src[key.rsplit(".", 1)[1]]
    if "://" not in location and not location.startswith("pipe:"):
        location = str(existing_path(location, key))
    # A window's shards stay open (and cached) while the sampler visits them.
    open_shards = 2 * cfg.DATALOADER.SHARD_WINDOW
    try:
        return ShardedDataset(
            location,
            cache_dir=cfg.DATALOADER.SHARD_CACHE or None,
            open_shards=open_shards,
            **common,
        )
    except (ImportError, OSError, ValueError) as exc:
        raise ConfigError(f"{key}: {exc}", key) from None


def eval_transforms(cfg: DictConfig) -> Any:
    """The evaluation transforms of ``cfg`` (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``)."""
    return _transforms(cfg, {}, [], False)


def _transforms(
    cfg: DictConfig, flip_names: dict[str, str], predicates: list[str], train: bool
) -> Any:
    inp = cfg.INPUT
    sizes = (
        list(inp.MIN_SIZE_TRAIN) if train else ([inp.MIN_SIZE_TEST] if inp.MIN_SIZE_TEST else [])
    )
    # The cap holds for every image, native sizes included: a 10000 x 10000 file is decoded
    # reduced (see RelationDataset.get_item) instead of taking gigabytes as floats.
    key = "INPUT.MAX_SIZE_TRAIN" if train else "INPUT.MAX_SIZE_TEST"
    max_size = OmegaConf.select(cfg, key)
    if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size <= 0:
        raise ConfigError(
            f"{key}={max_size}: expected a positive number of pixels (the longest side any "
            "image is given)",
            key,
        )
    # Without a flip map a flip would turn "left of" into a wrong label: no flipping then.
    return build_transforms(
        train=train,
        min_sizes=sizes,
        max_size=max_size,
        flip_prob=inp.FLIP_PROB if flip_names else 0.0,
        predicate_flip_map=predicate_flip_indices(flip_names, predicates) if flip_names else None,
        normalize=inp.NORMALIZE,
        # Pixels cross from loader workers as uint8, normalized on the device (batch_images).
        uint8=True,
        **_normalization(cfg),
    )


def pixel_stats(cfg: DictConfig) -> tuple[list[float], list[float]]:
    """The images' normalization: ``INPUT.PIXEL_MEAN`` / ``PIXEL_STD``, or when they are empty
    the backbone's (``hf:DIR``'s preprocessor_config.json, ImageNet's for the other pretrained
    kinds; an ``hf_detr`` checkpoint folder's preprocessor_config.json), else ImageNet's (the
    transforms' default, small_cnn's)."""
    inp = cfg.INPUT
    if inp.PIXEL_MEAN and inp.PIXEL_STD:
        return list(inp.PIXEL_MEAN), list(inp.PIXEL_STD)
    found, key = None, "MODEL.BACKBONE.NAME"
    if cfg.MODEL.ARCHITECTURE == "relation_transformer":
        spec = cfg.MODEL.BACKBONE.NAME
    elif cfg.MODEL.ARCHITECTURE == "hf_detr" and cfg.MODEL.HF_DETR.PATH:
        spec, key = f"hf:{cfg.MODEL.HF_DETR.PATH}", "MODEL.HF_DETR.PATH"
    else:
        spec = ""
    try:
        found = backbone_pixel_stats(spec) if spec else None
    except ValueError as exc:
        raise ConfigError(f"{key}: {exc}", key) from None
    mean, std = found or (IMAGENET_MEAN, IMAGENET_STD)
    return list(inp.PIXEL_MEAN or mean), list(inp.PIXEL_STD or std)


def _normalization(cfg: DictConfig) -> dict[str, Any]:
    """``build_transforms``' mean and std when they are not its default (the default stream
    stays as it was)."""
    if not cfg.INPUT.NORMALIZE:
        return {}
    mean, std = pixel_stats(cfg)
    if (tuple(mean), tuple(std)) == (IMAGENET_MEAN, IMAGENET_STD):
        return {}
    return {"mean": mean, "std": std}
