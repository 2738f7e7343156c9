"""Fault injection: `dvc repro` SIGKILLed inside extraction, a tuning trial, a training epoch, export and
registration; after each kill a plain `dvc repro` finishes with the metrics of an uninterrupted run.

The kill points are set from outside the code under test: a ``sitecustomize`` module on ``PYTHONPATH`` wraps one
function of the stage's ``csfnet`` process so that it writes a marker and waits there; the test then kills the
whole ``dvc repro`` process group with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from .conftest import REPO, tool

PARAMS = {  # no augmentation, batches loaded in-process, one optimizer step per batch: resume is exact
    "synth": {"train_videos": 2, "val_videos": 1, "frames": 6, "width": 96, "height": 64},
    "presets": {
        "quick": {
            **{"imgsz": 64, "epochs": 2, "batch": 8, "nbs": 8, "workers": 0, "plots": False},
            **{"mosaic": 0.0, "close_mosaic": 0},
            **{"fliplr": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0},
        }
    },
    "tune": {"trials": 2, "epochs": 1, "imgsz": 64, "heartbeat_interval": 1, "grace_period": 2},
    "robustness": {"sigmas": [0, 10]},
    "export": {"calib_frames": 4, "verify_frames": 2},
}

SITECUSTOMIZE = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path

    POINT = os.environ.get("CSFNET_FAULT")

    def pause(where):
        Path(os.environ["CSFNET_FAULT_MARKER"]).write_text(f"{os.getpid()} {where}")
        while True:
            time.sleep(1)

    if POINT and sys.argv and Path(sys.argv[0]).name == "csfnet":
        if POINT == "extract" and sys.argv[1:3] == ["data", "extract"]:
            import csfnet.data.extract as module  # the finished dataset is staged, not yet renamed into place
            real_replace = module.replace_dir
            def replace_dir(src, dst):
                pause("extract")
            module.replace_dir = replace_dir
        if POINT in ("tune", "train") and sys.argv[1] == POINT:
            import csfnet.train as module  # tuning trial 1 in its first epoch, training in its second epoch
            real_train = module.train
            def train(*args, **kwargs):
                callbacks = dict(kwargs.get("callbacks") or {})
                if POINT == "tune" and str(kwargs.get("out", "")).endswith("-0001"):
                    callbacks["on_train_epoch_start"] = lambda trainer: pause("tune trial 1")
                if POINT == "train":
                    callbacks["on_train_epoch_start"] = lambda trainer: trainer.epoch == 1 and pause("train epoch 2")
                kwargs["callbacks"] = callbacks
                return real_train(*args, **kwargs)
            module.train = train
        if POINT == "export" and sys.argv[1] == "export":
            import csfnet.export as module  # the ONNX file is written to staging, not yet verified or moved
            module.verify = lambda *args, **kwargs: pause("export")
        if POINT == "register" and sys.argv[1] == "register":
            import mlflow  # the version exists, its tags, aliases and decision do not
            real_register = mlflow.register_model
            def register_model(*args, **kwargs):
                real_register(*args, **kwargs)
                pause("register")
            mlflow.register_model = register_model
    """
)


def _repo(root: Path) -> tuple[Path, dict[str, str]]:
    repo = root / "repo"
    repo.mkdir(parents=True)
    shutil.copytree(REPO / "csfnet", repo / "csfnet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo)
    (repo / "params.yaml").write_text(
        yaml.safe_dump(_merge(yaml.safe_load((REPO / "params.yaml").read_text()), PARAMS))
    )
    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(hooks)}
    env.pop("CSFNET_PARAMS")
    for cmd in (["git", "init", "-q"], [tool("dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo, env


def _merge(base: dict, extra: dict) -> dict:
    return {
        k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        for k, v in {**base, **extra}.items()
    }


def _repro(repo: Path, env: dict[str, str]) -> None:
    done = subprocess.run([tool("dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _kill_inside(repo: Path, env: dict[str, str], point: str, timeout: float = 600) -> None:
    marker = repo.parent / f"paused-{point}"
    env = {**env, "CSFNET_FAULT": point, "CSFNET_FAULT_MARKER": str(marker)}
    log = open(repo.parent / f"repro-{point}.log", "w")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen([tool("dvc"), "repro"], cwd=repo, env=env, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    paused = marker.exists()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    assert paused, f"never reached {point}: " + (repo.parent / f"repro-{point}.log").read_text()[-3000:]


def _digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode() + state[key].cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _results(repo: Path) -> dict:
    metrics = json.loads((repo / "metrics/eval/metrics.json").read_text())
    for volatile in ("latency_ms_per_image", "speed_ms"):
        metrics.pop(volatile)
    trained = torch.load(repo / "runs/train/weights/best.pt", map_location="cpu", weights_only=False)["model"]
    return {
        "weights": _digest(trained.state_dict()),  # bit for bit, not only the metrics
        "partition": json.loads((repo / "metrics/tune/best_partition.json").read_text())["partition"],
        "eval": metrics,
        "robustness": json.loads((repo / "metrics/robustness/robustness.json").read_text()),
        "export": json.loads((repo / "metrics/export/report.json").read_text())["verification"]["map50_95"],
        "registered": json.loads((repo / "metrics/register/registry.json").read_text())["map50_95"],
    }


@pytest.mark.slow
def test_killed_repro_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    clean, clean_env = _repo(tmp_path / "clean")
    _repro(clean, clean_env)
    expected = _results(clean)

    repo, env = _repo(tmp_path / "killed")
    _kill_inside(repo, env, "extract")
    assert not (repo / "data/dataset").exists()  # the staged dataset was never renamed into place
    _kill_inside(repo, env, "tune")
    assert not (repo / "metrics/tune/best_partition.json").exists()
    assert not list((repo / "data").glob(".dataset.tmp-*"))  # the killed extraction's staging folder is gone
    _kill_inside(repo, env, "train")
    for checkpoint in (repo / "runs/train/weights").glob("*.pt"):
        torch.load(checkpoint, map_location="cpu", weights_only=False)  # every checkpoint on disk is whole
    assert (repo / "runs/train/weights/last_state.pt").is_file()  # the exact resume state of epoch 1
    _kill_inside(repo, env, "export")
    assert not (repo / "models/csfnet.onnx").exists()
    _kill_inside(repo, env, "register")
    assert not (repo / "metrics/register/registry.json").exists()
    _repro(repo, env)

    assert _results(repo) == expected  # same machine, same seeds: the kills changed nothing
    assert not (repo / "runs/train/weights/last_state.pt").exists()
    assert not list((repo / "models").glob(".csfnet.onnx.tmp-*"))
    status = subprocess.run([tool("dvc"), "status", "--json"], cwd=repo, env=env, capture_output=True, text=True)
    assert json.loads(status.stdout) in ({}, {"ingest": ["always changed"]})  # ingest looks at the source
    monkeypatch.chdir(repo)
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns.db'}")
    client = mlflow.MlflowClient()
    assert len(client.search_model_versions("name='csfnet-uav'")) == 1  # one version per completed registration
    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    stage_runs = [r for r in runs if r.data.tags.get("csfnet.stage") in ("train", "tune", "export", "register")]
    assert all(r.info.status in ("FINISHED", "KILLED") for r in stage_runs)  # killed stages are closed, not RUNNING
    assert {r.data.tags["csfnet.stage"] for r in stage_runs if r.info.status == "KILLED"} >= {"tune", "train"}
