"""The demo's synthetic damage: presets, each knob changing what it claims and nothing else, and
a corruption record exact enough to restore the truth."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from realsynth.cli import main
from realsynth.data.demo import CORRUPTION_FILE, DEMO_PREDICATES, generate_demo
from realsynth.data.demo_damage import (
    DEMO_PRESETS,
    SyntheticDamage,
    damaged_annotation,
    demo_damage,
)
from realsynth.data.demo_settings import DEMO_DAMAGE_DEFAULTS

SIZES = dict(real_train=2, real_val=1, synthetic_train=40, synthetic_val=1, real_test=0)
CLEAN = SyntheticDamage(class_noise=0.0, predicate_noise=0.0)
SAME_COLOR = DEMO_PREDICATES.index("same color as") + 1  # predicate ids are 1-based


def _files(root: Path, domain: str) -> dict[str, bytes]:
    """Every file of a domain's train split (annotations and images) by name."""
    folder = root / domain / "train"
    return {
        p.name: p.read_bytes()
        for p in sorted([*folder.iterdir(), *(folder / "images").iterdir()])
        if p.is_file()
    }


def _per_image(path: Path) -> dict[int, dict[str, list]]:
    """image id -> its annotations (box xywh, category) and relationships (subject box, object
    box, predicate), in file order."""
    data = json.loads(path.read_text())
    boxes = {a["id"]: a for a in data["annotations"]}
    out: dict[int, dict[str, list]] = {
        i["id"]: {"objects": [], "relations": []} for i in data["images"]
    }
    for a in data["annotations"]:
        out[a["image_id"]]["objects"].append((tuple(a["bbox"]), a["category_id"]))
    for r in data["relationships"]:
        s, o = boxes[r["subject_id"]], boxes[r["object_id"]]
        out[s["image_id"]]["relations"].append(
            (tuple(s["bbox"]), tuple(o["bbox"]), r["predicate_id"])
        )
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    generate_demo(root, damage=CLEAN, **SIZES)
    return root


def _with(tmp_path: Path, **knobs: float) -> Path:
    generate_demo(tmp_path / "damaged", damage=replace(CLEAN, **knobs), **SIZES)
    return tmp_path / "damaged"


def test_the_mild_preset_writes_the_bytes_of_earlier_releases(tmp_path: Path) -> None:
    # Recorded with the generator before the damage knobs existed.
    sizes = dict(real_train=20, real_val=5, synthetic_train=60, synthetic_val=5, real_test=5)
    generate_demo(tmp_path, seed=3, damage="mild", **sizes)
    expected = {
        "synthetic/train/annotations.json": (
            "0b53eae39012b78679bb4ad20efb95cd1b526899c20599a326070a50693e872f"
        ),
        "real/train/annotations.json": (
            "4e5bf58002d4a180b61ea5480dd50d0b81da3db87100cd347241b13cc0f559fe"
        ),
        "synthetic/train/images/000007.png": (
            "6b543a0a27f766a4bc4bcfab33581e3db0592ff9a96ff66c955315a2cf0c504c"
        ),
        "real/train/images/000003.png": (
            "94c89fcd77c81fc8b7af5e46ee2b197f133156a0153724f7e46bf4c225bf1eba"
        ),
    }
    for name, digest in expected.items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest, name
    assert DEMO_PRESETS["mild"] == SyntheticDamage() == demo_damage("mild")


def test_the_presets_and_the_knobs_agree_with_the_settings_table() -> None:
    assert SyntheticDamage().as_dict() == DEMO_DAMAGE_DEFAULTS
    noisy, shifted = DEMO_PRESETS["noisy"], DEMO_PRESETS["shifted"]
    assert noisy.class_noise > 0.1 and noisy.missing_objects > 0 and noisy.box_noise > 0
    assert shifted.class_noise == 0.1 and shifted.class_shift > 0 and shifted.hue_shift > 0
    assert demo_damage("noisy", label_noise=0.0, overrides={"box_noise": 0.5}) == replace(
        noisy, class_noise=0.0, predicate_noise=0.0, box_noise=0.5
    )
    assert demo_damage("mild", label_noise=0.2, overrides={"class_noise": 0.4}).class_noise == 0.4
    with pytest.raises(ValueError, match="unknown demo preset 'loud'"):
        demo_damage("loud")
    with pytest.raises(ValueError, match="hue_shift must be in \\[0, 360\\) degrees"):
        SyntheticDamage(hue_shift=360.0)
    with pytest.raises(ValueError, match="unknown demo damage knob 'blur'"):
        demo_damage(overrides={"blur": 1.0})


@pytest.mark.parametrize(
    "knob, value, changed",
    [
        ("class_noise", 0.5, {"category_id"}),
        ("predicate_noise", 0.5, {"predicate_id"}),
        ("missing_objects", 0.4, {"objects", "relations"}),
        ("missing_relations", 0.5, {"relations"}),
        ("box_noise", 0.3, {"bbox"}),
        ("class_shift", 0.9, {"category_id", "pixels"}),
        ("appearance_gap", 0.0, {"pixels"}),
        ("hue_shift", 180.0, {"pixels"}),
    ],
)
def test_each_knob_changes_what_it_claims_and_nothing_else(
    clean: Path, tmp_path: Path, knob: str, value: float, changed: set[str]
) -> None:
    damaged = _with(tmp_path, **{knob: value})
    assert _files(damaged, "real") == _files(clean, "real")  # the real domain is never damaged
    before, after = _files(clean, "synthetic"), _files(damaged, "synthetic")
    images = [name for name in before if name.endswith(".png")]
    pixels_differ = sum(before[n] != after[n] for n in images)
    assert (pixels_differ > len(images) // 2) if "pixels" in changed else pixels_differ == 0
    old = json.loads(before["annotations.json"])
    new = json.loads(after["annotations.json"])
    if changed & {"objects", "relations"}:
        _assert_subsets(clean, damaged, objects_too="objects" in changed)
        return
    for field, key in (
        ("category_id", "annotations"),
        ("bbox", "annotations"),
        ("predicate_id", "relationships"),
    ):
        differs = [a[field] != b[field] for a, b in zip(old[key], new[key], strict=True)]
        assert any(differs) == (field in changed), field


def _assert_subsets(clean: Path, damaged: Path, *, objects_too: bool) -> None:
    """Every annotated object and listed relation of the damaged file is one of the clean
    file's; some are missing; every image keeps at least one relation."""
    full = _per_image(clean / "synthetic/train/annotations.json")
    kept = _per_image(damaged / "synthetic/train/annotations.json")
    lost_objects = lost_relations = 0
    for image_id, truth in full.items():
        assert set(kept[image_id]["objects"]) <= set(truth["objects"])
        assert set(kept[image_id]["relations"]) <= set(truth["relations"])
        assert kept[image_id]["relations"]
        lost_objects += len(truth["objects"]) - len(kept[image_id]["objects"])
        lost_relations += len(truth["relations"]) - len(kept[image_id]["relations"])
    assert (lost_objects > 0) == objects_too and lost_relations > 0


def test_a_predicate_shift_makes_same_color_pairs_common(clean: Path, tmp_path: Path) -> None:
    def same_color_share(root: Path) -> float:
        rels = json.loads((root / "synthetic/train/annotations.json").read_text())["relationships"]
        return float(np.mean([r["predicate_id"] == SAME_COLOR for r in rels]))

    assert (
        same_color_share(clean)
        < 0.5
        < 0.75
        < same_color_share(_with(tmp_path, predicate_shift=0.8))
    )


def test_a_class_shift_makes_one_class_common(tmp_path: Path) -> None:
    anns = json.loads(
        (_with(tmp_path, class_shift=0.9) / "synthetic/train/annotations.json").read_text()
    )
    first = np.mean([a["category_id"] == 1 for a in anns["annotations"]])
    assert first > 0.8  # expected 0.9 + 0.1 / 3


def test_the_appearance_gap_and_hue_shift_act_on_pixels_as_documented(
    clean: Path, tmp_path: Path
) -> None:
    flat = np.asarray(Image.open(clean / "synthetic/train/images/000000.png"), np.int64)
    real_like = np.asarray(
        Image.open(_with(tmp_path / "a", appearance_gap=0.0) / "synthetic/train/images/000000.png"),
        np.int64,
    )
    turned = np.asarray(
        Image.open(_with(tmp_path / "b", hue_shift=180.0) / "synthetic/train/images/000000.png"),
        np.int64,
    )
    background = (flat == flat[0, 0]).all(axis=2)
    assert flat[background].std() == 0 and real_like[background].std() > 5  # texture, noise
    assert (turned[background] == flat[background]).all()  # grays keep their gray
    assert np.abs(turned[~background] - flat[~background]).max() > 100  # colors change


def test_the_corruption_record_restores_the_truth_of_the_noisy_preset(
    clean: Path, tmp_path: Path
) -> None:
    damaged = tmp_path / "noisy"
    noisy = replace(DEMO_PRESETS["noisy"])
    generate_demo(damaged, damage=noisy, **SIZES)
    record = json.loads((damaged / "synthetic/train" / CORRUPTION_FILE).read_text())
    assert record["settings"] == noisy.as_dict()
    assert all(
        record[k]
        for k in (
            "boxes",
            "relationships",
            "moved_boxes",
            "missing_objects",
            "missing_relationships",
        )
    )
    restored = _restore(
        json.loads((damaged / "synthetic/train/annotations.json").read_text()), record
    )
    truth = _per_image(clean / "synthetic/train/annotations.json")
    for image_id, objects in restored["objects"].items():
        assert sorted(objects) == sorted(truth[image_id]["objects"])
        assert sorted(restored["relations"][image_id]) == sorted(truth[image_id]["relations"])


def _xywh(box: list[int]) -> tuple[int, int, int, int]:
    return (box[0], box[1], box[2] - box[0], box[3] - box[1])


def _restore(written: dict, record: dict) -> dict[str, dict[int, list]]:
    """The clean annotations, from the written ones and the record alone."""
    true_class = {b["annotation_id"]: b["true"] + 1 for b in record["boxes"]}
    true_box = {b["annotation_id"]: _xywh(b["true"]) for b in record["moved_boxes"]}
    objects: dict[int, list] = {i["id"]: [] for i in written["images"]}
    box_of: dict[int, tuple] = {}
    for a in written["annotations"]:
        box_of[a["id"]] = true_box.get(a["id"], tuple(a["bbox"]))
        objects[a["image_id"]].append((box_of[a["id"]], true_class.get(a["id"], a["category_id"])))
    for m in record["missing_objects"]:
        objects[m["image_id"]].append((_xywh(m["box"]), m["class"] + 1))
    true_predicate = {r["relationship"]: r["true"] + 1 for r in record["relationships"]}
    relations: dict[int, list] = {i: [] for i in objects}
    image_of = {a["id"]: a["image_id"] for a in written["annotations"]}
    for k, r in enumerate(written["relationships"]):
        ends = (box_of[r["subject_id"]], box_of[r["object_id"]])
        relations[image_of[r["subject_id"]]].append(
            (*ends, true_predicate.get(k, r["predicate_id"]))
        )

    def end(ref: dict) -> tuple:
        if "annotation_id" in ref:
            return box_of[ref["annotation_id"]]
        return _xywh(record["missing_objects"][ref["missing_object"]]["box"])

    for m in record["missing_relationships"]:
        relations[m["image_id"]].append((end(m["subject"]), end(m["object"]), m["predicate"] + 1))
    return {"objects": objects, "relations": relations}


@settings(max_examples=60, deadline=None)
@given(
    num_objects=st.integers(2, 6),
    pairs=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 4)), min_size=1, max_size=8
    ),
    shares=st.tuples(*[st.floats(0.0, 1.0)] * 3),
    seed=st.integers(0, 2**16),
)
def test_damaged_annotations_stay_valid_and_their_record_adds_up(
    num_objects, pairs, shares, seed
) -> None:
    rng = np.random.default_rng(seed)
    relations = np.array([(s % num_objects, o % num_objects, p) for s, o, p in pairs], np.int64)
    relations = relations[relations[:, 0] != relations[:, 1]]
    if not len(relations):
        relations = np.array([[0, 1, 0]], np.int64)
    x0 = rng.integers(0, 40, size=num_objects)
    side = rng.integers(4, 20, size=num_objects)
    boxes = np.stack([x0, x0, x0 + side, x0 + side], axis=1)
    labels = rng.integers(0, 3, size=num_objects)
    scene = {
        "boxes": boxes,
        "labels": labels,
        "relations": relations,
        "true_labels": labels,
        "true_predicates": relations[:, 2],
        "changed_labels": np.zeros(num_objects, bool),
        "changed_predicates": np.zeros(len(relations), bool),
    }
    damage = SyntheticDamage(
        missing_objects=shares[0], missing_relations=shares[1], box_noise=shares[2]
    )
    ann, record = damaged_annotation(scene, damage, 64, (seed, 1, 0, 0))
    n, m = len(ann["boxes"]), len(ann["relations"])
    assert n + len(record["missing_objects"]) == num_objects
    assert m + len(record["missing_relations"]) == len(relations) and m >= 1
    assert (ann["relations"][:, :2] < n).all()
    written = ann["boxes"]
    assert (
        (written[:, 2:] - written[:, :2] >= 2).all()
        and (written >= 0).all()
        and (written <= 64).all()
    )
    for _, true, moved in record["moved_boxes"]:
        reach = shares[2] * (true[2] - true[0]) + 0.5
        assert np.abs(np.array(moved) - np.array(true)).max() <= max(reach, 2)


def test_cli_demo_presets_knobs_and_a_bad_knob(tmp_path: Path, capsys) -> None:
    sizes = [
        "--real-train",
        "2",
        "--real-val",
        "1",
        "--synthetic-train",
        "4",
        "--synthetic-val",
        "1",
        "--real-test",
        "0",
    ]
    assert (
        main(
            [
                "data",
                "demo",
                str(tmp_path / "a"),
                "--preset",
                "shifted",
                "--box-noise",
                "0.1",
                *sizes,
            ]
        )
        == 0
    )
    marker = json.loads((tmp_path / "a" / ".realsynth-demo").read_text())["settings"]
    assert (
        marker["preset"] == "custom" and marker["box_noise"] == 0.1 and marker["hue_shift"] == 180.0
    )
    assert main(["data", "demo", str(tmp_path / "b"), "--missing-objects", "1.5", *sizes]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["realsynth: error: demo damage missing_objects must be in [0, 1], got 1.5"]


def test_every_knob_has_a_cli_option_with_its_meaning(capsys) -> None:
    from realsynth.cli.data_commands import _KNOB_HELP

    assert list(_KNOB_HELP) == list(DEMO_DAMAGE_DEFAULTS)
    with pytest.raises(SystemExit):
        main(["data", "demo", "--help"])
    out = capsys.readouterr().out
    assert all(f"--{name.replace('_', '-')}" in out for name in DEMO_DAMAGE_DEFAULTS)
