"""SpeaQ's predicate groups and query allocation, against SpeaQ's own VG150 numbers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.modeling.predicate_groups import (
    GroupingError,
    predicate_groups,
    queries_per_group,
    split_by_frequency,
)

# VG150 training predicate counts by (alphabetical, 0-based) predicate id, as in SpeaQ's matcher
# table: "on" (id 30) 712409, "has" (19) 277936, "in" (21) 251756, ...
VG150_COUNTS = {
    30: 712409, 19: 277936, 21: 251756, 29: 146339, 47: 136099, 28: 96589, 49: 66425, 0: 47341,
    20: 42722, 7: 41356, 42: 22596, 39: 18643, 48: 15457, 40: 14185, 22: 13715, 6: 10190,
    5: 9903, 18: 9894, 32: 9317, 15: 9145, 37: 8856, 10: 5213, 13: 4688, 45: 4613, 36: 3810,
    12: 3806, 23: 3739, 3: 3624, 46: 3490, 4: 3477, 9: 3411, 8: 3288, 33: 3095, 2: 3092,
    24: 3083, 16: 2945, 34: 2721, 41: 2517, 26: 2380, 11: 2312, 27: 2253, 38: 2241, 35: 2065,
    1: 1996, 14: 1973, 43: 1925, 31: 1914, 25: 1869, 17: 1853, 44: 1740,
}  # fmt: skip
COUNTS = [VG150_COUNTS[r] for r in range(50)]


def test_vg150_four_groups_as_speaq_splits_them() -> None:
    groups = split_by_frequency(COUNTS, 4)
    assert [len(g) for g in groups] == [2, 2, 3, 43]
    assert groups[:3] == [[30, 19], [21, 29], [47, 28, 49]]  # on, has | in, of | wearing ...
    assert [sum(COUNTS[r] for r in g) for g in groups] == [990345, 398095, 299113, 358453]
    assert [len(g) for g in split_by_frequency(COUNTS, 5)] == [2, 2, 3, 5, 38]


def test_vg150_queries_per_group_of_speaqs_recipe() -> None:
    # 300 queries: floor(S_g * 300 / sum) = 145, 58, 43, 52; the 2 left go to the last groups.
    assert queries_per_group([990345, 398095, 299113, 358453], 300) == [145, 58, 44, 53]
    grouped = predicate_groups(COUNTS, 4, 300)
    assert grouped.query_group.tolist() == [0] * 145 + [1] * 58 + [2] * 44 + [3] * 53
    assert grouped.predicate_group[30] == 0 and grouped.predicate_group[44] == 3


def test_every_group_keeps_a_predicate_when_one_holds_half_the_mass() -> None:
    # SpeaQ's loop would leave group 0 empty here: 100 alone is not below half of 130.
    assert split_by_frequency([100, 20, 10], 3) == [[0], [1], [2]]
    assert split_by_frequency([5, 5, 5, 5], 1) == [[0, 1, 2, 3]]


def test_allowed_pairs_follow_the_groups() -> None:
    grouped = predicate_groups([10, 30, 60], 2, 4)  # groups {2}, {1, 0}: 60 vs 40 of 100
    assert grouped.members == [[2], [1, 0]]
    assert grouped.queries == [2, 2]
    allowed = grouped.allowed(torch.tensor([0, 2]))
    assert allowed.tolist() == [[False, True], [False, True], [True, False], [True, False]]


def test_bad_settings_name_what_to_change() -> None:
    with pytest.raises(ValueError, match="num_groups=4: need 1 .. 3 groups"):
        split_by_frequency([1, 2, 3], 4)
    with pytest.raises(
        ValueError, match=r"group\(s\) \[1\] of 3 get no query of 3: .*\(1: 0\.05%\)"
    ):
        queries_per_group([1000, 1, 1000], 3)
    with pytest.raises(ValueError, match="all 0"):
        queries_per_group([0, 0], 4)


@pytest.mark.parametrize(
    ("counts", "num_groups", "num_queries", "reason", "max_groups", "min_queries"),
    [
        # VG150, 5 groups, 5 queries: the second most frequent group (19.46%) gets none.
        (
            COUNTS,
            5,
            5,
            "predicate group(s) [1] of 5 get no query of 5: their share of the relations "
            "(1: 19.46%) is below one query's (1/5 = 20.00%) and the queries left over go to "
            "the last groups",
            4,
            12,
        ),
        # Fewer queries than groups: the frequent groups 1 and 2 go without.
        (
            [50, 25, 12, 7, 6],
            5,
            3,
            "3 queries for 5 predicate groups: group(s) [1, 2] get no query (shares of the "
            "relations 1: 25.00%, 2: 12.00%); every group needs one",
            3,
            17,
        ),
        # The rare end: group 1 holds 1.92% of the relations, less than one of 9 queries.
        (
            [500, 10, 10],
            3,
            9,
            "predicate group(s) [1] of 3 get no query of 9: their share of the relations "
            "(1: 1.92%) is below one query's (1/9 = 11.11%) and the queries left over go to "
            "the last groups",
            2,
            52,
        ),
        # Predicates never seen in training: no number of queries helps, fewer groups do.
        (
            [10, 5, 0, 0],
            4,
            12,
            "predicate group(s) [2, 3] of 4 hold only predicates with no training relation and "
            "get no query",
            2,
            None,
        ),
        (
            [1, 2, 3],
            4,
            10,
            "4 predicate groups for 3 predicates: group(s) [3] get no predicate",
            3,
            None,
        ),
    ],
)
def test_a_group_without_a_query_or_predicate_says_which_and_what_works(
    counts, num_groups, num_queries, reason, max_groups, min_queries
) -> None:
    with pytest.raises(GroupingError) as info:
        predicate_groups(counts, num_groups, num_queries)
    error = info.value
    assert (error.reason, error.max_groups, error.min_queries) == (reason, max_groups, min_queries)
    more = f" or num_queries >= {min_queries}" if min_queries is not None else ""
    assert str(error) == f"{reason}: use num_groups <= {max_groups}{more}"
    assert "rare" not in str(error) and "NUM_GROUPS" not in str(error)  # arguments, no keys
    predicate_groups(counts, max_groups, num_queries)  # what it proposes works
    if min_queries is not None:
        predicate_groups(counts, num_groups, min_queries)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 1000), min_size=1, max_size=12),
    st.integers(1, 14),
    st.integers(1, 60),
)
def test_what_a_grouping_error_proposes_works(counts, num_groups, num_queries) -> None:
    if sum(counts) == 0:
        return
    try:
        predicate_groups(counts, num_groups, num_queries)
    except GroupingError as error:
        assert 1 <= error.max_groups < num_groups
        predicate_groups(counts, error.max_groups, num_queries)
        if error.min_queries is not None:
            assert error.min_queries > num_queries
            for more in range(error.min_queries, error.min_queries + 5):
                predicate_groups(counts, num_groups, more)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10_000), min_size=1, max_size=30),
    st.integers(1, 30),
    st.integers(1, 400),
)
def test_groups_partition_the_predicates_and_queries(counts, num_groups, num_queries) -> None:
    num_groups = min(num_groups, len(counts))
    groups = split_by_frequency(counts, num_groups)
    assert sorted(r for g in groups for r in g) == list(range(len(counts)))
    assert all(groups)  # no empty group
    flat = [counts[r] for g in groups for r in g]
    assert flat == sorted(flat, reverse=True)  # the groups follow the frequency order
    totals = [sum(counts[r] for r in g) for g in groups]
    if sum(totals) == 0:
        return
    try:
        queries = queries_per_group(totals, num_queries)
    except ValueError:
        return
    assert sum(queries) == num_queries and min(queries) >= 1
