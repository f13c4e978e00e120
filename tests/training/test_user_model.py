"""Your own model by import path (``MODEL.ARCHITECTURE: package.module:factory``) through train,
eval, compare, data filter and gap, its outputs checked on the first batch; and ``MODEL.WEIGHTS``
initializing a run from another run's checkpoint with a report of what loaded."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from tiny_runs import TINY, train_records

from realsynth.cli import main
from realsynth.training.checkpoint import load_checkpoint

MODELS = '''
import torch
from torch import nn

from realsynth.modeling.model import build_model


def tiny(num_classes, num_predicates, num_queries, width=32):
    """realsynth's own transformer, built by the user's factory (it has a backbone)."""
    return build_model("tiny", num_classes, num_predicates, num_queries=num_queries,
                       d_model=width, enc_layers=1, dec_layers=2, dim_feedforward=64,
                       backbone_channels=(8, 16, 32))


class Pooled(nn.Module):
    """A minimal relation model of its own: no backbone attribute, no image features."""

    def __init__(self, num_classes, num_predicates, num_queries):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4), nn.ReLU())
        self.queries = nn.Parameter(torch.randn(num_queries, 16))
        self.relation = nn.Linear(16, num_predicates + 1)
        self.subject = nn.Linear(16, num_classes + 1)
        self.object = nn.Linear(16, num_classes + 1)
        self.boxes = nn.Linear(16, 8)

    def forward(self, images, pixel_mask=None):
        pooled = self.features(images).mean(dim=(2, 3))  # [B, 16]
        hidden = pooled[:, None, :] + self.queries[None]  # [B, Q, 16]
        boxes = self.boxes(hidden).sigmoid()
        return {
            "relation_logits": self.relation(hidden),
            "relation_subject_logits": self.subject(hidden),
            "relation_object_logits": self.object(hidden),
            "relation_subject_boxes": boxes[..., :4],
            "relation_object_boxes": boxes[..., 4:],
        }


def pooled(num_classes, num_predicates, num_queries):
    return Pooled(num_classes, num_predicates, num_queries)


def broken(num_classes, num_predicates, num_queries):
    model = Pooled(num_classes, num_predicates, num_queries)
    model.forward = lambda images, pixel_mask=None: {"relation_logits": torch.zeros(2, 3)}
    return model
'''

STEPS = ("SOLVER.MAX_ITER=3", "TEST.EVAL_PERIOD=0")


@pytest.fixture(scope="module")
def user_package(tmp_path_factory):
    root = tmp_path_factory.mktemp("user")
    (root / "mymodels.py").write_text(MODELS)
    sys.path.insert(0, str(root))
    yield "mymodels"
    sys.path.remove(str(root))
    sys.modules.pop("mymodels", None)


def _args(demo_root, out, *more):
    return [*TINY, *STEPS, f"DATASETS.DEMO.ROOT={demo_root}", f"OUTPUT_DIR={out}", *more]


def test_a_user_model_trains_evaluates_and_filters(tmp_path, demo_root, user_package, capsys):
    run = tmp_path / "run"
    arch = "MODEL.ARCHITECTURE=mymodels:tiny"
    assert (
        main(["train", *_args(demo_root, run, arch, "MODEL.ARCHITECTURE_KWARGS={width: 16}")]) == 0
    )
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["model"]["input_proj.weight"].shape[0] == 16  # the kwargs reached the factory
    assert main(["eval", str(run)]) == 0
    assert (run / "eval_last.json").is_file()
    assert main(["gap", str(run), "--feature-images", "6"]) == 0
    assert "domain classifier AUC" in (run / "gap.md").read_text()


def test_a_model_without_image_features_gets_a_gap_report_that_says_so(
    tmp_path, demo_root, user_package
):
    run = tmp_path / "run"
    assert main(["train", *_args(demo_root, run, "MODEL.ARCHITECTURE=mymodels:pooled")]) == 0
    assert main(["gap", str(run), "--feature-images", "6"]) == 0
    report = json.loads((run / "gap.json").read_text())
    assert report["appearance"].startswith("not available for this model")
    assert "not available for this model" in (run / "gap.md").read_text()
    assert "domain_classifier" not in report["sources"]["synthetic"]


def test_a_model_that_breaks_the_output_contract_is_one_line(
    tmp_path, demo_root, user_package, capsys
):
    status = main(
        ["train", *_args(demo_root, tmp_path / "run", "MODEL.ARCHITECTURE=mymodels:broken")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    expected = "MODEL.ARCHITECTURE=mymodels:broken: output 'relation_logits' has shape [2, 3]"
    assert expected in err[0] and "expected [2, Q, 6]" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("mymodels:nothere", "MODEL.ARCHITECTURE: 'mymodels:nothere': 'mymodels' has no attribute"),
        ("nopackage.models:build", "cannot import 'nopackage.models'"),
        ("mymodels", "must be relation_transformer or an import path"),
    ],
)
def test_a_bad_architecture_is_one_line_before_training(
    tmp_path, demo_root, user_package, capsys, value, message
):
    assert main(["train", *_args(demo_root, tmp_path / "run", f"MODEL.ARCHITECTURE={value}")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_weights_from_another_run_load_by_name_and_report_the_rest(tmp_path, demo_root, capsys):
    source = tmp_path / "source"
    assert main(["train", *_args(demo_root, source)]) == 0
    run = tmp_path / "run"
    # Twice the queries: the query embeddings and reference points differ in shape.
    more = ("MODEL.NUM_QUERIES=24", f"MODEL.WEIGHTS={source}")
    capsys.readouterr()
    assert main(["train", *_args(demo_root, run, *more, "SOLVER.BASE_LR=1e-12")]) == 0
    printed = capsys.readouterr().out
    assert f"Weights from {source}" in printed and "shape mismatch" in printed
    report = json.loads((run / "weights.json").read_text())
    mismatched = {m["tensor"] for m in report["mismatched"]}
    assert mismatched and all("quer" in k or "reference" in k for k in mismatched)
    assert (run / "weights.md").read_text().startswith(f"Weights from {source}")
    before = load_checkpoint(source / "checkpoints" / "last.pt")["model"]
    first = train_records(run)[0]
    assert first["step"] == 1
    # The backbone started from the source run (a learning rate of 1e-12 barely moves it).
    after = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    key = next(k for k in before if k.startswith("backbone.") and k.endswith("weight"))
    torch.testing.assert_close(after[key], before[key], atol=1e-6, rtol=0)


def test_strict_weights_refuse_anything_but_a_full_match(tmp_path, demo_root, capsys):
    source = tmp_path / "source"
    assert main(["train", *_args(demo_root, source)]) == 0
    more = ("MODEL.NUM_QUERIES=24", f"MODEL.WEIGHTS={source}", "MODEL.WEIGHTS_STRICT=true")
    capsys.readouterr()
    assert main(["train", *_args(demo_root, tmp_path / "run", *more)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("realsynth: error: MODEL.WEIGHTS: ")


def test_missing_weights_are_one_line(tmp_path, demo_root, capsys):
    assert main(["train", *_args(demo_root, tmp_path / "run", "MODEL.WEIGHTS=/no/such.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "MODEL.WEIGHTS" in err[0] and "/no/such.pt" in err[0]


def test_compare_and_data_filter_work_with_a_user_model(tmp_path, demo_root, user_package):
    arch = "MODEL.ARCHITECTURE=mymodels:tiny"
    out = tmp_path / "compare"
    study = ("COMPARE.SEEDS=1", "COMPARE.BUILTIN=[real_only,mix]", "COMPARE.REFERENCE=mix")
    assert main(["compare", *_args(demo_root, out, arch, *study)]) == 0
    report = json.loads((out / "compare.json").read_text())
    assert set(report["budgets"]) == {"real_only", "mix"}
    filtered = tmp_path / "filtered.json"
    source = demo_root / "synthetic" / "train" / "annotations.json"
    run = out / "mix" / "seed0"
    status = main(
        ["data", "filter", "--run", str(run), "--source", str(source), "--out", str(filtered)]
    )
    assert status == 0 and json.loads(filtered.read_text())["images"]


def test_sweep_and_adaptive_mixing_work_with_a_user_model(tmp_path, demo_root, user_package):
    """Two sweep trials of the user's model (the space reaches the trials), and an adaptive run
    whose alignment measurement takes the user model's gradients."""
    arch = "MODEL.ARCHITECTURE=mymodels:pooled"
    out = tmp_path / "sweep"
    sweep = ("SWEEP.TRIALS=2", "SWEEP.CONFIRM_SEEDS=0", "SOLVER.MAX_ITER=2")
    assert main(["sweep", *_args(demo_root, out, arch, *sweep)]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert [t["state"] for t in report["trials"]] == ["complete", "complete"]
    ratios = {t["params"]["DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO"] for t in report["trials"]}
    assert len(ratios) == 2
    adaptive = ("DATASETS.MULTI_DATASET.ADAPTIVE.ENABLED=true", "SOLVER.MAX_ITER=5")
    adaptive += ("DATASETS.MULTI_DATASET.ADAPTIVE.INTERVAL=2",)
    adaptive += ("DATASETS.MULTI_DATASET.ADAPTIVE.HOLDOUT_IMAGES=6",)  # of 24 real images
    run = tmp_path / "adaptive"
    assert main(["train", *_args(demo_root, run, arch, *adaptive)]) == 0
    from realsynth.training.run_log import read_metrics

    decisions = [r for r in read_metrics(run) if r["kind"] == "adaptive"]
    assert [d["step"] for d in decisions] == [2, 4]
    assert all(isinstance(d["alignment/synthetic"], float) for d in decisions)
