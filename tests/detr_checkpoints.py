"""Tiny HF DETR models and the checkpoints SpeaQ / IterativeSG (detectron2) or
facebookresearch/detr (torchvision) would hold for them: the inverse of
``realsynth.modeling.weights_convert``'s mapping, written independently of it."""

from __future__ import annotations

import pytest
import torch

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
