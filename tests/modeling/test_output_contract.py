"""The output contract, checked on the first batch: realsynth's model meets it, and a model
that does not is named with the key, the expected shape and the shape received."""

from __future__ import annotations

import pytest
import torch

from realsynth.modeling.model import build_model
from realsynth.modeling.output_contract import check_outputs

C, R, B = 3, 5, 2


@pytest.fixture(scope="module")
def outputs():
    torch.manual_seed(0)
    model = build_model("tiny", C, R, d_model=32, num_queries=6, backbone_channels=(8, 16, 32))
    return model(torch.rand(B, 3, 32, 32), torch.zeros(B, 32, 32, dtype=torch.bool))


def _check(outputs) -> None:
    check_outputs(outputs, batch=B, num_classes=C, num_predicates=R, where="mypkg:build")


def test_realsynths_own_model_meets_the_contract(outputs):
    _check(outputs)
    assert len(outputs["aux_outputs"]) >= 1


def test_entity_outputs_are_checked_when_present(outputs):
    with_entities = {
        **outputs,
        "pred_logits": torch.zeros(B, 4, C + 1),
        "pred_boxes": torch.zeros(B, 4, 4),
    }
    _check(with_entities)
    with pytest.raises(
        ValueError, match=r"'pred_boxes' has shape \[2, 4, 2\], expected \[2, 4, 4\]"
    ):
        _check({**with_entities, "pred_boxes": torch.zeros(B, 4, 2)})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda o: {k: v for k, v in o.items() if k != "relation_logits"},
            "output 'relation_logits' is missing",
        ),
        (
            lambda o: {k: v for k, v in o.items() if k != "relation_object_boxes"},
            "'relation_object_boxes' is missing, expected shape [2, 6, 4]",
        ),
        (
            lambda o: {**o, "relation_logits": o["relation_logits"][..., :R]},
            "'relation_logits' has shape [2, 6, 5], expected [2, 6, 6]",
        ),
        (
            lambda o: {**o, "relation_subject_logits": o["relation_subject_logits"][:1]},
            "'relation_subject_logits' has shape [1, 6, 4], expected [2, 6, 4]",
        ),
        (
            lambda o: {**o, "relation_subject_boxes": o["relation_subject_boxes"].long()},
            "must be a float tensor, got a torch.int64 tensor",
        ),
        (
            lambda o: {
                **o,
                "aux_outputs": [
                    {**o["aux_outputs"][0], "relation_object_logits": torch.zeros(B, 6, C)}
                ],
            },
            "'aux_outputs[0].relation_object_logits' has shape [2, 6, 3], expected [2, 6, 4]",
        ),
        (lambda o: list(o.values()), "forward must return a dict of output tensors, got list"),
    ],
)
def test_a_broken_output_is_one_line_naming_key_and_shapes(outputs, change, message):
    with pytest.raises(ValueError) as info:
        _check(change(outputs))
    text = str(info.value)
    assert text.startswith("mypkg:build: ") and message in text and "\n" not in text
