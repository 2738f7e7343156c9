"""Tracking metrics on validation sequences with known IDs (``csfnet eval --track``).

Each sequence in MOT layout (``<root>/<split>/<sequence>/`` with a video or ``img1/`` and ``gt/gt.txt`` whose
second column is the target ID; the synthetic benchmark writes them) is run through :func:`csfnet.detect.detect`
with the tracker, the very code ``csfnet detect --track`` runs, and its MOT output is scored against the ground
truth with TrackEval's HOTA, CLEAR (MOTA, ID switches) and Identity (IDF1), plus AP50 of the tracked detections
(every frame an image, :mod:`csfnet.metrics`' AP). The same tracks are scored three ways, side by side: as the
tracker gave them, through the online persistence filter (what ``csfnet detect`` writes with
``detect.persistence.enabled``) and through its offline form (finished tracks judged whole), so the filter's effect
is measured on identical tracker output.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from csfnet.data.formats import VIDEO_SUFFIXES
from csfnet.detect.persistence import PersistenceRule, filter_mot
from csfnet.detect.run import DEFAULTS, END_TO_END, MOT, detect
from csfnet.detect.runtimes import Runtime, load_runtime
from csfnet.detect.track_metrics import (
    combined_tracking_metrics,
    single_target_state,
    state_accuracy,
    tracking_metrics,
)
from csfnet.errors import DataError, InputNotFoundError
from csfnet.files import write_json, write_text
from csfnet.metrics import average_precision, match_images


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


FILTERS = ("online", "offline")  # the persistence filter's forms, scored next to the unfiltered tracks
COMPARED = ("AP50", "HOTA", "MOTA", "IDF1", "false_positives", "false_negatives", "id_switches")


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
    persistence: dict[str, Any] | None = None,
    end_to_end: bool = END_TO_END,
) -> dict[str, Any]:
    """Track every MOT sequence of ``root/split`` and score it, without and with the persistence filter.

    Returns ``{"tracker", "sequences", "overall": metrics, "per_sequence": {name: metrics}, "persistence": {"rule":
    ..., "online": {"overall", "per_sequence"}, "offline": {...}}}``; ``metrics`` are
    :func:`csfnet.detect.track_metrics.tracking_metrics`'s (HOTA, DetA, AssA, MOTA, MOTP, IDF1, id_switches, ...)
    plus ``AP50`` and ``AP50_95`` of the tracked detections. ``overall`` combines the sequences as TrackEval does
    (AP pools their frames). Sequences with a single target ID also get Anti-UAV's state accuracy (``SA``,
    ``SA_penalised``, ``miss_rate``) of the single-target states (per frame the best-scoring track or "absent");
    its overall figure is the mean over those sequences, as the challenge averages them. ``persistence``: the
    filter's :class:`~csfnet.detect.persistence.PersistenceRule` arguments (default: its defaults). ``end_to_end``:
    the head of a ``.pt`` with an NMS-free head (:func:`~csfnet.detect.runtimes.load_runtime`).
    """
    runtime = model if isinstance(model, Runtime) else load_runtime(model, imgsz, end_to_end=end_to_end)
    rule = PersistenceRule(**(persistence or {}))
    sequences = mot_sequences(root, split)[:max_sequences]
    scored: dict[str, list[tuple[str, np.ndarray, np.ndarray, int]]] = {"none": [], **{f: [] for f in FILTERS}}
    with tempfile.TemporaryDirectory(prefix="csfnet-track-") as tmp:
        for name, media, gt_file in sequences:
            out = Path(tmp) / name
            result = detect(
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
                progress=False,
            )
            gt, tracks = _read_mot(gt_file), _read_mot(out / MOT, columns=7)
            scored["none"].append((name, gt, tracks, result.frames))
            for form in FILTERS:
                scored[form].append((name, gt, filter_mot(tracks, rule, offline=form == "offline"), result.frames))
    variants = {form: _score(sequences) for form, sequences in scored.items()}
    return {
        "tracker": tracker,
        "sequences": len(sequences),
        **variants["none"],
        "persistence": {"rule": asdict(rule), **{form: variants[form] for form in FILTERS}},
    }


def _score(sequences: list[tuple[str, np.ndarray, np.ndarray, int]]) -> dict[str, Any]:
    """``{"overall", "per_sequence"}`` of ``(name, gt, tracks, frames)`` sequences (MOT rows, tracks with conf)."""
    per_sequence = {}
    for name, gt, tracks, frames in sequences:
        per_sequence[name] = tracking_metrics(gt, tracks[:, :6]) | _detection_ap([(gt, tracks)])
        if len(np.unique(gt[:, 1])) == 1:  # a single-target sequence: Anti-UAV's state accuracy too
            per_sequence[name] |= state_accuracy(_truth_states(gt, frames), _states(tracks, frames))
    overall = combined_tracking_metrics([(gt, tracks[:, :6]) for _, gt, tracks, _ in sequences])
    overall |= _detection_ap([(gt, tracks) for _, gt, tracks, _ in sequences])
    single = [m for m in per_sequence.values() if "SA" in m]
    if single:
        overall |= {k: float(np.mean([m[k] for m in single])) for k in ("SA", "SA_penalised", "miss_rate")}
    return {"overall": overall, "per_sequence": per_sequence}


def _detection_ap(sequences: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """``AP50`` and ``AP50_95`` of tracked detections (MOT rows with conf) against ground truth, every frame an
    image, the frames of all ``(gt, tracks)`` sequences pooled."""
    truths, predictions = [], []
    for gt, tracks in sequences:
        for f in np.union1d(gt[:, 0], tracks[:, 0]):
            g, t = gt[gt[:, 0] == f], tracks[tracks[:, 0] == f]
            truths.append(_xyxy(g[:, 2:6]))
            predictions.append((_xyxy(t[:, 2:6]), t[:, 6]))
    ap = average_precision(match_images(truths, predictions))
    return {"AP50": ap["map50"], "AP50_95": ap["map50_95"]}


def flat_metrics(result: dict[str, Any]) -> dict[str, float]:
    """``{"track/HOTA": ..., "track/MOTA": ..., "track/AP50": ..., "track/online/MOTA": ..., ...}`` for MLflow: the
    unfiltered tracks' metrics and the persistence filter's under ``track/online/`` and ``track/offline/``."""
    flat = {f"track/{k}": float(v) for k, v in result["overall"].items()}
    for form in FILTERS:
        flat |= {f"track/{form}/{k}": float(v) for k, v in result["persistence"][form]["overall"].items()}
    return flat


def comparison_table(result: dict[str, Any]) -> str:
    """A Markdown table of :data:`COMPARED` metrics, one row per filter: none, online, offline."""
    rows = {"none": result["overall"], **{form: result["persistence"][form]["overall"] for form in FILTERS}}
    rule = ", ".join(f"{k}={v}" for k, v in result["persistence"]["rule"].items())
    lines = [
        f"Tracking ({result['tracker']}, {result['sequences']} sequences), persistence filter: {rule}",
        "",
        "| filter | " + " | ".join(COMPARED) + " |",
        "|---" * (len(COMPARED) + 1) + "|",
    ]
    for form, metrics in rows.items():
        cells = [f"{metrics[k]:.4f}" if isinstance(metrics[k], float) else str(metrics[k]) for k in COMPARED]
        lines.append(f"| {form} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out_dir: Path) -> None:
    """``tracking.json`` (the whole result) and ``tracking.md`` (:func:`comparison_table`) in ``out_dir``."""
    write_json(out_dir / "tracking.json", result)
    write_text(out_dir / "tracking.md", comparison_table(result))


def _truth_states(gt: np.ndarray, frames: int) -> list[list[float] | None]:
    """Per frame ``1..frames``, the target's ``x, y, w, h`` (MOT ground truth rows) or None where it is absent."""
    boxes: list[list[float] | None] = [None] * frames
    for row in gt:
        if 1 <= int(row[0]) <= frames:
            boxes[int(row[0]) - 1] = [float(v) for v in row[2:6]]
    return boxes


def _states(tracks: np.ndarray, frames: int) -> list[list[float] | None]:
    """Per frame ``1..frames``, the single-target state of the tracks (MOT rows with conf): ``x, y, w, h`` of the
    best-scoring one, or None (:func:`csfnet.detect.track_metrics.single_target_state`, as ``states.json``)."""
    rows = np.column_stack([_xyxy(tracks[:, 2:6]), tracks[:, 6]]) if len(tracks) else np.zeros((0, 5))
    return [single_target_state(rows[tracks[:, 0] == f]) for f in range(1, frames + 1)]


def _xyxy(xywh: np.ndarray) -> np.ndarray:
    return np.column_stack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:4]]) if len(xywh) else np.zeros((0, 4))


def _read_mot(path: Path, columns: int = 6) -> np.ndarray:
    """The first ``columns`` of the rows of a MOT file, ``frame, id, x, y, w, h, conf`` (empty when it has none)."""
    text = path.read_text().strip()
    return np.loadtxt(path, delimiter=",", ndmin=2)[:, :columns] if text else np.zeros((0, columns))
