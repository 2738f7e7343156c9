"""One verification for every exported model, through the path ``csfnet detect`` and serving run.

The exported model is loaded by :func:`csfnet.detect.runtimes.load_runtime` and run by
:class:`csfnet.detect.predict.Predictor`, the PyTorch checkpoint by :class:`~csfnet.detect.runtimes.TorchRuntime` and
the same Predictor, and the two must agree: raw head outputs within :data:`RAW_TOL` on the first validation frames,
the same detections after NMS (box corners within :data:`BOX_TOL_PX`), and mAP50-95 of the whole validation split
within :data:`MAP_TOL`. An INT8 model may lose at most :data:`INT8_MAP50_TOL` mAP50 against its FP32 model
(:func:`compare_int8`, which also times both on the CPU).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from csfnet.data.dataset import read_labels, split_images
from csfnet.detect.temporal_input import describe, read_frame
from csfnet.errors import DataError, InputNotFoundError

if TYPE_CHECKING:
    from csfnet.detect.runtimes import Runtime

RAW_TOL = 1e-3  # absolute, on the raw head output
BOX_TOL_PX = 1.0
MAP_TOL = 0.005
INT8_MAP50_TOL = 0.03
REPORT_KEYS = {"onnxruntime": "onnx", "openvino": "openvino"}  # runtime kind -> its entries in the report
CPU = ["CPUExecutionProvider"]  # on the CPU, as exported: the tolerances are no GPU's (TF32) rounding


def verify(
    model: str | Path,
    weights: str | Path,
    data: str | Path,
    imgsz: int,
    frames: int = 8,
    batch: int = 8,
    conf: float = 0.25,
    iou: float = 0.6,
    map_conf: float = 0.001,
    end_to_end: bool = True,
) -> dict[str, Any]:
    """Compare the exported ``model`` (``.onnx`` or OpenVINO folder) with the PyTorch ``weights`` on ``data``'s
    validation split: raw head outputs and detections (at ``conf``) on its first ``frames`` frames, mAP50-95 (at
    ``map_conf``) on all of it. ``iou`` is the NMS threshold, ``batch`` the frames per runtime call; ``end_to_end``:
    the checkpoint runs through its NMS-free head, as the export does (both output layouts must then agree)."""
    from csfnet.detect.predict import Predictor  # imports of torch and ultralytics: kept out of the CLI's import
    from csfnet.detect.runtimes import TorchRuntime, load_runtime

    reference = TorchRuntime(weights, imgsz, end_to_end=end_to_end)
    exported = load_runtime(model, imgsz, providers=CPU)
    check_data_motion(reference, data)
    if (exported.channels, exported.motion) != (reference.channels, reference.motion):
        raise DataError(
            f"{model}: exported as {describe(exported.motion)}, but {weights} is {describe(reference.motion)}"
        )
    images = [read_frame(p, reference.motion) for p in split_images(data, "val")[:frames]]
    if not images:
        raise InputNotFoundError(f"{data}: the validation split has no images to verify with")
    x = Predictor(reference).preprocess(images)
    reference_raw, exported_raw = reference(x, batch), exported(x, batch)
    raw_diff = _raw_difference(reference_raw, exported_raw, reference.end2end)
    reference_dets, exported_dets = (Predictor(r, conf, iou, batch=batch)(images) for r in (reference, exported))
    reference_map, exported_map = (split_map(r, data, batch, map_conf, iou) for r in (reference, exported))
    key = REPORT_KEYS[exported.kind.removesuffix("-int8")]
    checks = {
        "raw_outputs": {"max_abs_diff": raw_diff, "tolerance": RAW_TOL, "passed": raw_diff <= RAW_TOL},
        "detections": _detections_check(key, reference_dets, exported_dets),
        "map50_95": _map_check(key, reference_map["map50_95"], exported_map["map50_95"]),
    }
    passed = all(c["passed"] for c in checks.values())
    return {"runtime": exported.kind, "end2end": exported.end2end, "checks": checks, "passed": passed, **exported_map}


def compare_int8(
    fp32: str | Path,
    int8: str | Path,
    data: str | Path,
    imgsz: int,
    fp32_map50: float,
    batch: int = 8,
    iou: float = 0.6,
    map_conf: float = 0.001,
) -> dict[str, Any]:
    """The INT8 model's mAP (as :func:`verify` measures it) against ``fp32_map50``, its FP32 model's, and the CPU
    latency of both at batch 1 and 8; ``passed`` when it loses at most :data:`INT8_MAP50_TOL` mAP50."""
    from csfnet.detect.runtimes import load_runtime

    quantised, full = (load_runtime(m, imgsz, providers=CPU) for m in (int8, fp32))
    scores = split_map(quantised, data, batch, map_conf, iou)
    speed = {
        (name, b): runtime.latency_ms(b, repeats=20 if b == 1 else 5)
        for name, runtime in (("fp32", full), ("int8", quantised))
        for b in (1, 8)
    }
    change = 100 * (scores["map50"] - fp32_map50)
    return {
        "runtime": quantised.kind,
        **scores,
        "map50_change_points": change,
        "fp32_map50": fp32_map50,
        "tolerance_points": 100 * INT8_MAP50_TOL,
        "latency_ms_batch1": {"fp32": speed["fp32", 1], "int8": speed["int8", 1]},
        "latency_ms_batch8": {"fp32": speed["fp32", 8], "int8": speed["int8", 8]},
        "speedup_cpu": speed["fp32", 1] / speed["int8", 1],
        "speedup_cpu_batch8": speed["fp32", 8] / speed["int8", 8],
        "passed": change >= -100 * INT8_MAP50_TOL,
    }


def split_map(
    runtime: Runtime, data: str | Path, batch: int = 8, conf: float = 0.001, iou: float = 0.6
) -> dict[str, float]:
    """``{"map50", "map50_95"}`` of ``runtime`` on ``data``'s validation split, predicted by :class:`Predictor` on
    whole frames and scored with ultralytics' matching and AP interpolation (class-agnostic: one class, the UAV)."""
    from csfnet.detect.predict import Predictor
    from csfnet.metrics import average_precision, match_images

    check_data_motion(runtime, data)
    images = split_images(data, "val")
    predictor = Predictor(runtime, conf, iou, batch=batch)
    predictions = []
    for start in range(0, len(images), batch):
        frames = [read_frame(p, runtime.motion) for p in images[start : start + batch]]
        predictions += [(d[:, :4], d[:, 4]) for d in predictor(frames)]
    return average_precision(match_images([read_labels(p)[0] for p in images], predictions))


def check_data_motion(runtime: Runtime, data: str | Path) -> None:
    """DataError unless ``data`` holds the motion channels ``runtime``'s model takes (none for a single-frame model;
    for a temporal one its offsets, alignment and files: :func:`csfnet.temporal.check_dataset_motion`)."""
    from csfnet.temporal import check_dataset_motion

    check_dataset_motion(Path(data), runtime.motion)


def _raw_difference(reference: np.ndarray, exported: np.ndarray, end2end: bool) -> float:
    """Largest absolute difference of two raw outputs (inf when their shapes differ). An NMS-free head's rows
    ``(x1, y1, x2, y2, score, class)`` are its top-k, whose order among equal scores is the runtime's: each
    reference row is compared with its nearest exported row, leaving out rows tied at the top-k cut (either model
    may keep a different one of them)."""
    if reference.shape != exported.shape:
        return float("inf")
    if not end2end:
        return float(np.abs(exported - reference).max()) if reference.size else 0.0
    worst = 0.0
    for ref, exp in zip(reference, exported):
        ref = ref[ref[:, 4] > min(ref[:, 4].min(), exp[:, 4].min()) + RAW_TOL]
        if len(ref):
            worst = max(worst, float(np.abs(ref[:, None, :] - exp[None, :, :]).max(-1).min(1).max()))
    return worst


def _detections_check(key: str, reference: list[np.ndarray], exported: list[np.ndarray]) -> dict[str, Any]:
    counts_equal = all(len(a) == len(b) for a, b in zip(reference, exported))
    box_diff = max((_box_distance(a, b) for a, b in zip(reference, exported) if len(a) == len(b)), default=0.0)
    return {
        "frames": len(reference),
        "pytorch": sum(len(d) for d in reference),
        key: sum(len(d) for d in exported),
        "max_box_diff_px": box_diff,
        "tolerance_px": BOX_TOL_PX,
        "passed": counts_equal and box_diff <= BOX_TOL_PX,
    }


def _map_check(key: str, reference: float, exported: float) -> dict[str, Any]:
    diff = abs(reference - exported)
    return {"pytorch": reference, key: exported, "abs_diff": diff, "tolerance": MAP_TOL, "passed": diff <= MAP_TOL}


def _box_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Largest coordinate difference (px) after matching every box of ``a`` to its nearest box in ``b``."""
    if len(a) == 0:
        return 0.0
    dist = np.abs(a[:, None, :4] - b[None, :, :4]).max(-1)
    return float(dist.min(1).max())
