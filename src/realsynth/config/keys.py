"""Dotted config keys: ``A.B[1].C`` (or ``A.B.1.C``) and the names along its path."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


def key_parts(key: str) -> list[str]:
    """``A.B[1].C`` or ``A.B.1.C`` -> ``["A", "B", "1", "C"]``."""
    return [part for part in re.sub(r"\[(\d+)\]", r".\1", key).split(".") if part]


def render_key(parts: Sequence[str]) -> str:
    """``["DATASETS", "SOURCES", "1", "RATIO"]`` -> ``DATASETS.SOURCES[1].RATIO``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else f".{part}" if text else part
    return text


def flat_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    """A config container as ``{"SOLVER.BASE_LR": 0.001, "DATASETS.SOURCES[0].PATH": ...}``;
    a list of plain values is one value."""
    if isinstance(node, dict):
        items = [(f"{prefix}.{k}" if prefix else str(k), v) for k, v in node.items()]
    elif isinstance(node, list) and any(isinstance(v, dict | list) for v in node):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(node)]
    else:
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flat_keys(value, key))
    return flat
