"""Golden and property tests of the SGB-style recall evaluator on hand-checked graphs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.evaluation.recall import SceneGraphEvaluator
from realsynth.evaluation.triplet_matching import match_triplets
from realsynth.utils.tables import format_table

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 0.0, 30.0, 10.0]
C = [0.0, 20.0, 10.0, 30.0]
FAR = [50.0, 50.0, 60.0, 60.0]


def truth(boxes, labels, relations):
    return {
        "boxes": np.array(boxes, dtype=np.float64).reshape(-1, 4),
        "labels": np.array(labels, dtype=np.int64),
        "relations": np.array(relations, dtype=np.int64).reshape(-1, 3),
    }


def prediction(triplets, subject_boxes, object_boxes, scores=None, num_predicates=3, pairs=None):
    """Ranked triplets (subject label, predicate, object label); pairs default to one per triplet
    with a one-hot predicate score, which makes no-graph-constraint recall equal R@K."""
    triplets = np.array(triplets, dtype=np.int64).reshape(-1, 3)
    n = len(triplets)
    scores = np.linspace(1.0, 0.5, n) if scores is None else np.array(scores, dtype=np.float64)
    out = {
        "subject_boxes": np.array(subject_boxes, dtype=np.float64).reshape(-1, 4),
        "object_boxes": np.array(object_boxes, dtype=np.float64).reshape(-1, 4),
        "subject_labels": triplets[:, 0],
        "predicates": triplets[:, 1],
        "object_labels": triplets[:, 2],
        "scores": scores,
    }
    if pairs is None:
        one_hot = np.zeros((n, num_predicates))
        one_hot[np.arange(n), triplets[:, 1]] = 1.0
        pairs = {
            "pair_subject_boxes": out["subject_boxes"],
            "pair_object_boxes": out["object_boxes"],
            "pair_subject_labels": triplets[:, 0],
            "pair_object_labels": triplets[:, 2],
            "pair_scores": scores,
            "pair_predicate_scores": one_hot,
        }
    return {**out, **pairs}


def test_match_requires_all_labels_and_both_ious_at_least_half():
    gt = np.array([[0, 1, 2]])
    half = [0.0, 0.0, 10.0, 20.0]  # contains A, twice its area: IoU exactly 0.5
    below = [0.0, 0.0, 10.0, 20.5]
    preds = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 2], [1, 1, 2], [0, 2, 2]])
    subj = np.array([half, below, A, A, A])
    obj = np.array([B, B, half, B, B])
    hit = match_triplets(gt, np.array([A]), np.array([B]), preds, subj, obj)
    # 0: IoU 0.5 counts; 1: IoU 100/205 does not; 2: object misses B; 3, 4: a label differs.
    assert hit.tolist() == [[True, False, False, False, False]]


def test_recall_at_k_counts_hit_ground_truth_in_top_k():
    gt = truth([A, B, C], [0, 1, 2], [[0, 1, 0], [1, 2, 1], [0, 2, 2]])
    pred = prediction(
        [[0, 0, 1], [2, 2, 2], [1, 1, 2], [0, 2, 2]],
        [A, A, B, A],
        [B, B, C, C],
    )
    ev = SceneGraphEvaluator(3, ks=(1, 2, 3, 4), protocol="continuous")
    ev.update([pred], [gt])
    out = ev.summarize()
    assert [out[f"R@{k}"] for k in (1, 2, 3, 4)] == pytest.approx([1 / 3, 1 / 3, 2 / 3, 1.0])


def test_one_prediction_may_hit_several_ground_truth_triplets():
    # The same triplet annotated twice (SGB keeps duplicates in test ground truth).
    gt = truth([A, B], [0, 1], [[0, 1, 0], [0, 1, 0], [1, 0, 1]])
    pred = prediction([[0, 0, 1]], [A], [B])
    ev = SceneGraphEvaluator(3, ks=(1,), protocol="continuous")
    ev.update([pred], [gt])
    assert ev.summarize()["R@1"] == pytest.approx(2 / 3)


def test_duplicate_predictions_count_a_ground_truth_triplet_once():
    gt = truth([A, B], [0, 1], [[0, 1, 0], [1, 0, 1]])
    pred = prediction([[0, 0, 1], [0, 0, 1], [1, 1, 0]], [A, A, B], [B, B, A])
    ev = SceneGraphEvaluator(3, ks=(2, 3), protocol="continuous")
    ev.update([pred], [gt])
    out = ev.summarize()
    assert out["R@2"] == pytest.approx(0.5)  # the duplicate wastes the second slot
    assert out["R@3"] == pytest.approx(1.0)


def test_predictions_are_ranked_by_score_not_by_position():
    gt = truth([A, B], [0, 1], [[0, 1, 0]])
    pred = prediction([[2, 2, 2], [0, 0, 1]], [A, A], [B, B], scores=[0.1, 0.9])
    ev = SceneGraphEvaluator(3, ks=(1,), protocol="continuous")
    ev.update([pred], [gt])
    assert ev.summarize()["R@1"] == 1.0


def test_images_without_ground_truth_relations_are_skipped():
    hit_all = truth([A, B], [0, 1], [[0, 1, 0]])
    empty = truth([A], [0], np.zeros((0, 3)))
    pred = prediction([[0, 0, 1]], [A], [B])
    ev = SceneGraphEvaluator(3, ks=(1,), protocol="continuous")
    ev.update([pred, prediction([[1, 1, 1]], [A], [A])], [hit_all, empty])
    assert ev.summarize()["R@1"] == 1.0
    assert ev.num_images == 1
    assert len(ev.records) == 2
    with pytest.raises(ValueError, match="ground-truth relation"):
        only_empty = SceneGraphEvaluator(3, protocol="continuous")
        only_empty.update([pred], [empty])
        only_empty.summarize()


def test_mean_recall_averages_per_image_predicate_recall_over_all_predicates():
    # Image 1: predicate 0 twice (1 of 2 hit), predicate 1 once (hit).
    img1 = truth([A, B, C], [0, 1, 2], [[0, 1, 0], [0, 2, 0], [1, 2, 1]])
    pred1 = prediction([[0, 0, 1], [1, 1, 2]], [A, B], [B, C])
    # Image 2: predicate 0 once (hit).
    img2 = truth([A, B], [0, 1], [[0, 1, 0]])
    pred2 = prediction([[0, 0, 1]], [A], [B])
    ev = SceneGraphEvaluator(3, ks=(5,), protocol="continuous")
    ev.update([pred1, pred2], [img1, img2])
    out = ev.summarize()
    # predicate 0: mean(0.5, 1.0) = 0.75; predicate 1: 1.0; predicate 2 never occurs: 0.
    assert out["mR@5"] == pytest.approx((0.75 + 1.0 + 0.0) / 3)
    # R@5 per image: 2/3 and 1 -> mean 5/6 (differs from the pooled 3/4).
    assert out["R@5"] == pytest.approx(5 / 6)
    per_predicate = ev.per_predicate_recall()[0]
    assert per_predicate[:2] == pytest.approx([0.75, 1.0]) and np.isnan(per_predicate[2])


def test_no_graph_constraint_ranks_every_predicate_of_every_pair():
    gt = truth([A, B], [0, 1], [[0, 1, 2]])
    # One pair; its best predicate (0) is wrong, the second best (2) is right.
    pairs = {
        "pair_subject_boxes": np.array([A, C]),
        "pair_object_boxes": np.array([B, B]),
        "pair_subject_labels": np.array([0, 1]),
        "pair_object_labels": np.array([1, 1]),
        "pair_scores": np.array([0.9, 1.0]),
        "pair_predicate_scores": np.array([[0.6, 0.1, 0.3], [0.5, 0.4, 0.1]]),
    }
    # Overall: pair0 -> 0.54, 0.09, 0.27; pair1 -> 0.5, 0.4, 0.1. The hit (pair0, 2) ranks 4th.
    pred = prediction([[0, 0, 1], [1, 0, 1]], [A, C], [B, B], scores=[0.54, 0.5], pairs=pairs)
    ev = SceneGraphEvaluator(3, ks=(3, 4), protocol="continuous")
    ev.update([pred], [gt])
    out = ev.summarize()
    assert out["R@3"] == 0.0 and out["R@4"] == 0.0
    assert out["ngR@3"] == 0.0 and out["ngR@4"] == 1.0


def test_zero_shot_recall_only_counts_zero_shot_ground_truth():
    gt = truth([A, B], [0, 1], [[0, 1, 0], [1, 0, 1]])  # triplets (0,0,1) and (1,1,0)
    pred = prediction([[1, 1, 0]], [B], [A])
    no_zs = truth([A, B], [0, 1], [[0, 1, 0]])
    ev = SceneGraphEvaluator(
        3, ks=(1,), zero_shot_triplets=[(1, 1, 0), (2, 2, 2)], protocol="continuous"
    )
    ev.update([pred, pred], [gt, no_zs])
    out = ev.summarize()
    assert out["zsR@1"] == 1.0  # only the first image holds a zero-shot triplet, and it is hit
    assert out["R@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert "zsR@1" not in _summary_without_zero_shot(pred, gt)


def _summary_without_zero_shot(pred, gt):
    ev = SceneGraphEvaluator(3, ks=(1,), protocol="continuous")
    ev.update([pred], [gt])
    return ev.summarize()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="ks"):
        SceneGraphEvaluator(3, ks=(0, 5), protocol="continuous")
    ev = SceneGraphEvaluator(3, ks=(1,), protocol="continuous")
    gt = truth([A, B], [0, 1], [[0, 5, 0]])
    with pytest.raises(ValueError, match="image 0 .*outside"):
        ev.update([prediction([[0, 0, 1]], [A], [B])], [gt])
    good = truth([A, B], [0, 1], [[0, 1, 0]])
    with pytest.raises(ValueError, match=r"predicates must lie in \[0, 3\)"):
        ev.update([prediction([[0, 3, 1]], [A], [B], num_predicates=4)], [good])
    with pytest.raises(ValueError, match="records must be"):
        ev.add_records(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="protocol must be one of"):
        SceneGraphEvaluator(3, protocol="vg")


def test_format_table_shows_percentages_in_metric_order():
    table = format_table(
        {"real": {"mR@50": 0.25, "R@50": 0.5, "R@20": 0.125}, "synthetic": {"R@20": 1.0}}
    )
    lines = table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "source",
        "R@20 %",
        "R@50 %",
        "mR@50 %",
    ]
    assert [c.strip() for c in lines[2].strip("|").split("|")] == [
        "real",
        "12.50",
        "50.00",
        "25.00",
    ]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == ["synthetic", "100.00", "-", "-"]


def _random_image(rng: np.random.Generator):
    boxes = [A, B, C, FAR]
    n_rel = int(rng.integers(0, 4))
    relations = np.stack(
        [rng.integers(0, 4, n_rel), rng.integers(0, 4, n_rel), rng.integers(0, 3, n_rel)], 1
    )
    gt = truth(boxes, rng.integers(0, 2, 4), relations)
    n_pred = int(rng.integers(1, 6))
    triplets = np.stack(
        [rng.integers(0, 2, n_pred), rng.integers(0, 3, n_pred), rng.integers(0, 2, n_pred)], 1
    )
    picks = rng.integers(0, 4, (2, n_pred))
    pred = prediction(
        triplets, np.array(boxes)[picks[0]], np.array(boxes)[picks[1]], rng.random(n_pred)
    )
    return pred, gt


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), split=st.integers(0, 6))
def test_gathered_records_summarize_like_one_process(seed, split):
    rng = np.random.default_rng(seed)
    images = [_random_image(rng) for _ in range(6)]
    images.append((prediction([[0, 0, 1]], [A], [B]), truth([A, B], [0, 1], [[0, 1, 0]])))
    whole = SceneGraphEvaluator(3, ks=(1, 2, 5), protocol="continuous")
    whole.update([p for p, _ in images], [g for _, g in images])
    first, second = (
        SceneGraphEvaluator(3, ks=(1, 2, 5), protocol="continuous"),
        SceneGraphEvaluator(3, ks=(1, 2, 5), protocol="continuous"),
    )
    first.update([p for p, _ in images[:split]], [g for _, g in images[:split]])
    second.update([p for p, _ in images[split:]], [g for _, g in images[split:]])
    gathered = SceneGraphEvaluator(3, ks=(1, 2, 5), protocol="continuous")
    gathered.add_records(np.concatenate([second.records, first.records]))
    first.add_records(second.records)
    expected = whole.summarize()
    assert first.summarize() == pytest.approx(expected)
    assert gathered.summarize() == pytest.approx(expected)
    for name in ("R", "ngR", "mR"):
        values = [expected[f"{name}@{k}"] for k in (1, 2, 5)]
        assert values == sorted(values) and all(0.0 <= v <= 1.0 for v in values)


def test_an_image_without_predictions_scores_zero():
    gt = truth([A, B], [0, 1], [[0, 1, 0]])
    empty = prediction(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 4)), scores=[])
    full = prediction([[0, 0, 1]], [A], [B])
    ev = SceneGraphEvaluator(3, ks=(1,), protocol="continuous")
    ev.update([empty, full], [gt, gt])
    assert ev.summarize() == pytest.approx({"R@1": 0.5, "ngR@1": 0.5, "mR@1": 0.5 / 3})
