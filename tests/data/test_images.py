"""Image decoding: every image capped to a maximum size, large files reduced while decoded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from realsynth.config import ConfigError, load_config
from realsynth.data.formats.relcoco import RelCocoDataset, write_relcoco
from realsynth.data.images import decode_image
from realsynth.data.transforms import LimitSize, build_transforms, item_rng
from realsynth.training.data_setup import build_data

WIDTH, HEIGHT = 12000, 9000  # 1.3 GB as float32 RGB
FULL_FLOAT_MB = WIDTH * HEIGHT * 3 * 4 / 2**20
BOXES = np.array([[1200, 900, 4800, 3600], [6000, 4500, 10800, 8100]])
# Pillow warns above 89M pixels (a decompression bomb guard); these files are huge on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> Path:
    """A relcoco source of two 12000 x 9000 images, a JPEG and a PNG."""
    folder = tmp_path_factory.mktemp("huge")
    (folder / "images").mkdir()
    image = Image.new("RGB", (WIDTH, HEIGHT), (90, 120, 200))
    draw = ImageDraw.Draw(image)
    for (x0, y0, x1, y1), color in zip(BOXES.tolist(), [(250, 10, 10), (10, 250, 10)]):
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=color)
    image.save(folder / "images" / "big.jpg", quality=85)
    image.save(folder / "images" / "big.png", compress_level=1)
    del image, draw
    records = [
        {
            "file_name": name,
            "width": WIDTH,
            "height": HEIGHT,
            "boxes": BOXES,
            "labels": np.array([0, 1]),
            "relations": np.array([[0, 1, 0]]),
        }
        for name in ("big.jpg", "big.png")
    ]
    write_relcoco(
        folder / "annotations.json", classes=["a", "b"], predicates=["left of"], images=records
    )
    return folder


@pytest.mark.parametrize("index", [0, 1], ids=["jpeg", "png"])
def test_a_huge_image_comes_out_within_the_maximum_size_with_its_boxes(huge, index):
    transforms = build_transforms(train=False, min_sizes=[], max_size=1333)
    dataset = RelCocoDataset(huge / "annotations.json", huge / "images", transforms=transforms)
    item = dataset[index]
    assert item["image"].shape == (3, 1000, 1333)
    assert item["orig_size"].tolist() == [HEIGHT, WIDTH]  # the file's size
    expected = torch.tensor(
        [[3000 / WIDTH, 2250 / HEIGHT, 3600 / WIDTH, 2700 / HEIGHT]], dtype=torch.float32
    )
    assert torch.allclose(item["boxes"][:1], expected, atol=1e-6)
    # The pixels followed the boxes: the first box is red, the second green.
    x, y = (item["boxes"][:, :2] * torch.tensor([1333, 1000])).long().T.tolist()
    red, green = item["image"][:, y[0], x[0]], item["image"][:, y[1], x[1]]
    assert red[0] > 0.9 > 0.1 > red[1] and green[1] > 0.9 > 0.1 > green[0]


def test_the_decode_itself_is_reduced_before_any_conversion(huge):
    for name in ("big.jpg", "big.png"):
        image, size = decode_image(huge / "images" / name, source="s", max_size=1333)
        assert (image.size, image.mode, size) == ((1333, 1000), "RGB", (WIDTH, HEIGHT))
    # A JPEG is decoded at 1/8 scale: the full-size pixels never exist.
    with Image.open(huge / "images" / "big.jpg") as image:
        image.draft("RGB", (1333, 1000))
        assert image.size == (1500, 1125)


def test_peak_memory_of_decoding_a_huge_image_stays_far_below_its_float_tensor(huge):
    """Peak RSS growth, measured in a fresh process (``ru_maxrss`` only ever grows)."""
    script = textwrap.dedent(
        f"""
        import json, resource, sys, warnings
        warnings.simplefilter("ignore")
        from realsynth.data.formats.relcoco import RelCocoDataset
        from realsynth.data.transforms import build_transforms

        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        transforms = build_transforms(train=True, min_sizes=[], max_size=1333)
        folder = {str(huge)!r}
        dataset = RelCocoDataset(folder + "/annotations.json", folder + "/images",
                                 transforms=transforms)
        base = peak_mb()
        growth = []
        for index in (0, 1):  # the JPEG first: its growth is measured before the PNG's
            shape = tuple(dataset[index]["image"].shape)
            growth.append(peak_mb() - base)
        print(json.dumps({{"growth": growth, "shape": shape}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    jpeg, png = result["growth"]
    assert result["shape"] == [3, 1000, 1333]
    assert jpeg < 100, result  # decoded at 1/8 scale: a few MB
    # A PNG has to be decoded whole, as 8-bit RGB (309 MB), then reduced: never as floats.
    assert png < FULL_FLOAT_MB / 2, result


def test_the_default_config_caps_every_image(huge, tmp_path):
    ann = huge / "annotations.json"
    source = f"{{NAME: big, TYPE: real, PATH: {ann}, VAL_PATH: {ann}}}"
    cfg = load_config(None, [f"DATASETS.SOURCES=[{source}]", f"OUTPUT_DIR={tmp_path / 'run'}"])
    assert cfg.INPUT.MIN_SIZE_TRAIN == [] and cfg.INPUT.MAX_SIZE_TRAIN == 1333
    data = build_data(cfg)
    assert data.train[0].transforms.max_size == 1333
    assert data.val["big"][1]["image"].shape == (3, 1000, 1333)


def test_a_maximum_size_that_is_not_positive_is_refused_naming_its_key(huge, tmp_path):
    source = f"{{NAME: big, TYPE: real, PATH: {huge / 'annotations.json'}}}"
    cfg = load_config(None, [f"DATASETS.SOURCES=[{source}]", "INPUT.MAX_SIZE_TRAIN=0"])
    with pytest.raises(ConfigError, match=r"INPUT\.MAX_SIZE_TRAIN=0: expected a positive"):
        build_data(cfg)


def test_limit_size_shrinks_only_larger_images_and_draws_nothing():
    limit = LimitSize(100)
    target = {"boxes": torch.tensor([[40.0, 20.0, 400.0, 200.0]])}
    rng = item_rng(0, 0, 0)
    state = rng.bit_generator.state
    image, out = limit(Image.new("RGB", (400, 200)), target, rng)
    assert image.size == (100, 50) and out["boxes"].tolist() == [[10.0, 5.0, 100.0, 50.0]]
    small = Image.new("RGB", (64, 64))
    assert limit(small, target, rng)[0] is small
    assert rng.bit_generator.state == state
    pipeline = build_transforms(train=True, min_sizes=[], max_size=1333)
    assert pipeline.max_size == 1333 and "LimitSize(max_size=1333)" in repr(pipeline)
    assert build_transforms(train=True, min_sizes=[], max_size=None).max_size is None
