"""Scene-Graph-Benchmark parity: golden cases written from SGB's own definitions.

1. ``visual_genome.py`` decodes ``boxes_1024`` in place on the int32 array (x1 = cx - w / 2,
   truncated; x2 = x1 + w) before scaling to the image;
2. ``boxlist_iou`` counts pixels inclusively (+1 on widths and heights), in float32, in the
   original image's pixels;
3. ``vg_eval.py`` returns early for an image with ground truth but no prediction, so the image
   drops out of every mean.
Plus the zero-shot file's column order (subject, object, predicate; 1-based).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_recall import prediction, truth
from test_vg150 import build_vg_folder

from realsynth.data.formats.vg150 import vg150_from_folder
from realsynth.data.formats.vg150_files import decode_vg_boxes
from realsynth.data.zero_shot import load_zero_shot_triplets
from realsynth.evaluation.recall import SceneGraphEvaluator
from realsynth.utils.box_ops import box_iou, pixel_box_iou


def test_boxes_1024_decode_with_sgbs_integer_truncation():
    assert decode_vg_boxes(np.array([[11, 100, 3, 20]])).tolist() == [[9, 90, 12, 110]]
    # Truncation is toward zero (numpy's float -> int32 assignment), not floor: -1.5 -> -1.
    assert decode_vg_boxes(np.array([[0, 5, 3, 4]])).tolist() == [[-1, 3, 2, 7]]


def test_the_decoding_decides_which_images_the_non_overlap_filter_keeps(tmp_path: Path):
    # Row 0: boxes [9, 90, 12, 110] and [13, 90, 17, 110] touch under float decoding
    # (12.5 + 1 > 13) but not under SGB's (12 + 1 = 13): the filter drops the image.
    # Row 1: two clearly overlapping boxes, kept either way.
    h5 = {
        "split": [0, 0],
        "img_to_first_box": [0, 2],
        "img_to_last_box": [1, 3],
        "img_to_first_rel": [0, 1],
        "img_to_last_rel": [0, 1],
        "boxes_1024": [
            [11, 100, 3, 20],
            [15, 100, 4, 20],
            [500, 500, 100, 100],
            [520, 500, 100, 100],
        ],
        "labels": [[1], [2], [1], [2]],
        "relationships": [[0, 1], [2, 3]],
        "predicates": [[1], [2]],
    }
    images = [
        {"image_id": 1, "width": 1024, "height": 1024},
        {"image_id": 2, "width": 1024, "height": 1024},
    ]
    root = build_vg_folder(tmp_path / "vg", h5_overrides=h5, images=images)
    kept = vg150_from_folder(root, split="train", num_val_images=0, filter_non_overlap=True)
    assert kept.rows == [1]
    assert vg150_from_folder(root, split="train", num_val_images=0).rows == [0, 1]


def test_sgb_evaluates_vg150_ground_truth_clipped_to_the_pixel_grid(tmp_path: Path):
    # A 200 x 100 image is 1024 x 512 at scale 1024: the box [500, 500, 100, 100] (y 450..550)
    # lies past its short side, inside the canvas (a warning), at y2 = 107.4 px; SGB's
    # clip_to_image puts it at h - 1 = 99 for evaluation.
    h5 = {
        "split": [0],
        "img_to_first_box": [0],
        "img_to_last_box": [1],
        "img_to_first_rel": [0],
        "img_to_last_rel": [0],
        "boxes_1024": [[500, 500, 100, 100], [200, 200, 100, 100]],
        "labels": [[1], [2]],
        "relationships": [[0, 1]],
        "predicates": [[1]],
    }
    images = [{"image_id": 7, "width": 200, "height": 100}]
    root = build_vg_folder(tmp_path / "vg", h5_overrides=h5, images=images)
    item = vg150_from_folder(root, split="train", num_val_images=0)[0]
    scale = 200 / 1024
    assert item["eval_boxes"][0].tolist() == pytest.approx(
        [450 * scale, 450 * scale, 550 * scale, 99.0], abs=1e-4
    )
    assert item["eval_size"].tolist() == [100, 200]


def test_pixel_iou_is_sgbs_inclusive_iou():
    a, b = torch.tensor([[0.0, 0.0, 9.0, 9.0]]), torch.tensor([[0.0, 0.0, 4.0, 9.0]])
    # Inclusive: 10 x 10 = 100 and 5 x 10 = 50 pixels, 50 shared: exactly 0.5.
    assert pixel_box_iou(a, b).item() == 0.5 and pixel_box_iou(a, b).dtype == torch.float32
    # Continuous: 81 and 36, 36 shared: 0.444.
    assert box_iou(a, b)[0].item() == pytest.approx(36 / 81)


def _borderline_case():
    far = [50.0, 50.0, 59.0, 59.0]
    gt = truth([[0.0, 0.0, 9.0, 9.0], far], [0, 1], [[0, 1, 2]])
    pred = prediction([[0, 2, 1]], [[0.0, 0.0, 4.0, 9.0]], [far])
    return pred, gt


def test_a_prediction_at_inclusive_iou_half_hits_under_sgb_only():
    pred, gt = _borderline_case()
    results = {}
    for protocol in ("sgb", "continuous"):
        ev = SceneGraphEvaluator(3, ks=(1,), protocol=protocol)
        ev.update([pred], [gt])
        results[protocol] = ev.summarize()["R@1"]
    assert results == {"sgb": 1.0, "continuous": 0.0}


def _empty_prediction():
    return prediction(np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 4)))


def test_an_image_with_ground_truth_but_no_prediction_drops_out_under_sgb():
    box, other = [0.0, 0.0, 9.0, 9.0], [20.0, 0.0, 29.0, 9.0]
    hit = (prediction([[0, 1, 1]], [box], [other]), truth([box, other], [0, 1], [[0, 1, 1]]))
    missed = (_empty_prediction(), truth([box, other], [0, 1], [[0, 1, 0]]))
    for protocol, expected, mean in (("sgb", 1.0, 1.0 / 3), ("continuous", 0.5, 1.0 / 3)):
        ev = SceneGraphEvaluator(3, ks=(1,), protocol=protocol)
        ev.update([hit[0], missed[0]], [hit[1], missed[1]])
        summary = ev.summarize()
        assert summary["R@1"] == expected and summary["ngR@1"] == expected
        # Predicate 1 is hit in the one image holding it; predicate 0 occurs only in the image
        # that drops out under sgb (then absent, 0) and is missed under continuous (0).
        assert summary["mR@1"] == pytest.approx(mean)
        assert ev.num_images == (1 if protocol == "sgb" else 2)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_the_protocols_agree_when_no_iou_is_borderline_and_every_image_is_predicted(seed):
    rng = np.random.default_rng(seed)
    boxes = [[x, y, x + 40.0, y + 40.0] for x, y in rng.integers(0, 400, size=(4, 2)) * 1.0]
    images = []
    for _ in range(5):
        rels = [
            [int(a), int(b), int(p)]
            for a, b, p in rng.integers(0, [4, 4, 3], size=(3, 3))
            if a != b
        ]
        if not rels:
            rels = [[0, 1, 0]]
        gt = truth(boxes, rng.integers(0, 3, size=4), rels)
        # Each predicted triplet copies a ground-truth one (IoU 1 both ways) or lies far away
        # (IoU 0 both ways), with random labels: no IoU near 0.5 in either convention.
        triplets, subj, obj = [], [], []
        for s, o, p in rels:
            exact = rng.random() < 0.6
            shift = 0.0 if exact else 1000.0
            triplets.append(
                [
                    int(gt["labels"][s]),
                    int(rng.integers(0, 3)) if not exact else p,
                    int(gt["labels"][o]),
                ]
            )
            subj.append([v + shift for v in boxes[s]])
            obj.append([v + shift for v in boxes[o]])
        images.append((prediction(triplets, subj, obj), gt))
    summaries = []
    for protocol in ("sgb", "continuous"):
        ev = SceneGraphEvaluator(3, ks=(1, 2, 5), protocol=protocol)
        ev.update([p for p, _ in images], [g for _, g in images])
        summaries.append(ev.summarize())
    assert summaries[0] == summaries[1]


def test_sgbs_zero_shot_file_is_subject_object_predicate_one_based(tmp_path: Path):
    classes, predicates = ["person", "horse", "hat"], ["on", "wearing"]
    # SGB's layout: (subject, object, predicate), 1-based: person wearing hat; hat on horse.
    torch.save(torch.tensor([[1, 3, 2], [3, 2, 1]]), tmp_path / "zeroshot_triplet.pytorch")
    loaded = load_zero_shot_triplets(tmp_path / "zeroshot_triplet.pytorch", classes, predicates)
    # realsynth's layout: (subject, predicate, object), 0-based.
    assert sorted(loaded.tolist()) == [[0, 1, 2], [2, 0, 1]]
    names = tmp_path / "zs.json"
    names.write_text(
        json.dumps(
            [["person", "wearing", "hat"], {"subject": "hat", "predicate": "on", "object": "horse"}]
        )
    )
    assert sorted(load_zero_shot_triplets(names, classes, predicates).tolist()) == sorted(
        loaded.tolist()
    )
    torch.save(torch.tensor([[1, 3, 3]]), tmp_path / "bad.pytorch")
    with pytest.raises(ValueError, match=r"row 0: predicate \(column 2\) is 3, expected 1\.\.2"):
        load_zero_shot_triplets(tmp_path / "bad.pytorch", classes, predicates)
    names.write_text(json.dumps([["person", "riding", "horse"]]))
    with pytest.raises(ValueError, match="entry 0: predicate 'riding' is not a label"):
        load_zero_shot_triplets(names, classes, predicates)


def test_zero_shot_recall_counts_only_the_zero_shot_ground_truth():
    box, other = [0.0, 0.0, 9.0, 9.0], [20.0, 0.0, 29.0, 9.0]
    gt = truth([box, other], [0, 2], [[0, 1, 1], [1, 0, 0]])  # person-wearing-hat, hat-on-person
    pred = prediction([[0, 1, 2]], [box], [other], num_predicates=2)  # only person-wearing-hat
    ev = SceneGraphEvaluator(2, ks=(1,), protocol="sgb", zero_shot_triplets=[[2, 0, 0]])
    ev.update([pred], [gt])
    summary = ev.summarize()
    assert summary["R@1"] == 0.5 and summary["zsR@1"] == 0.0
