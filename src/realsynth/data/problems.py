"""Problems found in a dataset, shared by ``realsynth data check`` and the loaders.

One set of rules per format (``formats/relcoco_rules.py``, ``formats/vg150_rules.py``) records
what is wrong in a :class:`Findings`; ``data check`` reports all of it, and a dataset built for
training either stops with :class:`DatasetProblems` (count and first locations of each kind) or,
with ``skip_bad_samples``, drops the images the problems belong to.

A problem belongs to an image when ``image`` is set (that image's position in the file's image
list, or its h5 row for VG150): skipping the image removes it. A problem with ``image=None``
concerns the whole file (a missing list, duplicate ids, an annotation of no image) and cannot be
skipped.

Problem codes: ``missing_file``, ``invalid_file``, ``duplicate_id``, ``missing_image``,
``unreadable_image``, ``size_mismatch``, ``bad_box``, ``empty_box``, ``box_outside_image``,
``unknown_image``, ``unknown_category``, ``unknown_predicate``, ``unknown_annotation``,
``cross_image_relation``, ``no_images``, ``invalid_weight`` (errors); ``self_relation``,
``duplicate_relation``, ``no_relations`` (warnings).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

SHOWN_PER_CODE = 5


@dataclass(frozen=True)
class Problem:
    """One finding: a stable ``code``, where it is, what is wrong and which image it spoils."""

    code: str
    location: str
    message: str
    image: int | None = None

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "location": self.location, "message": self.message}


@dataclass
class Findings:
    """Errors and warnings of one annotation file, in the order they were found."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    def error(self, code: str, location: str, message: str, image: int | None = None) -> None:
        self.errors.append(Problem(code, location, message, image))

    def warn(self, code: str, location: str, message: str, image: int | None = None) -> None:
        self.warnings.append(Problem(code, location, message, image))

    def extend(self, other: Findings) -> None:
        self.errors.extend(other.errors)
        self.warnings.extend(other.warnings)

    @property
    def file_errors(self) -> list[Problem]:
        """Errors that concern the whole file (no image to skip)."""
        return [p for p in self.errors if p.image is None]

    def bad_images(self) -> dict[int, Problem]:
        """Image position -> its first error, for every image with at least one error."""
        bad: dict[int, Problem] = {}
        for problem in self.errors:
            if problem.image is not None:
                bad.setdefault(problem.image, problem)
        return bad


def summarize_problems(problems: list[Problem], shown: int = SHOWN_PER_CODE) -> list[str]:
    """Lines ``[code] xN`` followed by the first ``shown`` locations and messages of each code."""
    by_code: dict[str, list[Problem]] = defaultdict(list)
    for p in problems:
        by_code[p.code].append(p)
    lines = []
    for code, items in by_code.items():
        lines.append(f"  [{code}] x{len(items)}")
        lines.extend(f"    {p.location}: {p.message}" for p in items[:shown])
        if len(items) > shown:
            lines.append(f"    ... {len(items) - shown} more")
    return lines


class DatasetProblems(ValueError):
    """A dataset that cannot be trained on as it is; the message lists what is wrong and where."""

    def __init__(self, what: str, findings: Findings, *, skippable: bool) -> None:
        errors = findings.errors
        images = len(findings.bad_images())
        if skippable:
            advice = (
                f"fix them (`realsynth data check` lists every one) or set "
                f"DATALOADER.SKIP_BAD_SAMPLES: true to skip the {images} image(s) they affect"
            )
        else:
            advice = "these concern the whole file and cannot be skipped; fix the file"
        head = f"{what}: {len(errors)} problem(s); {advice}:"
        super().__init__("\n".join([head, *summarize_problems(errors)]))
        self.findings = findings


def raise_or_skip(what: str, findings: Findings, *, skip: bool) -> dict[int, Problem]:
    """Apply the bad-sample policy to a file's findings.

    Args:
        what: the file (and source) to name in the message.
        findings: the file's problems.
        skip: drop the images with problems instead of stopping.

    Returns:
        Image position -> its first error, for the images to leave out (empty when clean).

    Raises:
        DatasetProblems: a whole-file error, or any error when ``skip`` is False.
    """
    if findings.file_errors:
        raise DatasetProblems(what, Findings(errors=findings.file_errors), skippable=False)
    if findings.errors and not skip:
        raise DatasetProblems(what, findings, skippable=True)
    return findings.bad_images()
