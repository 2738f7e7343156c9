"""Tracking metrics on validation sequences with known IDs (``csfnet eval --track``).

Each sequence in MOT layout (``<root>/<split>/<sequence>/`` with a video or ``img1/`` and ``gt/gt.txt`` whose
second column is the target ID; the synthetic benchmark writes them) is run through :func:`csfnet.detect.detect`
with the tracker, the very code ``csfnet detect --track`` runs, and its MOT output is scored against the ground
truth with TrackEval's HOTA, CLEAR (MOTA, ID switches) and Identity (IDF1).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from csfnet.data.formats import VIDEO_SUFFIXES
from csfnet.detect.run import DEFAULTS, MOT, STATES, detect
from csfnet.detect.runtimes import Runtime, load_runtime
from csfnet.detect.track_metrics import combined_tracking_metrics, state_accuracy, tracking_metrics
from csfnet.errors import DataError, InputNotFoundError


def mot_sequences(root: str | Path, split: str = "val") -> list[tuple[str, Path, Path]]:
    """``(name, video or img1 folder, gt.txt)`` of every MOT sequence under ``root/split``."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder}: no {split}/ folder of sequences")
    out = []
    for seq in sorted(p for p in folder.iterdir() if (p / "gt" / "gt.txt").is_file()):
        videos = sorted(p for p in seq.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        media = videos[0] if len(videos) == 1 else seq / "img1"
        if not media.exists():
            raise DataError(f"sequence {seq.name}: needs one video or an img1/ folder")
        out.append((seq.name, media, seq / "gt" / "gt.txt"))
    if not out:
        raise DataError(f"{folder}: no sequence in MOT layout (<sequence>/gt/gt.txt with track IDs)")
    return out


def evaluate_tracking(
    model: str | Path | Runtime,
    root: str | Path,
    *,
    split: str = "val",
    tracker: str = "bytetrack",
    conf: float = DEFAULTS.conf,
    iou: float = DEFAULTS.iou,
    imgsz: int | None = None,
    slice_size: int | None = None,
    overlap: float = DEFAULTS.overlap,
    max_sequences: int | None = None,
    tracker_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Track every MOT sequence of ``root/split`` and score it.

    Returns ``{"tracker": ..., "sequences": n, "overall": metrics, "per_sequence": {name: metrics}}``; ``metrics``
    are :func:`csfnet.detect.track_metrics.tracking_metrics`'s (HOTA, DetA, AssA, MOTA, MOTP, IDF1, id_switches,
    ...). ``overall`` combines the sequences as TrackEval does. Sequences with a single target ID also get Anti-UAV's
    state accuracy (``SA``, ``SA_penalised``, ``miss_rate``) of ``csfnet detect``'s single-target states; its overall
    figure is the mean over those sequences, as the challenge averages them.
    """
    runtime = model if isinstance(model, Runtime) else load_runtime(model, imgsz)
    sequences = mot_sequences(root, split)[:max_sequences]
    pairs, per_sequence = [], {}
    with tempfile.TemporaryDirectory(prefix="csfnet-track-") as tmp:
        for name, media, gt_file in sequences:
            out = Path(tmp) / name
            detect(
                runtime,
                media,
                out,
                conf=conf,
                iou=iou,
                slice_size=slice_size,
                overlap=overlap,
                tracker=tracker,
                tracker_overrides=tracker_overrides,
                save_video=False,
                single_target=True,
                progress=False,
            )
            gt = _read_mot(gt_file)
            tracks = _read_mot(out / MOT)
            pairs.append((gt, tracks))
            per_sequence[name] = tracking_metrics(gt, tracks)
            if len(np.unique(gt[:, 1])) == 1:  # a single-target sequence: Anti-UAV's state accuracy too
                predicted = [box or None for box in json.loads((out / STATES).read_text())["res"]]
                per_sequence[name] |= state_accuracy(_truth_states(gt, len(predicted)), predicted)
    overall = combined_tracking_metrics(pairs)
    single = [m for m in per_sequence.values() if "SA" in m]
    if single:
        overall |= {k: float(np.mean([m[k] for m in single])) for k in ("SA", "SA_penalised", "miss_rate")}
    return {"tracker": tracker, "sequences": len(sequences), "overall": overall, "per_sequence": per_sequence}


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """``{"track/HOTA": ..., "track/MOTA": ..., "track/IDF1": ..., "track/id_switches": ...}`` for MLflow."""
    return {f"track/{k}": float(v) for k, v in result["overall"].items()}


def _truth_states(gt: np.ndarray, frames: int) -> list[list[float] | None]:
    """Per frame ``1..frames``, the target's ``x, y, w, h`` (MOT ground truth rows) or None where it is absent."""
    boxes: list[list[float] | None] = [None] * frames
    for row in gt:
        if 1 <= int(row[0]) <= frames:
            boxes[int(row[0]) - 1] = [float(v) for v in row[2:6]]
    return boxes


def _read_mot(path: Path) -> np.ndarray:
    """``frame, id, x, y, w, h`` rows of a MOT file (empty when it has none)."""
    text = path.read_text().strip()
    return np.loadtxt(path, delimiter=",", ndmin=2)[:, :6] if text else np.zeros((0, 6))
