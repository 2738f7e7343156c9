"""`dvc repro` end to end on a tiny configuration, with DVC metrics/plots and MLflow lineage; and the same
pipeline SIGKILLed inside extraction, a tuning trial, a training epoch, export and registration, which a plain
`dvc repro` then finishes with the results of the uninterrupted run.

The kill points are set from outside the code under test: a ``sitecustomize`` module on ``PYTHONPATH`` wraps one
function of the stage's ``csfnet`` process so that it writes a marker and waits there; the test then kills the
whole ``dvc repro`` process group with SIGKILL.
"""

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

TINY_PARAMS = {  # no augmentation, batches loaded in-process, one optimizer step per batch: resume is exact
    "synth": {"train_videos": 2, "val_videos": 1, "frames": 6, "width": 96, "height": 64},
    "presets": {
        "quick": {
            **{"imgsz": 64, "epochs": 2, "batch": 8, "nbs": 8, "workers": 0, "plots": False},
            **{"mosaic": 0.0, "close_mosaic": 0, "fliplr": 0.0, "translate": 0.0, "scale": 0.0},
            **{"hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0},
        }
    },
    "robustness": {"sigmas": [0, 10]},
    "tune": {"trials": 2, "epochs": 1, "imgsz": 64, "heartbeat_interval": 1, "grace_period": 2},
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


def _merge(base: dict, extra: dict) -> dict:
    return {
        k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        for k, v in {**base, **extra}.items()
    }


def _repo(root: Path) -> tuple[Path, dict[str, str]]:
    """A git + DVC repository with the project's code, dvc.yaml and the tiny parameters."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    shutil.copytree(REPO / "csfnet", repo / "csfnet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, repo)
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    hooks = root / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(hooks)}
    for variable in ("CSFNET_PARAMS", "MLFLOW_TRACKING_URI", "CSFNET_PARENT_RUN_ID"):  # the repo's own store
        env.pop(variable, None)
    for cmd in (["git", "init", "-q"], [tool("dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    return repo, env


def _repro(repo: Path, env: dict[str, str]) -> None:
    done = subprocess.run([tool("dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _results(repo: Path) -> dict:
    """What a run produced that must not depend on interruptions: metrics, partition, registered score."""
    metrics = json.loads((repo / "metrics/eval/metrics.json").read_text())
    for volatile in ("latency_ms_per_image", "speed_ms"):
        metrics.pop(volatile)
    return {
        "partition": json.loads((repo / "metrics/tune/best_partition.json").read_text())["partition"],
        "eval": metrics,
        "robustness": json.loads((repo / "metrics/robustness/robustness.json").read_text()),
        "export": json.loads((repo / "metrics/export/report.json").read_text())["verification"]["map50_95"],
        "registered": json.loads((repo / "metrics/register/registry.json").read_text())["map50_95"],
    }


def _weights(repo: Path) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(repo / "runs/train/weights/best.pt", map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in checkpoint["model"].state_dict().items()}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], dict]:
    """One uninterrupted `dvc repro`, with its results read before any test changes the workspace."""
    repo, env = _repo(tmp_path_factory.mktemp("pipeline"))
    _repro(repo, env)
    return repo, env, {"results": _results(repo), "weights": _weights(repo)}


@pytest.mark.slow
@pytest.mark.e2e
def test_dvc_repro_runs_the_whole_pipeline(pipeline, monkeypatch):
    repo, env, _ = pipeline
    params = yaml.safe_load((repo / "params.yaml").read_text())

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

    # an ablation or the baseline is one parameter away: the experiment re-runs tune (nothing to tune), train and
    # eval (the target: the stages after it would only repeat what the first run showed)
    for cmd in (["git", "add", "-A"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "base"]):
        subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True)
    subprocess.run(
        [tool("dvc"), "exp", "run", "-S", "train.model=yolov8n", "eval"],
        cwd=repo,
        env=env,
        check=True,
        capture_output=True,
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


@pytest.mark.slow
@pytest.mark.e2e
def test_killed_repro_resumes_to_the_uninterrupted_result(pipeline, tmp_path, monkeypatch):
    expected = pipeline[2]

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

    assert _results(repo) == expected["results"]  # same machine, same seeds: the kills changed nothing
    weights = _weights(repo)  # training went on from epoch 1's exact state (fp16 checkpoints: within an ulp)
    assert all(torch.allclose(weights[k], v, atol=1e-3) for k, v in expected["weights"].items())
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
