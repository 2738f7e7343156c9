"""Stages log through an injected StageLogger: no stage module imports MLflow, and the MLflow logger and the Optuna
trial callback write the runs they promise."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest

from csfnet.mlflow_logger import MlflowLogger
from csfnet.runlog import NullLogger, ParentRun
from csfnet.trial_log import TrialLogger

PACKAGE = Path(__file__).resolve().parents[1] / "csfnet"
MLFLOW_MODULES = ("mlflow", "csfnet.mlflow_tracking", "csfnet.mlflow_logger")
# modules whose job is MLflow itself: the tracking store, the registry, serving and Kubeflow's steps; the command
# line builds the logger; the export stage is converted next (it still takes ``track``)
ALLOWED = {
    "csfnet.mlflow_tracking",
    "csfnet.mlflow_logger",
    "csfnet.mlflow_model",
    "csfnet.registry",
    "csfnet.cli",
    "csfnet.detect.serving",
    "csfnet.detect.runtimes",
}
STAGES = (
    "csfnet.train",
    "csfnet.tune",
    "csfnet.trial_log",
    "csfnet.revalidate",
    "csfnet.evaluate",
    "csfnet.robustness",
    "csfnet.compare.run",
    "csfnet.compare.cell",
    "csfnet.compare.report",
    "csfnet.data.report",
    "csfnet.detect.run",
)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_stage_module_imports_mlflow():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        if module in ALLOWED or module.startswith("csfnet.kubeflow"):
            continue
        found = sorted(n for n in _imports(path) if any(n == m or n.startswith(f"{m}.") for m in MLFLOW_MODULES))
        if found:
            offenders[module] = found
    assert offenders == {}
    assert not (PACKAGE / "tracking.py").exists() and not (PACKAGE / "detect" / "tracking.py").exists()


def test_importing_every_stage_loads_no_mlflow():
    code = (
        f"import sys\nimport {', '.join(STAGES)}\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_null_logger_records_nothing_and_nests(tmp_path):
    logger = NullLogger()
    with logger.stage("eval", {"a": 1}) as run, run.nested("child", status="KILLED") as child:
        child.log_metrics({"map50": 0.5, "bands": {"tiny": 0.1}}, step=1)
        child.log_artifact(tmp_path / "missing.json")  # nothing is read or written
    assert not run.active and run.parent is logger
    assert not list(tmp_path.iterdir())


def test_mlflow_logger_writes_stage_nested_runs_and_parent_artifacts(tmp_path):
    (tmp_path / "table.md").write_text("| a |")
    logger = MlflowLogger()
    with logger.stage(
        "compare-report", {"configs": ["a", "b"]}, parent=ParentRun("csfnet.comparison", "c1", "cmp")
    ) as run:
        run.log_metrics({"yolov8n": {"map50": 0.4, "flag": True, "name": "x"}}, step=2)
        run.set_tags({"csfnet.resumed": False})
        with run.nested("trial-0", {"partition": [1, 2]}, {"optuna.state": "PRUNED"}, status="KILLED") as child:
            child.log_metrics({"metrics/mAP50(B)": 0.3})
        with pytest.raises(RuntimeError), run.nested("trial-1"):
            raise RuntimeError("a trial that fails")
        run.parent.log_artifact(tmp_path / "table.md", "compare")
    runs = {r.info.run_name: r for r in mlflow.search_runs(experiment_names=["csfnet"], output_format="list")}
    stage, parent = runs["compare-report"], runs["cmp-c1"]
    assert stage.data.tags["mlflow.parentRunId"] == parent.info.run_id and parent.data.tags["csfnet.comparison"] == "c1"
    assert stage.data.metrics == {"yolov8n.map50": 0.4} and stage.data.params["configs"] == '["a", "b"]'
    assert stage.data.tags["csfnet.resumed"] == "False" and stage.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(stage.info.run_id, "yolov8n.map50")
    assert [m.step for m in history] == [2]
    pruned, failed = runs["trial-0"], runs["trial-1"]
    assert pruned.data.tags["mlflow.parentRunId"] == stage.info.run_id and pruned.info.status == "KILLED"
    assert pruned.data.metrics == {"metrics/mAP50_B": 0.3} and pruned.data.params["partition"] == "[1, 2]"
    assert failed.info.status == "FAILED"
    artifacts = mlflow.MlflowClient().list_artifacts(parent.info.run_id, "compare")
    assert [a.path for a in artifacts] == ["compare/table.md"]


def test_trial_callback_logs_one_nested_run_per_trial(tmp_path):
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_int("x", 0, 10)
        trial.set_user_attr("partition", [x])
        if trial.number == 1:
            trial.set_user_attr("surplus", True)  # found the study full: not logged
            raise optuna.TrialPruned()
        for epoch in (1, 2):
            trial.report(0.1 * epoch, epoch)
            if trial.number == 2:
                raise optuna.TrialPruned()
        if trial.number == 3:
            raise ValueError("out of memory (injected)")
        return 0.2

    study = optuna.create_study(direction="maximize")
    with MlflowLogger().stage("tune") as run:
        callback = TrialLogger(run, {"epochs": 2, "imgsz": 64, "plots": False})
        study.optimize(objective, n_trials=4, catch=(ValueError,), callbacks=[callback])
    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    (stage,) = [r for r in runs if r.data.tags.get("csfnet.stage") == "tune"]
    trials = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == stage.info.run_id}
    assert sorted(trials) == ["trial-0", "trial-2", "trial-3"]
    states = {name: (r.data.tags["optuna.state"], r.info.status) for name, r in trials.items()}
    assert states == {
        "trial-0": ("COMPLETE", "FINISHED"),
        "trial-2": ("PRUNED", "KILLED"),
        "trial-3": ("FAIL", "FAILED"),
    }
    done = trials["trial-0"]
    assert done.data.metrics["final_map50_95"] == 0.2 and done.data.params["imgsz"] == "64"
    assert "plots" not in done.data.params and "partition" in done.data.params
    history = mlflow.MlflowClient().get_metric_history(done.info.run_id, "map50_95")
    assert [(m.step, m.value) for m in history] == [(1, 0.1), (2, 0.2)]
    assert "final_map50_95" not in trials["trial-2"].data.metrics
