"""What ``csfnet detect`` writes for every frame: an annotated MP4, MOT rows, JSON lines and single-target states.

MOT rows are ``frame,id,x,y,w,h,conf,-1,-1,-1`` with 1-based frames (MOTChallenge's detection/result layout; ``id``
is -1 without tracking), the layout ``csfnet data extract`` ingests, so reviewed detections can become labels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import cv2
import numpy as np

from csfnet.detect.track_metrics import single_target_state
from csfnet.errors import DataError


class AnnotatedVideo:
    """An MP4 (mp4v) of the frames with boxes, scores and track IDs drawn on them."""

    def __init__(self, path: Path, fps: float, width: int, height: int, names: dict[int, str]):
        self.size, self.names = (width, height), names
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, self.size)
        if not self.writer.isOpened():
            raise DataError(f"cannot write video {path}: OpenCV has no mp4v encoder")

    def write(self, frame: np.ndarray, rows: np.ndarray) -> None:
        """Draw ``rows`` (``x1, y1, x2, y2, score, class, id``) on a copy of ``frame`` and append it."""
        image = frame.copy()
        thick = max(1, round(max(image.shape[:2]) / 640))
        for x1, y1, x2, y2, score, cls, tid in rows:
            color = _color(int(tid))
            p1, p2 = (round(x1) - 2, round(y1) - 2), (round(x2) + 2, round(y2) + 2)  # micro targets stay visible
            cv2.rectangle(image, p1, p2, color, thick)
            label = f"{'' if tid < 0 else f'#{int(tid)} '}{self.names.get(int(cls), int(cls))} {score:.2f}"
            cv2.putText(image, label, (p1[0], max(p1[1] - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, color, thick)
        if image.shape[1::-1] != self.size:  # image folders of mixed sizes
            image = cv2.resize(image, self.size)
        self.writer.write(image)

    def close(self) -> None:
        self.writer.release()


class MotWriter:
    """MOT rows ``frame,id,x,y,w,h,conf,-1,-1,-1`` (1-based frames, pixels, top-left origin)."""

    def __init__(self, path: Path):
        self.file: IO[str] = path.open("w")

    def write(self, frame: int, rows: np.ndarray) -> None:
        for x1, y1, x2, y2, score, _cls, tid in rows:
            self.file.write(f"{frame},{int(tid)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},{score:.4f},-1,-1,-1\n")

    def close(self) -> None:
        self.file.close()


class JsonLinesWriter:
    """One JSON object per frame: ``{"frame": 1, "image": ..., "detections": [{x1, y1, x2, y2, score, class_id,
    class_name, track_id}, ...]}``."""

    def __init__(self, path: Path, names: dict[int, str]):
        self.file: IO[str] = path.open("w")
        self.names = names

    def write(self, frame: int, rows: np.ndarray, image: str | None = None) -> None:
        dets = [
            {
                "x1": round(float(x1), 2),
                "y1": round(float(y1), 2),
                "x2": round(float(x2), 2),
                "y2": round(float(y2), 2),
                "score": round(float(score), 4),
                "class_id": int(cls),
                "class_name": self.names.get(int(cls), str(int(cls))),
                "track_id": int(tid) if tid >= 0 else None,
            }
            for x1, y1, x2, y2, score, cls, tid in rows
        ]
        record = {"frame": frame, **({"image": image} if image else {}), "detections": dets}
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.file.close()


class StatesWriter:
    """A single-target stream's state per frame, as Anti-UAV scores trackers: ``{"exist": [0/1 ...], "res": [[x, y,
    w, h] or [] ...]}`` (pixels, top-left origin), the highest-scoring track or detection of each frame, or "target
    absent"."""

    def __init__(self, path: Path):
        self.path = path
        self.states: dict[str, list] = {"exist": [], "res": []}

    def write(self, rows: np.ndarray) -> None:
        state = single_target_state(rows)
        self.states["exist"].append(int(state is not None))
        self.states["res"].append(state or [])

    def close(self) -> None:
        self.path.write_text(json.dumps(self.states))


def _color(track_id: int) -> tuple[int, int, int]:
    if track_id < 0:
        return (0, 0, 255)
    hue = (track_id * 47) % 180
    bgr = cv2.cvtColor(np.uint8([[[hue, 255, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(bgr[0]), int(bgr[1]), int(bgr[2])
