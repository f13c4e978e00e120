"""Frequency class weights: the formula by hand, and statistics from the real sources only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from test_relcoco import make_records, write_dataset
from test_vg150 import build_vg_folder

from realsynth.config import load_config
from realsynth.data.formats.relcoco import RelCocoDataset
from realsynth.data.formats.vg150 import vg150_from_folder
from realsynth.data.stats import frequency_class_weights
from realsynth.training.build_model import predicate_class_weights
from realsynth.training.data_setup import build_data


def test_frequency_weights_by_hand():
    # Shares 0.9, 0.09, 0.01: only the rarest lies below alpha = 0.07.
    weights = frequency_class_weights(np.array([90, 9, 1]), alpha=0.07, beta=1.0)
    assert weights[:2].tolist() == [1.0, 1.0]
    assert weights[2] == pytest.approx(math.sqrt(0.07 / (0.01 + 1e-5)))
    lifted = frequency_class_weights(np.array([90, 9, 1]), alpha=0.07, beta=1.5)
    assert lifted[2] == pytest.approx(math.sqrt(0.07 / (0.01 + 1e-5)) ** 1.5)
    assert frequency_class_weights(np.array([5, 0]), alpha=0.07, beta=0.0).tolist() == [1, 1]
    with pytest.raises(ValueError, match="positive sum"):
        frequency_class_weights(np.zeros(3), alpha=0.07, beta=1.0)


def _annotation_counts(dataset):
    objects = np.zeros(len(dataset.classes), dtype=np.int64)
    predicates = np.zeros(len(dataset.predicates), dtype=np.int64)
    for k in range(len(dataset)):
        ann = dataset.annotation(k)
        objects += np.bincount(ann["labels"].numpy(), minlength=len(objects))
        predicates += np.bincount(ann["relations"][:, 2].numpy(), minlength=len(predicates))
    return objects, predicates


def test_label_counts_from_the_index_equal_the_annotations(tmp_path: Path):
    relcoco = RelCocoDataset(write_dataset(tmp_path, make_records(5)), tmp_path / "images")
    vg = vg150_from_folder(build_vg_folder(tmp_path / "vg"), split="train", num_val_images=1)
    for dataset in (relcoco, vg):
        for fast, slow in zip(dataset.label_counts(), _annotation_counts(dataset)):
            assert fast.tolist() == slow.tolist()


def _two_sources(tmp_path: Path):
    real = write_dataset(tmp_path / "real", make_records(4))
    synthetic = write_dataset(tmp_path / "syn", make_records(4))
    # The synthetic copy only ever says predicate 0 ("on").
    import json

    data = json.loads(synthetic.read_text())
    for rel in data["relationships"]:
        rel["predicate_id"] = 1
    synthetic.write_text(json.dumps(data))
    return real, synthetic


def test_predicate_weights_come_from_the_real_sources_unless_asked(tmp_path: Path):
    real, synthetic = _two_sources(tmp_path)
    sources = (
        f"DATASETS.SOURCES=[{{NAME: real, TYPE: real, PATH: '{real}'}}, "
        f"{{NAME: render, TYPE: synthetic, PATH: '{synthetic}'}}]"
    )
    expect = {}
    for choice in ("real", "render", "all"):
        cfg = load_config(
            None,
            [
                sources,
                "MODEL.CRITERION.PREDICATE_CLASS_WEIGHTS=frequency",
                f"MODEL.CRITERION.PREDICATE_FREQUENCY_SOURCE={choice}",
                "MODEL.CRITERION.OVERSAMPLE_PARAM=0.5",
            ],
        )
        data = build_data(cfg)
        expect[choice] = predicate_class_weights(cfg, data).tolist()
        counts = {
            "real": data.train[0].label_counts()[1],
            "render": data.train[1].label_counts()[1],
        }
        counts["all"] = counts["real"] + counts["render"]
        manual = frequency_class_weights(counts[choice], alpha=0.5, beta=1.0)
        assert expect[choice] == pytest.approx(manual.tolist())
    assert expect["real"] != expect["render"] != expect["all"]
    none = load_config(None, [sources])
    assert predicate_class_weights(none, build_data(none)) is None
    bad = load_config(
        None,
        [
            sources,
            "MODEL.CRITERION.PREDICATE_CLASS_WEIGHTS=frequency",
            "MODEL.CRITERION.PREDICATE_FREQUENCY_SOURCE=web",
        ],
    )
    with pytest.raises(ValueError, match="expected real, all or one of the training sources"):
        predicate_class_weights(bad, build_data(bad))
