"""Optuna tuning of the CSwitch partition: real studies of tiny trials through the real trainer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

import csfnet.train
from csfnet.model import build_model
from csfnet.nn.modules import CSwitch
from csfnet.tune import tune

from .conftest import TINY_TRAIN, free_port, tool
from .services import postgres

pytestmark = pytest.mark.slow
BOUNDS = {"min": [32, 64, 128], "max": [96, 192, 384], "step": 16}


def _params(path: Path, **tune_settings) -> None:
    """A params.yaml whose quick preset and tuning are tiny (imgsz 64, 2 epochs)."""
    settings = {"trials": 3, "epochs": 2, "imgsz": 64, "partition": BOUNDS, **tune_settings}
    params = {"train": {"model": "csfnet-n", "preset": "quick"}, "presets": {"quick": TINY_TRAIN}, "tune": settings}
    path.write_text(yaml.safe_dump(params))


def _study(storage: str) -> optuna.Study:
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return [t for t in done if not t.user_attrs.get("surplus")]


def test_study_prunes_logs_and_writes_the_best_partition(tiny_data, tmp_path):
    # successive halving that needs one trial at a rung before promoting any: the first trial is always pruned
    pruner = {"type": "successive_halving", "min_resource": 1, "reduction_factor": 2, "bootstrap_count": 1}
    _params(tmp_path / "params.yaml", pruner=pruner)
    result = tune(tiny_data, out=tmp_path / "best.json", work_dir=tmp_path / "runs", device="cpu")

    study = _study(f"sqlite:///{tmp_path / 'runs' / 'study.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 3 and states.count(TrialState.PRUNED) >= 1 and TrialState.COMPLETE in states
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    assert list(pruned.intermediate_values) == [1] or list(pruned.intermediate_values) == [1, 2]

    best = json.loads((tmp_path / "best.json").read_text())
    assert best["partition"] == result.partition == study.trials[best["trial"]].user_attrs["partition"]
    for channels, low, high in zip(best["partition"], BOUNDS["min"], BOUNDS["max"]):
        assert low <= channels <= high and channels % BOUNDS["step"] == 0
    model = build_model("csfnet-n", partition=best["partition"])  # what `csfnet train` builds from the file
    assert all(m.partition == best["partition"] for m in model.modules() if isinstance(m, CSwitch))

    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    (study_run,) = [r for r in runs if r.data.tags.get("csfnet.stage") == "tune"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == study_run.info.run_id]
    assert len(trials) == 3
    by_state = {r.data.tags["optuna.state"]: r.info.status for r in trials}
    assert by_state["PRUNED"] == "KILLED" and by_state["COMPLETE"] == "FINISHED"
    assert all("partition" in r.data.params for r in trials)
    plots = [a.path for a in mlflow.MlflowClient().list_artifacts(study_run.info.run_id, "plots")]
    assert "plots/optimization_history.png" in plots

    # running again continues the study: three finished trials are already there, none is repeated
    again = tune(tiny_data, out=tmp_path / "best.json", work_dir=tmp_path / "runs", device="cpu", track=False)
    assert len(_study(f"sqlite:///{tmp_path / 'runs' / 'study.db'}").trials) == 3
    assert again.partition == best["partition"]


def test_failed_trial_is_recorded_and_the_study_goes_on(tiny_data, tmp_path, monkeypatch):
    _params(tmp_path / "params.yaml", trials=2, pruner={"type": "none"})
    real_train, calls = csfnet.train.train, []

    def flaky_train(*args, **kwargs):  # the first trial dies the way a GPU out-of-memory would
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (injected)")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(csfnet.train, "train", flaky_train)
    result = tune(tiny_data, out=tmp_path / "best.json", work_dir=tmp_path / "runs", device="cpu", track=False)
    study = _study(f"sqlite:///{tmp_path / 'runs' / 'study.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "injected" in study.trials[0].user_attrs["error"]
    assert result.counts == {"complete": 2, "fail": 1}


def _trials_so_far(storage: str, db: Path) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, or none while the worker is still creating the database (never race it to do so)."""
    from sqlalchemy.exc import SQLAlchemyError

    if not db.exists():
        return []
    try:
        return _study(storage).trials if optuna.get_all_study_summaries(storage) else []
    except SQLAlchemyError:
        return []


def _tune_cmd(data: Path, work: Path, *extra: str) -> list[str]:
    return [tool("csfnet"), "tune", "--data", str(data), "--device", "cpu", "--work-dir", str(work), *extra]


def test_two_workers_share_one_postgres_study(tiny_data, tmp_path):
    _params(tmp_path / "params.yaml", trials=4, pruner={"type": "median", "n_startup_trials": 1})
    with postgres(free_port()) as url:
        procs = [
            subprocess.Popen(
                _tune_cmd(tiny_data, tmp_path / f"w{i}", "--storage", url, "--worker", str(i), "--no-mlflow"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(2)
        ]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
        counted = _counted(_study(url))
    assert len(counted) == 4  # exactly the requested number between them
    assert len({t.number for t in counted}) == 4 and len({t.user_attrs["run_dir"] for t in counted}) == 4
    assert len({tuple(t.user_attrs["partition"]) for t in counted}) == 4  # no partition trained twice
    assert {t.user_attrs["worker"] for t in counted} == {0, 1}  # both workers took trials
    assert "password" not in json.loads((tmp_path / "metrics/tune/best_partition.json").read_text())["storage"]


def test_killed_study_resumes(tiny_data, tmp_path):
    # heartbeats every second: a trial whose worker is gone for 2 s is failed and retried with its parameters
    _params(tmp_path / "params.yaml", pruner={"type": "none"}, heartbeat_interval=1, grace_period=2)
    storage = f"sqlite:///{tmp_path / 'runs' / 'study.db'}"
    cmd = _tune_cmd(tiny_data, tmp_path / "runs", "--no-mlflow")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            trials = _trials_so_far(storage, tmp_path / "runs" / "study.db")
            if len(trials) >= 2 and trials[0].state == TrialState.COMPLETE and trials[1].state == TrialState.RUNNING:
                time.sleep(1.5)  # past its first heartbeat: Optuna only fails trials whose heartbeat went stale
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the study finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first = _study(storage).trials[0]
    time.sleep(3)  # longer than the grace period

    subprocess.run(cmd, check=True, capture_output=True)
    study = _study(storage)
    assert study.trials[0].state == TrialState.COMPLETE
    assert study.trials[0].datetime_start == first.datetime_start  # the finished trial was not repeated
    assert study.trials[1].state == TrialState.FAIL  # the killed one, failed by its stale heartbeat
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == study.trials[1].number]
    assert len(retried) == 1 and retried[0].params == study.trials[1].params
    assert len(_counted(study)) == 3


def test_pareto_search_over_partition_depth_and_learning_rate(tiny_data, tmp_path):
    from csfnet.model import CSFNetModel
    from csfnet.nn.modules import CReToNeXt

    _params(tmp_path / "params.yaml", trials=3, epochs=1, objective="pareto", head_depth=[1, 4], lr0=[0.001, 0.01])
    result = tune(tiny_data, out=tmp_path / "best.json", work_dir=tmp_path / "runs", device="cpu")
    assert result.pareto_front and all(p["gflops"] > 0 for p in result.pareto_front)
    assert result.partition == result.pareto_front[0]["partition"]  # the most accurate Pareto-optimal trial
    assert {"head_depth", "lr0"} <= set(result.params) and 0.001 <= result.params["lr0"] <= 0.01

    config = next((tmp_path / "runs" / "trials").glob(f"*-{result.trial:04d}/model.yaml"))  # the trained config
    (head,) = [m for m in CSFNetModel(yaml.safe_load(config.read_text())).modules() if isinstance(m, CReToNeXt)]
    assert len(head.blocks) == result.params["head_depth"]  # the trial trained the depth it was given
    (study_run,) = mlflow.search_runs(experiment_names=["csfnet"], filter_string="tags.`csfnet.stage` = 'tune'")[
        "run_id"
    ]
    plots = [a.path for a in mlflow.MlflowClient().list_artifacts(study_run, "plots")]
    assert "plots/pareto_front.png" in plots
