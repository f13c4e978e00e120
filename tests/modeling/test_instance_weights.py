"""Per-instance trust in the criterion: instance weights, ignore, background weight."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from criterion_cases import make_outputs, make_targets, match

from realsynth.modeling.criterion import RelationCriterion
from realsynth.modeling.matcher import HungarianMatcher

C, R, Q = 3, 4, 10


def _batch(seed: int = 0):
    outputs = make_outputs(seed, 2, Q, C, R, aux=1)
    targets = make_targets(seed, [(3, 3), (4, 2)], C, R, weights=[1.0, 0.5])
    return outputs, targets


def _losses(outputs, targets, **kwargs):
    return {k: v.detach() for k, v in RelationCriterion(C, R, **kwargs)(outputs, targets).items()}


@pytest.mark.parametrize("normalization", ["count", "weight"])
def test_all_instance_weights_one_is_todays_criterion_exactly(normalization) -> None:
    outputs, targets = _batch()
    trusted = [
        {
            **t,
            "box_weights": torch.ones(len(t["boxes"])),
            "box_ignore": torch.zeros(len(t["boxes"]), dtype=torch.bool),
            "relation_weights": torch.ones(len(t["relations"])),
            "relation_ignore": torch.zeros(len(t["relations"]), dtype=torch.bool),
            "background_weight": 1.0,
        }
        for t in targets
    ]
    today = _losses(outputs, targets, normalization=normalization)
    ours = _losses(outputs, trusted, normalization=normalization)
    for key in today:
        assert torch.equal(ours[key], today[key]), key


def _relation_ce(outputs, targets, pairs):
    """Per query [2 * Q]: the relation CE, its target class' CE weight, and the targets [2, Q]
    (the background, R, where unmatched)."""
    target = torch.full((2, Q), R)
    for b, (q, t) in enumerate(pairs):
        target[b, q] = targets[b]["relations"][t, 2]
    class_w = torch.ones(R + 1)
    class_w[-1] = 0.1
    logits = outputs["relation_logits"].detach().reshape(-1, R + 1)
    ce = F.cross_entropy(logits, target.reshape(-1), reduction="none")
    return ce, class_w[target.reshape(-1)], target


def _subject_l1(outputs, targets, pairs, weights, included):
    total, count, weight_sum = 0.0, 0.0, 0.0
    for b, (q, t) in enumerate(pairs):
        subject = targets[b]["boxes"][targets[b]["relations"][t, 0]]
        l1 = (outputs["relation_subject_boxes"][b, q].detach() - subject).abs().sum(dim=1)
        keep = included[b][t]
        w = weights[b][t] * targets[b]["loss_weight"] * keep
        total += float((w * l1).sum())
        count += float(keep.sum())
        weight_sum += float(w.sum())
    return total, count, weight_sum


@pytest.mark.parametrize("normalization", ["count", "weight"])
def test_a_relation_weight_scales_its_pair_like_an_image_weight(normalization) -> None:
    outputs, targets = _batch(1)
    targets[0]["relation_weights"] = torch.tensor([0.25, 1.0, 1.0])
    pairs = match(HungarianMatcher(), outputs, targets)
    weights = [targets[0]["relation_weights"], torch.ones(2)]
    total, count, weight_sum = _subject_l1(
        outputs, targets, pairs, weights, [torch.ones(3), torch.ones(2)]
    )
    divisor = count if normalization == "count" else weight_sum
    losses = _losses(outputs, targets, normalization=normalization)
    assert float(losses["loss_bbox_subject"]) == pytest.approx(total / divisor, rel=1e-5)


def test_an_ignored_triplet_is_matched_but_counts_in_no_term() -> None:
    outputs, targets = _batch(2)
    ignored = [{**t} for t in targets]
    ignored[1]["relation_ignore"] = torch.tensor([True, False])
    pairs = match(HungarianMatcher(), outputs, targets)
    assert [p[0].tolist() for p in pairs] == [
        p[0].tolist() for p in match(HungarianMatcher(), outputs, ignored)
    ]
    losses = _losses(outputs, ignored)
    keep = [torch.ones(3), torch.tensor([0.0, 1.0])]
    total, count, _ = _subject_l1(outputs, targets, pairs, [torch.ones(3), torch.ones(2)], keep)
    assert float(losses["loss_bbox_subject"]) == pytest.approx(total / count, rel=1e-5)
    # Relation CE: the query matched to the ignored triplet drops out entirely (numerator and
    # divisor); every other query keeps its target (the background when unmatched).
    q_ignored = int(pairs[1][0][pairs[1][1] == 0][0])
    weight = torch.tensor([[1.0], [0.5]]).expand(2, Q).clone()
    ce, c, _ = _relation_ce(outputs, targets, pairs)
    keep_q = torch.ones(2, Q)
    keep_q[1, q_ignored] = 0
    keep_q = keep_q.reshape(-1)
    expected = (weight.reshape(-1) * c * keep_q * ce).sum() / (c * keep_q).sum()
    assert float(losses["loss_relation"]) == pytest.approx(float(expected), rel=1e-5)
    # Deleting the triplet instead pushes that query to "no relation": another loss.
    deleted = [{**t} for t in targets]
    deleted[1]["relations"] = targets[1]["relations"][1:]
    assert not torch.isclose(_losses(outputs, deleted)["loss_relation"], losses["loss_relation"])


def test_a_box_weight_and_a_box_ignore_reach_every_triplet_using_the_box() -> None:
    outputs, targets = _batch(3)
    subject = int(targets[0]["relations"][0, 0])
    weighted = [{**t} for t in targets]
    weighted[0]["box_weights"] = torch.ones(3)
    weighted[0]["box_weights"][subject] = 0.5
    by_relation = [{**t} for t in targets]
    rel = targets[0]["relations"]
    uses = (rel[:, 0] == subject).float() + (rel[:, 1] == subject).float()
    by_relation[0]["relation_weights"] = 0.5**uses
    a, b = _losses(outputs, weighted), _losses(outputs, by_relation)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    ignored_box = [{**t} for t in targets]
    ignored_box[0]["box_ignore"] = torch.zeros(3, dtype=torch.bool)
    ignored_box[0]["box_ignore"][subject] = True
    ignored_rel = [{**t} for t in targets]
    ignored_rel[0]["relation_ignore"] = uses > 0
    a, b = _losses(outputs, ignored_box), _losses(outputs, ignored_rel)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_background_weight_zero_removes_the_unmatched_queries_of_that_image() -> None:
    outputs, targets = _batch(4)
    targets[1]["background_weight"] = 0.0
    pairs = match(HungarianMatcher(), outputs, targets)
    ce, c, target = _relation_ce(outputs, targets, pairs)
    image_w = torch.tensor([[1.0], [0.5]]).expand(2, Q).clone()
    image_w[1][target[1] == R] = 0.0  # unmatched queries of image 1: background weight 0
    # Count mode: the background weight is a loss weight, so the divisor keeps its class weights.
    expected = (image_w.reshape(-1) * c * ce).sum() / c.sum()
    losses = _losses(outputs, targets)
    assert float(losses["loss_relation"]) == pytest.approx(float(expected), rel=1e-5)


def test_bad_instance_and_background_weights_are_named() -> None:
    outputs, targets = _batch(5)
    bad = [{**t} for t in targets]
    bad[1]["relation_weights"] = torch.tensor([1.0, -2.0])
    with pytest.raises(ValueError, match="image 1 relation target 1: instance loss weight"):
        _losses(outputs, bad)
    shaped = [{**t} for t in targets]
    shaped[0]["relation_weights"] = torch.ones(5)
    with pytest.raises(
        ValueError, match=r"targets\[0\]\['relation_weights'\]: expected shape \(3,\)"
    ):
        _losses(outputs, shaped)
    background = [{**t} for t in targets]
    background[0]["background_weight"] = float("nan")
    with pytest.raises(
        ValueError, match="background_weight must be finite and >= 0: positions \\[0\\]"
    ):
        _losses(outputs, background)


def test_synthetic_background_weight_reaches_the_synthetic_items_only(tmp_path) -> None:
    from tiny_runs import tiny_config

    from realsynth.config import ConfigError, load_config
    from realsynth.training.build import build_train_loader
    from realsynth.training.data_setup import build_data

    cfg = tiny_config(tmp_path, "DATASETS.MULTI_DATASET.SYNTHETIC_BACKGROUND_WEIGHT=0.0")
    data = build_data(cfg)
    assert [m.background_weight for m in data.mix] == [1.0, 0.0]
    batch = next(iter(build_train_loader(cfg, data)))
    for target in batch["targets"]:
        if target["source"] == "synthetic":
            assert target["background_weight"] == 0.0
        else:
            assert "background_weight" not in target
    with pytest.raises(ConfigError, match="SYNTHETIC_BACKGROUND_WEIGHT"):
        load_config(None, ["DATASETS.MULTI_DATASET.SYNTHETIC_BACKGROUND_WEIGHT=-1"])


def test_a_source_background_weight_wins_over_its_kinds() -> None:
    from omegaconf import OmegaConf

    from realsynth.config.schema import MultiDatasetConfig, SourceConfig
    from realsynth.config.source_mix import resolve_mix

    md = OmegaConf.structured(MultiDatasetConfig)
    md.SYNTHETIC_BACKGROUND_WEIGHT = 0.0
    sources = [
        OmegaConf.merge(OmegaConf.structured(SourceConfig), {"NAME": n, "TYPE": t, **extra})
        for n, t, extra in (
            ("real", "real", {}),
            ("render", "synthetic", {}),
            ("gen", "synthetic", {"BACKGROUND_WEIGHT": 0.3}),
        )
    ]
    mix = resolve_mix(sources, md, [10, 10, 10], max_iter=10)
    assert [m.background_weight for m in mix] == [1.0, 0.0, 0.3]
