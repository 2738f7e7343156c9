"""Temporal input (issue 24): causal motion channels from earlier frames, the same for extraction, detect and serving.

:mod:`csfnet.temporal.motion` computes them (:func:`motion_map`, :class:`MotionBuffer`);
:mod:`csfnet.temporal.dataset_files` stores, loads and checks them next to a dataset's images;
:mod:`csfnet.temporal.model_spec` reads the spec a trained model carries (:func:`model_motion`).
"""

from csfnet.temporal.dataset_files import (
    check_dataset_motion,
    colour_view,
    dataset_motion,
    load_motion,
    load_stacked,
    motion_path,
)
from csfnet.temporal.model_spec import model_motion
from csfnet.temporal.motion import MotionBuffer, MotionSpec, clear_padding, motion_map, stack

__all__ = [
    "MotionBuffer",
    "MotionSpec",
    "check_dataset_motion",
    "clear_padding",
    "colour_view",
    "dataset_motion",
    "load_motion",
    "load_stacked",
    "model_motion",
    "motion_map",
    "motion_path",
    "stack",
]
