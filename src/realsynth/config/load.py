"""The run configuration: schema defaults, a YAML file, ``KEY=VALUE`` overrides, validated.

The schema is :mod:`realsynth.config.schema` (``DATASETS.MULTI_DATASET`` for the mix and
detectron2's solver names), the value checks :mod:`realsynth.config.checks`.

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

import dataclasses
import difflib
import functools
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
from omegaconf.nodes import EnumNode

from realsynth.config.checks import validate
from realsynth.config.schema import RENAMED_KEYS, Choice, ConfigError, RunConfig
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


class _Origins:
    """Which layer set which keys, in merge order: the saved config, the file, each override.

    A bad value is blamed on the last layer that set its key (or a key above or below it: a
    layer that sets ``DATASETS.SOURCES`` set every source in it); a value no layer set is a
    default.
    """

    def __init__(self) -> None:
        self._layers: list[tuple[str, list[tuple[str, ...]]]] = []

    def add(self, origin: str, paths: list[tuple[str, ...]]) -> None:
        self._layers.append((origin, paths))

    def of(self, keys: Sequence[str]) -> str:
        """Where the values of ``keys`` came from (the latest layer that set one of them)."""
        wanted = [tuple(_key_parts(key)) for key in keys]
        if not wanted:  # an error about the whole config: the last layer given
            return self._layers[-1][0] if self._layers else "defaults"
        for origin, paths in reversed(self._layers):
            for key in wanted:
                if any(key[: len(path)] == path[: len(key)] for path in paths):
                    return origin
        return "defaults"


def _set_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The keys a loaded file or override sets: its leaves; a list is set as a whole (a merge
    replaces it), and so is an empty mapping."""
    if isinstance(node, dict) and node:
        return [p for key, value in node.items() for p in _set_paths(value, (*prefix, str(key)))]
    return [prefix] if prefix else []  # an empty file sets nothing


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
    origins = _Origins()
    if base_yaml is not None:
        saved = OmegaConf.create(base_yaml)
        cfg = _merge(cfg, saved, origin="saved config")
        origins.add("saved config", _set_paths(OmegaConf.to_container(saved)))
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
        origins.add(str(path), _set_paths(OmegaConf.to_container(loaded)))
    for item in overrides:
        cfg = _apply_override(cfg, item)
        key, _, text = item.partition("=")
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]))["value"]
        origins.add("command line", _set_paths(value, tuple(_key_parts(key))))
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
    if not is_utf8(item):
        raise ConfigError(
            f"command line: {shown(key)}={shown(text)} is not valid UTF-8, which a run's "
            "config.yaml cannot record; rename the path, or link it from a UTF-8 path",
            key,
        )
    parts = _key_parts(key)
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
            raise ConfigError(f"command line: unknown key {key}{_suggestion(key)}")
    value = OmegaConf.from_dotlist([f"value={text}"])["value"]
    try:
        OmegaConf.update(cfg, ".".join(parts), value, merge=True)
    except (ConfigKeyError, ConfigAttributeError):
        raise ConfigError(f"command line: unknown key {key}{_suggestion(key)}") from None
    except ValidationError as exc:
        if (message := _choice_error(exc, key)) is not None:
            raise ConfigError(f"command line: {message}", key) from None
        raise ConfigError(f"command line: key {key}: {_first_line(exc)}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"command line: {key}: {_first_line(exc)}") from None
    return cfg


def _merge(cfg: DictConfig, other: Any, *, origin: str, typed: str = "") -> DictConfig:
    """``cfg`` merged with ``other``; ``typed``: the key of an override, named in full when
    its first unknown name is not the last."""
    try:
        return OmegaConf.merge(cfg, other)
    except ConfigKeyError as exc:
        key = _path_of_list_item(other, _full_key(exc))
        if typed.startswith(f"{key}."):
            key = typed
        raise ConfigError(f"{origin}: unknown key {key}{_suggestion(key)}") from None
    except ValidationError as exc:
        if (shape := _shape_error(cfg, other)) is not None:
            raise ConfigError(f"{origin}: {shape}{_suggestion(typed) if typed else ''}") from None
        key = _full_key(exc)
        path = _path_of_list_item(other, key)
        if (message := _choice_error(exc, path)) is not None:
            raise ConfigError(f"{origin}: {message}", path) from None
        raise ConfigError(f"{origin}: key {key}: {_first_line(exc)}") from None
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{origin}: {_first_line(exc)}") from None
    except TypeError as exc:  # OmegaConf: "Cannot merge incompatible container types"
        shape = _shape_error(cfg, other) or str(exc).splitlines()[0]
        raise ConfigError(f"{origin}: {shape}{_suggestion(typed) if typed else ''}") from None


def _first_line(exc: OmegaConfBaseException) -> str:
    text = getattr(exc, "msg", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _shape_error(cfg: Any, other: Any, prefix: str = "") -> str | None:
    """``key K: expected a mapping, got a list`` for the first key of ``other`` (a loaded file
    or an override) where a mapping stands for a list or a list (or a plain value) for a mapping
    of the schema; None when every shape fits."""
    if isinstance(other, DictConfig | ListConfig):
        other = OmegaConf.to_container(other)
    if not isinstance(other, dict) or not isinstance(cfg, DictConfig):
        return None
    for name, value in other.items():
        if not isinstance(name, str) or name not in cfg:
            continue
        key = f"{prefix}{name}"
        target = cfg._get_node(name)
        if isinstance(target, ListConfig) and not isinstance(value, list | type(None)):
            return f"key {key}: expected a list, got {_kind_of(value)}"
        if _is_structured(target) and not isinstance(value, dict | type(None)):
            return f"key {key}: expected a mapping of keys, got {_kind_of(value)}"
        if isinstance(target, DictConfig) and (found := _shape_error(target, value, f"{key}.")):
            return found
    return None


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"the value {value!r}"


def _choice_error(exc: ValidationError, key: str) -> str | None:
    """``KEY must be one of a, b, c, got 'x'`` when OmegaConf refused the value of a ``Choice``
    key (a wrong string, a number, null), else None."""
    node = exc.child_node
    if not (isinstance(node, EnumNode) and issubclass(node.enum_type, Choice)):
        return None
    return f"{key} must be one of {node.enum_type.allowed()}, got {exc.value!r}"


def _path_of_list_item(other: Any, key: str) -> str:
    """The full path of ``key``: OmegaConf names a key inside a list item without its path."""
    if "." in key or not isinstance(other, DictConfig | ListConfig):
        return key
    return _path_of(OmegaConf.to_container(other), key) or key


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


def _suggestion(key: str) -> str:
    """`` (did you mean K?)`` with K a full key path that exists in the schema, or ``""``.

    The known part of ``key`` is kept; the first unknown name is looked up beside it (a close
    name), or anywhere in the schema (the same name, then a close one), and the names after it
    are matched under what was found, as far as they match.
    """
    if key in RENAMED_KEYS:
        return f" (renamed to {RENAMED_KEYS[key]})"
    parts = _key_parts(key)
    node: Any = _schema()
    depth = 0
    while depth < len(parts) and (child := _schema_child(node, parts[depth])) is not _UNKNOWN:
        node, depth = child, depth + 1
    if depth == len(parts) or depth == 0 and not parts:
        return ""
    if node is None:  # names below a plain value: the value's own key
        return f" (did you mean {_render(parts[:depth])}?)"
    unknown, rest, typed = parts[depth], parts[depth + 1 :], ".".join(parts)
    if isinstance(node, ListConfig) and _exists(_schema_child(node, "0"), parts[depth:]):
        return f" (did you mean {_render([*parts[:depth], '0', *parts[depth:]])}?)"
    names = _schema_names(node)
    here = difflib.get_close_matches(unknown, names, n=1, cutoff=0.6)
    # A name that holds the unknown one as a word: LR -> BASE_LR.
    here = here or sorted(
        (n for n in names if unknown in n.split("_")), key=lambda n: -_likeness(n, unknown)
    )
    # Never the key's own ancestors: "A.B.B" does not mean "A.B".
    everywhere = [p for p in _all_paths() if tuple(parts[: len(p)]) != p]
    same = [p for p in everywhere if p[-1] == unknown]
    close = difflib.get_close_matches(unknown, sorted({p[-1] for p in everywhere}), n=3)
    if rest and _exists(node, rest):  # one name too many: "A.B.B.C" means "A.B.C"
        found = (*parts[:depth], *rest)
        rest = []
    elif same:
        found = max(same, key=lambda p: _likeness(".".join(p), typed))
    elif here:
        found = (*parts[:depth], here[0])
    elif close:
        found = max(
            (p for p in everywhere if p[-1] in close),
            key=lambda p: (_likeness(p[-1], unknown), _likeness(".".join(p), typed)),
        )
    else:
        return ""
    return f" (did you mean {_render(_extend(list(found), rest))}?)"


_UNKNOWN = object()


@functools.cache
def _schema() -> DictConfig:
    return OmegaConf.structured(RunConfig)


def _is_structured(node: Any) -> bool:
    return isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node))


def _schema_child(node: Any, name: str) -> Any:
    """The schema below ``name``: a structured node, a list's item template, None for a plain
    value (or a list of plain values, or a free mapping), ``_UNKNOWN`` if there is no such key."""
    if isinstance(node, ListConfig):
        if not name.isdigit():
            return _UNKNOWN
        item = node._metadata.element_type
        return OmegaConf.structured(item) if dataclasses.is_dataclass(item) else None
    if not _is_structured(node) or name not in node:
        return _UNKNOWN
    child = node._get_node(name)
    return child if _is_structured(child) or isinstance(child, ListConfig) else None


def _exists(node: Any, names: Sequence[str]) -> bool:
    return all((node := _schema_child(node, name)) is not _UNKNOWN for name in names)


def _schema_names(node: Any) -> list[str]:
    return [str(name) for name in node] if _is_structured(node) else []


@functools.cache
def _all_paths() -> tuple[tuple[str, ...], ...]:
    """Every key path of the schema outside lists (a list's items have no fixed position)."""

    def walk(node: Any, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        paths = []
        for name in _schema_names(node):
            paths.append((*prefix, name))
            child = _schema_child(node, name)
            if _is_structured(child):
                paths.extend(walk(child, (*prefix, name)))
        return paths

    return tuple(walk(_schema(), ()))


def _extend(found: list[str], rest: list[str]) -> list[str]:
    """``found`` followed by the names of ``rest`` that exist (or nearly) below it."""
    node: Any = _schema()
    for name in found:
        node = _schema_child(node, name)
    for name in rest:
        if _schema_child(node, name) is _UNKNOWN:
            match = difflib.get_close_matches(name, _schema_names(node), n=1, cutoff=0.6)
            if not match:
                break
            name = match[0]
        found.append(name)
        node = _schema_child(node, name)
        if node is None:
            break
    return found


def _likeness(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def _render(parts: Sequence[str]) -> str:
    """``["DATASETS", "SOURCES", "1", "RATIO"]`` -> ``DATASETS.SOURCES[1].RATIO``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else f".{part}" if text else part
    return text


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML text (what ``config show`` prints and a run folder keeps); a
    ``Choice`` key is written as its plain value, so the text loads again."""
    return OmegaConf.to_yaml(cfg)
