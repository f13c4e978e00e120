"""A sweep's trials across processes: new points everywhere, one folder each, dead workers'
trials failed and resumed, a study bound to its budget, storage errors in one line."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import time

import optuna
import pytest
from optuna.trial import TrialState
from sweep_processes import kill_when, one_thread_env, start, step_checkpoints, sweep_command
from tiny_runs import tiny_config, train_records

from realsynth.cli import main
from realsynth.config import ConfigError
from realsynth.studies.sweep_report import sweep_report
from realsynth.studies.sweep_space import parse_space
from realsynth.studies.sweep_study import make_sampler, open_study
from realsynth.studies.sweep_trials import StorageError, mask_password, open_storage


def _draw_three(journal: str, cfg_yaml: str) -> None:
    """A process of its own: three trials of a free objective on the shared journal study."""
    from realsynth.config import load_config

    cfg = load_config(None, base_yaml=cfg_yaml)
    space = parse_space(cfg)
    storage = open_storage(None, journal, 60)
    study = optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(cfg, space))
    study.optimize(lambda t: sum(p.suggest(t) for p in space), n_trials=3)


def test_two_processes_on_one_study_draw_six_distinct_start_up_points(tmp_path):
    from realsynth.config import to_yaml

    cfg = tiny_config(tmp_path, "SWEEP.TRIALS=6")  # TPE: the first 5 are random start-up draws
    journal = str(tmp_path / "study.journal")
    optuna.create_study(study_name="s", storage=open_storage(None, journal, 60))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_draw_three, args=(journal, to_yaml(cfg))) for _ in "ab"]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        assert w.exitcode == 0
    trials = optuna.load_study(study_name="s", storage=open_storage(None, journal, 60)).trials
    points = {json.dumps(t.params, sort_keys=True) for t in trials}
    assert len(trials) == 6 and len(points) == 6


def test_the_same_study_replayed_draws_the_same_points_and_a_longer_one_new_ones(tmp_path):
    cfg = tiny_config(tmp_path, "SWEEP.SAMPLER=random")
    space = parse_space(cfg)

    def draws(n: int) -> list[str]:
        study = optuna.create_study(sampler=make_sampler(cfg, space))
        study.optimize(lambda t: sum(p.suggest(t) for p in space), n_trials=n)
        return [json.dumps(t.params, sort_keys=True) for t in study.trials]

    three, five = draws(3), draws(5)
    assert five[:3] == three and len(set(five)) == 5


def test_a_sweep_killed_mid_trial_fails_that_trial_and_resumes_it_from_its_checkpoint(
    tmp_path, demo_root
):
    out = tmp_path / "sweep"
    args = ("SWEEP.TRIALS=2", "SWEEP.SAMPLER=random", "SOLVER.MAX_ITER=12")
    first = out / "trials" / "0000"
    process = start(sweep_command(demo_root, out, *args, "SOLVER.CHECKPOINT_PERIOD=4"))
    kill_when(process, lambda: len(step_checkpoints(first)) >= 1)
    killed_at = int(step_checkpoints(first)[-1].stem.split("_")[1])

    again = sweep_command(demo_root, out, *args, "SOLVER.CHECKPOINT_PERIOD=4")
    assert main(again[3:]) == 0  # the same command again (in this process)
    study = optuna.load_study(study_name="realsynth-sweep", storage=open_storage(out, None, 60))
    dead, *rest = study.trials
    assert dead.state == TrialState.FAIL and "error" not in dead.user_attrs
    retried = [t for t in rest if t.user_attrs.get("retries") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == dead.params and retried[0].user_attrs["folder"] == str(first)
    steps = [r["step"] for r in train_records(first)]
    assert steps == list(range(1, 13)) and killed_at >= 4  # resumed, not started over
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 2 and len({t.user_attrs["folder"] for t in finished}) == 2


def test_a_study_refuses_trials_of_another_budget_but_takes_more_trials(tmp_path):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=12")
    open_study(cfg, parse_space(cfg), None, "s")
    more = tiny_config(tmp_path, "SOLVER.MAX_ITER=12", "SWEEP.TRIALS=40")
    open_study(more, parse_space(more), None, "s")
    longer = tiny_config(tmp_path, "SOLVER.MAX_ITER=16")
    with pytest.raises(ConfigError) as info:
        open_study(longer, parse_space(longer), None, "s")
    message = str(info.value)
    assert "study 's' was run with SOLVER.MAX_ITER=12, this command has 16" in message
    assert "another --study or OUTPUT_DIR" in message and "\n" not in message


def test_compute_saved_counts_pruning_only(tmp_path):
    cfg = tiny_config(tmp_path, "SOLVER.MAX_ITER=10")
    space = parse_space(cfg)
    study = optuna.create_study(direction="maximize")
    dist = {p.key: optuna.distributions.FloatDistribution(p.low, p.high) for p in space}
    params = {p.key: p.low for p in space}

    def add(state, steps, value=None):
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions=dist,
                user_attrs={"steps": steps},
            )
        )

    add(TrialState.FAIL, 2)
    add(TrialState.FAIL, 0)
    report = sweep_report(cfg, study, space)
    assert report["compute_saved_by_pruning"] == 0.0 and report["steps_without_pruning"] == 0
    add(TrialState.COMPLETE, 10, 0.5)
    add(TrialState.PRUNED, 5)
    report = sweep_report(cfg, study, space)
    assert (report["steps_trained"], report["steps_without_pruning"]) == (15, 20)
    assert report["compute_saved_by_pruning"] == pytest.approx(0.25)
    assert report["failed_trials"] == 2


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("postgresql://ana:s3cret@127.0.0.1:1/db", "connect"),
        ("mysql://ana:s3cret@127.0.0.1/db", "database driver 'MySQLdb' is not installed"),
        ("nosuchdb://ana:s3cret@host/db", "Can't load plugin"),
    ],
)
def test_a_storage_that_cannot_be_opened_is_one_line_with_the_password_masked(
    tmp_path, capsys, url, cause
):
    with pytest.raises(StorageError) as info:
        open_storage(tmp_path, url, 60)
    message = str(info.value)
    assert "s3cret" not in message and "ana:***@" in message and cause in message
    assert "\n" not in message
    cfg = ["SWEEP.TRIALS=1", f"OUTPUT_DIR={tmp_path / 'run'}"]
    assert main(["sweep", *cfg, "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "s3cret" not in err and cause in err


def test_mask_password_keeps_everything_else():
    assert mask_password("postgresql://u:p@h:5/d") == "postgresql://u:***@h:5/d"
    assert mask_password("postgresql://u@h/d") == "postgresql://u@h/d"
    assert mask_password("sqlite:///x.db") == "sqlite:///x.db"


def test_the_cli_runs_the_documented_sweep_in_a_subprocess(tmp_path, demo_root):
    out = tmp_path / "sweep"
    cmd = sweep_command(demo_root, out, "SWEEP.TRIALS=1", "SOLVER.MAX_ITER=2")
    done = subprocess.run(cmd, env=one_thread_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "trials" / "0000" / "eval.json").is_file()


def test_ctrl_c_in_the_sweep_command_exits_130_and_says_what_was_kept(tmp_path, demo_root):
    out = tmp_path / "sweep"
    args = ("SWEEP.TRIALS=2", "SOLVER.MAX_ITER=40", "SOLVER.CHECKPOINT_PERIOD=2")
    process = start(sweep_command(demo_root, out, *args))
    first = out / "trials" / "0000"
    deadline = time.monotonic() + 300
    while not step_checkpoints(first) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 130, output
    last = output.strip().splitlines()[-1]
    assert last.startswith("realsynth: interrupted: 0 finished trial(s) kept; trial 0 stopped")
    assert "nothing was saved" not in output and "Traceback" not in output
