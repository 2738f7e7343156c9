"""Object tracking (multi-object) with ultralytics' own trackers (ByteTrack, BoT-SORT) and their shipped YAML configs.

The configs are read from the installed ultralytics package (nothing is fetched). Detections go in with every score
down to the tracker's ``track_low_thresh``: ByteTrack's second association matches the low-score boxes to existing
tracks, which is what keeps a micro target's ID through frames where the detector is unsure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from csfnet.detect.persistence import PersistenceFilter, PersistenceRule
from csfnet.errors import SettingsError

TRACKERS = ("bytetrack", "botsort")


def tracker_config(kind: str, overrides: dict[str, Any] | None = None):
    """ultralytics' ``cfg/trackers/<kind>.yaml`` as its namespace, with ``overrides`` applied."""
    import ultralytics
    from ultralytics.utils import YAML, IterableSimpleNamespace

    if kind not in TRACKERS:
        raise SettingsError(f"unknown tracker {kind!r}; choose one of {', '.join(TRACKERS)}")
    path = Path(ultralytics.__file__).parent / "cfg" / "trackers" / f"{kind}.yaml"
    cfg = {**YAML.load(path), **(overrides or {})}
    if kind == "botsort":
        cfg["with_reid"] = False  # a ReID model would have to be downloaded
    return IterableSimpleNamespace(**cfg)


class Tracker:
    """One tracker over one sequence: ``update`` takes a frame's detections and returns its tracks.

    Args:
        kind: ``bytetrack`` or ``botsort``.
        overrides: Settings that replace the shipped config's (e.g. ``{"track_buffer": 60}``).
        persistence: :class:`~csfnet.detect.persistence.PersistenceRule` arguments: the tracks pass its online
            filter (young tracks suppressed or rescored, persistent ones boosted); None: unfiltered.
    """

    def __init__(self, kind: str, overrides: dict[str, Any] | None = None, persistence: dict[str, Any] | None = None):
        from ultralytics.trackers import BOTSORT, BYTETracker

        self.kind = kind
        self.cfg = tracker_config(kind, overrides)
        cls = BYTETracker if kind == "bytetrack" else BOTSORT
        self.tracker = cls(self.cfg)
        self.persistence = PersistenceFilter(PersistenceRule(**persistence)) if persistence is not None else None

    @property
    def min_score(self) -> float:
        """The lowest detection score the tracker uses (its second-stage threshold)."""
        return float(self.cfg.track_low_thresh)

    def update(self, dets: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """``(m, 7)`` tracks ``x1, y1, x2, y2, track_id, score, class`` for ``(n, 6)`` detections of ``frame``."""
        from ultralytics.engine.results import Boxes

        tracks = self.tracker.update(Boxes(np.asarray(dets, np.float32).reshape(-1, 6), frame.shape[:2]), frame)
        tracks = np.asarray(tracks, np.float32)[:, :7] if len(tracks) else np.zeros((0, 7), np.float32)
        if self.persistence is not None:  # every frame, empty ones too: the filter counts frames
            tracks = self.persistence.filter_rows(tracks, id_col=4, score_col=5)
        return tracks
