"""What slicing buys: AP50 and recall by object size band, whole frames against slices, on the same images and
weights (``csfnet eval --slice``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csfnet.data.dataset import read_labels, split_images
from csfnet.detect.predict import Predictor, SliceOptions
from csfnet.detect.runtimes import Runtime, load_runtime
from csfnet.detect.temporal_input import read_frame
from csfnet.errors import DataError
from csfnet.metrics import band_metrics
from csfnet.settings import Detect, Eval

DETECT, EVAL = Detect(), Eval()  # defaults of the detect: and eval: settings, set there only


def sliced_vs_full(
    model: str | Path | Runtime,
    data: str | Path,
    *,
    slice_size: int,
    overlap: float = DETECT.overlap,
    full_frame: bool = DETECT.full_frame,
    merge: str = DETECT.merge,
    merge_threshold: float = DETECT.merge_threshold,
    split: str = "val",
    conf: float = EVAL.conf,
    iou: float = EVAL.iou,
    imgsz: int | None = None,
    report_conf: float = EVAL.report_conf,
    size_bands: Sequence[float] = tuple(EVAL.size_bands),
    batch: int = DETECT.batch,
    max_images: int | None = None,
    end_to_end: bool = EVAL.end_to_end,
) -> dict[str, Any]:
    """Size-band AP50/recall (:func:`csfnet.metrics.band_metrics`) of whole-frame and sliced prediction.

    Returns ``{"full": bands, "sliced": bands, "slice": ..., "images": n, "objects": n, "ms_per_image": {"full",
    "sliced"}, "crops_per_image": k}`` where ``bands`` maps each band name to ``{"px", "objects", "ap50",
    "recall"}``. Use :func:`flat_metrics` for MLflow. A temporal model sees each image stacked with its stored
    motion channels (:func:`csfnet.temporal.load_stacked`), sliced with the same grid. ``end_to_end``: the head
    of a ``.pt`` with an NMS-free head (:func:`~csfnet.detect.runtimes.load_runtime`).
    """
    runtime = model if isinstance(model, Runtime) else load_runtime(model, imgsz, end_to_end=end_to_end)
    images = split_images(data, split)[:max_images]
    if not images:
        raise DataError(f"{data}: the {split!r} split has no images")
    truths = [read_labels(p) for p in images]
    modes = {
        "full": SliceOptions(),
        "sliced": SliceOptions(slice_size, overlap, full_frame, merge, merge_threshold),
    }
    out: dict[str, Any] = {"slice": slice_size, "overlap": overlap, "full_frame": full_frame, "merge": merge}
    out.update(images=len(images), objects=int(sum(len(t[0]) for t in truths)), ms_per_image={})
    for name, slicing in modes.items():
        predictor = Predictor(runtime, conf, iou, slicing, batch)
        predictions, seconds = predict_images(predictor, images)
        out[name] = band_metrics(truths, predictions, size_bands, report_conf)
        out["ms_per_image"][name] = round(1000 * seconds / len(images), 2)
        if name == "sliced":
            first = read_frame(images[0], None)
            out["crops_per_image"] = predictor.slices_per_frame(*first.shape[:2])
    return out


def predict_images(predictor: Predictor, images: Sequence[Path]) -> tuple[list[tuple[np.ndarray, np.ndarray]], float]:
    """(boxes xyxy, scores) of ``predictor`` on each dataset image, read as its model takes it
    (:func:`~csfnet.detect.temporal_input.read_frame`), and the seconds spent predicting (reading excluded)."""
    predictions, seconds = [], 0.0
    for path in images:
        frame = read_frame(path, predictor.runtime.motion)
        start = time.perf_counter()
        dets = predictor([frame])[0]
        seconds += time.perf_counter() - start
        predictions.append((dets[:, :4], dets[:, 4]))
    return predictions, seconds


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """``{"full/very_tiny/ap50": ..., "sliced/very_tiny/recall": ..., "sliced/ms_per_image": ...}`` for MLflow."""
    flat = {}
    for mode in ("full", "sliced"):
        for band, values in result[mode].items():
            flat[f"{mode}/{band}/ap50"] = float(values["ap50"])
            flat[f"{mode}/{band}/recall"] = float(values["recall"])
        flat[f"{mode}/ms_per_image"] = float(result["ms_per_image"][mode])
    return flat
