"""The commands that train and study runs: train, eval, compare, sweep, gap, config show.

Heavy modules are imported inside each handler so that ``realsynth --help`` and ``config show``
answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from realsynth.config import load_config, to_yaml


def add_run_commands(commands: Any) -> None:
    """Add train, eval, compare, sweep, gap and config to ``commands`` (argparse sub-parsers)."""
    for add_command in (_add_train, _add_eval, _add_compare, _add_sweep, _add_gap, _add_config):
        add_command(commands)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", type=Path, default=None, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _add_train(commands: Any) -> None:
    train = commands.add_parser("train", help="train (default: the demo data) and evaluate")
    add_config_args(train)
    how = train.add_mutually_exclusive_group()
    how.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue the run in RUN_DIR exactly where its checkpoint stopped",
    )
    how.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run OUTPUT_DIR already holds (without it such a folder is refused)",
    )
    train.set_defaults(handler=_train)


def _add_eval(commands: Any) -> None:
    evaluate = commands.add_parser("eval", help="evaluate a run folder or checkpoint")
    evaluate.add_argument("checkpoint", type=Path, metavar="RUN_DIR|CHECKPOINT")
    evaluate.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="CONFIG",
        help="config whose validation sources to use (default: the run's own)",
    )
    evaluate.add_argument(
        "--output",
        type=Path,
        default=None,
        metavar="FILE",
        help="where to write the results (default: eval_<checkpoint>[_<data>].json in the run "
        "folder; the run's own eval.json is never replaced)",
    )
    evaluate.add_argument(
        "--split",
        choices=("val", "test"),
        default="val",
        help="the validation sets, or each source's test split (TEST_PATH; VG150's split 2)",
    )
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    evaluate.set_defaults(handler=_eval)


def _add_compare(commands: Any) -> None:
    compare = commands.add_parser(
        "compare", help="real only vs naive concatenation vs the configured mix, same budget"
    )
    add_config_args(compare)
    compare.set_defaults(handler=_compare)


def _add_sweep(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep", help="search the mix (SWEEP.SPACE) with Optuna, same budget for every trial"
    )
    add_config_args(sweep)
    sweep.add_argument(
        "--storage",
        default=None,
        help="Optuna storage: an RDB URL (sqlite:///..., postgresql://...) or a journal file "
        "shared by every machine of the sweep (default: OUTPUT_DIR/study.journal)",
    )
    sweep.add_argument("--study", default="realsynth-sweep", help="study name (shared)")
    sweep.add_argument(
        "--jobs", type=int, default=1, help="trials at once on this machine (cores are shared)"
    )
    sweep.set_defaults(handler=_sweep)


def _add_gap(commands: Any) -> None:
    gap = commands.add_parser(
        "gap",
        help="how far each synthetic source is from the real one (gap.md, gap.json, plots)",
        description="Label and box statistics, a domain classifier and the Fréchet distance on "
        "the trained backbone's features, and per-predicate recall of every validation source; "
        "written into the run folder.",
    )
    gap.add_argument("run", type=Path, help="a finished run folder")
    gap.add_argument(
        "--feature-images", type=int, default=500, help="images per source for the features"
    )
    gap.set_defaults(handler=_gap)


def _add_config(commands: Any) -> None:
    config = commands.add_parser("config", help="configuration tools")
    config_cmds = config.add_subparsers(dest="config_command", required=True)
    show = config_cmds.add_parser("show", help="print the resolved config")
    add_config_args(show)
    show.set_defaults(handler=_config_show)


def _config_show(args: argparse.Namespace) -> int:
    print(to_yaml(load_config(args.config_file, args.overrides)), end="")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from realsynth.training.reopen import evaluate_checkpoint

    evaluate_checkpoint(
        args.checkpoint,
        data_config=args.data,
        overrides=args.overrides,
        output=args.output,
        split=args.split,
    )
    return 0


def _gap(args: argparse.Namespace) -> int:
    from realsynth.diagnostics.gap_report import gap_report

    gap_report(args.run, feature_images=args.feature_images)
    print((args.run / "gap.md").read_text())
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from realsynth.studies.compare import CompareInterrupted
    from realsynth.studies.sweep import SweepInterrupted, sweep

    try:
        sweep(
            load_config(args.config_file, args.overrides),
            storage=args.storage,
            study_name=args.study,
            jobs=args.jobs,
        )
    except (SweepInterrupted, CompareInterrupted) as exc:
        # CompareInterrupted: Ctrl-C during the confirmation runs, which the same command
        # resumes too.
        print(f"realsynth: {exc}", file=sys.stderr)
        return 130
    return 0


def _compare(args: argparse.Namespace) -> int:
    import shlex

    from realsynth.studies.compare import CompareInterrupted, compare

    try:
        report = compare(load_config(args.config_file, args.overrides))
    except CompareInterrupted as exc:
        config = [] if args.config_file is None else ["--config-file", str(args.config_file)]
        again = shlex.join(["realsynth", "compare", *config, *args.overrides])
        print(f"realsynth: {exc}: {again}", file=sys.stderr)
        return exc.exit_status  # 130 Ctrl-C, 143 SIGTERM
    # Some runs failed: the report covers the others; the same command retries the failed ones.
    return 1 if report["failed"] else 0


def _train(args: argparse.Namespace) -> int:
    from realsynth.training.train import TrainingFailed, TrainingInterrupted, train
    from realsynth.utils.distributed import get_rank, shutdown_distributed

    if args.resume is not None:
        from realsynth.training.resume import check_resume_config

        saved = args.resume / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.yaml in that run folder")
        # The run's own config, then what this command line changes (e.g. a longer MAX_ITER);
        # a change to its data, model or optimizer is refused.
        overrides = [*args.overrides, f"OUTPUT_DIR={args.resume}"]
        cfg = load_config(args.config_file, overrides, base_yaml=saved.read_text())
        check_resume_config(args.resume, load_config(None, base_yaml=saved.read_text()), cfg)
    else:
        cfg = load_config(args.config_file, args.overrides)
    try:
        train(cfg, resume=args.resume is not None, overwrite=args.overwrite)
        if cfg.TEST.GAP_REPORT and get_rank() == 0:
            from realsynth.diagnostics.gap_report import gap_report

            gap_report(cfg.OUTPUT_DIR)
    except TrainingInterrupted as exc:
        print(f"realsynth: {exc}", file=sys.stderr)
        return exc.exit_status  # 130 Ctrl-C, 143 SIGTERM
    except TrainingFailed as exc:
        if os.environ.get("REALSYNTH_DEBUG"):
            raise
        print(f"realsynth: error: {exc}", file=sys.stderr)
        # Bad data or settings, a full disk: the user's to fix (2); anything else is a failure (1).
        return 2 if isinstance(exc.__cause__, ValueError | OSError) else 1
    finally:
        shutdown_distributed()
    return 0
