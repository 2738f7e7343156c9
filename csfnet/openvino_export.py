"""OpenVINO export (FP32, and INT8 through NNCF) through ultralytics' exporter, verified before it is written.

OpenVINO is the CPU runtime ultralytics recommends. The FP32 model must reproduce PyTorch as the ONNX export must
(raw head outputs within 1e-3, the same detections after NMS within 1 px, validation mAP50-95 within 0.005). INT8 is
NNCF post-training quantisation (ultralytics' recipe: mixed preset, the Detect head's decoding kept in floating
point) calibrated on evenly spaced *training* frames, as the ONNX INT8 model is; its mAP50 may drop by at most
``int8_map50_tol``. Both are written into a staging folder and moved into place only when every check passes.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from csfnet.data.dataset import split_images
from csfnet.detect.onnx_detector import preprocess
from csfnet.errors import InputNotFoundError, SettingsError, VerificationError
from csfnet.files import write_json

INT8_MAP50_TOL = 0.03
SUFFIX = "_openvino_model"


@dataclass
class OpenVinoExportResult:
    """Folders and the verification report of one export."""

    fp32: Path
    int8: Path | None
    report: dict[str, Any]


def export_openvino(
    weights: str | Path,
    out: str | Path,
    data: str | Path,
    imgsz: int = 640,
    int8: bool = False,
    calib_data: str | Path | None = None,
    calib_frames: int = 100,
    int8_out: str | Path | None = None,
    report_path: str | Path | None = None,
    verify_frames: int = 8,
    batch: int = 8,
    conf: float = 0.25,
    iou: float = 0.6,
    int8_map50_tol: float = INT8_MAP50_TOL,
) -> OpenVinoExportResult:
    """Export ``weights`` to the OpenVINO folder ``out`` (``model.xml``, ``model.bin``, ``metadata.yaml``; its name
    ends in ``_openvino_model``), verify it on ``data``'s validation split, optionally add an INT8 folder (default:
    ``<name>_int8_openvino_model``). Calibration and the report follow ``csfnet.export.export``.

    Raises:
        InputNotFoundError: ``weights`` or ``data`` is missing.
        CheckpointError: ``weights`` is not a readable detection checkpoint.
        VerificationError: A check failed; the report is written, the models are not.
    """
    weights, out, data = Path(weights), Path(out), Path(data)
    for path, what in ((weights, "weights"), (data, "dataset file")):
        if not path.is_file():
            raise InputNotFoundError(f"{what} {path} not found")
    from csfnet.detect.runtimes import TorchRuntime

    TorchRuntime(weights, imgsz)  # CheckpointError for a corrupt file, before ultralytics sees it
    for folder in (out, *([Path(int8_out)] if int8_out else [])):
        if not folder.name.endswith(SUFFIX):
            raise SettingsError(f"OpenVINO folder {folder} must end in {SUFFIX!r} (how ultralytics recognises it)")
    int8_out = Path(int8_out) if int8_out else out.with_name(out.name.replace(SUFFIX, f"_int8{SUFFIX}"))
    report_path = Path(report_path) if report_path else out.with_name(f"{out.name.replace(SUFFIX, '')}-openvino.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        staged = Path(tmp) / "model.pt"
        shutil.copy2(weights, staged)  # ultralytics writes next to the weights
        fp32 = _export(staged, imgsz)
        report: dict[str, Any] = {"weights": str(weights), "data": str(data), "imgsz": imgsz, "fp32": {"dir": str(out)}}
        report["verification"] = verify_openvino(fp32, weights, data, imgsz, verify_frames, batch, conf, iou)
        passed = report["verification"]["passed"]
        failed = [k for k, v in report["verification"]["checks"].items() if not v["passed"]]
        if int8 and passed:
            q = _export(staged, imgsz, int8_data=Path(calib_data or data), frames=calib_frames)
            report["int8"] = compare_int8(fp32, q, data, imgsz, report["verification"]["map50"], batch, iou)
            report["int8"]["dir"] = str(int8_out)
            report["int8"]["passed"] = report["int8"]["map50_change_points"] >= -100 * int8_map50_tol
            if not report["int8"]["passed"]:
                failed.append("int8_map50")
        report["passed"] = not failed
        write_json(report_path, report)
        if failed:
            raise VerificationError(f"OpenVINO export does not match PyTorch ({', '.join(failed)}); see {report_path}")
        _move(fp32, out)
        if int8:
            _move(q, int8_out)
    return OpenVinoExportResult(out, int8_out if int8 else None, report)


def _export(weights: Path, imgsz: int, int8_data: Path | None = None, frames: int = 100) -> Path:
    """ultralytics' OpenVINO exporter (dynamic shapes; the runtime pins the image size and leaves the batch free)."""
    from ultralytics import YOLO

    args: dict[str, Any] = {"format": "openvino", "imgsz": imgsz, "dynamic": True, "device": "cpu"}
    if int8_data is not None:
        train = split_images(int8_data, "train")
        if not train:
            raise InputNotFoundError(f"{int8_data}: no training frames to calibrate INT8 with")
        # every frame counts (batch 1: ultralytics' calibration loader drops an incomplete last batch)
        args.update(quantize=8, data=str(int8_data), split="train", fraction=min(1.0, frames / len(train)), batch=1)
    return Path(YOLO(str(weights)).export(**args))


def verify_openvino(
    model_dir: str | Path,
    weights: str | Path,
    data: str | Path,
    imgsz: int,
    frames: int = 8,
    batch: int = 8,
    conf: float = 0.25,
    iou: float = 0.6,
) -> dict[str, Any]:
    """Compare OpenVINO with PyTorch: raw head outputs, detections after NMS, validation mAP50-95."""
    from csfnet.detect.predict import Predictor
    from csfnet.detect.runtimes import OpenVinoRuntime, TorchRuntime
    from csfnet.evaluate import validate
    from csfnet.export import verification_report

    images = [cv2.imread(str(p)) for p in split_images(data, "val")[:frames]]
    if not images:
        raise InputNotFoundError(f"{data}: the validation split has no images to verify with")
    torch_rt, ov_rt = TorchRuntime(weights, imgsz), OpenVinoRuntime(model_dir, imgsz)
    x = preprocess(images, imgsz)
    torch_raw, ov_raw = torch_rt(x, batch), ov_rt(x, batch)
    raw_diff = float(np.abs(ov_raw - torch_raw).max()) if ov_raw.shape == torch_raw.shape else float("inf")
    pt_dets = Predictor(torch_rt, conf, iou)(images)
    ov_dets = Predictor(ov_rt, conf, iou)(images)
    pt_val = validate(weights, data, imgsz, batch, iou=iou, plots=False, rect=False)
    ov_val = validate(model_dir, data, imgsz, 1, iou=iou, plots=False, rect=False)
    return verification_report("openvino", raw_diff, pt_dets, ov_dets, pt_val, ov_val)


def compare_int8(
    fp32: Path, int8: Path, data: str | Path, imgsz: int, fp32_map50: float, batch: int = 8, iou: float = 0.6
) -> dict[str, Any]:
    """mAP change of the INT8 model against ``fp32_map50`` and OpenVINO CPU latency of both at batch 1 and 8."""
    from csfnet.evaluate import validate

    val = validate(int8, data, imgsz, 1, iou=iou, plots=False, rect=False)
    speed = {(n, b): ov_latency_ms(p, imgsz, b) for n, p in (("fp32", fp32), ("int8", int8)) for b in (1, 8)}
    return {
        "map50": val["map50"],
        "map50_95": val["map50_95"],
        "map50_change_points": 100 * (val["map50"] - fp32_map50),
        "fp32_map50": fp32_map50,
        "latency_ms_batch1": {"fp32": speed["fp32", 1], "int8": speed["int8", 1]},
        "latency_ms_batch8": {"fp32": speed["fp32", 8], "int8": speed["int8", 8]},
        "speedup_cpu": speed["fp32", 1] / speed["int8", 1],
        "speedup_cpu_batch8": speed["fp32", 8] / speed["int8", 8],
    }


def ov_latency_ms(model_dir: str | Path, imgsz: int, batch: int, repeats: int = 10) -> float:
    """Median OpenVINO latency of one batch on random input."""
    from csfnet.detect.runtimes import OpenVinoRuntime

    return OpenVinoRuntime(model_dir, imgsz).latency_ms(batch, repeats)


def _move(src: Path, dst: Path) -> None:
    """Move an exported folder into place, replacing an older one; record that it is INT8 in its metadata."""
    from csfnet.files import replace_dir

    meta_file = src / "metadata.yaml"
    meta = yaml.safe_load(meta_file.read_text()) or {}
    meta["csfnet_verified"] = True
    meta_file.write_text(yaml.safe_dump(meta, sort_keys=False))
    replace_dir(src, dst)
