"""A detector over an exported ONNX model: images in, boxes with scores out.

Pre- and post-processing are ultralytics' own (letterbox, NMS, box rescaling), so its detections match
``YOLO(model.onnx).predict`` while the network runs in a bare onnxruntime session; slicing is ``csfnet detect``'s.
The MLflow model serves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from csfnet.errors import DataError

if TYPE_CHECKING:
    from csfnet.detect.predict import SliceOptions

COLUMNS = ["image", "x1", "y1", "x2", "y2", "score", "class_id", "class_name"]


def session(path: str | Path, providers: Sequence[str] | None = None):
    """An onnxruntime session; default providers: CUDA when available, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    default = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), providers=list(providers or default))


class OnnxDetector:
    """Run an ultralytics-exported detection ONNX model on BGR images, whole or sliced.

    The same :class:`csfnet.detect.predict.Predictor` as ``csfnet detect``, so served predictions equal the
    command's on the same frame and options.

    Args:
        path: The ``.onnx`` file (its metadata gives imgsz, stride and class names).
        providers: onnxruntime execution providers; default: CUDA when available, else CPU.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None):
        from csfnet.detect.runtimes import OnnxRuntime

        self.runtime = OnnxRuntime(path, providers=list(providers) if providers else None)
        self.session, self.imgsz, self.names = self.runtime.session, self.runtime.imgsz, self.runtime.names
        self.input = self.runtime.input

    def __call__(
        self,
        images: Sequence[np.ndarray],
        conf: float = 0.25,
        iou: float = 0.6,
        slicing: SliceOptions | None = None,
        earlier: Sequence[Mapping[int, np.ndarray | None] | None] | None = None,
    ) -> list[np.ndarray]:
        """Detections per image as ``(n, 6)`` arrays ``x1, y1, x2, y2, score, class`` in source pixels.

        ``earlier[i]`` maps a source-frame distance ``d`` to the BGR frame ``d`` frames before ``images[i]``: a
        temporal model computes its motion channels from them (``csfnet.temporal.motion_map``, as ``csfnet detect``
        does), an offset of its spec with no frame gets the documented fallback (an all-zero channel, as at the start
        of a stream). Raises DataError for earlier frames given to a single-frame model, or at distances the model
        does not use, or an ``earlier`` whose length is not the number of images."""
        from csfnet.detect.predict import Predictor
        from csfnet.detect.temporal_input import stacked_input

        given = list(earlier) if earlier is not None else [None] * len(images)
        if len(given) != len(images):  # zip would silently drop the images without an entry
            raise DataError(f"{len(images)} images but {len(given)} entries of earlier frames: give one per image")
        stacked = [stacked_input(im, e, self.runtime.motion) for im, e in zip(images, given)]
        return Predictor(self.runtime, conf, iou, slicing)(stacked)

    def to_rows(self, detections: Sequence[np.ndarray]) -> list[list]:
        """Flat table rows (see ``COLUMNS``), one per box."""
        return [
            [i, *map(float, d[:5]), int(d[5]), self.names.get(int(d[5]), str(int(d[5])))]
            for i, dets in enumerate(detections)
            for d in dets
        ]
