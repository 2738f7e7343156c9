"""Slice geometry and merging of detections across overlapping slices.

A frame is cut into ``size`` x ``size`` windows at native resolution that overlap by ``overlap`` of their side; the
last row and column are shifted inwards so every window lies inside the frame (no padding) and the whole frame is
covered. Detections from all windows (and optionally from the whole frame, downscaled) are merged greedily by score:
``nms`` drops a box that overlaps a better one, ``nmm`` merges it into the better one's box (the union), which repairs
targets cut by a slice edge. Overlap is measured as IoS (intersection over the smaller box) by default: a piece of a
target cut off at a slice border lies inside the whole target's box seen by the neighbouring slice.
"""

from __future__ import annotations

import math

import numpy as np

from csfnet.errors import SettingsError

MERGE_MODES = ("nms", "nmm")
METRICS = ("ios", "iou")


def axis_starts(length: int, size: int, overlap: float) -> list[int]:
    """Window start offsets along one axis of ``length`` pixels."""
    if size >= length:
        return [0]
    step = max(1, int(size * (1 - overlap)))
    count = math.ceil((length - size) / step) + 1
    return sorted({min(i * step, length - size) for i in range(count)})


def windows(height: int, width: int, size: int, overlap: float = 0.2) -> np.ndarray:
    """``(k, 4)`` int windows ``x0, y0, x1, y1`` covering a ``height`` x ``width`` frame."""
    if size < 32:
        raise SettingsError(f"slice size must be at least 32 px, got {size}")
    if not 0 <= overlap < 1:
        raise SettingsError(f"slice overlap must be in [0, 1), got {overlap}")
    xs, ys = axis_starts(width, size, overlap), axis_starts(height, size, overlap)
    return np.array([(x, y, min(x + size, width), min(y + size, height)) for y in ys for x in xs], dtype=np.int64)


def merge(dets: np.ndarray, mode: str = "nmm", threshold: float = 0.5, metric: str = "ios") -> np.ndarray:
    """Greedy class-aware merge of ``(n, 6)`` detections ``x1, y1, x2, y2, score, class`` (best score first).

    Every box whose overlap with a better box of the same class is at least ``threshold`` is dropped (``nms``) or
    folded into it (``nmm``: the kept box grows to the union, the score stays the best one).
    """
    if mode not in MERGE_MODES or metric not in METRICS:
        raise SettingsError(f"merge mode must be one of {MERGE_MODES} and metric one of {METRICS}")
    if len(dets) < 2:
        return dets
    dets = dets[np.argsort(-dets[:, 4], kind="stable")]
    boxes = dets[:, :4].astype(np.float64)
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    alive = np.ones(len(dets), bool)
    out = []
    for i in range(len(dets)):
        if not alive[i]:
            continue
        rest = np.flatnonzero(alive & (dets[:, 5] == dets[i, 5]))
        rest = rest[rest > i]
        kept = dets[i].copy()
        if len(rest):
            lt = np.maximum(boxes[i, :2], boxes[rest, :2])
            rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
            inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
            denom = np.minimum(areas[i], areas[rest]) if metric == "ios" else areas[i] + areas[rest] - inter
            group = rest[inter / np.maximum(denom, 1e-9) >= threshold]
            alive[group] = False
            if mode == "nmm" and len(group):
                kept[:2] = np.minimum(kept[:2], dets[group, :2].min(0))
                kept[2:4] = np.maximum(kept[2:4], dets[group, 2:4].max(0))
        out.append(kept)
    return np.stack(out).astype(dets.dtype)
