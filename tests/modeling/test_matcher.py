"""HungarianMatcher: golden cases, batched == per image, the reference cost, and bad input."""

import pytest
import torch
from criterion_cases import make_outputs, make_targets, match, reference_match, slice_batch

from realsynth.modeling.matcher import HungarianMatcher

C, R, Q = 6, 5, 10


def _pairs(result):
    return [(q.tolist(), t.tolist()) for q, t in result]


def test_entity_mode_recovers_a_permutation():
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.3, 0.2, 0.2], [0.5, 0.8, 0.3, 0.1]])
    labels = torch.tensor([0, 2, 1])
    order = [2, 0, 1]  # query q predicts target order[q]
    logits = torch.full((1, 3, 4), -5.0)
    logits[0, torch.arange(3), labels[order]] = 5.0
    outputs = {"pred_logits": logits, "pred_boxes": boxes[order][None]}
    ((queries, targets),) = match(HungarianMatcher(), outputs, [{"boxes": boxes, "labels": labels}])
    assert queries.dtype == torch.int64 and targets.dtype == torch.int64
    assert queries.tolist() == [0, 1, 2] and targets.tolist() == order


def test_relation_mode_uses_triplet_targets():
    boxes = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.2]])
    labels = torch.tensor([1, 3])
    relations = torch.tensor([[0, 1, 2], [1, 0, 4]])
    outputs = {
        "relation_logits": torch.zeros(1, 2, R + 1),
        "relation_subject_logits": torch.zeros(1, 2, C + 1),
        "relation_object_logits": torch.zeros(1, 2, C + 1),
        # query 0 looks like triplet 1 (subject box 1, object box 0), query 1 like triplet 0
        "relation_subject_boxes": boxes[[1, 0]][None],
        "relation_object_boxes": boxes[[0, 1]][None],
    }
    target = {"boxes": boxes, "labels": labels, "relations": relations}
    assert _pairs(match(HungarianMatcher(), outputs, [target])) == [([0, 1], [1, 0])]
    # Only the predicate logits differ now: classes alone decide.
    outputs["relation_subject_boxes"] = torch.full((1, 2, 4), 0.5)
    outputs["relation_object_boxes"] = torch.full((1, 2, 4), 0.5)
    outputs["relation_logits"][0, 0, 2] = 4.0
    assert _pairs(match(HungarianMatcher(), outputs, [target])) == [([0, 1], [0, 1])]


@pytest.mark.parametrize("entity", [False, True])
def test_batched_equals_reference_and_per_image(entity):
    layout = [(3, 4), (0, 0), (5, 9), (2, 1), (4, 10), (2, 0)]
    targets = make_targets(1, layout, C, R)
    outputs = make_outputs(2, len(layout), Q, C, R, entity=entity)
    if entity:
        outputs = {k: outputs[k] for k in ("pred_logits", "pred_boxes")}
    matcher = HungarianMatcher()
    batched = _pairs(match(matcher, outputs, targets))
    for b, target in enumerate(targets):
        single = _pairs(match(matcher, slice_batch(outputs, b, b + 1), [target]))
        assert single == [batched[b]]
        rows, cols = reference_match(outputs, target, not entity, b)
        assert batched[b] == ([int(r) for r in rows], [int(c) for c in cols])


def test_empty_batch_targets():
    outputs = make_outputs(3, 2, Q, C, R)
    result = match(HungarianMatcher(), outputs, make_targets(4, [(0, 0), (2, 0)], C, R))
    assert [len(q) for q, _ in result] == [0, 0]


def test_more_targets_than_queries():
    outputs = make_outputs(3, 2, 3, C, R)
    with pytest.raises(ValueError, match=r"images \[1\] have \[4\] relation targets .* only 3"):
        match(HungarianMatcher(), outputs, make_targets(4, [(2, 1), (3, 4)], C, R))


def test_nan_predictions():
    outputs = make_outputs(5, 2, Q, C, R)
    with torch.no_grad():
        outputs["relation_object_boxes"][1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf in the relation predictions of image 1"):
        match(HungarianMatcher(), outputs, make_targets(6, [(2, 1), (3, 2)], C, R))


def test_invalid_targets_are_named():
    outputs = make_outputs(7, 2, Q, C, R)
    targets = make_targets(8, [(2, 1), (3, 2)], C, R)
    targets[1]["relations"][1, 1] = 3
    with pytest.raises(
        ValueError, match=r"image 1 relation target 1: relation subject/object index"
    ):
        match(HungarianMatcher(), outputs, targets)
    targets = make_targets(8, [(2, 1), (3, 2)], C, R)
    targets[0]["boxes"][0, 2] = -0.1
    with pytest.raises(ValueError, match=r"image 0 relation target 0: box width/height negative"):
        match(HungarianMatcher(), outputs, [targets[0]] * 2)
    targets = make_targets(8, [(2, 1), (3, 2)], C, R)
    targets[1]["relations"][0, 2] = R
    with pytest.raises(ValueError, match=r"image 1 relation target 0: class id outside"):
        match(HungarianMatcher(), outputs, targets)


def test_cost_weights_change_the_assignment_but_assignments_stay_one_to_one():
    layout = [(6, 8)]
    targets = make_targets(9, layout, C, R)
    outputs = make_outputs(10, 1, Q, C, R)
    by_class = _pairs(match(HungarianMatcher(1.0, 0.0, 0.0), outputs, targets))
    by_box = _pairs(match(HungarianMatcher(0.0, 1.0, 0.0), outputs, targets))
    for queries, cols in by_class + by_box:
        assert len(set(queries)) == len(queries) == 8 and sorted(cols) == list(range(8))
    assert by_class != by_box
    with pytest.raises(ValueError, match="all costs are 0"):
        HungarianMatcher(0.0, 0.0, 0.0)
