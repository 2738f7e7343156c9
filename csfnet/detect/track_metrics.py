"""Tracking metrics (HOTA, MOTA, IDF1, ID switches) with TrackEval's own metric classes, on MOT rows in memory.

Ground truth and tracker output are MOT rows ``frame, id, x, y, w, h`` (1-based frames, pixels); a tracker box
matches a ground-truth box by IoU, as in the MOTChallenge evaluation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _sequence_data(gt: np.ndarray, tracks: np.ndarray) -> dict[str, Any]:
    """TrackEval's per-sequence input: ids remapped to 0..n-1 per side, IoU similarity per frame."""
    from trackeval.datasets._base_dataset import _BaseDataset

    gt, tracks = np.asarray(gt, float).reshape(-1, 6), np.asarray(tracks, float).reshape(-1, 6)
    frames = int(max(gt[:, 0].max(initial=0), tracks[:, 0].max(initial=0)))
    gt_map = {v: i for i, v in enumerate(np.unique(gt[:, 1]))}
    tr_map = {v: i for i, v in enumerate(np.unique(tracks[:, 1]))}
    data: dict[str, Any] = {"gt_ids": [], "tracker_ids": [], "similarity_scores": []}
    for f in range(1, frames + 1):
        g, t = gt[gt[:, 0] == f], tracks[tracks[:, 0] == f]
        data["gt_ids"].append(np.array([gt_map[v] for v in g[:, 1]], int))
        data["tracker_ids"].append(np.array([tr_map[v] for v in t[:, 1]], int))
        data["similarity_scores"].append(_BaseDataset._calculate_box_ious(g[:, 2:6], t[:, 2:6], box_format="xywh"))
    data.update(
        num_timesteps=frames,
        num_gt_ids=len(gt_map),
        num_tracker_ids=len(tr_map),
        num_gt_dets=len(gt),
        num_tracker_dets=len(tracks),
    )
    return data


def _metrics():
    from trackeval.metrics import CLEAR, HOTA, Identity

    quiet = {"THRESHOLD": 0.5, "PRINT_CONFIG": False}
    return HOTA(), CLEAR(quiet), Identity(quiet)


def _summary(res: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    hota, clear, identity = res["HOTA"], res["CLEAR"], res["Identity"]
    return {
        "HOTA": float(np.mean(hota["HOTA"])),
        "DetA": float(np.mean(hota["DetA"])),
        "AssA": float(np.mean(hota["AssA"])),
        "MOTA": float(clear["MOTA"]),
        "MOTP": float(clear["MOTP"]),
        "IDF1": float(identity["IDF1"]),
        "id_switches": int(clear["IDSW"]),
        "fragmentations": int(clear["Frag"]),
        "mostly_tracked": int(clear["MT"]),
        "gt_tracks": int(clear["MT"] + clear["PT"] + clear["ML"]),
        "false_positives": int(clear["CLR_FP"]),
        "false_negatives": int(clear["CLR_FN"]),
    }


def tracking_metrics(gt: np.ndarray, tracks: np.ndarray) -> dict[str, float]:
    """HOTA, DetA, AssA, MOTA, MOTP, IDF1, ID switches ... of one sequence (MOT rows ``frame, id, x, y, w, h``)."""
    data = _sequence_data(gt, tracks)
    return _summary({type(m).__name__: m.eval_sequence(data) for m in _metrics()})


def combined_tracking_metrics(sequences: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """The same metrics over several ``(gt, tracks)`` sequences, combined as TrackEval combines them."""
    per_metric: dict[str, dict[str, Any]] = {}
    for metric in _metrics():
        name = type(metric).__name__
        results = {str(i): metric.eval_sequence(_sequence_data(g, t)) for i, (g, t) in enumerate(sequences)}
        per_metric[name] = metric.combine_sequences(results)
    return _summary(per_metric)


MISS_PENALTY, MISS_EXPONENT = 0.2, 0.3  # Anti-UAV challenge: SA - 0.2 * (miss rate) ** 0.3


def single_target_state(rows: np.ndarray) -> list[float] | None:
    """The state of a single-target stream in one frame: the ``x, y, w, h`` box of the highest-scoring row
    (``x1, y1, x2, y2, score, ...``), or None for "target absent"."""
    if not len(rows):
        return None
    x1, y1, x2, y2 = (float(v) for v in rows[int(np.argmax(rows[:, 4]))][:4])
    return [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def state_accuracy(
    truth: Sequence[Sequence[float] | None], predicted: Sequence[Sequence[float] | None]
) -> dict[str, float]:
    """Anti-UAV state accuracy of one single-target sequence (boxes ``x, y, w, h``, None = absent), per frame:
    the IoU when the target is visible (0 without a prediction), 1 for a correct "absent", 0 for a box on a frame
    without the target. ``SA`` is the mean; ``SA_penalised`` subtracts ``0.2 * miss_rate ** 0.3``, the miss rate
    being the share of visible-target frames predicted absent (the challenge's variant)."""
    if len(truth) != len(predicted):
        raise ValueError(f"state accuracy needs one prediction per frame: {len(truth)} frames, {len(predicted)} states")
    scores, visible, missed = [], 0, 0
    for gt, pred in zip(truth, predicted):
        if gt is None:
            scores.append(1.0 if pred is None else 0.0)
            continue
        visible += 1
        missed += pred is None
        scores.append(0.0 if pred is None else _iou_xywh(gt, pred))
    sa = float(np.mean(scores)) if scores else 0.0
    miss_rate = missed / visible if visible else 0.0
    return {
        "SA": sa,
        "SA_penalised": sa - MISS_PENALTY * miss_rate**MISS_EXPONENT,
        "miss_rate": miss_rate,
        "frames": len(scores),
        "visible_frames": visible,
    }


def _iou_xywh(a: Sequence[float], b: Sequence[float]) -> float:
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    union = aw * ah + bw * bh - iw * ih
    return iw * ih / union if union > 0 else 0.0
