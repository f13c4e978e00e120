"""The ``realsynth`` command: train, eval, compare, config show, data check, data demo.

Heavy modules are imported inside each command so that ``realsynth --help`` and ``config show``
answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from realsynth.config import ConfigError, load_config, to_yaml
from realsynth.data.demo_settings import DEMO_LABEL_NOISE, DEMO_SIZES


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", type=Path, default=None, help="YAML config file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realsynth",
        description="Train relation detectors on an exact real/synthetic mix with weighted losses.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for add_command in (_add_train, _add_eval, _add_compare, _add_sweep, _add_gap):
        add_command(commands)
    _add_config(commands)
    _add_data(commands)
    return parser


def _add_train(commands: Any) -> None:
    train = commands.add_parser("train", help="train (default: the demo data) and evaluate")
    _add_config_args(train)
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
    _add_config_args(compare)
    compare.set_defaults(handler=_compare)


def _add_sweep(commands: Any) -> None:
    sweep = commands.add_parser(
        "sweep", help="search the mix (SWEEP.SPACE) with Optuna, same budget for every trial"
    )
    _add_config_args(sweep)
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
    _add_config_args(show)
    show.set_defaults(handler=_config_show)


def _add_data(commands: Any) -> None:
    data = commands.add_parser("data", help="dataset tools")
    data_cmds = data.add_subparsers(dest="data_command", required=True)
    _add_data_check(data_cmds)
    _add_data_demo(data_cmds)
    _add_data_filter(data_cmds)


def _add_data_check(data_cmds: Any) -> None:
    check = data_cmds.add_parser(
        "check",
        help="validate a dataset and summarize it",
        description="Apply the rules training applies to a dataset and list every problem. "
        "Exit status: 0 clean (warnings allowed), 1 problems found, 2 cannot run (no such path, "
        "a format it cannot tell, bad arguments).",
    )
    check.add_argument("path", type=Path)
    check.add_argument("--format", choices=("relcoco", "vg150"), default=None)
    check.add_argument("--image-root", type=Path, default=None)
    check.add_argument("--json", type=Path, default=None, metavar="REPORT")
    check.add_argument(
        "--no-image-content",
        action="store_true",
        help="only check that image files exist (fast on huge datasets)",
    )
    check.set_defaults(handler=_data_check)


def _add_data_demo(data_cmds: Any) -> None:
    demo = data_cmds.add_parser("demo", help="write the procedural demo dataset")
    demo.add_argument("out", type=Path)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty OUT that an earlier `data demo` did not make",
    )
    for name, default in DEMO_SIZES.items():
        demo.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=default,
            help=f"images (default {default}{'; 0: no test split' if name == 'real_test' else ''})",
        )
    demo.add_argument("--label-noise", type=float, default=DEMO_LABEL_NOISE)
    demo.set_defaults(handler=_data_demo)


def _add_data_filter(data_cmds: Any) -> None:
    flt = data_cmds.add_parser(
        "filter",
        help="mark, reweight or drop synthetic annotations a real-data model does not confirm",
        description="Score every box and relationship of a relcoco file with the model of a "
        "finished run; write a new file where doubtful instances get ignore, a lower "
        "loss_weight, or are dropped (the input is never modified), and a report beside it.",
    )
    flt.add_argument("--run", type=Path, required=True, help="run folder or checkpoint")
    flt.add_argument("--source", type=Path, required=True, help="relcoco annotation file")
    flt.add_argument("--out", type=Path, required=True, help="the filtered annotation file")
    flt.add_argument("--image-root", type=Path, default=None, help="default: images/ beside")
    flt.add_argument("--mode", choices=("ignore", "reweight", "drop"), default="ignore")
    flt.add_argument("--iou", type=float, default=0.3, help="least IoU of a confirming box")
    flt.add_argument("--score", type=float, default=0.1, help="doubtful below this score")
    flt.add_argument("--weight", type=float, default=0.5, help="reweight: loss_weight factor")
    flt.set_defaults(handler=_data_filter)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``realsynth`` console script; returns the exit status.

    Exit status: 0 done; 1 an error during training (the checkpoint of the last complete step
    is kept) or problems found by ``data check``; 2 bad input (config, data, arguments, a
    checkpoint that does not fit), or an error the user must fix first (a full disk); 130
    Ctrl-C; 141 the output pipe was closed (``realsynth eval RUN | head -1``); 143 SIGTERM.
    """
    args = _parser().parse_args(argv)
    # A file name that is not UTF-8 prints as \xNN instead of ending the command in a traceback.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return args.handler(args)  # the command's function (set_defaults in its sub-parser)
    except BrokenPipeError:
        return _closed_pipe()
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        if os.environ.get("REALSYNTH_DEBUG"):
            raise
        print(f"realsynth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("realsynth: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130


def _closed_pipe() -> int:
    """The reader of our output went away: stop quietly, as ``yes | head`` does."""
    # Python would report the failed flush of the dead pipe again at exit: point it elsewhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


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


def _data_filter(args: argparse.Namespace) -> int:
    from realsynth.data.paths import printable, shown
    from realsynth.diagnostics.synthetic_filter import filter_with_run, format_filter_report

    report = filter_with_run(
        args.run,
        args.source,
        args.out,
        image_root=args.image_root,
        mode=args.mode,
        iou=args.iou,
        score=args.score,
        weight=args.weight,
    )
    print(printable(format_filter_report(report)))
    print(
        f"Wrote {shown(args.out)} and {shown(args.out.with_name(args.out.stem + '.report.json'))}"
    )
    root = Path(report["image_root"])
    if root.resolve() != (args.out.parent / "images").resolve():
        # A relcoco file's images default to images/ beside it; IMAGE_ROOT then serves every
        # split unless VAL_IMAGE_ROOT / TEST_IMAGE_ROOT says otherwise.
        print(
            f"Its images are in {shown(root)}: train with the source's PATH={shown(args.out)} and "
            f"IMAGE_ROOT={shown(root)} (and VAL_IMAGE_ROOT for a VAL_PATH whose images are not "
            "there)"
        )
    return 0


def _data_demo(args: argparse.Namespace) -> int:
    from realsynth.data.demo import generate_demo
    from realsynth.data.paths import shown

    settings = (*DEMO_SIZES, "label_noise")  # every size, the real test split's included
    paths = generate_demo(
        args.out, seed=args.seed, force=args.force, **{k: getattr(args, k) for k in settings}
    )
    for name, path in paths.items():
        print(f"{name}: {shown(path)}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from realsynth.data.check import check_dataset
    from realsynth.utils.atomic import atomic_write_json

    report = check_dataset(
        args.path,
        format=args.format,
        image_root=args.image_root,
        check_image_content=not args.no_image_content,
    )
    print(report.format_text())
    if args.json is not None:
        atomic_write_json(args.json, report.to_dict())
    return report.exit_code
