"""The run configuration: schema defaults, a YAML file, ``KEY=VALUE`` overrides, validated.

The schema is :mod:`realsynth.config.schema` (``DATASETS.MULTI_DATASET`` for the mix and
detectron2's solver names), the value checks :mod:`realsynth.config.checks`, OmegaConf's errors
translated (with a "did you mean") in :mod:`realsynth.config.errors`, and the layer that set
each key tracked in :mod:`realsynth.config.origins`.

Overrides use dotted keys with YAML values; list items are addressed as
``DATASETS.SOURCES[1].LOSS_WEIGHT=0.2`` or ``DATASETS.SOURCES.1.LOSS_WEIGHT=0.2``.

Paths (a source's ``PATH``, ``VAL_PATH``, ``TEST_PATH``, ``IMAGE_ROOT``, ``VAL_IMAGE_ROOT``,
``TEST_IMAGE_ROOT``, ``DATASETS.DEMO.ROOT``, ``TEST.ZERO_SHOT_TRIPLETS``, ``MODEL.WEIGHTS``,
``MODEL.HF_DETR.PATH`` and a file in ``MODEL.BACKBONE.WEIGHTS``): written in a
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

import os
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
from realsynth.config.errors import (
    choice_error,
    first_line,
    full_key,
    path_of_list_item,
    shape_error,
    suggestion,
)
from realsynth.config.keys import key_parts
from realsynth.config.origins import Origins, set_paths
from realsynth.config.schema import ConfigError, RunConfig
from realsynth.data.paths import is_utf8, shown

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
            names the key and where its value came from: the file, "command line", "saved
            config" (``base_yaml``), or "defaults" when nobody set it.
    """
    cfg = OmegaConf.structured(RunConfig)
    origins = Origins()
    if base_yaml is not None:
        saved = OmegaConf.create(base_yaml)
        cfg = _merge(cfg, saved, origin="saved config")
        origins.add("saved config", set_paths(OmegaConf.to_container(saved)))
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
        origins.add(str(path), set_paths(OmegaConf.to_container(loaded)))
    for item in overrides:
        cfg = _apply_override(cfg, item)
        key, _, text = item.partition("=")
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
        origins.add("command line", set_paths(value, tuple(key_parts(key))))
    _absolute_paths(cfg, Path.cwd())
    try:
        validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{origins.of(exc.keys)}: {exc}", exc.keys) from None
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _absolute_paths(node: Any, folder: Path) -> None:
    """Make the path keys of ``node`` (a config or a loaded file) absolute against ``folder``."""
    if not isinstance(node, DictConfig):
        return
    test = node.get("TEST")
    if isinstance(test, DictConfig) and "ZERO_SHOT_TRIPLETS" in test:
        test.ZERO_SHOT_TRIPLETS = _absolute(test.ZERO_SHOT_TRIPLETS, folder)
    _absolute_model_paths(node.get("MODEL"), folder)
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


def _absolute_model_paths(model: Any, folder: Path) -> None:
    """``MODEL.WEIGHTS``, ``MODEL.HF_DETR.PATH`` and ``MODEL.BACKBONE.WEIGHTS`` (unless it is
    ``pretrained``, the package's own weights) against ``folder``."""
    if not isinstance(model, DictConfig):
        return
    if "WEIGHTS" in model:
        model.WEIGHTS = _absolute(model.WEIGHTS, folder)
    for section, key in (("HF_DETR", "PATH"), ("BACKBONE", "WEIGHTS")):
        node = model.get(section)
        if isinstance(node, DictConfig) and key in node and node[key] != "pretrained":
            node[key] = _absolute(node[key], folder)


def _absolute(value: Any, folder: Path) -> Any:
    if not isinstance(value, str) or not value or os.path.isabs(value) or value == "???":
        return value
    if "://" in value or value.startswith("pipe:"):  # a URL (FORMAT: shards) is no path
        return value
    return os.path.abspath(os.path.join(folder, os.path.expanduser(value)))


def _apply_override(cfg: DictConfig, item: str) -> DictConfig:
    """Merge one ``KEY=VALUE`` override; list positions are checked against the list's length."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"command line: override {item!r} is not KEY=VALUE")
    if not is_utf8(item):
        raise ConfigError(
            f"command line: {shown(key)}={shown(text)} is not valid UTF-8, which a run's "
            "config.yaml cannot record; rename the path, or link it from a UTF-8 path",
            key,
        )
    parts = key_parts(key)
    if not any(part.isdigit() for part in parts):
        return _merge(cfg, OmegaConf.from_dotlist([item]), origin="command line", typed=key)
    node: Any = cfg
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "the config"
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                positions = f"positions 0..{len(node) - 1}" if len(node) else "empty"
                raise ConfigError(
                    f"command line: {key}: {where} is a list of {len(node)} item(s) "
                    f"({positions}), there is no position {part}"
                )
            node = node[int(part)]
        elif isinstance(node, DictConfig) and part in node:
            node = node[part]
        elif depth < len(parts) - 1:
            raise ConfigError(f"command line: unknown key {key}{suggestion(key)}")
    value = OmegaConf.from_dotlist([f"value={text}"])["value"]
    try:
        OmegaConf.update(cfg, ".".join(parts), value, merge=True)
    except (ConfigKeyError, ConfigAttributeError):
        raise ConfigError(f"command line: unknown key {key}{suggestion(key)}") from None
    except ValidationError as exc:
        if (message := choice_error(exc, key)) is not None:
            raise ConfigError(f"command line: {message}", key) from None
        raise ConfigError(f"command line: key {key}: {first_line(exc)}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"command line: {key}: {first_line(exc)}") from None
    return cfg


def _merge(cfg: DictConfig, other: Any, *, origin: str, typed: str = "") -> DictConfig:
    """``cfg`` merged with ``other``; ``typed``: the key of an override, named in full when
    its first unknown name is not the last."""
    try:
        return OmegaConf.merge(cfg, other)
    except ConfigKeyError as exc:
        key = path_of_list_item(other, full_key(exc))
        if typed.startswith(f"{key}."):
            key = typed
        raise ConfigError(f"{origin}: unknown key {key}{suggestion(key)}") from None
    except ValidationError as exc:
        if (shape := shape_error(cfg, other)) is not None:
            raise ConfigError(f"{origin}: {shape}{suggestion(typed) if typed else ''}") from None
        key = full_key(exc)
        path = path_of_list_item(other, key)
        if (message := choice_error(exc, path)) is not None:
            raise ConfigError(f"{origin}: {message}", path) from None
        raise ConfigError(f"{origin}: key {key}: {first_line(exc)}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{origin}: {first_line(exc)}") from None
    except TypeError as exc:  # OmegaConf: "Cannot merge incompatible container types"
        shape = shape_error(cfg, other) or str(exc).splitlines()[0]
        raise ConfigError(f"{origin}: {shape}{suggestion(typed) if typed else ''}") from None


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text (what ``config show`` prints and a run folder keeps); a
    ``Choice`` key is written as its plain value, so the text loads again."""
    return OmegaConf.to_yaml(cfg)
