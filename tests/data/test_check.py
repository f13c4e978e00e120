"""data check: every problem code on deliberately broken relcoco and VG150 data."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from test_relcoco import make_records, write_dataset
from test_vg150 import H5, IMAGES, build_vg_folder

from realsynth.data.check import check_dataset
from realsynth.data.image_files import list_files


def codes(problems) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for p in problems:
        out.setdefault(p.code, []).append(p.location)
    return out


def test_clean_relcoco_passes_with_counts(tmp_path: Path) -> None:
    records = make_records(3)
    report = check_dataset(write_dataset(tmp_path, records))
    assert report.format == "relcoco" and report.exit_code == 0
    assert report.errors == [] and report.warnings == []
    assert (report.num_images, report.num_objects, report.num_relations) == (3, 7, 6)
    assert sum(report.class_counts.values()) == 7 and report.predicate_counts == {
        "on": 2,
        "left of": 2,
        "right of": 2,
    }
    text = report.format_text()
    assert "images: 3" in text and "result: OK" in text


def broken_relcoco(tmp_path: Path) -> Path:
    path = write_dataset(tmp_path, make_records(4))
    data = json.loads(path.read_text())
    data["images"].append(
        {"id": 2, "file_name": "dup.png", "width": 5, "height": 5}
    )  # duplicate id
    data["images"].append({"id": 77, "file_name": "lonely.png", "width": 10, "height": 10})
    anns = data["annotations"]
    anns[0]["bbox"] = [1, 1, 0, 4]  # zero area
    anns[1]["bbox"] = [30, 1, 30, 4]  # image 1 is 40 wide
    anns[2]["category_id"] = 42
    anns.append({"id": 500, "image_id": 999, "category_id": 1, "bbox": [0, 0, 1, 1]})
    anns.append({"id": 501, "image_id": 77, "category_id": 1, "bbox": [0, 0, 2, 2]})
    rels = data["relationships"]
    rels[0]["predicate_id"] = 9
    rels[1]["object_id"] = 12345
    rels.append(
        {"image_id": 1, "subject_id": anns[0]["id"], "object_id": anns[3]["id"], "predicate_id": 1}
    )
    rels.append(dict(rels[2]))
    (tmp_path / "images" / "sub" / "3.png").unlink()
    (tmp_path / "images" / "sub" / "2.png").write_bytes(b"garbage")
    Image.new("RGB", (10, 12)).save(tmp_path / "images" / "lonely.png")
    path.write_text(json.dumps(data))
    return path


def test_every_relcoco_problem_is_reported_with_location(tmp_path: Path) -> None:
    report = check_dataset(broken_relcoco(tmp_path))
    errors, warnings = codes(report.errors), codes(report.warnings)
    assert errors["duplicate_id"] == ["images[4] (id 2)"]
    assert errors["empty_box"] == ["annotations[0] (id 1)"]
    assert errors["box_outside_image"] == ["annotations[1] (id 2)"]
    assert errors["unknown_category"] == ["annotations[2] (id 3)"]
    assert errors["unknown_image"] == [f"annotations[{report.num_objects - 2}] (id 500)"]
    assert errors["unknown_predicate"] == ["relationships[0]"]
    assert errors["unknown_annotation"] == ["relationships[1]"]
    assert errors["cross_image_relation"] == [f"relationships[{report.num_relations - 2}]"]
    assert errors["missing_image"] == ["images[3] (id 4, sub/3.png)"]
    assert errors["unreadable_image"] == ["images[2] (id 3, sub/2.png)"]
    assert errors["size_mismatch"] == ["images[5] (id 77, lonely.png)"]
    assert warnings["duplicate_relation"] == [f"relationships[{report.num_relations - 1}]"]
    # Image 1's two relations are both broken, so it has no valid relation left either.
    assert warnings["no_relations"] == [
        "images[0] (id 1, sub/0.png)",
        "images[5] (id 77, lonely.png)",
    ]
    assert report.exit_code == 1
    data = report.to_dict()
    assert data["num_errors"] == len(report.errors) and data["exit_code"] == 1
    assert "FAILED" in report.format_text()


def test_existence_only_mode_skips_content(tmp_path: Path) -> None:
    report = check_dataset(broken_relcoco(tmp_path), check_image_content=False)
    errors = codes(report.errors)
    assert (
        "missing_image" in errors
        and "unreadable_image" not in errors
        and "size_mismatch" not in errors
    )


def test_warnings_only_exit_zero(tmp_path: Path) -> None:
    path = write_dataset(tmp_path, make_records(2))
    data = json.loads(path.read_text())
    data["relationships"] = [r for r in data["relationships"] if r["image_id"] != 2]
    path.write_text(json.dumps(data))
    report = check_dataset(path)
    assert report.errors == [] and codes(report.warnings) == {
        "no_relations": ["images[1] (id 2, sub/1.png)"]
    }
    assert report.exit_code == 0


def test_invalid_json_and_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{not json")
    assert codes(check_dataset(tmp_path / "bad.json").errors) == {
        "invalid_file": [str(tmp_path / "bad.json")]
    }
    with pytest.raises(ValueError, match="cannot tell the format"):
        check_dataset(tmp_path)


def test_list_files_uses_folders(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "y.png").write_bytes(b"")
    assert list_files(tmp_path, ["a/x.png", "y.png", "a/z.png", "nope/x.png"]) == {
        "a/x.png",
        "y.png",
    }


def test_clean_vg150_passes(tmp_path: Path) -> None:
    report = check_dataset(build_vg_folder(tmp_path / "vg"))
    assert report.format == "vg150" and report.errors == []
    assert (report.num_images, report.num_objects, report.num_relations) == (5, 8, 4)
    assert report.class_counts == {"cat": 4, "dog": 2, "tree": 2}
    assert report.predicate_counts == {"on": 2, "near": 2}
    assert sorted(codes(report.warnings)["no_relations"]) == ["h5 row 1 (image_id 11)"]


def test_every_vg150_problem_is_reported(tmp_path: Path) -> None:
    boxes = [list(b) for b in H5["boxes_1024"]]
    boxes[2] = [100, 100, 0, 50]
    boxes[3] = [1000, 300, 100, 50]  # image 11 is square: x2 = 1050 / 1024 * 100 px > 100
    overrides = {
        "boxes_1024": boxes,
        "labels": [[1], [2], [3], [1], [7], [3], [1], [1]],
        "predicates": [[1], [2], [0], [1]],
        "relationships": [[0, 1], [0, 1], [5, 4], [6, 2]],
        "img_to_last_box": [1, 3, 5, 9, -1],
    }
    root = build_vg_folder(tmp_path / "vg", h5_overrides=overrides)
    (root / "VG_100K" / "13.jpg").unlink()
    Image.new("RGB", (30, 30)).save(root / "VG_100K" / "14.jpg")
    report = check_dataset(root)
    errors, warnings = codes(report.errors), codes(report.warnings)
    assert errors["empty_box"] == ["boxes_1024[2]"]
    assert errors["box_outside_image"] == ["boxes_1024[3] of h5 row 1 (image_id 11)"]
    assert errors["unknown_category"] == ["labels[4]"]
    assert errors["unknown_predicate"] == ["predicates[2]"]
    assert errors["invalid_file"] == ["h5 row 3 (image_id 13)"]
    assert errors["missing_image"] == ["h5 row 3 (image_id 13)"]
    assert warnings["size_mismatch"] == ["h5 row 4 (image_id 14)"]
    assert report.exit_code == 1


def test_vg150_cross_image_relation_and_row_mismatch(tmp_path: Path) -> None:
    root = build_vg_folder(
        tmp_path / "a", h5_overrides={"relationships": [[0, 1], [0, 1], [5, 4], [6, 2]]}
    )
    assert codes(check_dataset(root).errors) == {
        "cross_image_relation": ["relationships[3] of h5 row 3 (image_id 13)"]
    }
    short = build_vg_folder(tmp_path / "b", images=IMAGES[:-1])
    assert list(codes(check_dataset(short).errors)) == ["invalid_file"]
    with h5py.File(short / "VG-SGG-with-attri.h5", "a") as f:
        del f["predicates"]
        f.create_dataset("other", data=np.zeros(1))
    assert "missing h5 datasets ['predicates']" in check_dataset(short).errors[0].message


def test_cli_check_prints_names_that_are_not_utf8_as_their_bytes(tmp_path: Path, capsys) -> None:
    """A folder and image names with bytes that are not UTF-8 (Linux allows them; Python gives
    them as surrogate escapes): the report prints them as \\xNN on a strict UTF-8 stdout."""
    import os

    from realsynth.cli import main

    root = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    records = make_records(3)
    for r in records:
        r["file_name"] = os.fsdecode(b"\xff" + os.fsencode(r["file_name"]))
    ann = write_dataset(root, records)
    (root / "images" / records[0]["file_name"]).unlink()
    assert check_dataset(ann).exit_code == 1  # the other images are found and read
    assert main(["data", "check", str(ann)]) == 1
    out = capsys.readouterr().out
    assert f"relcoco dataset: {tmp_path}/caf\\xe9/annotations.json" in out
    assert f"image file not found: {tmp_path}/caf\\xe9/images/\\xffsub/0.png" in out
    assert len([x for x in out.splitlines() if "missing_image" in x]) == 1
