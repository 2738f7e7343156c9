"""Training through ultralytics' trainer: checkpoints, reloading, resume, ONNX parity, MLflow logging."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime as ort
import pytest
import torch
from ultralytics import YOLO

from csfnet.mlflow_logger import MlflowLogger
from csfnet.train import train

from .conftest import TINY_TRAIN

PREDICT = """
import sys, json, numpy as np, torch
import csfnet
from ultralytics import YOLO
model = YOLO(sys.argv[1])
image = np.load(sys.argv[2])
raw = model.model.float().eval()(torch.from_numpy(image))[0]
print(json.dumps(raw.detach().numpy().round(5).tolist()))
"""


def test_checkpoint_reloads_in_a_fresh_process_with_identical_output(tiny_weights, tmp_path):
    image = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", image)
    out = subprocess.run(
        [sys.executable, "-c", PREDICT, str(tiny_weights), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    in_process = YOLO(str(tiny_weights)).model.float().eval()(torch.from_numpy(image))[0].detach().numpy()
    np.testing.assert_allclose(np.array(json.loads(out.splitlines()[-1])), in_process, atol=1e-4)
    assert (tiny_weights.parent / "last.pt").is_file()


def test_predict_and_onnx_export_match_pytorch(tiny_weights, tmp_path, tiny_data):
    model = YOLO(str(tiny_weights))
    results = model.predict(str(next((tiny_data.parent / "images/val").glob("*.jpg"))), imgsz=64, verbose=False)
    assert results[0].boxes is not None
    onnx_path = Path(model.export(format="onnx", imgsz=64, opset=17, simplify=False, dynamic=False))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)
    onnx_out = session.run(None, {session.get_inputs()[0].name: x})[0]
    torch_out = YOLO(str(tiny_weights)).model.float().fuse().eval()(torch.from_numpy(x))[0].detach().numpy()
    assert onnx_out.shape == torch_out.shape
    assert np.abs(onnx_out - torch_out).max() < 1e-3


@pytest.mark.slow
def test_training_logs_one_mlflow_run_with_epoch_metrics(tiny_data, tmp_path):
    result = train(
        tiny_data,
        model="csfnet-n",
        out=tmp_path / "run",
        overrides={**TINY_TRAIN, "epochs": 2},
        device="cpu",
        logger=MlflowLogger(),
    )
    assert result.best.is_file() and not result.resumed
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    stages = [r for r in runs if r.data.tags.get("csfnet.stage") == "train"]
    assert len(stages) == 1  # ultralytics' own MLflow callback is off: no duplicate run
    train_run = stages[0]
    assert train_run.data.tags["mlflow.parentRunId"] in {r.info.run_id for r in runs}
    assert train_run.data.tags["csfnet.model_config"] == "csfnet-n"
    assert train_run.data.tags["csfnet.data_hash"].startswith("content-")
    history = mlflow.MlflowClient().get_metric_history(train_run.info.run_id, "train/box_loss")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(train_run.info.run_id, "weights")}
    assert "weights/best.pt" in artifacts
    (data_input,) = mlflow.get_run(train_run.info.run_id).inputs.dataset_inputs  # the data version it trained on
    assert data_input.tags[0].value == "training" and data_input.dataset.digest.startswith("content-")
    assert mlflow.MlflowClient().list_artifacts(train_run.info.run_id, "data_stats")


@pytest.mark.slow
def test_killed_training_resumes_from_last_pt(tiny_data, tmp_path):
    # The child SIGKILLs itself right after ultralytics saved the epoch-1 checkpoint: a hard kill, at a known point.
    script = (
        "import os, signal, sys; from csfnet.train import train\n"
        "def die(trainer):\n"
        "    if trainer.epoch == 0: os.kill(os.getpid(), signal.SIGKILL)\n"
        f"train(sys.argv[1], model='csfnet-n', out=sys.argv[2], overrides={dict(TINY_TRAIN, epochs=3)!r}, "
        "device='cpu', callbacks={'on_model_save': die})"
    )
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_data), str(run)], capture_output=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL
    assert len((run / "results.csv").read_text().splitlines()) == 2  # header + epoch 1
    result = train(tiny_data, model="csfnet-n", out=run, overrides=dict(TINY_TRAIN, epochs=3), device="cpu")
    assert result.resumed
    rows = (run / "results.csv").read_text().splitlines()[1:]
    assert [int(float(r.split(",")[0])) for r in rows] == [1, 2, 3]


def test_missing_inputs_fail_before_training(tiny_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        train(tiny_data, out=tmp_path / "r", pretrained=tmp_path / "yolov8n.pt")
    with pytest.raises(FileNotFoundError, match="data extract"):
        train(tmp_path / "nope.yaml", out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_pretrained_checkpoint_initialises_and_reports(tiny_data, tiny_weights, tmp_path):
    result = train(
        tiny_data,
        model="csfnet-n",
        out=tmp_path / "ft",
        overrides=TINY_TRAIN,
        device="cpu",
        pretrained=tiny_weights,
        logger=MlflowLogger(),
    )
    run = next(
        r
        for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
        if r.data.tags.get("csfnet.stage") == "train"
    )
    model_tensors = len(YOLO(str(result.best)).model.state_dict())
    assert run.data.metrics["pretrained_tensors_loaded"] >= model_tensors * 0.9  # same architecture: (almost) all


@pytest.mark.slow  # trains
def test_yolov8n_baseline_trains_without_downloading(tiny_data, tmp_path):
    result = train(tiny_data, model="yolov8n", out=tmp_path / "base", overrides=TINY_TRAIN, device="cpu")
    assert YOLO(str(result.best)).model.yaml["backbone"][0][2] == "Conv"
