"""``realsynth compare``: does the synthetic data help? Variants x seeds, same budget, intervals.

Built-in variants (``COMPARE.BUILTIN``):

1. ``real_only``: the real sources alone (``MULTI_DATASET.ENABLED: false``), weights 1.0;
2. ``naive``: every source, each batch's share proportional to the source's size, weights 1.0
   (what plain concatenation + shuffling gives);
3. ``mix``: the configured mix (by default the note's: 0.7 real, synthetic weight 0.5), held
   fixed (adaptive mixing off);
4. ``adaptive`` (not run by default): the configured mix as the starting point of adaptive
   mixing (``MULTI_DATASET.ADAPTIVE``, :mod:`realsynth.mixing.adaptive`);

plus the user's ``COMPARE.VARIANTS`` (a name and config overrides each). Every variant x seed
is an ordinary run folder ``OUTPUT_DIR/<variant>/seed<k>`` (``SEED + k``); running ``compare``
again skips finished runs and resumes interrupted ones. The statistics are in
:mod:`realsynth.studies.compare_report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from realsynth.config import ConfigError, load_config, to_yaml
from realsynth.evaluation.records import EVAL_RECORDS, load_records
from realsynth.studies.compare_report import (
    comparison_report,
    format_report,
    plot_comparison,
)
from realsynth.training.reopen import evaluate_checkpoint
from realsynth.training.run_folder import RunFolder
from realsynth.training.train import train
from realsynth.utils.atomic import atomic_write_json

MD = "DATASETS.MULTI_DATASET"
BUILTIN_VARIANTS = ("real_only", "naive", "mix", "adaptive")


def builtin_overrides(cfg: DictConfig, name: str) -> list[str]:
    """The config overrides of a built-in variant."""
    if name == "real_only":
        return [f"{MD}.ENABLED=false"]
    if name == "naive":
        # Explicit per-source values and schedules would override the naive settings.
        unset = [
            override
            for i in range(len(cfg.DATASETS.SOURCES))
            for override in (
                f"DATASETS.SOURCES[{i}].RATIO=null",
                f"DATASETS.SOURCES[{i}].LOSS_WEIGHT=null",
                f"DATASETS.SOURCES[{i}].BACKGROUND_WEIGHT=null",
                f"DATASETS.SOURCES[{i}].RATIO_SCHEDULE.KIND=constant",
                f"DATASETS.SOURCES[{i}].LOSS_WEIGHT_SCHEDULE.KIND=constant",
            )
        ]
        return [
            f"{MD}.ENABLED=true",
            f"{MD}.RATIO_BY_SIZE=true",
            f"{MD}.REAL_LOSS_WEIGHT=1.0",
            f"{MD}.SYNTHETIC_LOSS_WEIGHT=1.0",
            f"{MD}.SYNTHETIC_BACKGROUND_WEIGHT=1.0",
            f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=constant",
            f"{MD}.SYNTHETIC_LOSS_WEIGHT_SCHEDULE.KIND=constant",
            f"{MD}.ADAPTIVE.ENABLED=false",
            *unset,
        ]
    if name == "mix":
        return [f"{MD}.ADAPTIVE.ENABLED=false"]
    if name == "adaptive":
        return [f"{MD}.ENABLED=true", f"{MD}.ADAPTIVE.ENABLED=true"]
    raise ConfigError(f"COMPARE.BUILTIN: unknown variant {name!r}; known: {BUILTIN_VARIANTS}")


def compare_variants(cfg: DictConfig) -> dict[str, list[str]]:
    """Every variant's name and overrides: the built-in ones, then ``COMPARE.VARIANTS``.

    Raises:
        ConfigError: a name used twice, or the reference variant missing.
    """
    variants = {name: builtin_overrides(cfg, name) for name in cfg.COMPARE.BUILTIN}
    for i, variant in enumerate(cfg.COMPARE.VARIANTS):
        if variant.NAME in variants:
            raise ConfigError(
                f"COMPARE.VARIANTS[{i}].NAME: {variant.NAME!r} is already a variant "
                f"({sorted(variants)}); choose another name"
            )
        variants[variant.NAME] = list(variant.OVERRIDES)
    if cfg.COMPARE.REFERENCE not in variants:
        raise ConfigError(
            f"COMPARE.REFERENCE={cfg.COMPARE.REFERENCE!r} is not one of the variants "
            f"{sorted(variants)}"
        )
    return variants


def run_config(cfg: DictConfig, name: str, overrides: Sequence[str], seed_index: int) -> DictConfig:
    """The run of variant ``name`` with seed ``SEED + seed_index``, in its own folder."""
    folder = Path(cfg.OUTPUT_DIR) / name / f"seed{seed_index}"
    try:
        return load_config(
            None,
            [*overrides, f"SEED={cfg.SEED + seed_index}", f"OUTPUT_DIR={folder}"],
            base_yaml=to_yaml(cfg),
        )
    except ConfigError as exc:
        raise ConfigError(f"variant {name!r}: {exc}") from None


def run_or_resume(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[str, dict[str, float]]:
    """Train ``cfg`` unless its folder already holds the finished run; resume a stopped one."""
    folder = RunFolder(cfg.OUTPUT_DIR, keep=cfg.SOLVER.KEEP_CHECKPOINTS)
    if folder.resume_candidates():
        return train(cfg, resume=True, callbacks=callbacks)
    # A folder with a config but no checkpoint never got a step done: start it again.
    return train(cfg, overwrite=folder.holds_run(), callbacks=callbacks)


def split_records(run_dir: Path, split: str) -> Path:
    """The per-image records of a finished run on ``split`` (test: evaluated once, then kept)."""
    if split == "val":
        return run_dir / EVAL_RECORDS
    output = run_dir / "eval_test.json"
    records = run_dir / "eval_test_records.npz"
    last = run_dir / "checkpoints" / "last.pt"
    if not records.exists() or records.stat().st_mtime < last.stat().st_mtime:
        evaluate_checkpoint(run_dir, output=output, split="test", quiet=True)
    return records


def compare(cfg: DictConfig) -> dict[str, Any]:
    """Train every variant x seed (or reuse them), then compare them; returns the report."""
    variants = compare_variants(cfg)
    seeds = range(cfg.COMPARE.SEEDS)
    runs: dict[str, list[Path]] = {}
    for name, overrides in variants.items():
        runs[name] = []
        for k in seeds:
            run_cfg = run_config(cfg, name, overrides, k)
            run_or_resume(run_cfg)
            runs[name].append(Path(run_cfg.OUTPUT_DIR))
    split = cfg.COMPARE.SPLIT
    template, records = None, {}
    for name, folders in runs.items():
        per_seed = [load_records(split_records(folder, split)) for folder in folders]
        template = per_seed[0][0]
        records[name] = [r for _, r in per_seed]
    report = comparison_report(
        records,
        template,
        reference=cfg.COMPARE.REFERENCE,
        metric=cfg.COMPARE.METRIC,
        replicates=cfg.COMPARE.BOOTSTRAP,
        seed=cfg.SEED,
    )
    report.update(split=split, seeds=[cfg.SEED + k for k in seeds])
    out = Path(cfg.OUTPUT_DIR)
    atomic_write_json(out / "compare.json", report)
    plot_comparison(report, out / "compare.png")
    print(format_report(report))
    return report
