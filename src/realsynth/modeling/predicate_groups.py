"""SpeaQ's groupwise query specialization: predicates split by frequency, queries per group.

SpeaQ (Kim et al., CVPR 2024; mlvlab/SpeaQ, ``SpeaQHungarianMatcher``) sorts the predicates by
their training frequency and splits them greedily: each of the first ``G - 1`` groups takes the
most frequent remaining predicates while its total stays strictly below half of what remains
(integer half); the last group takes the rest. The relation queries are divided among the groups
in proportion to the groups' totals (truncated, the remainder spread evenly with the extra ones
going to the last groups), in contiguous blocks of query indices: group 0 owns the first block.
A query may then only be matched to triplets of its own group while the group has queries
left: an image with more triplets (or copies) of a group than the group has queries matches the
rest to other groups' queries at the mask's large cost, as SpeaQ does.

Two guards SpeaQ does not have (its loop can produce them; realsynth refuses them instead):
every group holds at least one predicate (a predicate holding half of what remains would leave a
group empty) and at least one query (an error says which setting to change).

The counts are whatever the caller passes: realsynth passes the real training sources' predicate
counts (``PREDICATE_FREQUENCY_SOURCE``), never a table of VG150's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["PredicateGroups", "predicate_groups", "queries_per_group", "split_by_frequency"]


def split_by_frequency(counts: Sequence[int], num_groups: int) -> list[list[int]]:
    """Predicate ids per group, most frequent group first (SpeaQ's greedy halving).

    Args:
        counts: [R] training count of every foreground predicate (>= 0).
        num_groups: G, 1 <= G <= R.

    Returns:
        G lists of predicate ids (each sorted by descending count, ties by id).

    Raises:
        ValueError: a count is negative, or G is outside [1, R].
    """
    values = np.asarray(counts, dtype=np.int64)
    if values.ndim != 1 or (values < 0).any():
        raise ValueError(f"predicate counts must be a list of integers >= 0, got {counts!r}")
    if not 1 <= num_groups <= len(values):
        raise ValueError(
            f"NUM_GROUPS={num_groups}: need 1 .. {len(values)} groups for {len(values)} predicates"
        )
    order = sorted(range(len(values)), key=lambda r: (-int(values[r]), r))
    groups, start = [], 0
    for g in range(num_groups - 1):
        half = int(values[order[start:]].sum()) // 2
        stop, total = start, 0
        while stop < len(order) and total + int(values[order[stop]]) < half:
            total += int(values[order[stop]])
            stop += 1
        # At least one predicate here, and one left for each later group.
        stop = min(max(stop, start + 1), len(order) - (num_groups - 1 - g))
        groups.append(order[start:stop])
        start = stop
    groups.append(order[start:])
    return groups


def queries_per_group(totals: Sequence[int], num_queries: int) -> list[int]:
    """Relation queries of each group: ``floor(S_g * N / sum S)``, then the remainder.

    The remainder ``N - sum`` is spread as SpeaQ's ``fill_list``: every group gets
    ``remainder // G`` more, and the last ``remainder % G`` groups one more again.

    Raises:
        ValueError: a group would get no query.
    """
    totals = [int(t) for t in totals]
    whole = sum(totals)
    if whole <= 0:
        raise ValueError("predicate groups: the training counts are all 0 (no relations)")
    out = [t * num_queries // whole for t in totals]
    quotient, remainder = divmod(num_queries - sum(out), len(out))
    out = [n + quotient for n in out]
    for i in range(remainder):
        out[-1 - i] += 1
    empty = [g for g, n in enumerate(out) if n == 0]
    if empty:
        raise ValueError(
            f"predicate groups {empty} get no query of {num_queries} (their predicates are too "
            "rare): lower NUM_GROUPS or raise the number of relation queries (MULTIPLY_QUERY)"
        )
    return out


@dataclass(frozen=True)
class PredicateGroups:
    """The group of every predicate and of every relation query.

    Attributes:
        predicate_group: int64 [R], group of each foreground predicate.
        query_group: int64 [Q], group of each relation query (contiguous blocks).
        members: predicate ids of each group.
        queries: queries of each group.
    """

    predicate_group: Tensor
    query_group: Tensor
    members: list[list[int]]
    queries: list[int]

    def on(self, device: torch.device) -> PredicateGroups:
        """The same groups with their tensors on ``device`` (copied once per device)."""
        if self.query_group.device == device:
            return self
        return PredicateGroups(
            self.predicate_group.to(device), self.query_group.to(device), self.members, self.queries
        )

    def allowed(self, predicates: Tensor) -> Tensor:
        """Bool [Q, T]: query q may match a triplet of predicate ``predicates[t]``.

        Args:
            predicates: int64 [T] foreground predicate ids, on the groups' device.
        """
        groups = self.predicate_group[predicates]
        return self.query_group[:, None] == groups[None, :]


def predicate_groups(counts: Sequence[int], num_groups: int, num_queries: int) -> PredicateGroups:
    """Split predicates by ``counts`` into ``num_groups`` groups and ``num_queries`` queries."""
    members = split_by_frequency(counts, num_groups)
    queries = queries_per_group([sum(int(counts[r]) for r in m) for m in members], num_queries)
    predicate_group = torch.empty(len(counts), dtype=torch.int64)
    for g, ids in enumerate(members):
        predicate_group[ids] = g
    query_group = torch.repeat_interleave(torch.arange(num_groups), torch.tensor(queries))
    return PredicateGroups(predicate_group, query_group, members, queries)
