"""Where a config value came from: which layer (saved config, file, command line) set a key.

``load_config`` records the keys each layer sets, in merge order, and blames a bad value on the
last layer that set it, or on "defaults" when none did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from realsynth.config.keys import key_parts


class Origins:
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
        wanted = [tuple(key_parts(key)) for key in keys]
        if not wanted:  # an error about the whole config: the last layer given
            return self._layers[-1][0] if self._layers else "defaults"
        for origin, paths in reversed(self._layers):
            for key in wanted:
                if any(key[: len(path)] == path[: len(key)] for path in paths):
                    return origin
        return "defaults"


def set_paths(node: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The keys a loaded file or override sets: its leaves; a list is set as a whole (a merge
    replaces it), and so is an empty mapping."""
    if isinstance(node, dict) and node:
        return [p for key, value in node.items() for p in set_paths(value, (*prefix, str(key)))]
    return [prefix] if prefix else []  # an empty file sets nothing
