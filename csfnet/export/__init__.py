"""Verified export: ONNX and OpenVINO models, FP32 and optionally INT8, written only when they reproduce PyTorch.

The formats' writers (:mod:`csfnet.export.onnx`, :mod:`csfnet.export.openvino`) write into a staging folder; one
verification (:mod:`csfnet.export.verification`) loads each model the way ``csfnet detect`` and serving do
(``load_runtime`` + ``Predictor``) and compares it with the checkpoint; the models are moved into place only when
every check passes, so a failed export leaves nothing behind but its report. :func:`export` is the ``export`` stage.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csfnet.checks import check_checkpoint, check_dataset
from csfnet.errors import VerificationError
from csfnet.export.onnx import onnx_export, quantize_int8
from csfnet.export.openvino import SUFFIX, check_folder_name, install, openvino_export, size_mb
from csfnet.export.verification import compare_int8, verify
from csfnet.files import staging_dir, write_json
from csfnet.lineage import lineage_tags
from csfnet.runlog import NullLogger, StageLogger
from csfnet.settings import Settings, load_settings

__all__ = [
    "ExportResult",
    "compare_int8",
    "export",
    "export_onnx",
    "export_openvino",
    "onnx_export",
    "openvino_export",
    "quantize_int8",
    "verify",
]

EVAL_KEYS = {"batch": "eval.batch", "conf": "eval.report_conf", "iou": "eval.iou", "map_conf": "eval.conf"}


@dataclass
class ExportResult:
    """Where the verified models are (``int8`` None when not asked for) and the verification report."""

    fp32: Path
    int8: Path | None
    report: dict[str, Any]


@dataclass(frozen=True)
class _Format:
    """How one format is written, put in place and described in the report."""

    name: str
    fp32: Callable[[Path], Path]  # staged checkpoint -> FP32 model
    int8: Callable[[Path, Path], Path]  # staged checkpoint, FP32 model -> INT8 model
    install: Callable[[Path, Path], Any]  # verified model -> its destination
    describe: Callable[[Path, Path], dict[str, Any]]  # model, destination -> its report entry


def export(
    weights: str | Path,
    out: str | Path,
    data: str | Path,
    imgsz: int | None = None,
    calib_data: str | Path | None = None,
    int8_out: str | Path | None = None,
    report_path: str | Path | None = None,
    logger: StageLogger | None = None,
    settings: Settings | None = None,
    **overrides: Any,
) -> ExportResult:
    """The ``export`` stage: :func:`export_onnx` with settings from ``params.yaml``, recorded by ``logger``
    (default: nothing is recorded).

    ``overrides`` are ``export`` settings (``opset``, ``dynamic_size``, ``int8``, ``calib_frames``,
    ``verify_frames``) and ``batch``, ``conf``, ``iou``, ``map_conf`` (``eval.batch``, ``eval.report_conf``,
    ``eval.iou``, ``eval.conf``).
    """
    keys = {k: EVAL_KEYS.get(k, f"export.{k}") for k in overrides}
    settings = (settings or load_settings()).override({keys[k]: v for k, v in overrides.items()}, "options")
    x, e = settings.export, settings.eval
    weights, data = check_checkpoint(weights), Path(data)
    check_dataset(data)
    kwargs = {**x.model_dump(), "imgsz": imgsz or settings.imgsz, "batch": e.batch, "conf": e.report_conf}
    kwargs.update(iou=e.iou, map_conf=e.conf, end_to_end=e.end_to_end)
    with (logger or NullLogger()).stage("export", kwargs, lineage_tags(data, weights)) as run:
        result = export_onnx(
            weights, out, data, calib_data=calib_data, int8_out=int8_out, report_path=report_path, **kwargs
        )
        report = result.report
        run.log_metrics({"verification": report["verification"]["checks"], "int8": report.get("int8", {})})
        run.log_dict(report, "export/report.json")
    return result


def export_onnx(
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
    map_conf: float = 0.001,
    calib_data: str | Path | None = None,
    int8_out: str | Path | None = None,
    report_path: str | Path | None = None,
    end_to_end: bool = True,
) -> ExportResult:
    """Export ``weights`` to the ONNX file ``out`` (INT8: ``int8_out``, default ``<out stem>-int8.onnx``), verified.

    Args:
        weights: Trained ``.pt``.
        out: Destination of the FP32 ONNX model.
        data: ``data.yaml`` whose validation frames verify the export.
        imgsz: Export image size.
        opset: ONNX opset.
        dynamic_size: Also leave height and width dynamic (the batch is always dynamic).
        int8: Also write a statically quantised INT8 model.
        calib_frames: Training frames (evenly spaced) that calibrate INT8.
        verify_frames: Validation frames compared output by output.
        batch: Frames per runtime call.
        conf: Confidence threshold of the detection comparison.
        iou: NMS IoU threshold.
        map_conf: Confidence threshold of the mAP comparison.
        calib_data: ``data.yaml`` whose *training* frames calibrate INT8 (default: ``data``).
        int8_out: Destination of the INT8 model.
        report_path: JSON report (default: ``<out stem>-report.json``).
        end_to_end: An NMS-free head is exported, and verified, through its one-to-one branch (``eval.end_to_end``).

    Raises:
        InputNotFoundError: ``weights`` or ``data`` is missing.
        CheckpointError: ``weights`` is not a readable checkpoint.
        VerificationError: A check failed; the report is written, the models are not.
    """
    out = Path(out)
    calib = Path(calib_data or data)
    onnx_format = _Format(
        "ONNX",
        fp32=lambda pt: onnx_export(pt, imgsz, opset, dynamic_size, end_to_end),
        int8=lambda pt, fp32: quantize_int8(fp32, pt.with_name("model-int8.onnx"), calib, imgsz, calib_frames),
        install=shutil.move,
        describe=lambda model, dst: {"file": str(dst), "size_mb": round(model.stat().st_size / 2**20, 2)},
    )
    head = {"imgsz": imgsz, "opset": opset, "dynamic_size": dynamic_size, "end_to_end": end_to_end}
    return _verified_export(
        onnx_format,
        weights,
        data,
        out,
        (Path(int8_out) if int8_out else out.with_name(f"{out.stem}-int8.onnx")) if int8 else None,
        Path(report_path) if report_path else out.with_name(f"{out.stem}-report.json"),
        head,
        verify_frames=verify_frames,
        batch=batch,
        conf=conf,
        iou=iou,
        map_conf=map_conf,
    )


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
    map_conf: float = 0.001,
    end_to_end: bool = True,
) -> ExportResult:
    """Export ``weights`` to the OpenVINO folder ``out`` (its name ends in ``_openvino_model``; INT8: ``int8_out``,
    default ``<name>_int8_openvino_model``), verified as :func:`export_onnx` verifies. The report defaults to
    ``<name>-openvino.json``.

    Raises:
        SettingsError: A folder name does not end in ``_openvino_model``.
        InputNotFoundError, CheckpointError, VerificationError: as :func:`export_onnx`.
    """
    out = Path(out)
    int8_out = Path(int8_out) if int8_out else out.with_name(out.name.replace(SUFFIX, f"_int8{SUFFIX}"))
    for folder in (out, int8_out):
        check_folder_name(folder)
    calib = Path(calib_data or data)
    openvino_format = _Format(
        "OpenVINO",
        fp32=lambda pt: openvino_export(pt, imgsz, end_to_end=end_to_end),
        int8=lambda pt, fp32: openvino_export(pt, imgsz, int8_data=calib, frames=calib_frames, end_to_end=end_to_end),
        install=install,
        describe=lambda model, dst: {"dir": str(dst), "size_mb": size_mb(model)},
    )
    return _verified_export(
        openvino_format,
        weights,
        data,
        out,
        int8_out if int8 else None,
        Path(report_path) if report_path else out.with_name(f"{out.name.replace(SUFFIX, '')}-openvino.json"),
        {"imgsz": imgsz, "end_to_end": end_to_end},
        verify_frames=verify_frames,
        batch=batch,
        conf=conf,
        iou=iou,
        map_conf=map_conf,
    )


def _verified_export(
    fmt: _Format,
    weights: str | Path,
    data: str | Path,
    out: Path,
    int8_out: Path | None,
    report_path: Path,
    head: dict[str, Any],
    verify_frames: int,
    batch: int,
    conf: float,
    iou: float,
    map_conf: float,
) -> ExportResult:
    """Write ``fmt``'s FP32 model (and INT8 when ``int8_out``) into staging, verify it (:func:`verify`,
    :func:`compare_int8`), write the report, and move the models to ``out`` and ``int8_out`` only when every check
    passed. ``head`` (with ``imgsz``) opens the report."""
    weights, data = check_checkpoint(weights), Path(data)
    check_dataset(data)
    imgsz = head["imgsz"]
    with staging_dir(out) as tmp:
        staged = tmp / "model.pt"
        shutil.copy2(weights, staged)  # ultralytics writes next to the weights: keep the training folder untouched
        fp32 = fmt.fp32(staged)
        report: dict[str, Any] = {"weights": str(weights), "data": str(data), **head}
        report["fp32"] = fmt.describe(fp32, out)
        report["verification"] = verify(
            fp32, weights, data, imgsz, verify_frames, batch, conf, iou, map_conf, head.get("end_to_end", True)
        )
        failed = [k for k, v in report["verification"]["checks"].items() if not v["passed"]]
        if int8_out and not failed:
            q = fmt.int8(staged, fp32)
            fp32_map50 = report["verification"]["map50"]
            comparison = compare_int8(fp32, q, data, imgsz, fp32_map50, batch, iou, map_conf)
            report["int8"] = {**fmt.describe(q, int8_out), **comparison}
            failed += [] if comparison["passed"] else ["int8_map50"]
        report["passed"] = not failed
        write_json(report_path, report)
        if failed:
            failures = ", ".join(failed)
            raise VerificationError(f"{fmt.name} export does not match PyTorch ({failures}); see {report_path}")
        fmt.install(fp32, out)
        if int8_out:
            fmt.install(q, int8_out)
    return ExportResult(out, int8_out, report)
