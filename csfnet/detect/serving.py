"""The registered model's pyfunc: base64 images in, one row per box out, sliced on request like ``csfnet detect``.

Params (all optional, per request): ``conf``, ``iou``, ``slice`` (side in pixels, 0 = whole frame), ``overlap``,
``full_frame``, ``merge`` (``nmm``/``nms``), ``merge_threshold``. The predictions are
:class:`csfnet.detect.predict.Predictor`'s, the code ``csfnet detect`` runs, so a served frame and the same frame in
``csfnet detect`` with the same options give the same boxes.
"""

from __future__ import annotations

import base64

import mlflow
import numpy as np

from csfnet.detect.onnx_detector import COLUMNS, OnnxDetector

#: Every param the served model takes, with its default: the signature registration must declare (MLflow drops
#: params that are not in the signature).
PARAMS = {
    "conf": 0.25,
    "iou": 0.6,
    "slice": 0,
    "overlap": 0.2,
    "full_frame": True,
    "merge": "nmm",
    "merge_threshold": 0.5,
}


class SlicedDetectorModel(mlflow.pyfunc.PythonModel):
    """pyfunc over the ONNX artifact ``onnx``. Input: a DataFrame whose ``image`` column holds base64 image files.
    Output: ``COLUMNS`` rows in source pixels. Params: :data:`PARAMS`."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.detector = OnnxDetector(context.artifacts["onnx"])

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would derive a schema from them
        import pandas as pd

        from csfnet.detect.predict import SliceOptions

        p = {**PARAMS, **(params or {})}
        slicing = SliceOptions(
            int(p["slice"]) or None,
            float(p["overlap"]),
            bool(p["full_frame"]),
            str(p["merge"]),
            float(p["merge_threshold"]),
        )
        images = [decode_image(value, row) for row, value in enumerate(model_input["image"])]
        detections = self.detector(images, conf=float(p["conf"]), iou=float(p["iou"]), slicing=slicing)
        return pd.DataFrame(self.detector.to_rows(detections), columns=COLUMNS)


def decode_image(value: str | bytes, row: int) -> np.ndarray:
    """A base64 image file as BGR; an MLflow "invalid parameter" (HTTP 400) naming the row when it is not one."""
    import cv2
    from mlflow.exceptions import MlflowException

    try:
        data = base64.b64decode(value, validate=True)
    except (ValueError, TypeError) as e:
        raise MlflowException.invalid_parameter_value(f"row {row}: 'image' is not base64 ({e})") from e
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise MlflowException.invalid_parameter_value(f"row {row}: 'image' does not decode as an image file")
    return image
