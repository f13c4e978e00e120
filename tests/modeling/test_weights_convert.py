"""Renaming SpeaQ's / IterativeSG's / facebookresearch's DETR checkpoints onto HF DetrModel names.

The end-to-end tests build a checkpoint with the original repositories' names from a tiny HF
model's tensors (the inverse mapping of ``detr_checkpoints``, written independently of the module),
convert it back, load it into a fresh model, and compare tensors and outputs.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from detr_checkpoints import RELATION_KEYS, randomized, tiny_config, to_original

from realsynth.modeling.weights import load_weights, read_state_dict
from realsynth.modeling.weights_convert import convert_detr_state_dict


def check_round_trip(tmp_path, original, fresh, converted_keys_expected):
    """Convert ``original`` (saved as a detectron2 checkpoint), load it into ``fresh``."""
    checkpoint = {"detr." + key: value for key, value in original.items()}
    checkpoint |= {"detr." + key: torch.zeros(3, 16) for key in RELATION_KEYS}
    torch.save({"model": checkpoint, "iteration": 100}, tmp_path / "vg.pth")
    match = load_weights(fresh, tmp_path / "vg.pth", convert=convert_detr_state_dict)
    assert sorted(match.unexpected) == sorted(RELATION_KEYS)
    assert match.missing == [] and match.mismatched == []
    assert match.loaded.keys() == converted_keys_expected
    return match


@pytest.mark.parametrize(
    "style, decoder_layers, decoder_norm",
    [
        ("detectron2", "layers", "norm"),
        ("detectron2", "subject_layers", "subject_norm"),
        ("torchvision", "layers", "norm"),
    ],
)
def test_detr_checkpoint_loads_into_detr_model(tmp_path, style, decoder_layers, decoder_norm):
    transformers = pytest.importorskip("transformers")
    config = tiny_config()
    reference = randomized(transformers.DetrModel(config))
    hf = reference.state_dict()
    original = to_original(hf, style, decoder_layers, decoder_norm)
    assert len(original) < len(hf)  # q, k, v fused
    fresh = transformers.DetrModel(config).eval()
    match = check_round_trip(tmp_path, original, fresh, set(hf))
    assert match.by_suffix == {}
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, hf[key]), key
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(
            fresh(pixel_values=image).last_hidden_state,
            reference(pixel_values=image).last_hidden_state,
        )


def test_detection_heads_load_into_detr_for_object_detection(tmp_path):
    """``class_embed`` / ``bbox_embed`` take the heads' names; the rest matches ``model.*`` by
    suffix."""
    transformers = pytest.importorskip("transformers")
    config = tiny_config()
    reference = randomized(transformers.DetrForObjectDetection(config))
    hf = reference.state_dict()
    original = to_original({key.removeprefix("model."): value for key, value in hf.items()})
    fresh = transformers.DetrForObjectDetection(config).eval()
    match = check_round_trip(tmp_path, original, fresh, set(hf))
    assert match.by_suffix == {key: key.removeprefix("model.") for key in hf if "model." in key}
    assert all(torch.equal(value, hf[key]) for key, value in fresh.state_dict().items())
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, theirs = fresh(pixel_values=image), reference(pixel_values=image)
    assert torch.equal(ours.logits, theirs.logits) and torch.equal(
        ours.pred_boxes, theirs.pred_boxes
    )


def test_hf_save_pretrained_folder_converts_back(tmp_path):
    """transformers 5 writes DETR in its 4.x layout (``backbone.conv_encoder``, ``out_proj``,
    ``layers.N.fc1``); converted, it loads completely."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    reference = randomized(transformers.DetrModel(tiny_config()))
    reference.save_pretrained(tmp_path)
    assert any("conv_encoder" in key for key in read_state_dict(tmp_path))
    fresh = transformers.DetrModel(tiny_config())
    match = load_weights(fresh, tmp_path, strict=True, convert=convert_detr_state_dict)
    assert match.by_suffix == {}
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in fresh.state_dict().items())


# the rules, without transformers

D2 = "detr.backbone.0.backbone."
TV = "backbone.0.body."
STEM = "backbone.model.embedder.embedder."
STAGE = "backbone.model.encoder.stages."
ENC, DEC = "transformer.encoder.layers.", "transformer.decoder."
REL = "detr.transformer.decoder.relation_layers.0."


@pytest.mark.parametrize(
    "old, new",
    [
        (D2 + "stem.conv1.weight", STEM + "convolution.weight"),
        (D2 + "stem.conv1.norm.running_var", STEM + "normalization.running_var"),
        (D2 + "res2.0.conv1.weight", STAGE + "0.layers.0.layer.0.convolution.weight"),
        (D2 + "res5.2.conv3.norm.bias", STAGE + "3.layers.2.layer.2.normalization.bias"),
        (
            D2 + "res4.22.conv2.norm.running_mean",
            STAGE + "2.layers.22.layer.1.normalization.running_mean",
        ),
        (D2 + "res3.0.shortcut.weight", STAGE + "1.layers.0.shortcut.convolution.weight"),
        (D2 + "res3.0.shortcut.norm.weight", STAGE + "1.layers.0.shortcut.normalization.weight"),
        (TV + "conv1.weight", STEM + "convolution.weight"),
        (TV + "bn1.bias", STEM + "normalization.bias"),
        (TV + "layer1.1.conv3.weight", STAGE + "0.layers.1.layer.2.convolution.weight"),
        (TV + "layer4.0.bn2.running_var", STAGE + "3.layers.0.layer.1.normalization.running_var"),
        (TV + "layer2.0.downsample.0.weight", STAGE + "1.layers.0.shortcut.convolution.weight"),
        (TV + "layer2.0.downsample.1.weight", STAGE + "1.layers.0.shortcut.normalization.weight"),
        ("module.detr.input_proj.bias", "input_projection.bias"),
        ("query_embed.weight", "query_position_embeddings.weight"),
        (ENC + "3.self_attn.out_proj.bias", "encoder.layers.3.self_attn.o_proj.bias"),
        (ENC + "0.linear2.weight", "encoder.layers.0.mlp.fc2.weight"),
        (ENC + "0.norm2.weight", "encoder.layers.0.final_layer_norm.weight"),
        (DEC + "layers.5.norm2.bias", "decoder.layers.5.encoder_attn_layer_norm.bias"),
        (DEC + "subject_layers.1.norm3.weight", "decoder.layers.1.final_layer_norm.weight"),
        (
            DEC + "layers.0.multihead_attn.out_proj.weight",
            "decoder.layers.0.encoder_attn.o_proj.weight",
        ),
        (DEC + "subject_norm.bias", "decoder.layernorm.bias"),
        ("class_embed.weight", "class_labels_classifier.weight"),
        ("bbox_embed.layers.2.bias", "bbox_predictor.layers.2.bias"),
        # transformers 4.x names (save_pretrained, the Hub)
        (
            "backbone.conv_encoder.model.embedder.embedder.convolution.weight",
            STEM + "convolution.weight",
        ),
        (
            "model.decoder.layers.1.encoder_attn.out_proj.bias",
            "model.decoder.layers.1.encoder_attn.o_proj.bias",
        ),
        ("encoder.layers.0.fc1.weight", "encoder.layers.0.mlp.fc1.weight"),
        # names no rule knows stay, stripped of module. and detr.
        (REL + "linear1.weight", REL.removeprefix("detr.") + "linear1.weight"),
        (
            REL + "self_attn.out_proj.weight",
            REL.removeprefix("detr.") + "self_attn.out_proj.weight",
        ),
        ("detr.transformer.relation_embed.weight", "transformer.relation_embed.weight"),
        ("transformer.encoder.norm.weight", "transformer.encoder.norm.weight"),
        (ENC + "0.norm3.weight", ENC + "0.norm3.weight"),
        (ENC + "0.linear1.in_proj_weight", ENC + "0.linear1.in_proj_weight"),
    ],
)
def test_rules(old, new):
    value = torch.arange(6.0)
    assert convert_detr_state_dict({old: value}) == {new: value}


def test_fused_projections_split_q_k_v():
    weight, bias = torch.arange(24.0).reshape(6, 4), torch.arange(6.0)
    converted = convert_detr_state_dict(
        {
            "transformer.decoder.layers.1.multihead_attn.in_proj_weight": weight,
            "transformer.decoder.layers.1.multihead_attn.in_proj_bias": bias,
        }
    )
    prefix = "decoder.layers.1.encoder_attn."
    for i, part in enumerate("qkv"):
        assert torch.equal(converted[f"{prefix}{part}_proj.weight"], weight[2 * i : 2 * i + 2])
        assert torch.equal(converted[f"{prefix}{part}_proj.bias"], bias[2 * i : 2 * i + 2])
    assert len(converted) == 6


def test_two_keys_onto_one_name_raise():
    with pytest.raises(ValueError, match="would both become decoder.layers.0.self_attn_layer_norm"):
        convert_detr_state_dict(
            {
                "transformer.decoder.layers.0.norm1.weight": torch.zeros(2),
                "transformer.decoder.subject_layers.0.norm1.weight": torch.zeros(2),
            }
        )


def test_fused_projection_not_in_thirds_raises():
    with pytest.raises(ValueError, match=r"in_proj_weight has shape \[4, 2\]"):
        convert_detr_state_dict(
            {"transformer.encoder.layers.0.self_attn.in_proj_weight": torch.zeros(4, 2)}
        )


def test_conversion_does_not_import_transformers():
    code = (
        "import sys; import realsynth.modeling.weights_convert, realsynth.modeling.weights; "
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
