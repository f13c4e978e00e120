"""A DETR-family body from HF transformers (DETR or Deformable DETR) with realsynth's triplet heads.

The body (``DetrModel`` / ``DeformableDetrModel``: backbone, encoder, decoder) comes from a local
checkpoint directory (``from_pretrained``, offline) or from a config (random weights). Its
decoder's query states feed realsynth's heads: linear class heads (predicate, subject class,
object class; background last) and 3-layer MLP box heads (subject and object boxes, cxcywh in
[0, 1]), applied to every decoder layer (earlier layers -> ``aux_outputs``).

- Queries: the body's query embeddings are resized to ``num_queries``. A pretrained body with
  another number of queries gets freshly initialized query embeddings (a warning says so); its
  other weights are kept.
- DETR: hidden states of every decoder layer, each through the decoder's layernorm, as DETR's
  ``return_intermediate`` does: the layer's output goes on to the next layer unnormalized.
  They are taken by forward hooks on the decoder layers, not through HF's ``auxiliary_loss``,
  which in transformers 5 feeds each layer the previous layer's *normalized* state and
  normalizes the last one twice (a pretrained DETR would compute something else). Boxes are
  ``sigmoid(MLP(h))``.
- Deformable DETR: ``intermediate_hidden_states``; each layer's boxes are predicted relative to
  the reference point that layer attended around (``init_reference_points`` for the first,
  ``intermediate_reference_points`` of the layer before for later ones) through
  ``inverse_sigmoid``, as Deformable DETR's heads do. The bare body does no iterative box
  refinement (its reference points stay fixed over layers); two-stage bodies are refused.

- Freezing: HF's DETR encoders freeze backbone parameters by a name rule written for timm's
  ResNet names, which on HF's own ResNet (``encoder.stages.N``) freezes the whole backbone.
  The model undoes that and applies detectron2's ``FREEZE_AT`` by module structure instead
  (``freeze_at``: 0 nothing, 1 the stem, 2 the stem and the first stage, ...). HF always puts
  a frozen BatchNorm (fixed statistics and affine parameters) in the backbone, right for a
  pretrained body; ``frozen_bn=False`` turns it back into a trainable ``nn.BatchNorm2d`` (same
  values), which a body trained from scratch needs: frozen at its initialization, it would
  normalize nothing.

``transformers`` is imported lazily, so ``import realsynth`` works without it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from realsynth.modeling.backbone import masked_mean, padding_mask
from realsynth.modeling.backbones import freeze_stages
from realsynth.modeling.heads import (
    AUX_OUTPUTS,
    OBJECT_BOXES,
    OBJECT_LOGITS,
    RELATION_LOGITS,
    SUBJECT_BOXES,
    SUBJECT_LOGITS,
)
from realsynth.modeling.model import MLP

#: The DETR-family ``model_type`` values this module runs.
KINDS = ("detr", "deformable_detr")


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def tiny_config(
    kind: str = "detr",
    *,
    d_model: int = 32,
    enc_layers: int = 1,
    dec_layers: int = 2,
    heads: int = 2,
    ffn: int = 64,
    backbone_depths: tuple[int, ...] = (1, 1, 1, 1),
    backbone_widths: tuple[int, ...] = (8, 16, 32, 64),
    num_queries: int = 100,
) -> Any:
    """An HF ``DetrConfig`` / ``DeformableDetrConfig`` of a small from-scratch body (a small
    ResNet backbone of ``backbone_depths`` blocks per stage, ``backbone_widths`` channels).

    Raises:
        ValueError: an unknown ``kind`` or mismatched backbone sizes.
        ModuleNotFoundError: transformers is not installed.
    """
    from transformers import DeformableDetrConfig, DetrConfig, ResNetConfig

    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
    if len(backbone_depths) != len(backbone_widths) or not backbone_depths:
        raise ValueError(
            f"backbone_depths {list(backbone_depths)} and backbone_widths "
            f"{list(backbone_widths)} must be non-empty and of the same length"
        )
    stages = [f"stage{i + 1}" for i in range(len(backbone_depths))]
    # Deformable DETR reads the last three stages (multi-scale), DETR the last one.
    out_features = stages[-3:] if kind == "deformable_detr" else stages[-1:]
    backbone = ResNetConfig(
        embedding_size=backbone_widths[0],
        hidden_sizes=list(backbone_widths),
        depths=list(backbone_depths),
        layer_type="basic",
        out_features=out_features,
    )
    common = {
        "backbone_config": backbone,
        "d_model": d_model,
        "encoder_layers": enc_layers,
        "decoder_layers": dec_layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": ffn,
        "decoder_ffn_dim": ffn,
        "num_queries": num_queries,
        "dropout": 0.0,
    }
    if kind == "detr":
        return DetrConfig(**common)
    return DeformableDetrConfig(
        **common, num_feature_levels=len(out_features), encoder_n_points=2, decoder_n_points=2
    )


def load_body(path: str | Path) -> nn.Module:
    """The DETR-family body of a local checkpoint directory (its ``config.json`` and weights),
    read offline; a ``*ForObjectDetection`` checkpoint gives its body.

    Raises:
        ValueError: one line: the directory does not exist or is not a DETR-family checkpoint.
        ModuleNotFoundError: transformers is not installed.
    """
    from transformers import AutoConfig, DeformableDetrModel, DetrModel

    path = Path(path)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise ValueError(f"{path} {what}; expected a local HF DETR-family checkpoint directory")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable HF config ({first})") from None
    if config.model_type not in KINDS:
        raise ValueError(
            f"{path} holds a {config.model_type!r} checkpoint, expected a DETR-family one "
            f"(model_type {' or '.join(KINDS)})"
        )
    body_class = DetrModel if config.model_type == "detr" else DeformableDetrModel
    _prepare(config)
    try:
        return body_class.from_pretrained(path, config=config, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: cannot load its {config.model_type} weights ({first})") from None


def _prepare(config: Any) -> None:
    """Settings the relation model needs of every body: DETR's own decoder computation, local
    weights only."""
    if config.model_type == "detr":
        config.auxiliary_loss = False  # see the module docstring: hooks collect the layers
    elif getattr(config, "two_stage", False):
        raise ValueError(
            "two-stage Deformable DETR bodies are not supported (their queries come from the "
            "encoder's proposals); use a single-stage checkpoint"
        )
    backbone = getattr(config, "backbone_config", None)
    if backbone is not None and hasattr(backbone, "use_pretrained_backbone"):
        backbone.use_pretrained_backbone = False  # never download timm weights


def thaw_batch_norm(module: nn.Module) -> int:
    """Replace every HF ``*FrozenBatchNorm2d`` under ``module`` by an ``nn.BatchNorm2d`` with
    the same affine parameters and running statistics, in place; returns how many."""
    replaced = 0
    for name, child in module.named_children():
        if type(child).__name__.endswith("FrozenBatchNorm2d"):
            norm = nn.BatchNorm2d(child.weight.numel()).to(child.weight.device)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(norm, key).copy_(getattr(child, key))
            setattr(module, name, norm)
            replaced += 1
        else:
            replaced += thaw_batch_norm(child)
    return replaced


def refreeze_backbone(body: nn.Module, freeze_at: int) -> list[str]:
    """Make every backbone parameter of ``body`` trainable, then freeze its first ``freeze_at``
    units (stem, stages) by module structure.

    Returns: the names (relative to the backbone's inner model) of the parameters frozen.

    Raises:
        ValueError: ``freeze_at`` is negative or larger than the backbone's stem and stages.
    """
    encoder = getattr(body.backbone, "conv_encoder", body.backbone)
    inner = encoder.model
    for param in inner.parameters():
        param.requires_grad_(True)
    return freeze_stages(inner, freeze_at)


class HfDetrRelationModel(nn.Module):
    """An HF DETR / Deformable DETR body with realsynth's triplet heads.

    Args:
        num_classes: C, foreground entity classes.
        num_predicates: R, foreground predicates.
        num_queries: Q, relation queries.
        config: an HF ``DetrConfig`` / ``DeformableDetrConfig`` (a randomly initialized body),
            or None with ``path``.
        path: a local checkpoint directory (``from_pretrained``, offline), or None with
            ``config``.
        freeze_at: backbone units frozen, detectron2's ``FREEZE_AT`` (see the module docstring).
        frozen_bn: keep HF's frozen BatchNorm in the backbone (default), or make it trainable.
    """

    def __init__(
        self,
        num_classes: int,
        num_predicates: int,
        num_queries: int,
        *,
        config: Any = None,
        path: str | Path | None = None,
        freeze_at: int = 0,
        frozen_bn: bool = True,
    ) -> None:
        super().__init__()
        if (config is None) == (path is None):
            raise ValueError("give exactly one of config (a fresh body) or path (a checkpoint)")
        if min(num_classes, num_predicates, num_queries) < 1:
            raise ValueError(
                f"num_classes={num_classes}, num_predicates={num_predicates} and "
                f"num_queries={num_queries} must be >= 1"
            )
        if path is not None:
            body = load_body(path)
        else:
            from transformers import DeformableDetrModel, DetrModel

            if config.model_type not in KINDS:
                raise ValueError(
                    f"config of model_type {config.model_type!r}: expected {' or '.join(KINDS)}"
                )
            config = config.__class__.from_dict(config.to_dict())  # our own copy
            config.num_queries = num_queries
            _prepare(config)
            body = (DetrModel if config.model_type == "detr" else DeformableDetrModel)(config)
        self.body = body
        self.kind = body.config.model_type
        self._layer_states: list[torch.Tensor] = []
        if self.kind == "detr":
            for layer in body.decoder.layers:
                layer.register_forward_hook(self._keep_layer_state)
        if not frozen_bn:
            thaw_batch_norm(body.backbone)
        self.frozen = refreeze_backbone(body, freeze_at)
        self._resize_queries(num_queries, path)
        self.num_queries = num_queries
        d_model = body.config.d_model
        self.relation_class = nn.Linear(d_model, num_predicates + 1)
        self.subject_class = nn.Linear(d_model, num_classes + 1)
        self.object_class = nn.Linear(d_model, num_classes + 1)
        self.subject_box = MLP(d_model, d_model, 4, 3)
        self.object_box = MLP(d_model, d_model, 4, 3)
        if self.kind == "deformable_detr":  # boxes start at their reference point
            for head in (self.subject_box, self.object_box):
                nn.init.zeros_(head.layers[-1].weight)
                nn.init.zeros_(head.layers[-1].bias)

    def _resize_queries(self, num_queries: int, path: str | Path | None) -> None:
        embed = self.body.query_position_embeddings
        if embed.num_embeddings == num_queries:
            return
        warnings.warn(
            f"{path}: the body has {embed.num_embeddings} queries, the run {num_queries}; its "
            "query embeddings are re-initialized (its other weights are kept)",
            stacklevel=3,
        )
        fresh = nn.Embedding(num_queries, embed.embedding_dim)
        nn.init.normal_(fresh.weight)
        self.body.query_position_embeddings = fresh.to(embed.weight.device, embed.weight.dtype)
        self.body.config.num_queries = num_queries

    def _keep_layer_state(self, module: nn.Module, args: Any, output: Any) -> None:
        self._layer_states.append(output[0] if isinstance(output, tuple) else output)

    def _decoder_states(self) -> torch.Tensor:
        """[L, B, Q, d]: every DETR decoder layer's output through the decoder's layernorm."""
        states, self._layer_states = self._layer_states, []
        return torch.stack([self.body.decoder.layernorm(state) for state in states])

    @staticmethod
    def _hf_mask(images: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
        """realsynth's mask (True on padding) -> HF's (1 on valid pixels, long)."""
        return (~padding_mask(images, pixel_mask)).long()

    def forward(
        self, images: torch.Tensor, pixel_mask: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """Predict Q triplets per image.

        Args:
            images: float[B, 3, H, W], normalized images (padded to a common size).
            pixel_mask: bool[B, H, W], True marks padding; ``None`` means no padding.

        Returns:
            the relation outputs of ``realsynth.modeling.output_contract`` and ``aux_outputs``,
            one dict per earlier decoder layer.
        """
        mask = self._hf_mask(images, pixel_mask)
        self._layer_states = []
        out = self.body(pixel_values=images, pixel_mask=mask, return_dict=True)
        if self.kind == "detr":
            hidden = self._decoder_states()  # [L, B, Q, d], layernorm applied
            subject = self.subject_box(hidden).sigmoid()
            obj = self.object_box(hidden).sigmoid()
        else:
            hidden = out.intermediate_hidden_states.transpose(0, 1)  # [L, B, Q, d]
            inter = out.intermediate_reference_points.transpose(0, 1)  # [L, B, Q, 2|4]
            refs = torch.cat((out.init_reference_points[None], inter[:-1]), dim=0)
            refs = inverse_sigmoid(refs)
            subject = self._relative(self.subject_box(hidden), refs)
            obj = self._relative(self.object_box(hidden), refs)
        per_layer = {
            RELATION_LOGITS: self.relation_class(hidden),
            SUBJECT_LOGITS: self.subject_class(hidden),
            OBJECT_LOGITS: self.object_class(hidden),
            SUBJECT_BOXES: subject,
            OBJECT_BOXES: obj,
        }
        result: dict[str, Any] = {key: value[-1] for key, value in per_layer.items()}
        result[AUX_OUTPUTS] = [
            {key: value[i] for key, value in per_layer.items()} for i in range(hidden.shape[0] - 1)
        ]
        return result

    @staticmethod
    def _relative(delta: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Deformable DETR's boxes: offsets from the reference point in logit space."""
        if reference.shape[-1] == 4:
            return (delta + reference).sigmoid()
        centre = delta[..., :2] + reference
        return torch.cat((centre, delta[..., 2:]), dim=-1).sigmoid()

    @torch.no_grad()
    def pooled_features(self, images: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        """float[B, D]: the backbone's last feature map averaged over each image's valid
        positions (the domain-gap report's image features)."""
        mask = self._hf_mask(images, pixel_mask)
        features, valid = self.body.backbone(images, mask)[-1]
        return masked_mean(features, valid.bool())
