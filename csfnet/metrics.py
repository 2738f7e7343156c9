"""Detection metrics shared by evaluation, sliced evaluation, comparison and re-validation.

One matcher (:func:`match`), one AP (:func:`average_precision_sorted` and its per-image form
:func:`average_precision`), AP50 and recall by size band (:func:`band_metrics`), and the two intervals of a
comparison. A configuration's score varies with the training seed and with the validation images drawn.
:func:`seed_interval` covers the first (Student-t over seeds); :func:`paired_bootstrap` the second, resampling the
same validation images for both sides of a difference so that image difficulty cancels out.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.utils.metrics import box_iou, compute_ap

from csfnet.errors import DataError
from csfnet.files import atomic_path

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10).numpy()  # ultralytics' DetectionValidator.iouv, float32 and all
METRICS = {"map50": [0], "map50_95": list(range(10))}  # metric -> tp columns it needs
BAND_NAMES = ("very_tiny", "tiny", "small", "medium", "large")  # AI-TOD's names, then band<i>
_EPS = 1e-16  # ultralytics' ap_per_class eps


def match(gt: np.ndarray, boxes: np.ndarray, scores: np.ndarray, thresholds: Sequence[float] = (0.5,)) -> np.ndarray:
    """Match one image's predictions (xyxy ``boxes`` with ``scores``) to its ground truth (xyxy ``gt``).

    Returns ``(predictions, thresholds)`` ints: the index of the ground truth each prediction takes at each IoU
    threshold, -1 for none. Predictions by descending score (ties in input order) each take the unclaimed ground
    truth of highest IoU, if that IoU reaches the threshold: COCO's rule and ultralytics' detect validator's
    (single class).
    """
    gt = np.asarray(gt, dtype=np.float32).reshape(-1, 4)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    matched = np.full((len(boxes), len(thresholds)), -1, dtype=np.int64)
    if not len(gt) or not len(boxes):
        return matched
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(gt)).numpy()  # (predictions, ground truth)
    claimed = np.zeros((len(gt), len(thresholds)), dtype=bool)
    columns = np.arange(len(thresholds))
    order = np.argsort(-np.asarray(scores).reshape(-1), kind="stable")
    for i in order[iou[order].max(1) >= thresholds.min()]:  # predictions overlapping nothing match nothing
        available = np.where(claimed, -1.0, iou[i, :, None])  # IoU with each unclaimed target, per threshold
        k = available.argmax(0)
        hit = available[k, columns] >= thresholds
        matched[i, hit] = k[hit]
        claimed[k[hit], columns[hit]] = True
    return matched


def average_precision_sorted(tp: np.ndarray, n_gt: float) -> float:
    """ultralytics' interpolated AP of one IoU threshold: ``tp`` flags of the predictions by descending confidence,
    ``n_gt`` ground-truth boxes; 0 without ground truth or hits.

    False positives after the last true positive are left out: they sit at the final recall, where compute_ap's
    curve already drops to its closing 0, so they cannot change the AP (low-confidence tails are most predictions).
    """
    hits = np.flatnonzero(tp)
    if n_gt <= 0 or not len(hits):
        return 0.0
    tpc = np.cumsum(tp[: hits[-1] + 1], dtype=np.float64)
    recall, precision = tpc / (n_gt + _EPS), tpc / np.arange(1, len(tpc) + 1, dtype=np.float64)  # tpc / (tpc + fpc)
    return float(compute_ap(recall, precision)[0])


def band_ranges(edges: Sequence[float]) -> list[tuple[str, float, float]]:
    """``(name, low, high)`` of the size bands that ``edges`` (sqrt of box area, px) cut; the last is open."""
    bounds = [0.0, *edges, math.inf]
    names = [BAND_NAMES[i] if i < len(BAND_NAMES) else f"band{i}" for i in range(len(bounds) - 1)]
    return [(names[i], bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


def _sqrt_area(boxes: np.ndarray) -> np.ndarray:
    """Square root of the area of xyxy ``boxes``: the size that bands compare."""
    return np.sqrt(np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None))


def band_metrics(
    truths: Sequence[tuple[np.ndarray, Any]],
    predictions: Sequence[tuple[np.ndarray, np.ndarray]],
    edges: Sequence[float],
    report_conf: float,
) -> dict[str, dict[str, float]]:
    """AP50 (COCO-style area ranges) and recall at ``report_conf`` per size band of the ground truth.

    ``truths``: (boxes xyxy, classes) per image; ``predictions``: (boxes xyxy, scores) per image. A prediction
    matched to a ground truth of another band counts in neither; an unmatched one counts where its own size falls
    (:meth:`ImageMatches.band`).
    """
    return bands_of(match_images([gt for gt, _ in truths], predictions), edges, report_conf)


def bands_of(m: ImageMatches, edges: Sequence[float], report_conf: float) -> dict[str, dict[str, float]]:
    """:func:`band_metrics` of already matched detections (with sizes: :func:`match_images`)."""
    out = {}
    for name, lo, hi in band_ranges(edges):
        band = m.band(lo, hi)
        n_gt = int(band.n_gt.sum())
        hits = int((band.tp[:, 0] & (band.conf >= report_conf)).sum())
        out[name] = {
            "px": [lo, hi if math.isfinite(hi) else None],  # sqrt of box area in source pixels, [lo, hi)
            "objects": n_gt,
            "ap50": average_precision(band)["map50"],
            "recall": hits / n_gt if n_gt else 0.0,
        }
    return out


@dataclass(frozen=True)
class Interval:
    """A mean with a confidence interval; ``n`` samples (seeds) or images behind it. Bounds are nan when unknown."""

    mean: float
    low: float
    high: float
    n: int

    def to_json(self) -> dict:
        """``{"mean", "low", "high", "n"}``, rounded to 5 decimals, nan written as null."""
        return {"mean": _round(self.mean), "low": _round(self.low), "high": _round(self.high), "n": int(self.n)}


def _round(x: float) -> float | None:
    return None if math.isnan(x) else round(float(x), 5)


@dataclass(eq=False)
class ImageMatches:
    """Detections of one model on one validation split, matched to ground truth per image (single class, like
    ultralytics' detect validator).

    ``size``, ``gt_image`` and ``gt_size`` place detections and targets in size bands (:meth:`band`); matches
    saved before they existed load with None there.
    """

    image: np.ndarray  # (P,) int: image index of each prediction
    conf: np.ndarray  # (P,) float
    tp: np.ndarray  # (P, 10) bool: true positive at IoU 0.50, 0.55 ... 0.95
    n_gt: np.ndarray  # (N,) int: ground-truth boxes per image (N = images)
    size: np.ndarray | None = None  # (P,) float: sqrt area of the target matched at IoU 0.5, else the prediction's
    gt_image: np.ndarray | None = None  # (G,) int: image index of each ground-truth box
    gt_size: np.ndarray | None = None  # (G,) float: sqrt area of each ground-truth box

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.int64).reshape(-1)
        self.conf = np.asarray(self.conf, dtype=np.float64).reshape(-1)
        self.tp = np.asarray(self.tp, dtype=bool).reshape(-1, len(IOU_THRESHOLDS))
        self.n_gt = np.asarray(self.n_gt, dtype=np.int64).reshape(-1)
        if not len(self.image) == len(self.conf) == len(self.tp):
            raise ValueError(f"image, conf and tp lengths differ: {len(self.image)}, {len(self.conf)}, {len(self.tp)}")
        if len(self.image) and (self.image.min() < 0 or self.image.max() >= len(self.n_gt)):
            raise ValueError(f"image indices must lie in [0, {len(self.n_gt)})")
        if (self.size is None) != (self.gt_size is None) or (self.gt_size is None) != (self.gt_image is None):
            raise ValueError("size, gt_image and gt_size come together")
        if self.size is not None:
            self.size = np.asarray(self.size, dtype=np.float64).reshape(-1)
            self.gt_image = np.asarray(self.gt_image, dtype=np.int64).reshape(-1)
            self.gt_size = np.asarray(self.gt_size, dtype=np.float64).reshape(-1)
            if len(self.size) != len(self.image) or len(self.gt_size) != len(self.gt_image):
                raise ValueError("one size per prediction and one gt_size per gt_image")
            if not np.array_equal(np.bincount(self.gt_image, minlength=len(self.n_gt)), self.n_gt):
                raise ValueError("gt_image does not count n_gt ground-truth boxes per image")

    @property
    def images(self) -> int:
        """Number of validation images."""
        return len(self.n_gt)

    @property
    def sized(self) -> bool:
        """Whether the matches carry the sizes :meth:`band` needs."""
        return self.size is not None

    def band(self, lo: float, hi: float) -> ImageMatches:
        """The matches of one size band ``[lo, hi)`` (sqrt of box area, px), COCO's area-range rule: its targets;
        predictions matched at IoU 0.5 to one of them, or matched to none and themselves of that size. AP50 of the
        result is the band's AP50 (the band is decided at IoU 0.5; the stricter columns are kept as matched).

        Raises:
            DataError: The matches carry no sizes (saved before they were stored): score the model again.
        """
        if not self.sized:
            raise DataError("these matches carry no box sizes (saved by an older csfnet): score the model again")
        keep = (self.size >= lo) & (self.size < hi)
        in_band = (self.gt_size >= lo) & (self.gt_size < hi)
        gt_image, gt_size = self.gt_image[in_band], self.gt_size[in_band]
        n_gt = np.bincount(gt_image, minlength=self.images)
        return ImageMatches(self.image[keep], self.conf[keep], self.tp[keep], n_gt, self.size[keep], gt_image, gt_size)

    @functools.cached_property
    def _sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """(image, tp) of the predictions by descending confidence, computed once."""
        order = np.argsort(-self.conf, kind="stable")
        return self.image[order], self.tp[order]

    def save(self, path: str | Path) -> Path:
        """Write ``path`` (.npz, compressed), all or nothing."""
        path = Path(path)
        arrays = {k: getattr(self, k) for k in _FIELDS if getattr(self, k) is not None}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: numpy adds no .npz suffix
            np.savez_compressed(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ImageMatches:
        """Read what :meth:`save` wrote (older files without sizes too)."""
        with np.load(Path(path), allow_pickle=False) as f:
            return cls(**{k: f[k] for k in _FIELDS if k in f.files})


_FIELDS = ("image", "conf", "tp", "n_gt", "size", "gt_image", "gt_size")


def match_images(truths: Sequence[np.ndarray], predictions: Sequence[tuple[np.ndarray, np.ndarray]]) -> ImageMatches:
    """Match each image's predictions (boxes xyxy, scores) to its ground truth (xyxy) at the 10 IoU thresholds of
    mAP50-95 (:func:`match`), with the sizes that place them in size bands."""
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} ground-truth images but {len(predictions)} prediction images")
    images, confs, tps, sizes, gt_images, gt_sizes = [], [], [], [], [], []
    for i, (gt, (boxes, scores)) in enumerate(zip(truths, predictions)):
        gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)  # sizes at label precision: a box of exactly 8 px is 8
        boxes, scores = np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(scores).reshape(-1)
        order = np.argsort(-scores, kind="stable")
        boxes, scores = boxes[order], scores[order]
        matched = match(gt, boxes, scores, IOU_THRESHOLDS)
        gt_size, taken = _sqrt_area(gt), matched[:, 0]
        size = np.where(taken >= 0, gt_size[np.maximum(taken, 0)] if len(gt) else 0.0, _sqrt_area(boxes))
        images.append(np.full(len(scores), i)), confs.append(scores), tps.append(matched >= 0), sizes.append(size)
        gt_images.append(np.full(len(gt), i)), gt_sizes.append(gt_size)
    empty = np.zeros(0)
    return ImageMatches(
        image=np.concatenate(images) if images else np.zeros(0, np.int64),
        conf=np.concatenate(confs) if confs else empty,
        tp=np.concatenate(tps) if tps else np.zeros((0, len(IOU_THRESHOLDS)), bool),
        n_gt=np.array([len(g) for g in gt_images], dtype=np.int64),
        size=np.concatenate(sizes) if sizes else empty,
        gt_image=np.concatenate(gt_images) if gt_images else np.zeros(0, np.int64),
        gt_size=np.concatenate(gt_sizes) if gt_sizes else empty,
    )


def average_precision(m: ImageMatches, weights: np.ndarray | None = None) -> dict[str, float]:
    """``{"map50", "map50_95"}`` of ``m``, ultralytics' interpolation; ``weights`` counts each image (a bootstrap
    resample's multiplicities: the same AP as physically repeating the images), None for all once."""
    ap = _ap(m, weights, METRICS["map50_95"])
    return {"map50": float(ap[0]), "map50_95": float(ap.mean())}


def _ap(m: ImageMatches, weights: np.ndarray | None, columns: list[int]) -> np.ndarray:
    """AP at the IoU thresholds ``columns``; 0 without ground truth or predictions (as ultralytics reports)."""
    image, tp = m._sorted
    if weights is None:
        n_gt = m.n_gt.sum()
        tp = tp[:, columns]
    else:
        weights = np.asarray(weights)
        if len(weights) != m.images:
            raise ValueError(f"{len(weights)} weights for {m.images} images")
        n_gt = (weights * m.n_gt).sum()
        tp = np.repeat(tp[:, columns], weights[image], axis=0)  # repeated images' predictions stay adjacent
    if n_gt == 0 or not len(tp):
        return np.zeros(len(columns))
    return np.array([average_precision_sorted(tp[:, j], n_gt) for j in range(len(columns))])


def false_positives_per_image(m: ImageMatches, conf: float, weights: np.ndarray | None = None) -> float:
    """Predictions scoring at least ``conf`` that match no ground truth (at IoU 0.5), per image; ``weights`` counts
    each image as in :func:`average_precision`."""
    fp = np.bincount(m.image[(m.conf >= conf) & ~m.tp[:, 0]], minlength=m.images)
    w = np.ones(m.images) if weights is None else np.asarray(weights, dtype=np.float64)
    return float((w * fp).sum() / w.sum()) if w.sum() else 0.0


def seed_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean over seeds with a two-sided Student-t interval; one value has no spread: nan bounds."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not len(x):
        raise ValueError("seed_interval needs at least one value")
    mean = float(x.mean())
    if len(x) == 1:
        return Interval(mean, math.nan, math.nan, 1)
    from scipy import stats  # here, not at the top: every stage imports this module, few need scipy.stats (0.7 s)

    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return Interval(mean, mean - half, mean + half, len(x))


def paired_bootstrap(
    rows: Sequence[ImageMatches],
    reference: Sequence[ImageMatches],
    metric: str | Callable[[ImageMatches, np.ndarray | None], float] = "map50",
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Difference of ``metric`` (mean over the seeds of ``rows``) - (mean over the seeds of ``reference``), with a
    bootstrap interval over validation images, both sides scored on the same resampled images.

    ``metric``: a name of :data:`METRICS`, or ``score(matches, weights)`` for any other per-image statistic (e.g.
    :func:`false_positives_per_image`). BCa interval, percentile where BCa is undefined (a degenerate distribution);
    ``mean`` is the difference on all images, ``n`` the number of images.
    """
    if callable(metric):
        score = metric
    elif metric in METRICS:
        columns = METRICS[metric]

        def score(m: ImageMatches, weights: np.ndarray | None) -> float:
            return float(_ap(m, weights, columns).mean())
    else:
        raise ValueError(f"metric must be one of {sorted(METRICS)} or a function, got {metric!r}")
    rows, reference = list(rows), list(reference)
    if not rows or not reference:
        raise ValueError("paired_bootstrap needs at least one ImageMatches on each side")
    counts = [m.images for m in rows], [m.images for m in reference]
    if len(set(counts[0] + counts[1])) != 1:
        raise DataError(f"paired comparison needs the same validation images: image counts {counts[0]} vs {counts[1]}")
    n = counts[0][0]
    if n < 2:
        raise DataError(f"a bootstrap over images needs at least 2 validation images, got {n}")

    def difference(weights: np.ndarray | None) -> float:
        side = [float(np.mean([score(m, weights) for m in ms])) for ms in (rows, reference)]
        return side[0] - side[1]

    def statistic(sample: np.ndarray) -> float:
        return difference(np.bincount(sample, minlength=n))

    from scipy import stats  # see seed_interval

    common = {"statistic": statistic, "vectorized": False, "confidence_level": confidence, "batch": 256}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = stats.bootstrap(
            (np.arange(n),), n_resamples=resamples, method="BCa", rng=np.random.default_rng(seed), **common
        )
    ci = result.confidence_interval
    degenerate = any(issubclass(w.category, stats.DegenerateDataWarning) for w in caught)
    if degenerate or math.isnan(ci.low) or math.isnan(ci.high):  # percentile of the same resamples, no new draws
        ci = stats.bootstrap(
            (np.arange(n),), n_resamples=0, method="percentile", bootstrap_result=result, **common
        ).confidence_interval
    else:  # warnings of a BCa that failed are answered by the fallback; any others reach the caller
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return Interval(difference(None), float(ci.low), float(ci.high), n)
