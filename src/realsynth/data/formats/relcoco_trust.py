"""relcoco's per-instance trust fields: ``loss_weight`` and ``ignore`` on annotations and
relationships (the rules, and the arrays the loader keeps).

An annotation (a box) or a relationship may carry ``"loss_weight"`` (a finite number >= 0,
default 1) and ``"ignore"`` (``true`` / ``false``, default false). A triplet's own weight is its
relationship's weight times its subject's and object's box weights; a triplet whose relationship
or either box is ignored is ignored (see ``modeling/set_targets.py``). Files without any of these
fields load exactly as before (no trust arrays at all).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from realsynth.data.problems import Findings

TRUST_KEYS = ("loss_weight", "ignore")


@dataclass(frozen=True)
class InstanceTrust:
    """Per box (B) and per relation (M) trust, in the index's order.

    Attributes:
        box_weights / relation_weights: float32 [B] / [M].
        box_ignore / relation_ignore: bool [B] / [M].
    """

    box_weights: np.ndarray
    box_ignore: np.ndarray
    relation_weights: np.ndarray
    relation_ignore: np.ndarray

    def take(self, boxes: np.ndarray | slice, relations: np.ndarray | slice) -> InstanceTrust:
        """The trust of the given box and relation positions."""
        return InstanceTrust(
            self.box_weights[boxes],
            self.box_ignore[boxes],
            self.relation_weights[relations],
            self.relation_ignore[relations],
        )


def _fields(
    findings: Findings, entries: list, positions: list[int], owners: list[int], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(weights, ignore) of ``entries[positions]``; a bad value is an error of its image."""
    weights = np.ones(len(positions), dtype=np.float32)
    ignore = np.zeros(len(positions), dtype=bool)
    for i, k in enumerate(positions):
        entry = entries[k]
        if "loss_weight" in entry:
            value = entry["loss_weight"]
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0:
                findings.error(
                    "invalid_weight",
                    f"{where}[{k}]",
                    f"loss_weight must be a finite number >= 0, got {value!r}",
                    owners[i],
                )
                continue
            weights[i] = value
        if "ignore" in entry:
            if not isinstance(entry["ignore"], bool):
                findings.error(
                    "invalid_weight",
                    f"{where}[{k}]",
                    f"ignore must be true or false, got {entry['ignore']!r}",
                    owners[i],
                )
                continue
            ignore[i] = entry["ignore"]
    return weights, ignore


def index_trust(
    findings: Findings,
    annotations: list,
    box_positions: list[int],
    box_owners: list[int],
    relationships: list,
    relation_positions: list[int],
    relation_owners: list[int],
) -> InstanceTrust | None:
    """The trust of the indexed boxes and relations, or None when no entry has a trust field.

    Args:
        findings: where bad values are recorded (code ``invalid_weight``).
        annotations / relationships: the file's lists.
        box_positions / relation_positions: the position in its list of every indexed entry.
        box_owners / relation_owners: the image position of every indexed entry.
    """
    used = any(key in annotations[k] for k in box_positions for key in TRUST_KEYS) or any(
        key in relationships[k] for k in relation_positions for key in TRUST_KEYS
    )
    if not used:
        return None
    box_w, box_i = _fields(findings, annotations, box_positions, box_owners, "annotations")
    rel_w, rel_i = _fields(
        findings, relationships, relation_positions, relation_owners, "relationships"
    )
    return InstanceTrust(box_w, box_i, rel_w, rel_i)
