"""MODEL.BACKBONE: backbones by name (small_cnn, hf:, timm:, torchvision:, import paths), FREEZE_AT
by module structure, frozen BatchNorm and the backbone's input normalization."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from tiny_runs import TINY, tiny_config
from torch import nn

from realsynth.config import ConfigError, load_config
from realsynth.modeling.backbone import SmallConvBackbone
from realsynth.modeling.backbones import (
    IMAGENET_MEAN,
    FrozenBatchNorm2d,
    backbone_pixel_stats,
    build_backbone,
    freeze_stages,
)

MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def hf_dir(tmp_path, offline):
    """A tiny random HF ResNet saved by save_pretrained, with a preprocessor config."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1], layer_type="basic"
    )
    torch.manual_seed(0)
    model = transformers.ResNetModel(config)
    with torch.no_grad():  # statistics that differ from the fresh ones
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    path = tmp_path / "resnet"
    model.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": MEAN, "image_std": STD})
    )
    return path, model.state_dict()


def _frozen_names(backbone: nn.Module) -> set[str]:
    return {n for n, p in backbone.named_parameters() if not p.requires_grad}


def _all_names(backbone: nn.Module, *prefixes: str) -> set[str]:
    return {n for n, _ in backbone.named_parameters() if n.startswith(prefixes)}


def test_hf_backbone_loads_the_saved_weights_and_returns_the_last_map(hf_dir):
    path, saved = hf_dir
    backbone = build_backbone(f"hf:{path}", frozen_bn=False)
    assert backbone.num_channels == 16
    out = backbone(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 16, 2, 2)
    ours = backbone.body.state_dict()
    for key, value in saved.items():
        assert torch.equal(ours[key], value), key


@pytest.mark.parametrize(
    ("freeze_at", "prefixes"),
    [(0, ()), (1, ("body.embedder.",)), (2, ("body.embedder.", "body.encoder.stages.0."))],
)
def test_freeze_at_freezes_exactly_the_stem_and_the_first_stages(hf_dir, freeze_at, prefixes):
    path, _ = hf_dir
    backbone = build_backbone(f"hf:{path}", freeze_at=freeze_at, frozen_bn=False)
    expected = _all_names(backbone, *prefixes) if prefixes else set()
    assert _frozen_names(backbone) == expected
    assert freeze_at == 0 or expected  # the rule matched something (not torchvision's layer1)


def test_hf_batch_norm_is_frozen_by_default_and_keeps_its_values(hf_dir):
    path, saved = hf_dir
    backbone = build_backbone(f"hf:{path}")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    frozen = [m for m in backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and not any("normalization" in n for n, _ in backbone.named_parameters())
    state = backbone.body.state_dict()
    for key in ("running_mean", "running_var", "weight", "bias"):
        name = f"embedder.embedder.normalization.{key}"
        assert torch.equal(state[name], saved[name])
    # Same outputs as the unfrozen backbone in eval mode.
    plain = build_backbone(f"hf:{path}", frozen_bn=False).eval()
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone.train()(images), plain(images))


def test_a_hub_id_offline_is_one_line_naming_it(offline):
    pytest.importorskip("transformers")
    with pytest.raises(ValueError) as info:
        build_backbone("hf:nobody-here/no-such-resnet")
    message = str(info.value)
    assert "\n" not in message
    assert "nobody-here/no-such-resnet" in message and "HF_HUB_OFFLINE" in message


@pytest.mark.parametrize(("prefix", "package"), [("timm", "timm"), ("torchvision", "torchvision")])
def test_a_missing_package_is_named(monkeypatch, prefix, package):
    monkeypatch.setitem(sys.modules, package, None)  # import fails
    with pytest.raises(ValueError, match=f"needs {package}, which is not installed"):
        build_backbone(f"{prefix}:resnet18")


def tiny_backbone() -> nn.Module:
    return SmallConvBackbone(channels=(4, 8), norm="batch")


def test_an_import_path_and_small_cnn_freeze_by_stage():
    backbone = build_backbone(f"{__name__}:tiny_backbone", freeze_at=1)
    assert backbone.num_channels == 8
    assert _frozen_names(backbone) == _all_names(backbone, "stages.0.")
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())  # not pretrained
    small = build_backbone("small_cnn", channels=(4, 8, 8), norm="batch", freeze_at=2)
    assert _frozen_names(small) == _all_names(small, "stages.0.", "stages.1.")
    with pytest.raises(ValueError, match="freeze_at=4"):
        build_backbone("small_cnn", channels=(4, 8, 8), freeze_at=4)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet50")


class ResNetNamed(nn.Module):
    """The module names of a timm / torchvision ResNet (a timm-backed HF DETR's backbone)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.layer1, self.layer2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 8, 1)
        self.fc = nn.Linear(8, 2)


def test_a_resnet_named_like_timm_and_torchvision_freezes_by_stage():
    net = ResNetNamed()
    assert freeze_stages(net, 2) == [
        "conv1.weight",
        "conv1.bias",
        "bn1.weight",
        "bn1.bias",
        "layer1.weight",
        "layer1.bias",
    ]
    assert all(p.requires_grad for n, p in net.named_parameters() if n.startswith(("layer2", "fc")))
    with pytest.raises(ValueError, match="freeze_at=4, but the backbone has 3 units"):
        freeze_stages(ResNetNamed(), 4)


def test_pixel_stats_follow_the_backbone(hf_dir):
    path, _ = hf_dir
    assert backbone_pixel_stats(f"hf:{path}") == (tuple(MEAN), tuple(STD))
    assert backbone_pixel_stats(f"hf:{path.parent}")[0] == IMAGENET_MEAN
    assert backbone_pixel_stats("timm:resnet18")[0] == IMAGENET_MEAN
    assert backbone_pixel_stats("small_cnn") is None


def test_the_builder_names_the_key(tmp_path, monkeypatch):
    from realsynth.training.build_model import _relation_transformer

    monkeypatch.setitem(sys.modules, "timm", None)
    cfg = tiny_config(tmp_path, "MODEL.BACKBONE.NAME=timm:resnet18")

    class Data:
        classes, predicates = ["a", "b"], ["p"]

    with pytest.raises(ConfigError) as info:
        _relation_transformer(cfg, Data(), 4)
    assert info.value.key == "MODEL.BACKBONE.NAME" and "pip install timm" in str(info.value)
    cfg = tiny_config(tmp_path, "MODEL.BACKBONE.FREEZE_AT=9")
    with pytest.raises(ConfigError) as info:
        _relation_transformer(cfg, Data(), 4)
    assert info.value.key == "MODEL.BACKBONE.FREEZE_AT"


def test_training_an_hf_backbone_keeps_its_batch_norm_and_records_its_normalization(
    tmp_path, hf_dir, demo_root
):
    from realsynth.training.train import train

    path, saved = hf_dir
    cfg = tiny_config(
        tmp_path,
        f"MODEL.BACKBONE.NAME=hf:{path}",
        "MODEL.BACKBONE.FREEZE_AT=1",
        "SOLVER.MAX_ITER=3",
        "TEST.EVAL_PERIOD=0",
        demo_root=demo_root,
    )
    train(cfg)
    run = tmp_path / "run"
    recorded = load_config(run / "config.yaml")
    assert list(recorded.INPUT.PIXEL_MEAN) == MEAN and list(recorded.INPUT.PIXEL_STD) == STD
    checkpoints = sorted((run / "checkpoints").glob("*.pt"))
    state = torch.load(checkpoints[-1], map_location="cpu", weights_only=False)["model"]
    moved = []
    for key, value in saved.items():
        # Every BatchNorm statistic and affine parameter, and the frozen stem.
        if "num_batches_tracked" in key or not ("normalization" in key or "embedder." in key):
            continue
        if not torch.equal(state[f"backbone.body.{key}"], value):
            moved.append(key)
    assert moved == []
    # The first unfrozen stage's convolutions did train.
    conv = "encoder.stages.0.layers.0.layer.0.convolution.weight"
    assert not torch.equal(state[f"backbone.body.{conv}"], saved[conv])


def test_the_default_keeps_small_cnn():
    cfg = load_config(None, TINY)
    assert cfg.MODEL.BACKBONE.NAME == "small_cnn" and list(cfg.MODEL.BACKBONE.CHANNELS) == [
        8,
        16,
        32,
    ]
    assert list(cfg.INPUT.PIXEL_MEAN) == []
