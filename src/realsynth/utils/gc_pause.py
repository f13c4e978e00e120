"""Pausing Python's cyclic garbage collector while large acyclic structures are built.

Parsing a 100k-image annotation file creates millions of small objects; each allocation
threshold triggers a collection that scans all of them again, for nothing (JSON holds no
cycles). Pausing collection for the parse and the index cuts the start-up time by a third.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector inside the block (restoring its previous state after)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
