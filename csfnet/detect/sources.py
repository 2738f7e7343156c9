"""What ``csfnet detect`` reads: a video file, a folder or glob of images, or a stream URL, as BGR frames.

The source is opened and its first frame decoded before anything is written, so a missing or corrupt input fails
early with a one-line error. Frames are decoded in a background thread (OpenCV releases the GIL), overlapping
decoding with inference.
"""

from __future__ import annotations

import glob
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from csfnet.data.formats import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from csfnet.errors import DataError, InputNotFoundError, ServiceError

STREAM_SCHEMES = ("rtsp://", "rtmp://", "http://", "https://", "udp://", "tcp://")


@dataclass
class Source:
    """An opened source. ``frames`` is the stated frame count (None for streams); ``names`` the image files."""

    spec: str
    kind: str  # video | images | stream
    fps: float
    width: int
    height: int
    frames: int | None
    names: list[str] = field(default_factory=list)
    _capture: cv2.VideoCapture | None = None
    _first: np.ndarray | None = None

    @property
    def stem(self) -> str:
        return Path(self.spec.rstrip("/")).stem.replace("*", "") or "source"

    def __iter__(self) -> Iterator[np.ndarray]:
        """Every frame, decoded ahead in a thread; raises DataError for an image that does not decode."""
        items: queue.Queue = queue.Queue(maxsize=8)
        stop = threading.Event()

        def put(item: object) -> bool:
            """Queue ``item`` unless the consumer has stopped; False once it has."""
            while not stop.is_set():
                try:
                    items.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for frame in self._frames():
                    if not put(frame):
                        return
                put(None)
            except Exception as e:  # handed to the consumer
                put(e)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        try:
            while (item := items.get()) is not None:
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join(timeout=5)

    def _frames(self) -> Iterator[np.ndarray]:
        if self.kind == "images":
            yield self._first  # type: ignore[misc]
            for name in self.names[1:]:
                yield _read_image(name)
            return
        capture = self._capture
        assert capture is not None
        try:
            yield self._first  # type: ignore[misc]
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield frame
        finally:
            capture.release()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()


def open_source(spec: str | Path) -> Source:
    """Open ``spec``: a video file, an image file, a folder of images, a glob (``frames/*.jpg``) or a stream URL.

    Raises:
        InputNotFoundError: The file, folder or glob matches nothing.
        DataError: The video or first image does not decode, or a folder holds no images.
        ServiceError: The stream URL cannot be opened.
    """
    text = str(spec)
    if text.lower().startswith(STREAM_SCHEMES):
        return _open_video(text, "stream")
    path = Path(text)
    if any(c in text for c in "*?[") and not path.exists():
        files = sorted(p for p in glob.glob(text, recursive=True) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise InputNotFoundError(f"source {text}: no image matches the pattern")
        return _open_images(text, files)
    if not path.exists():
        raise InputNotFoundError(f"source {path} not found")
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"source {path}: the folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return _open_images(text, files)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _open_images(text, [str(path)])
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise DataError(f"source {path}: not a video ({', '.join(VIDEO_SUFFIXES)}) or image file")
    return _open_video(text, "video")


def _open_video(spec: str, kind: str) -> Source:
    capture = cv2.VideoCapture(spec)
    ok, first = capture.read() if capture.isOpened() else (False, None)
    if not ok or first is None:
        capture.release()
        if kind == "stream":
            raise ServiceError(f"stream {spec}: cannot be opened or sends no frame")
        raise DataError(f"video {spec} is corrupt or truncated: no decodable frame")
    fps = capture.get(cv2.CAP_PROP_FPS)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if kind == "video" else 0
    h, w = first.shape[:2]
    return Source(spec, kind, fps if 0 < fps < 1000 else 25.0, w, h, count or None, _capture=capture, _first=first)


def _open_images(spec: str, files: list[str]) -> Source:
    first = _read_image(files[0])
    h, w = first.shape[:2]
    return Source(spec, "images", 25.0, w, h, len(files), names=files, _first=first)


def _read_image(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"image {path} does not decode")
    return image
