"""Per-image matches of a trained model on a dataset split: what the paired image bootstrap resamples."""

from __future__ import annotations

from pathlib import Path

from ultralytics import YOLO

from csfnet._offline import disable_ultralytics_integrations
from csfnet.checks import check_checkpoint, check_dataset
from csfnet.compare.stats import ImageMatches, match_images
from csfnet.data.dataset import read_labels, split_images
from csfnet.evaluate import predict
from csfnet.settings import load_settings


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
    weights = check_checkpoint(weights)
    check_dataset(data, (split,))
    disable_ultralytics_integrations()
    images = split_images(data, split)
    predictions, _ = predict(YOLO(str(weights), task="detect"), images, imgsz, conf, iou, device)
    return match_images([read_labels(p)[0] for p in images], predictions)
