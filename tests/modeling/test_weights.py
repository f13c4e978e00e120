"""Initializing a model from a checkpoint: reading, matching by name and suffix, the report."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from realsynth.modeling.weights import (
    WeightsMatch,
    format_weights_report,
    load_weights,
    match_state_dict,
    read_state_dict,
)


class Net(nn.Module):
    """``backbone.conv1`` / ``backbone.bn1`` (with buffers) and a ``head``."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.conv1 = nn.Conv2d(3, 4, 3)
        self.backbone.bn1 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, classes)


class Wrapped(nn.Module):
    """``Net`` one level down: ``body.backbone.conv1.weight``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Net()


def shapes(module: nn.Module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in module.state_dict().items()}


def random_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state dict with fresh random values (so that a load is visible)."""
    return {
        key: torch.randint_like(value, 1, 100)
        if value.dtype == torch.int64
        else torch.randn_like(value)
        for key, value in module.state_dict().items()
    }


def assert_loaded(model: nn.Module, state: dict[str, torch.Tensor], rename=lambda k: k) -> None:
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[rename(key)]), key


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# matching


def test_exact_names_load_everything_by_name(tmp_path):
    state = random_state(Net())
    torch.save(state, tmp_path / "w.pt")
    model = Net()
    match = load_weights(model, tmp_path / "w.pt", strict=True)
    assert match.loaded == {key: key for key in state} and match.complete
    assert match.by_suffix == {}
    assert_loaded(model, state)


def test_a_source_with_a_prefix_serves_a_model_without_it(tmp_path):
    state = {f"detr.{key}": value for key, value in random_state(Net()).items()}
    torch.save(state, tmp_path / "w.pt")
    model = Net()
    match = load_weights(model, tmp_path / "w.pt", strict=True)
    assert match.loaded["backbone.conv1.weight"] == "detr.backbone.conv1.weight"
    assert match.by_suffix == {key: f"detr.{key}" for key in Net().state_dict()}
    assert_loaded(model, state, lambda key: "detr." + key)
    row = format_weights_report(match, "w").splitlines()[-1]
    assert row.split("|")[1:4] == [" by suffix ", "     9 ", " * <- detr.* (9) "]


def test_a_source_without_a_prefix_serves_a_model_with_it(tmp_path):
    state = random_state(Net())
    torch.save(state, tmp_path / "w.pt")
    model = Wrapped()
    match = load_weights(model, tmp_path / "w.pt", strict=True)
    assert match.by_suffix == {f"body.{key}": key for key in Net().state_dict()}
    assert_loaded(model, state, lambda key: key.removeprefix("body."))


def test_names_that_only_share_a_tail_do_not_pair():
    """A detector's box head is not a relation model's subject or object box head."""
    head = {f"layers.{i}.{p}": torch.Size([2]) for i in range(3) for p in ("weight", "bias")}
    model = {
        f"{name}.{key}": shape
        for name in ("subject_box", "object_box")
        for key, shape in head.items()
    }
    source = {f"bbox_embed.{key}": torch.zeros(2) for key in head}
    match = match_state_dict(model, source)
    assert match.loaded == {} and match.missing == list(model)
    assert match.unexpected == list(source)


def test_two_sources_ending_with_one_model_key_are_ambiguous():
    model = {"conv.weight": torch.Size([2])}
    source = {"a.conv.weight": torch.zeros(2), "b.conv.weight": torch.zeros(2)}
    with pytest.raises(ValueError, match="ambiguous") as exc:
        match_state_dict(model, source)
    assert all(name in one_line(exc) for name in ("conv.weight", "a.conv.weight", "b.conv.weight"))


def test_one_source_serving_two_model_tensors_is_ambiguous():
    model = {"a.conv.weight": torch.Size([2]), "b.conv.weight": torch.Size([2])}
    with pytest.raises(ValueError, match="ambiguous") as exc:
        match_state_dict(model, {"conv.weight": torch.zeros(2)})
    assert all(name in one_line(exc) for name in ("a.conv.weight", "b.conv.weight", "conv.weight"))


def test_an_ambiguous_file_is_named_and_leaves_the_model_unchanged(tmp_path):
    weight = torch.randn(4, 3, 3, 3)
    torch.save(
        {"a.backbone.conv1.weight": weight, "b.backbone.conv1.weight": weight}, tmp_path / "w.pt"
    )
    model = Net()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="ambiguous") as exc:
        load_weights(model, tmp_path / "w.pt")
    assert str(tmp_path / "w.pt") in one_line(exc) and "backbone.conv1.weight" in str(exc.value)
    assert_loaded(model, before)


def test_a_longer_match_takes_its_source_before_a_shorter_one():
    """``t.encoder.layers.0.fc.weight`` takes ``encoder.layers.0.fc.weight`` first, so
    ``layers.0.fc.weight`` is left one model key to serve."""
    source = {"encoder.layers.0.fc.weight": torch.zeros(2), "layers.0.fc.weight": torch.ones(2)}
    model = {"t.encoder.layers.0.fc.weight": torch.Size([2]), "t.decoder.layers.0.fc.weight": (2,)}
    match = match_state_dict(model, source)
    assert match.loaded == {
        "t.encoder.layers.0.fc.weight": "encoder.layers.0.fc.weight",
        "t.decoder.layers.0.fc.weight": "layers.0.fc.weight",
    }


def test_exact_names_take_their_sources_before_any_suffix():
    model = {"conv.weight": torch.Size([2]), "net.conv.weight": torch.Size([2])}
    match = match_state_dict(model, {"conv.weight": torch.zeros(2)})
    assert match.loaded == {"conv.weight": "conv.weight"} and match.missing == ["net.conv.weight"]


def test_a_shared_last_part_alone_pairs_nothing():
    match = match_state_dict({"head.weight": torch.Size([2])}, {"other.weight": torch.zeros(2)})
    assert match.loaded == {} and match.missing == ["head.weight"]
    assert match.unexpected == ["other.weight"]
    # ... unless it is a whole key
    match = match_state_dict({"pos": torch.Size([2])}, {"detr.pos": torch.zeros(2)})
    assert match.loaded == {"pos": "detr.pos"}


def test_shape_mismatch_is_left_at_fresh_init_and_listed(tmp_path):
    state = random_state(Net(classes=5))
    torch.save(state, tmp_path / "w.pt")
    model = Net(classes=3)
    fresh = {key: value.clone() for key, value in model.state_dict().items()}
    match = load_weights(model, tmp_path / "w.pt")
    assert match.mismatched == [("head.weight", (3, 4), (5, 4)), ("head.bias", (3,), (5,))]
    assert match.missing == [] and match.unexpected == [] and not match.complete
    assert torch.equal(model.head.weight, fresh["head.weight"])
    assert torch.equal(model.head.bias, fresh["head.bias"])
    assert torch.equal(model.backbone.conv1.weight, state["backbone.conv1.weight"])
    report = format_weights_report(match, tmp_path / "w.pt")
    assert "head.weight [3, 4] here, [5, 4] there" in report


def test_missing_and_unexpected_are_listed(tmp_path):
    state = random_state(Net())
    del state["head.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    model = Net()
    fresh_bias = model.head.bias.detach().clone()
    match = load_weights(model, tmp_path / "w.pt")
    assert match.missing == ["head.bias"] and match.unexpected == ["extra.weight"]
    assert len(match.loaded) == len(Net().state_dict()) - 1
    assert torch.equal(model.head.bias, fresh_bias)


def test_strict_raises_one_line_and_leaves_the_model_unchanged(tmp_path):
    state = random_state(Net(classes=5))
    del state["backbone.bn1.running_var"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "w.pt")
    model = Net()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(ValueError, match="strict=True") as exc:
        load_weights(model, tmp_path / "w.pt", strict=True)
    text = one_line(exc)
    assert "1 missing (backbone.bn1.running_var)" in text and "1 unexpected (extra.weight)" in text
    assert "2 shape-mismatched (head.weight, head.bias)" in text and str(tmp_path) in text
    assert_loaded(model, before)


# reading


def test_realsynth_checkpoint_file_and_run_folder(tmp_path):
    from realsynth.training.checkpoint import rng_states

    model = Net()
    optimizer = torch.optim.AdamW(model.parameters())
    model.head(torch.ones(1, 4)).sum().backward()
    optimizer.step()  # optimizer state with tensors and ints
    state = random_state(model)
    checkpoint = {
        "version": 1,
        "model": state,
        "optimizer": optimizer.state_dict(),
        "sampler": {"position": np.int64(3), "order": np.arange(4)},
        "rng": rng_states(),
        "config": "MODEL:\n  D_MODEL: 32\n",
    }
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save(checkpoint, tmp_path / "run" / "checkpoints" / "last.pt")
    for path in (tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "run"):
        read = read_state_dict(path)
        assert read.keys() == state.keys()
        assert all(torch.equal(read[key], state[key]) for key in state)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
@pytest.mark.parametrize("nest", [None, "model", "state_dict"])
def test_plain_state_dict_also_nested(tmp_path, suffix, nest):
    state = random_state(Net())
    torch.save(state if nest is None else {nest: state, "epoch": 3}, tmp_path / f"w{suffix}")
    read = read_state_dict(tmp_path / f"w{suffix}")
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)


def test_ddp_module_prefix_is_stripped(tmp_path):
    state = random_state(Net())
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    assert read_state_dict(tmp_path / "w.pth").keys() == state.keys()
    model = Net()
    assert load_weights(model, tmp_path / "w.pth", strict=True).by_suffix == {}
    assert_loaded(model, state)


def test_safetensors_file(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    state = random_state(Net())
    safetensors.save_file(state, tmp_path / "model.safetensors")
    model = Net()
    load_weights(model, tmp_path / "model.safetensors", strict=True)
    assert_loaded(model, state)


def test_sharded_safetensors_folder(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    state = random_state(Net())
    keys = sorted(state)
    shards = {"model-1.safetensors": keys[:3], "model-2.safetensors": keys[3:]}
    for name, names in shards.items():
        safetensors.save_file({k: state[k] for k in names}, tmp_path / name)
    weight_map = {key: name for name, names in shards.items() for key in names}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    read = read_state_dict(tmp_path)
    assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    (tmp_path / "model-2.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-2.safetensors") as exc:
        read_state_dict(tmp_path)
    one_line(exc)


def test_missing_safetensors_package_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 16)
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ValueError, match="pip install safetensors") as exc:
        read_state_dict(tmp_path / "model.safetensors")
    assert str(tmp_path) in one_line(exc)


def tiny_detr():
    transformers = pytest.importorskip("transformers")
    config = transformers.DetrConfig(
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone_config=transformers.ResNetConfig(
            embedding_size=8,
            hidden_sizes=[8, 16, 32, 64],
            depths=[1, 1, 1, 1],
            layer_type="bottleneck",
            out_features=["stage4"],
        ),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=5,
    )
    return transformers.DetrModel(config), lambda: transformers.DetrModel(config)


def hf_saved_name(key: str) -> str:
    """Where transformers 5 saves a DetrModel tensor: in its 4.x layout."""
    key = key.replace("backbone.model.", "backbone.conv_encoder.model.")
    return key.replace(".o_proj.", ".out_proj.").replace(".mlp.fc", ".fc")


def test_hf_save_pretrained_folder_reads_back(tmp_path):
    pytest.importorskip("safetensors")
    saved, _ = tiny_detr()
    saved.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    read = read_state_dict(tmp_path)
    own = saved.state_dict()
    assert read.keys() == {hf_saved_name(key) for key in own}
    assert all(torch.equal(read[hf_saved_name(key)], value) for key, value in own.items())


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"", "not a readable checkpoint"),
        (b"\x00 not a pickle", "not a readable checkpoint"),
        (b"PK\x03\x04 a truncated zip", "not a readable checkpoint"),
    ],
)
def test_corrupt_files_are_one_line(tmp_path, content, expected):
    (tmp_path / "w.pt").write_bytes(content)
    with pytest.raises(ValueError, match=expected) as exc:
        read_state_dict(tmp_path / "w.pt")
    assert str(tmp_path / "w.pt") in one_line(exc)


def test_truncated_checkpoint_is_one_line(tmp_path):
    torch.save(random_state(Net()), tmp_path / "w.pt")
    data = (tmp_path / "w.pt").read_bytes()
    (tmp_path / "w.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable checkpoint") as exc:
        read_state_dict(tmp_path / "w.pt")
    one_line(exc)


def test_corrupt_safetensors_is_one_line(tmp_path):
    pytest.importorskip("safetensors")
    (tmp_path / "w.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a readable .safetensors file") as exc:
        read_state_dict(tmp_path / "w.safetensors")
    assert str(tmp_path) in one_line(exc)


@pytest.mark.parametrize(
    "content",
    [[1, 2], {"epoch": 3, "step": 10}, {}, {"model": {"a": 1}}, torch.zeros(3)],
)
def test_not_a_state_dict_is_one_line(tmp_path, content):
    torch.save(content, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="not a state dict") as exc:
        read_state_dict(tmp_path / "w.pt")
    assert str(tmp_path / "w.pt") in one_line(exc)


def test_pickled_module_names_weights_only(tmp_path):
    torch.save(Net(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"weights_only=True.*Net") as exc:
        read_state_dict(tmp_path / "w.pt")
    one_line(exc)


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file") as exc:
        read_state_dict(tmp_path / "nothing.pt")
    assert str(tmp_path / "nothing.pt") in one_line(exc)
    with pytest.raises(FileNotFoundError, match="model.safetensors") as exc:
        read_state_dict(tmp_path)
    assert "checkpoints/last.pt" in one_line(exc)


def test_bad_shard_index_is_one_line(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a shard index") as exc:
        read_state_dict(tmp_path)
    one_line(exc)


# the report


def test_report_counts_and_cuts_long_lists():
    model = {f"layer{i}.weight": torch.Size([2]) for i in range(14)}
    model |= {"head.weight": torch.Size([51, 256]), "body.conv.weight": torch.Size([2])}
    source = {f"layer{i}.weight": torch.zeros(2) for i in range(2)}
    source |= {"head.weight": torch.zeros(6, 256), "detr.body.conv.weight": torch.zeros(2)}
    source |= {"relation_embed.weight": torch.zeros(1)}
    match = match_state_dict(model, source)
    report = format_weights_report(match, "/path/model.safetensors")
    lines = report.splitlines()
    assert lines[0] == (
        "Weights from /path/model.safetensors: 3 of 16 model tensors loaded "
        "(2 by name, 1 by suffix)"
    )
    assert lines[1].split() == ["|", "kind", "|", "count", "|", "tensors", "|"]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in lines[3:]}
    assert rows.keys() == {"shape mismatch", "missing", "unexpected", "by suffix"}
    assert rows["shape mismatch"][1].strip() == "head.weight [51, 256] here, [6, 256] there"
    assert rows["missing"][0].strip() == "12"
    assert rows["missing"][1].strip().endswith("layer11.weight; ... and 2 more")
    assert rows["unexpected"][1].strip() == "relation_embed.weight"
    assert rows["by suffix"][1].strip() == "* <- detr.* (1)"
    full = json.loads(json.dumps(match.to_dict()))
    assert len(full["missing"]) == 12 and full["by_suffix"] == match.by_suffix
    assert full["mismatched"] == [
        {
            "tensor": "head.weight",
            "model_shape": [51, 256],
            "source_shape": [6, 256],
            "source": "head.weight",
        }
    ]


def test_report_of_a_full_match_is_one_line():
    match = WeightsMatch(loaded={"a.weight": "a.weight"}, missing=[], unexpected=[], mismatched=[])
    assert format_weights_report(match, "w.pt") == (
        "Weights from w.pt: 1 of 1 model tensors loaded (1 by name, 0 by suffix)"
    )


def test_report_names_the_source_of_a_suffix_mismatch():
    match = match_state_dict({"body.fc.weight": torch.Size([3])}, {"fc.weight": torch.zeros(4)})
    assert match.mismatched == [("body.fc.weight", (3,), (4,))]
    assert match.unexpected == [] and match.missing == []
    assert "body.fc.weight [3] here, [4] in fc.weight" in format_weights_report(match, "w")


# property: a prefix on one side still loads everything by suffix

_PREFIX = st.lists(st.text("pqz", min_size=1, max_size=3), min_size=1, max_size=3).map(".".join)


def _model() -> nn.Module:
    model = nn.Module()
    model.net = Net()
    model.stack = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    model.fc = nn.Linear(2, 2)
    return model


@settings(max_examples=40, deadline=None)
@given(prefix=_PREFIX, on_source=st.booleans())
def test_prefixed_keys_still_load_everything_by_suffix(prefix, on_source):
    source_prefix, model_prefix = (prefix, "") if on_source else ("", prefix)
    state = _model().state_dict()
    model = {f"{model_prefix}.{k}" if model_prefix else k: v.shape for k, v in state.items()}
    source = {f"{source_prefix}.{k}" if source_prefix else k: v for k, v in state.items()}
    match = match_state_dict(model, source)
    assert match.complete and len(match.loaded) == len(state)
    for key, source_key in match.loaded.items():
        assert source_key.removeprefix(source_prefix + ".") == key.removeprefix(model_prefix + ".")
