"""The demo data as a cache: generated on first use into a folder per ``DATASETS.DEMO`` setting,
generated again when its recorded settings differ, and the demo's two sources."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from realsynth.config import ConfigError
from realsynth.config.schema import SourceConfig
from realsynth.data.demo import (
    demo_is_complete,
    demo_predicate_flip_map,
    demo_settings,
    generate_demo,
    is_demo_folder,
    recorded_demo_settings,
)
from realsynth.data.demo_damage import SyntheticDamage, demo_damage, preset_name
from realsynth.data.demo_settings import DEMO_DAMAGE_DEFAULTS, DEMO_SIZES
from realsynth.data.paths import shown
from realsynth.utils.distributed import barrier, get_rank


def demo_root(cfg: DictConfig) -> Path:
    """Folder holding the demo data for ``cfg.DATASETS.DEMO`` (one folder per setting)."""
    demo = cfg.DATASETS.DEMO
    if demo.ROOT:
        return Path(demo.ROOT)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "realsynth"
    damage = demo_damage_of(cfg)
    name = preset_name(damage)
    if name == "custom":  # knobs set one by one: a folder per setting of all of them
        name = hashlib.sha256(json.dumps(damage.as_dict()).encode()).hexdigest()[:10]
    tag = (
        f"seed{demo.SEED}-r{demo.REAL_TRAIN}-{demo.REAL_VAL}-{demo.REAL_TEST}-"
        f"s{demo.SYNTHETIC_TRAIN}-{demo.SYNTHETIC_VAL}-{name}"
    )
    return cache / "demo" / tag


def demo_damage_of(cfg: DictConfig) -> SyntheticDamage:
    """The synthetic damage ``DATASETS.DEMO`` asks for: its preset with the knobs it sets."""
    demo = cfg.DATASETS.DEMO
    knobs = {name: demo[name.upper()] for name in DEMO_DAMAGE_DEFAULTS}
    return demo_damage(demo.PRESET, label_noise=demo.LABEL_NOISE, overrides=knobs)


#: DATASETS.DEMO keys by the name ``generate_demo`` records their setting under.
_DEMO_KEYS = {
    "seed": "SEED",
    "real_train": "REAL_TRAIN",
    "real_val": "REAL_VAL",
    "synthetic_train": "SYNTHETIC_TRAIN",
    "synthetic_val": "SYNTHETIC_VAL",
    "real_test": "REAL_TEST",
    "preset": "PRESET",
    **{name: name.upper() for name in DEMO_DAMAGE_DEFAULTS},
}
_SIZE_KEYS = ("seed", *DEMO_SIZES)


def ensure_demo_data(cfg: DictConfig) -> Path:
    """Generate the demo data on first use (rank 0; other ranks wait) and return its folder.

    The folder is a cache: a demo that realsynth made with other settings than
    ``DATASETS.DEMO``'s (the ``.realsynth-demo`` marker records them) is generated again, and
    says so; a non-empty folder that realsynth did not make is refused.

    Raises:
        ConfigError: ``DATASETS.DEMO.ROOT`` is a non-empty folder that realsynth did not make.
    """
    root, demo = demo_root(cfg), cfg.DATASETS.DEMO
    options = {key: demo[_DEMO_KEYS[key]] for key in _SIZE_KEYS}
    options["damage"] = demo_damage_of(cfg)
    if get_rank() == 0:
        wanted = demo_settings(**options)
        recorded = recorded_demo_settings(root)
        if not demo_is_complete(root) or recorded != wanted:
            if root.is_dir() and any(root.iterdir()) and not is_demo_folder(root):
                raise ConfigError(
                    f"DATASETS.DEMO.ROOT={shown(root)} is not empty and was not made by "
                    "realsynth; choose a new or empty folder (the demo data is generated there)",
                    "DATASETS.DEMO.ROOT",
                )
            if demo_is_complete(root):
                print(f"realsynth: {_demo_difference(root, recorded, wanted)}")
            else:
                print(f"Generating the demo data into {shown(root)} ...")
            generate_demo(root, **options)
    barrier()
    return root


def _demo_difference(root: Path, recorded: dict | None, wanted: dict) -> str:
    """One line: how the demo in ``root`` differs from the config's, and what happens now."""
    if recorded is None:
        return (
            f"the demo data in {shown(root)} records no settings (an older realsynth made it): "
            "generating it again for DATASETS.DEMO"
        )
    named = {**{k: k for k in wanted}, **_DEMO_KEYS}
    changed = [
        f"{named[k]}={recorded.get(k, 'unrecorded')}, not {wanted.get(k, 0)}"
        for k in named
        if recorded.get(k, 0) != wanted.get(k, 0) or k not in recorded
    ]
    return (
        f"the demo data in {shown(root)} was made with {'; '.join(changed)}: generating it again "
        "(it is a cache of DATASETS.DEMO)"
    )


def demo_sources(cfg: DictConfig) -> list[Any]:
    """The demo's real and synthetic ``SourceConfig`` nodes (generating the demo if needed)."""
    root = ensure_demo_data(cfg)
    sources = []
    for kind in ("real", "synthetic"):
        test = root / kind / "test" / "annotations.json"
        settings = {
            "NAME": kind,
            "TYPE": kind,
            "FORMAT": "relcoco",
            "PATH": str(root / kind / "train" / "annotations.json"),
            "VAL_PATH": str(root / kind / "val" / "annotations.json"),
            "TEST_PATH": str(test) if test.is_file() else "",
            "PREDICATE_FLIP_MAP": demo_predicate_flip_map(),
        }
        sources.append(OmegaConf.merge(OmegaConf.structured(SourceConfig), settings))
    return sources
