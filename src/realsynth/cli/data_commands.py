"""``realsynth data``: check, demo, filter and convert datasets.

Heavy modules are imported inside each handler so that ``realsynth --help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from realsynth.data.demo_settings import DEMO_DAMAGE_DEFAULTS, DEMO_PRESET_CHANGES, DEMO_SIZES


def add_data_commands(commands: Any) -> None:
    """Add ``data`` and its sub-commands to ``commands`` (argparse sub-parsers)."""
    data = commands.add_parser("data", help="dataset tools")
    data_cmds = data.add_subparsers(dest="data_command", required=True)
    _add_data_check(data_cmds)
    _add_data_demo(data_cmds)
    _add_data_filter(data_cmds)
    _add_data_convert(data_cmds)


def _add_data_check(data_cmds: Any) -> None:
    check = data_cmds.add_parser(
        "check",
        help="validate a dataset and summarize it",
        description="Apply the rules training applies to a dataset and list every problem. "
        "Exit status: 0 clean (warnings allowed), 1 problems found, 2 cannot run (no such path, "
        "a format it cannot tell, bad arguments).",
    )
    check.add_argument("path", help="a relcoco file, a VG150 folder, or a shard folder or URL")
    check.add_argument("--format", choices=("relcoco", "vg150", "shards"), default=None)
    check.add_argument("--image-root", type=Path, default=None)
    check.add_argument("--json", type=Path, default=None, metavar="REPORT")
    check.add_argument(
        "--no-image-content",
        action="store_true",
        help="only check that image files exist (fast on huge datasets); shards: annotations only",
    )
    check.add_argument(
        "--fraction",
        type=float,
        default=1.0,
        help="shards: check this share of the shards, drawn with --seed (default: all)",
    )
    check.add_argument("--seed", type=int, default=0, help="shards: the draw of --fraction")
    check.set_defaults(handler=_data_check)


def _add_data_convert(data_cmds: Any) -> None:
    convert = data_cmds.add_parser(
        "convert",
        help="write a relcoco file or a VG150 split as WebDataset tar shards",
        description="Write SRC (a relcoco .json file or a VG150 folder) into OUT as tar shards "
        "and OUT/index.json, which a source with FORMAT: shards and PATH: OUT (or a URL of it) "
        "reads. Deterministic; resumes after a kill (run it again); exit status 2 on bad input.",
    )
    convert.add_argument("src", type=Path)
    convert.add_argument("out", type=Path)
    convert.add_argument("--format", choices=("relcoco", "vg150"), default=None)
    convert.add_argument("--image-root", type=Path, default=None)
    convert.add_argument(
        "--split", choices=("train", "val", "test"), default="train", help="vg150: the split"
    )
    convert.add_argument("--samples-per-shard", type=int, default=1000)
    convert.add_argument("--workers", type=int, default=1, help="processes writing shards")
    convert.set_defaults(handler=_data_convert)


#: What each damage knob of the synthetic domain does, for --help (keys: DEMO_DAMAGE_DEFAULTS).
_KNOB_HELP = {
    "class_noise": "share of object classes replaced by a wrong one",
    "predicate_noise": "share of predicates replaced by a wrong one",
    "missing_objects": "share of objects drawn but not annotated",
    "missing_relations": "share of relations that hold but are not listed",
    "box_noise": "box corners moved by up to this share of the object's side",
    "class_shift": "weight of one class in the class frequencies",
    "predicate_shift": "weight of one color (more 'same color as')",
    "appearance_gap": "1: flat rendering, 0: rendered like the real images",
    "hue_shift": "degrees the image hues are turned, [0, 360)",
}


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
    demo.add_argument(
        "--preset",
        choices=tuple(DEMO_PRESET_CHANGES),
        default="mild",
        help="the synthetic domain's damage (default mild: 10%% wrong classes and predicates)",
    )
    demo.add_argument(
        "--label-noise", type=float, default=None, help="--class-noise and --predicate-noise"
    )
    for name, meaning in _KNOB_HELP.items():
        demo.add_argument(
            f"--{name.replace('_', '-')}",
            type=float,
            default=None,
            help=f"{meaning} (default: the preset's)",
        )
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
    from realsynth.data.demo_damage import demo_damage
    from realsynth.data.paths import shown

    damage = demo_damage(  # a knob out of range: one line naming it (ValueError, exit 2)
        args.preset,
        label_noise=args.label_noise,
        overrides={k: getattr(args, k) for k in DEMO_DAMAGE_DEFAULTS},
    )
    paths = generate_demo(
        args.out,
        seed=args.seed,
        force=args.force,
        damage=damage,
        **{k: getattr(args, k) for k in DEMO_SIZES},  # the real test split's included
    )
    for name, path in paths.items():
        print(f"{name}: {shown(path)}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from realsynth.data.check import check_dataset
    from realsynth.utils.atomic import atomic_write_json

    if args.format == "shards" or _is_shards(args.path):
        from realsynth.data.shards.check import check_shards

        report = check_shards(
            args.path, fraction=args.fraction, seed=args.seed, images=not args.no_image_content
        )
    else:
        report = check_dataset(
            Path(args.path),
            format=args.format,
            image_root=args.image_root,
            check_image_content=not args.no_image_content,
        )
    print(report.format_text())
    if args.json is not None:
        atomic_write_json(args.json, report.to_dict())
    return report.exit_code


def _is_shards(path: str) -> bool:
    """A URL, a shard folder (with index.json) or a shard index file."""
    local = Path(path)
    return (
        "://" in path
        or path.startswith("pipe:")
        or (local / "index.json").is_file()
        or (local.name == "index.json" and local.is_file())
    )


def _data_convert(args: argparse.Namespace) -> int:
    from realsynth.data.check import detect_format
    from realsynth.data.formats.relcoco import RelCocoDataset
    from realsynth.data.formats.vg150 import vg150_from_folder
    from realsynth.data.paths import shown
    from realsynth.data.shards.convert import convert_to_shards

    fmt = args.format or detect_format(args.src)
    if fmt == "relcoco":
        root = args.image_root or args.src.parent / "images"
        dataset = RelCocoDataset(args.src, root)
    else:
        dataset = vg150_from_folder(args.src, split=args.split, image_root=args.image_root)

    def progress(done: int, total: int) -> None:
        print(f"\rshards: {done}/{total}", end="" if done < total else "\n", flush=True)

    origin = {"path": str(args.src), "format": fmt}
    if fmt == "vg150":
        origin["split"] = args.split
    try:
        report = convert_to_shards(
            dataset,
            args.out,
            samples_per_shard=args.samples_per_shard,
            workers=args.workers,
            converted_from=origin,
            progress=progress,
        )
    except KeyboardInterrupt:
        done = len(list(args.out.glob("shard-*.tar")))
        print(
            f"\nrealsynth: interrupted; {done} complete shards are in {shown(args.out)} and no "
            "index.json yet: run the same command again to finish",
            file=sys.stderr,
        )
        return 130
    kept = report.shards - report.written
    print(
        f"{report.samples} images in {report.shards} shards ({report.written} written now"
        + (f", {kept} already there" if kept else "")
        + f"); index: {shown(report.index)}"
    )
    return 0
