"""The registered model's pyfunc: base64 images in, one row per box out, sliced on request like ``csfnet detect``.

Input: a DataFrame, one row per frame. ``image`` (required): the frame, a base64 image file. ``earlier``
(optional, declared in every registered model's signature): the frames before it that a temporal model needs, as
JSON text mapping the source-frame distance to a base64 image file, e.g. ``{"1": "<b64>", "3": "<b64>"}`` for a
model with motion offsets [1, 3] (:data:`EARLIER`). A temporal model computes its motion channels from them with
``csfnet.temporal.motion_map``, as ``csfnet detect`` does; a distance it needs but the request lacks (or sends as
null) gets the documented fallback, an all-zero motion channel, the state of the first frames of a stream. Earlier
frames sent to a single-frame model, at distances the model does not use, or that do not decode are an HTTP 400
naming the row.

Params (all optional, per request): ``conf``, ``iou``, ``slice`` (side in pixels, 0 = whole frame), ``overlap``,
``full_frame``, ``merge`` (``nmm``/``nms``), ``merge_threshold``. The predictions are
:class:`csfnet.detect.predict.Predictor`'s, the code ``csfnet detect`` runs, so a served frame and the same frame in
``csfnet detect`` with the same options give the same boxes.
"""

from __future__ import annotations

import base64
import json

import mlflow
import numpy as np

from csfnet.detect.onnx_detector import COLUMNS, OnnxDetector
from csfnet.errors import DataError

EARLIER = "earlier"  #: the optional input column of earlier frames (JSON: distance -> base64 image file)

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
    """pyfunc over the ONNX artifact ``onnx``. Input: a DataFrame whose ``image`` column holds base64 image files
    (and, optionally, :data:`EARLIER` their earlier frames). Output: ``COLUMNS`` rows in source pixels. Params:
    :data:`PARAMS`."""

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
        column = model_input[EARLIER] if EARLIER in model_input else [None] * len(images)
        earlier = [decode_earlier(value, row) for row, value in enumerate(column)]
        try:
            detections = self.detector(
                images, conf=float(p["conf"]), iou=float(p["iou"]), slicing=slicing, earlier=earlier
            )
        except DataError as e:
            from mlflow.exceptions import MlflowException

            raise MlflowException.invalid_parameter_value(str(e)) from e
        return pd.DataFrame(self.detector.to_rows(detections), columns=COLUMNS)


def encode_earlier(frames: dict[int, str | bytes]) -> str:
    """The :data:`EARLIER` value of earlier frames given as ``{distance: base64 image file}``."""
    return json.dumps({str(d): v.decode() if isinstance(v, bytes) else v for d, v in frames.items()}, sort_keys=True)


def decode_earlier(value: object, row: int) -> dict[int, np.ndarray | None]:
    """The earlier frames of an :data:`EARLIER` cell (empty when the cell is missing or null)."""
    from mlflow.exceptions import MlflowException

    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return {}
    try:
        frames = json.loads(value) if isinstance(value, (str, bytes)) else dict(value)  # type: ignore[call-overload]
        items = {int(d): frame for d, frame in frames.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise MlflowException.invalid_parameter_value(
            f"row {row}: '{EARLIER}' must be JSON mapping frame distances to base64 images ({e})"
        ) from e
    return {d: None if frame is None else decode_image(frame, row, f"{EARLIER}[{d}]") for d, frame in items.items()}


def decode_image(value: str | bytes, row: int, column: str = "image") -> np.ndarray:
    """A base64 image file as BGR; an MLflow "invalid parameter" (HTTP 400) naming the row when it is not one."""
    import cv2
    from mlflow.exceptions import MlflowException

    try:
        data = base64.b64decode(value, validate=True)
    except (ValueError, TypeError) as e:
        raise MlflowException.invalid_parameter_value(f"row {row}: '{column}' is not base64 ({e})") from e
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise MlflowException.invalid_parameter_value(f"row {row}: '{column}' does not decode as an image file")
    return image
