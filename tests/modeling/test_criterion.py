"""RelationCriterion against an independent loop-based DETR reference, and its weighting."""

import pytest
import torch
import torch.nn.functional as F
from criterion_cases import (
    REL_KEYS,
    make_outputs,
    make_targets,
    reference_layer_losses,
    slice_batch,
)

from realsynth.modeling.criterion import RelationCriterion
from realsynth.modeling.matcher import HungarianMatcher

C, R, Q = 6, 5, 8
LAYOUT = [(3, 4), (0, 0), (5, 7), (2, 1)]


def _class_weights(relation, pred_weights=None):
    entity = torch.ones(C + 1)
    entity[-1] = 0.1
    predicate = (
        torch.ones(R + 1) if pred_weights is None else torch.cat((pred_weights, torch.ones(1)))
    )
    predicate[-1] = 0.1
    return [predicate, entity, entity] if relation else [entity]


def _reference(outputs, targets, pred_weights=None):
    expected = {}
    layers = [("", outputs)] + [(f"_{i}", a) for i, a in enumerate(outputs["aux_outputs"])]
    for suffix, layer in layers:
        for relation in (True, False):
            if not relation and "pred_logits" not in layer:
                continue
            ref = reference_layer_losses(
                layer, targets, relation, _class_weights(relation, pred_weights)
            )
            expected.update({k + suffix: v for k, v in ref.items()})
    return expected


@pytest.mark.parametrize("aux", [0, 2])
@pytest.mark.parametrize("entity", [False, True])
@pytest.mark.parametrize("weights", [None, [1.0] * 4])
def test_all_ones_equals_detr_reference(aux, entity, weights):
    targets = make_targets(1, LAYOUT, C, R, weights=weights)
    outputs = make_outputs(2, len(LAYOUT), Q, C, R, aux=aux, entity=entity)
    pred_weights = torch.linspace(0.5, 2.0, R)
    criterion = RelationCriterion(C, R, predicate_class_weights=pred_weights)
    losses = criterion(outputs, targets)
    expected = _reference(outputs, targets, pred_weights)
    terms = {k: v for k, v in losses.items() if not k.startswith("diag/")}
    assert set(terms) == set(expected)
    assert len(expected) == (7 + 3 * entity) * (1 + aux)
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_weight_mode_with_ones_equals_count_mode():
    targets = make_targets(3, LAYOUT, C, R)
    outputs = make_outputs(4, len(LAYOUT), Q, C, R, aux=1, entity=True)
    count = RelationCriterion(C, R)(outputs, targets)
    weight = RelationCriterion(C, R, normalization="weight")(outputs, targets)
    for key in count:
        torch.testing.assert_close(weight[key], count[key], msg=key)


def _logit_grads(weights, normalization="count"):
    targets = make_targets(5, [(3, 4), (4, 5)], C, R, weights=weights)
    outputs = make_outputs(6, 2, Q, C, R, aux=1, entity=True)
    criterion = RelationCriterion(C, R, normalization=normalization)
    criterion.total_loss(criterion(outputs, targets)).backward()
    keys = [k for k in outputs if k != "aux_outputs"]
    grads = {k: outputs[k].grad for k in keys}
    grads.update({f"aux/{k}": outputs["aux_outputs"][0][k].grad for k in keys})
    return grads


def test_half_weight_halves_the_synthetic_images_gradient_exactly():
    full = _logit_grads([1.0, 1.0])
    half = _logit_grads([1.0, 0.5])
    for key in full:
        torch.testing.assert_close(half[key][1], 0.5 * full[key][1], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(half[key][0], full[key][0], rtol=1e-6, atol=1e-9)
        assert full[key][1].abs().sum() > 0, key


def test_weight_mode_is_invariant_to_scaling_all_weights():
    a = _logit_grads([1.0, 0.5], "weight")
    b = _logit_grads([3.0, 1.5], "weight")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-8)


def test_batched_box_terms_equal_images_one_at_a_time():
    weights = [1.0, 0.5, 0.5, 1.0]
    targets = make_targets(7, LAYOUT, C, R, weights=weights)
    outputs = make_outputs(8, len(LAYOUT), Q, C, R, entity=True)
    criterion = RelationCriterion(C, R)
    batched = criterion(outputs, targets)
    total = sum(m for _, m in LAYOUT)
    total_entities = sum(n for n, _ in LAYOUT)
    for term, count_of in (("loss_bbox_subject", 1), ("loss_giou_object", 1), ("loss_bbox", 0)):
        per_image = 0.0
        for b in range(len(LAYOUT)):
            single = criterion(slice_batch(outputs, b, b + 1), targets[b : b + 1])
            per_image = per_image + single[term] * max(LAYOUT[b][count_of], 1)
        n = total if count_of else total_entities
        torch.testing.assert_close(batched[term] * n, per_image, rtol=1e-5, atol=1e-6)


class _SpyMatcher(HungarianMatcher):
    def __init__(self):
        super().__init__()
        self.calls = []

    def assign(self, outputs, flat, spec, log_probs=None):
        result = super().assign(outputs, flat, spec, log_probs)
        self.calls.append([(q.tolist(), t.tolist()) for q, t in result])
        return result


def test_matching_and_diagnostics_do_not_depend_on_weights():
    outputs = make_outputs(9, len(LAYOUT), Q, C, R, aux=1, entity=True)
    runs = []
    for weights in ([1.0] * 4, [1.0, 0.0, 0.5, 0.25]):
        spy = _SpyMatcher()
        losses = RelationCriterion(C, R, matcher=spy)(
            outputs, make_targets(10, LAYOUT, C, R, ["real", "real", "syn", "syn"], weights)
        )
        runs.append((spy.calls, {k: v for k, v in losses.items() if k.startswith("diag/")}))
    assert runs[0][0] == runs[1][0] and len(runs[0][0]) == 4
    for key, value in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][key], value)


def test_diagnostics_are_detached_unweighted_per_source_and_excluded_from_total():
    targets = make_targets(11, [(3, 4), (4, 5)], C, R, ["real", "synthetic"], [1.0, 0.5])
    outputs = make_outputs(12, 2, Q, C, R, aux=1)
    criterion = RelationCriterion(C, R)
    losses = criterion(outputs, targets)
    diag = {k: v for k, v in losses.items() if k.startswith("diag/")}
    assert len(diag) == 7 * 2 and all(not v.requires_grad for v in diag.values())
    assert not any(k.startswith("diag/") for k in criterion.coefficients)
    for b, source in enumerate(["real", "synthetic"]):
        unweighted = {k: v for k, v in targets[b].items() if k != "loss_weight"}
        alone = criterion(slice_batch(outputs, b, b + 1), [unweighted])
        for term in ("loss_relation", "loss_bbox_subject", "loss_giou_object"):
            torch.testing.assert_close(diag[f"diag/{term}/{source}"], alone[term].detach())
    terms = {k: v for k, v in losses.items() if not k.startswith("diag/")}
    assert len(terms) == 14  # 7 terms of the final layer and 7 of the auxiliary one
    manual = sum(criterion.coefficients[k.removesuffix("_0")] * v for k, v in terms.items())
    torch.testing.assert_close(criterion.total_loss(losses), manual)
    assert criterion.coefficient("loss_bbox_subject_0") == 5.0
    assert criterion.coefficient("diag/loss_bbox_subject/real") is None


def test_ce_scope_matched_is_ce_over_matched_queries_only():
    targets = make_targets(13, [(3, 2), (2, 3)], C, R)
    outputs = make_outputs(14, 2, Q, C, R)
    spy = _SpyMatcher()
    losses = RelationCriterion(C, R, ce_scope="matched", matcher=spy)(outputs, targets)
    (assignment,) = spy.calls
    logits, labels = [], []
    for b, (queries, rows) in enumerate(assignment):
        logits.append(outputs["relation_logits"][b, queries])
        labels.append(targets[b]["relations"][rows, 2])
    expected = F.cross_entropy(torch.cat(logits), torch.cat(labels))
    torch.testing.assert_close(losses["loss_relation"], expected)


def test_nothing_matched_gives_zero_box_losses_still_in_graph():
    targets = make_targets(15, [(0, 0), (2, 0)], C, R, weights=[1.0, 0.5])
    outputs = make_outputs(16, 2, Q, C, R, aux=1)
    criterion = RelationCriterion(C, R)
    losses = criterion(outputs, targets)
    for key in ("loss_bbox_subject", "loss_giou_object", "loss_bbox_object_0"):
        assert losses[key].item() == 0.0 and losses[key].requires_grad
    criterion.total_loss(losses).backward()
    assert outputs["relation_subject_boxes"].grad.abs().sum() == 0
    assert outputs["relation_logits"].grad.abs().sum() > 0


def test_invalid_weight_error_and_fallback():
    targets = make_targets(17, [(2, 1), (2, 1)], C, R, ["real", "synthetic"], [1.0, float("nan")])
    outputs = make_outputs(18, 2, Q, C, R)
    with pytest.raises(ValueError, match=r"position 1 \(source='synthetic'"):
        RelationCriterion(C, R)(outputs, targets)
    with pytest.warns(UserWarning, match="falling back"):
        fallback = RelationCriterion(C, R, on_invalid_weight="fallback")(outputs, targets)
    for t in targets:
        t.pop("loss_weight")
    plain = RelationCriterion(C, R)(outputs, targets)
    for key in plain:
        torch.testing.assert_close(fallback[key], plain[key])


def test_total_loss_uses_coefficients_and_aux_copies_without_changing_the_criterion():
    criterion = RelationCriterion(C, R, loss_coefficients={"loss_giou_subject": 3.0})
    before = dict(criterion.coefficients)
    criterion(make_outputs(2, 1, Q, C, R, aux=2), make_targets(1, [(2, 1)], C, R))
    assert criterion.coefficients == before  # forward never adds keys
    losses = {
        "loss_giou_subject": torch.tensor(1.0),
        "loss_giou_subject_3": torch.tensor(2.0),
        "loss_relation": torch.tensor(4.0),
        "diag/loss_relation/real": torch.tensor(100.0),
    }
    assert criterion.total_loss(losses).item() == pytest.approx(3.0 + 6.0 + 4.0)
    with pytest.raises(ValueError, match="no loss terms"):
        criterion.total_loss({"diag/x/y": torch.tensor(1.0)})


def test_constructor_and_shape_errors():
    with pytest.raises(ValueError, match="unknown terms"):
        RelationCriterion(C, R, loss_coefficients={"loss_box": 1.0})
    with pytest.raises(ValueError, match=r"predicate_class_weights: expected shape \(5,\)"):
        RelationCriterion(C, R, predicate_class_weights=torch.ones(R + 1))
    with pytest.raises(ValueError, match="ce_scope"):
        RelationCriterion(C, R, ce_scope="some")
    outputs = make_outputs(19, 1, Q, C + 1, R)
    with pytest.raises(ValueError, match="relation_subject_logits.*expected 7"):
        RelationCriterion(C, R)(outputs, make_targets(0, [(1, 1)], C, R))
    outputs = {k: v for k, v in make_outputs(19, 1, Q, C, R).items() if k != REL_KEYS[0]}
    with pytest.raises(ValueError, match="relation_logits"):
        RelationCriterion(C, R)(outputs, make_targets(0, [(1, 1)], C, R))


def _box_case(l1_per_pair, batch_index, image_weights, num_images, normalization="count"):
    """Relation outputs whose matched subject-box L1 is ``l1_per_pair`` (one triplet per pair,
    pair i in image ``batch_index[i]``); every other term is far from the targets' queries."""
    counts = [list(batch_index).count(b) for b in range(num_images)]
    queries = max(counts)
    targets, subject = [], torch.full((num_images, queries, 4), 0.5)
    pair = 0
    for b, n in enumerate(counts):
        boxes = torch.tensor([[0.1 + 0.8 * k / max(n, 1), 0.5, 0.05, 0.05] for k in range(n)] * 2)
        rel = torch.tensor([[k, n + k, 0] for k in range(n)], dtype=torch.int64).reshape(-1, 3)
        targets.append(
            {
                "boxes": boxes.reshape(-1, 4),
                "labels": torch.zeros(2 * n, dtype=torch.int64),
                "relations": rel,
                "loss_weight": image_weights[b],
                "source": "s",
            }
        )
        for k in range(n):
            subject[b, k] = boxes[k] + torch.tensor([0.0, 0.0, l1_per_pair[pair], 0.0])
            pair += 1
    outputs = {
        "relation_logits": torch.zeros(num_images, queries, R + 1),
        "relation_subject_logits": torch.zeros(num_images, queries, C + 1),
        "relation_object_logits": torch.zeros(num_images, queries, C + 1),
        "relation_subject_boxes": subject,
        "relation_object_boxes": torch.stack(
            [
                torch.cat(
                    [
                        t["boxes"][len(t["boxes"]) // 2 :],
                        torch.full((queries - len(t["boxes"]) // 2, 4), 0.5),
                    ]
                )
                for t in targets
            ]
        ),
    }
    criterion = RelationCriterion(
        C, R, normalization=normalization, matcher=HungarianMatcher(0.0, 1.0, 0.0)
    )
    return criterion(outputs, targets)["loss_bbox_subject"]


def test_the_notes_first_worked_example_through_the_criterion():
    # Losses [1.0, 1.2, 0.8, 0.9], one per image, weights [1, 1, 0.5, 0.5]: 3.05 / 4.
    loss = _box_case([1.0, 1.2, 0.8, 0.9], [0, 1, 2, 3], [1.0, 1.0, 0.5, 0.5], 4)
    assert loss.item() == pytest.approx(0.7625, abs=1e-6)
    plain = _box_case([1.0, 1.2, 0.8, 0.9], [0, 1, 2, 3], [1.0] * 4, 4)
    assert plain.item() == pytest.approx(0.975, abs=1e-6)
    weight_mode = _box_case([1.0, 1.2, 0.8, 0.9], [0, 1, 2, 3], [1.0, 1.0, 0.5, 0.5], 4, "weight")
    assert weight_mode.item() == pytest.approx(3.05 / 3.0, abs=1e-6)


def test_the_notes_second_worked_example_through_the_criterion():
    # Nine pairs in images [0, 0, 1, 2, 2, 2, 7, 8, 8] of ten; images 7-9 weigh 0.5: 5.9 / 9
    # (0.8 + 1.2 + 0.9 + 1.1 + 0.7 + 0.6 + 0.25 + 0.2 + 0.15 = 5.9, not the 5.8 once quoted for it).
    losses = [0.8, 1.2, 0.9, 1.1, 0.7, 0.6, 0.5, 0.4, 0.3]
    loss = _box_case(losses, [0, 0, 1, 2, 2, 2, 7, 8, 8], [1.0] * 7 + [0.5] * 3, 10)
    assert loss.item() == pytest.approx(5.9 / 9, abs=1e-6) and round(loss.item(), 4) == 0.6556
    plain = _box_case(losses, [0, 0, 1, 2, 2, 2, 7, 8, 8], [1.0] * 10, 10)
    assert plain.item() == pytest.approx(6.5 / 9, abs=1e-6)


def test_collated_weights_and_sources_are_used_instead_of_the_targets():
    targets = make_targets(21, [(3, 2), (2, 3)], C, R, ["real", "synthetic"], [1.0, 0.5])
    outputs = make_outputs(22, 2, Q, C, R)
    criterion = RelationCriterion(C, R, source_names=["real", "synthetic"])
    from_targets = criterion(outputs, targets)
    bare = [{k: v for k, v in t.items() if k not in ("loss_weight", "source")} for t in targets]
    collated = criterion(
        outputs, bare, loss_weights=torch.tensor([1.0, 0.5]), source_ids=torch.tensor([0, 1])
    )
    assert collated.keys() == from_targets.keys()
    for key in collated:
        torch.testing.assert_close(collated[key], from_targets[key])
