"""Which tool helps on which synthetic data: every tool against the same budget, 3 seeds, on the
demo's three presets (``mild``, ``noisy``, ``shifted``).

Per preset, all variants train with the same budget (steps x batch) and one-to-one matching:
real only, naive concatenation, the default fixed mix (0.7 real per batch, synthetic weight
0.5), the fixed mix that ``realsynth sweep`` picks at this budget, the fixed mix on synthetic
labels filtered by ``realsynth data filter`` (ignore mode, the real-only seed-0 model), the fixed
mix with synthetic background weight 0, ``pretrain_finetune`` (synthetic only for the first 30%
of the steps), and adaptive mixing (each score rule given by ``--adaptive``). Reported on the
real test split, which no choice saw: R@50 and mR@50, mean and 95% interval over seeds, and each
variant's paired difference to the fixed mix (bootstrap over seed and image).

Run: ``python benchmarks/tool_study.py --preset noisy`` (one preset; resumable: finished runs
are reused), then ``python benchmarks/tool_study.py --report`` for the tables
(``benchmarks/results/tool_study.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import torch
from common import machine
from omegaconf import OmegaConf

from realsynth.config import load_config
from realsynth.data.demo import demo_is_complete, demo_predicate_flip_map, generate_demo
from realsynth.data.demo_settings import DEMO_PRESET_CHANGES, DEMO_SIZES
from realsynth.diagnostics.synthetic_filter import filter_with_run
from realsynth.studies.compare import compare
from realsynth.studies.compare_report import format_report
from realsynth.studies.sweep import sweep
from realsynth.utils.atomic import atomic_write_json, atomic_write_text

MD = "DATASETS.MULTI_DATASET"
#: The fixed mix of the study, the reference of every difference.
REFERENCE = "mix"
#: Demo sizes: the defaults, with a smaller synthetic validation set (no choice reads it).
SIZES = {**DEMO_SIZES, "synthetic_val": 100}


def study_config(folder: Path, demo: Path, steps: int, study: list[dict] | None = None) -> Path:
    """The preset's base config (the demo's two sources by path, the study's budget), with the
    study's variants when given."""
    real, synthetic = demo / "real", demo / "synthetic"
    config = {
        "SEED": 0,
        "DATASETS": {
            "MULTI_DATASET": {"ENABLED": True},
            "SOURCES": [
                {
                    "NAME": "real",
                    "TYPE": "real",
                    "PATH": str(real / "train/annotations.json"),
                    "VAL_PATH": str(real / "val/annotations.json"),
                    "TEST_PATH": str(real / "test/annotations.json"),
                    "PREDICATE_FLIP_MAP": demo_predicate_flip_map(),
                },
                {
                    "NAME": "synthetic",
                    "TYPE": "synthetic",
                    "PATH": str(synthetic / "train/annotations.json"),
                    "VAL_PATH": str(synthetic / "val/annotations.json"),
                    "PREDICATE_FLIP_MAP": demo_predicate_flip_map(),
                },
            ],
        },
        "MODEL": {"PRESET": "tiny", "DEVICE": "cpu"},
        "SOLVER": {"IMS_PER_BATCH": 16, "MAX_ITER": steps, "CHECKPOINT_PERIOD": steps},
        "TEST": {"EVAL_PERIOD": steps},
        "COMPARE": {"SEEDS": 3, "REFERENCE": REFERENCE, "VARIANTS": study or []},
    }
    path = folder / ("study.yaml" if study is None else "study_variants.yaml")
    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(config)))
    return path


def quiet(function, *args, **kwargs):
    """Call ``function`` with its printing kept in a log (progress bars and tables)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return function(*args, **kwargs)


def sweep_pick(config: Path, folder: Path, steps: int, trials: int) -> list[str]:
    """The fixed mix ``realsynth sweep`` picks at the study's budget, as overrides."""
    report_file = folder / "sweep" / "sweep.json"
    if not report_file.exists():
        cfg = load_config(
            config,
            [
                f"OUTPUT_DIR={folder / 'sweep'}",
                f"TEST.EVAL_PERIOD={max(1, steps // 4)}",
                f"SWEEP.TRIALS={trials}",
                "SWEEP.CONFIRM_SEEDS=0",
            ],
        )
        quiet(sweep, cfg)
    params = json.loads(report_file.read_text())["best"]["params"]
    print(f"sweep pick: {params}", flush=True)
    return [f"{key}={value}" for key, value in params.items()]


def filtered_labels(folder: Path, demo: Path) -> Path:
    """The synthetic training labels with the doubtful ones ignored (real-only seed 0 model)."""
    out = folder / "filtered" / "annotations.json"
    if not out.exists():
        source = demo / "synthetic" / "train" / "annotations.json"
        report = quiet(
            filter_with_run, folder / "compare" / "real_only" / "seed0", source, out, mode="ignore"
        )
        print(f"filter: {len(report['doubtful_annotation_ids'])} boxes ignored", flush=True)
    return out


def variants(
    steps: int, pick: list[str], filtered: Path, demo: Path, adaptive: list[str]
) -> list[dict]:
    """The study's variants beside the built-in ones, as COMPARE.VARIANTS entries."""
    images = demo / "synthetic" / "train" / "images"
    out = [
        {"NAME": "sweep_pick", "OVERRIDES": pick},
        {
            "NAME": "mix_filtered",
            "OVERRIDES": [
                f"DATASETS.SOURCES.1.PATH={filtered}",
                f"DATASETS.SOURCES.1.IMAGE_ROOT={images}",
            ],
        },
        {"NAME": "mix_no_background", "OVERRIDES": [f"{MD}.SYNTHETIC_BACKGROUND_WEIGHT=0"]},
        {
            "NAME": "pretrain_finetune",
            "OVERRIDES": [
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.KIND=pretrain_finetune",
                f"{MD}.REAL_SAMPLING_RATIO_SCHEDULE.PRETRAIN_STEPS={round(0.3 * steps)}",
            ],
        },
    ]
    for spec in adaptive:  # NAME:KEY=VALUE,KEY=VALUE (the built-in adaptive runs as well)
        name, _, settings = spec.partition(":")
        extra = [s for s in settings.split(",") if s]
        out.append({"NAME": name, "OVERRIDES": [f"{MD}.ADAPTIVE.ENABLED=true", *extra]})
    return out


def run_preset(args: argparse.Namespace) -> None:
    folder = Path(args.out) / args.preset
    demo = folder / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    if not demo_is_complete(demo):
        print(f"generating the {args.preset} demo ...", flush=True)
        generate_demo(demo, damage=args.preset, **SIZES)
    config = study_config(folder, demo, args.steps)
    compare_dir = f"OUTPUT_DIR={folder / 'compare'}"
    print("real only (3 seeds) ...", flush=True)
    quiet(
        compare,
        load_config(
            config, [compare_dir, "COMPARE.BUILTIN=[real_only]", "COMPARE.REFERENCE=real_only"]
        ),
    )
    pick = sweep_pick(config, folder, args.steps, args.trials)
    filtered = filtered_labels(folder, demo)
    study = variants(args.steps, pick, filtered, demo, args.adaptive)
    config = study_config(folder, demo, args.steps, study)
    base = [compare_dir, "COMPARE.BUILTIN=[real_only,naive,mix,adaptive]"]
    print(f"{len(study) + 4} variants x 3 seeds ...", flush=True)
    quiet(compare, load_config(config, base))
    results = {}
    for metric in ("R@50", "mR@50"):
        cfg = load_config(config, [*base, "COMPARE.SPLIT=test", f"COMPARE.METRIC={metric}"])
        results[metric] = quiet(compare, cfg)
        print(format_report(results[metric]), flush=True)
    atomic_write_json(folder / "study.json", {"steps": args.steps, "variants": study, **results})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=tuple(DEMO_PRESET_CHANGES))
    parser.add_argument("--report", action="store_true", help="write the tables of all presets")
    parser.add_argument("--out", default="runs/tool_study")
    parser.add_argument("--steps", type=int, default=300, help="steps of 16 per run")
    parser.add_argument("--trials", type=int, default=8, help="sweep trials")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--adaptive",
        action="append",
        default=[],
        help="another adaptive-mixing variant beside the built-in one: NAME:KEY=VALUE,...",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.report:
        from tool_study_report import write_report

        write_report(Path(args.out), machine)
        return 0
    if args.preset is None:
        parser.error("--preset or --report")
    run_preset(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
