"""``realsynth sweep --storage postgresql://...`` against a real PostgreSQL server: two workers
(as two machines) share one study without repeating a point, and a worker killed mid-trial has
its trial failed by the heartbeat and resumed by another worker.

The server comes from ``REALSYNTH_TEST_POSTGRES_URL`` (``.ci/run`` starts one and sets it). On a
developer's machine without it these tests are skipped, and say so; in CI they must run.
"""

from __future__ import annotations

import json
import os
import time
import uuid

import optuna
import pytest
from optuna.trial import TrialState
from sweep_processes import kill_when, start, step_checkpoints, sweep_command
from tiny_runs import train_records

URL = os.environ.get("REALSYNTH_TEST_POSTGRES_URL", "")


@pytest.fixture
def postgres():
    """The server's URL and a fresh study name; the study is deleted afterwards."""
    if not URL:
        if os.environ.get("CI"):
            pytest.fail(
                "CI must run the PostgreSQL tests: .ci/run sets REALSYNTH_TEST_POSTGRES_URL"
            )
        pytest.skip(
            "no PostgreSQL server configured: set REALSYNTH_TEST_POSTGRES_URL="
            "postgresql://USER@HOST:PORT/DB to run the sweep's database tests"
        )
    name = f"test-{uuid.uuid4().hex[:8]}"
    yield URL, name
    optuna.delete_study(study_name=name, storage=URL)


def _command(demo_root, out, url, name, *overrides):
    cmd = sweep_command(demo_root, out, *overrides)
    return [*cmd, "--storage", url, "--study", name]


def test_two_workers_on_one_postgres_study_train_six_distinct_points(tmp_path, demo_root, postgres):
    url, name = postgres
    args = ("SWEEP.TRIALS=6", "SOLVER.MAX_ITER=2")  # TPE: 5 random start-up points, then TPE
    workers = [start(_command(demo_root, tmp_path / m, url, name, *args)) for m in "ab"]
    for worker in workers:
        output = worker.communicate()[0]
        assert worker.returncode == 0, output
    study = optuna.load_study(study_name=name, storage=url)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    points = {json.dumps(t.params, sort_keys=True) for t in finished}
    assert 6 <= len(finished) <= 7 and len(points) == len(finished)
    # Both machines took part, each trial in a folder of its own.
    folders = [t.user_attrs["folder"] for t in finished]
    assert {f.split("/trials/")[0] for f in folders} == {str(tmp_path / m) for m in "ab"}


def test_a_killed_workers_trial_is_failed_by_the_heartbeat_and_resumed(
    tmp_path, demo_root, postgres
):
    url, name = postgres
    out = tmp_path / "shared"
    args = ("SWEEP.TRIALS=1", "SOLVER.MAX_ITER=12", "SOLVER.CHECKPOINT_PERIOD=4")
    beat = "SWEEP.HEARTBEAT_SECONDS=1"  # stale after 3 s without a heartbeat
    first = out / "trials" / "0000"
    process = start(_command(demo_root, out, url, name, *args, beat))
    kill_when(process, lambda: len(step_checkpoints(first)) >= 1)
    time.sleep(4)
    again = start(_command(demo_root, out, url, name, *args, beat))
    output = again.communicate()[0]
    assert again.returncode == 0, output
    study = optuna.load_study(study_name=name, storage=url)
    dead, retried = study.trials
    assert dead.state == TrialState.FAIL and retried.state == TrialState.COMPLETE
    assert retried.params == dead.params and retried.user_attrs["folder"] == str(first)
    assert [r["step"] for r in train_records(first)] == list(range(1, 13))
