"""``realsynth compare``: does the synthetic data help? Variants x seeds, intervals.

Built-in variants (``COMPARE.BUILTIN``):

1. ``real_only``: the real sources alone (``MULTI_DATASET.ENABLED: false``), weights 1.0;
2. ``naive``: every source, each batch's share proportional to the source's size, weights 1.0
   (what plain concatenation + shuffling gives);
3. ``mix``: the configured mix (by default 0.7 real per batch, synthetic weight 0.5), held
   fixed (adaptive mixing off);
4. ``adaptive`` (not run by default): the configured mix as the starting point of adaptive
   mixing (``MULTI_DATASET.ADAPTIVE``, :mod:`realsynth.mixing.adaptive`);

plus the user's ``COMPARE.VARIANTS`` (a name and config overrides each). Every variant has the
base config's budget (steps x global batch) unless its overrides change it; the report says
which variants saw how many images. Every variant x seed is an ordinary run folder
``OUTPUT_DIR/<variant>/seed<k>`` (``SEED + k``). Every run's config is built and checked before
the first one trains. A run that fails is recorded and the others go on; running ``compare``
again reuses finished runs, retries failed ones and resumes interrupted ones. The statistics
are in :mod:`realsynth.studies.compare_report`.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from realsynth.config import ConfigError, load_config, to_yaml
from realsynth.evaluation.records import EVAL_RECORDS, load_records
from realsynth.studies.compare_report import (
    comparison_report,
    format_report,
    plot_comparison,
    run_budgets,
)
from realsynth.training.reopen import evaluate_checkpoint
from realsynth.training.run_folder import RunFolder
from realsynth.training.train import TrainingFailed, TrainingInterrupted, train
from realsynth.utils.atomic import atomic_write_json, atomic_write_text

MD = "DATASETS.MULTI_DATASET"
BUILTIN_VARIANTS = ("real_only", "naive", "mix", "adaptive")
# A variant's name is its run folder's name under OUTPUT_DIR: nothing that could leave it.
PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# A run that failed holds this file (its one-line error) until it finishes: the same command
# run again names the runs it retries.
FAILED_MARK = "compare_failed.txt"


class CompareInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped the comparison; the message says what was kept and that the
    same command goes on (the caller adds the command line).

    Attributes:
        exit_status: what a shell reports for the signal: 130 (Ctrl-C), 143 (SIGTERM).
    """

    def __init__(self, message: str, exit_status: int = 130) -> None:
        super().__init__(message)
        self.exit_status = exit_status


@dataclass(frozen=True)
class PlannedRun:
    """One variant x seed: its config (``OUTPUT_DIR`` is the run folder)."""

    variant: str
    seed_index: int
    seed: int
    cfg: DictConfig

    @property
    def label(self) -> str:
        return f"{self.variant}/seed{self.seed_index}"

    @property
    def folder(self) -> Path:
        return Path(self.cfg.OUTPUT_DIR)

    def failure(self, error: str) -> dict[str, Any]:
        """The report's entry for this run's failure."""
        return {"variant": self.variant, "seed": self.seed, "run": self.label, "error": error}


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
        ConfigError: a name that is not a plain name or is used twice, or the reference
            variant missing.
    """
    variants = {name: builtin_overrides(cfg, name) for name in cfg.COMPARE.BUILTIN}
    for i, variant in enumerate(cfg.COMPARE.VARIANTS):
        key = f"COMPARE.VARIANTS[{i}].NAME"
        if not PLAIN_NAME.fullmatch(variant.NAME):
            raise ConfigError(
                f"{key}: {variant.NAME!r} is not a plain name (letters, digits, _ and -, not "
                "starting with a digit or -); it names the variant's folder in OUTPUT_DIR",
                key,
            )
        if variant.NAME in variants:
            raise ConfigError(
                f"{key}: {variant.NAME!r} is already a variant ({sorted(variants)}); choose "
                "another name",
                key,
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
        message = str(exc).removeprefix("command line: ")
        raise ConfigError(f"variant {name!r}: {message}", exc.key) from None


def plan_runs(cfg: DictConfig, variants: dict[str, list[str]]) -> list[PlannedRun]:
    """Every variant x seed with its config, built and checked before anything trains.

    Raises:
        ConfigError: a variant's overrides give no valid config, or name files that do not
            exist (the message names the variant).
    """
    runs = []
    for name, overrides in variants.items():
        for k in range(cfg.COMPARE.SEEDS):
            run = PlannedRun(name, k, cfg.SEED + k, run_config(cfg, name, overrides, k))
            if k == 0:  # the seed changes nothing the checks look at
                try:
                    check_files(run.cfg, cfg.COMPARE.SPLIT.value)
                except ConfigError as exc:
                    raise ConfigError(f"variant {name!r}: {exc}", exc.key) from None
            runs.append(run)
    return runs


def check_files(cfg: DictConfig, split: str) -> None:
    """The files a run reads exist, and ``split`` exists for some source (the demo data is
    generated on first use: only its test split is checked, by its size).

    Raises:
        ConfigError: naming the key of the missing file or split.
    """
    sources = list(cfg.DATASETS.SOURCES)
    for i, src in enumerate(sources):
        keys = ["PATH", "IMAGE_ROOT"]
        if src.FORMAT == "relcoco":
            keys += ["VAL_PATH", "VAL_IMAGE_ROOT"]
            keys += ["TEST_PATH", "TEST_IMAGE_ROOT"] if split == "test" else []
        for key in keys:
            if src[key] and not Path(src[key]).exists():
                full = f"DATASETS.SOURCES[{i}].{key}"
                raise ConfigError(f"{full}: {src[key]!r} does not exist", full)
    zero_shot = cfg.TEST.ZERO_SHOT_TRIPLETS
    if zero_shot and not Path(zero_shot).exists():
        raise ConfigError(f"TEST.ZERO_SHOT_TRIPLETS: {zero_shot!r} does not exist")
    if split == "test":
        has_test = (
            any(s.TEST_PATH or (s.FORMAT == "vg150" and s.VAL_SPLIT == "val") for s in sources)
            if sources
            else cfg.DATASETS.DEMO.REAL_TEST > 0
        )
        if not has_test:
            raise ConfigError(
                "COMPARE.SPLIT=test: no source has a test split (relcoco TEST_PATH, or vg150 "
                "with VAL_SPLIT val)",
                "COMPARE.SPLIT",
            )


def run_or_resume(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[str, dict[str, float]]:
    """Train ``cfg`` unless its folder already holds the finished run; resume a stopped one."""
    folder = RunFolder(cfg.OUTPUT_DIR, keep=cfg.SOLVER.KEEP_CHECKPOINTS)
    if folder.resume_candidates():
        return train(cfg, resume=True, callbacks=callbacks)
    # A folder with a config but no checkpoint never got a step done: start it again.
    return train(cfg, overwrite=folder.holds_run(), callbacks=callbacks)


def announce_retries(runs: Sequence[PlannedRun]) -> list[PlannedRun]:
    """Print one line naming the runs that failed last time (they are tried again)."""
    again = [run for run in runs if (run.folder / FAILED_MARK).exists()]
    if again:
        names = ", ".join(run.label for run in again)
        print(f"realsynth compare: retrying {len(again)} run(s) that failed before: {names}")
    return again


def error_line(exc: Exception) -> str:
    """A run's error in one line, without the advice to resume it by hand (``compare`` does)."""
    if isinstance(exc, TrainingFailed):
        text = str(exc).split("; continue with `")[0].split("; run the same command again")[0]
    else:
        text = f"{type(exc).__name__}: {exc}"
    lines = text.strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def train_runs(runs: Sequence[PlannedRun], callbacks: Sequence[Any] = ()) -> dict[str, str]:
    """Train (or reuse, or resume) every run in turn; returns the one-line error of each run
    that failed, by label. ``REALSYNTH_DEBUG`` set: a failure stops with its traceback.

    Raises:
        CompareInterrupted: Ctrl-C (the stopped run keeps its checkpoint).
    """
    errors: dict[str, str] = {}
    for done, run in enumerate(runs):
        try:
            run_or_resume(run.cfg, callbacks)
        except TrainingInterrupted as exc:
            status = getattr(exc, "exit_status", 130)
            raise CompareInterrupted(_stopped(run, exc.saved_step, done, errors), status) from None
        except KeyboardInterrupt:
            raise CompareInterrupted(_stopped(run, _saved_step(run), done, errors)) from None
        except Exception as exc:
            if os.environ.get("REALSYNTH_DEBUG"):
                raise
            errors[run.label] = error_line(exc)
            atomic_write_text(run.folder / FAILED_MARK, errors[run.label] + "\n")
            print(
                f"realsynth compare: {run.label} failed: {errors[run.label]}; going on with "
                "the other runs",
                file=sys.stderr,
            )
        else:
            (run.folder / FAILED_MARK).unlink(missing_ok=True)
    return errors


def _saved_step(run: PlannedRun) -> int | None:
    saved = RunFolder(run.folder).checkpoint_files.step_files()
    return saved[0][0] if saved else None  # newest first


def _stopped(run: PlannedRun, saved: int | None, done: int, errors: dict[str, str]) -> str:
    """What Ctrl-C left: the runs before this one, and where this one goes on."""
    kept = f"{done - len(errors)} finished run(s) kept"
    if errors:
        kept += f" ({len(errors)} failed: {', '.join(errors)})"
    where = (
        f"stopped at its checkpoint of step {saved} and resumes from there"
        if saved is not None
        else "stopped before its first step and starts over"
    )
    return f"interrupted: {kept}; {run.label} {where} when you run the same command again"


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


def compare(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train every variant x seed (or reuse them), then compare them; returns the report.

    A run that fails is recorded in the report (``failed``) and the others go on.

    Args:
        cfg: the base config with the ``COMPARE`` settings.
        callbacks: training callbacks for every run.

    Raises:
        ConfigError: a variant's config is invalid (before anything trains).
        CompareInterrupted: Ctrl-C; finished runs are kept, the stopped one resumes when the
            same comparison runs again.
    """
    runs = plan_runs(cfg, compare_variants(cfg))
    announce_retries(runs)
    errors = train_runs(runs, callbacks)
    try:
        return _report(cfg, runs, errors)
    except KeyboardInterrupt:
        raise CompareInterrupted(
            "interrupted while writing the report: every run is kept, and the report is "
            "written when you run the same command again"
        ) from None


def _report(cfg: DictConfig, runs: list[PlannedRun], errors: dict[str, str]) -> dict[str, Any]:
    """Score the variants whose every seed finished, write compare.json and compare.png."""
    split = cfg.COMPARE.SPLIT.value
    failed = {run.variant for run in runs if run.label in errors}
    template, records = None, {}
    for run in runs:
        if run.variant in failed:
            continue
        template, per_image = load_records(split_records(run.folder, split))
        records.setdefault(run.variant, []).append(per_image)
    report = comparison_report(
        records,
        template,
        reference=cfg.COMPARE.REFERENCE,
        metric=cfg.COMPARE.METRIC,
        replicates=cfg.COMPARE.BOOTSTRAP,
        seed=cfg.SEED,
    )
    report.update(
        split=split,
        seeds=[cfg.SEED + k for k in range(cfg.COMPARE.SEEDS)],
        failed=[run.failure(errors[run.label]) for run in runs if run.label in errors],
        **run_budgets({run.variant: run.cfg for run in runs if run.seed_index == 0}),
    )
    out = Path(cfg.OUTPUT_DIR)
    atomic_write_json(out / "compare.json", report)
    plot_comparison(report, out / "compare.png")
    print(format_report(report))
    return report
