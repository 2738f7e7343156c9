"""ONNX export verified through the serving runtime, INT8, the registry's champion/challenger, serving over HTTP."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mlflow import MlflowClient

from csfnet.data.dataset import split_images
from csfnet.detect.onnx_detector import COLUMNS, OnnxDetector
from csfnet.export import compare_int8, export, verify
from csfnet.mlflow_tracking import configure
from csfnet.registry import CHALLENGER, CHAMPION, encode_image, log_detector, register

from .conftest import free_port, tool
from .services import wait_http

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tiny_weights, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    # conf 0.001: the one-epoch model's detections are all low-confidence, and there must be boxes to compare
    result = export(tiny_weights, out, tiny_data, imgsz=64, int8=True, conf=0.001, batch=4)
    return result


def test_export_is_verified_and_carries_metadata(exported, tiny_data):
    checks = exported.report["verification"]["checks"]
    assert exported.report["passed"] and all(c["passed"] for c in checks.values())
    assert exported.report["verification"]["runtime"] == "onnxruntime"  # loaded as csfnet detect and serving load it
    assert checks["raw_outputs"]["max_abs_diff"] <= 1e-3
    assert checks["detections"]["pytorch"] == checks["detections"]["onnx"] > 0  # compared real boxes
    assert abs(checks["map50_95"]["pytorch"] - checks["map50_95"]["onnx"]) <= 0.005

    model = onnx.load(str(exported.fp32))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["names"] == "{0: 'uav'}" and meta["imgsz"] == "[64, 64]" and meta["stride"] == "32"
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 64, 64]
    session = ort.InferenceSession(str(exported.fp32), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": np.zeros((3, 3, 64, 64), np.float32)})[0].shape[0] == 3  # dynamic batch
    assert json.loads(exported.fp32.with_name("model-report.json").read_text())["passed"]


def test_int8_model_is_quantised_and_reported(exported):
    int8 = onnx.load(str(exported.int8))
    assert sum(n.op_type == "QuantizeLinear" for n in int8.graph.node) > 10
    assert exported.int8.stat().st_size < exported.fp32.stat().st_size / 2
    report = exported.report["int8"]
    assert 0 <= report["map50"] <= 1 and report["speedup_cpu"] > 0
    assert set(report["latency_ms_batch1"]) == set(report["latency_ms_batch8"]) == {"fp32", "int8"}


def test_int8_comparison_fails_a_model_that_loses_map50(exported, tiny_data):
    """The one INT8 rule (ONNX and OpenVINO): at most 3 mAP50 points below FP32; here FP32 is taken to score 0.5."""
    report = compare_int8(exported.fp32, exported.int8, tiny_data, 64, fp32_map50=0.5, batch=4)
    assert report["runtime"] == "onnxruntime-int8" and not report["passed"]
    assert report["map50_change_points"] == pytest.approx(100 * (report["map50"] - 0.5))


def test_dynamic_size_export(tiny_weights, tiny_data, tmp_path):
    result = export(
        tiny_weights,
        tmp_path / "dyn.onnx",
        tiny_data,
        imgsz=64,
        dynamic_size=True,
        verify_frames=2,
        int8=False,
    )
    session = ort.InferenceSession(str(result.fp32), providers=["CPUExecutionProvider"])
    assert session.run(None, {"images": np.zeros((2, 3, 96, 64), np.float32)})[0].shape == (
        2,
        5,
        12 * 8 + 6 * 4 + 3 * 2,
    )


def test_verification_catches_a_different_model(exported, tiny_weights, tiny_data, tmp_path):
    ckpt = torch.load(tiny_weights, map_location="cpu", weights_only=False)
    head = ckpt["model"].model[-1]
    head.cv3[0][-1].bias.data += 5.0  # a different network than the one exported: other P3 class scores
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    report = verify(exported.fp32, other, tiny_data, imgsz=64, frames=4, conf=0.001)
    assert not report["passed"] and not report["checks"]["raw_outputs"]["passed"]


def test_failed_export_leaves_nothing(tiny_weights, tiny_data, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(tiny_weights.read_bytes()[:5000])  # cut off mid-write
    out = tmp_path / "models" / "model.onnx"
    with pytest.raises(Exception):  # noqa: B017  (torch/ultralytics decide the exact type)
        export(broken, out, tiny_data, imgsz=64, int8=False)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_cli_refuses_a_failed_verification(exported, tmp_path):
    report = {**exported.report, "passed": False}
    (tmp_path / "report.json").write_text(json.dumps(report))
    proc = subprocess.run(
        [tool("csfnet"), "register", "--onnx", str(exported.fp32), "--report", str(tmp_path / "report.json")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "did not pass verification" in proc.stderr


def test_detector_matches_ultralytics_predict(exported, tiny_data):
    import cv2
    from ultralytics import YOLO

    images = [str(p) for p in split_images(tiny_data, "val")[:3]]
    ours = OnnxDetector(exported.fp32)([cv2.imread(p) for p in images], conf=0.001, iou=0.6)
    theirs = YOLO(str(exported.fp32), task="detect").predict(images, imgsz=64, conf=0.001, iou=0.6, rect=False)
    for a, b in zip(ours, theirs):
        assert np.allclose(a, b.boxes.data.numpy(), atol=1e-3)


def _register(onnx_path: Path, example: Path, name: str, value: float, margin: float = 0.005):
    with mlflow.start_run():
        info = log_detector(onnx_path, example)
        return register(info.model_uri, name, value, margin, tags={"csfnet.git_commit": "test"})


def test_champion_changes_only_for_a_better_model(exported, tiny_data):
    configure()
    example = split_images(tiny_data, "val")[0]
    first = _register(exported.fp32, example, "uav", 0.30)
    assert first.candidate and first.champion == first.version
    close = _register(exported.fp32, example, "uav", 0.302)  # better, but not by the margin
    assert not close.candidate and close.champion == first.version and "does not beat" in close.reason
    better = _register(exported.fp32, example, "uav", 0.40)
    client = MlflowClient()
    assert client.get_model_version_by_alias("uav", CHAMPION).version == better.version
    assert client.get_model_version_by_alias("uav", CHALLENGER).version == better.version
    version = client.get_model_version("uav", close.version)
    assert version.tags["csfnet.promotion"] == close.reason and version.tags["csfnet.git_commit"] == "test"


def test_racing_promotions_keep_the_better_champion(exported, tiny_data, tmp_path):
    """Two `csfnet register` processes race against one tracking server; the better model must end as champion."""
    from .services import mlflow_server

    reports = []
    for value in (0.5, 0.6):
        report = json.loads(json.dumps(exported.report))
        report["verification"]["map50_95"] = value
        (tmp_path / f"r{value}.json").write_text(json.dumps(report))
        reports.append(tmp_path / f"r{value}.json")
    with mlflow_server(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "artifacts", free_port()) as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url}
        cmd = [tool("csfnet"), "register", "--onnx", str(exported.fp32)]
        cmd += ["--set", "register.name=race", "--set", "register.margin=0"]
        seed = subprocess.run([*cmd, "--report", str(reports[0])], env=env, capture_output=True, text=True)
        assert seed.returncode == 0, seed.stderr[-2000:]
        report_low = json.loads(reports[0].read_text())
        report_low["verification"]["map50_95"] = 0.55
        reports[0].write_text(json.dumps(report_low))
        procs = [
            subprocess.Popen([*cmd, "--report", str(r)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for r in reports
        ]
        assert [p.wait(timeout=300) for p in procs] == [0, 0]
        mlflow.set_tracking_uri(url)
        champion = MlflowClient().get_model_version_by_alias("race", CHAMPION)
        assert float(champion.tags["csfnet.map50_95"]) == 0.6


def test_served_champion_answers_http(exported, tiny_data, tmp_path):
    configure()
    example = split_images(tiny_data, "val")[0]
    _register(exported.fp32, example, "served", 0.3)
    port = free_port()
    # mlflow serves through uvicorn, found on PATH: this environment's scripts first
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), "PATH": path}
    cmd = [tool("mlflow"), "models", "serve", "-m", "models:/served@champion", "--env-manager", "local"]
    server = subprocess.Popen(
        [*cmd, "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=120)
        body = {"dataframe_split": {"columns": ["image"], "data": [[encode_image(example)]]}, "params": {"conf": 0.001}}
        rows = _post(port, body)["predictions"]
        assert rows and set(rows[0]) == set(COLUMNS) and rows[0]["class_name"] == "uav"
        import cv2

        expected = OnnxDetector(exported.fp32)([cv2.imread(str(example))], conf=0.001)[0]
        assert len(rows) == len(expected)
        assert np.allclose([[r["x1"], r["y1"], r["x2"], r["y2"], r["score"]] for r in rows], expected[:, :5], atol=1e-3)
        bad = {"dataframe_split": {"columns": ["image"], "data": [[base64.b64encode(b"not an image").decode()]]}}
        with pytest.raises(urllib.error.HTTPError) as err:
            _post(port, bad)
        assert err.value.code == 400 and "does not decode" in err.value.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _post(port: int, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())
