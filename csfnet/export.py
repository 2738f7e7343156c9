"""ONNX export through ultralytics' exporter, verified against PyTorch with onnxruntime, and optional INT8.

The FP32 model has a dynamic batch (and, on request, a dynamic image size), is simplified with onnxslim and carries
ultralytics' metadata (class names, imgsz, stride). INT8 is onnxruntime static quantisation (QDQ, per-channel weights,
MinMax calibration on training frames) of the backbones and the neck; the Detect head stays FP32: quantising its
decoding rounds scores to zero (one scale for pixels and probabilities), and quantising its convolutions cost the
quick model 4.8 mAP50 points against 0 with the head in FP32. (ultralytics' own INT8 export quantises convolutions
only; the float activations between them keep onnxruntime from fusing QLinearConv, and it ran 2x slower than FP32.)
Files are written to a staging folder and moved into place only when verification passes, so a failed export
leaves nothing behind.
"""

from __future__ import annotations

import ast
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import onnx
from onnx.tools.update_model_dims import update_inputs_outputs_dims
from tqdm import tqdm

from csfnet.checks import check_checkpoint, check_dataset
from csfnet.data.dataset import split_images
from csfnet.detect.onnx_detector import preprocess, session
from csfnet.errors import VerificationError
from csfnet.files import staging_dir, write_json
from csfnet.mlflow_tracking import log_flat_metrics, stage_run_if
from csfnet.settings import Settings, load_settings

RAW_TOL = 1e-3  # absolute, on the raw head output
BOX_TOL_PX = 1.0
MAP_TOL = 0.005
CPU = ["CPUExecutionProvider"]


@dataclass
class ExportResult:
    """Paths and the verification report of one export."""

    onnx: Path
    int8: Path | None
    report: dict[str, Any]


EVAL_KEYS = {"batch": "eval.batch", "conf": "eval.report_conf", "iou": "eval.iou"}  # export's view of eval


def export(
    weights: str | Path,
    out: str | Path,
    data: str | Path,
    imgsz: int | None = None,
    calib_data: str | Path | None = None,
    int8_out: str | Path | None = None,
    report_path: str | Path | None = None,
    track: bool = True,
    settings: Settings | None = None,
    **overrides: Any,
) -> ExportResult:
    """The ``export`` stage: :func:`export_verified` with settings from ``params.yaml``, as an MLflow run.

    ``overrides`` are ``export`` settings (``opset``, ``dynamic_size``, ``int8``, ``calib_frames``,
    ``verify_frames``) and ``batch``, ``conf``, ``iou`` (``eval.batch``, ``eval.report_conf``, ``eval.iou``).
    """
    keys = {k: EVAL_KEYS.get(k, f"export.{k}") for k in overrides}
    settings = (settings or load_settings()).override({keys[k]: v for k, v in overrides.items()}, "options")
    x, e = settings.export, settings.eval
    weights, data = check_checkpoint(weights), Path(data)
    check_dataset(data)
    kwargs = {**x.model_dump(), "imgsz": imgsz or settings.imgsz, "batch": e.batch, "conf": e.report_conf, "iou": e.iou}
    with stage_run_if(track, "export", kwargs, data, weights):
        result = export_verified(
            weights, out, data, calib_data=calib_data, int8_out=int8_out, report_path=report_path, **kwargs
        )
        if track:
            report = result.report
            log_flat_metrics({"verification": report["verification"]["checks"], "int8": report.get("int8", {})})
            mlflow.log_dict(report, "export/report.json")
    return result


def export_verified(
    weights: str | Path,
    out: str | Path,
    data: str | Path,
    imgsz: int,
    opset: int,
    dynamic_size: bool,
    int8: bool,
    calib_frames: int,
    verify_frames: int,
    batch: int,
    conf: float,
    iou: float,
    calib_data: str | Path | None = None,
    int8_out: str | Path | None = None,
    report_path: str | Path | None = None,
) -> ExportResult:
    """Export ``weights`` to ONNX at ``out``, verify it on ``data``'s validation split, optionally add INT8.

    Args:
        weights: Trained ``.pt``.
        out: Destination of the FP32 ONNX model.
        data: ``data.yaml`` whose validation frames verify the export.
        imgsz: Export image size.
        opset: ONNX opset.
        dynamic_size: Also leave height and width dynamic (the batch is always dynamic).
        int8: Also write a statically quantised INT8 model.
        calib_data: ``data.yaml`` whose *training* frames calibrate INT8 (default: ``data``).
        calib_frames: Training frames (evenly spaced) that calibrate INT8.
        int8_out: Destination of the INT8 model (default: ``<out stem>-int8.onnx``).
        report_path: JSON report (default: next to ``out``).
        verify_frames: Validation frames compared output by output.
        batch: Batch size of the mAP comparison.
        conf: Confidence threshold of the detection comparison.
        iou: NMS IoU threshold.

    Raises:
        VerificationError: A check failed; the report is written, the models are not.
    """
    weights, out, data = Path(weights), Path(out), Path(data)
    for path, what in ((weights, "weights"), (data, "dataset file")):
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path} not found")
    int8_out = Path(int8_out) if int8_out else out.with_name(f"{out.stem}-int8.onnx")
    report_path = Path(report_path) if report_path else out.with_name(f"{out.stem}-report.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out) as tmp:
        staged = Path(tmp) / "model.pt"
        shutil.copy2(weights, staged)  # ultralytics writes next to the weights: keep the training folder untouched
        fp32 = onnx_export(staged, imgsz, opset, dynamic_size)
        report: dict[str, Any] = {
            "weights": str(weights),
            "data": str(data),
            "imgsz": imgsz,
            "opset": opset,
            "dynamic_size": dynamic_size,
            "fp32": {"file": str(out), "size_mb": _mb(fp32)},
        }
        report["verification"] = verify(fp32, weights, data, imgsz, verify_frames, batch, conf, iou)
        if int8:
            q = quantize_int8(fp32, Path(tmp) / "model-int8.onnx", Path(calib_data or data), imgsz, calib_frames)
            fp32_map50 = report["verification"]["map50"]
            comparison = compare_int8(fp32, q, data, imgsz, fp32_map50, batch, iou)
            report["int8"] = {"file": str(int8_out), "size_mb": _mb(q), **comparison}
        report["passed"] = report["verification"]["passed"]
        write_json(report_path, report)
        if not report["passed"]:
            failed = [k for k, v in report["verification"]["checks"].items() if not v["passed"]]
            raise VerificationError(f"ONNX export does not match PyTorch ({', '.join(failed)}); see {report_path}")
        shutil.move(fp32, out)
        if int8:
            shutil.move(q, int8_out)
    return ExportResult(out, int8_out if int8 else None, report)


def onnx_export(weights: Path, imgsz: int, opset: int = 17, dynamic_size: bool = False) -> Path:
    """ONNX next to ``weights`` through ultralytics' exporter: dynamic batch, image size pinned unless
    ``dynamic_size``. Unverified: :func:`export` is the safe entry point."""
    from ultralytics import YOLO

    args = {"format": "onnx", "imgsz": imgsz, "opset": opset, "dynamic": True, "simplify": True, "device": "cpu"}
    path = Path(YOLO(str(weights)).export(**args))
    model = onnx.load(str(path))
    if not dynamic_size:
        model = _fix_image_size(model, imgsz)
    meta = model.metadata_props.add()
    meta.key, meta.value = "dynamic_size", str(dynamic_size)
    onnx.checker.check_model(model)
    target = path.with_name(f"{path.stem}-final.onnx")
    onnx.save(model, str(target))
    path.unlink()
    return target


def quantize_int8(fp32: Path, out: Path, calib_data: Path, imgsz: int, frames: int = 100) -> Path:
    """Static INT8 quantisation with onnxruntime, calibrated on ``frames`` evenly spaced training frames."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = [str(p) for p in split_images(calib_data, "train")]
    if not images:
        raise FileNotFoundError(f"{calib_data}: no training frames to calibrate INT8 with")
    images = images[:: max(1, len(images) // frames)][:frames]

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(tqdm(images, desc="INT8 calibration", unit="frame"))

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self.batches, None)
            return None if path is None else {"images": preprocess([cv2.imread(path)], imgsz)}

    prepared = out.with_name(f"{out.stem}-prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared)).graph
    head = _head_prefix(graph)
    detect = [n.name for n in graph.node if n.name.startswith(head)]
    quantize_static(
        str(prepared),
        str(out),
        Frames(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=detect,
    )
    prepared.unlink()
    model = onnx.load(str(out))  # keep the FP32 model's metadata (names, imgsz, stride) for ultralytics and serving
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(str(fp32)).metadata_props)
    onnx.save(model, str(out))
    return out


def _head_prefix(graph: onnx.GraphProto) -> str:
    """Node-name prefix of the last module (the Detect head), e.g. ``/model.37/``."""
    indices = [int(m.group(1)) for n in graph.node if (m := re.match(r"/model\.(\d+)/", n.name))]
    if not indices:
        raise ValueError("cannot find the detection head in the ONNX graph (no /model.N/ node names)")
    return f"/model.{max(indices)}/"


def _fix_image_size(model: onnx.ModelProto, imgsz: int) -> onnx.ModelProto:
    """Keep the batch dynamic but pin height, width and the anchor count."""
    meta = {p.key: p.value for p in model.metadata_props}
    strides = (8, 16, 32) if int(meta.get("stride", 32)) == 32 else (int(meta["stride"]),)
    anchors = sum((imgsz // s) ** 2 for s in strides)
    out = model.graph.output[0]
    channels = 4 + len(ast.literal_eval(meta.get("names", "{0: 'object'}")))  # boxes + class scores
    return update_inputs_outputs_dims(
        model, {"images": ["batch", 3, imgsz, imgsz]}, {out.name: ["batch", channels, anchors]}
    )


def verify(
    onnx_path: str | Path,
    weights: str | Path,
    data: str | Path,
    imgsz: int,
    frames: int = 8,
    batch: int = 8,
    conf: float = 0.25,
    iou: float = 0.6,
) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch: raw head outputs, detections after NMS, and validation mAP50-95."""
    from ultralytics import YOLO

    from csfnet.evaluate import validate  # imports ultralytics: kept out of `import csfnet.export` (the CLI's)

    images = [str(p) for p in split_images(data, "val")[:frames]]
    if not images:
        raise FileNotFoundError(f"{data}: the validation split has no images to verify with")
    x = preprocess([cv2.imread(p) for p in images], imgsz)
    torch_raw = _torch_raw(weights, x)
    onnx_raw = session(onnx_path, CPU).run(None, {"images": x})[0]
    raw_diff = float(np.abs(onnx_raw - torch_raw).max()) if onnx_raw.shape == torch_raw.shape else float("inf")

    settings = {"imgsz": imgsz, "conf": conf, "iou": iou, "rect": False, "verbose": False, "device": "cpu"}
    pt_dets = [r.boxes.data.numpy() for r in YOLO(str(weights)).predict(images, **settings)]
    onnx_dets = [r.boxes.data.numpy() for r in YOLO(str(onnx_path), task="detect").predict(images, **settings)]
    pt_val, onnx_val = (validate(w, data, imgsz, batch, iou=iou, plots=False, rect=False) for w in (weights, onnx_path))
    return verification_report("onnx", raw_diff, pt_dets, onnx_dets, pt_val, onnx_val)


def verification_report(
    runtime: str,
    raw_diff: float,
    pt_dets: list[np.ndarray],
    dets: list[np.ndarray],
    pt_val: dict[str, Any],
    val: dict[str, Any],
) -> dict[str, Any]:
    """The three checks an exported model must pass against PyTorch (raw outputs, detections, mAP50-95), for the
    ONNX and the OpenVINO exports alike; ``runtime`` names the exported model's entries."""
    counts_equal = all(len(a) == len(b) for a, b in zip(pt_dets, dets))
    box_diff = max((_box_distance(a, b) for a, b in zip(pt_dets, dets) if len(a) == len(b)), default=0.0)
    pt_map, exported_map = pt_val["map50_95"], val["map50_95"]
    checks = {
        "raw_outputs": {"max_abs_diff": raw_diff, "tolerance": RAW_TOL, "passed": raw_diff <= RAW_TOL},
        "detections": {
            "frames": len(pt_dets),
            "pytorch": sum(len(d) for d in pt_dets),
            runtime: sum(len(d) for d in dets),
            "max_box_diff_px": box_diff,
            "tolerance_px": BOX_TOL_PX,
            "passed": counts_equal and box_diff <= BOX_TOL_PX,
        },
        "map50_95": {
            "pytorch": pt_map,
            runtime: exported_map,
            "abs_diff": abs(pt_map - exported_map),
            "tolerance": MAP_TOL,
            "passed": abs(pt_map - exported_map) <= MAP_TOL,
        },
    }
    passed = all(c["passed"] for c in checks.values())
    return {"checks": checks, "passed": passed, "map50_95": exported_map, "map50": val["map50"]}


def compare_int8(
    fp32: Path, int8: Path, data: str | Path, imgsz: int, fp32_map50: float, batch: int = 8, iou: float = 0.6
) -> dict[str, Any]:
    """mAP change (against ``fp32_map50``, the FP32 ONNX model's, from :func:`verify`) and onnxruntime CPU speed-up
    of the INT8 model."""
    from csfnet.evaluate import validate

    int8_val = validate(int8, data, imgsz, batch, iou=iou, plots=False, rect=False)
    speed = {
        (name, batch): ort_latency_ms(path, imgsz, batch, repeats=20 if batch == 1 else 5)
        for name, path in (("fp32", fp32), ("int8", int8))
        for batch in (1, 8)
    }
    return {
        "map50": int8_val["map50"],
        "map50_95": int8_val["map50_95"],
        "map50_change_points": 100 * (int8_val["map50"] - fp32_map50),
        "fp32_map50": fp32_map50,
        "latency_ms_batch1": {"fp32": speed["fp32", 1], "int8": speed["int8", 1]},
        "latency_ms_batch8": {"fp32": speed["fp32", 8], "int8": speed["int8", 8]},
        "speedup_cpu": speed["fp32", 1] / speed["int8", 1],
        "speedup_cpu_batch8": speed["fp32", 8] / speed["int8", 8],
    }


def ort_latency_ms(path: str | Path, imgsz: int, batch: int, repeats: int = 20, provider: str = "CPU") -> float:
    """Median onnxruntime latency of one batch on random input."""
    runner = session(path, ["CUDAExecutionProvider", *CPU] if provider == "CUDA" else CPU)
    x = np.random.default_rng(0).random((batch, 3, imgsz, imgsz), dtype=np.float32)
    runner.run(None, {"images": x})  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run(None, {"images": x})
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _torch_raw(weights: str | Path, x: np.ndarray) -> np.ndarray:
    import torch
    from ultralytics import YOLO

    model = YOLO(str(weights)).model.float().eval().fuse(verbose=False)
    with torch.inference_mode():
        y = model(torch.from_numpy(x))
    return (y[0] if isinstance(y, (list, tuple)) else y).numpy()


def _box_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest coordinate difference (px) after matching every box of ``a`` to its nearest box in ``b``."""
    if len(a) == 0:
        return 0.0
    dist = np.abs(a[:, None, :4] - b[None, :, :4]).max(-1)
    return float(dist.min(1).max())


def _mb(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)
