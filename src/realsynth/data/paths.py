"""Paths that are not valid UTF-8, as messages and reports show them.

On Linux a file name is bytes; Python gives one that is not valid UTF-8 (``caf\\xe9.png``) as a
``str`` with "surrogate escapes" (``os.fsdecode(b"caf\\xe9") == "caf\\udce9"``). Such a ``str``
opens the file, but writing it to a UTF-8 terminal, a YAML file or anything else encoded
strictly fails with ``UnicodeEncodeError``. These helpers turn it into text that always writes.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_utf8(path: str | Path) -> bool:
    """Whether ``path`` encodes to UTF-8 (False for a name with surrogate-escaped bytes)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(path: str | Path) -> str:
    """``path`` as a message names it: itself when valid UTF-8, else the ``repr`` of its bytes
    (``b'/data/caf\\xe9'``), which any terminal prints and which names the file exactly."""
    return str(path) if is_utf8(path) else repr(os.fsencode(path))


def printable(text: str) -> str:
    """``text`` with the bytes of names that are not UTF-8 written as ``\\xNN`` (any other
    unencodable character as ``\\uNNNN``), so that a strict UTF-8 stream can write it."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (JSON "\ud800")
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
