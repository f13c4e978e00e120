"""Convolutional backbone and 2-D sine positional encoding for the relation transformer.

A backbone is any ``nn.Module`` that maps images ``float[B, 3, H, W]`` to a feature map
``float[B, C_b, h, w]`` and exposes ``num_channels == C_b``. The relation transformer projects
the map to ``d_model`` with a 1x1 convolution, so pretrained networks plug in unchanged
(see ``docs/model.md``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


class SmallConvBackbone(nn.Module):
    """A plain CNN trained from scratch: one stride-2 stage per entry of ``channels``.

    Each stage is conv3x3(stride 2) -> norm -> ReLU -> conv3x3 -> norm -> ReLU, so the output
    stride is ``2 ** len(channels)`` (three stages turn a 64x64 image into an 8x8 map).

    ``norm="group"`` (GroupNorm, up to 8 groups): an image's features never depend on the other
    images of its batch, so a DDP rank's half batch computes exactly what one process computes on
    the whole batch. ``norm="batch"`` (BatchNorm) learns much faster from scratch: on the demo
    scenes (tiny preset, batch 16, 800 steps) real-validation R@50 reached 0.45 with BatchNorm,
    0.03 with GroupNorm and 0.19 without normalization.

    Args:
        channels: output channels of each stage, e.g. ``(32, 64, 128)``.
        in_channels: image channels.
        norm: ``"group"`` or ``"batch"``, the normalization after each convolution.

    Attributes:
        num_channels: channels of the returned feature map (``channels[-1]``).
        stride: total downsampling factor.
    """

    def __init__(
        self,
        *,
        channels: Sequence[int],
        in_channels: int = 3,
        norm: Literal["group", "batch"] = "group",
    ) -> None:
        super().__init__()
        if norm not in ("group", "batch"):
            raise ValueError(f"backbone norm must be 'group' or 'batch', got {norm!r}")
        if len(channels) == 0 or any(int(c) <= 0 for c in channels):
            raise ValueError(
                f"backbone channels must be a non-empty list of positive ints, got {channels!r}"
            )
        stages = []
        prev = in_channels
        for width in channels:
            stages.append(_conv_stage(prev, int(width), norm))
            prev = int(width)
        self.stages = nn.Sequential(*stages)
        self.num_channels = prev
        self.stride = 2 ** len(channels)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Args: images float[B, in_channels, H, W]. Returns: float[B, num_channels, H/s, W/s]."""
        return self.stages(images)


def _conv_stage(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
        _norm_layer(norm, out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        _norm_layer(norm, out_channels),
        nn.ReLU(inplace=True),
    )


def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(_groups(channels), channels)


def _groups(channels: int) -> int:
    """Up to 8 groups of channels (the largest divisor of ``channels`` that is <= 8)."""
    return next(g for g in range(min(8, channels), 0, -1) if channels % g == 0)


def padding_mask(images: torch.Tensor, pixel_mask: torch.Tensor | None) -> torch.Tensor:
    """The checked padding mask of a batch: bool[B, H, W], True on padding (all False when
    ``pixel_mask`` is None).

    Raises:
        ValueError: ``images`` is not [B, 3, H, W], or ``pixel_mask`` not [B, H, W].
    """
    if images.dim() != 4:
        raise ValueError(f"images must be float[B, 3, H, W], got shape {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if pixel_mask is None:
        return torch.zeros(batch, height, width, dtype=torch.bool, device=images.device)
    if pixel_mask.shape != (batch, height, width):
        raise ValueError(
            f"pixel_mask must be bool[{batch}, {height}, {width}] like images, "
            f"got shape {tuple(pixel_mask.shape)}"
        )
    return pixel_mask.bool()


def masked_mean(features: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """float[B, C]: a feature map [B, C, h, w] averaged over each image's valid positions
    (``valid`` bool [B, h, w])."""
    weights = valid[:, None].to(features.dtype)
    return (features * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp(min=1)


def downsample_mask(pixel_mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a padding mask to a feature map's size (nearest, as DETR does).

    Args:
        pixel_mask: bool[B, H, W], True marks padding.
        size: (h, w) of the feature map.

    Returns:
        bool[B, h, w], True marks padding.
    """
    if pixel_mask.dim() != 3:
        raise ValueError(f"pixel_mask must be bool[B, H, W], got shape {tuple(pixel_mask.shape)}")
    return F.interpolate(pixel_mask[:, None].float(), size=size, mode="nearest")[:, 0].bool()


def sine_position_encoding(
    mask: torch.Tensor, num_channels: int, *, temperature: float = 10000.0
) -> torch.Tensor:
    """DETR's 2-D sine encoding over the valid (unpadded) region of each feature map.

    Coordinates are cumulative counts of valid cells normalized to (0, 2*pi], so the encoding
    describes the position inside the real image, not inside the padded batch tensor.

    Args:
        mask: bool[B, h, w], True marks padding.
        num_channels: output channels, a multiple of 4: half encode y and half x, and each half
            interleaves sines and cosines of ``num_channels / 4`` frequencies.
        temperature: wavelength base.

    Returns:
        float[B, num_channels, h, w].
    """
    if num_channels % 4 != 0:
        raise ValueError(
            f"positional encoding needs num_channels divisible by 4, got {num_channels}"
        )
    valid = (~mask).float()
    y_embed = valid.cumsum(1)
    x_embed = valid.cumsum(2)
    eps = 1e-6
    scale = 2 * math.pi
    y_embed = y_embed / (y_embed[:, -1:, :] + eps) * scale
    x_embed = x_embed / (x_embed[:, :, -1:] + eps) * scale
    per_axis = num_channels // 2
    dim_t = torch.arange(per_axis, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / per_axis)
    pos_x = x_embed[..., None] / dim_t
    pos_y = y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)
