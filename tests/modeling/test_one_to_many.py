"""SpeaQ's quality-aware multi-assignment and group mask: hand cases, properties, criterion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from criterion_cases import make_outputs, make_targets, match
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.modeling.criterion import RelationCriterion
from realsynth.modeling.heads import RELATION_HEADS
from realsynth.modeling.matcher import HungarianMatcher, assign_copies
from realsynth.modeling.one_to_many import QualityAwareMatcher, dynamic_copies, triplet_quality
from realsynth.modeling.predicate_groups import predicate_groups
from realsynth.modeling.set_targets import flatten_targets


def _one_triplet_target() -> dict:
    # Subject box cxcywh (0.5, 0.5, 0.2, 0.2); object xyxy (0, 0, 0.2, 0.2); predicate 1.
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.2, 0.2]])
    return {"boxes": boxes, "labels": torch.tensor([0, 1]), "relations": torch.tensor([[0, 1, 1]])}


@pytest.mark.parametrize(
    ("combine", "expected"),
    [("max", 1.0), ("min", 1 / 3), ("gm", math.sqrt(1 / 3)), ("am", 2 / 3)],
)
def test_quality_by_hand(combine: str, expected: float) -> None:
    flat = flatten_targets([_one_triplet_target()], RELATION_HEADS, [3, 2, 2], device="cpu")
    subject = torch.tensor([[[0.5, 0.5, 0.2, 0.2]]])  # IoU 1 with the true subject
    # xyxy (0.1, 0, 0.3, 0.2): intersection 0.02, union 0.06, IoU 1/3 with the true object.
    obj = torch.tensor([[[0.2, 0.1, 0.2, 0.2]]])
    quality = triplet_quality(subject, obj, None, flat, combine=combine, predicate_weight=0.0)
    assert quality.shape == (1, 1, 1)
    assert float(quality) == pytest.approx(expected, abs=1e-6)
    probs = torch.tensor([[[0.4]]])  # p(predicate 1) under the query
    weighted = triplet_quality(subject, obj, probs, flat, combine=combine, predicate_weight=-0.5)
    assert float(weighted) == pytest.approx(expected - 0.2, abs=1e-6)
    # Outside the query's group the IoUs count 0 but the predicate term stays (as in SpeaQ).
    masked = triplet_quality(
        subject,
        obj,
        probs,
        flat,
        combine=combine,
        predicate_weight=-0.5,
        allowed=torch.zeros(1, 1, 1, dtype=torch.bool),
    )
    assert float(masked) == pytest.approx(-0.2, abs=1e-6)


def test_copies_are_the_floor_of_the_top_k_sum_and_at_least_one() -> None:
    # [B=1, Q=5, T=3]: top-4 sums 3.0, 0.75 and 2.5.
    quality = torch.tensor(
        [[[1.0, 0.3, 0.5], [0.75, 0.2, 0.5], [0.5, 0.1, 0.5], [0.75, 0.15, 1.0], [0.25, 0.0, 0.0]]]
    )
    assert dynamic_copies(quality, 4).tolist() == [[3, 1, 2]]
    assert dynamic_copies(quality, 1).tolist() == [[1, 1, 1]]


def test_copies_beyond_the_queries_are_capped_largest_first() -> None:
    cost = np.arange(12, dtype=np.float64).reshape(4, 3)
    # 7 copies for 4 queries: (3, 3, 1) -> (2, 3, 1) -> (2, 2, 1) -> (1, 2, 1).
    rows, cols = assign_copies(cost, np.array([3, 3, 1]))
    assert sorted(cols.tolist()) == [0, 1, 1, 2]
    assert len(set(rows.tolist())) == 4


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 12), st.integers(0, 6), st.integers(0, 2**31 - 1))
def test_every_target_is_matched_its_copies_and_no_query_twice(queries, extra, seed) -> None:
    rng = np.random.default_rng(seed)
    targets = int(rng.integers(1, queries + 1))
    copies = rng.integers(1, 4, size=targets)
    rows, cols = assign_copies(rng.normal(size=(queries, targets)), copies)
    assert len(set(rows.tolist())) == len(rows)  # no query matched twice
    matched = np.bincount(cols, minlength=targets)
    assert (matched >= 1).all()
    if copies.sum() <= queries:
        assert matched.tolist() == copies.tolist()
    else:
        assert matched.sum() == queries


def _relation_batch(seed: int, queries: int = 12):
    outputs = make_outputs(seed, 2, queries, 3, 4, aux=1)
    targets = make_targets(seed, [(3, 3), (4, 2)], 3, 4, weights=[0.5, 1.0])
    return outputs, targets


@pytest.mark.parametrize("seed", range(4))
def test_static_copies_match_every_triplet_k_times(seed: int) -> None:
    outputs, targets = _relation_batch(seed)
    for (q, t), target in zip(
        match(QualityAwareMatcher(scheme="static", top_k=3), outputs, targets), targets
    ):
        assert torch.bincount(t, minlength=len(target["relations"])).tolist() == [3] * len(
            target["relations"]
        )
        assert len(set(q.tolist())) == len(q)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["none", "static", "dynamic"]))
def test_the_group_mask_never_matches_across_groups(seed: int, scheme: str) -> None:
    groups = predicate_groups([50, 30, 15, 5], 2, 12)  # {0}: 6 queries, {1, 2, 3}: 6
    outputs, targets = _relation_batch(seed)
    matcher = QualityAwareMatcher(scheme=scheme, top_k=2, groups=groups, predicate_weight=-0.5)
    for (q, t), target in zip(match(matcher, outputs, targets), targets):
        predicates = target["relations"][t, 2]
        assert (groups.query_group[q] == groups.predicate_group[predicates]).all()


def test_one_to_one_quality_matcher_is_todays_criterion_exactly() -> None:
    outputs, targets = _relation_batch(0)
    ours = RelationCriterion(3, 4, matcher=QualityAwareMatcher(scheme="none"))(outputs, targets)
    today = RelationCriterion(3, 4, matcher=HungarianMatcher())(outputs, targets)
    assert ours.keys() == today.keys()
    for key in today:
        assert torch.equal(ours[key], today[key]), key


@pytest.mark.parametrize("normalization", ["count", "weight"])
def test_duplicated_pairs_carry_their_images_weight_in_the_box_divisor(normalization) -> None:
    outputs, targets = _relation_batch(1)
    matcher = QualityAwareMatcher(scheme="static", top_k=2)
    losses = RelationCriterion(3, 4, matcher=matcher, normalization=normalization)(outputs, targets)
    weights = [0.5, 1.0]
    total, divisor = 0.0, 0.0
    for b, (q, t) in enumerate(match(matcher, outputs, targets)):
        target = targets[b]
        subject = target["boxes"][target["relations"][t, 0]]
        l1 = (outputs["relation_subject_boxes"][b, q] - subject).abs().sum(dim=1)
        total += weights[b] * float(l1.detach().sum())
        divisor += len(q) if normalization == "count" else weights[b] * len(q)
    assert divisor == (10 if normalization == "count" else 7.0)  # 2 x (3 + 2) duplicated pairs
    assert float(losses["loss_bbox_subject"]) == pytest.approx(total / divisor, rel=1e-5)


def test_shared_matching_solves_the_costs_summed_over_layers() -> None:
    from scipy.optimize import linear_sum_assignment

    outputs, targets = _relation_batch(2)
    flat = flatten_targets(targets, RELATION_HEADS, [4, 3, 3], device="cpu")
    matcher = HungarianMatcher()
    shared = matcher.assign(outputs, flat, RELATION_HEADS, extra_layers=outputs["aux_outputs"])
    cost = matcher.cost_matrix(outputs, flat, RELATION_HEADS) + matcher.cost_matrix(
        outputs["aux_outputs"][0], flat, RELATION_HEADS
    )
    for b, (q, t) in enumerate(shared):
        rows, cols = linear_sum_assignment(cost[b, :, : flat.sizes[b]].detach().numpy())
        assert q.tolist() == rows.tolist() and t.tolist() == cols.tolist()
    # The criterion then uses that one matching for the final and the auxiliary layer.
    crit = RelationCriterion(3, 4, match_independent=False)
    losses = crit(outputs, targets)
    alone = RelationCriterion(3, 4)({**outputs["aux_outputs"][0], "aux_outputs": []}, targets)
    independent = RelationCriterion(3, 4)(outputs, targets)
    assert not torch.equal(losses["loss_bbox_subject_0"], independent["loss_bbox_subject_0"])
    assert torch.equal(independent["loss_bbox_subject_0"], alone["loss_bbox_subject"])


def test_matching_with_copies_never_sees_the_loss_weights() -> None:
    outputs, targets = _relation_batch(3)
    matcher = QualityAwareMatcher(scheme="dynamic", top_k=4, combine="max", predicate_weight=-0.5)
    reweighted = [{**t, "loss_weight": w} for t, w in zip(targets, (0.0, 7.0))]
    for (q1, t1), (q2, t2) in zip(
        match(matcher, outputs, targets), match(matcher, outputs, reweighted)
    ):
        assert torch.equal(q1, q2) and torch.equal(t1, t2)
