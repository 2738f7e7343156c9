"""The GPU check (benchmarks/gpu.py) end to end in its CPU mode, so the command a GPU session runs cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import REPO

GPU_CHECK = REPO / "benchmarks" / "gpu.py"


@pytest.mark.slow  # trains and exports three tiny models
def test_cpu_mode_measures_every_section_and_says_what_it_skipped(tmp_path):
    out = tmp_path / "report" / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--cpu", "--out", str(out)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    meta, sections = report["meta"], report["sections"]
    assert meta["mode"] == "cpu" and meta["tiny"] and meta["plan"]["imgsz"] == 64
    assert list(sections) == ["env", "throughput", "train", "onnx", "detect", "ddp"]
    assert {n: s["status"] for n, s in sections.items() if n != "ddp"} == dict.fromkeys(list(sections)[:-1], "ok")
    assert sections["env"]["torch"] and "CPUExecutionProvider" in sections["env"]["ort_providers"]

    rows = sections["throughput"]["rows"]  # the current-generation baseline is built from ultralytics' own YAML
    assert [r["model"] for r in rows] == ["csfnet-n", "yolov8n", "yolo26n"]
    assert all(r["images_per_s"] > 0 and (r["imgsz"], r["batch"], r["amp"]) == (64, 2, False) for r in rows)

    (run,) = sections["train"]["rows"]  # interrupted after epoch 1, resumed from the exact state, finished
    assert run["state_saved"] and run["resumed"] and run["epochs"] == 2 and run["state_removed"]
    assert run["ema_updates"] > 0 and run["device"] == "cpu" and run["amp"] is False

    runtimes = [r["runtime"] for r in sections["onnx"]["rows"]]
    assert runtimes == ["PyTorch FP32", "onnxruntime FP32 (CPU)"] and sections["onnx"]["trained_weights"]
    assert all(r["ms"] > 0 for r in sections["onnx"]["rows"])

    full, sliced = sections["detect"]["rows"]
    assert (full["mode"], sliced["mode"]) == ("full frame", "sliced")
    assert full["frames"] == sliced["frames"] == 2 and sliced["crops_per_frame"] > full["crops_per_frame"] == 1

    assert sections["ddp"] == {"status": "skipped", "reason": "0 CUDA device(s): DDP needs 2"}
    assert "[ddp] skipped: 0 CUDA device(s): DDP needs 2" in proc.stdout
    assert "no CUDA" not in proc.stdout  # --cpu was given: the reason says so
    assert "CPU mode (--cpu given)" in proc.stdout

    table = out.with_suffix(".md").read_text()
    assert "## throughput (ok" in table and "| yolo26n |" in table
    assert "| ddp | skipped | 0 CUDA device(s): DDP needs 2 |" in table


def _runner():
    sys.path.insert(0, str(GPU_CHECK.parent))
    try:
        import gpu
    finally:
        sys.path.remove(str(GPU_CHECK.parent))
    return gpu


def test_a_section_past_its_time_box_is_killed_and_reported(tmp_path):
    gpu = _runner()
    entry = gpu.run_section("env", {**gpu.CPU, **gpu.TINY}, tmp_path, timeout=0.5)
    assert entry["status"] == "timeout" and "time box of 0.5 s ended" in entry["reason"]
    assert entry["seconds"] < 30  # killed, not waited for


def test_a_failing_section_is_reported_with_its_error(tmp_path):
    entry = _runner().run_section("throughput", {"batch": 2}, tmp_path, timeout=300)  # a plan without a device
    assert entry["status"] == "error" and "KeyError" in entry["reason"] and entry["rows"] == []
    assert "KeyError" in entry["log_tail"][-1]  # the log's end, for a GPU session to see why
