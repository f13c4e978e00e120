"""The fast path of a clean relcoco file answers exactly what the full rules answer, and leaves
every file with a problem (or with trust fields) to them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from realsynth.data.formats import relcoco, relcoco_fast
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.formats.relcoco_fast import read_clean_relcoco
from realsynth.data.formats.relcoco_rules import index_relcoco


@st.composite
def relcoco_files(draw: st.DrawFn) -> dict:
    num_images = draw(st.integers(1, 5))
    image_ids = draw(
        st.lists(st.integers(1, 50), min_size=num_images, max_size=num_images, unique=True)
    )
    images = [
        {
            "id": i,
            "file_name": f"{i}.jpg",
            "width": draw(st.integers(8, 40)),
            "height": draw(st.integers(8, 40)),
        }
        for i in image_ids
    ]
    anns, rels = [], []
    for image in draw(st.lists(st.sampled_from(images), max_size=12)):
        w, h = image["width"], image["height"]
        x, y = draw(st.integers(0, w - 2)), draw(st.integers(0, h - 2))
        bbox = [x, y, draw(st.integers(1, w - x)), draw(st.floats(0.5, h - y))]
        anns.append(
            {
                "id": 100 + len(anns),
                "image_id": image["id"],
                "category_id": draw(st.sampled_from([3, 7])),
                "bbox": bbox,
            }
        )
    by_image: dict[int, list[int]] = {}
    for ann in anns:
        by_image.setdefault(ann["image_id"], []).append(ann["id"])
    for members in by_image.values():
        for _ in range(draw(st.integers(0, 3))):
            rel = {
                "subject_id": draw(st.sampled_from(members)),
                "object_id": draw(st.sampled_from(members)),
                "predicate_id": draw(st.sampled_from([2, 5])),
            }
            if draw(st.booleans()):
                rel["image_id"] = next(a["image_id"] for a in anns if a["id"] == rel["subject_id"])
            rels.append(rel)
    draw(st.randoms()).shuffle(rels)
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
        "predicates": [{"id": 5, "name": "near"}, {"id": 2, "name": "on"}],
        "relationships": rels,
    }


def _corrupt(data: dict, how: int) -> None:
    """One kind of damage the full rules report (or, for trust fields, handle)."""
    anns, rels, images = data["annotations"], data["relationships"], data["images"]
    if how == 0 and anns:
        anns[-1]["id"] = anns[0]["id"]  # duplicate annotation id (or the same one: harmless)
    elif how == 1 and anns:
        anns[0]["bbox"][2] = 1000  # outside its image
    elif how == 2 and anns:
        anns[0]["category_id"] = 99
    elif how == 3 and rels:
        rels[0]["object_id"] = 12345
    elif how == 4:
        images[0]["width"] = True  # a bool is no size
    elif how == 5 and anns:
        anns[0]["loss_weight"] = 0.5  # trust fields take the full path
    elif how == 6 and rels:
        rels[0]["image_id"] = 999
    elif how == 7:
        images.append(dict(images[0]))  # duplicate image id
    elif how == 8 and anns:
        anns[0]["bbox"] = [1, 2, 3]


def _assert_same(fast, index) -> None:
    assert fast.classes == index.classes and fast.predicates == index.predicates
    assert fast.category_ids == index.category_ids and fast.predicate_ids == index.predicate_ids
    assert fast.names == [img["file_name"] for img in index.images]
    assert fast.image_ids.tolist() == [img["id"] for img in index.images]
    for name in ("boxes", "labels", "box_image", "relations", "relation_image"):
        ours, theirs = getattr(fast, name), getattr(index, name)
        assert ours.shape == theirs.shape and np.array_equal(ours, theirs), name


@settings(max_examples=120, deadline=None)
@given(data=relcoco_files(), how=st.integers(-1, 8), chunk=st.integers(3, 200))
def test_the_fast_path_agrees_with_the_rules_or_leaves_the_file_to_them(
    tmp_path_factory, data, how, chunk
):
    _corrupt(data, how)
    path = tmp_path_factory.mktemp("r") / "a.json"
    path.write_text(json.dumps(data))
    fast = read_clean_relcoco(path, chunk_bytes=chunk)  # tiny chunks: every boundary case
    index, findings = index_relcoco(json.loads(path.read_text()), path)
    trust = any("loss_weight" in a for a in data["annotations"])
    # The fast path answers exactly for the files without errors or trust fields.
    assert (fast is None) == bool(findings.errors or trust)
    if fast is not None:
        _assert_same(fast, index)


def test_the_demo_sources_read_the_same_either_way(demo_root, monkeypatch):
    for folder in (demo_root / "real" / "train", demo_root / "synthetic" / "train"):
        fast = RelCocoDataset(folder / "annotations.json", folder / "images")
        monkeypatch.setattr(relcoco, "read_clean_relcoco", lambda path: None)
        judged = RelCocoDataset(folder / "annotations.json", folder / "images")
        monkeypatch.undo()
        assert len(fast) == len(judged) and fast.classes == judged.classes
        for index in range(len(fast)):
            a, b = fast.annotation(index), judged.annotation(index)
            for key in a:
                same = (
                    torch.equal(a[key], b[key])
                    if isinstance(a[key], torch.Tensor)
                    else a[key] == b[key]
                )
                assert same, (index, key)


@settings(max_examples=60, deadline=None)
@given(data=relcoco_files(), how=st.integers(-1, 8), with_images=st.booleans())
def test_data_check_reports_the_same_on_either_path(tmp_path_factory, data, how, with_images):
    from PIL import Image

    from realsynth.data import check

    _corrupt(data, how)
    folder = tmp_path_factory.mktemp("c")
    (folder / "a.json").write_text(json.dumps(data))
    (folder / "images").mkdir()
    for image in data["images"][: len(data["images"]) // 2 if not with_images else None]:
        if isinstance(image["width"], int) and not isinstance(image["width"], bool):
            size = (image["width"], image["height"] + (1 if image["id"] % 3 == 0 else 0))
            Image.new("RGB", size).save(folder / "images" / image["file_name"])
    fast = check.check_relcoco(folder / "a.json", folder / "images", check_image_content=True)
    original = check.read_clean_relcoco
    check.read_clean_relcoco = lambda path: None
    try:
        full = check.check_relcoco(folder / "a.json", folder / "images", check_image_content=True)
    finally:
        check.read_clean_relcoco = original
    assert fast.to_dict() == full.to_dict()


needs_compiled = pytest.mark.skipif(
    relcoco_fast.relcoco_columns is None, reason="the compiled reader was not built"
)


def _python_columns(path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(relcoco_fast, "relcoco_columns", None)
        return read_clean_relcoco(path, chunk_bytes=64)


def _assert_same_clean(ours, theirs) -> None:
    assert (ours is None) == (theirs is None)
    if ours is None:
        return
    for clean in (ours, theirs):  # packed by the compiled reader: the same names
        if clean.packed_names is not None:
            buffer, starts = clean.packed_names
            text = buffer.tobytes().decode("ascii")
            assert [text[a:b] for a, b in zip(starts[:-1], starts[1:])] == clean.names
    for name in [*ours.__dataclass_fields__, "relation_ids"]:
        if name == "packed_names":
            continue
        a, b = getattr(ours, name), getattr(theirs, name)
        if isinstance(a, tuple):
            assert all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b)), name
        elif isinstance(a, np.ndarray):
            assert np.array_equal(a, b) and a.dtype == b.dtype, name
        else:
            assert a == b, name


_layouts = st.sampled_from(
    [{}, {"separators": (",", ":")}, {"indent": 2}, {"indent": "\t", "separators": (" ,", " : ")}]
)


@needs_compiled
@settings(max_examples=120, deadline=None)
@given(data=relcoco_files(), how=st.integers(-1, 8), layout=_layouts, extra=st.booleans())
def test_the_compiled_reader_reads_what_the_python_reader_reads(
    tmp_path_factory, data, how, layout, extra
):
    _corrupt(data, how)
    if extra:  # keys the readers skip, at the top and inside entries
        data["info"] = {"year": 2026, "tags": [1, 2.5, None, True, {"a": []}]}
        for entry in data["images"] + data["annotations"]:
            entry["area"], entry["segmentation"] = 1e3, [[1, 2, 3.5]]
    path = tmp_path_factory.mktemp("n") / "a.json"
    path.write_text(json.dumps(data, **layout))
    compiled = relcoco_fast._compiled_columns(path)
    trust = any("loss_weight" in a for a in data["annotations"])
    if not trust and how in (-1, 1, 2, 3, 6):  # JSON of the expected types and keys
        assert compiled is not None  # the compiled reader vouched for the columns
    _assert_same_clean(read_clean_relcoco(path), _python_columns(path))


@needs_compiled
@settings(max_examples=150, deadline=None)
@given(
    data=relcoco_files(), at=st.floats(0, 1), byte=st.sampled_from(list(b'{}[]",:0.-e \\tx\xc3'))
)
def test_the_compiled_reader_vouches_only_for_valid_json(tmp_path_factory, data, at, byte):
    text = bytearray(json.dumps(data).encode())
    text[min(int(at * len(text)), len(text) - 1)] = byte
    path = tmp_path_factory.mktemp("m") / "a.json"
    path.write_bytes(bytes(text))
    try:
        json.loads(bytes(text))
    except ValueError:  # not JSON: never vouched for
        assert relcoco_fast._compiled_columns(path) is None
        return
    _assert_same_clean(read_clean_relcoco(path), _python_columns(path))


@needs_compiled
def test_non_ascii_names_and_escapes_are_left_to_the_python_reader(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
        "annotations": [{"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 4, 4]}],
        "categories": [{"id": 3, "name": "cat"}],
        "predicates": [{"id": 5, "name": "near"}],
        "relationships": [],
    }
    data["images"][0]["file_name"] = 'caf\u00e9 "1".jpg'
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data, ensure_ascii=False))
    assert relcoco_fast._compiled_columns(path) is None
    python = _python_columns(path)
    assert python is not None and python.names[0] == 'caf\u00e9 "1".jpg'
    _assert_same_clean(read_clean_relcoco(path), python)


@needs_compiled
def test_boxes_read_the_same_under_a_comma_decimal_locale(tmp_path):
    """strtod follows the C locale (1.5 read as 1.0 under de_DE): the reader must not."""
    import subprocess
    import sys

    locales = tmp_path / "locales"
    locales.mkdir()
    made = subprocess.run(
        ["localedef", "-i", "de_DE", "-f", "UTF-8", str(locales / "de_DE.UTF-8")],
        capture_output=True,
        check=False,
    )
    if made.returncode not in (0, 1) or not (locales / "de_DE.UTF-8").exists():
        pytest.skip("localedef could not build de_DE.UTF-8 here")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.5, 2.25, 10.75, 20.5]}
        ],
        "categories": [{"id": 3, "name": "cat"}],
        "predicates": [{"id": 5, "name": "near"}],
        "relationships": [],
    }
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    script = (
        "import locale, sys\n"
        "from realsynth.data.formats.relcoco_fast import _compiled_columns, read_clean_relcoco\n"
        "assert locale.setlocale(locale.LC_NUMERIC, 'de_DE.UTF-8')\n"
        "assert locale.localeconv()['decimal_point'] == ','\n"
        "assert _compiled_columns(__import__('pathlib').Path(sys.argv[1])) is not None\n"
        "print(read_clean_relcoco(sys.argv[1]).boxes.tolist())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        check=True,
        env={**__import__("os").environ, "LOCPATH": str(locales)},
    )
    assert json.loads(out.stdout) == [[1.5, 2.25, 10.75, 20.5]]
