"""Config: schema defaults, YAML + overrides, every user-facing error, source mix resolution."""

from pathlib import Path

import pytest

from realsynth.config import ConfigError, load_config, to_yaml
from realsynth.config.source_mix import resolve_mix


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_notes_mix():
    cfg = load_config()
    md = cfg.DATASETS.MULTI_DATASET
    assert (md.ENABLED, md.REAL_SAMPLING_RATIO, md.REAL_LOSS_WEIGHT, md.SYNTHETIC_LOSS_WEIGHT) == (
        True,
        0.7,
        1.0,
        0.5,
    )


def test_note_yaml_works_unchanged_and_overrides_win(tmp_path):
    path = write(
        tmp_path,
        "DATASETS:\n  MULTI_DATASET:\n    ENABLED: true\n    REAL_SAMPLING_RATIO: 0.6\n"
        "    REAL_LOSS_WEIGHT: 1.0\n    SYNTHETIC_LOSS_WEIGHT: 0.25\nSOLVER:\n  MAX_ITER: 50\n",
    )
    cfg = load_config(path, ["SOLVER.MAX_ITER=20", "OUTPUT_DIR=runs/try"])
    assert cfg.DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO == 0.6
    assert cfg.DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT == 0.25
    assert cfg.SOLVER.MAX_ITER == 20
    assert cfg.OUTPUT_DIR == "runs/try"
    assert "MAX_ITER: 20" in to_yaml(cfg)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            ["SOLVER.BASE_LRR=1"],
            "command line: unknown key SOLVER.BASE_LRR (did you mean SOLVER.BASE_LR?)",
        ),
        (["SOLVER.MAX_ITER=abc"], "command line: key SOLVER.MAX_ITER"),
        (
            ["DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO=1.5"],
            "REAL_SAMPLING_RATIO must be in [0, 1]",
        ),
        (
            ["DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT=-1"],
            "SYNTHETIC_LOSS_WEIGHT must be a finite",
        ),
        (["DATASETS.MULTI_DATASET.REAL_LOSS_WEIGHT=.nan"], "REAL_LOSS_WEIGHT must be a finite"),
        (["MODEL.PRESET=huge"], "MODEL.PRESET must be one of"),
        (["SOLVER.IMS_PER_BATCH=0"], "SOLVER.IMS_PER_BATCH must be > 0"),
        (["MAX_ITER=3"], "did you mean SOLVER.MAX_ITER?"),
        (["SOLVER.MAX_ITER"], "is not KEY=VALUE"),
        (["MODEL.DEVICE=gpu"], "MODEL.DEVICE must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["TEST.TOP_K=50"], "TEST.TOP_K must be >= 100"),
        (["SEED=-1"], "SEED must be >= 0"),
        (["TEST.IMS_PER_BATCH=0"], "TEST.IMS_PER_BATCH must be > 0"),
        (["MODEL.NUM_QUERIES=0"], "MODEL.NUM_QUERIES must be > 0"),
    ],
)
def test_override_errors_name_the_key_and_origin(overrides, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert expected in str(info.value)
    assert str(info.value).startswith("command line")


def test_file_errors_name_the_file(tmp_path):
    path = write(tmp_path, "SOLVER:\n  BASE_LR: 0.1\n  MAX_ITERS: 10\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key SOLVER\.MAX_ITERS.*MAX_ITER\?"):
        load_config(path)
    path = write(tmp_path, "DATASETS:\n  MULTI_DATASET:\n    REAL_SAMPLING_RATIO: -0.1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: .*REAL_SAMPLING_RATIO must be in \[0, 1\]"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


SOURCES = """DATASETS:
  SOURCES:
    - {NAME: vg, TYPE: real, FORMAT: vg150, PATH: /data/vg}
    - {NAME: render, TYPE: synthetic, PATH: /data/render.json}
    - {NAME: gen, TYPE: synthetic, PATH: /data/gen.json, LOSS_WEIGHT: 0.2}
"""


def test_source_list_errors(tmp_path):
    dup = SOURCES.replace("NAME: gen", "NAME: render")
    with pytest.raises(ConfigError, match=r"SOURCES\[2\]\.NAME: duplicate source name 'render'"):
        load_config(write(tmp_path, dup))
    bad_type = SOURCES.replace("TYPE: real", "TYPE: rael")
    with pytest.raises(ConfigError, match=r"SOURCES\[0\]\.TYPE must be 'real' or 'synthetic'"):
        load_config(write(tmp_path, bad_type))
    ratios = SOURCES.replace("PATH: /data/vg}", "PATH: /data/vg, RATIO: 0.5}")
    ratios = ratios.replace("render.json}", "render.json, RATIO: 0.3}")
    ratios = ratios.replace("LOSS_WEIGHT: 0.2}", "LOSS_WEIGHT: 0.2, RATIO: 0.1}")
    with pytest.raises(ConfigError, match=r"RATIO must sum to 1, got 0\.9 \(vg=0\.5"):
        load_config(write(tmp_path, ratios))
    with pytest.raises(ConfigError, match=r"SOURCES\[0\]\.PATH is required"):
        load_config(write(tmp_path, "DATASETS:\n  SOURCES:\n    - {NAME: a}\n"))


def test_resolve_mix_precedence(tmp_path):
    cfg = load_config(write(tmp_path, SOURCES))
    mix = resolve_mix(
        cfg.DATASETS.SOURCES, cfg.DATASETS.MULTI_DATASET, [100, 1000, 500], max_iter=100
    )
    # Real gets REAL_SAMPLING_RATIO, the synthetic sources share the rest equally.
    assert [m.ratio for m in mix] == pytest.approx([0.7, 0.15, 0.15])
    # A source's own LOSS_WEIGHT wins over MULTI_DATASET's.
    assert [m.loss_weight for m in mix] == [1.0, 0.5, 0.2]


def test_resolve_mix_naive_concatenation_and_disabled(tmp_path):
    path = write(tmp_path, SOURCES)
    naive = load_config(path, ["DATASETS.MULTI_DATASET.RATIO_BY_SIZE=true"])
    assert [
        m.ratio
        for m in resolve_mix(
            naive.DATASETS.SOURCES, naive.DATASETS.MULTI_DATASET, [100, 600, 300], max_iter=100
        )
    ] == pytest.approx([0.1, 0.6, 0.3])
    off = load_config(path, ["DATASETS.MULTI_DATASET.ENABLED=false"])
    mix = resolve_mix(
        off.DATASETS.SOURCES, off.DATASETS.MULTI_DATASET, [100, 600, 300], max_iter=100
    )
    assert [m.ratio for m in mix] == [1.0, 0.0, 0.0]
    assert [m.loss_weight for m in mix] == [1.0, 1.0, 1.0]


def test_resolve_mix_rejects_partial_ratios_that_do_not_sum_and_empty_sources(tmp_path):
    partial = SOURCES.replace("PATH: /data/vg}", "PATH: /data/vg, RATIO: 0.5}")
    cfg = load_config(write(tmp_path, partial))
    with pytest.raises(ConfigError, match=r"sum to 0\.8.*vg=0\.5, render=0\.15, gen=0\.15"):
        resolve_mix(cfg.DATASETS.SOURCES, cfg.DATASETS.MULTI_DATASET, [1, 1, 1], max_iter=100)
    cfg = load_config(write(tmp_path, SOURCES))
    with pytest.raises(ConfigError, match="source 'render' has ratio 0.15 but no items"):
        resolve_mix(cfg.DATASETS.SOURCES, cfg.DATASETS.MULTI_DATASET, [10, 0, 5], max_iter=100)


def test_shipped_configs_load_and_keep_the_notes_keys():
    root = Path(__file__).resolve().parents[2] / "configs"
    demo = load_config(root / "demo.yaml")
    assert demo.OUTPUT_DIR == "runs/demo"
    vg = load_config(root / "vg150_synthetic.yaml")
    assert [s.FORMAT for s in vg.DATASETS.SOURCES] == ["vg150", "relcoco"]
    assert vg.DATASETS.MULTI_DATASET.SYNTHETIC_LOSS_WEIGHT == 0.5
    mix = resolve_mix(vg.DATASETS.SOURCES, vg.DATASETS.MULTI_DATASET, [10, 100], max_iter=100)
    assert [(m.ratio, m.loss_weight) for m in mix] == [(0.7, 1.0), (pytest.approx(0.3), 0.5)]


def test_sources_of_one_kind_share_the_whole_batch(tmp_path):
    one = "DATASETS:\n  SOURCES:\n    - {NAME: vg, TYPE: real, FORMAT: vg150, PATH: /data/vg}\n"
    cfg = load_config(write(tmp_path, one))
    mix = resolve_mix(cfg.DATASETS.SOURCES, cfg.DATASETS.MULTI_DATASET, [100], max_iter=100)
    assert [(m.ratio, m.loss_weight) for m in mix] == [(1.0, 1.0)]
    two = one + "    - {NAME: coco, TYPE: real, PATH: /data/coco.json}\n"
    cfg = load_config(write(tmp_path, two))
    mix = resolve_mix(cfg.DATASETS.SOURCES, cfg.DATASETS.MULTI_DATASET, [100, 50], max_iter=100)
    assert [m.ratio for m in mix] == [0.5, 0.5]


def test_vg150_validation_split_must_not_be_train(tmp_path):
    bad = "DATASETS:\n  SOURCES:\n    - {NAME: vg, FORMAT: vg150, PATH: /d, VAL_SPLIT: train}\n"
    with pytest.raises(ConfigError, match=r"SOURCES\[0\]\.VAL_SPLIT must be 'val' or 'test'"):
        load_config(write(tmp_path, bad))


def test_unknown_key_inside_a_source_names_its_position():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["DATASETS.SOURCES=[{NAME: a, PATH: x}, {NAME: b, PATH: y, RATIOO: 1}]"])
    assert str(info.value) == (
        "command line: unknown key DATASETS.SOURCES[1].RATIOO "
        "(did you mean DATASETS.SOURCES[1].RATIO?)"
    )


def test_list_items_can_be_overridden_by_position(tmp_path):
    path = write(tmp_path, SOURCES)
    for key in ("DATASETS.SOURCES[1].LOSS_WEIGHT", "DATASETS.SOURCES.1.LOSS_WEIGHT"):
        cfg = load_config(path, [f"{key}=0.25"])
        assert [s.LOSS_WEIGHT for s in cfg.DATASETS.SOURCES] == [None, 0.25, 0.2]
    with pytest.raises(ConfigError) as info:
        load_config(path, ["DATASETS.SOURCES[3].LOSS_WEIGHT=0.2"])
    assert str(info.value) == (
        "command line: DATASETS.SOURCES[3].LOSS_WEIGHT: DATASETS.SOURCES is a list of 3 item(s) "
        "(positions 0..2), there is no position 3"
    )
    with pytest.raises(ConfigError, match=r"unknown key DATASETS\.SOURCES\[1\]\.LOSS_WEIGTH "):
        load_config(path, ["DATASETS.SOURCES[1].LOSS_WEIGTH=0.2"])
    with pytest.raises(ConfigError, match=r"key DATASETS\.SOURCES\[1\]\.LOSS_WEIGHT: Value 'x'"):
        load_config(path, ["DATASETS.SOURCES[1].LOSS_WEIGHT=x"])


def test_relative_paths_follow_the_config_file_and_the_command_line_the_cwd(
    tmp_path, monkeypatch, capsys
):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    path = folder / "run.yaml"
    path.write_text(
        "DATASETS:\n  SOURCES:\n"
        "    - {NAME: a, PATH: ../data/a.json, IMAGE_ROOT: imgs}\n"
        "    - {NAME: b, TYPE: synthetic, PATH: /abs/b.json}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path, ["DATASETS.SOURCES[1].VAL_PATH=val/b.json", "OUTPUT_DIR=runs/x"])
    a, b = cfg.DATASETS.SOURCES
    assert str(tmp_path / "project" / "data" / "a.json") == a.PATH
    assert str(folder / "imgs") == a.IMAGE_ROOT
    assert a.VAL_PATH == ""  # unset stays unset
    assert b.PATH == "/abs/b.json"
    assert str(tmp_path / "val" / "b.json") == b.VAL_PATH
    assert cfg.OUTPUT_DIR == "runs/x"
    from realsynth.cli import main

    assert main(["config", "show", "--config-file", str(path)]) == 0
    shown = capsys.readouterr().out
    assert f"PATH: {tmp_path / 'project' / 'data' / 'a.json'}" in shown
    assert f"IMAGE_ROOT: {folder / 'imgs'}" in shown


def test_eval_period_zero_is_allowed_and_negative_is_not():
    assert load_config(None, ["TEST.EVAL_PERIOD=0"]).TEST.EVAL_PERIOD == 0
    with pytest.raises(ConfigError, match="TEST.EVAL_PERIOD must be >= 0"):
        load_config(None, ["TEST.EVAL_PERIOD=-1"])
    with pytest.raises(ConfigError, match="TEST.BEST_METRIC must be one of"):
        load_config(None, ["TEST.BEST_METRIC=AP"])
