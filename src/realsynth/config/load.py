"""The run configuration: schema defaults, a YAML file, ``KEY=VALUE`` overrides, validated.

The schema is :mod:`realsynth.config.schema` (the design note's keys and detectron2's solver
names), the value checks :mod:`realsynth.config.checks`.

Overrides use dotted keys with YAML values; list items are addressed as
``DATASETS.SOURCES[1].LOSS_WEIGHT=0.2`` or ``DATASETS.SOURCES.1.LOSS_WEIGHT=0.2``.

Paths (a source's ``PATH``, ``VAL_PATH``, ``TEST_PATH``, ``IMAGE_ROOT``, ``VAL_IMAGE_ROOT``,
``TEST_IMAGE_ROOT``, ``DATASETS.DEMO.ROOT`` and ``TEST.ZERO_SHOT_TRIPLETS``): written in a
config file, a relative path is relative to that file's folder, so a config can ship beside its
data; given on the command line, it is relative to the working directory. Both become absolute
when the config is loaded (``config show`` prints them, a run folder keeps them). ``OUTPUT_DIR``
stays relative to the working directory, where runs are started.

Sources: ``DATASETS.SOURCES`` lists any number of sources. ``DATASETS.MULTI_DATASET`` supplies the
defaults for every source that leaves ``RATIO`` or ``LOSS_WEIGHT`` unset: real sources share
``REAL_SAMPLING_RATIO`` equally, synthetic sources share the rest, and the loss weight follows the
source's ``TYPE``. A value written on a source always wins over ``MULTI_DATASET``. With ``SOURCES``
empty the run uses the embedded procedural demo data (``DATASETS.DEMO``).
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    OmegaConfBaseException,
    ValidationError,
)

from realsynth.config.checks import validate
from realsynth.config.schema import RENAMED_KEYS, ConfigError, RunConfig, SourceConfig

__all__ = ["ConfigError", "RunConfig", "load_config", "to_yaml", "validate"]

#: Keys of a source that name files or folders (resolved to absolute paths).
SOURCE_PATH_KEYS = (
    "PATH",
    "VAL_PATH",
    "TEST_PATH",
    "IMAGE_ROOT",
    "VAL_IMAGE_ROOT",
    "TEST_IMAGE_ROOT",
)


def _origin_of(key: str, config_file: str | Path | None, overrides: list[str]) -> str:
    """Where a bad value came from: the command line if an override set it, else the file."""
    base = key.split("[")[0]
    if any(base.startswith(item.split("=", 1)[0]) for item in overrides):
        return "command line"
    return str(config_file) if config_file is not None else "defaults"


def load_config(
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    base_yaml: str | None = None,
) -> DictConfig:
    """Resolve the run configuration: schema defaults <- YAML file <- ``KEY=VALUE`` overrides.

    Args:
        config_file: optional YAML file.
        overrides: ``KEY=VALUE`` strings (dotted keys, YAML values).
        base_yaml: YAML text merged before the file, e.g. the config saved in a checkpoint.

    Returns:
        A read-only, validated ``DictConfig`` with the ``RunConfig`` schema.

    Raises:
        ConfigError: unknown key (with a suggestion), wrong type or an invalid value; the message
            names the key and the file or "command line".
    """
    cfg = OmegaConf.structured(RunConfig)
    if base_yaml is not None:
        cfg = _merge(cfg, OmegaConf.create(base_yaml), origin="saved config")
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # yaml parse errors come in several types
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        _absolute_paths(loaded, path.parent.resolve())
        cfg = _merge(cfg, loaded, origin=str(path))
    for item in overrides:
        cfg = _apply_override(cfg, item)
    _absolute_paths(cfg, Path.cwd())
    try:
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{_origin_of(exc.key, config_file, overrides)}: {exc}") from None
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _absolute_paths(node: Any, folder: Path) -> None:
    """Make the path keys of ``node`` (a config or a loaded file) absolute against ``folder``."""
    if not isinstance(node, DictConfig):
        return
    test = node.get("TEST")
    if isinstance(test, DictConfig) and "ZERO_SHOT_TRIPLETS" in test:
        test.ZERO_SHOT_TRIPLETS = _absolute(test.ZERO_SHOT_TRIPLETS, folder)
    datasets = node.get("DATASETS")
    if not isinstance(datasets, DictConfig):
        return
    sources = datasets.get("SOURCES")
    for source in sources if isinstance(sources, ListConfig) else []:
        for key in SOURCE_PATH_KEYS if isinstance(source, DictConfig) else ():
            if key in source:
                source[key] = _absolute(source[key], folder)
    demo = datasets.get("DEMO")
    if isinstance(demo, DictConfig) and "ROOT" in demo:
        demo.ROOT = _absolute(demo.ROOT, folder)


def _absolute(value: Any, folder: Path) -> Any:
    if not isinstance(value, str) or not value or os.path.isabs(value) or value == "???":
        return value
    return os.path.abspath(os.path.join(folder, os.path.expanduser(value)))


def _key_parts(key: str) -> list[str]:
    """``A.B[1].C`` or ``A.B.1.C`` -> ``["A", "B", "1", "C"]``."""
    return [part for part in re.sub(r"\[(\d+)\]", r".\1", key).split(".") if part]


def _apply_override(cfg: DictConfig, item: str) -> DictConfig:
    """Merge one ``KEY=VALUE`` override; list positions are checked against the list's length."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"command line: override {item!r} is not KEY=VALUE")
    parts = _key_parts(key)
    if not any(part.isdigit() for part in parts):
        return _merge(cfg, OmegaConf.from_dotlist([item]), origin="command line")
    node: Any = cfg
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(
                    f"command line: {key}: {where} is a list of {len(node)} item(s) "
                    f"(positions 0..{len(node) - 1}), there is no position {part}"
                )
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node:
            node = node[part]
        elif depth < len(parts) - 1:
            raise ConfigError(f"command line: unknown key {key}{_suggestion(key)}")
    value = OmegaConf.from_dotlist([f"value={text}"])["value"]
    try:
        OmegaConf.update(cfg, ".".join(parts), value, merge=True)
    except (ConfigKeyError, ConfigAttributeError):
        raise ConfigError(f"command line: unknown key {key}{_suggestion(key)}") from None
    except ValidationError as exc:
        raise ConfigError(f"command line: key {key}: {exc.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"command line: {key}: {str(exc).splitlines()[0]}") from None
    return cfg


def _merge(cfg: DictConfig, other: Any, *, origin: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)
    except ConfigKeyError as exc:
        key = _full_key(exc)
        if "." not in key:  # OmegaConf names a key inside a list item without its path
            key = _path_of(OmegaConf.to_container(other), key) or key
        raise ConfigError(f"{origin}: unknown key {key}{_suggestion(key)}") from None
    except ValidationError as exc:
        raise ConfigError(f"{origin}: key {_full_key(exc)}: {exc.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{origin}: {str(exc).splitlines()[0]}") from None


def _path_of(node: Any, key: str, prefix: str = "") -> str | None:
    """Dotted path (list items as ``[i]``) of the first ``key`` found in a plain container."""
    items = node.items() if isinstance(node, dict) else enumerate(node or [])
    for name, value in items:
        path = f"{prefix}[{name}]" if isinstance(node, list) else f"{prefix}.{name}".lstrip(".")
        if name == key and not isinstance(node, list):
            return path
        if isinstance(value, dict | list) and (found := _path_of(value, key, path)):
            return found
    return None


def _full_key(exc: OmegaConfBaseException) -> str:
    return str(getattr(exc, "full_key", None) or getattr(exc, "key", "?"))


def _all_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items() if isinstance(node, dict) else []:
        full = f"{prefix}{key}"
        keys.append(full)
        keys.extend(_all_keys(value, f"{full}."))
    return keys


def _suggestion(key: str) -> str:
    if key in RENAMED_KEYS:
        return f" (renamed to {RENAMED_KEYS[key]})"
    known = _all_keys(OmegaConf.to_container(OmegaConf.structured(RunConfig)))
    known += [f"DATASETS.SOURCES.{k}" for k in _all_keys(OmegaConf.to_container(_source_node()))]
    # Compare whole paths first so "SOLVER.BASE_LRR" suggests "SOLVER.BASE_LR"; list positions
    # ("SOURCES[1]") are dropped for the comparison and put back in the suggestion.
    normalized = re.sub(r"\[\d+\]", "", key)
    match = difflib.get_close_matches(normalized, known, n=1, cutoff=0.6)
    if match and "." in key:
        return f" (did you mean {key.rsplit('.', 1)[0]}.{match[0].rsplit('.', 1)[-1]}?)"
    match = match or difflib.get_close_matches(key, [k.split(".")[-1] for k in known], 1)
    return f" (did you mean {match[0]}?)" if match else ""


def _source_node() -> DictConfig:
    return OmegaConf.structured(SourceConfig)


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text (what ``config show`` prints and a run folder keeps)."""
    return OmegaConf.to_yaml(cfg)
