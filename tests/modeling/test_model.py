"""RelationTransformer: output contract, padding mask, initialization, presets, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from realsynth.modeling.backbone import SmallConvBackbone, downsample_mask, sine_position_encoding
from realsynth.modeling.model import OUTPUT_KEYS, PRESETS, RelationTransformer, build_model


def small_model(**overrides) -> RelationTransformer:
    torch.manual_seed(0)
    kwargs = {
        "num_queries": 6,
        "d_model": 32,
        "enc_layers": 1,
        "dec_layers": 3,
        "nhead": 4,
        "dim_feedforward": 64,
        "dropout": 0.0,
        "backbone": SmallConvBackbone(channels=(8, 16)),
    }
    kwargs.update(overrides)
    return RelationTransformer(3, 5, **kwargs)


class AveragePool8(nn.Module):
    """A parameter-free backbone: 8x8 average pooling, so each cell sees only its own pixels."""

    num_channels = 3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(images, 8)


def test_outputs_have_the_design_keys_and_shapes():
    model = small_model()
    out = model(torch.randn(2, 3, 32, 32))
    assert set(out) == {*OUTPUT_KEYS, "aux_outputs"}
    assert out["relation_logits"].shape == (2, 6, 6)
    assert out["relation_subject_logits"].shape == (2, 6, 4)
    assert out["relation_object_logits"].shape == (2, 6, 4)
    for key in ("relation_subject_boxes", "relation_object_boxes"):
        assert out[key].shape == (2, 6, 4)
        assert bool(((out[key] > 0) & (out[key] < 1)).all())
    assert len(out["aux_outputs"]) == 2
    for aux in out["aux_outputs"]:
        assert set(aux) == set(OUTPUT_KEYS)
        assert all(aux[k].shape == out[k].shape for k in OUTPUT_KEYS)
    # The aux layers are genuinely earlier layers, not copies of the last.
    assert not torch.equal(out["aux_outputs"][0]["relation_logits"], out["relation_logits"])


def test_boxes_start_at_each_query_reference_with_half_size():
    model = small_model()
    out = model(torch.randn(1, 3, 32, 32))
    refs = model.reference_logits.sigmoid()
    subject, obj = out["relation_subject_boxes"][0], out["relation_object_boxes"][0]
    assert torch.allclose(subject[:, :2], refs[:, :2]) and torch.allclose(obj[:, :2], refs[:, 2:])
    assert torch.allclose(subject[:, 2:], torch.full((6, 2), 0.5))
    # References are spread over the image, not stacked on one point.
    assert refs[:, 0].std() > 0.1 and refs.min() >= 0.1 and refs.max() <= 0.9


def test_padding_is_ignored_through_the_mask():
    model = small_model(backbone=AveragePool8()).eval()
    images = torch.randn(1, 3, 32, 32)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[:, :, 16:] = True  # right half is padding (aligned with the 8x8 cells)
    changed = images.clone()
    changed[..., 16:] = torch.randn(1, 3, 32, 16) * 10
    with torch.no_grad():
        a, b = model(images, mask), model(changed, mask)
        c = model(changed)
    for key in OUTPUT_KEYS:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert not torch.allclose(a["relation_logits"], c["relation_logits"], atol=1e-3)


def test_downsampled_mask_and_position_encoding_follow_the_valid_region():
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[:, 24:, :] = True
    small = downsample_mask(mask, (4, 4))
    assert small[0, :, 0].tolist() == [False, False, False, True]
    pos = sine_position_encoding(small, 16)
    unpadded = sine_position_encoding(torch.zeros(1, 3, 4, dtype=torch.bool), 16)
    # Normalized coordinates: a 3-row valid region encodes like an unpadded 3-row map.
    assert torch.allclose(pos[:, :, :3, :], unpadded)
    assert pos.shape == (1, 16, 4, 4)


def test_every_parameter_gets_a_gradient():
    model = small_model()
    out = model(torch.randn(2, 3, 32, 32))
    loss = sum(out[k].sum() for k in OUTPUT_KEYS)
    loss = loss + sum(aux[k].sum() for aux in out["aux_outputs"] for k in OUTPUT_KEYS)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_same_seed_gives_the_same_model():
    images = torch.randn(1, 3, 32, 32)
    a, b = small_model().eval(), small_model().eval()
    with torch.no_grad():
        assert torch.equal(a(images)["relation_logits"], b(images)["relation_logits"])


def test_bad_configuration_raises():
    with pytest.raises(ValueError, match="num_channels"):
        RelationTransformer(
            3, 5, num_queries=4, d_model=32, enc_layers=1, dec_layers=1, backbone=nn.Conv2d(3, 8, 3)
        )
    with pytest.raises(ValueError, match="divisible"):
        small_model(d_model=30, nhead=3)
    with pytest.raises(ValueError, match="dec_layers"):
        small_model(dec_layers=0)
    with pytest.raises(ValueError, match="pixel_mask"):
        small_model()(torch.randn(1, 3, 32, 32), torch.zeros(1, 16, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown model preset"):
        build_model("huge", 3, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="d_modell"):
        build_model("tiny", 3, 5, d_modell=64)
    with pytest.raises(ValueError, match="either"):
        build_model("tiny", 3, 5, backbone=AveragePool8(), backbone_channels=(8,))
    with pytest.raises(ValueError, match="norm"):
        SmallConvBackbone(channels=(8,), norm="layer")  # type: ignore[arg-type]


def test_group_norm_backbone_is_batch_independent_and_batch_norm_is_not():
    images = torch.randn(4, 3, 32, 32)
    for norm, independent in (("group", True), ("batch", False)):
        torch.manual_seed(0)
        backbone = SmallConvBackbone(channels=(8, 16), norm=norm)
        whole = backbone(images)
        halves = torch.cat((backbone(images[:2]), backbone(images[2:])))
        assert torch.allclose(whole, halves, atol=1e-5) is independent, norm
    model = build_model("tiny", 3, 5, backbone_norm="batch")
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())


def test_presets_and_overrides():
    tiny = build_model("tiny", 3, 5)
    assert tiny.num_queries == PRESETS["tiny"]["num_queries"] and tiny.d_model == 128
    assert len(tiny.decoder_layers) == 3 and tiny.backbone.stride == 8
    base = build_model("base", 150, 50)
    assert base.d_model == 256 and len(base.decoder_layers) == 6 and base.num_queries >= 100
    assert base.backbone.stride == 32
    custom = build_model("tiny", 3, 5, num_queries=7, backbone=AveragePool8())
    out = custom(torch.randn(1, 3, 64, 64))
    assert out["relation_logits"].shape == (1, 7, 6)
    assert isinstance(custom.backbone, AveragePool8)


def test_overfits_two_images_with_the_set_criterion():
    from realsynth.modeling.criterion import RelationCriterion

    torch.manual_seed(0)
    model = small_model(num_queries=4, backbone=SmallConvBackbone(channels=(8, 16)))
    criterion = RelationCriterion(3, 5)
    images = torch.randn(2, 3, 32, 32)
    targets = [
        {
            "boxes": torch.tensor([[0.25, 0.25, 0.2, 0.2], [0.7, 0.7, 0.3, 0.3]]),
            "labels": torch.tensor([0, 2]),
            "relations": torch.tensor([[0, 1, 3]]),
        },
        {
            "boxes": torch.tensor([[0.6, 0.3, 0.2, 0.4], [0.3, 0.6, 0.2, 0.2]]),
            "labels": torch.tensor([1, 1]),
            "relations": torch.tensor([[1, 0, 0]]),
        },
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    first = None
    for _ in range(60):
        loss = criterion.total_loss(criterion(model(images), targets))
        first = float(loss.detach()) if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.4 * first


def test_the_default_backbone_is_the_tiny_presets_with_batch_norm():
    from realsynth.modeling.backbone import SmallConvBackbone
    from realsynth.modeling.model import PRESETS, RelationTransformer

    model = RelationTransformer(3, 5, num_queries=4, d_model=32, enc_layers=1, dec_layers=1)
    assert isinstance(model.backbone, SmallConvBackbone)
    norms = {type(m).__name__ for m in model.backbone.modules() if "Norm" in type(m).__name__}
    assert norms == {"BatchNorm2d"}
    assert model.backbone.num_channels == PRESETS["tiny"]["backbone_channels"][-1]
