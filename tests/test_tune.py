"""Optuna tuning of the CSwitch partition: real studies of tiny trials through the real trainer, and the decision
that adopts the study's best partition only after re-validation against the config's own."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

import csfnet.train
from csfnet.metrics import ImageMatches
from csfnet.mlflow_logger import MlflowLogger
from csfnet.model import build_model
from csfnet.nn.modules import CSwitch
from csfnet.revalidate import decide, revalidate
from csfnet.settings import Revalidate
from csfnet.summary import summary
from csfnet.tune import tune

from .conftest import TINY_TRAIN, free_port, tool
from .services import postgres

pytestmark = pytest.mark.slow
BOUNDS = {"min": [32, 64, 128], "max": [96, 192, 384], "step": 16}
OWN = [64, 128, 256]  # csfnet-n's own partition, inside BOUNDS: the incumbent of every decision


def _params(path: Path, **tune_settings) -> None:
    """A params.yaml whose quick preset and tuning are tiny (imgsz 64, 2 epochs)."""
    settings = {"trials": 3, "epochs": 2, "imgsz": 64, "partition": BOUNDS, **tune_settings}
    params = {"train": {"model": "csfnet-n", "preset": "quick"}, "presets": {"quick": TINY_TRAIN}, "tune": settings}
    params["compare"] = {"preset": "quick"}  # the only preset left
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
    result = tune(
        tiny_data,
        out=tmp_path / "best.json",
        work_dir=tmp_path / "runs",
        device="cpu",
        logger=MlflowLogger(),
        revalidate=False,
    )

    study = _study(f"sqlite:///{tmp_path / 'runs' / 'study.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 3 and states.count(TrialState.PRUNED) >= 1 and TrialState.COMPLETE in states
    pruned = next(t for t in study.trials if t.state == TrialState.PRUNED)
    assert list(pruned.intermediate_values) == [1] or list(pruned.intermediate_values) == [1, 2]

    best = json.loads((tmp_path / "best.json").read_text())
    challenger = best["decision"]["challenger"]
    assert challenger == study.trials[best["trial"]].user_attrs["partition"]
    for channels, low, high in zip(challenger, BOUNDS["min"], BOUNDS["max"]):
        assert low <= channels <= high and channels % BOUNDS["step"] == 0
    # without re-validation nothing replaces the config's own partition (a tie or its win needs none)
    assert best["partition"] == result.partition == OWN and best["decision"]["incumbent"] == OWN
    expected = ("kept", "inconclusive") if challenger == OWN else ("inconclusive", "pending")
    assert best["decision"]["outcome"] in expected
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
    again = tune(tiny_data, out=tmp_path / "best.json", work_dir=tmp_path / "runs", device="cpu", revalidate=False)
    assert len(_study(f"sqlite:///{tmp_path / 'runs' / 'study.db'}").trials) == 3
    assert again.partition == best["partition"] and again.decision == best["decision"]


def test_failed_trial_is_recorded_and_the_study_goes_on(tiny_data, tmp_path, monkeypatch):
    _params(tmp_path / "params.yaml", trials=2, pruner={"type": "none"})
    real_train, calls = csfnet.train.train, []

    def flaky_train(*args, **kwargs):  # the first trial dies the way a GPU out-of-memory would
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory (injected)")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(csfnet.train, "train", flaky_train)
    runs = tmp_path / "runs"
    result = tune(tiny_data, out=tmp_path / "best.json", work_dir=runs, device="cpu", revalidate=False)
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


WORKER_FLAGS = ("--no-mlflow", "--no-revalidate")  # as Kubeflow's workers: a final `csfnet tune` decides


def _tune_cmd(data: Path, work: Path, *extra: str) -> list[str]:
    return [tool("csfnet"), "tune", "--data", str(data), "--device", "cpu", "--work-dir", str(work), *extra]


def test_two_workers_share_one_postgres_study(tiny_data, tmp_path):
    _params(tmp_path / "params.yaml", trials=4, pruner={"type": "median", "n_startup_trials": 1})
    with postgres(free_port()) as url:
        procs = [
            subprocess.Popen(
                _tune_cmd(
                    tiny_data, tmp_path / f"w{i}", "--set", f"tune.storage={url}", "--worker", str(i), *WORKER_FLAGS
                ),
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
    written = json.loads((tmp_path / "metrics/tune/best_partition.json").read_text())
    assert "password" not in written["storage"] and written["decision"]["outcome"] != "adopted"


def test_killed_study_resumes(tiny_data, tmp_path):
    # heartbeats every second: a trial whose worker is gone for 2 s is failed and retried with its parameters
    _params(tmp_path / "params.yaml", pruner={"type": "none"}, heartbeat_interval=1, grace_period=2)
    storage = f"sqlite:///{tmp_path / 'runs' / 'study.db'}"
    cmd = _tune_cmd(tiny_data, tmp_path / "runs", *WORKER_FLAGS)
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
    result = tune(
        tiny_data,
        out=tmp_path / "best.json",
        work_dir=tmp_path / "runs",
        device="cpu",
        logger=MlflowLogger(),
        revalidate=False,
    )
    assert result.pareto_front and all(p["gflops"] > 0 for p in result.pareto_front)
    assert result.decision["challenger"] == result.pareto_front[0]["partition"]  # the most accurate Pareto-optimal
    assert {"head_depth", "lr0"} <= set(result.params) and 0.001 <= result.params["lr0"] <= 0.01

    config = next((tmp_path / "runs" / "trials").glob(f"*-{result.trial:04d}/model.yaml"))  # the trained config
    (head,) = [m for m in CSFNetModel(yaml.safe_load(config.read_text())).modules() if isinstance(m, CReToNeXt)]
    assert len(head.blocks) == result.params["head_depth"]  # the trial trained the depth it was given
    (study_run,) = mlflow.search_runs(experiment_names=["csfnet"], filter_string="tags.`csfnet.stage` = 'tune'")[
        "run_id"
    ]
    plots = [a.path for a in mlflow.MlflowClient().list_artifacts(study_run, "plots")]
    assert "plots/pareto_front.png" in plots


def _matches(found: list[int], images: int = 20, seed: int = 0) -> ImageMatches:
    """One target per image; a detection exactly on it in the images ``found`` (confidence varies with the seed)."""
    conf = np.random.default_rng(seed).uniform(0.3, 0.9, len(found))
    return ImageMatches(image=found, conf=conf, tp=np.ones((len(found), 10), bool), n_gt=np.ones(images, int))


def test_revalidation_adopts_only_a_clearly_better_partition():
    challenger, everything, half = [32, 64, 128], list(range(20)), list(range(0, 20, 2))
    calls = []

    def scorer(found_by: dict[tuple, list[int]]):
        def score(partition: list[int], seed: int) -> ImageMatches:
            calls.append((tuple(partition), seed))
            return _matches(found_by[tuple(partition)], seed=seed)

        return score

    better = revalidate(challenger, OWN, scorer({(32, 64, 128): everything, tuple(OWN): half}), seeds=[0, 1])
    assert better.outcome == "adopted" and better.partition == challenger
    assert sorted(calls) == [(tuple(challenger), 0), (tuple(challenger), 1), (tuple(OWN), 0), (tuple(OWN), 1)]
    scores = better.per_seed  # ultralytics' 101-point interpolation: 0.995 for a perfect detector
    assert scores["challenger"] == pytest.approx([1, 1], abs=0.01) and scores["incumbent"] == pytest.approx(
        [0.5] * 2, abs=0.01
    )
    assert (
        better.effect == pytest.approx(0.5, abs=0.01) and 0 < better.interval[0] <= better.effect <= better.interval[1]
    )

    worse = revalidate(challenger, OWN, scorer({(32, 64, 128): half, tuple(OWN): everything}), seeds=[0, 1])
    assert worse.outcome == "kept" and worse.partition == OWN and worse.interval[1] < 0
    other_half = list(range(1, 20, 2))  # as good, on other images: the gain's interval straddles 0
    equal = revalidate(challenger, OWN, scorer({(32, 64, 128): other_half, tuple(OWN): half}), seeds=[0, 1])
    assert equal.outcome == "kept" and equal.partition == OWN
    assert equal.interval[0] < 0 < equal.interval[1] and "not better" in equal.reason

    # no training at all when the study ties or the config's own partition won it
    calls.clear()
    tie = decide(challenger, OWN, [0.0, 0.0, 0.0], scorer({}), Revalidate())
    own = decide(OWN, OWN, [0.1, 0.2], scorer({}), Revalidate())
    assert (tie.outcome, own.outcome, calls) == ("inconclusive", "kept", [])
    assert tie.partition == own.partition == OWN


def _complete_study(storage: str, name: str, trials: list[tuple[list[int], float]]) -> None:
    """A study that already holds its finished trials, as the workers of a fan-out leave it."""
    from optuna.distributions import IntDistribution

    study = optuna.create_study(storage=storage, study_name=name, direction="maximize")  # runs/ exists already
    space = {
        f"partition_p{i + 3}": IntDistribution(lo, hi, step=BOUNDS["step"])
        for i, (lo, hi) in enumerate(zip(BOUNDS["min"], BOUNDS["max"]))
    }
    for partition, value in trials:
        params = {f"partition_p{i + 3}": c for i, c in enumerate(partition)}
        attrs = {"partition": partition, "gflops": 1.0, "baseline": partition == OWN}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=space, value=value, user_attrs=attrs))


def test_a_tied_study_decides_nothing_and_the_summary_says_so(tiny_data, tmp_path, monkeypatch):
    _params(tmp_path / "params.yaml", study_name="tied")
    (tmp_path / "runs").mkdir()
    _complete_study(f"sqlite:///{tmp_path / 'runs' / 'study.db'}", "tied", [(OWN, 0.0), ([32, 64, 128], 0.0)] * 2)
    monkeypatch.setattr(csfnet.train, "train", None)  # a complete study trains nothing: no trial, no re-validation

    result = tune(tiny_data, out=tmp_path / "best.json", work_dir=tmp_path / "runs", device="cpu")
    written = json.loads((tmp_path / "best.json").read_text())
    assert written["decision"]["outcome"] == "inconclusive" and written["partition"] == result.partition == OWN
    assert len(_study(f"sqlite:///{tmp_path / 'runs' / 'study.db'}").trials) == 4
    line = summary({"tune": written})
    assert "could not separate partitions at this budget" in line and "64/128/256" in line


def test_a_complete_study_revalidates_its_winner_by_training(tiny_data, tmp_path, monkeypatch):
    revalidation = {"seeds": [0, 1], "epochs": 1, "resamples": 200}
    _params(tmp_path / "params.yaml", study_name="decided", revalidate=revalidation)
    storage = f"sqlite:///{tmp_path / 'runs' / 'study.db'}"
    (tmp_path / "runs").mkdir()
    _complete_study(storage, "decided", [(OWN, 0.01), ([32, 64, 128], 0.02), ([48, 96, 192], 0.0)])

    result = tune(
        tiny_data, out=tmp_path / "best.json", work_dir=tmp_path / "runs", device="cpu", logger=MlflowLogger()
    )
    decision = json.loads((tmp_path / "best.json").read_text())["decision"]
    assert decision["challenger"] == [32, 64, 128] and decision["incumbent"] == OWN and decision["seeds"] == [0, 1]
    assert decision["outcome"] in ("adopted", "kept") and result.partition == _partition_of(decision)
    low, high = decision["interval"]
    assert low <= decision["effect"] <= high and decision["confidence"] == 0.95
    assert [len(v) for v in decision["per_seed"].values()] == [2, 2]
    folders = sorted(p.name for p in (tmp_path / "runs" / "revalidate" / "decided").iterdir())
    assert folders == ["p32-64-128-seed0", "p32-64-128-seed1", "p64-128-256-seed0", "p64-128-256-seed1"]
    assert not list((tmp_path / "runs" / "revalidate").rglob("*.pt"))  # weights deleted once scored
    assert len(_study(storage).trials) == 3  # no trial was added

    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    (run,) = [r for r in runs if r.data.tags.get("csfnet.stage") == "tune"]  # no nested run: nothing was a trial
    assert len(runs) == 2  # and the pipeline's parent run
    assert run.data.tags["csfnet.tune.decision"] == decision["outcome"]
    assert run.data.metrics["revalidate.low"] == low and run.data.metrics["revalidate.high"] == high
    assert run.data.metrics["revalidate.effect_map50_95"] == decision["effect"]

    monkeypatch.setattr(csfnet.train, "train", None)  # deciding again reuses the stored re-validation
    again = tune(tiny_data, out=tmp_path / "again.json", work_dir=tmp_path / "runs", device="cpu")
    assert again.decision == decision
    assert summary({"tune": {**result.to_json(), "decision": decision}}).count("interval") == 1


def _partition_of(decision: dict) -> list[int]:
    return decision["challenger"] if decision["outcome"] == "adopted" else decision["incumbent"]
