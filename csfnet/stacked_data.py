"""Training and validation data of temporal models: each image stacked with its motion channels (issue 24).

A dataset whose ``data.yaml`` has ``motion`` keeps its motion channels in separate PNGs (``csfnet.temporal``), which
ultralytics' ``YOLODataset`` cannot read. :class:`StackedDataset` loads every image with
:func:`csfnet.temporal.load_stacked` (HxWx(3+k) uint8: BGR, then the motion channels in offset order), so training,
per-epoch validation and ``csfnet eval`` read the same arrays. ultralytics' geometric augmentations (mosaic, affine,
flips, letterbox) move all channels together; its ``RandomHSV`` skips any image that has not exactly 3 channels, so
:class:`ColourHSV` replaces it and jitters the colour alone, never the motion. ultralytics' ``Format`` reverses the
channel order (BGR to RGB) of 3-channel images only, as its predictor does: a stacked image stays BGR + motion in
training, validation and prediction alike. Where ultralytics pads (the mosaic canvas, affine borders, letterbox:
grey 114 in every channel), :class:`ClearMotionPadding` sets the motion to 0 before the colour is jittered, as the
predictor does after its letterbox (:func:`csfnet.temporal.clear_padding`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ultralytics.data import YOLODataset, build_yolo_dataset
from ultralytics.data.augment import Compose, RandomHSV
from ultralytics.data.utils import get_split_fraction
from ultralytics.utils import IterableSimpleNamespace, colorstr

from csfnet.temporal import clear_padding, dataset_motion, load_stacked, motion_path


class ColourHSV(RandomHSV):
    """ultralytics' ``RandomHSV`` applied to the colour channels ``[:3]`` of a stacked image; the motion channels
    are left as they are (ultralytics' own skips every image with more than 3 channels)."""

    def apply_image(self, labels: dict[str, Any], params: dict[str, Any] | None = None) -> dict[str, Any]:
        img = labels["img"]
        if img.ndim != 3 or img.shape[-1] <= 3:
            return super().apply_image(labels, params)
        colour = {"img": np.ascontiguousarray(img[..., :3])}
        img[..., :3] = super().apply_image(colour, params)["img"]
        return labels


class ClearMotionPadding:
    """Transform: no motion (0) where ultralytics padded a stacked image (:func:`csfnet.temporal.clear_padding`)."""

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        clear_padding(labels["img"])
        return labels


class StackedDataset(YOLODataset):
    """``YOLODataset`` whose images are stacked with their motion channels (``data["motion"]``, read by
    :func:`csfnet.temporal.dataset_motion`); ``data["channels"]`` must be 3 + the motion channels."""

    def __init__(self, *args: Any, data: dict, **kwargs: Any) -> None:
        self.motion = dataset_motion(data)
        if self.motion is None:
            raise ValueError("StackedDataset needs a dataset with motion channels (data.yaml 'motion')")
        if data.get("channels") != 3 + self.motion.channels:
            raise ValueError(f"data.yaml channels {data.get('channels')} != 3 + {self.motion.channels} motion")
        super().__init__(*args, data=data, **kwargs)

    def read_image(self, i: int) -> np.ndarray:
        """The stacked image ``i`` at source size (from its ``.npy`` copy with ``cache: disk``)."""
        if self.cache == "disk":
            self.cache_images_to_disk(i)
            if self._cached_on_disk(i):
                return np.load(self.npy_files[i])
        return load_stacked(self.im_files[i], self.motion)

    def cache_images_to_disk(self, i: int) -> None:
        """ultralytics' disk cache with the motion: the stacked image as ``.npy`` beside the image, rewritten when
        older than the image or its motion files, or holding another channel count (a single-frame run's)."""
        if self._cached_on_disk(i):
            return
        npy = self.npy_files[i]
        try:
            np.save(npy.as_posix(), load_stacked(self.im_files[i], self.motion), allow_pickle=False)
        except OSError:
            npy.unlink(missing_ok=True)  # read-only dataset folder: read the files each time instead

    def _cached_on_disk(self, i: int) -> bool:
        npy, image = self.npy_files[i], self.im_files[i]
        sources = [Path(image), *(motion_path(image, d) for d in self.motion.offsets)]
        if not npy.is_file() or npy.stat().st_mtime < max(f.stat().st_mtime for f in sources if f.exists()):
            return False
        try:
            return np.load(npy, mmap_mode="r").shape[2:] == (self.channels,)
        except (OSError, ValueError):
            return False

    def load_image(
        self, i: int, rect_mode: bool = True, resize_short: bool = False
    ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """Image ``i`` stacked with its motion, resized as ultralytics' ``BaseDataset.load_image`` resizes: the
        (original height, width) and the resized ones come with it; augmenting keeps recent images for mosaic."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        im = self.read_image(i)
        h0, w0 = im.shape[:2]
        im = _resize(im, self.imgsz, rect_mode, resize_short)
        if self.augment and self.cache != "ram":
            self.ims[i], self.im_hw0[i], self.im_hw[i] = im, (h0, w0), im.shape[:2]
            self.buffer.append(i)
            if 1 < len(self.buffer) >= self.max_buffer_length:
                j = self.buffer.pop(0)
                self.ims[j], self.im_hw0[j], self.im_hw[j] = None, None, None
        return im, (h0, w0), im.shape[:2]

    def build_transforms(self, hyp: IterableSimpleNamespace | None = None) -> Compose:
        """ultralytics' transforms with :class:`ColourHSV` in place of ``RandomHSV`` and :class:`ClearMotionPadding`
        after the geometric ones: before the colour jitter (which moves the padding's grey off 114), else before
        ``Format``."""
        transforms = super().build_transforms(hyp)
        steps = transforms.transforms
        hsv = [i for i, t in enumerate(steps) if type(t) is RandomHSV]
        for i in hsv:
            steps[i] = ColourHSV(steps[i].hgain, steps[i].sgain, steps[i].vgain)
        steps.insert(hsv[0] if hsv else len(steps) - 1, ClearMotionPadding())
        return transforms


def plotted(batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` as ultralytics' ``plot_images`` should draw it: a stacked batch (BGR + motion, not flipped by
    ``Format``) as its colour channels in RGB order (``plot_images`` keeps the first 3 channels as they are, which
    shows a stacked image's blue as red); a 3-channel batch as it is."""
    img = batch["img"]
    return {**batch, "img": img[:, [2, 1, 0]]} if img.shape[1] > 3 else batch


def _resize(im: np.ndarray, imgsz: int | tuple[int, int], rect_mode: bool, resize_short: bool) -> np.ndarray:
    """ultralytics' load-time resize: the long (or, with ``resize_short``, the short) side to ``imgsz`` keeping the
    aspect ratio, or stretched to a fixed (height, width) when not ``rect_mode``."""
    h0, w0 = im.shape[:2]
    shape = tuple(imgsz) if isinstance(imgsz, (tuple, list)) else (imgsz, imgsz)
    size = max(shape)
    if rect_mode:
        r = size / (min(h0, w0) if resize_short else max(h0, w0))
        if r != 1:
            if resize_short:
                w, h = (int(np.ceil(w0 * r)), size) if h0 < w0 else (size, int(np.ceil(h0 * r)))
            else:
                w, h = min(int(np.ceil(w0 * r)), size), min(int(np.ceil(h0 * r)), size)
            im = cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)
    elif (h0, w0) != shape:
        im = cv2.resize(im, shape[::-1], interpolation=cv2.INTER_LINEAR)
    return im


def build_dataset(
    cfg: IterableSimpleNamespace,
    img_path: str | list[str],
    batch: int | None,
    data: dict[str, Any],
    mode: str = "train",
    rect: bool = False,
    stride: int = 32,
    fraction: float | None = None,
) -> YOLODataset:
    """ultralytics' ``build_yolo_dataset`` for single-frame data; a :class:`StackedDataset` built the same way for a
    dataset with motion channels."""
    if dataset_motion(data) is None:
        return build_yolo_dataset(cfg, img_path, batch, data, mode=mode, rect=rect, stride=stride, fraction=fraction)
    if data.get("complete"):
        fraction = 1.0
    elif fraction is None:
        fraction = get_split_fraction(cfg.fraction, "train" if mode == "train" else cfg.split)
    return StackedDataset(
        img_path=img_path,
        imgsz=cfg.imgsz,
        batch_size=batch,
        augment=mode == "train",
        hyp=cfg,
        rect=cfg.rect or rect,
        cache=cfg.cache or None,
        single_cls=cfg.single_cls or False,
        stride=stride,
        pad=0.0 if mode == "train" else 0.5,
        prefix=colorstr(f"{mode}: "),
        task=cfg.task,
        classes=cfg.classes,
        data=data,
        fraction=fraction,
    )
