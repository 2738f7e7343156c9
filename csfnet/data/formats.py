"""Readers and validators for raw micro-UAV datasets: Anti-UAV, MOT, Drone-vs-Bird and YOLO-frame sequences.

A raw root holds ``train/`` and ``val/`` (optionally ``test/``) with one folder per sequence; the layout is detected
per sequence, so one root can mix them (a root that is itself an extracted YOLO dataset, ``images/`` + ``labels/``,
is imported as a whole). Every problem is reported as a ``DataError`` naming the sequence, the file and the frame;
repairs (clipping boxes, dropping invalid ones, skipping unannotated frames) happen only when ``fix`` is on, and
each one is counted.

Sequence layouts (``<seq>/`` is one folder under a split):

- Anti-UAV: a video + JSON ``{"exist": [...], "gt_rect": [[x, y, w, h], ...]}`` named ``<video stem>.json``,
  ``<video stem>_label.json`` or ``visible.json``; with several videos (``visible.mp4`` + ``infrared.mp4``, or the
  first release's ``RGB.mp4`` + ``IR.mp4``) the one named like the folder, else the RGB/visible stream, is used.
- MOT: ``gt/gt.txt`` (``frame,id,x,y,w,h,conf,class,visibility``, 1-based frames) + a video or ``img1/`` frames.
- Drone-vs-Bird: a video + ``<video stem>.txt``, one line per frame: ``frame num_objects x y w h class ...``
  (0-based frames; ``class`` a number or a class name such as ``drone``).
- YOLO frames: ``images/`` (frame images in order) + ``labels/<image stem>.txt`` (``class cx cy w h``, normalised).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from csfnet.errors import DataError

SPLITS = ("train", "val", "test")
FORMATS = ("auto", "anti-uav", "mot", "drone-vs-bird", "yolo")
SEQUENCE_FORMATS = ("anti-uav", "mot", "drone-vs-bird", "yolo")
CLASS_ALIASES = {"drone": "uav", "uav": "drone"}  # Drone-vs-Bird says "drone" where this project says "uav"
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
    """``yolo`` when the root itself is an extracted YOLO dataset (``images/`` + ``labels/``), else ``auto``
    (sequence folders whose layouts are detected one by one)."""
    return "yolo" if (root / "images").is_dir() and (root / "labels").is_dir() else "auto"


def sequence_format(seq: Path) -> str:
    """The layout of one sequence folder, from its files."""
    if (seq / "gt" / "gt.txt").is_file():
        return "mot"
    if (seq / "images").is_dir() and (seq / "labels").is_dir():
        return "yolo"
    if any(seq.glob("*.json")):
        return "anti-uav"
    videos = {p.stem for p in seq.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES}
    if any(p.stem in videos for p in seq.glob("*.txt")):
        return "drone-vs-bird"
    raise DataError(
        f"sequence {seq.name}: cannot tell its layout in {seq}: expected gt/gt.txt (MOT), images/ + labels/ "
        "(YOLO frames), a video + JSON (Anti-UAV) or a video + <video stem>.txt (Drone-vs-Bird)"
    )


def discover(root: str | Path, fmt: str = "auto") -> list[SequenceSource]:
    """List the sequences of a raw root (layout detected per sequence unless ``fmt`` forces one), checking that no
    sequence appears in two splits."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: raw data folder not found")
    if fmt not in FORMATS:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    splits = [s for s in SPLITS if (root / s).is_dir()]
    if "train" not in splits or "val" not in splits:
        raise DataError(f"{root}: needs train/ and val/ folders (found: {splits or 'none'})")
    readers = {"anti-uav": _anti_uav_source, "mot": _mot_source, "drone-vs-bird": _dvb_source, "yolo": _yolo_source}
    sources, seen = [], {}
    for split in splits:
        folders = sorted(p for p in (root / split).iterdir() if p.is_dir())
        if not folders and split in ("train", "val"):
            raise DataError(f"{root}: {split}/ holds no sequence folder")
        for seq in folders:
            if seq.name in seen:
                raise DataError(f"sequence {seq.name!r} is in two splits: {seen[seq.name]} and {split}")
            seen[seq.name] = split
            sources.append(readers[sequence_format(seq) if fmt == "auto" else fmt](split, seq))
    return sources


def _find_video(seq: Path) -> Path | None:
    """The sequence's video: the only one, else the one named like the folder, else the RGB stream (Anti-UAV ships
    ``visible.mp4`` next to ``infrared.mp4``, its first release ``RGB.mp4`` next to ``IR.mp4``); several others are
    ambiguous and rejected."""
    videos = sorted(p for p in seq.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if len(videos) <= 1:
        return videos[0] if videos else None
    preferred = [v for v in videos if v.stem == seq.name] or [v for v in videos if v.stem.lower() in ("visible", "rgb")]
    if len(preferred) != 1:
        names = ", ".join(v.name for v in videos)
        raise DataError(f"sequence {seq.name}: several videos ({names}); keep one, or name it {seq.name}.mp4")
    return preferred[0]


def _anti_uav_source(split: str, seq: Path) -> SequenceSource:
    video = _find_video(seq)
    if video is None:
        raise DataError(f"sequence {seq.name}: no video (*.mp4, *.avi) in {seq}")
    others = sorted(seq.glob("*.json"))
    names = (f"{video.stem}.json", f"{video.stem}_label.json", "visible.json")
    candidates = [seq / n for n in names] + (others if len(others) == 1 else [])
    annotation = next((c for c in candidates if c.is_file()), None)
    if annotation is None:
        raise DataError(f"sequence {seq.name}: no annotation JSON ({' or '.join(names)}) in {seq}")
    return SequenceSource(split, seq.name, "anti-uav", annotation, video=video)


def _dvb_source(split: str, seq: Path) -> SequenceSource:
    video = _find_video(seq)
    if video is None:
        raise DataError(f"sequence {seq.name}: no video (*.mp4, *.avi) in {seq}")
    annotation = seq / f"{video.stem}.txt"
    if not annotation.is_file():
        raise DataError(f"sequence {seq.name}: missing Drone-vs-Bird annotation file {annotation}")
    return SequenceSource(split, seq.name, "drone-vs-bird", annotation, video=video)


def _yolo_source(split: str, seq: Path) -> SequenceSource:
    if not (seq / "images").is_dir() or not (seq / "labels").is_dir():
        raise DataError(f"sequence {seq.name}: a YOLO-frame sequence needs images/ and labels/ in {seq}")
    return SequenceSource(split, seq.name, "yolo", seq / "labels", frames_dir=seq / "images")


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


def read_annotations(
    source: SequenceSource, width: int, height: int, n_classes: int, fix: bool = False, names: tuple[str, ...] = ()
) -> Annotations:
    """Parse and validate a sequence's boxes against the frame size and the class list (``names`` resolves
    Drone-vs-Bird's class names; default: ``n_classes`` unnamed classes)."""
    names = tuple(names) or tuple(str(i) for i in range(n_classes))
    if source.format == "anti-uav":
        raw = _read_anti_uav(source)
    elif source.format == "mot":
        raw = _read_mot(source)
    elif source.format == "drone-vs-bird":
        raw = _read_drone_vs_bird(source, names)
    else:
        raw = _read_yolo_frames(source, width, height)
    result = Annotations()
    files = frame_files(source) if source.format == "yolo" else None
    base = 1 if source.format == "mot" else 0  # MOT numbers classes from 1
    for box in raw:
        file = source.annotation / f"{files[box.frame].stem}.txt" if files else source.annotation
        where = f"sequence {source.name}, file {file}, frame {box.frame}"
        if not 0 <= box.cls < n_classes:
            raise DataError(f"{where}: unknown class {box.cls + base} (known: {base}..{n_classes - 1 + base})")
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
        cls = int(float(cols[7])) - 1 if len(cols) > 7 and float(cols[7]) > 0 else 0  # -1: MOT results, no class
        boxes.append(Box(frame, cls, *(_float(v, source, frame) for v in cols[2:6])))
    return boxes


def _read_drone_vs_bird(source: SequenceSource, names: tuple[str, ...]) -> list[Box]:
    """``frame num_objects x y w h class [x y w h class ...]`` per line, 0-based frames."""
    path = source.annotation
    boxes, seen = [], set()
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"sequence {source.name}, file {path}, line {line_no}"
        try:
            frame, count = int(tokens[0]), int(tokens[1]) if len(tokens) > 1 else -1
        except ValueError as e:
            raise DataError(f"{where}: expected 'frame num_objects x y w h class ...', got {line!r}") from e
        if frame < 0 or count < 0 or len(tokens) != 2 + 5 * count:
            raise DataError(
                f"{where}, frame {frame}: expected 'frame num_objects' and 5 values per object, got {line!r}"
            )
        if frame in seen:
            raise DataError(f"{where}, frame {frame}: frame listed twice")
        seen.add(frame)
        for k in range(count):
            x, y, w, h, label = tokens[2 + 5 * k : 7 + 5 * k]
            cls = _class_index(label, names, f"sequence {source.name}, file {path}, frame {frame}")
            boxes.append(Box(frame, cls, *(_float(v, source, frame) for v in (x, y, w, h))))
    return boxes


def _class_index(label: str, names: tuple[str, ...], where: str) -> int:
    """A Drone-vs-Bird class: a 0-based index, or a name (``drone`` and ``uav`` are the same class)."""
    if label.isdigit():
        return int(label)
    lowered = [n.lower() for n in names]
    for candidate in (label.lower(), CLASS_ALIASES.get(label.lower())):
        if candidate in lowered:
            return lowered.index(candidate)
    raise DataError(f"{where}: unknown class {label!r} (known: {', '.join(names)}; set extract.names)")


def _read_yolo_frames(source: SequenceSource, width: int, height: int) -> list[Box]:
    """``labels/<image stem>.txt`` of every frame image (``class cx cy w h`` normalised); a missing file is a frame
    without targets."""
    boxes = []
    for frame, image in enumerate(frame_files(source)):
        label = source.annotation / f"{image.stem}.txt"
        if not label.is_file():
            continue
        for line_no, line in enumerate(label.read_text().splitlines(), 1):
            row = line.split()
            if not row:
                continue
            where = f"sequence {source.name}, file {label}, frame {frame}, line {line_no}"
            if len(row) != 5:
                raise DataError(f"{where}: expected 'class cx cy w h', got {line!r}")
            try:
                cls, (cx, cy, w, h) = int(row[0]), (float(v) for v in row[1:])
            except ValueError as e:
                raise DataError(f"{where}: not numbers: {line!r}") from e
            x0, y0 = (cx - w / 2) * width, (cy - h / 2) * height
            boxes.append(Box(frame, cls, *_snap(x0, y0, w * width, h * height, width, height)))
    return boxes


def _snap(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[float, float, float, float]:
    """Undo float rounding of normalised coordinates at the frame edges (within 1e-3 px), nothing more."""
    if -1e-3 < x < 0:
        w, x = w + x, 0.0
    if -1e-3 < y < 0:
        h, y = h + y, 0.0
    w = width - x if 0 < x + w - width < 1e-3 else w
    h = height - y if 0 < y + h - height < 1e-3 else h
    return x, y, w, h


def _float(value: object, source: SequenceSource, frame: int) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise DataError(f"sequence {source.name}, file {source.annotation}, frame {frame}: bad number {value!r}") from e
