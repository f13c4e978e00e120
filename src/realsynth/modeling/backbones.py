"""Backbones by name: realsynth's small CNN, Hugging Face ``AutoBackbone``, timm, torchvision, or
a user's factory by import path; freezing of the first stages and frozen BatchNorm.

Every backbone returned maps images ``float[B, 3, H, W]`` to its last feature map
``float[B, C, h, w]`` and exposes ``num_channels == C`` (the contract of
:mod:`realsynth.modeling.backbone`). Names (``spec``):

- ``small_cnn``: :class:`~realsynth.modeling.backbone.SmallConvBackbone`;
- ``hf:DIR`` (or ``hf:owner/name``, a hub id): ``transformers.AutoBackbone.from_pretrained``
  with the weights saved there, the last stage only; never downloads when ``HF_HUB_OFFLINE=1``;
- ``timm:NAME``, ``torchvision:NAME``: those packages' models (``pretrained`` weights on request);
- ``package.module:callable``: called without arguments; it returns the backbone module.

transformers, timm and torchvision are imported only when such a backbone is asked for. This
layer raises ``ValueError`` naming the spec; the builder names the config key.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from realsynth.modeling.backbone import SmallConvBackbone
from realsynth.modeling.weights import load_weights
from realsynth.utils.import_path import load_callable

SMALL_CNN = "small_cnn"
#: ImageNet's mean and std (the default normalization of realsynth's transforms, too).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``weights`` value that asks timm / torchvision for their pretrained weights.
PRETRAINED = "pretrained"


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d whose statistics and affine parameters are fixed buffers (DETR's
    ``FrozenBatchNorm2d``): no parameter to train, no statistic that moves in train mode."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    @classmethod
    def copy_of(cls, module: nn.Module) -> FrozenBatchNorm2d:
        """A frozen copy of a BatchNorm module (``nn.BatchNorm2d`` or a library's own)."""
        num = int(module.running_mean.shape[0])
        frozen = cls(num, eps=float(getattr(module, "eps", 1e-5)))
        with torch.no_grad():
            if getattr(module, "weight", None) is not None:
                frozen.weight.copy_(module.weight.detach())
            if getattr(module, "bias", None) is not None:
                frozen.bias.copy_(module.bias.detach())
            frozen.running_mean.copy_(module.running_mean.detach())
            frozen.running_var.copy_(module.running_var.detach())
        return frozen.to(module.running_mean.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def _is_batch_norm(module: nn.Module) -> bool:
    """``nn.BatchNorm*`` (and subclasses), or a library's own BatchNorm class (by its name, with
    running statistics), as transformers' own ResNet check does."""
    if isinstance(module, FrozenBatchNorm2d):
        return False
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.running_mean is not None
    return (
        "BatchNorm" in type(module).__name__ and getattr(module, "running_mean", None) is not None
    )


def freeze_batch_norm(module: nn.Module) -> int:
    """Replace every BatchNorm inside ``module`` by a :class:`FrozenBatchNorm2d` copy, in place.

    Returns: how many were replaced.
    """
    replaced = 0
    for name, child in list(module.named_children()):
        if _is_batch_norm(child):
            setattr(module, name, FrozenBatchNorm2d.copy_of(child))
            replaced += 1
        else:
            replaced += freeze_batch_norm(child)
    return replaced


def backbone_units(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's stem then its stages, in order (detectron2's ``FREEZE_AT`` units).

    small_cnn: its first stage is the stem. Hugging Face ResNet-style backbones: ``embedder``,
    then ``encoder.stages.N``. timm / torchvision wrappers: ``stem`` then ``stages`` when they
    have them. A timm or torchvision ResNet itself (a timm-backed HF DETR's): ``conv1`` and
    ``bn1``, then ``layer1``, ``layer2``, ...

    Raises:
        ValueError: the module structure is not one of these.
    """
    inner = getattr(backbone, "body", backbone)
    if isinstance(inner, SmallConvBackbone):
        return list(inner.stages)
    embedder = getattr(inner, "embedder", None)
    stages = getattr(getattr(inner, "encoder", None), "stages", None)
    if isinstance(embedder, nn.Module) and isinstance(stages, nn.ModuleList | nn.Sequential):
        return [embedder, *stages]
    stem, stages = getattr(inner, "stem", None), getattr(inner, "stages", None)
    if isinstance(stem, nn.Module) and isinstance(stages, nn.ModuleList | nn.Sequential):
        return [stem, *stages]
    if all(isinstance(getattr(inner, n, None), nn.Module) for n in ("conv1", "bn1", "layer1")):
        layers = []
        while isinstance(getattr(inner, f"layer{len(layers) + 1}", None), nn.Module):
            layers.append(getattr(inner, f"layer{len(layers) + 1}"))
        return [nn.ModuleList([inner.conv1, inner.bn1]), *layers]
    raise ValueError(
        f"cannot freeze stages of {type(inner).__name__}: expected a stem and stages "
        "(small_cnn's stages, Hugging Face's embedder and encoder.stages, or a ResNet's conv1, "
        "bn1 and layer1, layer2, ...)"
    )


def freeze_stages(backbone: nn.Module, freeze_at: int) -> list[str]:
    """detectron2's ``FREEZE_AT``: 0 freezes nothing, 1 the stem, 2 the stem and the first stage,
    ... (``requires_grad=False``).

    Returns: the names (relative to ``backbone``) of the parameters frozen.

    Raises:
        ValueError: ``freeze_at`` is negative or larger than the stem and stages.
    """
    if freeze_at < 0:
        raise ValueError(f"freeze_at must be >= 0, got {freeze_at}")
    if freeze_at == 0:
        return []
    units = backbone_units(backbone)
    if freeze_at > len(units):
        raise ValueError(
            f"freeze_at={freeze_at}, but the backbone has {len(units)} units (a stem and "
            f"{len(units) - 1} stages)"
        )
    frozen_ids = set()
    for unit in units[:freeze_at]:
        for param in unit.parameters():
            param.requires_grad_(False)
            frozen_ids.add(id(param))
    return [name for name, p in backbone.named_parameters() if id(p) in frozen_ids]


class LastFeatureMap(nn.Module):
    """Wraps a backbone that returns several maps (Hugging Face's ``BackboneOutput``, a list or a
    dict) so that it returns the last one, ``float[B, num_channels, h, w]``."""

    def __init__(self, body: nn.Module, num_channels: int) -> None:
        super().__init__()
        self.body = body
        self.num_channels = int(num_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.body(images)
        if hasattr(out, "feature_maps"):
            out = out.feature_maps
        if isinstance(out, dict):
            out = list(out.values())
        if isinstance(out, list | tuple):
            out = out[-1]
        return out


def build_backbone(
    spec: str,
    *,
    channels: Sequence[int] = (),
    norm: str = "batch",
    weights: str = "",
    freeze_at: int = 0,
    frozen_bn: bool | None = None,
) -> nn.Module:
    """The backbone named by ``spec`` (see the module's docstring), frozen as asked.

    Args:
        spec: ``small_cnn``, ``hf:PATH``, ``timm:NAME``, ``torchvision:NAME`` or an import path.
        channels, norm: small_cnn's stage widths and normalization.
        weights: ``pretrained`` (timm / torchvision), or a state dict file loaded into the
            backbone (every tensor must match); "" = none (``hf:`` loads the weights of PATH).
        freeze_at: see :func:`freeze_stages`.
        frozen_bn: replace BatchNorm by :class:`FrozenBatchNorm2d`; None = for a pretrained
            backbone (``weights`` set, or ``hf:``).

    Raises:
        ValueError: an unknown spec, a package that is not installed, an unreadable backbone.
    """
    if spec == SMALL_CNN:
        backbone: nn.Module = SmallConvBackbone(channels=channels, norm=norm)  # type: ignore[arg-type]
    elif spec.startswith("hf:"):
        backbone = _hf_backbone(spec[3:])
    elif spec.startswith("timm:"):
        backbone = _timm_backbone(spec[5:], pretrained=weights == PRETRAINED)
    elif spec.startswith("torchvision:"):
        backbone = _torchvision_backbone(spec[12:], pretrained=weights == PRETRAINED)
    elif ":" in spec:
        backbone = load_callable(spec)()
        if not isinstance(backbone, nn.Module) or not isinstance(
            getattr(backbone, "num_channels", None), int
        ):
            raise ValueError(
                f"{spec} must return a torch.nn.Module with an int attribute 'num_channels', got "
                f"a {type(backbone).__name__}"
            )
    else:
        raise ValueError(
            f"unknown backbone {spec!r}: expected small_cnn, hf:<dir or hub id>, timm:<name>, "
            "torchvision:<name> or package.module:callable"
        )
    return prepare_backbone(
        backbone, spec, weights=weights, freeze_at=freeze_at, frozen_bn=frozen_bn
    )


def prepare_backbone(
    backbone: nn.Module,
    spec: str,
    *,
    weights: str = "",
    freeze_at: int = 0,
    frozen_bn: bool | None = None,
) -> nn.Module:
    """Load ``weights`` (a state dict file) into a built backbone, freeze its BatchNorm
    (``frozen_bn``; None = when pretrained: ``weights`` set or ``spec`` is ``hf:``) and its first
    ``freeze_at`` units, in place; the arguments are :func:`build_backbone`'s."""
    if weights and weights != PRETRAINED:
        load_backbone_weights(backbone, weights)
    if frozen_bn is None:
        frozen_bn = bool(weights) or spec.startswith("hf:")
    if frozen_bn:
        freeze_batch_norm(backbone)
    freeze_stages(backbone, freeze_at)
    return backbone


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load a state dict file (anything ``realsynth.modeling.weights`` reads) into the backbone;
    every tensor must match."""
    try:
        load_weights(backbone, path, strict=True)
    except FileNotFoundError as exc:
        raise ValueError(f"backbone weights {path}: {exc}") from None


def _hf_backbone(path: str) -> nn.Module:
    """``AutoBackbone.from_pretrained(path)`` (the weights saved there), the last stage only."""
    if not path:
        raise ValueError("hf: needs a directory or a hub id, e.g. hf:microsoft/resnet-50")
    transformers = _require("transformers", "hf:", "realsynth[hf]")
    try:
        config = transformers.AutoConfig.from_pretrained(path)
        stages = getattr(config, "stage_names", None)
        if stages:
            config.out_indices = [len(stages) - 1]
        # The backbone class itself: AutoBackbone.from_pretrained asks the hub whether the
        # repo exists (to fall back on timm), even for a local directory.
        try:
            backbone_class = transformers.AutoBackbone._model_mapping[type(config)]
        except KeyError:
            raise ValueError(
                f"a {type(config).__name__} has no AutoBackbone class (a ResNet, ConvNeXt, Swin, "
                "DINOv2, ... directory is)"
            ) from None
        body = backbone_class.from_pretrained(path, config=config)
    except OSError as exc:
        if Path(path).exists():
            raise ValueError(f"hf:{path}: cannot read a backbone there ({exc})") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "HF_HUB_OFFLINE is set" if offline else "no network or no such hub id"
        raise ValueError(
            f"hf:{path}: not a local directory and not in the hub cache ({why}); download it "
            "once with network access (without HF_HUB_OFFLINE=1), or give a directory saved by "
            "save_pretrained"
        ) from None
    except ValueError as exc:
        raise ValueError(f"hf:{path}: {str(exc).splitlines()[0]}") from None
    channels = list(getattr(body, "channels", None) or [])
    if not channels:
        raise ValueError(f"hf:{path}: the backbone does not name its output channels")
    return LastFeatureMap(body, channels[-1])


def _timm_backbone(name: str, *, pretrained: bool) -> nn.Module:
    timm = _require("timm", "timm:", "timm")
    try:
        body = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=(-1,))
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"timm:{name}: {str(exc).splitlines()[0]}") from None
    return LastFeatureMap(body, body.feature_info.channels()[-1])


def _torchvision_backbone(name: str, *, pretrained: bool) -> nn.Module:
    """A torchvision classifier without its pooling and head: ResNet-style models up to their
    last stage, others (VGG, MobileNet, EfficientNet, ConvNeXt) their ``features``."""
    torchvision = _require("torchvision", "torchvision:", "torchvision")
    try:
        model = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"torchvision:{name}: {str(exc).splitlines()[0]}") from None
    if hasattr(model, "layer4"):
        body: nn.Module = nn.Sequential(*list(model.children())[:-2])
    elif isinstance(getattr(model, "features", None), nn.Module):
        body = model.features
    else:
        raise ValueError(f"torchvision:{name}: no feature layers (layer4 or features) found")
    was_training = body.training
    body.eval()
    with torch.no_grad():
        channels = int(body(torch.zeros(1, 3, 64, 64)).shape[1])
    body.train(was_training)
    return LastFeatureMap(body, channels)


def _require(package: str, prefix: str, install: str) -> Any:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise ValueError(
            f"a {prefix} backbone needs {package}, which is not installed: pip install {install}"
        ) from None


def backbone_pixel_stats(spec: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The mean and std a backbone expects its images normalized with: ``hf:DIR`` with a
    ``preprocessor_config.json`` (``image_mean``, ``image_std``) gives those, any other
    pretrained kind (hf, timm, torchvision) ImageNet's; None for small_cnn and import paths (the
    transforms' own default)."""
    if spec.startswith("hf:"):
        found = Path(spec[3:]) / "preprocessor_config.json"
        if found.is_file():
            try:
                pre = json.loads(found.read_text())
                mean, std = pre["image_mean"], pre["image_std"]
                return tuple(float(v) for v in mean), tuple(float(v) for v in std)
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{found}: no usable image_mean / image_std ({exc})") from None
        return IMAGENET_MEAN, IMAGENET_STD
    if spec.startswith(("timm:", "torchvision:")):
        return IMAGENET_MEAN, IMAGENET_STD
    return None
