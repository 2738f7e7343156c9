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
