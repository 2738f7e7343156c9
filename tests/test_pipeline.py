"""`dvc repro` end to end on a tiny configuration, with DVC metrics/plots and MLflow lineage."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import yaml

from .conftest import REPO, tool

TINY_PARAMS = {
    "synth": {"train_videos": 2, "val_videos": 1, "frames": 6, "width": 96, "height": 64},
    "presets": {"quick": {"imgsz": 64, "epochs": 1, "batch": 4, "workers": 0, "mosaic": 0.0}},
    "robustness": {"sigmas": [0, 10]},
    "tune": {"trials": 2, "epochs": 1, "imgsz": 64},
}


def _merge(base: dict, extra: dict) -> dict:
    return {
        k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        for k, v in {**base, **extra}.items()
    }


def test_dvc_repro_runs_the_whole_pipeline(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(REPO / "csfnet", repo / "csfnet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("CSFNET_PARAMS")
    for cmd in (["git", "init", "-q"], [tool("dvc"), "init", "-q"], [tool("dvc"), "repro"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True)

    metrics = json.loads(
        subprocess.run(
            [tool("dvc"), "metrics", "show", "--json"], cwd=repo, env=env, check=True, capture_output=True, text=True
        ).stdout
    )
    files = next(iter(metrics.values()))["data"]
    eval_metrics = files["metrics/eval/metrics.json"]["data"]
    assert 0 <= eval_metrics["map50"] <= 1 and "size_bands" in eval_metrics
    noise = files["metrics/robustness/robustness.json"]["data"]
    assert set(noise) == {"sigma_0", "sigma_10"}
    assert noise["sigma_0"]["map50"] == round(eval_metrics["map50"], 5)
    summary = subprocess.run(
        [tool("csfnet"), "summary"], cwd=repo, env=env, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert [line.split("  ")[0] for line in summary] == [
        "data",
        "CSwitch partition",
        "validation",
        "AP50 by target size",
        "mAP50 under noise",
        "ONNX export",
        "INT8 model",
        "MLflow registry",
        "compare runs: http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning"
        " (after: mlflow ui --backend-store-uri sqlite:///mlruns.db)",
    ]
    assert f"mAP50 {eval_metrics['map50']:.3f}" in summary[2] and summary[5].split()[2] == "verified,"
    assert "version 1: champion" in summary[7]
    subprocess.run([tool("dvc"), "plots", "show", "-o", "plots"], cwd=repo, env=env, check=True, capture_output=True)
    assert (repo / "plots" / "index.html").is_file()
    assert (repo / "runs/train/weights/best.pt").is_file()

    # each stage depends on the keys it reads: editing the preset not in use re-runs nothing
    params["presets"]["paper"]["epochs"] += 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = subprocess.run([tool("dvc"), "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert json.loads(status.stdout) in ({}, {"ingest": ["always changed"]}), status.stdout

    monkeypatch.chdir(repo)
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    stages = sorted(r.data.tags["csfnet.stage"] for r in runs if "csfnet.stage" in r.data.tags)
    expected = ["eval", "export", "register", "robustness", "train", "tune", "tune-trial", "tune-trial"]
    assert stages == expected  # one run per stage (and per tuning trial)
    (train_run,) = [r for r in runs if r.data.tags.get("csfnet.stage") == "train"]
    tune_result = json.loads((repo / "metrics/tune/best_partition.json").read_text())
    assert tune_result["storage"] == "sqlite:///runs/tune/study.db"  # no clone-specific path in a DVC output
    tuned = tune_result["partition"]
    assert json.loads(train_run.data.params["partition"]) == tuned  # train used the tuned partition
    assert 0 <= train_run.data.metrics["data.val.below_stride_share"] <= 1  # data stats travel with the run
    stats = [a.path for a in mlflow.MlflowClient().list_artifacts(train_run.info.run_id, "data_stats")]
    assert "data_stats/size_histogram.png" in stats
    data_hashes = {r.data.tags["csfnet.data_hash"] for r in runs if "csfnet.data_hash" in r.data.tags}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    dataset_md5 = next(o["md5"] for o in lock["stages"]["extract"]["outs"] if o["path"] == "data/dataset")
    assert data_hashes == {dataset_md5}  # every stage is tagged with the DVC hash of the data it used
    raw_md5 = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/raw")
    (dataset_input,) = mlflow.get_run(train_run.info.run_id).inputs.dataset_inputs
    assert dataset_input.dataset.digest == raw_md5[:36]  # the MLflow UI shows which data version trained the model
    assert json.loads((repo / "metrics/export/report.json").read_text())["passed"]
    champion = mlflow.MlflowClient().get_model_version_by_alias("csfnet-uav", "champion")
    assert champion.tags["csfnet.data_hash"] == dataset_md5 and (repo / "models/csfnet-int8.onnx").is_file()

    # an ablation or the baseline is one parameter away: the experiment re-runs tune (nothing to tune) and train
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(
        [tool("dvc"), "exp", "run", "-S", "train.model=yolov8n"], cwd=repo, env=env, check=True, capture_output=True
    )
    assert json.loads((repo / "metrics/tune/best_partition.json").read_text())["partition"] is None
    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    models = sorted(r.data.tags["csfnet.model_config"] for r in runs if r.data.tags.get("csfnet.stage") == "train")
    assert models == ["csfnet-n", "yolov8n"]
    diff = json.loads(
        subprocess.run(
            [tool("dvc"), "metrics", "diff", "--all", "--json"],
            cwd=repo,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    assert "map50" in diff["metrics/eval/metrics.json"]  # the baseline against the committed CSF-Net run
