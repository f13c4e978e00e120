"""Renaming SpeaQ's / IterativeSG's / facebookresearch's DETR checkpoints onto HF DetrModel names.

The end-to-end tests build a checkpoint with the original repositories' names from a tiny HF
model's tensors (the inverse mapping, written here independently of the module), convert it back,
load it into a fresh model, and compare tensors and outputs.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from realsynth.modeling.weights import load_weights, read_state_dict
from realsynth.modeling.weights_convert import convert_detr_state_dict

RELATION_KEYS = ("transformer.decoder.relation_layers.0.linear1.weight", "relation_embed.weight")


def tiny_config():
    transformers = pytest.importorskip("transformers")
    return transformers.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=transformers.ResNetConfig(
            embedding_size=8,
            hidden_sizes=[16, 16, 32, 64],  # a shortcut in every stage, stage 0 included
            depths=[2, 1, 1, 1],  # a second block in stage 0
            layer_type="bottleneck",
            out_features=["stage4"],
        ),
        d_model=16,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
        num_labels=7,
    )


def randomized(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every tensor random (BatchNorm variances positive), in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(
                torch.rand_like(value) + 0.5 if "running_var" in key else torch.randn_like(value)
            )
    return model.eval()


# The inverse mapping, HF name -> original name, spelled out part by part.

_NORM_LEAVES = ("weight", "bias", "running_mean", "running_var")


def original_backbone_name(parts: list[str], style: str) -> str:
    """``backbone.model.(embedder|encoder)...`` as detectron2 or torchvision named it."""
    d2 = style == "detectron2"
    root = "backbone.0.backbone." if d2 else "backbone.0.body."
    leaf = parts[-1]
    if parts[2] == "embedder":
        if parts[-2] == "convolution":
            return root + ("stem.conv1.weight" if d2 else "conv1.weight")
        return root + (f"stem.conv1.norm.{leaf}" if d2 else f"bn1.{leaf}")
    stage, block = int(parts[4]), parts[6]
    group = f"res{stage + 2}.{block}" if d2 else f"layer{stage + 1}.{block}"
    is_conv = parts[-2] == "convolution"
    if parts[7] == "shortcut":
        if d2:
            return root + f"{group}.shortcut." + ("weight" if is_conv else f"norm.{leaf}")
        return root + f"{group}.downsample." + ("0.weight" if is_conv else f"1.{leaf}")
    k = int(parts[8]) + 1
    if d2:
        return root + f"{group}.conv{k}." + ("weight" if is_conv else f"norm.{leaf}")
    return root + f"{group}." + (f"conv{k}.weight" if is_conv else f"bn{k}.{leaf}")


def original_layer_name(parts: list[str], decoder_layers: str) -> str | tuple[str, str, int]:
    """A transformer layer tensor's original name; for q/k/v: (fused name, leaf, index)."""
    stack, index, rest = parts[0], parts[2], parts[3:]
    layers = decoder_layers if stack == "decoder" else "layers"
    root = f"transformer.{stack}.{layers}.{index}."
    attention = {"self_attn": "self_attn", "encoder_attn": "multihead_attn"}
    if rest[0] in attention:
        if rest[1] == "o_proj":
            return root + f"{attention[rest[0]]}.out_proj.{rest[2]}"
        return (root + f"{attention[rest[0]]}.in_proj_{rest[2]}", rest[2], "qkv".index(rest[1][0]))
    if rest[0] == "mlp":
        return root + {"fc1": "linear1", "fc2": "linear2"}[rest[1]] + f".{rest[2]}"
    norms = {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"}
    if stack == "decoder":
        norms = {**norms, "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"}
    return root + f"{norms[rest[0]]}.{rest[1]}"


def to_original(hf, style="detectron2", decoder_layers="layers", decoder_norm="norm"):
    """The checkpoint SpeaQ / IterativeSG (``detectron2``) or facebookresearch/detr
    (``torchvision``) would hold for these HF tensors, fused attention projections included."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list] = {}
    heads = {"class_labels_classifier": "class_embed", "bbox_predictor": "bbox_embed"}
    for key, value in hf.items():
        parts = key.split(".")
        if parts[0] == "backbone":
            out[original_backbone_name(parts, style)] = value
        elif parts[0] in ("encoder", "decoder") and parts[1] == "layers":
            name = original_layer_name(parts, decoder_layers)
            if isinstance(name, tuple):
                fused.setdefault(name[0], [None] * 3)[name[2]] = value
            else:
                out[name] = value
        elif key.startswith("decoder.layernorm."):
            out[f"transformer.decoder.{decoder_norm}.{parts[-1]}"] = value
        elif parts[0] == "input_projection":
            out[f"input_proj.{parts[1]}"] = value
        elif parts[0] == "query_position_embeddings":
            out["query_embed.weight"] = value
        elif parts[0] in heads:
            out[".".join([heads[parts[0]], *parts[1:]])] = value
        else:
            raise AssertionError(f"the test does not know {key}")
    out |= {name: torch.cat(qkv) for name, qkv in fused.items()}
    return out


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
