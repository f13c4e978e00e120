"""``realsynth sweep``: spaces, seeded reproducibility, resuming, workers, pruning, failures."""

from __future__ import annotations

import json
import os
import signal

import optuna
import pytest
from optuna.trial import TrialState
from tiny_runs import tiny_config, train_records

from realsynth.config import ConfigError
from realsynth.studies.sweep import Objective, SweepInterrupted, sweep
from realsynth.studies.sweep_space import parse_space
from realsynth.studies.sweep_study import open_study

MD = "DATASETS.MULTI_DATASET"
FAST = ("SOLVER.MAX_ITER=2", "TEST.EVAL_PERIOD=0", "SWEEP.CONFIRM_SEEDS=0")


def _params(report):
    return [r["params"] for r in report["trials"]]


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("[{KEY: SOLVER.BASE_LRR, TYPE: float, LOW: 0.1, HIGH: 1}]", "unknown key SOLVER.BASE_LRR"),
        (f"[{{KEY: {MD}.SYNTHETIC_LOSS_WEIGHT, TYPE: float, LOW: 0.9, HIGH: 0.1}}]", "LOW <= HIGH"),
        (
            f"[{{KEY: {MD}.REAL_SAMPLING_RATIO, TYPE: float, LOW: 0.5, HIGH: 1.5}}]",
            "must lie in [0, 1]",
        ),
        ("[{KEY: SOLVER.BASE_LR, TYPE: log_float, LOW: 0, HIGH: 1}]", "stay above 0"),
        ("[{KEY: SOLVER.IMS_PER_BATCH, TYPE: int, LOW: 2.5, HIGH: 8}]", "integer bounds"),
        ("[{KEY: MODEL.PRESET, TYPE: categorical}]", "needs CHOICES"),
        (
            "[{KEY: MODEL.PRESET, TYPE: categorical, CHOICES: [tiny, huge]}]",
            "MODEL.PRESET must be one of",
        ),
        ("[{KEY: SOLVER.BASE_LR, TYPE: normal, LOW: 0, HIGH: 1}]", "TYPE must be one of"),
        ("[]", "SWEEP.SPACE is empty"),
    ],
)
def test_bad_spaces_are_one_line_errors_naming_the_key(tmp_path, space, message):
    cfg = tiny_config(tmp_path, f"SWEEP.SPACE={space}")
    with pytest.raises(ConfigError) as info:
        parse_space(cfg)
    assert message in str(info.value) and "\n" not in str(info.value)
    if space != "[]":
        assert str(info.value).startswith("SWEEP.SPACE[0] (")


def test_a_seeded_sweep_reproduces_its_trial_parameters(tmp_path):
    runs = []
    for name in ("a", "b"):
        cfg = tiny_config(tmp_path / name, *FAST, "SWEEP.TRIALS=3", "SEED=4")
        runs.append(_params(sweep(cfg)))
    assert runs[0] == runs[1] and len({json.dumps(p, sort_keys=True) for p in runs[0]}) == 3
    other = tiny_config(tmp_path / "c", *FAST, "SWEEP.TRIALS=3", "SEED=5")
    assert _params(sweep(other)) != runs[0]


def test_a_killed_sweep_continues_where_it_stopped(tmp_path):
    cfg = tiny_config(
        tmp_path,
        "SOLVER.MAX_ITER=3",
        "TEST.EVAL_PERIOD=0",
        "SWEEP.CONFIRM_SEEDS=0",
        "SWEEP.TRIALS=3",
        "SWEEP.SAMPLER=random",
    )

    class CtrlCOnce:
        fired = 0

        def on_step_start(self, step):
            # The second trial gets Ctrl-C once its step 2 has its batch.
            if (
                step == 2
                and self.fired == 0
                and len([p for p in (tmp_path / "run" / "trials").iterdir() if p.is_dir()]) == 2
            ):
                self.fired = 1
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(SweepInterrupted) as info:
        sweep(cfg, callbacks=[CtrlCOnce()])
    # Not "nothing was saved": the first trial finished, the second kept its step-2 checkpoint.
    assert "1 finished trial(s) kept; trial 1 stopped with its checkpoint of step 2" in str(
        info.value
    )
    assert "run the same command again" in str(info.value)
    report = sweep(cfg)  # the same command again
    states = [r["state"] for r in report["trials"]]
    assert states.count("complete") == 3 and states.count("fail") == 1
    interrupted = next(r for r in report["trials"] if r["state"] == "fail")
    again = [
        r
        for r in report["trials"]
        if r["params"] == interrupted["params"] and r["state"] == "complete"
    ]
    assert len(again) == 1 and again[0]["folder"] == interrupted["folder"]
    # Resumed from its checkpoint: one contiguous log, steps 1..3.
    assert [r["step"] for r in train_records(again[0]["folder"])] == [1, 2, 3]


def test_two_workers_share_one_study_and_one_report(tmp_path):
    cfg = tiny_config(tmp_path, *FAST, "SWEEP.TRIALS=4", "SWEEP.SAMPLER=random")
    report = sweep(cfg, jobs=2)
    finished = [r for r in report["trials"] if r["state"] == "complete"]
    assert len(finished) >= 4 and len({r["number"] for r in finished}) == len(finished)
    assert len({r["folder"] for r in finished}) == len(finished)  # disjoint trials
    assert json.loads((tmp_path / "run" / "sweep.json").read_text())["trials"] == report["trials"]


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def test_a_pruned_trial_stops_at_its_first_evaluation_and_keeps_its_checkpoint(tmp_path):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=6", "TEST.EVAL_PERIOD=2", "SWEEP.CONFIRM_SEEDS=0")
    space = parse_space(cfg)
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    study.optimize(Objective(cfg, space, "real"), n_trials=1)
    (trial,) = study.trials
    assert trial.state == TrialState.PRUNED and trial.user_attrs["steps"] == 2
    assert [r["step"] for r in train_records(trial.user_attrs["folder"])] == [1, 2]


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path):
    space = "[{KEY: SOLVER.BASE_LR, TYPE: categorical, CHOICES: [0.001, 1.0e+12]}]"
    cfg = tiny_config(
        tmp_path,
        *FAST,
        f"SWEEP.SPACE={space}",
        "SWEEP.SAMPLER=grid",
        "SWEEP.TRIALS=2",
        "SOLVER.WARMUP_ITERS=0",
        "SOLVER.CLIP_GRAD_NORM=0",
    )
    report = sweep(cfg)
    by_lr = {r["params"]["SOLVER.BASE_LR"]: r for r in report["trials"]}
    assert by_lr[0.001]["state"] == "complete"
    assert by_lr[1e12]["state"] == "fail" and "stopped at step 2" in by_lr[1e12]["error"]
    assert report["best"]["params"] == {"SOLVER.BASE_LR": 0.001}
    assert (tmp_path / "run" / "best.yaml").read_text().count("BASE_LR: 0.001") == 1


def test_a_study_searched_over_another_space_is_refused(tmp_path):
    cfg = tiny_config(tmp_path, *FAST)
    open_study(cfg, parse_space(cfg), None, "s")
    narrower = tiny_config(
        tmp_path,
        *FAST,
        f"SWEEP.SPACE=[{{KEY: {MD}.SYNTHETIC_LOSS_WEIGHT, TYPE: float, LOW: 0, HIGH: 0.5}}]",
    )
    with pytest.raises(ConfigError, match="was searched over another SWEEP.SPACE"):
        open_study(narrower, parse_space(narrower), None, "s")


def test_successive_halving_rungs_start_at_the_first_evaluation(tmp_path):
    from realsynth.studies.sweep_study import make_pruner

    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=40", "TEST.EVAL_PERIOD=10")
    pruner = make_pruner(cfg)
    # The 4th trial, worst at the first rung (step 10) among four, is pruned; at step 9 (below
    # the first rung) nothing is decided yet.
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for value in (0.5, 0.6, 0.7):
        trial = study.ask()
        trial.report(value, 10)
        trial.should_prune()  # records the trial's value at the rung, as the objective does
        study.tell(trial, value)
    trial = study.ask()
    trial.report(0.1, 9)
    assert not trial.should_prune()
    trial.report(0.1, 10)
    assert trial.should_prune()
