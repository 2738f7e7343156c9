"""Reading an extracted YOLO dataset: split images and their labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def split_images(data: str | Path, split: str = "val") -> list[Path]:
    """Image files of a split of an ultralytics dataset (as ultralytics resolves ``data.yaml``)."""
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(data))
    if not info.get(split):
        raise ValueError(f"{data} has no {split!r} split")
    roots = info[split] if isinstance(info[split], list) else [info[split]]
    return sorted(p for root in roots for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def calibration_images(data: str | Path, count: int) -> list[Path]:
    """Up to ``count`` evenly spaced training images of ``data`` (INT8 calibration); InputNotFoundError if none."""
    from csfnet.errors import InputNotFoundError

    images = split_images(data, "train")
    if not images:
        raise InputNotFoundError(f"{data}: no training frames to calibrate INT8 with")
    return images[:: max(1, len(images) // count)][:count]


def label_path(image: Path) -> Path:
    """The YOLO label file of an image: ``.../images/<split>/x.jpg`` -> ``.../labels/<split>/x.txt``."""
    parts = list(image.parts)
    index = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:index], "labels", *parts[index + 1 :]).with_suffix(".txt")


def read_labels(image: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Ground-truth boxes (xyxy, pixels) of an image, and the image (width, height)."""
    label = label_path(image)
    with Image.open(image) as im:  # header only
        w, h = im.size
    rows = np.loadtxt(label, ndmin=2) if label.is_file() and os.path.getsize(label) else np.zeros((0, 5))
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1) if len(rows) else np.zeros((0, 4))
    return boxes, (w, h)
