"""Dotted config keys: ``A.B[1].C`` (or ``A.B.1.C``) and the names along its path."""

from __future__ import annotations

import re
from collections.abc import Sequence


def key_parts(key: str) -> list[str]:
    """``A.B[1].C`` or ``A.B.1.C`` -> ``["A", "B", "1", "C"]``."""
    return [part for part in re.sub(r"\[(\d+)\]", r".\1", key).split(".") if part]


def render_key(parts: Sequence[str]) -> str:
    """``["DATASETS", "SOURCES", "1", "RATIO"]`` -> ``DATASETS.SOURCES[1].RATIO``."""
    text = ""
    for part in parts:
        text += f"[{part}]" if part.isdigit() else f".{part}" if text else part
    return text
