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
    shutil.copy(REPO / "dvc.yaml", repo)
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
    subprocess.run([tool("dvc"), "plots", "show", "-o", "plots"], cwd=repo, env=env, check=True, capture_output=True)
    assert (repo / "plots" / "index.html").is_file()
    assert (repo / "runs/train/weights/best.pt").is_file()

    monkeypatch.chdir(repo)
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    stages = sorted(r.data.tags["csfnet.stage"] for r in runs if "csfnet.stage" in r.data.tags)
    assert stages == ["eval", "robustness", "train"]  # exactly one run per tracked stage
    data_hashes = {r.data.tags["csfnet.data_hash"] for r in runs if "csfnet.data_hash" in r.data.tags}
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    dataset_md5 = next(o["md5"] for o in lock["stages"]["extract"]["outs"] if o["path"] == "data/dataset")
    assert data_hashes == {dataset_md5}  # every stage is tagged with the DVC hash of the data it used
