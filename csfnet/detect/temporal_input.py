"""Motion input at inference: which earlier frames a model needs, and the stacked arrays it takes.

A temporal model (issue 24) takes ``3 + k`` channels, the BGR frame then one motion channel per earlier frame of its
:class:`csfnet.temporal.MotionSpec`; a single-frame model takes 3. The spec travels with the model (``.pt``:
``model.yaml["motion"]``; ONNX: the ``motion`` metadata entry; OpenVINO: ``motion`` in ``metadata.yaml``, all the
JSON of ``MotionSpec.to_dict()``), and the motion channels are always computed by :mod:`csfnet.temporal`'s one
function (``motion_map``, through a per-stream ``MotionBuffer``), so training, ``csfnet detect``, export
verification and serving cannot drift apart. A mismatch between model and input is a one-line error naming it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from csfnet.errors import CheckpointError, DataError

if TYPE_CHECKING:
    from csfnet.temporal import MotionSpec


def parse_spec(value: Any, where: str | Path = "model") -> MotionSpec | None:
    """The spec of a model's ``motion`` entry (a dict or its JSON text; None or empty: a single-frame model).

    Raises:
        CheckpointError: The entry is not a motion spec.
    """
    if value in (None, "", {}, "None", "null"):
        return None
    from csfnet.temporal import MotionSpec

    try:
        data = json.loads(value) if isinstance(value, str) else dict(value)
        return MotionSpec.from_dict(data) if data.get("offsets") else None
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise CheckpointError(f"{where}: its motion entry {value!r} is not a motion spec ({e})") from e


def spec_json(spec: MotionSpec | None) -> str | None:
    """The ``motion`` metadata entry of ``spec`` (None for a single-frame model)."""
    return None if spec is None else json.dumps(spec.to_dict(), sort_keys=True)


def describe(spec: MotionSpec | None) -> str:
    """``single-frame`` or ``temporal (motion offsets [1, 3])``, for messages."""
    return "single-frame" if spec is None else f"temporal (motion offsets {list(spec.offsets)})"


def check_model(channels: int, spec: MotionSpec | None, where: str | Path) -> None:
    """CheckpointError unless the model's input channels are 3 + the motion channels its spec declares."""
    expected = 3 + (spec.channels if spec is not None else 0)
    if channels != expected:
        detail = f"motion offsets {list(spec.offsets)}" if spec is not None else "no motion spec"
        raise CheckpointError(
            f"{where}: the model takes {channels} input channels but carries {detail} (expects {expected})"
        )


def check_frame(image: np.ndarray, channels: int, spec: MotionSpec | None) -> None:
    """DataError unless ``image`` has the model's channel count (3 for a single-frame model)."""
    got = image.shape[2] if image.ndim == 3 else 1
    if got != channels:
        given = "motion input" if got > 3 else "a single frame"
        raise DataError(f"a {describe(spec)} model takes {channels} channels, got {given} with {got} channels")


def read_frame(path: str | Path, spec: MotionSpec | None) -> np.ndarray:
    """A dataset image as the model takes it: BGR, or for a temporal model BGR + its stored motion channels
    (:func:`csfnet.temporal.load_stacked`)."""
    import cv2

    if spec is None:
        image = cv2.imread(str(path))
        if image is None:
            raise DataError(f"image {path} does not decode")
        return image
    from csfnet.temporal import load_stacked

    return load_stacked(Path(path), spec)


class FrameStacker:
    """One stream's frames in, model input out: the frame itself for a single-frame model, else the frame stacked
    with its motion channels from a :class:`csfnet.temporal.MotionBuffer` (push every decoded frame, in order)."""

    def __init__(self, spec: MotionSpec | None):
        self.spec = spec
        if spec is not None:
            from csfnet.temporal import MotionBuffer

            self.buffer = MotionBuffer(spec)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        if self.spec is None:
            return frame
        from csfnet.temporal import stack

        return stack(frame, self.buffer.push(frame))


def stacked_input(
    current: np.ndarray, earlier: Mapping[int, np.ndarray | None] | None, spec: MotionSpec | None
) -> np.ndarray:
    """The model input of one frame given the frames before it (``earlier[d]`` = the frame ``d`` source frames
    before). A temporal model stacks the motion channels of its offsets; an offset with no frame (absent or None)
    gets ``motion_map``'s documented fallback, an all-zero channel, as the first frames of a stream do.

    Raises:
        DataError: Earlier frames for a single-frame model, or at distances the model's spec does not use.
    """
    given = {int(d): f for d, f in (earlier or {}).items() if f is not None}
    if spec is None:
        if given:
            raise DataError(
                f"a single-frame model takes no motion input, got earlier frames at distances {sorted(given)}"
            )
        return current
    unused = sorted(set(given) - set(spec.offsets))
    if unused:
        raise DataError(f"a {describe(spec)} model takes earlier frames at those distances only, got {unused}")
    from csfnet.temporal import motion_map, stack

    return stack(current, motion_map(current, [given.get(d) for d in spec.offsets], spec))
