"""Rules for the image files behind an annotation file: present, readable, of the annotated size.

Files are found with one ``os.scandir`` per folder rather than one ``stat`` per file, so the
existence check of a 100k-image dataset takes a fraction of a second.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from realsynth.data.problems import Findings


class ImageEntry(NamedTuple):
    """One image to check (a plain tuple: datasets list 10^5 of them).

    Attributes:
        name: file name relative to the image root.
        size: annotated (width, height) in pixels.
        image: the image's position in its dataset (what a problem spoils).
    """

    name: str
    size: tuple[int, int]
    image: int


def list_files(root: Path, relative_names: Iterable[str]) -> set[str]:
    """The subset of ``relative_names`` that exist as files under ``root``, found with one
    ``os.scandir`` per distinct parent folder (names without a folder: one ``os.listdir`` and a
    set intersection, the common case of 10^6 files in one folder)."""
    names = relative_names if isinstance(relative_names, list) else list(relative_names)
    joined = "\0".join(names)  # one search for a folder in any name, not one per name
    if "/" not in joined and "\\" not in joined:
        try:
            listed = set(os.listdir(root))
        except (FileNotFoundError, NotADirectoryError):
            return set()
        # listdir names folders too: an image name that is a folder passes here and fails,
        # named, when its pixels are read (a DirEntry per file would cost 10x the listing).
        return listed.intersection(names)
    by_parent: dict[str, list[str]] = defaultdict(list)
    for name in names:
        parent, _, _ = name.replace("\\", "/").rpartition("/")
        by_parent[parent].append(name)
    present: set[str] = set()
    for parent, group in by_parent.items():
        folder = root / parent if parent else root
        try:
            with os.scandir(folder) as entries:
                files = {e.name for e in entries if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            continue
        present.update(n for n in group if n.replace("\\", "/").rpartition("/")[2] in files)
    return present


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, after PIL's structural ``verify()``.

    Raises:
        OSError: unreadable or corrupt file (PIL's other errors re-raised as OSError).
    """
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
        return size
    except OSError:
        raise
    except Exception as exc:  # PIL raises SyntaxError/ValueError for some corrupt headers.
        raise OSError(str(exc)) from exc


def check_image_files(
    findings: Findings,
    root: Path,
    entries: Sequence[ImageEntry],
    locate: Callable[[int], str],
    *,
    check_content: bool,
    size_mismatch_is_error: bool = True,
) -> None:
    """Record ``missing_image`` and, with ``check_content``, ``unreadable_image`` and
    ``size_mismatch`` problems of ``entries`` (files relative to ``root``).

    ``locate(image)`` names where an image is listed (e.g. ``images[3] (id 4, a.png)``); it is
    called for problems only.

    ``size_mismatch_is_error=False`` makes a wrong size a warning (VG150, whose loader rescales
    the boxes as Scene-Graph-Benchmark does).
    """
    present = list_files(root, (e.name for e in entries))
    for entry in entries:
        if entry.name not in present:
            findings.error(
                "missing_image",
                locate(entry.image),
                f"image file not found: {root / entry.name}",
                entry.image,
            )
            continue
        if not check_content:
            continue
        path = root / entry.name
        try:
            actual = read_image_size(path)
        except OSError as exc:
            findings.error(
                "unreadable_image", locate(entry.image), f"cannot read {path}: {exc}", entry.image
            )
            continue
        if actual != entry.size:
            add = findings.error if size_mismatch_is_error else findings.warn
            add(
                "size_mismatch",
                locate(entry.image),
                f"{path} is {actual[0]}x{actual[1]} (w x h), "
                f"annotation says {entry.size[0]}x{entry.size[1]}",
                entry.image,
            )
