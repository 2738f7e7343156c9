"""``csfnet detect``: sliced inference, object tracking and a choice of CPU runtimes over videos, images and streams."""

from csfnet.detect.predict import Predictor, SliceOptions
from csfnet.detect.run import DetectResult, detect
from csfnet.detect.runtimes import load_runtime

__all__ = ["DetectResult", "Predictor", "SliceOptions", "detect", "load_runtime"]
