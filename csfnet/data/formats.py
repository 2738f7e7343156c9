"""Readers and validators for raw micro-UAV datasets: Anti-UAV, MOT and already extracted YOLO layouts.

A raw root holds ``train/`` and ``val/`` (optionally ``test/``) with one folder per sequence. Every problem is
reported as a ``DataError`` naming the sequence, the file and the frame; repairs (clipping boxes, dropping invalid
ones, skipping unannotated frames) happen only when ``fix`` is on, and each one is counted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from csfnet.errors import DataError

SPLITS = ("train", "val", "test")
FORMATS = ("auto", "anti-uav", "mot", "yolo")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclass(frozen=True)
class Box:
    """A target in pixels, top-left corner, at 0-based ``frame``; ``cls`` is the 0-based class index."""

    frame: int
    cls: int
    x: float
    y: float
    w: float
    h: float


@dataclass
class SequenceSource:
    """One raw sequence: a video or a folder of frames, and its annotation file."""

    split: str
    name: str
    format: str
    annotation: Path
    video: Path | None = None
    frames_dir: Path | None = None
    expected_frames: int | None = None  # exact annotation length when the format states it (Anti-UAV)

    @property
    def key(self) -> str:
        return f"{self.split}/{self.name}"

    @property
    def media(self) -> Path:
        return self.video if self.video is not None else self.frames_dir  # type: ignore[return-value]


@dataclass
class Fixes:
    """Repairs applied with ``fix=True``; all zero otherwise."""

    clipped_boxes: int = 0
    dropped_boxes: int = 0
    skipped_frames: int = 0
    dropped_annotations: int = 0

    def add(self, other: Fixes) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class Annotations:
    """Validated boxes of one sequence, grouped by frame."""

    boxes: dict[int, list[Box]] = field(default_factory=dict)
    fixes: Fixes = field(default_factory=Fixes)

    @property
    def count(self) -> int:
        return sum(len(b) for b in self.boxes.values())


def detect_format(root: Path) -> str:
    """Guess the layout of a raw root from its files."""
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "yolo"
    for split in SPLITS:
        for seq in sorted(p for p in (root / split).glob("*") if p.is_dir()):
            if (seq / "gt" / "gt.txt").is_file():
                return "mot"
            if any(seq.glob("*.json")):
                return "anti-uav"
    raise DataError(f"{root}: cannot detect the format: no images/+labels/, no <split>/<seq>/gt/gt.txt, no *.json")


def discover(root: str | Path, fmt: str = "auto") -> list[SequenceSource]:
    """List the sequences of a raw Anti-UAV or MOT root, checking that no sequence appears in two splits."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: raw data folder not found")
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt == "yolo":
        raise DataError(f"{root}: a YOLO dataset has no sequences to discover; use read_yolo_dataset")
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if "train" not in splits or "val" not in splits:
        raise DataError(f"{root}: needs train/ and val/ folders (found: {splits or 'none'})")
    sources, seen = [], {}
    for split in splits:
        folders = sorted(p for p in (root / split).iterdir() if p.is_dir())
        if not folders and split in ("train", "val"):
            raise DataError(f"{root}: {split}/ holds no sequence folder")
        for seq in folders:
            if seq.name in seen:
                raise DataError(f"sequence {seq.name!r} is in two splits: {seen[seq.name]} and {split}")
            seen[seq.name] = split
            sources.append(_anti_uav_source(split, seq) if fmt == "anti-uav" else _mot_source(split, seq))
    return sources


def _find_video(seq: Path) -> Path | None:
    """The sequence's video: the only one, else the one named like the folder, else the RGB stream ``visible.*``
    (Anti-UAV ships ``visible.mp4`` next to ``infrared.mp4``); several others are ambiguous and rejected."""
    videos = sorted(p for p in seq.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if len(videos) <= 1:
        return videos[0] if videos else None
    preferred = [v for v in videos if v.stem == seq.name] or [v for v in videos if v.stem.lower() == "visible"]
    if len(preferred) != 1:
        names = ", ".join(v.name for v in videos)
        raise DataError(f"sequence {seq.name}: several videos ({names}); keep one, or name it {seq.name}.mp4")
    return preferred[0]


def _anti_uav_source(split: str, seq: Path) -> SequenceSource:
    video = _find_video(seq)
    if video is None:
        raise DataError(f"sequence {seq.name}: no video (*.mp4, *.avi) in {seq}")
    others = sorted(seq.glob("*.json"))
    candidates = [seq / f"{video.stem}.json", seq / "visible.json", *(others if len(others) == 1 else [])]
    annotation = next((c for c in candidates if c.is_file()), None)
    if annotation is None:
        raise DataError(f"sequence {seq.name}: no annotation JSON ({video.stem}.json or visible.json) in {seq}")
    return SequenceSource(split, seq.name, "anti-uav", annotation, video=video)


def _mot_source(split: str, seq: Path) -> SequenceSource:
    annotation = seq / "gt" / "gt.txt"
    if not annotation.is_file():
        raise DataError(f"sequence {seq.name}: missing annotation file {annotation}")
    video = _find_video(seq)
    frames_dir = seq / "img1" if video is None and (seq / "img1").is_dir() else None
    if video is None and frames_dir is None:
        raise DataError(f"sequence {seq.name}: no video (*.mp4, *.avi) and no img1/ folder in {seq}")
    return SequenceSource(split, seq.name, "mot", annotation, video=video, frames_dir=frames_dir)


def probe_size(source: SequenceSource) -> tuple[int, int, int | None]:
    """(width, height, frame count stated by the container or folder) of a sequence; DataError if unreadable."""
    if source.frames_dir is not None:
        frames = frame_files(source)
        if not frames:
            raise DataError(f"sequence {source.name}: no frames in {source.frames_dir}")
        image = cv2.imread(str(frames[0]))
        if image is None:
            raise DataError(f"sequence {source.name}: cannot read frame image {frames[0]} (frame 0)")
        return image.shape[1], image.shape[0], len(frames)
    if not source.video or not source.video.is_file():
        raise DataError(f"sequence {source.name}: video file {source.video} is missing")
    cap = cv2.VideoCapture(str(source.video))
    try:
        ok, frame = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            raise DataError(f"sequence {source.name}: video {source.video} is corrupt or truncated: no decodable frame")
        stated = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        return frame.shape[1], frame.shape[0], stated
    finally:
        cap.release()


def frame_files(source: SequenceSource) -> list[Path]:
    """Sorted frame images of an ``img1/`` sequence."""
    assert source.frames_dir is not None
    return sorted(p for p in source.frames_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_annotations(source: SequenceSource, width: int, height: int, n_classes: int, fix: bool = False) -> Annotations:
    """Parse and validate a sequence's boxes against the frame size and the class list."""
    raw = _read_anti_uav(source) if source.format == "anti-uav" else _read_mot(source)
    result = Annotations()
    for box in raw:
        where = f"sequence {source.name}, file {source.annotation}, frame {box.frame}"
        if not 0 <= box.cls < n_classes:
            raise DataError(f"{where}: unknown class {box.cls + 1} (known: 1..{n_classes})")
        box = _check_box(box, width, height, where, fix, result.fixes)
        if box is not None:
            result.boxes.setdefault(box.frame, []).append(box)
    return result


def _check_box(box: Box, width: int, height: int, where: str, fix: bool, fixes: Fixes) -> Box | None:
    values = (box.x, box.y, box.w, box.h)
    problem = None
    if any(math.isnan(v) or math.isinf(v) for v in values):
        problem = f"box {values} has NaN or infinite values"
    elif box.w <= 0 or box.h <= 0:
        problem = f"box {values} has non-positive size"
    if problem:
        if not fix:
            raise DataError(f"{where}: {problem}")
        fixes.dropped_boxes += 1
        return None
    x0, y0, x1, y1 = box.x, box.y, box.x + box.w, box.y + box.h
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
    if (cx0, cy0, cx1, cy1) == (x0, y0, x1, y1):
        return box
    if not fix:
        raise DataError(f"{where}: box {values} lies outside the {width}x{height} frame (use --fix to clip it)")
    if cx1 - cx0 < 1 or cy1 - cy0 < 1:
        fixes.dropped_boxes += 1
        return None
    fixes.clipped_boxes += 1
    return Box(box.frame, box.cls, cx0, cy0, cx1 - cx0, cy1 - cy0)


def _read_anti_uav(source: SequenceSource) -> list[Box]:
    path = source.annotation
    try:
        data = json.loads(path.read_text())
        exist, rects = data["exist"], data["gt_rect"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"sequence {source.name}, file {path}: not an Anti-UAV annotation ({e!r})") from e
    if len(exist) != len(rects):
        raise DataError(f"sequence {source.name}, file {path}: 'exist' has {len(exist)} frames, 'gt_rect' {len(rects)}")
    source.expected_frames = len(exist)
    boxes = []
    for frame, (present, rect) in enumerate(zip(exist, rects)):
        if not present:
            continue
        if not isinstance(rect, list) or len(rect) != 4:
            raise DataError(f"sequence {source.name}, file {path}, frame {frame}: exist=1 but gt_rect is {rect!r}")
        boxes.append(Box(frame, 0, *(_float(v, source, frame) for v in rect)))
    return boxes


def _read_mot(source: SequenceSource) -> list[Box]:
    path = source.annotation
    boxes = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 6:
            raise DataError(f"sequence {source.name}, file {path}, line {line_no}: expected frame,id,x,y,w,h,...")
        try:
            frame = int(float(cols[0])) - 1
        except ValueError as e:
            raise DataError(f"sequence {source.name}, file {path}, line {line_no}: bad frame {cols[0]!r}") from e
        if frame < 0:
            raise DataError(f"sequence {source.name}, file {path}, line {line_no}: frames are 1-based, got {cols[0]}")
        cls = int(float(cols[7])) - 1 if len(cols) > 7 else 0
        boxes.append(Box(frame, cls, *(_float(v, source, frame) for v in cols[2:6])))
    return boxes


def _float(value: object, source: SequenceSource, frame: int) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise DataError(f"sequence {source.name}, file {source.annotation}, frame {frame}: bad number {value!r}") from e
