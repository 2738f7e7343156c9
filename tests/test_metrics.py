"""Shared detection metrics: matching, weighted AP, size bands, seed intervals and the paired image bootstrap."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats
from ultralytics.engine.validator import BaseValidator
from ultralytics.utils.metrics import ap_per_class, box_iou, compute_ap

from csfnet.compare.predictions import image_matches
from csfnet.data.dataset import read_labels, split_images
from csfnet.errors import DataError
from csfnet.evaluate import validate
from csfnet.metrics import (
    ImageMatches,
    Interval,
    average_precision,
    band_metrics,
    match,
    match_images,
    paired_bootstrap,
    seed_interval,
)
from csfnet.settings import load_settings


def _scene(rng: np.random.Generator, images: int, per_image: int = 3) -> list[np.ndarray]:
    """Ground truth: ``per_image`` random boxes (xyxy, 4-30 px) per image of 200x200."""
    out = []
    for _ in range(images):
        xy, wh = rng.uniform(0, 160, (per_image, 2)), rng.uniform(4, 30, (per_image, 2))
        out.append(np.hstack([xy, xy + wh]))
    return out


def _jittered(rng: np.random.Generator, truths: list[np.ndarray], miss: float = 0.3, false: int = 4) -> list:
    """Predictions: each ground-truth box jittered (some missed), plus ``false`` random boxes, distinct scores."""
    out = []
    for gt in truths:
        keep = gt[rng.random(len(gt)) > miss]
        scale = (keep[:, 2:] - keep[:, :2]).repeat(2, 1)
        hits = keep + rng.normal(0, 0.12, keep.shape) * scale
        xy = rng.uniform(0, 180, (false, 2))
        boxes = np.vstack([hits, np.hstack([xy, xy + rng.uniform(4, 20, (false, 2))])])
        scores = np.concatenate([rng.uniform(0.3, 1, len(hits)), rng.uniform(0.001, 0.7, false)])
        out.append((boxes, scores))
    return out


def test_perfect_detector_scores_ultralytics_maximum() -> None:
    truths = _scene(np.random.default_rng(0), 5)
    scores = np.linspace(0.99, 0.5, 15)
    m = match_images(truths, [(gt, scores[3 * i : 3 * i + 3]) for i, gt in enumerate(truths)])
    assert m.tp.all() and m.n_gt.tolist() == [3] * 5
    # ultralytics' 101-point curve closes with precision 0 at recall 1, so its best AP is 0.995, not 1
    assert average_precision(m) == pytest.approx({"map50": 0.995, "map50_95": 0.995}, abs=1e-12)


def test_ap_by_hand() -> None:
    """3 targets; by confidence: hit (IoU 1), miss, hit with IoU 0.72 (a hit up to the 0.70 threshold).

    IoU 0.50-0.70: recall 1/3, 1/3, 2/3 and precision 1, 1/2, 2/3. ultralytics' envelope is 1 up to recall 1/3,
    2/3 up to 2/3, then 0; the trapezoid over recall 0, 0.01 ... 1 gives 0.33 + (1 + 2/3)/2 * 0.01 + 0.32 * 2/3
    + (2/3)/2 * 0.01 = 0.555. IoU 0.75-0.95: only the first hit counts: 0.33 + 0.005 = 0.335.
    """
    gt = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], float)
    boxes = np.array([[0, 0, 10, 10], [150, 150, 160, 160], [50, 50, 60, 57.2]], float)
    m = match_images([gt], [(boxes, np.array([0.9, 0.8, 0.7]))])
    assert m.tp.sum(1).tolist() == [10, 0, 5]
    ap = average_precision(m)
    assert ap["map50"] == pytest.approx(0.555, abs=1e-12)
    assert ap["map50_95"] == pytest.approx((5 * 0.555 + 5 * 0.335) / 10, abs=1e-12)


def test_weights_equal_duplicated_images_and_ultralytics_ap_per_class() -> None:
    rng = np.random.default_rng(1)
    truths = _scene(rng, 12)
    truths[4] = np.zeros((0, 4))  # a background image
    predictions = _jittered(rng, truths)
    m = match_images(truths, predictions)
    assert 0 < m.tp[:, 0].sum() < len(m.tp) and m.tp[:, 0].sum() > m.tp[:, -1].sum()
    reference = ap_per_class(m.tp, m.conf, np.zeros(len(m.conf)), np.zeros(m.n_gt.sum()))[5][0]
    ap = average_precision(m)
    assert ap == pytest.approx({"map50": reference[0], "map50_95": reference.mean()}, abs=1e-12)
    for _ in range(5):
        counts = np.bincount(rng.integers(0, 12, 12), minlength=12)
        copies = np.repeat(np.arange(12), counts)
        duplicated = match_images([truths[i] for i in copies], [predictions[i] for i in copies])
        assert average_precision(m, counts) == pytest.approx(average_precision(duplicated), abs=1e-12)
    assert average_precision(m, np.ones(12, int)) == pytest.approx(ap, abs=1e-12)


def test_save_load_round_trip(tmp_path) -> None:
    rng = np.random.default_rng(2)
    truths = _scene(rng, 4)
    m = match_images(truths, _jittered(rng, truths))
    back = ImageMatches.load(m.save(tmp_path / "m.npz"))
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    for field in ("image", "conf", "tp", "n_gt"):
        np.testing.assert_array_equal(getattr(back, field), getattr(m, field))
    assert average_precision(back) == average_precision(m)


def test_real_model_matches_agree_with_ultralytics_val(tiny_weights, tiny_data) -> None:
    s = load_settings().eval
    m = image_matches(tiny_weights, tiny_data, imgsz=64)
    images = split_images(tiny_data, "val")
    assert m.images == len(images) and m.n_gt.sum() == sum(len(read_labels(p)[0]) for p in images) > 0
    assert len(m.conf) and m.conf.min() >= s.conf
    val = validate(tiny_weights, tiny_data, 64, conf=s.conf, iou=s.iou, plots=False)
    ap = average_precision(m)  # the one-epoch model scores about 0: the test below checks real matching
    assert ap["map50"] == pytest.approx(val["map50"], abs=0.02)
    assert ap["map50_95"] == pytest.approx(val["map50_95"], abs=0.02)


def _validator_tp(gt: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Independent reference: ultralytics' detect validator's own matching of boxes sorted by confidence."""
    gt, boxes = np.asarray(gt, np.float32).reshape(-1, 4), np.asarray(boxes, np.float32).reshape(-1, 4)
    if not len(gt) or not len(boxes):
        return np.zeros((len(boxes), 10), bool)
    iou = box_iou(torch.from_numpy(gt), torch.from_numpy(boxes))
    validator = SimpleNamespace(iouv=torch.linspace(0.5, 0.95, 10))
    return BaseValidator.match_predictions(validator, torch.zeros(len(boxes)), torch.zeros(len(gt)), iou).numpy()


def test_real_ground_truth_jittered_agrees_with_independent_matching(tiny_data) -> None:
    """On the real validation frames: matches and AP50 agree with ultralytics' validator matching and AP,
    and a degraded copy scores lower with a bootstrap interval of non-zero width."""
    rng = np.random.default_rng(3)
    truths = [read_labels(p)[0] for p in split_images(tiny_data, "val")]
    predictions = _jittered(rng, truths, miss=0.2, false=3)
    m = match_images(truths, predictions)
    tp, conf = [], []
    for gt, (boxes, scores) in zip(truths, predictions):
        order = np.argsort(-scores, kind="stable")
        tp.append(_validator_tp(gt, boxes[order])), conf.append(scores[order])
    tp, conf = np.concatenate(tp), np.concatenate(conf)
    np.testing.assert_array_equal(m.tp, tp)
    reference = ap_per_class(tp, conf, np.zeros(len(conf)), np.zeros(m.n_gt.sum()))[5][0][0]
    assert average_precision(m)["map50"] == pytest.approx(reference)
    worse = ImageMatches(m.image, m.conf, m.tp & (m.image % 2 == 0)[:, None], m.n_gt)  # odd frames' hits lost
    diff = paired_bootstrap([m], [worse], resamples=300)
    assert diff.mean == pytest.approx(average_precision(m)["map50"] - average_precision(worse)["map50"])
    assert diff.mean > 0 and diff.low < diff.high and diff.n == m.images


def test_match_equals_validator_with_duplicates_and_ties() -> None:
    """Two boxes per target, boxes spanning two targets and tied scores: the one matcher takes each target once per
    threshold, exactly as ultralytics' validator does."""
    rng = np.random.default_rng(4)
    for gt in _scene(rng, 30, per_image=5):
        gt[1] = gt[0] + [6, 0, 6, 0]  # a neighbour overlapping the first target
        scale = (gt[:, 2:] - gt[:, :2]).repeat(2, 1)
        boxes = np.vstack([gt + rng.normal(0, 0.15, gt.shape) * scale for _ in range(2)])
        scores = np.round(rng.uniform(0, 1, len(boxes)), 1)  # many ties
        order = np.argsort(-scores, kind="stable")
        got = match(gt, boxes, scores, torch.linspace(0.5, 0.95, 10).numpy())
        np.testing.assert_array_equal(got[order] >= 0, _validator_tp(gt, boxes[order]))
        for column in got.T:  # each target at most once per threshold
            taken = column[column >= 0]
            assert len(taken) == len(set(taken.tolist()))


def test_band_metrics_by_hand() -> None:
    """Targets of 5 px (very tiny) and 20 px (small); a duplicate on the first, a false positive of 20 px."""
    gt = np.array([[0, 0, 5, 5], [50, 50, 70, 70]], float)
    boxes = np.array([[0, 0, 5, 5], [100, 100, 120, 120], [50, 50, 70, 70], [0, 0, 5, 6]], float)
    scores = np.array([0.9, 0.8, 0.3, 0.2])
    bands = band_metrics([(gt, np.zeros(2))], [(boxes, scores)], [8, 16, 32], report_conf=0.5)
    assert list(bands) == ["very_tiny", "tiny", "small", "medium"]
    assert bands["very_tiny"] == {"px": [0.0, 8], "objects": 1, "ap50": pytest.approx(0.995), "recall": 1.0}
    assert bands["tiny"] == {"px": [8, 16], "objects": 0, "ap50": 0.0, "recall": 0.0}
    small = compute_ap(np.array([0.0, 1.0]), np.array([0.0, 0.5]))[0]  # false positive first, then the hit
    assert bands["small"] == {"px": [16, 32], "objects": 1, "ap50": pytest.approx(small), "recall": 0.0}
    assert bands["medium"] == {"px": [32, None], "objects": 0, "ap50": 0.0, "recall": 0.0}


def test_band_matches_by_hand_and_older_files_without_sizes(tmp_path) -> None:
    """The scene above as matches: each band keeps its targets, the detections matched to them and the unmatched
    detections of its size; a file saved without sizes loads, and asking it for a band is a clear error."""
    gt = np.array([[0, 0, 5, 5], [50, 50, 70, 70]], float)
    boxes = np.array([[0, 0, 5, 5], [100, 100, 120, 120], [50, 50, 70, 70], [0, 0, 5, 6]], float)
    m = match_images([gt], [(boxes, np.array([0.9, 0.8, 0.3, 0.2]))])
    assert m.sized and m.gt_size.tolist() == [5.0, 20.0]
    tiny = m.band(0, 8)  # the hit at 0.9 and the duplicate at 0.2 (5x6 px, unmatched)
    assert tiny.conf.tolist() == pytest.approx([0.9, 0.2]) and tiny.tp[:, 0].tolist() == [True, False]
    assert tiny.n_gt.tolist() == [1] and tiny.gt_size.tolist() == [5.0]
    small = m.band(16, 32)  # the 20 px false positive at 0.8, then the hit at 0.3
    assert small.conf.tolist() == pytest.approx([0.8, 0.3]) and small.tp[:, 0].tolist() == [False, True]
    edge = match_images([np.array([[0.4, 0.4, 8.4, 8.4]])], [(np.zeros((0, 4)), np.zeros(0))])
    assert edge.band(8, 16).n_gt.tolist() == [1]  # exactly 8 px at label precision (7.9999995 in float32): tiny
    empty = m.band(8, 16)
    assert empty.n_gt.tolist() == [0] and not len(empty.conf) and average_precision(empty)["map50"] == 0.0

    back = ImageMatches.load(m.save(tmp_path / "m.npz"))
    for field in ("size", "gt_image", "gt_size"):
        np.testing.assert_array_equal(getattr(back, field), getattr(m, field))
    old = tmp_path / "old.npz"
    np.savez(old, image=m.image, conf=m.conf, tp=m.tp, n_gt=m.n_gt)  # what csfnet saved before sizes
    older = ImageMatches.load(old)
    assert not older.sized and average_precision(older) == average_precision(m)
    with pytest.raises(DataError, match="no box sizes"):
        older.band(0, 8)
    with pytest.raises(ValueError, match="gt_image does not count"):
        ImageMatches(m.image, m.conf, m.tp, [3], m.size, m.gt_image, m.gt_size)


def test_paired_bootstrap_known_answers() -> None:
    rng = np.random.default_rng(4)
    truths = _scene(rng, 20)
    m = match_images(truths, _jittered(rng, truths))
    same = paired_bootstrap([m, m], [m], resamples=200)
    assert same.mean == 0 and same.low <= 0 <= same.high and same.n == 20

    # 30 images with one target each: the row finds all of them, the reference only the first 10, at confidences
    # that rank every hit above every miss. Row AP50 0.995 (see above); reference recall 1/3 at precision 1:
    # 0.33 + 0.005 = 0.335. Difference 0.66.
    gt = [np.array([[10.0, 10, 20, 20]])] * 30
    conf = np.linspace(0.9, 0.6, 30)
    row = match_images(gt, [(g, conf[i : i + 1]) for i, g in enumerate(gt)])
    ref = match_images(gt, [(g if i < 10 else g + 50, conf[i : i + 1]) for i, g in enumerate(gt)])
    better = paired_bootstrap([row], [ref], resamples=500)
    assert better.mean == pytest.approx(0.995 - 0.335, abs=1e-12)
    assert 0 < better.low < better.mean < better.high
    half = match_images(gt[:15], [(g, conf[i : i + 1]) for i, g in enumerate(gt[:15])])
    with pytest.raises(ValueError, match=r"image counts \[30\] vs \[30, 15\]"):
        paired_bootstrap([row], [ref, half])
    with pytest.raises(DataError):
        paired_bootstrap([row], [half])


def test_seed_interval_student_t() -> None:
    values = [0.61, 0.64, 0.58]
    mean, sd = np.mean(values), np.std(values, ddof=1)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)  # 4.303 * sd / sqrt(3)
    got = seed_interval(values)
    assert got == Interval(pytest.approx(mean), pytest.approx(mean - half), pytest.approx(mean + half), 3)
    assert got.to_json() == {"mean": 0.61, "low": round(mean - half, 5), "high": round(mean + half, 5), "n": 3}
    one = seed_interval([0.5])
    assert one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1
    assert one.to_json() == {"mean": 0.5, "low": None, "high": None, "n": 1}
    assert seed_interval(values, confidence=0.8).high < got.high
