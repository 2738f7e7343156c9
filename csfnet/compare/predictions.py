"""Per-image matches of a trained model on a dataset split: what the paired image bootstrap resamples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ultralytics import YOLO

from csfnet._offline import disable_ultralytics_integrations
from csfnet.checks import check_checkpoint, check_dataset
from csfnet.data.dataset import read_labels, split_images
from csfnet.evaluate import predict
from csfnet.metrics import ImageMatches, match_images
from csfnet.settings import load_settings


def scored_split(
    weights: str | Path, data: str | Path, imgsz: int, conf: float, iou: float, device: str = "cpu", split: str = "val"
) -> tuple[list[Path], list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, Any]], ImageMatches]:
    """Images of ``split``, the predictions of ``weights`` on them, their ground truth, and the two matched."""
    weights = check_checkpoint(weights)
    check_dataset(data, (split,))
    disable_ultralytics_integrations()
    images = split_images(data, split)
    predictions, _ = predict(YOLO(str(weights), task="detect"), images, imgsz, conf, iou, device)
    truths = [read_labels(p) for p in images]
    return images, predictions, truths, match_images([t[0] for t in truths], predictions)


def image_matches(
    weights: str | Path,
    data: str | Path,
    imgsz: int,
    conf: float | None = None,
    iou: float | None = None,
    device: str = "cpu",
    split: str = "val",
) -> ImageMatches:
    """Predictions of ``weights`` on the ``split`` images of ``data``, matched to their ground truth.

    ``conf`` and ``iou`` (NMS) default to the ``eval`` settings, as ``csfnet eval`` validates.
    """
    s = load_settings().eval
    conf, iou = s.conf if conf is None else conf, s.iou if iou is None else iou
    return scored_split(weights, data, imgsz, conf, iou, device, split)[3]
