"""The examples in docs/schedules.md do what the page says (and match the shipped config)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

from realsynth.config import load_config
from realsynth.config.source_mix import resolve_mix
from realsynth.studies.compare import compare_variants
from realsynth.studies.sweep_space import parse_space

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "schedules.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


def test_the_yaml_example_anneals_the_share_and_steps_the_weight(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(_blocks("yaml")[0])
    cfg = load_config(path)
    real, synthetic = resolve_mix(
        [OmegaConf.create({"NAME": n, "TYPE": n, "RATIO": None, "LOSS_WEIGHT": None,
                           "RATIO_SCHEDULE": {"KIND": "constant"},
                           "LOSS_WEIGHT_SCHEDULE": {"KIND": "constant"}})
         for n in ("real", "synthetic")],
        cfg.DATASETS.MULTI_DATASET,
        [100, 1000],
        max_iter=cfg.SOLVER.MAX_ITER,
    )  # fmt: skip
    steps = np.array([0, 1000, 2000])
    assert real.ratio.values(steps).tolist() == pytest.approx([0.4, 0.7, 1.0])
    assert synthetic.ratio.values(steps).tolist() == pytest.approx([0.6, 0.3, 0.0])
    assert synthetic.loss_weight.values(np.array([999, 1000])).tolist() == [0.5, 0.25]


def test_the_compare_example_is_the_shipped_config() -> None:
    shipped = load_config(ROOT / "configs" / "demo_schedules.yaml")
    documented = yaml.safe_load(_blocks("yaml")[1])["COMPARE"]
    assert OmegaConf.to_container(shipped.COMPARE.VARIANTS) == documented["VARIANTS"]
    variants = compare_variants(shipped)
    assert list(variants) == ["mix", "pretrain_finetune", "anneal"]
    for overrides in variants.values():  # every variant is a valid config
        load_config(ROOT / "configs" / "demo_schedules.yaml", overrides)


def test_the_sweep_example_parses(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(_blocks("yaml")[2])
    key = "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO_SCHEDULE"
    cfg = load_config(path, [f"{key}.KIND=pretrain_finetune", "SOLVER.MAX_ITER=2000"])
    (parameter,) = parse_space(cfg)
    assert (parameter.key, parameter.type, parameter.low, parameter.high) == (
        f"{key}.PRETRAIN_STEPS",
        "int",
        200,
        1800,
    )


def test_the_python_example_prints_what_its_comments_say() -> None:
    (code,) = _blocks("python")
    printed: list = []
    exec(compile(code, str(DOC), "exec"), {"print": printed.append})
    expected = [eval(c) for c in re.findall(r"print\(.*# (\d+|\[[\d, ]+\])", code)]
    assert printed == expected == [19, [6, 7, 6, 7], 16]
