"""The motion cue: per frame, the absolute difference to each earlier frame after aligning it to the current one.

One function, :func:`motion_map`, computes it for extraction, ``csfnet detect`` and serving (through
:class:`MotionBuffer`, a per-stream ring buffer), so training and inference cannot drift.

Method, per earlier frame (``spec.offsets[i]`` source frames back):

1. Both frames become grayscale and are lightly blurred (3x3 Gaussian), at full size.
2. The camera motion is estimated on copies resized (area interpolation) so that the longest side is at most
   ``spec.align_size``: Shi-Tomasi corners of the earlier frame are tracked into the current one with pyramidal
   Lucas-Kanade, and ``spec.align`` fits ``homography`` (``cv2.findHomography``, RANSAC), ``affine`` (rotation,
   uniform scale and shift, ``cv2.estimateAffinePartial2D``, RANSAC) or ``translation`` (the median track, tracks
   within 1 px of it are inliers); ``none`` takes the identity. Where the tracks cannot fit the model (smooth sky
   with too few corners, noise), a global shift is estimated from the intensities instead: phase correlation
   initialises ECC (``cv2.findTransformECC``, translation), accepted when its correlation is at least
   :data:`MIN_ECC_CORRELATION`. The transform is scaled back to full size.
   The inlier tracks are then re-tracked on the full-size (blurred) frames from where that transform puts them and
   the model is refitted there (the estimation size bounds the cost, not the accuracy).
3. The earlier frame is warped onto the current one (``cv2.warpPerspective``, bilinear) and the absolute difference
   taken; pixels the warp left without content (plus a 2 px margin) are 0.
4. Normalisation to uint8: ``min(|diff| * GAIN, 255)`` with :data:`GAIN` = 4 (a difference of 64 grey levels or
   more saturates; a static, well-aligned scene stays near 0).

Fallback, never a crash: a channel is all zeros when its earlier frame is missing (the first frames of a stream),
has another size (a cut or a new stream), or the alignment fails (the tracks fit no model, with fewer than
:data:`MIN_INLIERS` inliers or fewer than :data:`MIN_INLIER_SHARE` of the tracks, and the intensity-based shift does
not converge or correlates less than :data:`MIN_ECC_CORRELATION`; or the transform is implausible: not finite,
flipped, scaling the frame area by more than 2x, or moving it by more than half its size).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from csfnet.errors import DataError

ALIGN_METHODS = ("homography", "affine", "translation", "none")
GAIN = 4  # |difference| in grey levels -> map value (saturates at 64 levels)
BLUR = (3, 3)  # Gaussian kernel applied to both grayscale frames before differencing
MARGIN = 2  # px of the warped frame's border also zeroed (bilinear interpolation mixes in the outside there)
MAX_CORNERS = 200
MIN_INLIERS = 8
MIN_INLIER_SHARE = 0.3
PAD_VALUE = 114  # what ultralytics fills every channel with: mosaic canvas, affine borders, letterbox
RANSAC_THRESHOLD = 1.0  # px at the estimation size
RANSAC_ITERATIONS = 500  # finds a model held by 30 % of the tracks with 98 % probability (homography)
LK_CRITERIA = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)
MIN_ECC_CORRELATION = 0.75  # of the intensity-based shift (ECC's enhanced correlation coefficient, 1 = identical)
MIN_PHASE_RESPONSE = 0.1  # phase correlation peaks weaker than this do not initialise ECC (it starts at no shift)


@dataclass(frozen=True)
class MotionSpec:
    """Which earlier frames give motion channels and how they are aligned (params.yaml ``temporal``)."""

    offsets: tuple[int, ...]
    align: str = "homography"
    align_size: int = 320

    def __post_init__(self) -> None:
        offsets = tuple(int(o) for o in self.offsets)
        object.__setattr__(self, "offsets", offsets)
        if not offsets or any(o < 1 for o in offsets) or list(offsets) != sorted(set(offsets)):
            raise DataError(f"motion offsets must be unique, ascending and >= 1, got {list(offsets)}")
        if self.align not in ALIGN_METHODS:
            raise DataError(f"motion align {self.align!r} is not one of {', '.join(ALIGN_METHODS)}")
        if int(self.align_size) < 32:
            raise DataError(f"motion align_size must be >= 32 px, got {self.align_size}")

    @property
    def channels(self) -> int:
        """Motion channels (one per offset)."""
        return len(self.offsets)

    def to_dict(self) -> dict[str, Any]:
        """``{"offsets": [...], "align": ..., "align_size": ...}`` (data.yaml, checkpoints, model metadata)."""
        return {"offsets": list(self.offsets), "align": self.align, "align_size": int(self.align_size)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MotionSpec:
        """Inverse of :meth:`to_dict`; DataError naming what is wrong."""
        try:
            return cls(tuple(data["offsets"]), str(data["align"]), int(data["align_size"]))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"motion spec {dict(data)!r} needs offsets, align and align_size ({e})") from None

    @classmethod
    def from_settings(cls, settings: Any) -> MotionSpec | None:
        """The spec of ``settings.temporal`` (a :class:`csfnet.settings.Settings`); None when offsets are empty."""
        t = settings.temporal
        return cls(tuple(t.offsets), t.align, t.align_size) if t.offsets else None


@dataclass(frozen=True)
class _Prepared:
    """A frame ready for differencing (blurred grayscale, full size) and for alignment (resized copy)."""

    gray: np.ndarray
    small: np.ndarray


def _prepare(frame: np.ndarray, spec: MotionSpec) -> _Prepared:
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape
    scale = min(1.0, spec.align_size / max(h, w))
    small = gray
    if scale < 1.0:
        small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return _Prepared(cv2.GaussianBlur(gray, BLUR, 0), small)


def motion_map(current: np.ndarray, earlier: Sequence[np.ndarray | None], spec: MotionSpec) -> np.ndarray:
    """Motion channels of ``current`` (BGR uint8 HxWx3): channel i from ``earlier[i]``, the frame ``spec.offsets[i]``
    source frames before (None: not available). Returns HxWxk uint8; a channel whose earlier frame is None, of
    another size, or cannot be aligned is all zeros (see the module docstring). Pure and deterministic."""
    if len(earlier) != spec.channels:
        raise ValueError(f"motion_map needs {spec.channels} earlier frames (offsets {list(spec.offsets)})")
    prepared = [None if e is None else _prepare(e, spec) for e in earlier]
    return _motion(_prepare(current, spec), prepared, spec)


def _motion(current: _Prepared, earlier: Sequence[_Prepared | None], spec: MotionSpec) -> np.ndarray:
    h, w = current.gray.shape
    out = np.zeros((h, w, len(earlier)), np.uint8)
    for i, prev in enumerate(earlier):
        if prev is None or prev.gray.shape != current.gray.shape:
            continue
        transform = _transform(prev, current, spec.align)
        if transform is not None:
            out[..., i] = _aligned_difference(prev.gray, current.gray, transform)
    return out


def _transform(earlier: _Prepared, current: _Prepared, align: str) -> np.ndarray | None:
    """3x3 matrix mapping full-size pixel coordinates of ``earlier`` onto ``current``; None when alignment fails.

    Estimated at the small size, then the inlier tracks are re-tracked on the blurred full-size frames from where
    that transform puts them and the model is refitted (so the estimation size bounds the cost, not the
    accuracy)."""
    if align == "none":
        return np.eye(3)
    (sh, sw), (h, w) = current.small.shape, current.gray.shape
    sx, sy = sw / w, sh / h
    to_small = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])  # pixel-centre convention
    fitted = _fit(*_track(earlier.small, current.small), align)
    small = fitted[0] if fitted else _estimate_shift(earlier.small, current.small)
    if small is None:
        return None
    full = np.linalg.inv(to_small) @ small @ to_small
    full /= full[2, 2]
    if fitted:
        inliers = fitted[1]
        p0 = cv2.perspectiveTransform(inliers.reshape(-1, 1, 2).astype(np.float64), np.linalg.inv(to_small))
        guess = cv2.perspectiveTransform(p0, full)
        p0, guess = p0.astype(np.float32), guess.astype(np.float32)
        p1, status, _ = cv2.calcOpticalFlowPyrLK(
            earlier.gray, current.gray, p0, guess, winSize=(15, 15), maxLevel=1, criteria=LK_CRITERIA,
            flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
        )  # fmt: skip
        ok = status.ravel() == 1
        refined = _fit(p0.reshape(-1, 2)[ok], p1.reshape(-1, 2)[ok], align)
        if refined is not None and _plausible(refined[0], w, h):
            return refined[0]
    return full if _plausible(full, w, h) else None


def _track(earlier: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shi-Tomasi corners of ``earlier`` and where pyramidal Lucas-Kanade finds them in ``current`` (N x 2 each)."""
    corners = cv2.goodFeaturesToTrack(earlier, MAX_CORNERS, 0.01, 5, blockSize=5)
    if corners is None or len(corners) < MIN_INLIERS:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    tracked, status, _ = cv2.calcOpticalFlowPyrLK(
        earlier, current, corners, None, winSize=(21, 21), maxLevel=3, criteria=LK_CRITERIA
    )
    ok = status.ravel() == 1
    return corners.reshape(-1, 2)[ok], tracked.reshape(-1, 2)[ok]


def _fit(p0: np.ndarray, p1: np.ndarray, align: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The ``align`` model mapping ``p0`` to ``p1`` (3x3) and its inlier points of ``p0``; None when fewer than
    MIN_INLIERS or MIN_INLIER_SHARE of the tracks agree."""
    if len(p0) < MIN_INLIERS:
        return None
    if align == "translation":
        shift = np.median(p1 - p0, axis=0)
        inliers = np.linalg.norm(p1 - p0 - shift, axis=1) <= RANSAC_THRESHOLD
        shift = (p1 - p0)[inliers].mean(axis=0) if inliers.any() else shift
        matrix = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]], float)
    elif align == "affine":
        affine, inliers = cv2.estimateAffinePartial2D(
            p0, p1, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_THRESHOLD, maxIters=RANSAC_ITERATIONS,
            confidence=0.995,
        )  # fmt: skip
        matrix = None if affine is None else np.vstack([affine, [0, 0, 1]])
    else:
        matrix, inliers = cv2.findHomography(
            p0, p1, cv2.RANSAC, RANSAC_THRESHOLD, maxIters=RANSAC_ITERATIONS, confidence=0.995
        )
    if matrix is None or inliers is None:
        return None
    mask = np.asarray(inliers).ravel().astype(bool)
    count = int(mask.sum())
    if count < MIN_INLIERS or count < MIN_INLIER_SHARE * len(p0):
        return None
    return matrix.astype(float), p0[mask]


def _estimate_shift(earlier: np.ndarray, current: np.ndarray) -> np.ndarray | None:
    """Global translation from the intensities (for frames whose corners cannot be tracked), or None."""
    a, b = earlier.astype(np.float32), current.astype(np.float32)
    if min(a.shape) < 8 or a.std() < 1e-3 or b.std() < 1e-3:
        return None  # flat: no intensity structure to align on
    window = cv2.createHanningWindow(a.shape[::-1], cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(a, b, window)
    start = np.float32([[1, 0, -dx], [0, 1, -dy]]) if response >= MIN_PHASE_RESPONSE else np.eye(2, 3, dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
    try:  # warp maps current -> earlier coordinates (current is the template)
        correlation, warp = cv2.findTransformECC(b, a, start, cv2.MOTION_TRANSLATION, criteria, None, 3)
    except cv2.error:  # did not converge
        return None
    if not np.isfinite(correlation) or correlation < MIN_ECC_CORRELATION:
        return None
    return np.array([[1, 0, -warp[0, 2]], [0, 1, -warp[1, 2]], [0, 0, 1]], float)


def _plausible(matrix: np.ndarray, w: int, h: int) -> bool:
    """Finite, orientation-preserving, area within 0.5-2x and moving the frame less than half its size."""
    if not np.all(np.isfinite(matrix)):
        return False
    corners = np.array([[0, 0], [w, 0], [w, h], [0, h]], np.float64).reshape(-1, 1, 2)
    moved = cv2.perspectiveTransform(corners, matrix).reshape(-1, 2)
    if not np.all(np.isfinite(moved)):
        return False
    x, y = moved[:, 0], moved[:, 1]
    area = 0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))  # > 0: same orientation
    if not 0.5 * w * h <= area <= 2 * w * h or not cv2.isContourConvex(moved.astype(np.float32)):
        return False
    return bool(np.abs(moved - corners.reshape(-1, 2)).max() <= 0.5 * max(w, h))


def _aligned_difference(earlier: np.ndarray, current: np.ndarray, transform: np.ndarray) -> np.ndarray:
    h, w = current.shape
    warped = cv2.warpPerspective(earlier, transform, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    diff = cv2.absdiff(current, warped)
    out = np.minimum(diff.astype(np.uint16) * GAIN, 255).astype(np.uint8)
    if not np.allclose(transform, np.eye(3)):
        valid = cv2.warpPerspective(np.full((h, w), 255, np.uint8), transform, (w, h), flags=cv2.INTER_NEAREST)
        valid = cv2.erode(valid, np.ones((2 * MARGIN + 1, 2 * MARGIN + 1), np.uint8), borderValue=0)
        out[valid == 0] = 0
    return out


class MotionBuffer:
    """Per-stream ring buffer: push every source frame in order (also those a stride skips); each push returns
    that frame's motion channels (HxWxk uint8), equal to :func:`motion_map` with the frames pushed before."""

    def __init__(self, spec: MotionSpec) -> None:
        self.spec = spec
        self._frames: deque[_Prepared] = deque(maxlen=max(spec.offsets))

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Motion channels of ``frame`` (BGR uint8 HxWx3), then remember it for the frames after."""
        current = _prepare(frame, self.spec)
        held = len(self._frames)
        earlier = [self._frames[held - d] if d <= held else None for d in self.spec.offsets]
        motion = _motion(current, earlier, self.spec)
        self._frames.append(current)
        return motion

    def remember(self, frame: np.ndarray) -> None:
        """Hold ``frame`` as an earlier frame without computing its own motion (a frame a stride drops: its map is
        never used, the frames after it still need it)."""
        self._frames.append(_prepare(frame, self.spec))

    def reset(self) -> None:
        """Forget the frames pushed so far (a new stream or a cut)."""
        self._frames.clear()


def stack(frame: np.ndarray, motion: np.ndarray) -> np.ndarray:
    """HxWx(3+k) uint8: the colour channels of ``frame``, then the motion channels in offset order."""
    if motion.ndim == 2:
        motion = motion[..., None]
    if frame.shape[:2] != motion.shape[:2]:
        raise DataError(f"motion map {motion.shape[:2]} does not match the frame {frame.shape[:2]}")
    return np.concatenate([frame, motion], axis=2)


def clear_padding(image: np.ndarray, colour: int = 3) -> np.ndarray:
    """``image`` (HxWxC uint8, the colour then the motion channels) with the motion set to 0, no motion, wherever
    every channel holds :data:`PAD_VALUE`: the pixels ultralytics' mosaic, affine borders and letterbox invent.

    ultralytics pads all channels alike with grey 114; for a motion channel that reads as strong motion with sharp
    edges along every mosaic seam and border, which no real frame has. Training, validation, prediction and INT8
    calibration all pass their padded images through this function, so they see the same input. Changed in place
    (the array is returned); images with no motion channels are returned as they are."""
    if image.ndim == 3 and image.shape[2] > colour:
        padded = (image == PAD_VALUE).all(axis=2)
        image[padded, colour:] = 0
    return image
