"""The current detector generation through every stage: YOLO26's NMS-free (end-to-end) head and a P2 head, on the
tiny data. A model with an NMS-free head is trained by ultralytics' own end-to-end loss, then validated, exported,
served and run through its one-to-one branch (``eval.end_to_end``), and every runtime reads that output layout."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import mlflow
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from csfnet.data.dataset import split_images
from csfnet.detect.predict import Predictor
from csfnet.detect.runtimes import TorchRuntime, load_runtime
from csfnet.heads import has_end_to_end_head, head_args
from csfnet.model import build_model

from .conftest import TINY_TRAIN

CONFIGS = ("yolo26n-p2", "csfnet26-n")
CONF = 0.001  # one-epoch models score low: there must be boxes to compare


def _checkpoint(name: str, path: Path) -> Path:
    """An untrained checkpoint of ``name`` as ultralytics saves one (enough for shapes, not for detections)."""
    model = build_model(name, nc=1)
    model.names, model.args = {0: "uav"}, {"imgsz": 64, "task": "detect"}
    torch.save({"model": model.half(), "train_args": {"imgsz": 64, "task": "detect"}, "epoch": -1}, path)
    return path


def _declared(model: onnx.ModelProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]


@pytest.mark.slow
@pytest.mark.parametrize("imgsz", [64, 96])
@pytest.mark.parametrize("end_to_end", [True, False])
def test_declared_onnx_output_shapes_are_the_real_ones(tmp_path, imgsz, end_to_end):
    """A P2 head has four levels and an NMS-free head returns (batch, max_det, 6): the declared output shape must be
    what onnxruntime and PyTorch return (the reported bug: (batch, 5, 2100) declared, (1, 5, 8500) returned)."""
    from csfnet.export import onnx_export

    weights = _checkpoint("yolo26n-p2", tmp_path / "model.pt")
    path = onnx_export(weights, imgsz, end_to_end=end_to_end)
    model = onnx.load(str(path))
    x = np.random.default_rng(0).random((2, 3, imgsz, imgsz), dtype=np.float32)
    onnx_out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    torch_out = TorchRuntime(weights, imgsz, end_to_end=end_to_end)(x)
    assert onnx_out.shape == torch_out.shape
    assert _declared(model) == ["batch", *onnx_out.shape[1:]]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["end2end"] == str(end_to_end)
    assert onnx_out.shape[1:] == ((300, 6) if end_to_end else (5, sum((imgsz // s) ** 2 for s in (4, 8, 16, 32))))
    runtime = load_runtime(path, providers=["CPUExecutionProvider"])
    assert runtime.end2end is end_to_end and runtime(x).shape == onnx_out.shape


def test_head_args_choose_the_one_to_one_branch_only_for_nms_free_heads():
    assert head_args("yolo26n-p2.yaml", True) == {"nms": False} and head_args("yolo26n-p2.yaml", False) == {}
    assert head_args("yolov8n.yaml", True) == {} and head_args(build_model("csfnet-n"), True) == {}
    assert has_end_to_end_head(build_model("csfnet26-n")) and has_end_to_end_head("yolo26n.yaml")


@pytest.fixture(scope="module", params=CONFIGS)
def trained(request, tiny_data, tmp_path_factory):
    """(config, best.pt, train result) of one epoch at imgsz 64 through csfnet's trainer."""
    from csfnet.train import train

    run = tmp_path_factory.mktemp(request.param) / "train"
    old = Path.cwd()
    os.chdir(run.parent)
    try:
        result = train(tiny_data, model=request.param, out=run, preset="quick", overrides=TINY_TRAIN, device="cpu")
    finally:
        os.chdir(old)
    return request.param, result.best, result


@pytest.mark.slow
def test_every_stage_runs(trained, tiny_data, tiny_raw, tmp_path):
    """Train (ultralytics' E2E loss), eval with slicing and a tracker, export ONNX + OpenVINO + INT8 verified,
    detect with a tracker, and the pyfunc, for each current detector."""
    from csfnet.detect import detect
    from csfnet.evaluate import evaluate
    from csfnet.export import export, export_openvino

    _, best, _ = trained
    ckpt = torch.load(best, map_location="cpu", weights_only=False)
    assert has_end_to_end_head(ckpt["model"]) and ckpt["train_args"]["nms"] is False  # validated one-to-one
    assert type(ckpt["model"].init_criterion()).__name__ == "E2ELoss"  # the loss that trained it is ultralytics'

    metrics = evaluate(best, tiny_data, tmp_path / "eval", imgsz=64, device="cpu", slice_size=48, tracker="bytetrack",
                       raw=tiny_raw, samples=1)  # fmt: skip
    assert 0 <= metrics["map50"] <= 1 and (tmp_path / "eval" / "slicing.json").is_file()
    assert (tmp_path / "eval" / "tracking.json").is_file()

    onnx_result = export(best, tmp_path / "model.onnx", tiny_data, imgsz=64, int8=True, conf=CONF, batch=4,
                         calib_frames=8, verify_frames=4)  # fmt: skip
    assert onnx_result.report["passed"] and onnx_result.int8.is_file()
    int8 = onnx.load(str(onnx_result.int8)).graph
    head = max({n.name.split("/")[1] for n in int8.node if n.name.startswith("/model.")}, key=_index)
    quantised = [n.name for n in int8.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert quantised and not [q for q in quantised if q.startswith(f"/{head}/")]  # the head stays FP32 ...
    assert {"TopK", "GatherElements"} <= {n.op_type for n in int8.node if n.name.startswith(f"/{head}/")}  # ... all
    vino = export_openvino(best, tmp_path / "model_openvino_model", tiny_data, imgsz=64, int8=True, calib_frames=8,
                           verify_frames=4, batch=4, conf=CONF)  # fmt: skip
    assert vino.report["passed"]
    for model in (onnx_result.fp32, onnx_result.int8, vino.fp32, vino.int8):
        assert load_runtime(model, providers=["CPUExecutionProvider"]).end2end

    video = next((tiny_raw / "val").rglob("*.mp4"))
    tracked = detect(onnx_result.fp32, video, tmp_path / "detect", conf=CONF, tracker="bytetrack", progress=False)
    assert tracked.frames > 0

    image = split_images(tiny_data, "val")[0]
    served = _pyfunc(onnx_result.fp32, image)
    own = Predictor(load_runtime(onnx_result.fp32), CONF)([cv2.imread(str(image))])[0]
    assert len(served) == len(own) and np.allclose(served[["x1", "y1", "x2", "y2"]].to_numpy(), own[:, :4], atol=0.01)


def _index(module: str) -> int:
    return int(module.split(".")[1])


def _pyfunc(model: Path, image: Path) -> pd.DataFrame:
    """What the registered pyfunc (logged as `csfnet register` logs it) answers for ``image``."""
    from csfnet.registry import encode_image, log_detector

    with mlflow.start_run():
        info = log_detector(model, image)
    frame = pd.DataFrame({"image": [encode_image(image)]})
    return mlflow.pyfunc.load_model(info.model_uri).predict(frame, params={"conf": CONF})


PARITY_CONF = 0.1  # the NMS-free micro detector scores its targets 0.1-0.5 after 20 epochs


@pytest.fixture(scope="module")
def e2e_detector(micro_tiles, tmp_path_factory) -> tuple[Path, Path]:
    """(best.pt, data.yaml) of tests/detector_fixture's micro-target detector with YOLO26's NMS-free head (reg_max 1,
    end2end), trained by ultralytics' E2E loss until it detects (20 epochs, native-scale 64 px tiles)."""
    from .detector_fixture import MODEL, train_micro_detector

    root = tmp_path_factory.mktemp("e2e-detector")
    return train_micro_detector(root, micro_tiles, {**MODEL, "reg_max": 1, "end2end": True}), micro_tiles


@pytest.mark.slow
def test_pytorch_onnx_and_openvino_agree_on_real_detections(e2e_detector, tmp_path):
    """The exports of a model that detects something: non-empty detections, the same in all three runtimes."""
    from csfnet.export import export_onnx, export_openvino

    weights, data = e2e_detector
    common = {"imgsz": 64, "verify_frames": 8, "batch": 8, "conf": PARITY_CONF, "iou": 0.6, "int8": False}
    onnx_result = export_onnx(weights, tmp_path / "model.onnx", data, opset=17, dynamic_size=False, calib_frames=8,
                              **common)  # fmt: skip
    vino = export_openvino(weights, tmp_path / "model_openvino_model", data, **common)
    for result, key in ((onnx_result, "onnx"), (vino, "openvino")):
        detections = result.report["verification"]["checks"]["detections"]
        assert result.report["passed"] and result.report["verification"]["end2end"]
        assert detections["pytorch"] == detections[key] > 0 and detections["max_box_diff_px"] <= 1.0

    images = [cv2.imread(str(p)) for p in split_images(data, "val")[:8]]
    found = [
        Predictor(runtime, PARITY_CONF)(images)
        for runtime in (TorchRuntime(weights, 64), load_runtime(onnx_result.fp32), load_runtime(vino.fp32))
    ]
    assert sum(len(d) for d in found[0]) > 0
    for other in found[1:]:
        for a, b in zip(found[0], other):
            assert len(a) == len(b) and np.allclose(a, b, atol=0.01)  # boxes, scores and classes


def test_pt_detect_honours_end_to_end_false(tmp_path):
    """Issue 23: `csfnet detect` on a `.pt` with an NMS-free head and `eval.end_to_end: false` runs its one-to-many
    branch through NMS (as evaluation and the exports do), and with the default its one-to-one branch, no NMS."""
    from csfnet.cli import main

    weights = _checkpoint("csfnet26-n", tmp_path / "model.pt")
    frame = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), frame)
    one_to_many = load_runtime(weights, end_to_end=False)
    anchors = sum((64 // s) ** 2 for s in (8, 16, 32))
    assert not one_to_many.end2end and one_to_many(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 5, anchors)
    assert load_runtime(weights).end2end

    conf, iou = 0.0001, 0.6  # an untrained model scores every anchor low: many overlapping candidates
    predictor = Predictor(one_to_many, conf, iou)
    kept = predictor([frame])[0]
    raw = one_to_many(predictor.preprocess([frame]))
    candidates = int((raw[0, 4:].max(0) > conf).sum())
    assert 0 < len(kept) < candidates  # NMS dropped overlapping candidates of the one-to-many head

    args = ["detect", "--model", str(weights), "--source", str(tmp_path / "frame.png"), "--set", f"detect.conf={conf}"]
    args += ["--set", f"detect.iou={iou}", "--set", "detect.slice=0", "--set", "detect.save_video=false"]
    found = {}
    for end_to_end in ("true", "false"):
        out = tmp_path / end_to_end
        assert main([*args, "--set", f"eval.end_to_end={end_to_end}", "--out", str(out)]) == 0
        found[end_to_end] = json.loads((out / "summary.json").read_text())["detections"]
    assert found["false"] == len(kept) and found["true"] > len(kept)  # the one-to-one head's top-k, not NMS'd
