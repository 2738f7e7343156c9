"""Evaluation: ultralytics' validator plus what micro-object users need beyond it.

Beyond mAP50, mAP50-95, precision and recall, it reports AP50 and recall by object size band at source resolution
(by the square root of box area), recall per sequence, latency per image, and draws sample frames with predictions
(red) and ground truth (green).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ultralytics import YOLO

from csfnet._offline import disable_ultralytics_integrations
from csfnet.checks import check_checkpoint, check_dataset
from csfnet.data.dataset import read_labels, split_images
from csfnet.data.tiles import parse_tile_name
from csfnet.device import resolve_device
from csfnet.errors import DataError
from csfnet.files import replace_dir, staging_dir
from csfnet.heads import head_args
from csfnet.lineage import lineage_tags
from csfnet.metrics import band_metrics, match
from csfnet.runlog import NullLogger, StageLogger
from csfnet.settings import Settings, load_settings
from csfnet.temporal import load_stacked, model_motion
from csfnet.temporal.model_spec import check_model_data_motion
from csfnet.validator import CSFNetValidator


def validate(
    weights: str | Path,
    data: str | Path,
    imgsz: int,
    batch: int = 16,
    conf: float = 0.001,
    iou: float = 0.6,
    device: str = "cpu",
    save_dir: str | Path | None = None,
    plots: bool = True,
    rect: bool = True,
    end_to_end: bool = True,
) -> dict[str, Any]:
    """ultralytics' validator on the ``val`` split (a ``.pt`` or an exported model): mAP50, mAP50-95, precision,
    recall and its speed figures.

    ultralytics writes its plots and labels to ``save_dir``; without one, to a temporary folder removed afterwards
    (never to ``runs/detect/val*`` in the working directory). ``rect=False`` letterboxes every image to a square,
    as fixed-size exported models need. ``end_to_end``: an NMS-free head runs through its one-to-one branch
    (:func:`csfnet.heads.head_args`; an exported model brings its own choice in its metadata). A temporal model
    reads the images stacked with their motion channels (:class:`csfnet.validator.CSFNetValidator`); a ``.pt``
    whose motion channels differ from the dataset's is a DataError before anything runs.
    """
    disable_ultralytics_integrations()
    if str(weights).endswith(".pt"):
        check_model_data_motion(weights, data, str(weights))
    with contextlib.ExitStack() as stack:
        target = Path(save_dir) if save_dir else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "val"
        metrics = YOLO(str(weights), task="detect").val(
            validator=CSFNetValidator,
            data=str(data),
            imgsz=imgsz,
            batch=batch,
            conf=conf,
            iou=iou,
            device=device,
            plots=plots,
            rect=rect,
            project=str(target.resolve().parent),  # absolute: ultralytics puts relative ones under runs/detect/
            name=target.name,
            exist_ok=True,
            verbose=False,
            **head_args(weights, end_to_end),
        )
    return {
        "map50": float(metrics.box.map50),
        "map50_95": float(metrics.box.map),
        "precision": float(metrics.box.mp),
        "recall": float(metrics.box.mr),
        "speed_ms": {k: round(float(v), 3) for k, v in metrics.speed.items()},
        "save_dir": str(metrics.save_dir),
    }


def evaluate(
    weights: str | Path,
    data: str | Path,
    out_dir: str | Path,
    imgsz: int | None = None,
    device: str | None = None,
    logger: StageLogger | None = None,
    settings: Settings | None = None,
    slice_size: int | None = None,
    tracker: str | None = None,
    raw: str | Path = "data/raw",
    **overrides: Any,
) -> dict[str, Any]:
    """Full evaluation of ``weights`` on the validation split, as the ``eval`` stage.

    Writes ``metrics.json``, the PR curve, the confusion matrix and sample frames to ``out_dir``, all or nothing.

    Args:
        weights: Trained ``.pt`` (or an exported model ultralytics can validate).
        data: ``data.yaml``; its ``val`` split is evaluated.
        out_dir: Folder receiving the outputs (replaced).
        imgsz: Image size (default: the active preset's).
        device: ``""`` auto, ``cpu``, ``0`` ... (default: ``train.device``).
        logger: Records parameters, metrics and outputs as the ``eval`` stage (default: nothing is recorded).
        settings: Validated settings (default: :func:`csfnet.settings.load_settings`).
        slice_size: Also AP and recall by size band with sliced inference at this size against whole frames
            (``slicing.json``; overlap and merging from ``detect``).
        tracker: Also tracking metrics (HOTA, MOTA, IDF1) of ``bytetrack`` or ``botsort`` on the validation
            sequences of the raw root ``raw``, whose ground truth carries track IDs (``tracking.json``).
        **overrides: ``eval`` settings (``conf``, ``size_bands``, ``samples`` ...).
    """
    settings = (settings or load_settings()).override({f"eval.{k}": v for k, v in overrides.items()}, "options")
    weights, data, out_dir = check_checkpoint(weights), Path(data), Path(out_dir)
    check_dataset(data)
    if weights.suffix == ".pt":  # before the stage starts: a mismatch records nothing
        check_model_data_motion(weights, data, str(weights))
    s = settings.eval
    params = {**s.model_dump(), "imgsz": imgsz or settings.imgsz, "device": resolve_device(device, settings)}
    extra = {"slice": slice_size, "tracker": tracker}
    stage = (logger or NullLogger()).stage("eval", {**params, **extra}, lineage_tags(data, weights))
    with stage as run, staging_dir(out_dir) as tmp:
        metrics = _evaluate(weights, data, tmp, params)
        flat = {k: v for k, v in metrics.items() if k != "per_sequence_recall"}
        if slice_size:
            flat.update(_sliced(weights, data, tmp, slice_size, params, settings))
        if tracker:
            flat.update(_tracking(weights, Path(raw), tmp, tracker, params["imgsz"], settings))
        replace_dir(tmp, out_dir)
        run.log_metrics(flat)
        run.log_artifacts(out_dir, "eval")
    return metrics


def _sliced(weights: Path, data: Path, out_dir: Path, size: int, p: dict, settings: Settings) -> dict[str, float]:
    """AP by size band, whole frames against slices of ``size`` px: ``slicing.json`` and flat metrics."""
    from csfnet.detect import sliced_eval

    d = settings.detect
    result = sliced_eval.sliced_vs_full(
        weights, data, slice_size=size, overlap=d.overlap, full_frame=d.full_frame, merge=d.merge,
        merge_threshold=d.merge_threshold, conf=p["conf"], iou=p["iou"], imgsz=p["imgsz"],
        report_conf=p["report_conf"], size_bands=p["size_bands"], batch=d.batch, end_to_end=p["end_to_end"],
    )  # fmt: skip
    (out_dir / "slicing.json").write_text(json.dumps(result, indent=2))
    return sliced_eval.flat_metrics(result)


def _tracking(weights: Path, raw: Path, out_dir: Path, tracker: str, imgsz: int, settings: Settings) -> dict:
    """HOTA, MOTA, IDF1 of ``tracker`` on the raw validation sequences: ``tracking.json`` and flat metrics."""
    from csfnet.detect import track_eval

    d = settings.detect
    result = track_eval.evaluate_tracking(
        weights, raw, split="val", tracker=tracker, conf=d.conf, iou=d.iou, imgsz=imgsz,
        slice_size=d.slice or None, overlap=d.overlap,
        tracker_overrides=d.track_args or None, persistence=d.persistence.rule(), end_to_end=settings.eval.end_to_end,
    )  # fmt: skip
    track_eval.write_report(result, out_dir)  # tracking.json, tracking.md: with and without track filtering
    return track_eval.flat_metrics(result)


def _evaluate(weights: Path, data: Path, out_dir: Path, p: dict[str, Any]) -> dict[str, Any]:
    imgsz, conf, iou, device, report_conf = p["imgsz"], p["conf"], p["iou"], p["device"], p["report_conf"]
    with tempfile.TemporaryDirectory() as tmp:
        base = validate(
            weights, data, imgsz, p["batch"], conf, iou, device, save_dir=Path(tmp) / "val", end_to_end=p["end_to_end"]
        )
        for name in ("PR_curve.png", "BoxPR_curve.png", "confusion_matrix.png"):
            src = Path(base["save_dir"]) / name
            if src.is_file():
                shutil.copyfile(src, out_dir / ("pr_curve.png" if "PR" in name else name))
    images = split_images(data, "val")
    model = YOLO(str(weights))
    predictions, latency = predict(model, images, imgsz, conf, iou, device, head_args(model.model, p["end_to_end"]))
    truths = [read_labels(p) for p in images]
    bands = band_metrics(truths, predictions, p["size_bands"], report_conf)
    per_sequence = sequence_recall(images, truths, predictions, report_conf)
    metrics = {
        **{k: v for k, v in base.items() if k != "save_dir"},
        "latency_ms_per_image": round(latency, 3),
        "report_conf": report_conf,
        "size_bands": bands,
        "per_sequence_recall": per_sequence,
        "images": len(images),
        "objects": int(sum(len(t[0]) for t in truths)),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    draw_samples(images, truths, predictions, out_dir / "samples.jpg", p["samples"], report_conf)
    return metrics


def predict(
    model: YOLO,
    images: Sequence[Path],
    imgsz: int,
    conf: float,
    iou: float,
    device: str,
    head: dict[str, Any] | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """(boxes xyxy, scores) per image and the mean end-to-end latency per image in milliseconds; ``head``: the
    :func:`csfnet.heads.head_args` of the model. A temporal model gets each image stacked with its motion channels
    (the files of the offsets it was trained with), read as part of the latency."""
    motion = model_motion(model.model)
    results, start = [], time.perf_counter()
    for chunk in range(0, len(images), 16):
        paths = images[chunk : chunk + 16]
        batch = [load_stacked(p, motion) for p in paths] if motion else [str(p) for p in paths]
        for r in model.predict(batch, imgsz=imgsz, conf=conf, iou=iou, device=device, verbose=False, **(head or {})):
            results.append((r.boxes.xyxy.cpu().numpy(), r.boxes.conf.cpu().numpy()))
    latency = (time.perf_counter() - start) * 1000 / max(len(images), 1)
    return results, latency


def sequence_recall(
    images: Sequence[Path],
    truths: Sequence[tuple[np.ndarray, Any]],
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    report_conf: float,
) -> dict[str, float]:
    """Recall at ``report_conf`` for every sequence (images named ``<sequence>_<frame>[_x<x>_y<y>]``)."""
    found, total = defaultdict(int), defaultdict(int)
    for image, (gt, _), (pred, scores) in zip(images, truths, predictions):
        try:
            seq = parse_tile_name(image.stem).sequence  # whole frames and tiles alike
        except DataError:
            seq = image.stem
        keep = scores >= report_conf
        matched = match(gt, pred[keep], scores[keep])[:, 0]
        total[seq] += len(gt)
        found[seq] += int((matched >= 0).sum())
    return {seq: round(found[seq] / total[seq], 4) if total[seq] else 1.0 for seq in sorted(total)}


def draw_samples(
    images: Sequence[Path],
    truths: Sequence[tuple[np.ndarray, Any]],
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    path: Path,
    count: int,
    report_conf: float,
) -> None:
    """A grid of validation frames with ground truth (green) and predictions above ``report_conf`` (red)."""
    with_targets = [i for i, (gt, _) in enumerate(truths) if len(gt)] or list(range(len(images)))
    if not with_targets or count <= 0:
        return
    picks = [with_targets[int(k)] for k in np.linspace(0, len(with_targets) - 1, min(count, len(with_targets)))]
    tiles = []
    for i in picks:
        image = cv2.imread(str(images[i]))
        scale = max(1, 320 // max(image.shape[:2]))
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        for box in truths[i][0] * scale:
            cv2.rectangle(image, _pt(box[:2] - 2), _pt(box[2:] + 2), (0, 200, 0), 1)
        pred, scores = predictions[i]
        for box, score in zip(pred * scale, scores):
            if score >= report_conf:
                cv2.rectangle(image, _pt(box[:2]), _pt(box[2:]), (0, 0, 255), 1)
                cv2.putText(image, f"{score:.2f}", _pt(box[:2] - [0, 3]), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 255))
        cv2.putText(image, images[i].stem, (4, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255))
        tiles.append(image)
    h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, w - t.shape[1], cv2.BORDER_CONSTANT) for t in tiles]
    cols = min(3, len(tiles))
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % cols)
    grid = np.vstack([np.hstack(tiles[r : r + cols]) for r in range(0, len(tiles), cols)])
    cv2.imwrite(str(path), grid)


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return round(float(xy[0])), round(float(xy[1]))
