"""Which motion channels a model was trained with: ``model.yaml["motion"]``, written by the trainer from data.yaml.

A temporal model's checkpoint carries the spec (``MotionSpec.to_dict()``) in its config, so detect, export and
serving know which earlier frames to keep; a single-frame model has no ``motion`` key (and 3 input channels).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from csfnet.errors import DataError
from csfnet.temporal.dataset_files import dataset_motion
from csfnet.temporal.motion import MotionSpec

MOTION_KEY = "motion"  # key of the model config (``model.yaml``) holding MotionSpec.to_dict()


def model_motion(model: Any) -> MotionSpec | None:
    """The motion spec of a model: a built or loaded model (its ``yaml``), a config dict, a ``.pt`` checkpoint or a
    model YAML file; None for a single-frame model.

    An ultralytics ``YOLO`` wrapper works too (through its ``model``). DataError if the stored spec is malformed.
    """
    config = _config(model)
    spec = config.get(MOTION_KEY) if isinstance(config, Mapping) else None
    return MotionSpec.from_dict(spec) if spec else None


def set_model_motion(config: dict[str, Any], spec: MotionSpec | None) -> None:
    """Record ``spec`` in a model config (``model.yaml``), or remove any spec for single-frame data."""
    if spec is None:
        config.pop(MOTION_KEY, None)
    else:
        config[MOTION_KEY] = spec.to_dict()


def check_model_data_motion(model: Any, data: str | Path | Mapping[str, Any], name: str = "the model") -> None:
    """DataError naming the mismatch when a model (as :func:`model_motion` takes it) is used on a dataset (its
    data.yaml, folder or dict) extracted with other motion channels: a temporal model on single-frame data, a
    single-frame model on motion data, or other offsets or alignment than it was trained with."""
    trained, found = model_motion(model), dataset_motion(data)
    if trained == found:
        return
    if trained is None:
        raise DataError(f"{name} is a single-frame model but dataset {data} has motion channels {_text(found)}")
    if found is None:
        raise DataError(f"{name} is a temporal model {_text(trained)} but dataset {data} has no motion channels")
    raise DataError(f"{name} was trained with motion {_text(trained)} but dataset {data} has {_text(found)}")


def _text(spec: MotionSpec) -> str:
    return f"(offsets {list(spec.offsets)}, align {spec.align} at {spec.align_size} px)"


def _config(model: Any) -> Mapping[str, Any] | None:
    if isinstance(model, Mapping):
        return model
    if isinstance(model, (str, Path)):
        return _file_config(Path(model))
    inner = getattr(model, "model", None)  # ultralytics' YOLO wrapper holds the DetectionModel
    if not isinstance(getattr(model, "yaml", None), Mapping) and inner is not None and hasattr(inner, "yaml"):
        model = inner
    config = getattr(model, "yaml", None)
    return config if isinstance(config, Mapping) else None


def _file_config(path: Path) -> Mapping[str, Any] | None:
    if path.suffix in {".yaml", ".yml"}:
        import yaml

        return yaml.safe_load(path.read_text())
    if path.suffix in {".pt", ".pth"}:
        import torch

        ckpt = torch.load(str(path), map_location="cpu", weights_only=False)
        module = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else ckpt
        return _config(module) if module is not None else None
    return None
