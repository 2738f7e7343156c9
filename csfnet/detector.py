"""A detector over an exported ONNX model: images in, boxes with scores out.

Pre- and post-processing are ultralytics' own (letterbox, NMS, box rescaling), so its detections match
``YOLO(model.onnx).predict`` while the network runs in a bare onnxruntime session. The MLflow model serves it.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import numpy as np

COLUMNS = ["image", "x1", "y1", "x2", "y2", "score", "class_id", "class_name"]


def session(path: str | Path, providers: Sequence[str] | None = None):
    """An onnxruntime session; default providers: CUDA when available, else CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    default = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(path), providers=list(providers or default))


def preprocess(images: Sequence[np.ndarray], imgsz: int) -> np.ndarray:
    """BGR images as the exported graph takes them: letterboxed to a square (ultralytics' LetterBox), RGB, NCHW
    float32 in 0-1."""
    from ultralytics.data.augment import LetterBox

    letterbox = LetterBox((imgsz, imgsz), auto=False)
    x = np.stack([letterbox(image=im)[..., ::-1].transpose(2, 0, 1) for im in images])
    return np.ascontiguousarray(x, dtype=np.float32) / 255.0


class OnnxDetector:
    """Run an ultralytics-exported detection ONNX model on BGR images.

    Args:
        path: The ``.onnx`` file (its metadata gives imgsz, stride and class names).
        providers: onnxruntime execution providers; default: CUDA when available, else CPU.
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None):
        self.session = session(path, providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.imgsz = int(ast.literal_eval(meta.get("imgsz", "[640, 640]"))[0])
        self.names = {int(k): str(v) for k, v in ast.literal_eval(meta.get("names", "{0: 'object'}")).items()}
        self.input = self.session.get_inputs()[0].name

    def __call__(self, images: Sequence[np.ndarray], conf: float = 0.25, iou: float = 0.6) -> list[np.ndarray]:
        """Detections per image as ``(n, 6)`` arrays ``x1, y1, x2, y2, score, class`` in source pixels."""
        import torch
        from ultralytics.utils import nms, ops

        if not images:
            return []
        x = preprocess(images, self.imgsz)
        raw = self.session.run(None, {self.input: x})[0]
        results = nms.non_max_suppression(torch.from_numpy(raw), conf, iou, max_det=300)
        out = []
        for det, image in zip(results, images):
            det[:, :4] = ops.scale_boxes(x.shape[2:], det[:, :4], image.shape[:2])
            out.append(det.numpy())
        return out

    def to_rows(self, detections: Sequence[np.ndarray]) -> list[list]:
        """Flat table rows (see ``COLUMNS``), one per box."""
        return [
            [i, *map(float, d[:5]), int(d[5]), self.names.get(int(d[5]), str(int(d[5])))]
            for i, dets in enumerate(detections)
            for d in dets
        ]
