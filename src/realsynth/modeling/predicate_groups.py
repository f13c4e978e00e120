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
group empty) and at least one query. A grouping that leaves a group without a predicate or a
query raises :class:`GroupingError`, which says which groups, why, and the largest
``num_groups`` and smallest ``num_queries`` that work.

The counts are whatever the caller passes: realsynth passes the real training sources' predicate
counts (``PREDICATE_FREQUENCY_SOURCE``), never a table of VG150's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "GroupingError",
    "PredicateGroups",
    "predicate_groups",
    "queries_per_group",
    "split_by_frequency",
]


class GroupingError(ValueError):
    """Some group would get no predicate or no query.

    Attributes:
        reason: what is wrong, naming the groups (no argument names, for the builder to reuse).
        num_groups / num_queries: the arguments given.
        max_groups: the most groups (below ``num_groups``) that work with ``num_queries``.
        min_queries: a number of queries from which on ``num_groups`` groups always work (every
            group's share of the relations times it is at least one query), or None when no
            number does (a group without a predicate, or without a relation).
    """

    def __init__(
        self,
        reason: str,
        *,
        num_groups: int,
        num_queries: int,
        max_groups: int,
        min_queries: int | None,
    ) -> None:
        self.reason, self.num_groups, self.num_queries = reason, num_groups, num_queries
        self.max_groups, self.min_queries = max_groups, min_queries
        more = f" or num_queries >= {min_queries}" if min_queries is not None else ""
        super().__init__(f"{reason}: use num_groups <= {max_groups}{more}")


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
            f"num_groups={num_groups}: need 1 .. {len(values)} groups for {len(values)} "
            "predicates (every group holds at least one)"
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
        ValueError: a group would get no query (fewer groups or more ``num_queries`` help).
    """
    out = _allocate(totals, num_queries)
    if (reason := _no_query(totals, out, num_queries)) is not None:
        raise ValueError(f"{reason}: use fewer groups or more num_queries")
    return out


def _allocate(totals: Sequence[int], num_queries: int) -> list[int]:
    """SpeaQ's allocation (see :func:`queries_per_group`), zeros included."""
    totals = [int(t) for t in totals]
    whole = sum(totals)
    if whole <= 0:
        raise ValueError("predicate groups: the training counts are all 0 (no relations)")
    out = [t * num_queries // whole for t in totals]
    quotient, remainder = divmod(num_queries - sum(out), len(out))
    out = [n + quotient for n in out]
    for i in range(remainder):
        out[-1 - i] += 1
    return out


def _no_query(totals: Sequence[int], queries: Sequence[int], num_queries: int) -> str | None:
    """Why some groups get no query (naming them, most frequent group 0), or None."""
    empty = [g for g, n in enumerate(queries) if n == 0]
    if not empty:
        return None
    whole, groups = sum(int(t) for t in totals), len(totals)
    unseen = [g for g in empty if int(totals[g]) == 0]
    if unseen:
        return (
            f"predicate group(s) {unseen} of {groups} hold only predicates with no training "
            "relation and get no query"
        )
    shares = ", ".join(f"{g}: {int(totals[g]) / whole:.2%}" for g in empty)
    if num_queries < groups:
        return (
            f"{num_queries} queries for {groups} predicate groups: group(s) {empty} get no query "
            f"(shares of the relations {shares}); every group needs one"
        )
    return (
        f"predicate group(s) {empty} of {groups} get no query of {num_queries}: their share of "
        f"the relations ({shares}) is below one query's (1/{num_queries} = "
        f"{1 / num_queries:.2%}) and the queries left over go to the last groups"
    )


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
    """Split predicates by ``counts`` into ``num_groups`` groups and ``num_queries`` queries.

    Raises:
        GroupingError: a group would get no predicate (``num_groups`` above the number of
            predicates) or no query; it names the groups and what would work.
        ValueError: the counts are all 0, negative, or ``num_groups`` < 1.
    """
    if (reason := _grouping_problem(counts, num_groups, num_queries)) is not None:
        raise GroupingError(
            reason,
            num_groups=num_groups,
            num_queries=num_queries,
            max_groups=next(
                g
                for g in range(min(num_groups, len(counts)), 0, -1)
                if _grouping_problem(counts, g, num_queries) is None
            ),
            min_queries=_queries_for_every_group(counts, num_groups),
        )
    members = split_by_frequency(counts, num_groups)
    queries = queries_per_group([sum(int(counts[r]) for r in m) for m in members], num_queries)
    predicate_group = torch.empty(len(counts), dtype=torch.int64)
    for g, ids in enumerate(members):
        predicate_group[ids] = g
    query_group = torch.repeat_interleave(torch.arange(num_groups), torch.tensor(queries))
    return PredicateGroups(predicate_group, query_group, members, queries)


def _grouping_problem(counts: Sequence[int], num_groups: int, num_queries: int) -> str | None:
    """Why ``num_groups`` groups and ``num_queries`` queries do not work, or None."""
    if num_groups > len(counts) >= 1:
        return (
            f"{num_groups} predicate groups for {len(counts)} predicates: group(s) "
            f"{list(range(len(counts), num_groups))} get no predicate"
        )
    members = split_by_frequency(counts, num_groups)
    totals = [sum(int(counts[r]) for r in m) for m in members]
    return _no_query(totals, _allocate(totals, num_queries), num_queries)


def _queries_for_every_group(counts: Sequence[int], num_groups: int) -> int | None:
    """The number of queries from which on every group's proportional part is at least one
    query (so any number of queries from it on works); None when a group has no predicate or
    no relation."""
    if num_groups > len(counts):
        return None
    members = split_by_frequency(counts, num_groups)
    totals = [sum(int(counts[r]) for r in m) for m in members]
    if min(totals) <= 0:
        return None
    return max(-(-sum(totals) // t) for t in totals)
