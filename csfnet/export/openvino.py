"""OpenVINO writer: FP32, and INT8 through NNCF, both by ultralytics' exporter. Unverified:
:func:`csfnet.export.export_openvino` verifies both before they are written in place.

OpenVINO is the CPU runtime ultralytics recommends. INT8 is NNCF post-training quantisation (ultralytics' recipe:
mixed preset, the Detect head's decoding kept in floating point) calibrated on evenly spaced *training* frames, as
the ONNX INT8 model is. A model is a folder (``model.xml``, ``model.bin``, ``metadata.yaml``) whose name ends in
``_openvino_model``, how ultralytics recognises it.

A temporal model (``model.yaml["motion"]``) is exported with its ``3 + k`` input channels and its spec as ``motion``
in ``metadata.yaml`` (the runtime reads it). Its INT8 calibration frames are the training images stacked with their
stored motion channels (:func:`csfnet.temporal.load_stacked`), fed by
:class:`csfnet.export.stacked_calibration.StackedCalibrationExporter` (ultralytics' own loader reads 3-channel files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from csfnet.data.dataset import calibration_images, split_images
from csfnet.detect.temporal_input import parse_spec
from csfnet.errors import SettingsError
from csfnet.files import replace_dir, write_text
from csfnet.temporal.model_spec import MOTION_KEY
from csfnet.temporal.motion import MotionSpec

SUFFIX = "_openvino_model"


def check_folder_name(folder: Path) -> None:
    """SettingsError unless ``folder`` ends in :data:`SUFFIX`."""
    if not folder.name.endswith(SUFFIX):
        raise SettingsError(f"OpenVINO folder {folder} must end in {SUFFIX!r} (how ultralytics recognises it)")


def openvino_export(
    weights: Path, imgsz: int, int8_data: Path | None = None, frames: int = 100, end_to_end: bool = True
) -> Path:
    """The OpenVINO folder of ``weights``, written next to it (dynamic shapes: the runtime pins the image size and
    leaves the batch free); INT8 when ``int8_data`` (a ``data.yaml``) gives ``frames`` calibration frames. An
    NMS-free head is exported through its one-to-one branch when ``end_to_end`` (:func:`csfnet.heads.head_args`;
    ``end2end`` in ``metadata.yaml`` records it)."""
    from ultralytics import YOLO

    from csfnet.heads import head_args

    args: dict[str, Any] = {"format": "openvino", "imgsz": imgsz, "dynamic": True, "device": "cpu"}
    yolo = YOLO(str(weights))
    args.update(head_args(yolo.model, end_to_end))
    spec = parse_spec(yolo.model.yaml.get(MOTION_KEY), weights)
    if int8_data is None:
        return _with_motion(Path(yolo.export(**args)), spec)
    calibration = calibration_images(int8_data, frames)  # InputNotFoundError when the split has none
    train = split_images(int8_data, "train")
    # every frame counts (batch 1: ultralytics' calibration loader drops an incomplete last batch)
    args.update(quantize=8, data=str(int8_data), split="train", fraction=min(1.0, frames / len(train)), batch=1)
    if spec is None:
        return Path(yolo.export(**args))
    from csfnet.export.stacked_calibration import StackedCalibrationExporter

    exporter = StackedCalibrationExporter(calibration, spec, overrides={**yolo.overrides, **args, "mode": "export"})
    return _with_motion(Path(exporter(model=yolo.model)), spec)


def _with_motion(folder: Path, spec: MotionSpec | None) -> Path:
    """Record a temporal model's motion spec in the folder's ``metadata.yaml`` (nothing for a single-frame one)."""
    if spec is not None:
        meta_file = folder / "metadata.yaml"
        meta = yaml.safe_load(meta_file.read_text()) or {}
        meta["motion"] = spec.to_dict()
        write_text(meta_file, yaml.safe_dump(meta, sort_keys=False))
    return folder


def install(src: Path, dst: Path) -> None:
    """Move a verified folder into place, replacing an older one, and record in its metadata that it is verified."""
    meta_file = src / "metadata.yaml"
    meta = yaml.safe_load(meta_file.read_text()) or {}
    meta["csfnet_verified"] = True
    meta_file.write_text(yaml.safe_dump(meta, sort_keys=False))
    replace_dir(src, dst)


def size_mb(folder: Path) -> float:
    """Size of the model's weights (``.bin``) in MiB."""
    return round(sum(p.stat().st_size for p in folder.glob("*.bin")) / 2**20, 2)
