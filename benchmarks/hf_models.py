"""Randomly initialized HF models of real sizes, saved offline for the benchmarks.

The benchmarks measure speed, not accuracy, so the weights are random; the architectures are
the real ones: a ResNet-50 (transformers' ``ResNetConfig`` defaults) and a DETR-R50 body (DETR's
published sizes: d_model 256, 6 + 6 layers, 8 heads, FFN 2048, 100 queries, an HF ResNet-50
backbone as ``facebook/detr-resnet-50``'s no_timm revision has).
"""

from __future__ import annotations

from pathlib import Path


def save_resnet50(folder: Path) -> Path:
    """An HF ResNet-50 backbone saved to ``folder`` (``MODEL.BACKBONE.NAME=hf:<folder>``)."""
    from transformers import ResNetBackbone, ResNetConfig

    ResNetBackbone(ResNetConfig(out_features=["stage4"])).save_pretrained(folder)
    return folder


def save_detr_r50(folder: Path, num_queries: int = 100) -> Path:
    """A DETR-R50 body saved to ``folder`` (``MODEL.HF_DETR.PATH=<folder>``)."""
    from transformers import DetrConfig, DetrModel, ResNetConfig

    config = DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=ResNetConfig(out_features=["stage4"]),
        num_queries=num_queries,
    )
    DetrModel(config).save_pretrained(folder)
    return folder
