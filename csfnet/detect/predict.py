"""Frames in, detections out: letterbox, run any :class:`~csfnet.detect.runtimes.Runtime`, NMS, back to frame
pixels; optionally sliced at native resolution. An NMS-free head's output (``Runtime.end2end``: top-k boxes already
chosen) is only thresholded by confidence, never NMS'd.

Full-frame prediction is ultralytics' own (LetterBox, ``non_max_suppression``, ``scale_boxes``), so it matches
``YOLO(model).predict(..., rect=False)``. Sliced prediction cuts every frame into overlapping windows
(:mod:`csfnet.detect.slicing`), adds the whole frame downscaled if asked, sends the crops of several frames through
the runtime in batches (exported models have a dynamic batch), applies NMS per crop, shifts the boxes back into the
frame and merges them across crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from csfnet.detect.runtimes import Runtime
from csfnet.detect.slicing import MERGE_MODES, merge, windows
from csfnet.detect.temporal_input import check_frame
from csfnet.errors import SettingsError
from csfnet.temporal import clear_padding


@dataclass(frozen=True)
class SliceOptions:
    """How frames are sliced. ``size`` 0 (or None) means no slicing: the whole frame, letterboxed to imgsz."""

    size: int | None = None
    overlap: float = 0.2
    full_frame: bool = True  # also run the whole frame downscaled (catches targets larger than a slice)
    merge: str = "nmm"
    merge_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.merge not in MERGE_MODES:
            raise SettingsError(f"merge must be one of {MERGE_MODES}, got {self.merge!r}")
        if self.size:
            windows(self.size, self.size, self.size, self.overlap)  # validates size and overlap

    @property
    def enabled(self) -> bool:
        return bool(self.size)


class Predictor:
    """Detections per frame as ``(n, 6)`` float32 arrays ``x1, y1, x2, y2, score, class`` in frame pixels.

    A frame is ``H x W x C``: BGR for a single-frame model, BGR + motion channels (``csfnet.temporal.stack``) for a
    temporal one (``C`` must be the runtime's :attr:`~csfnet.detect.runtimes.Runtime.channels`); slices cut every
    channel with the same grid.

    Args:
        runtime: The loaded model.
        conf: Confidence threshold.
        iou: NMS IoU threshold (within each crop; unused by an NMS-free head).
        slicing: Slicing options; default: whole frames only.
        batch: Crops per runtime call.
        max_det: Most detections kept per crop and per frame.
    """

    def __init__(
        self,
        runtime: Runtime,
        conf: float = 0.25,
        iou: float = 0.6,
        slicing: SliceOptions | None = None,
        batch: int = 8,
        max_det: int = 300,
    ):
        self.runtime, self.conf, self.iou = runtime, conf, iou
        self.slicing = slicing or SliceOptions()
        self.batch, self.max_det = batch, max_det

    def crops(self, frame: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
        """``(x0, y0, image)`` of every crop of ``frame`` the runtime sees (the frame itself when not slicing)."""
        if not self.slicing.enabled:
            return [(0, 0, frame)]
        h, w = frame.shape[:2]
        out = [
            (int(x0), int(y0), frame[y0:y1, x0:x1])
            for x0, y0, x1, y1 in windows(h, w, self.slicing.size, self.slicing.overlap)
        ]
        if self.slicing.full_frame and len(out) > 1:
            out.append((0, 0, frame))
        return out

    def __call__(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch
        from ultralytics.utils import nms, ops

        if not len(frames):
            return []
        for frame in frames:
            check_frame(frame, self.runtime.channels, self.runtime.motion)
        crops = [(f, *c) for f, frame in enumerate(frames) for c in self.crops(frame)]
        x = self.preprocess([c[3] for c in crops])
        raw = torch.from_numpy(self.runtime(x, self.batch))
        dets = nms.non_max_suppression(raw, self.conf, self.iou, max_det=self.max_det, end2end=self.runtime.end2end)
        per_frame: list[list[np.ndarray]] = [[] for _ in frames]
        for (f, x0, y0, image), det in zip(crops, dets):
            det[:, :4] = ops.scale_boxes(x.shape[2:], det[:, :4], image.shape[:2])
            det = det.numpy()
            det[:, [0, 2]] += x0
            det[:, [1, 3]] += y0
            per_frame[f].append(det)
        out = []
        for parts in per_frame:
            dets_f = np.concatenate(parts) if parts else np.zeros((0, 6), np.float32)
            if len(parts) > 1:  # the best candidates only: a greedy merge of every low-score box would be O(n^2)
                dets_f = dets_f[np.argsort(-dets_f[:, 4], kind="stable")[: 4 * self.max_det]]
                dets_f = merge(dets_f, self.slicing.merge, self.slicing.merge_threshold)[: self.max_det]
            out.append(dets_f.astype(np.float32))
        return out

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """The crops as the runtime takes them (:func:`letterbox_batch` at the runtime's image size)."""
        return letterbox_batch(images, self.runtime.imgsz)

    def slices_per_frame(self, height: int, width: int) -> int:
        """How many crops one ``height`` x ``width`` frame becomes."""
        return len(self.crops(np.empty((height, width, 1), np.uint8)))


def letterbox_batch(images: Sequence[np.ndarray], imgsz: int) -> np.ndarray:
    """``(N, C, S, S)`` float32 0-1 in the channel order the model was trained on (:func:`channel_order`), for
    prediction, export verification and INT8 calibration alike; images already ``S`` x ``S`` go in as they are,
    others are letterboxed (ultralytics' LetterBox; colour padded grey, motion 0, as in training:
    :func:`csfnet.temporal.clear_padding`). (One numpy pass per image; measured faster than OpenCV's
    blobFromImages and torch here.)"""
    from ultralytics.data.augment import LetterBox

    letterbox = LetterBox((imgsz, imgsz), auto=False)
    ready = [im if im.shape[:2] == (imgsz, imgsz) else clear_padding(letterbox(image=im)) for im in images]
    x = np.empty((len(ready), ready[0].shape[2] if ready else 3, imgsz, imgsz), np.float32)
    for i, im in enumerate(ready):
        np.divide(channel_order(im).transpose(2, 0, 1), 255.0, out=x[i], casting="unsafe")
    return x


def channel_order(image: np.ndarray) -> np.ndarray:
    """``image`` in the channel order ultralytics feeds its models, in training and prediction alike: a 3-channel
    BGR image as RGB, a stacked temporal input (BGR + motion channels) as it is (ultralytics' ``Format`` and
    ``BasePredictor`` flip 3-channel images only). A view, no copy."""
    return image[..., ::-1] if image.shape[2] == 3 else image
