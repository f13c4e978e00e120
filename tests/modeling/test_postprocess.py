"""Model outputs -> ranked triplets: hand-computed scores, boxes, duplicates, top-k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from realsynth.modeling.postprocess import ground_truth_from_target, relation_predictions


def logits(*probabilities):
    return torch.log(torch.tensor(probabilities, dtype=torch.float64)).float()


def two_query_outputs(second_subject_box=(0.3, 0.3, 0.2, 0.2)):
    """B=1, Q=2, R=2, C=2; softmax probabilities are the numbers written here."""
    return {
        "relation_logits": logits([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]),
        "relation_subject_logits": logits([[0.8, 0.1, 0.1], [0.04, 0.06, 0.9]]),
        "relation_object_logits": logits([[0.2, 0.5, 0.3], [0.9, 0.06, 0.04]]),
        "relation_subject_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.4], list(second_subject_box)]]),
        "relation_object_boxes": torch.tensor([[[0.25, 0.75, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]]),
    }


def test_scores_labels_and_pixel_boxes_are_hand_computed():
    (pred,) = relation_predictions(two_query_outputs(), torch.tensor([[100, 200]]))
    # q0: predicate 0 (0.6) x subject 0 (0.8) x object 1 (0.5); q1: best non-background
    # predicate 1 (0.2) x subject 1 (0.06) x object 0 (0.9), background ignored.
    assert pred["scores"] == pytest.approx([0.24, 0.0108], rel=1e-5)
    assert pred["predicates"].tolist() == [0, 1]
    assert pred["subject_labels"].tolist() == [0, 1]
    assert pred["object_labels"].tolist() == [1, 0]
    # (cx, cy, w, h) = (0.5, 0.5, 0.2, 0.4) in a 100 (h) x 200 (w) image.
    assert pred["subject_boxes"][0] == pytest.approx([80.0, 30.0, 120.0, 70.0])
    assert pred["object_boxes"][0] == pytest.approx([0.0, 50.0, 100.0, 100.0])
    assert pred["pair_scores"] == pytest.approx([0.4, 0.054], rel=1e-5)
    assert pred["pair_predicate_scores"] == pytest.approx(
        np.array([[0.6, 0.3], [0.1, 0.2]]), rel=1e-5
    )
    assert pred["subject_boxes"].dtype == np.float32 and pred["predicates"].dtype == np.int64


def test_normalized_boxes_without_image_sizes():
    (pred,) = relation_predictions(two_query_outputs(), None)
    assert pred["subject_boxes"][0] == pytest.approx([0.4, 0.3, 0.6, 0.7])


def test_several_predicates_per_query_are_flattened_and_sorted():
    (pred,) = relation_predictions(two_query_outputs(), None, predicates_per_query=2)
    assert pred["scores"] == pytest.approx([0.24, 0.12, 0.0108, 0.0054], rel=1e-5)
    assert pred["predicates"].tolist() == [0, 1, 1, 0]
    assert pred["subject_labels"].tolist() == [0, 0, 1, 1]
    (top,) = relation_predictions(two_query_outputs(), None, predicates_per_query=2, top_k=3)
    assert top["scores"] == pytest.approx([0.24, 0.12, 0.0108], rel=1e-5)


def duplicate_outputs(shift: float):
    """Three queries: 0 and 1 share labels, 1's boxes are shifted by ``shift``; 2 differs."""
    box = [0.5, 0.5, 0.4, 0.4]
    moved = [0.5 + shift, 0.5, 0.4, 0.4]
    return {
        "relation_logits": logits([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.1, 0.7, 0.2]]),
        "relation_subject_logits": logits([[0.9, 0.05, 0.05]] * 3),
        "relation_object_logits": logits([[0.05, 0.9, 0.05]] * 3),
        "relation_subject_boxes": torch.tensor([[box, moved, box]]),
        "relation_object_boxes": torch.tensor([[box, moved, box]]),
    }


def test_identical_triplets_keep_only_the_best_scored():
    (pred,) = relation_predictions(duplicate_outputs(0.0), None)
    assert pred["predicates"].tolist() == [0, 1]
    assert pred["scores"] == pytest.approx([0.9 * 0.81, 0.7 * 0.81], rel=1e-5)
    # Shifted boxes are a different triplet at the default (identical boxes only) ...
    (shifted,) = relation_predictions(duplicate_outputs(0.05), None)
    assert shifted["predicates"].tolist() == [0, 0, 1]
    # ... and a duplicate under a looser IoU rule (IoU of the shifted boxes is 0.35/0.45).
    (loose,) = relation_predictions(duplicate_outputs(0.05), None, duplicate_iou=0.7)
    assert loose["predicates"].tolist() == [0, 1]


def test_duplicates_do_not_use_up_top_k():
    (pred,) = relation_predictions(duplicate_outputs(0.0), None, top_k=2)
    assert pred["predicates"].tolist() == [0, 1]


def test_batch_gives_one_dict_per_image_in_order():
    one = two_query_outputs()
    two = duplicate_outputs(0.0)
    batch = {key: torch.cat((one[key], two[key][:, :2])) for key in one}
    first, second = relation_predictions(batch, torch.tensor([[100, 200], [10, 10]]))
    assert first["scores"] == pytest.approx([0.24, 0.0108], rel=1e-5)
    assert second["subject_boxes"][0] == pytest.approx([3.0, 3.0, 7.0, 7.0])


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="top_k"):
        relation_predictions(two_query_outputs(), None, top_k=0)
    with pytest.raises(ValueError, match="image_sizes"):
        relation_predictions(two_query_outputs(), torch.tensor([100, 200]))
    outputs = two_query_outputs()
    del outputs["relation_object_boxes"]
    with pytest.raises(ValueError, match="relation_object_boxes"):
        relation_predictions(outputs, None)


def test_ground_truth_from_target_normalized_or_in_the_annotated_pixels():
    target = {
        "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]),
        "eval_boxes": torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 50.0, 99.0, 99.0]]),
        "labels": torch.tensor([2, 0]),
        "relations": torch.tensor([[0, 1, 3]]),
    }
    gt = ground_truth_from_target(target, pixels=True)
    assert gt["boxes"].tolist() == [[80, 30, 120, 70], [0, 50, 99, 99]]  # taken as they are
    assert gt["labels"].tolist() == [2, 0] and gt["relations"].tolist() == [[0, 1, 3]]
    normalized = ground_truth_from_target(target, pixels=False)
    assert normalized["boxes"][0] == pytest.approx([0.4, 0.3, 0.6, 0.7])
    with pytest.raises(ValueError, match="relations"):
        ground_truth_from_target(
            {"boxes": target["boxes"], "labels": target["labels"]}, pixels=False
        )
    with pytest.raises(ValueError, match="eval_boxes"):
        ground_truth_from_target(
            {k: v for k, v in target.items() if k != "eval_boxes"}, pixels=True
        )
