"""A small triplet-query relation transformer (DETR-style scene graph generation).

Every decoder query predicts one whole triplet: a subject (class + box), an object (class + box)
and the predicate between them. Class logits carry a background ("no relation" / "no object")
entry at the LAST index. Boxes are (cx, cy, w, h) normalized to [0, 1] by a sigmoid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from realsynth.modeling.backbone import (
    SmallConvBackbone,
    downsample_mask,
    padding_mask,
    sine_position_encoding,
)
from realsynth.modeling.heads import (
    AUX_OUTPUTS,
    OBJECT_BOXES,
    OBJECT_LOGITS,
    RELATION_HEADS,
    RELATION_LOGITS,
    SUBJECT_BOXES,
    SUBJECT_LOGITS,
)

OUTPUT_KEYS = RELATION_HEADS.output_keys

# Preset keyword arguments; ``backbone_channels`` and ``backbone_norm`` build the default
# SmallConvBackbone (see its docstring for why "batch" learns faster and "group" is DDP-exact).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "num_queries": 40,
        "d_model": 128,
        "enc_layers": 2,
        "dec_layers": 3,
        "nhead": 4,
        "dim_feedforward": 256,
        "dropout": 0.0,
        "backbone_channels": (32, 64, 128),
        "backbone_norm": "batch",
    },
    "base": {
        "num_queries": 200,
        "d_model": 256,
        "enc_layers": 6,
        "dec_layers": 6,
        "nhead": 8,
        "dim_feedforward": 2048,
        "dropout": 0.1,
        "backbone_channels": (64, 128, 256, 512, 512),
        "backbone_norm": "batch",
    },
}


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU in between (DETR's box head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


class RelationTransformer(nn.Module):
    """Backbone -> 1x1 projection -> transformer encoder -> decoder over triplet queries -> heads.

    Each query owns a learned reference point (subject centre, object centre) in logit space; the
    box heads predict offsets from it. Spreading the references over the image at initialization
    lets Hungarian matching assign queries by location from the first steps, which is what makes
    the tiny preset learn within minutes on a CPU.

    Args:
        num_classes: C, object classes (logits have C + 1 entries, background last).
        num_predicates: R, predicate classes (logits have R + 1 entries, "no relation" last).
        num_queries: Q, triplet queries per image.
        d_model: transformer width; must be divisible by 4 (sine encoding) and by ``nhead``.
        enc_layers: encoder layers (0 feeds projected features to the decoder directly).
        dec_layers: decoder layers, >= 1; layers before the last produce ``aux_outputs``.
        backbone: module mapping float[B, 3, H, W] to float[B, C_b, h, w] with an attribute
            ``num_channels == C_b``; ``None`` builds ``SmallConvBackbone(channels=(32, 64, 128))``.
        nhead: attention heads.
        dim_feedforward: feed-forward width; ``None`` means ``4 * d_model``.
        dropout: dropout inside the transformer layers.
    """

    def __init__(
        self,
        num_classes: int,
        num_predicates: int,
        *,
        num_queries: int,
        d_model: int,
        enc_layers: int,
        dec_layers: int,
        backbone: nn.Module | None = None,
        nhead: int = 8,
        dim_feedforward: int | None = None,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        _check_sizes(
            {
                "num_classes": num_classes,
                "num_predicates": num_predicates,
                "num_queries": num_queries,
                "d_model": d_model,
                "enc_layers": enc_layers,
                "dec_layers": dec_layers,
                "nhead": nhead,
            }
        )
        if backbone is None:  # the tiny preset's backbone, the one docs/model.md recommends
            tiny = PRESETS["tiny"]
            backbone = SmallConvBackbone(
                channels=tiny["backbone_channels"], norm=tiny["backbone_norm"]
            )
        channels = getattr(backbone, "num_channels", None)
        if not isinstance(channels, int) or channels <= 0:
            raise ValueError(
                f"backbone {type(backbone).__name__} needs an int attribute 'num_channels' "
                f"(channels of its output feature map), got {channels!r}"
            )
        self.num_classes = num_classes
        self.num_predicates = num_predicates
        self.num_queries = num_queries
        self.d_model = d_model
        self.backbone = backbone
        self.input_proj = nn.Conv2d(channels, d_model, kernel_size=1)
        ff = 4 * d_model if dim_feedforward is None else dim_feedforward
        self.encoder, self.decoder_layers = _transformer_layers(
            d_model, nhead, ff, dropout, enc_layers, dec_layers
        )
        self.decoder_norm = nn.LayerNorm(d_model)
        self.query_embed = nn.Embedding(num_queries, d_model)
        self.reference_logits = nn.Parameter(torch.empty(num_queries, 4))
        self.relation_class = nn.Linear(d_model, num_predicates + 1)
        self.subject_class = nn.Linear(d_model, num_classes + 1)
        self.object_class = nn.Linear(d_model, num_classes + 1)
        self.subject_box = MLP(d_model, d_model, 4, 3)
        self.object_box = MLP(d_model, d_model, 4, 3)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        for module in (self.encoder, self.decoder_layers):
            if module is None:
                continue
            for p in module.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)
        nn.init.xavier_uniform_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)
        # Centres drawn from a fixed generator so the layout does not depend on global RNG state.
        generator = torch.Generator().manual_seed(0)
        centres = torch.rand(self.num_queries, 4, generator=generator) * 0.8 + 0.1
        with torch.no_grad():
            self.reference_logits.copy_(torch.logit(centres))
        # Zero last box layer: each query starts at its reference with w = h = 0.5.
        for head in (self.subject_box, self.object_box):
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(
        self, images: torch.Tensor, pixel_mask: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Predict Q triplets per image.

        Args:
            images: float[B, 3, H, W], normalized images (padded to a common size).
            pixel_mask: bool[B, H, W], True marks padding; ``None`` means no padding.

        Returns:
            dict with ``relation_logits`` float[B, Q, R+1], ``relation_subject_logits`` and
            ``relation_object_logits`` float[B, Q, C+1] (background last),
            ``relation_subject_boxes`` and ``relation_object_boxes`` float[B, Q, 4] (cxcywh,
            normalized to [0, 1] of the unpadded image), and ``aux_outputs``: a list of
            ``dec_layers - 1`` dicts with the same five keys for the earlier decoder layers.
        """
        pixel_mask = padding_mask(images, pixel_mask)
        features = self.backbone(images)
        mask = downsample_mask(pixel_mask, features.shape[-2:])
        pos = sine_position_encoding(mask, self.d_model).to(features.dtype)
        src = (self.input_proj(features) + pos).flatten(2).transpose(1, 2)
        key_padding = mask.flatten(1)
        memory = (
            src if self.encoder is None else self.encoder(src, src_key_padding_mask=key_padding)
        )
        # Cross-attention keys need position too; nn layers use one tensor for keys and values.
        memory = memory + pos.flatten(2).transpose(1, 2)
        hidden = self._decode(memory, key_padding)
        return self._heads(hidden)

    def _decode(self, memory: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor:
        """Returns float[L, B, Q, d_model], the normalized output of every decoder layer."""
        tgt = self.query_embed.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
        outputs = []
        for layer in self.decoder_layers:
            tgt = layer(tgt, memory, memory_key_padding_mask=key_padding)
            outputs.append(self.decoder_norm(tgt))
        return torch.stack(outputs)

    def _heads(self, hidden: torch.Tensor) -> dict[str, Any]:
        zeros = torch.zeros_like(self.reference_logits[:, :2])
        subject_ref = torch.cat((self.reference_logits[:, :2], zeros), dim=1)
        object_ref = torch.cat((self.reference_logits[:, 2:], zeros), dim=1)
        per_layer = {
            RELATION_LOGITS: self.relation_class(hidden),
            SUBJECT_LOGITS: self.subject_class(hidden),
            OBJECT_LOGITS: self.object_class(hidden),
            SUBJECT_BOXES: (self.subject_box(hidden) + subject_ref).sigmoid(),
            OBJECT_BOXES: (self.object_box(hidden) + object_ref).sigmoid(),
        }
        out: dict[str, Any] = {key: value[-1] for key, value in per_layer.items()}
        out[AUX_OUTPUTS] = [
            {key: value[i] for key, value in per_layer.items()} for i in range(hidden.shape[0] - 1)
        ]
        return out


def _transformer_layers(
    d_model: int, nhead: int, ff: int, dropout: float, enc_layers: int, dec_layers: int
) -> tuple[nn.TransformerEncoder | None, nn.ModuleList]:
    """Pre-norm, batch-first encoder (None when enc_layers is 0) and decoder layers."""
    kwargs: dict[str, Any] = {
        "d_model": d_model,
        "nhead": nhead,
        "dim_feedforward": ff,
        "dropout": dropout,
        "batch_first": True,
        "norm_first": True,
    }
    encoder = None
    if enc_layers > 0:
        encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(**kwargs),
            enc_layers,
            norm=nn.LayerNorm(d_model),
            enable_nested_tensor=False,
        )
    decoder = nn.ModuleList(nn.TransformerDecoderLayer(**kwargs) for _ in range(dec_layers))
    return encoder, decoder


def _check_sizes(sizes: dict[str, int]) -> None:
    """Validate the integer sizes of a RelationTransformer (names as in its signature)."""
    for name, value in sizes.items():
        lowest = 0 if name == "enc_layers" else 1
        if value < lowest:
            raise ValueError(f"RelationTransformer: {name} must be >= {lowest}, got {value}")
    d_model, nhead = sizes["d_model"], sizes["nhead"]
    if d_model % 4 != 0 or d_model % nhead != 0:
        raise ValueError(
            f"RelationTransformer: d_model={d_model} must be divisible by 4 and by nhead={nhead}"
        )


def build_model(
    preset: Literal["tiny", "base"], num_classes: int, num_predicates: int, **overrides: Any
) -> RelationTransformer:
    """Build a RelationTransformer from a preset.

    Args:
        preset: ``"tiny"`` (CPU demo on 64x64 images: d_model 128, 2 encoder / 3 decoder layers,
            40 queries, 3-stage CNN with an 8x8 map) or ``"base"`` (real data: d_model 256, 6/6
            layers, 200 queries, 5-stage CNN with stride 32).
        num_classes: C, object classes without background.
        num_predicates: R, predicates without "no relation".
        **overrides: any RelationTransformer keyword (``num_queries``, ``d_model``, ``backbone``,
            ...), ``backbone_channels`` (stage widths of the default CNN) or ``backbone_norm``
            (``"group"`` or ``"batch"``, its normalization).

    Returns:
        the model, in training mode.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; expected one of {sorted(PRESETS)}")
    allowed = set(PRESETS[preset]) | {"backbone"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ValueError(f"unknown model setting(s) {unknown}; expected some of {sorted(allowed)}")
    default_backbone = {"backbone_channels", "backbone_norm"} & set(overrides)
    if "backbone" in overrides and default_backbone:
        raise ValueError(f"give either 'backbone' or {sorted(default_backbone)}, not both")
    kwargs = {**PRESETS[preset], **overrides}
    channels: Sequence[int] = kwargs.pop("backbone_channels")
    norm = kwargs.pop("backbone_norm")
    if kwargs.get("backbone") is None:
        kwargs["backbone"] = SmallConvBackbone(channels=channels, norm=norm)
    return RelationTransformer(num_classes, num_predicates, **kwargs)
