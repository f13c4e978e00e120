"""``realsynth data check``: find broken annotations and images before training starts.

:func:`check_dataset` applies the same rules the loaders apply (``formats/relcoco_rules.py``,
``formats/vg150_rules.py`` and :mod:`realsynth.data.image_files`), reports every problem with its
location (codes in :mod:`realsynth.data.problems`) and summarizes the dataset: images, objects,
relations, per-class and per-predicate counts of the valid entries.

Exit codes (``CheckReport.exit_code`` and the command's status): 0 clean (warnings allowed),
1 problems found. The command exits 2 when it cannot run at all (no such path, a format it cannot
tell, bad arguments). ``check_image_content=False`` checks that image files exist without opening
them, so a 100k-image file is checked in seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from realsynth.data.formats.relcoco import load_relcoco_json
from realsynth.data.formats.relcoco_fast import CleanRelCoco, clean_warnings, read_clean_relcoco
from realsynth.data.formats.relcoco_rules import image_location, index_relcoco
from realsynth.data.formats.vg150_files import (
    find_vg150_files,
    load_vg_dicts,
    load_vg_image_data,
    read_vg_h5,
)
from realsynth.data.formats.vg150_rules import check_vg150_arrays, row_location
from realsynth.data.image_files import ImageEntry, check_image_files
from realsynth.data.paths import printable
from realsynth.data.problems import Findings, Problem, summarize_problems
from realsynth.utils.gc_pause import gc_paused

TEXT_PROBLEMS_PER_CODE = 10


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
    findings: Findings = field(default_factory=Findings)

    @property
    def errors(self) -> list[Problem]:
        return self.findings.errors

    @property
    def warnings(self) -> list[Problem]:
        return self.findings.warnings

    @property
    def exit_code(self) -> int:
        """1 when there is an error, else 0."""
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
        """Human-readable report; at most ``max_per_code`` problems shown per code. File names
        that are not valid UTF-8 show their bytes as ``\\xNN`` (the text always prints)."""
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
            lines.extend(summarize_problems(problems, max_per_code))
        lines.append("result: " + ("FAILED" if self.errors else "OK"))
        return printable("\n".join(lines))


def count_names(counts: Mapping[int, int], names: list[str]) -> dict[str, int]:
    """Counts by 0-based index -> counts by name, in name order (zeros included)."""
    return {name: int(counts.get(i, 0)) for i, name in enumerate(names)}


def detect_format(path: Path) -> str:
    """relcoco for a ``.json`` file, vg150 for a folder with ``VG-SGG*.h5``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: neither applies (names the ``--format`` flag).
    """
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file() and path.suffix.lower() == ".json":
        return "relcoco"
    if path.is_dir() and any(path.glob("VG-SGG*.h5")):
        return "vg150"
    raise ValueError(
        f"cannot tell the format of {path}: expected a relcoco .json file or a folder with "
        "VG-SGG*.h5; name it with --format relcoco or --format vg150"
    )


def check_relcoco(ann_file: Path, image_root: Path, *, check_image_content: bool) -> CheckReport:
    """Check a relcoco file and its images under ``image_root`` (a clean file on the fast path:
    the same report, from columns)."""
    with gc_paused():
        clean = read_clean_relcoco(ann_file)
    if clean is not None:
        return _check_clean_relcoco(ann_file, image_root, clean, check_image_content)
    report = CheckReport(path=str(ann_file), format="relcoco")
    try:
        with gc_paused():
            data = load_relcoco_json(ann_file)
            index, report.findings = index_relcoco(data, ann_file)
    except ValueError as exc:
        report.findings.error("invalid_file", str(ann_file), str(exc).split(": ", 1)[-1])
        return report
    if index is None:
        return report
    report.num_images = len(data["images"])
    report.num_objects = len(data["annotations"])
    report.num_relations = len(data["relationships"])
    report.class_counts = count_names(index.class_counts, index.classes)
    report.predicate_counts = count_names(index.predicate_counts, index.predicates)
    entries = [
        ImageEntry(img["file_name"], (img["width"], img["height"]), k)
        for k, img in enumerate(index.images)
        if index.listed[k]
    ]
    check_image_files(
        report.findings,
        image_root,
        entries,
        lambda k: image_location(k, index.images[k]),
        check_content=check_image_content,
    )
    return report


def _check_clean_relcoco(
    ann_file: Path, image_root: Path, clean: CleanRelCoco, check_image_content: bool
) -> CheckReport:
    """The report of a file the fast path found clean: its warnings, counts and image files."""
    report = CheckReport(path=str(ann_file), format="relcoco", findings=clean_warnings(clean))
    report.num_images, report.num_objects = len(clean.image_ids), len(clean.labels)
    report.num_relations = len(clean.relations)
    counts = np.bincount(clean.labels, minlength=len(clean.classes))
    report.class_counts = count_names(dict(enumerate(counts.tolist())), clean.classes)
    counts = np.bincount(clean.relations[:, 2], minlength=len(clean.predicates))
    report.predicate_counts = count_names(dict(enumerate(counts.tolist())), clean.predicates)
    heights, widths = clean.sizes[:, 0].tolist(), clean.sizes[:, 1].tolist()
    entries = [
        ImageEntry(name, (w, h), k)
        for k, (name, w, h) in enumerate(zip(clean.names, widths, heights))
    ]
    ids = clean.image_ids.tolist()
    locate = lambda k: f"images[{k}] (id {ids[k]}, {clean.names[k]})"  # noqa: E731
    check_image_files(
        report.findings, image_root, entries, locate, check_content=check_image_content
    )
    return report


def check_vg150(folder: Path, image_root: Path, *, check_image_content: bool) -> CheckReport:
    """Check a VG150 folder and its images under ``image_root``."""
    report = CheckReport(path=str(folder), format="vg150")
    try:
        files = find_vg150_files(folder)
        classes, predicates = load_vg_dicts(files["dicts"])
        arrays = read_vg_h5(files["h5"])
        image_data = load_vg_image_data(files["image_data"], len(arrays.split))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        report.findings.error("invalid_file", str(folder), f"cannot read the VG150 files: {exc}")
        return report
    ids = np.array([int(e["image_id"]) for e in image_data], dtype=np.int64)
    sizes = np.array([[int(e["width"]), int(e["height"])] for e in image_data], dtype=np.int64)
    check_vg150_arrays(
        report.findings,
        arrays,
        ids,
        sizes,
        num_classes=len(classes),
        num_predicates=len(predicates),
    )
    owned = np.zeros(len(arrays.labels), dtype=bool)
    for first, last in zip(arrays.first_box.tolist(), arrays.last_box.tolist()):
        if 0 <= first <= last < len(owned):
            owned[first : last + 1] = True
    labels = arrays.labels[owned & (arrays.labels >= 1) & (arrays.labels <= len(classes))] - 1
    preds = arrays.predicates
    preds = preds[(preds >= 1) & (preds <= len(predicates))] - 1
    report.num_images, report.num_objects = len(ids), int(owned.sum())
    report.num_relations = len(arrays.predicates)
    report.class_counts = count_names(
        dict(enumerate(np.bincount(labels, minlength=len(classes)).tolist())), classes
    )
    report.predicate_counts = count_names(
        dict(enumerate(np.bincount(preds, minlength=len(predicates)).tolist())), predicates
    )
    entries = [
        ImageEntry(f"{ids[r]}.jpg", (int(sizes[r, 0]), int(sizes[r, 1])), r)
        for r in range(len(ids))
    ]
    check_image_files(
        report.findings,
        image_root,
        entries,
        lambda r: row_location(r, ids),
        check_content=check_image_content,
        size_mismatch_is_error=False,
    )
    return report


def check_dataset(
    path: str | Path,
    *,
    format: str | None = None,
    image_root: str | Path | None = None,
    check_image_content: bool = True,
) -> CheckReport:
    """Check a dataset and return every problem found.

    Args:
        path: relcoco annotation JSON, or the VG150 folder (the three files and ``VG_100K/``).
        format: "relcoco" or "vg150"; detected from ``path`` when None.
        image_root: image folder; default ``images/`` beside the JSON (relcoco) or
            ``PATH/VG_100K`` (vg150).
        check_image_content: open every image (readability and size); False checks existence only.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unknown format, or the format cannot be detected.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    fmt = format or detect_format(path)
    if fmt == "relcoco":
        root = Path(image_root) if image_root is not None else path.parent / "images"
        return check_relcoco(path, root, check_image_content=check_image_content)
    if fmt == "vg150":
        root = Path(image_root) if image_root is not None else path / "VG_100K"
        return check_vg150(path, root, check_image_content=check_image_content)
    raise ValueError(f"unknown dataset format {fmt!r}; use --format relcoco or --format vg150")
