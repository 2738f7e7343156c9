"""Motion channels on disk: where they live next to a dataset's images, loading them stacked, checking a dataset.

For every image ``<root>/images/<split>/<stem>.<ext>`` the channel of offset ``d`` is the grayscale 8-bit PNG
``<root>/motion/d<d>/<split>/<stem>.png`` (same size). ``data.yaml`` of a motion dataset holds
``channels: 3 + k`` and ``motion: {offsets, align, align_size}``; a single-frame dataset has neither key.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from csfnet.errors import DataError, InputNotFoundError
from csfnet.files import write_text
from csfnet.temporal.motion import MotionSpec, stack

MOTION_DIR = "motion"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def motion_path(image_path: str | Path, offset: int) -> Path:
    """The motion PNG of offset ``offset`` for the dataset image ``image_path`` (``.../images/<split>/<stem>.*``)."""
    image_path = Path(image_path)
    parts = image_path.parts
    if "images" not in parts[:-1]:
        raise DataError(f"{image_path}: not under an images/ folder, so it has no motion files")
    cut = len(parts) - 1 - parts[::-1].index("images")
    root, rel = Path(*parts[:cut]), Path(*parts[cut + 1 :])
    return root / MOTION_DIR / f"d{offset}" / rel.with_suffix(".png")


def load_motion(image_path: str | Path, spec: MotionSpec, size: tuple[int, int] | None = None) -> np.ndarray:
    """HxWxk uint8: the motion PNGs of ``image_path`` in offset order; DataError naming a missing or unreadable one
    or one whose size differs from ``size`` (height, width)."""
    channels = []
    for d in spec.offsets:
        path = motion_path(image_path, d)
        channel = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if channel is None:
            raise DataError(f"{image_path}: motion file {path} (offset {d}) is missing or unreadable; re-extract")
        if size is not None and channel.shape != tuple(size):
            raise DataError(f"{path}: motion map {channel.shape} does not match its image {tuple(size)}")
        channels.append(channel)
    return np.stack(channels, axis=2)


def load_stacked(image_path: str | Path, spec: MotionSpec) -> np.ndarray:
    """HxWx(3+k) uint8: the BGR image at ``image_path`` and its motion channels (see :func:`load_motion`)."""
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"cannot read image {image_path}")
    return stack(image, load_motion(image_path, spec, image.shape[:2]))


def _data_yaml(source: str | Path | Mapping[str, Any]) -> tuple[dict[str, Any], Path | None]:
    if isinstance(source, Mapping):
        return dict(source), None
    path = Path(source)
    path = path / "data.yaml" if path.is_dir() else path
    if not path.is_file():
        raise InputNotFoundError(f"{path}: no data.yaml (not an extracted dataset)")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a dataset description (expected a mapping)")
    return data, path


def dataset_motion(data: str | Path | Mapping[str, Any]) -> MotionSpec | None:
    """The motion spec a dataset was extracted with (its data.yaml path, folder or loaded dict); None for
    single-frame data."""
    values, path = _data_yaml(data)
    motion = values.get("motion")
    if not motion:
        return None
    try:
        return MotionSpec.from_dict(motion)
    except DataError as e:
        raise DataError(f"{path or 'data.yaml'}: {e}") from None


def colour_view(data: str | Path | Mapping[str, Any], out: str | Path) -> Path:
    """Write ``out``: a data.yaml naming the same images as ``data`` (folder or data.yaml) without its motion channels,
    so a single-frame model trains and is scored on the colour frames of a motion dataset (one split for temporal and
    single-frame models in a comparison); return ``out``."""
    values, path = _data_yaml(data)
    base = path.parent if path is not None else Path(data if not isinstance(data, Mapping) else ".")
    root = base / values["path"] if values.get("path") else base
    view = {k: v for k, v in values.items() if k not in ("motion", "channels")}
    view["path"] = str(root.resolve())
    write_text(out, yaml.safe_dump(view, sort_keys=False))
    return Path(out)


def _describe(spec: MotionSpec | None) -> str:
    if spec is None:
        return "no motion channels (single-frame)"
    return f"motion offsets {list(spec.offsets)} (align {spec.align} at {spec.align_size} px)"


def check_dataset_motion(root: str | Path, expected: MotionSpec | None) -> None:
    """DataError naming the mismatch unless the dataset at ``root`` (folder or data.yaml) was extracted with
    ``expected`` and every image of its splits has its motion files: other offsets or alignment than expected
    (stale), motion where none is expected or none where it is, a missing motion file."""
    values, path = _data_yaml(root)
    found = dataset_motion(values)
    where = path or Path(root)
    if found != expected:
        raise DataError(
            f"dataset {where} has {_describe(found)} but the settings ask for {_describe(expected)}; "
            "re-extract it with these temporal settings"
        )
    if expected is None:
        return
    channels = values.get("channels")
    if channels != 3 + expected.channels:
        raise DataError(f"dataset {where}: channels {channels} but motion offsets {list(expected.offsets)} need "
                        f"{3 + expected.channels}")  # fmt: skip
    base = path.parent if path is not None else Path(root)
    base = base / values["path"] if values.get("path") else base
    for split in ("train", "val", "test"):
        if not isinstance(values.get(split), str):
            continue
        folder = base / values[split]
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
        missing = [(p, d) for p in images for d in expected.offsets if not motion_path(p, d).is_file()]
        if missing:
            image, d = missing[0]
            raise DataError(
                f"dataset {where}: {len(missing)} motion files missing in split {split}, first {motion_path(image, d)} "
                f"(offset {d}); re-extract"
            )
