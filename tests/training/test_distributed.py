"""Multi-process training on the CPU with gloo, as ``torchrun`` runs it (issue: DDP)."""

from __future__ import annotations

import pytest
import torch
from ddp_cases import evaluate_fixed_model, one_step
from ddp_workers import case_worker, spawn, train_worker
from tiny_runs import tiny_config

from realsynth.config import load_config, to_yaml
from realsynth.training.checkpoint import load_checkpoint
from realsynth.training.run_log import read_metrics
from realsynth.training.train import train


def test_two_processes_take_the_same_step_as_one_process_on_the_whole_batch(tmp_path, demo_root):
    # GroupNorm: no batch statistics, so a rank's half batch computes what one process does.
    config = to_yaml(tiny_config(tmp_path, "MODEL.BACKBONE.NORM=group", demo_root=demo_root))
    out = tmp_path / "ddp.pt"
    spawn(case_worker, 2, "one_step", config, str(out))
    distributed = torch.load(out)
    single = one_step(config, rank=0, world=1)
    before = one_step_initial(config)
    moved = [k for k in single if not torch.equal(single[k], before[k])]
    assert len(moved) > 10  # the step really changed the model
    for key, value in single.items():
        torch.testing.assert_close(distributed[key], value, rtol=1e-4, atol=1e-6, msg=key)


def one_step_initial(config: str) -> dict[str, torch.Tensor]:
    from realsynth.training.build_model import build_model_and_criterion
    from realsynth.training.data_setup import build_data
    from realsynth.utils.distributed import seed_all

    cfg = load_config(None, base_yaml=config)
    seed_all(cfg.SEED)
    model, _ = build_model_and_criterion(cfg, build_data(cfg), torch.device("cpu"))
    return model.state_dict()


def test_two_process_run_writes_one_log_and_a_checkpoint_one_process_resumes(tmp_path, demo_root):
    cfg = tiny_config(
        tmp_path,
        "SOLVER.MAX_ITER=3",
        "SOLVER.CHECKPOINT_PERIOD=3",
        "TEST.EVAL_PERIOD=100",
        demo_root=demo_root,
    )
    spawn(train_worker, 2, to_yaml(cfg))
    run = tmp_path / "run"
    records = read_metrics(run)
    assert [r["step"] for r in records if r["kind"] == "train"] == [1, 2, 3]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3]
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".jsonl") == ["metrics.jsonl"]
    ckpt = load_checkpoint(run)
    assert ckpt["run_state"]["step"] == 3
    # Four batches per rank per epoch at 2 ranks x 4 images: the position carries over to
    # the 1-process epoch (8 images per batch) as the same fraction of the epoch.
    longer = load_config(None, ["SOLVER.MAX_ITER=5"], base_yaml=to_yaml(cfg))
    train(longer, resume=True)
    resumed = read_metrics(run)
    assert [r["step"] for r in resumed if r["kind"] == "train"] == [1, 2, 3, 4, 5]
    assert load_checkpoint(run)["run_state"]["step"] == 5


def test_a_scheduled_run_resumed_on_fewer_processes_keeps_its_schedule(tmp_path, demo_root):
    # Synthetic only for steps 0..2, real only from step 3 on (record step = drawn-for step + 1):
    # the switch falls on the first step the single process draws after the two ranks stopped.
    schedule = "DATASETS.MULTI_DATASET.REAL_SAMPLING_RATIO_SCHEDULE"
    cfg = tiny_config(
        tmp_path,
        "SOLVER.MAX_ITER=3",
        "SOLVER.CHECKPOINT_PERIOD=3",
        "TEST.EVAL_PERIOD=100",
        f"{schedule}.KIND=pretrain_finetune",
        f"{schedule}.PRETRAIN_STEPS=3",
        demo_root=demo_root,
    )
    spawn(train_worker, 2, to_yaml(cfg))
    train(load_config(None, ["SOLVER.MAX_ITER=6"], base_yaml=to_yaml(cfg)), resume=True)
    records = [r for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    # 2 ranks x 4 images, then 1 process x 8: the schedule goes on from step 3 either way.
    assert [r["items/real"] for r in records] == [0, 0, 0, 8, 8, 8]
    assert [r["target_share/real"] for r in records] == [0, 0, 0, 1, 1, 1]


ADAPTIVE = (
    "MODEL.BACKBONE.NORM=group",
    "DATASETS.MULTI_DATASET.ADAPTIVE.ENABLED=true",
    "DATASETS.MULTI_DATASET.ADAPTIVE.INTERVAL=2",
    "DATASETS.MULTI_DATASET.ADAPTIVE.HOLDOUT_IMAGES=5",
    "DATASETS.MULTI_DATASET.ADAPTIVE.STEP_SIZE=4.0",
)


def test_adaptive_alignment_is_the_same_on_both_ranks_and_equals_one_process(tmp_path, demo_root):
    config = to_yaml(tiny_config(tmp_path, *ADAPTIVE, demo_root=demo_root))
    out = tmp_path / "alignment.pt"
    spawn(case_worker, 2, "adaptive_alignment", config, str(out))
    rank0, rank1 = torch.load(out)
    assert rank0 == rank1  # bit for bit: the statistics are all-reduced before the cosine
    (single,) = one_process_alignment(config)
    assert rank0 == pytest.approx(single, abs=1e-5)
    assert all(a is not None and -1 <= a <= 1 for a in single) and single[0] != single[1]


def one_process_alignment(config: str):
    from ddp_cases import adaptive_alignment

    return adaptive_alignment(config, 0, 1)


def test_two_process_adaptive_run_takes_the_decisions_of_one_process(tmp_path, demo_root):
    steps = ("SOLVER.MAX_ITER=6", "TEST.EVAL_PERIOD=100", "SOLVER.CHECKPOINT_PERIOD=100")
    two = tiny_config(tmp_path / "two", *ADAPTIVE, *steps, demo_root=demo_root)
    spawn(train_worker, 2, to_yaml(two))
    train(tiny_config(tmp_path / "one", *ADAPTIVE, *steps, demo_root=demo_root))
    decided = [
        [r for r in read_metrics(tmp_path / f"{n}/run") if r["kind"] == "adaptive"]
        for n in ("two", "one")
    ]
    assert [r["step"] for r in decided[0]] == [r["step"] for r in decided[1]] == [2, 4]
    for ddp, single in zip(*decided):
        assert ddp["decided_share/real"] == pytest.approx(single["decided_share/real"], abs=1e-4)
    assert decided[1][-1]["decided_share/real"] != pytest.approx(0.7, abs=1e-3)  # it moved


def test_sharded_evaluation_equals_single_process(tmp_path, demo_root):
    config = to_yaml(tiny_config(tmp_path, demo_root=demo_root))
    single = evaluate_fixed_model(config)
    assert 0.1 < single["real"]["R@50"] < 0.9  # non-trivial: some hits, some misses
    out = tmp_path / "eval.pt"
    spawn(case_worker, 2, "evaluate_fixed_model", config, str(out))
    assert torch.load(out) == single
