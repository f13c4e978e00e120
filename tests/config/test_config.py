"""Config: schema defaults, YAML + overrides, every user-facing error, source mix resolution."""

import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

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
        (["MODEL.PRESET=huge"], "MODEL.PRESET must be one of tiny, base, got 'huge'"),
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


def test_model_paths_follow_the_config_file_and_the_command_line_the_cwd(tmp_path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    path = folder / "run.yaml"
    path.write_text(
        "MODEL:\n  WEIGHTS: ../weights/start.pt\n  HF_DETR: {PATH: ../models/detr}\n"
        "  BACKBONE: {WEIGHTS: pretrained}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config(path)
    assert str(tmp_path / "project" / "weights" / "start.pt") == cfg.MODEL.WEIGHTS
    assert str(tmp_path / "project" / "models" / "detr") == cfg.MODEL.HF_DETR.PATH
    assert cfg.MODEL.BACKBONE.WEIGHTS == "pretrained"  # the package's own weights, not a file
    cfg = load_config(path, ["MODEL.BACKBONE.WEIGHTS=r50.pt", "MODEL.WEIGHTS=w.pt"])
    assert str(tmp_path / "r50.pt") == cfg.MODEL.BACKBONE.WEIGHTS
    assert str(tmp_path / "w.pt") == cfg.MODEL.WEIGHTS
    assert load_config(None).MODEL.WEIGHTS == ""  # unset stays unset


def test_eval_period_zero_is_allowed_and_negative_is_not():
    assert load_config(None, ["TEST.EVAL_PERIOD=0"]).TEST.EVAL_PERIOD == 0
    with pytest.raises(ConfigError, match="TEST.EVAL_PERIOD must be >= 0"):
        load_config(None, ["TEST.EVAL_PERIOD=-1"])
    with pytest.raises(ConfigError, match="TEST.BEST_METRIC must be one of"):
        load_config(None, ["TEST.BEST_METRIC=AP"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "MODEL.SPEAQ.ONE2MANY_SCHEME=bogus",
            "MODEL.SPEAQ.ONE2MANY_SCHEME must be one of none, static, dynamic, got 'bogus'",
        ),
        (
            "SWEEP.PRUNER=1.5",
            "SWEEP.PRUNER must be one of successive_halving, median, none, got 1.5",
        ),
        ("TEST.PROTOCOL=null", "TEST.PROTOCOL must be one of sgb, continuous, got None"),
        (
            "MODEL.BACKBONE.NORM=layer",
            "MODEL.BACKBONE.NORM must be one of default, batch, group ('' = default), got 'layer'",
        ),
        ("COMPARE.SPLIT=''", "COMPARE.SPLIT must be one of val, test, got ''"),
    ],
)
def test_a_key_with_fixed_values_refuses_others_in_one_line(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == f"command line: {expected}"


def test_a_bad_fixed_value_in_a_file_names_the_file_and_the_full_key(tmp_path, capsys):
    path = write(tmp_path, "MODEL:\n  CRITERION:\n    NORMALIZATION: mean\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (
        f"{path}: MODEL.CRITERION.NORMALIZATION must be one of count, weight, got 'mean'"
    )
    from realsynth.cli import main

    assert main(["config", "show", "--config-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NORMALIZATION must be one of count, weight" in err


def test_fixed_values_read_as_strings_and_the_yaml_loads_again():
    cfg = load_config(None, ["MODEL.SPEAQ.ONE2MANY_SCHEME=dynamic", "SWEEP.SAMPLER=grid"])
    scheme = cfg.MODEL.SPEAQ.ONE2MANY_SCHEME
    assert scheme == "dynamic" and str(scheme) == "dynamic"
    assert f"{scheme}/{scheme:>8}" == "dynamic/ dynamic"
    assert type(scheme.value) is str and {"dynamic": 1}[scheme] == 1
    text = to_yaml(cfg)
    assert "ONE2MANY_SCHEME: dynamic" in text and "SAMPLER: grid" in text
    assert "NORM: default" in text
    again = load_config(None, base_yaml=text)
    assert again == cfg and to_yaml(again) == text


def test_a_yaml_of_the_previous_version_loads_and_an_empty_norm_is_the_presets(tmp_path):
    # Before the enums every fixed-value key was a plain string, BACKBONE.NORM "" the default.
    old = (
        "MODEL:\n  PRESET: base\n  BACKBONE:\n    NORM: ''\n  SPEAQ:\n    ONE2MANY_SCHEME: static\n"
        "SOLVER:\n  LR_SCHEDULE: constant\nTEST:\n  PROTOCOL: continuous\n"
    )
    cfg = load_config(None, base_yaml=old)
    assert (cfg.MODEL.PRESET, cfg.MODEL.BACKBONE.NORM) == ("base", "default")
    assert cfg.MODEL.SPEAQ.ONE2MANY_SCHEME == "static" and cfg.TEST.PROTOCOL == "continuous"
    assert cfg.SOLVER.LR_SCHEDULE == "constant"
    assert load_config(write(tmp_path, old)) == cfg
    assert load_config(None, ["MODEL.BACKBONE.NORM=''"]).MODEL.BACKBONE.NORM == "default"
    assert load_config(None, ["MODEL.BACKBONE.NORM=group"]).MODEL.BACKBONE.NORM == "group"


@pytest.mark.parametrize(
    ("old", "new"),
    [("BACKBONE_CHANNELS", "CHANNELS"), ("BACKBONE_NORM", "NORM")],
)
def test_the_old_backbone_keys_name_their_new_place(tmp_path, old, new):
    value = "[8,16]" if new == "CHANNELS" else "group"
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"MODEL.{old}={value}"])
    assert f"renamed to MODEL.BACKBONE.{new}" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, f"MODEL:\n  {old}: {value}\n"))
    assert f"renamed to MODEL.BACKBONE.{new}" in str(info.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["DATASETS.MULTI_DATASET.ADAPTIVE.STEP_SIZE=0"],
        ["DATASETS.MULTI_DATASET.ADAPTIVE.SMOOTHING=2"],
        ["DATASETS.MULTI_DATASET.ADAPTIVE.MIN_RATIO=0.99"],
        ["SOLVER.BASE_LR=-1"],
        ["SOLVER.WEIGHT_DECAY=-1"],
        ["SWEEP.CONFIRM_SEEDS=-1"],
        ["MODEL.CRITERION.OVERSAMPLE_PARAM=0"],
        ["MODEL.SPEAQ.ONE2MANY_PREDICATE_WEIGHT=.inf"],
        ["MODEL.SPEAQ.ONLY_PREDICATE_MULTIPLY=true"],
        ["MODEL.SPEAQ.ONE2MANY_SCHEME=dynamic", "MODEL.SPEAQ.MATCH_INDEPENDENT=false"],
        ["DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO_SCHEDULE.KIND=linear"],
        ["DATASETS.SOURCES=[{NAME: a, PATH: x, RATIO: 0.5}]"],
    ],
)
def test_a_bad_value_from_the_command_line_is_blamed_on_the_command_line(overrides):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert str(info.value).startswith("command line: "), str(info.value)


def test_a_bad_value_is_blamed_on_where_it_was_set_and_a_default_only_when_nobody_set_it(
    tmp_path,
):
    path = write(tmp_path, SOURCES + "  MULTI_DATASET:\n    ADAPTIVE:\n      SMOOTHING: 2\n")
    # The file's value, whatever else the command line sets (even a key beside it).
    for overrides in ([], ["SOLVER.MAX_ITER=10"], ["DATASETS.MULTI_DATASET.ADAPTIVE.INTERVAL=5"]):
        with pytest.raises(ConfigError) as info:
            load_config(path, overrides)
        assert str(info.value).startswith(f"{path}: DATASETS.MULTI_DATASET.ADAPTIVE.SMOOTHING")
    # A source of the file, the command line changing another one (by position, either way).
    bad_type = write(
        tmp_path, SOURCES.replace("TYPE: synthetic, PATH: /data/gen", "TYPE: x, PATH: /g")
    )
    for other in ("DATASETS.SOURCES[0].LOSS_WEIGHT=0.2", "DATASETS.SOURCES.1.LOSS_WEIGHT=0.2"):
        with pytest.raises(ConfigError, match=rf"^{bad_type}: DATASETS\.SOURCES\[2\]\.TYPE"):
            load_config(bad_type, [other])
    with pytest.raises(ConfigError, match=r"^command line: DATASETS\.SOURCES\[1\]\.TYPE"):
        load_config(write(tmp_path, SOURCES), ["DATASETS.SOURCES.1.TYPE=rael"])
    # Two keys that do not go together: the one set last names the place.
    speaq = write(tmp_path, "MODEL:\n  SPEAQ:\n    ONE2MANY_SCHEME: dynamic\n")
    with pytest.raises(ConfigError, match=r"^command line: MODEL\.SPEAQ\.ONE2MANY_SCHEME"):
        load_config(speaq, ["MODEL.SPEAQ.MATCH_INDEPENDENT=false"])
    with pytest.raises(ConfigError, match=rf"^{speaq}: MODEL\.SPEAQ\.ONE2MANY_SCHEME"):
        load_config(
            speaq, ["SOLVER.MAX_ITER=10"], base_yaml="MODEL: {SPEAQ: {MATCH_INDEPENDENT: false}}"
        )
    # A resumed run's own config, and a bound nobody set checked against one that was.
    saved = "DATASETS:\n  MULTI_DATASET:\n    ADAPTIVE:\n      SMOOTHING: 2\n"
    with pytest.raises(ConfigError, match=r"^saved config: DATASETS\.MULTI_DATASET\.ADAPTIVE"):
        load_config(None, ["SOLVER.MAX_ITER=10"], base_yaml=saved)
    with pytest.raises(ConfigError, match=r"^command line: .*MIN_RATIO / MAX_RATIO"):
        load_config(None, ["DATASETS.MULTI_DATASET.ADAPTIVE.MAX_RATIO=0.01"])


def _exists(key: str) -> bool:
    """Whether ``key`` is a key of the schema (list items by position, the list may be empty)."""
    from realsynth.config.schema import SourceConfig

    head, _, tail = key.partition("DATASETS.SOURCES[0].")
    node = OmegaConf.structured(SourceConfig) if tail and not head else load_config()
    return OmegaConf.select(node, tail or key, default=KeyError) is not KeyError


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("DATASETS.MULTI_DATASET.REAL_SAMPLING_RATI", "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO"),
        ("SOLVER.BASE_LRR", "SOLVER.BASE_LR"),
        ("MODEL.SPEAQ.ONE2MANY_K_", "MODEL.SPEAQ.ONE2MANY_K"),
        ("SOLVER.LR", "SOLVER.BASE_LR"),
        ("DATASETS.MULTI_DATASET.RS", None),
        ("DATASETS.MULTI_DATASET.MULTI_DATASET.ENABLED", "DATASETS.MULTI_DATASET.ENABLED"),
        ("MULTI_DATASET.ENABLED", "DATASETS.MULTI_DATASET.ENABLED"),
        ("DATASETS.MULTI_DATASETS.ENABLED", "DATASETS.MULTI_DATASET.ENABLED"),
        ("DATASETS.MULTI_DATASET.ADAPTIVE.STEPSIZE", "DATASETS.MULTI_DATASET.ADAPTIVE.STEP_SIZE"),
        ("SPEAQ.NUM_GROUPS", "MODEL.SPEAQ.NUM_GROUPS"),
        ("DATASETS.SOURCES.RATIO_SCHEDULE.KIND", "DATASETS.SOURCES[0].RATIO_SCHEDULE.KIND"),
    ],
)
def test_did_you_mean_offers_a_full_key_that_exists(typo, meant):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{typo}=1"])
    message = str(info.value)
    assert message.startswith("command line: ") and ("unknown key" in message) == (
        "SOURCES" not in typo  # there: "key DATASETS.SOURCES: expected a list, got a mapping"
    )
    suggested = re.findall(r"did you mean (\S+)\?", message)
    assert suggested == ([meant] if meant else []), message
    assert all(_exists(key) for key in suggested)


def test_did_you_mean_in_a_file_names_a_key_that_exists(tmp_path):
    for text, meant in [
        ("DATASETS:\n  MULTI_DATASET:\n    REAL_SAMPLING_RATI: 0.5\n", "REAL_SAMPLING_RATIO"),
        ("MODEL:\n  SPEAQ:\n    ONE2MANY_K_: 2\n", "MODEL.SPEAQ.ONE2MANY_K"),
        ("SOLVER:\n  LR: 0.1\n", "SOLVER.BASE_LR"),
    ]:
        with pytest.raises(
            ConfigError, match=rf"did you mean (DATASETS\.MULTI_DATASET\.)?{meant}\?"
        ):
            load_config(write(tmp_path, text))


def test_a_mapping_where_a_list_belongs_is_a_one_line_error(tmp_path):
    path = write(tmp_path, "DATASETS:\n  SOURCES:\n    1: {RATIO: 0.5}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: key DATASETS.SOURCES: expected a list, got a mapping"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "SOLVER: [1]\n"))
    assert str(info.value).endswith("key SOLVER: expected a mapping of keys, got a list")


def test_an_override_that_is_not_utf8_names_the_path_in_one_line(tmp_path):
    import os

    from realsynth.cli import main

    path = os.fsdecode(os.fsencode(str(tmp_path)) + b"/caf\xe9")
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"OUTPUT_DIR={path}"])
    message = str(info.value)
    assert "OUTPUT_DIR=b'" in message and "caf\\xe9" in message and "not valid UTF-8" in message
    assert main(["train", f"OUTPUT_DIR={path}"]) == 2


def test_a_gap_report_on_a_real_only_run_is_refused_before_training():
    with pytest.raises(ConfigError, match="TEST.GAP_REPORT=true needs a synthetic source"):
        load_config(None, ["TEST.GAP_REPORT=true", "DATASETS.MULTI_DATASET.ENABLED=false"])
    load_config(None, ["TEST.GAP_REPORT=true"])  # the demo's real + synthetic: fine
