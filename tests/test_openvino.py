"""OpenVINO FP32 and NNCF INT8 export, verified against PyTorch before it is written, and run by csfnet detect."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from csfnet.data.dataset import split_images
from csfnet.detect import Predictor, SliceOptions, detect, load_runtime
from csfnet.errors import CheckpointError
from csfnet.export import export_openvino, verify

pytestmark = pytest.mark.slow

CONF = 0.001  # the one-epoch model's scores are all low


@pytest.fixture(scope="module")
def exported(tiny_weights, tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("openvino") / "model_openvino_model"
    return export_openvino(
        tiny_weights, out, tiny_data, imgsz=64, int8=True, calib_frames=8, verify_frames=4, batch=4, conf=CONF
    )


def test_export_is_verified_and_int8_is_quantised(exported):
    checks = exported.report["verification"]["checks"]
    assert exported.report["passed"] and all(c["passed"] for c in checks.values())
    assert exported.report["verification"]["runtime"] == "openvino"  # loaded as csfnet detect loads it
    assert checks["raw_outputs"]["max_abs_diff"] <= 1e-3
    assert checks["detections"]["pytorch"] == checks["detections"]["openvino"] > 0  # compared real boxes
    for folder in (exported.fp32, exported.int8):
        assert {p.name for p in folder.iterdir()} == {"model.xml", "model.bin", "metadata.yaml"}
    assert exported.int8.name == "model_int8_openvino_model"
    assert (exported.int8 / "model.xml").read_text().count('type="FakeQuantize"') > 10
    assert (exported.int8 / "model.bin").stat().st_size < (exported.fp32 / "model.bin").stat().st_size / 2
    int8 = exported.report["int8"]
    assert int8["passed"] and int8["speedup_cpu"] > 0 and set(int8["latency_ms_batch8"]) == {"fp32", "int8"}


@pytest.mark.parametrize("slice_size", [None, 48])
def test_openvino_runtimes_agree_with_pytorch(exported, tiny_weights, tiny_data, slice_size):
    images = [cv2.imread(str(p)) for p in split_images(tiny_data, "val")[:4]]
    slicing = SliceOptions(slice_size, merge_threshold=1.01)  # every crop's boxes compared, no tie-breaking merge
    reference = Predictor(load_runtime(tiny_weights), CONF, slicing=slicing)(images)
    for folder, kind in ((exported.fp32, "openvino"), (exported.int8, "openvino-int8")):
        runtime = load_runtime(folder)
        assert runtime.kind == kind and runtime.batch is None and runtime.imgsz == 64
        got = Predictor(runtime, CONF, slicing=slicing)(images)
        for a, b in zip(reference, got):
            strong = a[a[:, 4] >= 5 * CONF]
            assert not len(strong) or (np.abs(strong[:, None, :4] - b[None, :, :4]).max(-1).min(1) <= 1.0).all()


def test_detect_runs_the_openvino_folder(exported, tiny_raw, tmp_path):
    video = next((tiny_raw / "val").rglob("*.mp4"))
    result = detect(exported.int8, video, tmp_path / "out", conf=CONF, slice_size=48, progress=False)
    assert result.runtime == "openvino-int8" and result.frames == 8 and result.crops_per_frame == 7


def test_verification_catches_a_different_model(exported, tiny_weights, tiny_data, tmp_path):
    ckpt = torch.load(tiny_weights, map_location="cpu", weights_only=False)
    ckpt["model"].model[-1].cv3[0][-1].bias.data += 5.0  # other P3 class scores than the exported network
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    report = verify(exported.fp32, other, tiny_data, imgsz=64, frames=2, conf=CONF)
    assert not report["passed"] and not report["checks"]["raw_outputs"]["passed"]


def test_corrupt_weights_fail_before_export_and_leave_nothing(tiny_weights, tiny_data, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(tiny_weights.read_bytes()[:5000])
    out = tmp_path / "models" / "model_openvino_model"
    with pytest.raises(CheckpointError):
        export_openvino(broken, out, tiny_data, imgsz=64)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
