"""Procedural demo data: determinism, label semantics, label noise, flip-map consistency."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
import torch

from realsynth.data.demo import DEMO_PREDICATES, demo_predicate_flip_map, generate_demo
from realsynth.data.demo_render import DemoObject
from realsynth.data.demo_scene import pair_predicate
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.transforms import RandomHorizontalFlip, predicate_flip_indices

SMALL = {"real_train": 12, "real_val": 4, "synthetic_train": 40, "synthetic_val": 4}


def expected_predicate(boxes: torch.Tensor, s: int, o: int) -> set[int]:
    """Spatial predicates consistent with cxcywh boxes (either, when close to the diagonal)."""
    dx, dy = (boxes[o, :2] - boxes[s, :2]).tolist()
    out = set()
    if abs(dx) >= 1.5 * abs(dy) - 1e-6:
        out.add(DEMO_PREDICATES.index("left of" if dx > 0 else "right of"))
    if abs(dy) >= 1.5 * abs(dx) - 1e-6:
        out.add(DEMO_PREDICATES.index("above" if dy > 0 else "below"))
    return out


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate_demo(tmp_path_factory.mktemp("demo") / "out", seed=5, **SMALL)


def test_same_seed_gives_identical_bytes(demo: dict[str, Path], tmp_path: Path) -> None:
    again = generate_demo(tmp_path / "again", seed=5, **SMALL)
    for key, path in demo.items():
        assert filecmp.cmp(path, again[key], shallow=False)
        left, right = (
            sorted((path.parent / "images").iterdir()),
            sorted((again[key].parent / "images").iterdir()),
        )
        assert [p.name for p in left] == [p.name for p in right]
        assert all(filecmp.cmp(a, b, shallow=False) for a, b in zip(left, right))
    other = generate_demo(tmp_path / "other", seed=6, **SMALL)
    assert not filecmp.cmp(demo["real/train"], other["real/train"], shallow=False)


def test_real_labels_follow_geometry(demo: dict[str, Path]) -> None:
    ds = RelCocoDataset(demo["real/train"], demo["real/train"].parent / "images")
    assert len(ds) == SMALL["real_train"] and ds.predicates == list(DEMO_PREDICATES)
    same_color = DEMO_PREDICATES.index("same color as")
    for k in range(len(ds)):
        item = ds[k]
        assert item["image"].shape == (3, 64, 64) and 2 <= len(item["boxes"]) <= 4
        assert 1 <= len(item["relations"]) <= 8
        assert (item["boxes"][:, 2:] * 64 >= 12).all()
        for s, o, p in item["relations"].tolist():
            if p != same_color:
                assert p in expected_predicate(item["boxes"], s, o)


def test_pair_predicate_hand_cases() -> None:
    a = DemoObject(shape=0, color=0, x0=0, y0=0, size=10)
    assert DEMO_PREDICATES[pair_predicate(a, DemoObject(1, 1, 30, 5, 10))] == "left of"
    assert DEMO_PREDICATES[pair_predicate(a, DemoObject(1, 1, 2, 40, 10))] == "above"
    assert pair_predicate(a, DemoObject(1, 1, 20, 20, 10)) is None  # diagonal: ambiguous
    assert DEMO_PREDICATES[pair_predicate(a, DemoObject(2, 0, 30, 5, 10))] == "same color as"


def _synthetic_only(folder: Path, label_noise: float) -> dict[str, Path]:
    sizes = {"real_train": 0, "real_val": 0, "synthetic_train": 150, "synthetic_val": 0}
    return generate_demo(folder, seed=1, label_noise=label_noise, **sizes)


def test_label_noise_rate(tmp_path: Path) -> None:
    clean = _synthetic_only(tmp_path / "c", 0.0)
    noisy = _synthetic_only(tmp_path / "n", 0.3)
    a = RelCocoDataset(clean["synthetic/train"], tmp_path, check_files=False)
    b = RelCocoDataset(noisy["synthetic/train"], tmp_path, check_files=False)
    changed = total = 0
    for k in range(len(a)):
        ra, rb = a.annotation(k), b.annotation(k)
        assert torch.equal(ra["boxes"], rb["boxes"])  # same scenes, only labels differ
        changed += int((ra["relations"][:, 2] != rb["relations"][:, 2]).sum())
        total += len(ra["relations"])
    assert 0.2 < changed / total < 0.4


def test_flip_map_keeps_labels_true(demo: dict[str, Path]) -> None:
    ds = RelCocoDataset(demo["real/val"], demo["real/val"].parent / "images")
    flip = RandomHorizontalFlip(
        1.0, predicate_flip_indices(demo_predicate_flip_map(), ds.predicates)
    )
    ds.transforms = flip
    same_color = DEMO_PREDICATES.index("same color as")
    for k in range(len(ds)):
        item = ds[k]
        for s, o, p in item["relations"].tolist():
            if p != same_color:
                assert p in expected_predicate(item["boxes"], s, o)


def test_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="class_noise"):
        generate_demo(tmp_path, label_noise=1.5)
    with pytest.raises(ValueError, match="real_train"):
        generate_demo(tmp_path, real_train=-1)
    (tmp_path / "real" / "train").mkdir(parents=True)
    (tmp_path / "real" / "train" / "keep.txt").write_text("user data")
    with pytest.raises(ValueError, match="was not made by `realsynth data demo`"):
        generate_demo(tmp_path, **SMALL)
    assert (tmp_path / "real" / "train" / "keep.txt").exists()
    np.testing.assert_equal(sorted(p.name for p in (tmp_path / "real").iterdir()), ["train"])


def test_the_corruption_record_lists_exactly_the_labels_that_differ_from_clean(tmp_path):
    import json

    from realsynth.data.demo import CORRUPTION_FILE, generate_demo

    sizes = dict(real_train=2, real_val=2, synthetic_train=30, synthetic_val=4, real_test=0)
    noisy = generate_demo(tmp_path / "noisy", label_noise=0.5, **sizes)
    clean = generate_demo(tmp_path / "clean", label_noise=0.0, **sizes)
    assert not (noisy["real/train"].parent / CORRUPTION_FILE).exists()
    for split in ("synthetic/train", "synthetic/val"):
        written = json.loads(noisy[split].read_text())
        truth = json.loads(clean[split].read_text())
        record = json.loads((noisy[split].parent / CORRUPTION_FILE).read_text())
        changed_boxes = {
            a["id"]: (t["category_id"] - 1, a["category_id"] - 1)
            for a, t in zip(written["annotations"], truth["annotations"])
            if a["category_id"] != t["category_id"]
        }
        changed_rels = {
            k: (t["predicate_id"] - 1, r["predicate_id"] - 1)
            for k, (r, t) in enumerate(zip(written["relationships"], truth["relationships"]))
            if r["predicate_id"] != t["predicate_id"]
        }
        assert {b["annotation_id"]: (b["true"], b["written"]) for b in record["boxes"]} == (
            changed_boxes
        )
        assert {r["relationship"]: (r["true"], r["written"]) for r in record["relationships"]} == (
            changed_rels
        )
        assert changed_boxes and changed_rels  # at a rate of 0.5 some of each


def test_cli_demo_writes_the_real_test_split_it_is_asked_for(tmp_path: Path, capsys) -> None:
    from realsynth.cli import main
    from realsynth.data.demo import recorded_demo_settings

    out = tmp_path / "demo"
    sizes = ["--real-train", "3", "--real-val", "2", "--synthetic-train", "3"]
    sizes += ["--synthetic-val", "2"]
    assert main(["data", "demo", str(out), *sizes, "--real-test", "0"]) == 0
    assert "real/test" not in capsys.readouterr().out
    assert not (out / "real" / "test").exists()
    assert "real_test" not in recorded_demo_settings(out)

    assert main(["data", "demo", str(out), *sizes, "--real-test", "4"]) == 0
    assert (
        len(RelCocoDataset(out / "real" / "test" / "annotations.json", out / "real/test/images"))
        == 4
    )
    assert recorded_demo_settings(out)["real_test"] == 4
    # Asked for none again: the earlier test split does not stay behind to be used.
    assert main(["data", "demo", str(out), *sizes, "--real-test", "0"]) == 0
    assert not (out / "real" / "test").exists()


def test_cli_demo_into_a_folder_whose_name_is_not_utf8(tmp_path: Path, capsys) -> None:
    import os

    from realsynth.cli import main

    out = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    sizes = ["--real-train", "2", "--real-val", "1", "--synthetic-train", "2"]
    assert main(["data", "demo", str(out), *sizes, "--synthetic-val", "1", "--real-test", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = repr(bytes(tmp_path) + b"/caf\xe9/real/train/annotations.json")
    assert printed[0] == f"real/train: {expected}"
    assert (
        len(RelCocoDataset(out / "real" / "train" / "annotations.json", out / "real/train/images"))
        == 2
    )
