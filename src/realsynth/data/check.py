"""``realsynth data check``: find broken annotations and images before training starts.

:func:`check_dataset` returns a :class:`CheckReport` with a summary (images, objects, relations,
per-class and per-predicate counts) and every problem with its location. Errors make
``exit_code`` 1; warnings alone keep it 0.

Problem codes: ``missing_file``, ``invalid_file``, ``duplicate_id``, ``missing_image``,
``unreadable_image``, ``size_mismatch``, ``bad_box``, ``empty_box``, ``box_outside_image``,
``unknown_image``, ``unknown_category``, ``unknown_predicate``, ``unknown_annotation``,
``cross_image_relation``, ``self_relation`` (warning), ``duplicate_relation`` (warning),
``no_relations`` (warning).

Image files are found with one ``os.scandir`` per folder rather than one stat per file, so a
100k-image file is checked in seconds; ``check_image_content=False`` skips opening the images.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

TEXT_PROBLEMS_PER_CODE = 10


@dataclass(frozen=True)
class Problem:
    """One finding: a stable ``code``, where it is, and what is wrong."""

    code: str
    location: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "location": self.location, "message": self.message}


@dataclass
class CheckReport:
    """Summary and problems of one checked dataset."""

    path: str
    format: str
    num_images: int = 0
    num_objects: int = 0
    num_relations: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    predicate_counts: dict[str, int] = field(default_factory=dict)
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, code: str, location: str, message: str) -> None:
        self.errors.append(Problem(code, location, message))

    def warn(self, code: str, location: str, message: str) -> None:
        self.warnings.append(Problem(code, location, message))

    @property
    def exit_code(self) -> int:
        return 1 if self.errors else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "num_images": self.num_images,
            "num_objects": self.num_objects,
            "num_relations": self.num_relations,
            "class_counts": dict(self.class_counts),
            "predicate_counts": dict(self.predicate_counts),
            "num_errors": len(self.errors),
            "num_warnings": len(self.warnings),
            "errors": [p.to_dict() for p in self.errors],
            "warnings": [p.to_dict() for p in self.warnings],
            "exit_code": self.exit_code,
        }

    def format_text(self, max_per_code: int = TEXT_PROBLEMS_PER_CODE) -> str:
        """Human-readable report; at most ``max_per_code`` problems shown per code."""
        lines = [
            f"{self.format} dataset: {self.path}",
            f"  images: {self.num_images}  objects: {self.num_objects}  "
            f"relations: {self.num_relations}",
        ]
        for title, counts in (
            ("classes", self.class_counts),
            ("predicates", self.predicate_counts),
        ):
            if counts:
                body = ", ".join(f"{name}={n}" for name, n in counts.items())
                lines.append(f"  {title} ({len(counts)}): {body}")
        for title, problems in (("ERRORS", self.errors), ("WARNINGS", self.warnings)):
            lines.append(f"{title}: {len(problems)}")
            lines.extend(_format_problems(problems, max_per_code))
        lines.append("result: " + ("FAILED" if self.errors else "OK"))
        return "\n".join(lines)


def _format_problems(problems: list[Problem], max_per_code: int) -> list[str]:
    by_code: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_code[p.code].append(p)
    lines = []
    for code, items in by_code.items():
        lines.append(f"  [{code}] x{len(items)}")
        lines.extend(f"    {p.location}: {p.message}" for p in items[:max_per_code])
        if len(items) > max_per_code:
            lines.append(f"    ... {len(items) - max_per_code} more")
    return lines


def count_names(counts: Mapping[int, int], names: list[str]) -> dict[str, int]:
    """Counts by 0-based index -> counts by name, in name order (zeros included)."""
    return {name: int(counts.get(i, 0)) for i, name in enumerate(names)}


def list_files(root: Path, relative_names: Iterable[str]) -> set[str]:
    """The subset of ``relative_names`` that exist as files under ``root``, found with one
    ``os.scandir`` per distinct parent folder."""
    by_parent: dict[str, list[str]] = defaultdict(list)
    for name in relative_names:
        parent, _, base = name.replace("\\", "/").rpartition("/")
        by_parent[parent].append(name)
    present: set[str] = set()
    for parent, names in by_parent.items():
        folder = root / parent if parent else root
        try:
            with os.scandir(folder) as entries:
                files = {e.name for e in entries if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            continue
        present.update(n for n in names if n.replace("\\", "/").rpartition("/")[2] in files)
    return present


def read_image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header, after PIL's structural ``verify()``.

    Raises:
        OSError: unreadable or corrupt file (PIL's errors re-raised as OSError).
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
    report: CheckReport,
    root: Path,
    entries: list[tuple[str, str, int, int]],
    *,
    check_content: bool,
    size_mismatch_is_error: bool = True,
) -> None:
    """Adds ``missing_image`` / ``unreadable_image`` / ``size_mismatch`` problems.

    Args:
        entries: (location, relative file name, annotated width, annotated height) per image.
    """
    present = list_files(root, (name for _, name, _, _ in entries))
    for location, name, width, height in entries:
        if name not in present:
            report.error("missing_image", location, f"image file not found: {root / name}")
            continue
        if not check_content:
            continue
        try:
            actual = read_image_size(root / name)
        except OSError as exc:
            report.error("unreadable_image", location, f"cannot read {root / name}: {exc}")
            continue
        if actual != (width, height):
            add = report.error if size_mismatch_is_error else report.warn
            add(
                "size_mismatch",
                location,
                f"{root / name} is {actual[0]}x{actual[1]} (w x h), "
                f"annotation says {width}x{height}",
            )


def detect_format(path: Path) -> str:
    """relcoco for a ``.json`` file, vg150 for a folder with ``VG-SGG*.h5``.

    Raises:
        ValueError: neither applies.
    """
    if path.is_file() and path.suffix.lower() == ".json":
        return "relcoco"
    if path.is_dir() and any(path.glob("VG-SGG*.h5")):
        return "vg150"
    raise ValueError(
        f"cannot tell the format of {path}: expected a relcoco .json file or a folder with "
        "VG-SGG*.h5 (pass format='relcoco' or 'vg150')"
    )


def check_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    image_root: str | Path | None = None,
    check_image_content: bool = True,
) -> CheckReport:
    """Checks a dataset and returns every problem found.

    Args:
        path: relcoco annotation JSON, or the VG150 folder (the three files and ``VG_100K/``).
        format: "relcoco" or "vg150"; detected from ``path`` when None.
        image_root: image folder; default ``images/`` beside the JSON (relcoco) or
            ``PATH/VG_100K`` (vg150).
        check_image_content: open every image (readability and size); False checks existence only.

    Raises:
        ValueError: unknown format, or the format cannot be detected.
    """
    # Imported here: the per-format checkers import CheckReport from this module.
    from realsynth.data.check_relcoco import check_relcoco
    from realsynth.data.check_vg150 import check_vg150

    path = Path(path)
    fmt = format or detect_format(path)
    if fmt == "relcoco":
        root = Path(image_root) if image_root is not None else path.parent / "images"
        return check_relcoco(path, root, check_image_content=check_image_content)
    if fmt == "vg150":
        root = Path(image_root) if image_root is not None else path / "VG_100K"
        return check_vg150(path, root, check_image_content=check_image_content)
    raise ValueError(f"unknown dataset format {fmt!r}; expected 'relcoco' or 'vg150'")
