"""DATASETS.DEMO's damage: the preset and its knobs reach the generator, and each setting has its
own cache folder."""

from __future__ import annotations

import json

import pytest

from realsynth.config import ConfigError, load_config
from realsynth.data.demo import CORRUPTION_FILE
from realsynth.data.demo_damage import DEMO_PRESETS
from realsynth.training.demo_cache import demo_damage_of, demo_root, ensure_demo_data
from tests.tiny_runs import TINY, tiny_config


def test_the_preset_and_its_knobs_reach_the_generated_demo(tmp_path) -> None:
    cfg = tiny_config(tmp_path, "DATASETS.DEMO.PRESET=noisy", "DATASETS.DEMO.BOX_NOISE=0.05")
    assert demo_damage_of(cfg).box_noise == 0.05
    assert demo_damage_of(cfg).missing_objects == DEMO_PRESETS["noisy"].missing_objects
    root = ensure_demo_data(cfg)
    settings = json.loads((root / ".realsynth-demo").read_text())["settings"]
    assert settings["box_noise"] == 0.05 and settings["missing_relations"] == 0.3
    record = json.loads((root / "synthetic" / "train" / CORRUPTION_FILE).read_text())
    assert record["settings"] == demo_damage_of(cfg).as_dict()
    assert record["missing_objects"] and record["moved_boxes"]


def test_label_noise_sets_both_noises_and_an_explicit_one_wins(tmp_path) -> None:
    cfg = tiny_config(tmp_path, "DATASETS.DEMO.LABEL_NOISE=0.4", "DATASETS.DEMO.CLASS_NOISE=0.2")
    assert (demo_damage_of(cfg).class_noise, demo_damage_of(cfg).predicate_noise) == (0.2, 0.4)


def test_each_setting_of_the_damage_has_its_own_cache_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    def folder(*overrides: str) -> str:
        return demo_root(load_config(None, [*TINY, *overrides])).name

    names = [
        folder(),
        folder("DATASETS.DEMO.PRESET=noisy"),
        folder("DATASETS.DEMO.PRESET=shifted"),
        folder("DATASETS.DEMO.HUE_SHIFT=90"),
        folder("DATASETS.DEMO.HUE_SHIFT=45"),
    ]
    assert len(set(names)) == len(names)
    assert names[0].endswith("-mild") and names[1].endswith("-noisy")
    assert folder("DATASETS.DEMO.PRESET=noisy", "DATASETS.DEMO.BOX_NOISE=0.15") == names[1]


@pytest.mark.parametrize(
    "override, message",
    [
        ("DATASETS.DEMO.PRESET=loud", "DATASETS.DEMO.PRESET must be one of mild, noisy, shifted"),
        ("DATASETS.DEMO.MISSING_OBJECTS=1.2", "DATASETS.DEMO.MISSING_OBJECTS must be in [0, 1]"),
        ("DATASETS.DEMO.HUE_SHIFT=360", "DATASETS.DEMO.HUE_SHIFT must be in [0, 360) degrees"),
    ],
)
def test_a_bad_demo_setting_is_one_line_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, [override])
    assert message in str(caught.value) and "\n" not in str(caught.value)
