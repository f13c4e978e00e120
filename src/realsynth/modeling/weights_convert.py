"""Renaming a facebookresearch/detr-style checkpoint onto HF transformers' DETR names.

SpeaQ's and IterativeSG's released ``vg_objectdetector_pretrained.pth`` wraps a DETR in
detectron2 (``detr.backbone.0.backbone.res2.0.conv1.weight``, ``detr.transformer...``);
facebookresearch/detr names its torchvision ResNet ``backbone.0.body.layer1.0.conv1.weight``.
:func:`convert_detr_state_dict` renames either onto ``transformers.DetrModel``
(``use_timm_backbone=False``: a ResNet through AutoBackbone) and the heads of
``DetrForObjectDetection``, splitting the fused attention projections. It also renames the
transformers 4.x names that 5.x still writes with ``save_pretrained`` (``backbone.conv_encoder``,
``out_proj``, ``layers.{i}.fc1``), as HF Hub DETR checkpoints have them. It is pure renaming:
transformers is not imported.

The ResNet must be built as the checkpoint's was: SpeaQ's detectron2 ResNet-101 has
``STRIDE_IN_1X1: False`` (the stride in the 3x3 convolution), which is ``ResNetConfig``'s default
``downsample_in_bottleneck=False``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from torch import Tensor

_STEM = "backbone.model.embedder.embedder"
_NORM = r"(weight|bias|running_mean|running_var)"
_AFFINE = r"(weight|bias)"


def _block(stage: str, first_stage: int, block: str) -> str:
    """HF name of a ResNet block: ``backbone.model.encoder.stages.{s}.layers.{b}``."""
    return f"backbone.model.encoder.stages.{int(stage) - first_stage}.layers.{block}"


# (full-match pattern, new name of the match), tried in order.
_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = tuple(
    (re.compile(pattern), build)
    for pattern, build in [
        # detectron2 ResNet (SpeaQ, IterativeSG): stem, res2..res5 -> stages 0..3
        (r"backbone\.0\.backbone\.stem\.conv1\.weight", lambda m: f"{_STEM}.convolution.weight"),
        (
            rf"backbone\.0\.backbone\.stem\.conv1\.norm\.{_NORM}",
            lambda m: f"{_STEM}.normalization.{m[1]}",
        ),
        (
            r"backbone\.0\.backbone\.res(\d)\.(\d+)\.conv(\d)\.weight",
            lambda m: f"{_block(m[1], 2, m[2])}.layer.{int(m[3]) - 1}.convolution.weight",
        ),
        (
            rf"backbone\.0\.backbone\.res(\d)\.(\d+)\.conv(\d)\.norm\.{_NORM}",
            lambda m: f"{_block(m[1], 2, m[2])}.layer.{int(m[3]) - 1}.normalization.{m[4]}",
        ),
        (
            r"backbone\.0\.backbone\.res(\d)\.(\d+)\.shortcut\.weight",
            lambda m: f"{_block(m[1], 2, m[2])}.shortcut.convolution.weight",
        ),
        (
            rf"backbone\.0\.backbone\.res(\d)\.(\d+)\.shortcut\.norm\.{_NORM}",
            lambda m: f"{_block(m[1], 2, m[2])}.shortcut.normalization.{m[3]}",
        ),
        # torchvision ResNet (facebookresearch/detr): layer1..layer4 -> stages 0..3
        (r"backbone\.0\.body\.conv1\.weight", lambda m: f"{_STEM}.convolution.weight"),
        (rf"backbone\.0\.body\.bn1\.{_NORM}", lambda m: f"{_STEM}.normalization.{m[1]}"),
        (
            r"backbone\.0\.body\.layer(\d)\.(\d+)\.conv(\d)\.weight",
            lambda m: f"{_block(m[1], 1, m[2])}.layer.{int(m[3]) - 1}.convolution.weight",
        ),
        (
            rf"backbone\.0\.body\.layer(\d)\.(\d+)\.bn(\d)\.{_NORM}",
            lambda m: f"{_block(m[1], 1, m[2])}.layer.{int(m[3]) - 1}.normalization.{m[4]}",
        ),
        (
            r"backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.0\.weight",
            lambda m: f"{_block(m[1], 1, m[2])}.shortcut.convolution.weight",
        ),
        (
            rf"backbone\.0\.body\.layer(\d)\.(\d+)\.downsample\.1\.{_NORM}",
            lambda m: f"{_block(m[1], 1, m[2])}.shortcut.normalization.{m[3]}",
        ),
        # projection, queries, decoder's final norm, detection heads
        (rf"input_proj\.{_AFFINE}", lambda m: f"input_projection.{m[1]}"),
        (r"query_embed\.weight", lambda m: "query_position_embeddings.weight"),
        (
            rf"transformer\.decoder\.(?:subject_)?norm\.{_AFFINE}",
            lambda m: f"decoder.layernorm.{m[1]}",
        ),
        (rf"class_embed\.{_AFFINE}", lambda m: f"class_labels_classifier.{m[1]}"),
        (
            rf"bbox_embed\.layers\.(\d+)\.{_AFFINE}",
            lambda m: f"bbox_predictor.layers.{m[1]}.{m[2]}",
        ),
    ]
)

_LAYER = re.compile(r"transformer\.(encoder\.layers|decoder\.(?:subject_)?layers)\.(\d+)\.(.+)")
# Within a layer: (module)(.in_proj_ | .out_proj. | .)(weight|bias)
_LAYER_TENSOR = re.compile(r"(\w+?)(?:(\.in_proj_)|(\.out_proj\.)|\.)(weight|bias)")
# A transformer layer's modules: facebookresearch/detr name -> HF name, per stack.
_ATTENTION = ("self_attn", "multihead_attn")
_ENCODER_MODULES = {
    "self_attn": "self_attn",
    "linear1": "mlp.fc1",
    "linear2": "mlp.fc2",
    "norm1": "self_attn_layer_norm",
    "norm2": "final_layer_norm",
}
_DECODER_MODULES = {
    **_ENCODER_MODULES,
    "multihead_attn": "encoder_attn",
    "norm2": "encoder_attn_layer_norm",
    "norm3": "final_layer_norm",
}

# transformers 4.x names, which 5.x still writes with save_pretrained (and the Hub holds).
_HF_V4 = (
    (re.compile(r"(^|\.)backbone\.conv_encoder\."), r"\1backbone."),
    (
        re.compile(r"(^|\.)((?:en|de)coder\.layers\.\d+\.(?:self|encoder)_attn)\.out_proj\."),
        r"\1\2.o_proj.",
    ),
    (re.compile(r"(^|\.)((?:en|de)coder\.layers\.\d+)\.(fc[12])\."), r"\1\2.mlp.\3."),
)


def convert_detr_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` renamed onto HF ``DetrModel`` / ``DetrForObjectDetection`` names.

    A leading ``module.`` and then ``detr.`` are stripped from every key. Fused attention
    projections (``in_proj_weight``/``in_proj_bias``) are split into thirds, q, k, v. Keys no rule
    knows (a relation model's own modules, the encoder's pre-norm ``transformer.encoder.norm``)
    are kept under their stripped names, so that a match lists them as unexpected.

    Raises:
        ValueError: two keys would take one name, or a fused projection is not three equal parts.
    """
    converted: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, value in state.items():
        name = key.removeprefix("module.").removeprefix("detr.")
        for new, tensor in _rename(name, value):
            if new in converted:
                raise ValueError(f"state: {origin[new]} and {key} would both become {new}")
            converted[new], origin[new] = tensor, key
    return converted


def _rename(name: str, value: Tensor) -> list[tuple[str, Tensor]]:
    """The HF name(s) and tensor(s) of one stripped key (itself when no rule knows it)."""
    for pattern, build in _RULES:
        found = pattern.fullmatch(name)
        if found:
            return [(build(found), value)]
    layer = _LAYER.fullmatch(name)
    if layer is not None:
        return _rename_layer(name, value, layer)
    if not name.startswith("transformer."):  # facebookresearch/detr names stay as they are
        for pattern, replacement in _HF_V4:
            name = pattern.sub(replacement, name)
    return [(name, value)]


def _rename_layer(name: str, value: Tensor, layer: re.Match[str]) -> list[tuple[str, Tensor]]:
    """The HF name(s) of a tensor of ``transformer.{encoder,decoder}.layers.{i}``."""
    inner = _LAYER_TENSOR.fullmatch(layer[3])
    encoder = layer[1].startswith("encoder")
    modules = _ENCODER_MODULES if encoder else _DECODER_MODULES
    if inner is None:
        return [(name, value)]
    module, fused, out, tensor = inner.groups()
    if module not in modules or bool(fused or out) != (module in _ATTENTION):
        return [(name, value)]
    prefix = f"{'encoder' if encoder else 'decoder'}.layers.{layer[2]}.{modules[module]}"
    if fused:
        return [(f"{prefix}.{q}_proj.{tensor}", t) for q, t in zip("qkv", _thirds(name, value))]
    return [(f"{prefix}.o_proj.{tensor}" if out else f"{prefix}.{tensor}", value)]


def _thirds(name: str, value: Tensor) -> list[Tensor]:
    """q, k, v of a fused ``in_proj`` tensor (copies: each tensor owns its memory)."""
    if value.shape[0] % 3:
        raise ValueError(f"state: {name} has shape {list(value.shape)}, not 3 equal parts")
    return [piece.clone() for piece in value.chunk(3)]
