"""``realsynth weights convert``: a SpeaQ / IterativeSG / facebookresearch DETR checkpoint written
as a local HF DETR directory that ``MODEL.ARCHITECTURE=hf_detr`` loads, its architecture read off
the tensors' shapes.

The checkpoints are built from a tiny random HF model's tensors by ``detr_checkpoints``' inverse
mapping; the converted directory must give back that model's tensors and outputs.
"""

from __future__ import annotations

import sys

import pytest
import torch
from detr_checkpoints import RELATION_KEYS, randomized, tiny_config, to_original

from realsynth.cli import main
from realsynth.modeling.weights_convert import convert_detr_state_dict

Q = 5  # tiny_config's queries
HEADS = ["class_labels_classifier.bias", "class_labels_classifier.weight"] + [
    f"bbox_predictor.layers.{i}.{leaf}" for i in range(3) for leaf in ("bias", "weight")
]
# tiny_config() as infer_detr_config must read it (heads given: 2), written out by hand.
TINY_ARCHITECTURE = {
    "d_model": 16,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "heads": 2,
    "ffn": 32,
    "decoder_ffn": 32,
    "num_queries": 5,
    "embedding_size": 8,
    "depths": [2, 1, 1, 1],
    "hidden_sizes": [16, 16, 32, 64],
    "layer_type": "bottleneck",
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def reference():
    """A tiny random ``DetrForObjectDetection`` (its body: ``.model``), in eval mode."""
    transformers = pytest.importorskip("transformers")
    return randomized(transformers.DetrForObjectDetection(tiny_config()))


def hf_tensors(reference) -> dict[str, torch.Tensor]:
    """The reference's tensors by ``DetrModel`` name (heads under their own names)."""
    return {key.removeprefix("model."): value for key, value in reference.state_dict().items()}


def save_checkpoint(path, reference, style="detectron2"):
    """The checkpoint SpeaQ (detectron2: ``detr.``-prefixed, with relation modules) or
    facebookresearch/detr (torchvision) would save, nested under ``model``."""
    original = to_original(hf_tensors(reference), style)
    if style == "detectron2":
        original = {"detr." + key: value for key, value in original.items()}
        original |= {"detr." + key: torch.zeros(3, 16) for key in RELATION_KEYS}
    torch.save({"model": original, "iteration": 100}, path)
    return path


def last_hidden_state(body) -> torch.Tensor:
    """``body``'s decoder output for one fixed random image, without padding."""
    torch.manual_seed(1)
    image, mask = torch.randn(1, 3, 64, 64), torch.ones(1, 64, 64, dtype=torch.long)
    with torch.no_grad():
        return body(pixel_values=image, pixel_mask=mask).last_hidden_state


def leftovers(folder) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize("style", ["detectron2", "torchvision"])
def test_convert_gives_a_folder_hf_detr_loads_with_the_same_body(
    tmp_path, capsys, reference, style
):
    from realsynth.modeling.hf_detr import HfDetrRelationModel

    src = save_checkpoint(tmp_path / "vg_objectdetector_pretrained.pth", reference, style)
    out = tmp_path / "detr_vg"
    assert main(["weights", "convert", str(src), str(out), "--heads", "2"]) == 0
    assert leftovers(tmp_path) == ["detr_vg", src.name]  # no temporary folder left
    body_tensors = reference.model.state_dict()
    unused = len(HEADS) + (len(RELATION_KEYS) if style == "detectron2" else 0)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Loaded {len(body_tensors)} tensors into the DETR body"
    assert lines[1] == (
        "Architecture: d_model 16, 2 heads, 2 encoder and 2 decoder layers, ffn 32, 5 queries; "
        "ResNet (bottleneck blocks) depths [2, 1, 1, 1], widths [16, 16, 32, 64]"
    )
    assert lines[2].startswith(f"Not used: {unused} checkpoint tensors (")
    assert lines[3] == f"Use it with: MODEL.ARCHITECTURE=hf_detr MODEL.HF_DETR.PATH={out}"

    model = HfDetrRelationModel(3, 5, Q, path=out).eval()
    loaded = model.body.state_dict()
    assert loaded.keys() == body_tensors.keys()
    for key, value in body_tensors.items():
        assert torch.equal(loaded[key], value), key
    # The folder as a plain DetrModel computes what the reference's body computes.
    plain = pytest.importorskip("transformers").DetrModel.from_pretrained(out).eval()
    assert torch.equal(last_hidden_state(plain), last_hidden_state(reference.model))
    # hf_detr runs the body as DETR does (HF's auxiliary_loss would change transformers 5's
    # decoder): the same final state, and its last layer's normalized output is that state.
    assert not model.body.config.auxiliary_loss
    assert torch.equal(last_hidden_state(model.body), last_hidden_state(reference.model))
    states = model._decoder_states()
    assert states.shape[0] == 2 and torch.equal(states[-1], last_hidden_state(reference.model))


def test_inferred_config_is_the_models(reference):
    from realsynth.modeling.detr_checkpoint import infer_detr_config, summarize_config

    state = convert_detr_state_dict(to_original(hf_tensors(reference)))
    config = infer_detr_config(state, heads=2)
    assert summarize_config(config) == TINY_ARCHITECTURE
    assert (config.encoder_attention_heads, config.decoder_attention_heads) == (2, 2)
    assert config.num_labels == 7  # class_embed: 7 classes and "no object"
    assert config.use_timm_backbone is False and config.use_pretrained_backbone is False
    backbone = config.backbone_config
    assert (backbone.num_channels, backbone.downsample_in_bottleneck) == (3, False)
    assert backbone.out_features == ["stage4"]
    assert infer_detr_config(state).encoder_attention_heads == 8  # DETR's, by default


def test_basic_blocks_and_other_sizes_are_read_too():
    transformers = pytest.importorskip("transformers")
    from realsynth.modeling.detr_checkpoint import infer_detr_config, summarize_config
    from realsynth.modeling.hf_detr import tiny_config as hf_tiny_config

    config = hf_tiny_config(d_model=32, enc_layers=1, dec_layers=3, ffn=48, num_queries=7)
    state = convert_detr_state_dict(to_original(transformers.DetrModel(config).state_dict()))
    assert summarize_config(infer_detr_config(state, heads=4)) == {
        "d_model": 32,
        "encoder_layers": 1,
        "decoder_layers": 3,
        "heads": 4,
        "ffn": 48,
        "decoder_ffn": 48,
        "num_queries": 7,
        "embedding_size": 8,
        "depths": [1, 1, 1, 1],
        "hidden_sizes": [8, 16, 32, 64],
        "layer_type": "basic",
    }


def test_relation_modules_and_heads_are_reported_unused(tmp_path, reference):
    from realsynth.modeling.detr_checkpoint import save_detr_checkpoint

    original = to_original(hf_tensors(reference))
    original |= {key: torch.zeros(3, 16) for key in RELATION_KEYS}
    summary = save_detr_checkpoint(convert_detr_state_dict(original), tmp_path / "out", heads=2)
    assert summary["unused"] == sorted([*RELATION_KEYS, *HEADS])
    assert summary["loaded"] == len(reference.model.state_dict())
    assert summary["config"] == TINY_ARCHITECTURE
    assert leftovers(tmp_path) == ["out"]
    assert (tmp_path / "out" / "config.json").is_file()


def test_overwrite_replaces_an_existing_folder(tmp_path, capsys, reference):
    src = save_checkpoint(tmp_path / "vg.pth", reference)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    assert main(["weights", "convert", str(src), str(out), "--heads", "2", "--overwrite"]) == 0
    assert not (out / "old.txt").exists() and (out / "config.json").is_file()
    assert leftovers(tmp_path) == ["out", "vg.pth"]
    assert "MODEL.HF_DETR.PATH=" in capsys.readouterr().out


def _error(capsys, argv) -> str:
    """The one line ``main(argv)`` prints on stderr, after checking it exits 2."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("realsynth: error: ") and err.count("\n") == 1, err
    return err


def test_an_existing_non_empty_out_is_refused(tmp_path, capsys, reference):
    src = save_checkpoint(tmp_path / "vg.pth", reference)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _error(capsys, ["weights", "convert", str(src), str(out), "--heads", "2"])
    assert str(out) in err and "--overwrite" in err
    assert leftovers(out) == ["keep.txt"] and leftovers(tmp_path) == ["out", "vg.pth"]
    err = _error(capsys, ["weights", "convert", str(src), str(out / "keep.txt"), "--overwrite"])
    assert f"{out / 'keep.txt'}: exists and is not a folder" in err
    assert leftovers(out) == ["keep.txt"]


def test_a_missing_src_is_named(tmp_path, capsys):
    pytest.importorskip("transformers")
    src = tmp_path / "nothing.pth"
    err = _error(capsys, ["weights", "convert", str(src), str(tmp_path / "out")])
    assert str(src) in err
    assert leftovers(tmp_path) == []


def test_heads_that_do_not_divide_d_model_are_refused(tmp_path, capsys, reference):
    src = save_checkpoint(tmp_path / "vg.pth", reference)
    err = _error(capsys, ["weights", "convert", str(src), str(tmp_path / "out"), "--heads", "3"])
    assert "heads=3" in err and "d_model=16" in err and str(src) in err
    assert leftovers(tmp_path) == ["vg.pth"]


def test_a_state_dict_that_is_not_a_detr_is_refused(tmp_path, capsys):
    pytest.importorskip("transformers")
    src = tmp_path / "classifier.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, src)
    err = _error(capsys, ["weights", "convert", str(src), str(tmp_path / "out")])
    assert "not a DETR checkpoint after conversion: no query_position_embeddings.weight" in err
    assert str(src) in err
    assert leftovers(tmp_path) == ["classifier.pt"]


def test_a_body_tensor_missing_or_of_another_shape_is_named(tmp_path, capsys, reference):
    original = to_original(hf_tensors(reference))
    del original["transformer.decoder.layers.1.norm3.bias"]
    original["input_proj.bias"] = torch.zeros(17)
    src = tmp_path / "broken.pth"
    torch.save(original, src)
    err = _error(capsys, ["weights", "convert", str(src), str(tmp_path / "out"), "--heads", "2"])
    assert "no decoder.layers.1.final_layer_norm.bias" in err
    assert "input_projection.bias is [17], the body needs [16]" in err
    assert leftovers(tmp_path) == ["broken.pth"]


def test_without_transformers_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    src = tmp_path / "vg.pth"
    torch.save({"query_embed.weight": torch.zeros(2, 4)}, src)
    err = _error(capsys, ["weights", "convert", str(src), str(tmp_path / "out")])
    assert "pip install 'realsynth[hf]'" in err
    assert leftovers(tmp_path) == ["vg.pth"]
