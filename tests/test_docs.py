"""The examples in docs/data.md build datasets that load and check clean (the docs stay true)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from PIL import Image

from realsynth.data.check import check_dataset
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.formats.vg150 import vg150_from_folder

DOC = Path(__file__).resolve().parents[1] / "docs" / "data.md"


def _block(language: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 1, f"docs/data.md should hold one {language} example"
    return blocks[0]


def test_the_relcoco_example_loads_and_checks_clean(tmp_path: Path) -> None:
    data = json.loads(_block("json"))
    (tmp_path / "images").mkdir()
    for image in data["images"]:
        Image.new("RGB", (image["width"], image["height"])).save(
            tmp_path / "images" / image["file_name"]
        )
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    report = check_dataset(tmp_path / "annotations.json")
    assert report.errors == [] and report.warnings == []
    ds = RelCocoDataset(tmp_path / "annotations.json", tmp_path / "images")
    assert ds.classes == ["person", "table"] and ds.predicates == ["left of", "above"]
    first = ds.annotation(0)
    assert first["boxes"].tolist() == [[4, 6, 24, 36], [30, 10, 55, 30]]
    assert first["relations"].tolist() == [[0, 1, 0]]


def test_the_vg150_example_loads_and_checks_clean(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(_block("python"), str(DOC), "exec"), {})
    report = check_dataset(tmp_path / "vg_small")
    assert report.errors == [] and report.warnings == []
    assert (report.num_images, report.num_objects, report.num_relations) == (2, 4, 2)
    val = vg150_from_folder(tmp_path / "vg_small", split="val", num_val_images=1)
    first = val.annotation(0)
    # [224, 336, 320, 480] at scale 1024 is x1 = 64, y1 = 96, x2 = 384, y2 = 576; / 16 in pixels.
    assert first["boxes"][0].tolist() == [4, 6, 24, 36]
    assert first["labels"].tolist() == [0, 1] and first["relations"].tolist() == [[0, 1, 0]]


def test_the_readme_library_example_runs_on_demo_data(tmp_path: Path) -> None:
    from realsynth.data.demo import generate_demo

    paths = generate_demo(tmp_path, real_train=20, real_val=1, synthetic_train=10, synthetic_val=1)
    readme = (DOC.parents[1] / "README.md").read_text()
    code = re.search(r"## Library example\n\n```python\n(.*?)```", readme, flags=re.S).group(1)
    for name, split in (("real", "real"), ("render", "synthetic")):
        ann = paths[f"{split}/train"]
        code = code.replace(f'"data/{name}/annotations.json"', f'"{ann}"')
        code = code.replace(f'"data/{name}/images"', f'"{ann.parent / "images"}"')
    code = code.replace("for batch in loader:", "for _, batch in zip(range(2), loader):")
    printed: list = []
    exec(compile(code, "README.md", "exec"), {"print": printed.append})
    # Every batch of 20: 14 real images (weight 1.0), then 6 synthetic ones (0.5).
    assert [p.tolist() for p in printed] == [[1.0] * 14 + [0.5] * 6] * 2
