"""Input checks made before any work starts, so that ultralytics never sees a bad input.

ultralytics answers a missing weights file by trying to download it, a malformed ``data.yaml`` with a YAML
traceback and an empty split with a coloured message; these checks turn each into one line naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from csfnet.data.dataset import IMAGE_SUFFIXES
from csfnet.errors import CheckpointError, DataError, InputNotFoundError


def require_file(path: str | Path, what: str, hint: str = "") -> Path:
    """``path`` as a Path if it is an existing file, else InputNotFoundError naming ``what`` (and a ``hint``)."""
    path = Path(path)
    if not path.is_file():
        hint = "it is a folder" if path.is_dir() else hint
        raise InputNotFoundError(f"{what} {path} not found" + (f" ({hint})" if hint else ""))
    return path


def check_checkpoint(path: str | Path) -> Path:
    """An existing, loadable ultralytics checkpoint (``.pt``) or ONNX model; never a download."""
    path = require_file(path, "model file", "a local file; nothing is downloaded")
    if path.suffix == ".onnx":
        import onnx

        try:
            onnx.load(str(path), load_external_data=False)
        except Exception as e:
            raise CheckpointError(f"{path} is not an ONNX model ({type(e).__name__})") from None
        return path
    if path.suffix != ".pt":
        raise CheckpointError(f"{path}: expected a .pt checkpoint or an .onnx model")
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({reason[:120]})") from None
    if not isinstance(checkpoint, dict) or (checkpoint.get("ema") or checkpoint.get("model")) is None:
        raise CheckpointError(f"{path} holds no model (expected an ultralytics checkpoint with 'model' or 'ema')")
    return path


def check_dataset(data: str | Path, splits: tuple[str, ...] = ("val",)) -> dict[str, Any]:
    """A parsed ``data.yaml`` whose ``splits`` exist and hold images; DataError naming the file otherwise."""
    data = require_file(data, "dataset file", "run `csfnet data extract` first")
    try:
        info = yaml.safe_load(data.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise DataError(f"{data}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(info, dict) or not info.get("names"):
        raise DataError(f"{data}: not a YOLO dataset file (needs 'names' and the split folders)")
    root = Path(info["path"]) if info.get("path") else data.parent  # as ultralytics resolves it
    for split in splits:
        entries = info.get(split)
        if not entries:
            raise DataError(f"{data}: no {split!r} split")
        for entry in entries if isinstance(entries, list) else [entries]:
            folder = Path(entry) if Path(entry).is_absolute() else root / entry
            if not folder.exists():
                raise DataError(f"{data}: {split} folder {folder} does not exist")
            if folder.is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.rglob("*")):
                raise DataError(f"{data}: the {split} split ({folder}) holds no images")
    return info
