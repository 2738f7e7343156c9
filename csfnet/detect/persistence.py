"""Track-level filtering: keep or boost detections on tracks that persist, suppress one-frame blips.

The Drone-vs-Bird winners' approach: a detector's false alarms (a bird, a cloud edge, a glint) rarely hold a track
for long, a drone does. Records are tracker output, ``(frame, track id, box, confidence)``; nothing here knows the
model. Two ways to judge them:

- online (:class:`PersistenceFilter`, ``csfnet detect``): causal, frame by frame, for live streams. A detection on
  a track reported in fewer than ``min_hits`` frames (counting this one) is young: dropped (``suppress``) or kept
  with its confidence times ``young_factor`` (``rescore``). The price is latency in effect: a real target's first
  ``min_hits - 1`` reported frames are judged before anyone can know it will persist, so they are lost (or
  down-weighted) too.
- offline (:func:`rescore_offline`, ``csfnet eval --track``, archives): each finished track is judged on its whole
  length, so a track that persists keeps its first frames as well.

A detection on a persistent track scores at least the track's mean confidence over ``window`` frames (online: its
last ``window`` reported frames; offline: ``window`` frames around it): a momentary dip on a steady track no longer
costs it. Rows without a track id (id < 0) pass unchanged.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from csfnet.errors import SettingsError

MODES = ("suppress", "rescore")
FORGET_FRAMES = 1000  # a track unseen this long is forgotten (trackers drop lost tracks far sooner)


@dataclass(frozen=True)
class PersistenceRule:
    """How young and persistent tracks are scored (the ``detect.persistence`` settings)."""

    mode: str = "suppress"
    min_hits: int = 3
    window: int = 10
    young_factor: float = 0.5

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SettingsError(f"persistence mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.min_hits < 1 or self.window < 1 or not 0 <= self.young_factor <= 1:
            raise SettingsError(f"need min_hits >= 1, window >= 1, 0 <= young_factor <= 1: {self}")

    def score(self, conf: float, hits: int, recent: Sequence[float]) -> float | None:
        """The new confidence of a detection on a track of ``hits`` reported frames whose ``recent`` confidences
        are given; None when it is dropped. Young (``hits < min_hits``): dropped or ``conf * young_factor``;
        persistent: its own confidence or the recent mean, the higher."""
        if hits < self.min_hits:
            return None if self.mode == "suppress" else conf * self.young_factor
        return max(conf, float(np.mean(recent)))


@dataclass
class _Track:
    recent: deque[float]
    hits: int = 0
    last_frame: int = 0


@dataclass
class PersistenceFilter:
    """Online filter over one stream: :meth:`update` takes one frame's tracks, in frame order."""

    rule: PersistenceRule = field(default_factory=PersistenceRule)
    frame: int = field(default=0, init=False)
    _tracks: dict[int, _Track] = field(default_factory=dict, init=False, repr=False)

    def update(self, ids: np.ndarray, confs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(keep, confidence)`` per detection of the next frame, given its track ``ids`` and ``confs``."""
        self.frame += 1
        ids, confs = np.asarray(ids).reshape(-1), np.asarray(confs, np.float64).reshape(-1)
        keep, scores = np.ones(len(ids), bool), confs.copy()
        for i, (tid, conf) in enumerate(zip(ids.astype(int), confs)):
            if tid < 0:
                continue
            track = self._tracks.setdefault(tid, _Track(deque(maxlen=self.rule.window)))
            track.hits, track.last_frame = track.hits + 1, self.frame
            track.recent.append(float(conf))
            score = self.rule.score(conf, track.hits, track.recent)
            keep[i], scores[i] = score is not None, conf if score is None else score
        if self.frame % FORGET_FRAMES == 0:
            self._tracks = {k: t for k, t in self._tracks.items() if self.frame - t.last_frame < FORGET_FRAMES}
        return keep, scores

    def filter_rows(self, rows: np.ndarray, id_col: int = 6, score_col: int = 4) -> np.ndarray:
        """The next frame's ``rows`` (``csfnet detect``'s ``x1, y1, x2, y2, score, class, id``; an empty frame as
        ``(0, columns)``) kept and rescored."""
        rows = np.asarray(rows)
        keep, scores = self.update(rows[:, id_col], rows[:, score_col])
        out = rows.copy()
        out[:, score_col] = scores
        return out[keep]


def rescore_offline(
    frames: np.ndarray, ids: np.ndarray, confs: np.ndarray, rule: PersistenceRule | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, confidence)`` per record of a finished sequence: each track judged on its whole length."""
    rule = rule or PersistenceRule()
    frames, ids = np.asarray(frames).reshape(-1), np.asarray(ids).reshape(-1).astype(int)
    confs = np.asarray(confs, np.float64).reshape(-1)
    keep, scores = np.ones(len(ids), bool), confs.copy()
    for tid in np.unique(ids[ids >= 0]):
        members = np.flatnonzero(ids == tid)
        members = members[np.argsort(frames[members], kind="stable")]
        track = confs[members]
        for k, i in enumerate(members):  # the window around each record, shifted inside the track at its ends
            lo = min(max(0, k - (rule.window - 1) // 2), max(0, len(track) - rule.window))
            score = rule.score(confs[i], len(members), track[lo : lo + rule.window])
            keep[i], scores[i] = score is not None, confs[i] if score is None else score
    return keep, scores


def filter_mot(rows: np.ndarray, rule: PersistenceRule | None = None, *, offline: bool = False) -> np.ndarray:
    """MOT rows ``frame, id, x, y, w, h, conf, ...`` of one sequence, filtered online (in frame order, as
    ``csfnet detect`` does) or offline; the confidence column carries the new scores."""
    rows = np.asarray(rows, np.float64)
    if not len(rows):
        return rows
    rule = rule or PersistenceRule()
    if offline:
        keep, scores = rescore_offline(rows[:, 0], rows[:, 1], rows[:, 6], rule)
    else:
        online, keep, scores = PersistenceFilter(rule), np.ones(len(rows), bool), rows[:, 6].copy()
        for frame in range(1, int(rows[:, 0].max()) + 1):  # every frame, empty ones too: the filter counts them
            at = np.flatnonzero(rows[:, 0] == frame)
            keep[at], scores[at] = online.update(rows[at, 1], rows[at, 6])
    out = rows.copy()
    out[:, 6] = scores
    return out[keep]
