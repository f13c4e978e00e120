"""OmegaConf's errors as messages a user can act on: the full key, the shape expected, the values
of a ``Choice`` key, and a "did you mean" suggestion of a key that exists in the schema.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError
from omegaconf.nodes import EnumNode

from realsynth.config.choices import Choice
from realsynth.config.keys import key_parts, render_key
from realsynth.config.schema import RENAMED_KEYS, RunConfig


def first_line(exc: OmegaConfBaseException) -> str:
    text = getattr(exc, "msg", None) or str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def shape_error(cfg: Any, other: Any, prefix: str = "") -> str | None:
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
        if isinstance(target, DictConfig) and (found := shape_error(target, value, f"{key}.")):
            return found
    return None


def _kind_of(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"the value {value!r}"


def choice_error(exc: ValidationError, key: str) -> str | None:
    """``KEY must be one of a, b, c, got 'x'`` when OmegaConf refused the value of a ``Choice``
    key (a wrong string, a number, null), else None."""
    node = exc.child_node
    if not (isinstance(node, EnumNode) and issubclass(node.enum_type, Choice)):
        return None
    return f"{key} must be one of {node.enum_type.allowed()}, got {exc.value!r}"


def path_of_list_item(other: Any, key: str) -> str:
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


def full_key(exc: OmegaConfBaseException) -> str:
    return str(getattr(exc, "full_key", None) or getattr(exc, "key", "?"))


def suggestion(key: str) -> str:
    """`` (did you mean K?)`` with K a full key path that exists in the schema, or ``""``.

    The known part of ``key`` is kept; the first unknown name is looked up beside it (a close
    name), or anywhere in the schema (the same name, then a close one), and the names after it
    are matched under what was found, as far as they match.
    """
    if key in RENAMED_KEYS:
        return f" (renamed to {RENAMED_KEYS[key]})"
    parts = key_parts(key)
    node: Any = _schema()
    depth = 0
    while depth < len(parts) and (child := _schema_child(node, parts[depth])) is not _UNKNOWN:
        node, depth = child, depth + 1
    if depth == len(parts) or depth == 0 and not parts:
        return ""
    if node is None:  # names below a plain value: the value's own key
        return f" (did you mean {render_key(parts[:depth])}?)"
    unknown, rest, typed = parts[depth], parts[depth + 1 :], ".".join(parts)
    if isinstance(node, ListConfig) and _exists(_schema_child(node, "0"), parts[depth:]):
        return f" (did you mean {render_key([*parts[:depth], '0', *parts[depth:]])}?)"
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
    return f" (did you mean {render_key(_extend(list(found), rest))}?)"


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
