"""``MODEL.ARCHITECTURE: hf_detr``: an HF DETR / Deformable DETR body with realsynth's triplet
heads, built from tiny random configs or loaded offline from a saved directory."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch
import yaml
from tiny_runs import TINY

from realsynth.cli import main
from realsynth.modeling.output_contract import check_outputs

transformers = pytest.importorskip("transformers")

from realsynth.modeling.hf_detr import HfDetrRelationModel, tiny_config  # noqa: E402

C, R, Q = 5, 7, 12


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _images(batch=2, height=64, width=96):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", ["detr", "deformable_detr"])
def test_outputs_meet_the_contract_with_one_aux_output_per_earlier_layer(kind):
    torch.manual_seed(0)
    model = HfDetrRelationModel(C, R, Q, config=tiny_config(kind, dec_layers=3))
    images = _images()
    mask = torch.zeros(2, 64, 96, dtype=torch.bool)
    mask[1, :, 64:] = True
    start = time.perf_counter()
    out = model(images, mask)
    elapsed = time.perf_counter() - start
    check_outputs(out, batch=2, num_classes=C, num_predicates=R, where=kind)
    assert out["relation_logits"].shape == (2, Q, R + 1)
    assert len(out["aux_outputs"]) == 2
    for key in ("relation_subject_boxes", "relation_object_boxes"):
        assert out[key].min() >= 0 and out[key].max() <= 1
    assert model.pooled_features(images, mask).shape == (2, 64)
    params = sum(p.numel() for p in model.parameters())
    print(f"{kind}: {params} parameters, forward {elapsed * 1000:.0f} ms")
    out["relation_logits"].sum().backward()  # the body trains through the heads
    assert all(p.grad is not None for p in model.body.encoder.parameters())


@pytest.mark.parametrize("saved", ["DetrModel", "DetrForObjectDetection"])
def test_a_body_loaded_from_a_directory_carries_the_saved_weights(tmp_path, saved):
    torch.manual_seed(1)
    source = getattr(transformers, saved)(tiny_config("detr", num_queries=Q))
    source.save_pretrained(tmp_path / "ckpt")
    body = source if saved == "DetrModel" else source.model
    name = "backbone.model.encoder.stages.1.layers.0.layer.0.convolution.weight"
    expected = dict(body.named_parameters())[name]
    model = HfDetrRelationModel(C, R, Q, path=tmp_path / "ckpt")
    assert torch.equal(dict(model.body.named_parameters())[name], expected)
    assert torch.equal(
        model.body.query_position_embeddings.weight, body.query_position_embeddings.weight
    )


def test_a_body_with_another_number_of_queries_gets_fresh_query_embeddings(tmp_path):
    transformers.DetrModel(tiny_config("detr", num_queries=30)).save_pretrained(tmp_path / "c")
    with pytest.warns(UserWarning, match="30 queries, the run 12"):
        model = HfDetrRelationModel(C, R, Q, path=tmp_path / "c")
    assert model.body.query_position_embeddings.weight.shape[0] == Q
    check_outputs(model(_images()), batch=2, num_classes=C, num_predicates=R)


def test_a_deformable_body_loads_from_a_directory(tmp_path):
    torch.manual_seed(2)
    source = transformers.DeformableDetrModel(tiny_config("deformable_detr", num_queries=Q))
    source.save_pretrained(tmp_path / "ckpt")
    model = HfDetrRelationModel(C, R, Q, path=tmp_path / "ckpt")
    assert torch.equal(model.body.input_proj[0][0].weight, source.input_proj[0][0].weight)
    check_outputs(model(_images()), batch=2, num_classes=C, num_predicates=R)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "has no config.json"),
        (
            lambda d: transformers.ResNetConfig().save_pretrained(d),
            "holds a 'resnet' checkpoint, expected a DETR-family one",
        ),
    ],
)
def test_a_path_that_is_not_a_detr_checkpoint_is_one_line(tmp_path, make, message):
    make(tmp_path / "ckpt")
    with pytest.raises(ValueError, match=message) as info:
        HfDetrRelationModel(C, R, Q, path=tmp_path / "ckpt")
    assert "\n" not in str(info.value)


class Cells32(torch.nn.Module):
    """A backbone without receptive-field overlap (one feature per 32x32 cell), as a ResNet
    would leak valid pixels into padded positions and back across the border (so would DETR)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Conv2d(3, 64, 1)

    def forward(self, images):
        return [torch.nn.functional.avg_pool2d(self.proj(images), 32)]


def test_zero_padding_on_the_right_leaves_the_valid_part_unchanged():
    torch.manual_seed(3)
    model = HfDetrRelationModel(C, R, Q, config=tiny_config("detr")).eval()
    model.body.backbone.model = Cells32()  # same 64 channels as the tiny ResNet's last stage
    image = _images(1, 64, 96)
    padded = torch.zeros(1, 3, 64, 160)
    padded[..., :96] = image
    mask = torch.zeros(1, 64, 160, dtype=torch.bool)
    mask[..., 96:] = True
    with torch.no_grad():
        alone, batched, unmasked = model(image), model(padded, mask), model(padded)
    for key, value in alone.items():
        if key != "aux_outputs":
            torch.testing.assert_close(batched[key], value, atol=1e-5, rtol=1e-4)
    for got, want in zip(batched["aux_outputs"], alone["aux_outputs"]):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # The mask is what makes them equal: without it the padding is seen as image.
    assert not torch.allclose(unmasked["relation_logits"], alone["relation_logits"], atol=1e-3)


def _args(demo_root, out, *more):
    steps = ("SOLVER.MAX_ITER=3", "TEST.EVAL_PERIOD=0")
    return [*TINY, *steps, f"DATASETS.DEMO.ROOT={demo_root}", f"OUTPUT_DIR={out}", *more]


def test_train_and_eval_an_hf_detr_run_from_a_saved_body(tmp_path, demo_root):
    transformers.DetrModel(tiny_config("detr", num_queries=Q)).save_pretrained(tmp_path / "ckpt")
    stats = {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}
    (tmp_path / "ckpt" / "preprocessor_config.json").write_text(json.dumps(stats))
    run = tmp_path / "run"
    hf = ["MODEL.ARCHITECTURE=hf_detr", f"MODEL.HF_DETR.PATH={tmp_path / 'ckpt'}"]
    start = time.perf_counter()
    assert main(["train", *_args(demo_root, run, *hf)]) == 0
    print(f"hf_detr train, 3 steps: {time.perf_counter() - start:.1f} s")
    assert (run / "checkpoints" / "last.pt").is_file()
    # The checkpoint's normalization is the run's, recorded for eval, data filter and gap.
    saved = yaml.safe_load((run / "config.yaml").read_text())["INPUT"]
    assert (saved["PIXEL_MEAN"], saved["PIXEL_STD"]) == (stats["image_mean"], stats["image_std"])
    assert main(["eval", str(run)]) == 0
    assert (run / "eval_last.json").is_file()
    # The gap report's appearance section from the body's pooled backbone features.
    assert main(["gap", str(run), "--feature-images", "6"]) == 0
    report = json.loads((run / "gap.json").read_text())
    assert "appearance" not in report and "domain_classifier" in report["sources"]["synthetic"]
    # MODEL.WEIGHTS from that run into a body with twice the queries: all but the queries load.
    again = tmp_path / "again"
    more = (*hf, f"MODEL.WEIGHTS={run}", f"MODEL.NUM_QUERIES={2 * Q}")
    assert main(["train", *_args(demo_root, again, *more)]) == 0
    loaded = json.loads((again / "weights.json").read_text())
    assert [m["tensor"] for m in loaded["mismatched"]] == ["body.query_position_embeddings.weight"]
    assert not loaded["missing"] and not loaded["unexpected"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("MODEL.HF_DETR.PATH={missing}", "MODEL.HF_DETR.PATH: "),
        ("MODEL.HF_DETR.KIND=yolo", "MODEL.HF_DETR.KIND='yolo' must be detr or deformable_detr"),
    ],
)
def test_a_bad_hf_detr_setting_is_one_line(tmp_path, demo_root, capsys, override, message):
    override = override.format(missing=tmp_path / "nothere")
    status = main(
        ["train", *_args(demo_root, tmp_path / "run", "MODEL.ARCHITECTURE=hf_detr", override)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and message in err[0], err


def test_missing_transformers_is_one_line_naming_the_extra(
    tmp_path, demo_root, capsys, monkeypatch
):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails
    status = main(["train", *_args(demo_root, tmp_path / "run", "MODEL.ARCHITECTURE=hf_detr")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "pip install 'realsynth[hf]'" in err[0], err


def test_the_backbone_learning_rate_reaches_the_backbone_inside_the_detr_body():
    from realsynth.config import load_config
    from realsynth.training.build import build_optimizer

    model = HfDetrRelationModel(3, 5, 10, config=tiny_config("detr"))
    cfg = load_config(None, ["SOLVER.BASE_LR=0.001", "SOLVER.BACKBONE_LR_MULTIPLIER=0.1"])
    rest, backbone = build_optimizer(cfg, model).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    backbone_names = {names[id(p)] for p in backbone["params"]}
    expected = {n for n, p in model.named_parameters() if n.startswith("body.backbone.")}
    assert backbone_names == expected and expected
    assert backbone["lr"] == pytest.approx(1e-4) and rest["lr"] == pytest.approx(1e-3)
    assert len(rest["params"]) + len(backbone["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("kind", ["detr", "deformable_detr"])
def test_freeze_at_freezes_exactly_the_stem_and_first_stage_and_the_rest_trains(kind):
    """HF's own name rule (timm's ``layer2``..., ``stage.1``...) would freeze the whole HF
    ResNet; the model freezes by structure instead, and its BatchNorm statistics stay put."""
    model = HfDetrRelationModel(3, 5, 10, config=tiny_config(kind), freeze_at=2)
    backbone = {n: p for n, p in model.named_parameters() if ".backbone." in f".{n}"}
    frozen = {n for n, p in backbone.items() if not p.requires_grad}
    stem_and_first = {n for n in backbone if ".embedder." in n or ".encoder.stages.0." in n}
    assert frozen == stem_and_first and len(frozen) < len(backbone)
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers() if ".backbone." in f".{n}"}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(_images())
    loss = sum(v.sum() for k, v in out.items() if k != "aux_outputs")
    loss.backward()
    optimizer.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert not moved & frozen
    assert moved & (set(backbone) - frozen)  # the later stages learn
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers() if n in buffers)
    assert HfDetrRelationModel(3, 5, 10, config=tiny_config(kind)).frozen == []


def test_a_fresh_body_can_learn_its_batch_norm_and_a_pretrained_one_keeps_it_frozen():
    frozen = HfDetrRelationModel(3, 5, 10, config=tiny_config("detr"))
    fresh = HfDetrRelationModel(3, 5, 10, config=tiny_config("detr"), frozen_bn=False)
    names = [type(m).__name__ for m in frozen.body.backbone.modules()]
    assert "BatchNorm2d" not in names and "DetrFrozenBatchNorm2d" in names
    norms = [m for m in fresh.body.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == names.count("DetrFrozenBatchNorm2d")
    assert all(m.weight.requires_grad for m in norms)
    fresh.train()
    fresh(_images())
    assert any(not torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)
    # the values are kept: in eval mode both compute the same features
    fresh.body.backbone.load_state_dict(frozen.body.backbone.state_dict(), strict=False)
    frozen.eval(), fresh.eval()
    images = _images()
    assert torch.allclose(
        frozen.pooled_features(images, torch.zeros(2, 64, 96, dtype=torch.bool)),
        fresh.pooled_features(images, torch.zeros(2, 64, 96, dtype=torch.bool)),
        atol=1e-5,
    )


def test_each_detr_layer_state_is_what_the_decoder_cut_after_that_layer_returns():
    """DETR's intermediate outputs: layer k's state is the normalized output of the first k
    layers run unnormalized in between (transformers 5's auxiliary_loss normalizes in
    between, which a pretrained DETR never did)."""
    torch.manual_seed(0)
    model = HfDetrRelationModel(3, 5, 10, config=tiny_config("detr", dec_layers=3)).eval()
    images = _images()
    mask = model._hf_mask(images, None)
    with torch.no_grad():
        model(images)
        out = model.body(pixel_values=images, pixel_mask=mask)
        states = model._decoder_states()
        assert states.shape[0] == 3 and torch.equal(states[-1], out.last_hidden_state)
        layers = model.body.decoder.layers
        for k in (1, 2):
            model.body.decoder.layers = layers[:k]
            cut = model.body(pixel_values=images, pixel_mask=mask).last_hidden_state
            model._layer_states = []
            assert torch.allclose(states[k - 1], cut, atol=1e-6), k
        model.body.decoder.layers = layers
