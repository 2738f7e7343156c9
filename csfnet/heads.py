"""Which head a detector is validated, predicted and exported with: YOLO26-style NMS-free heads or NMS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def has_end_to_end_head(model: torch.nn.Module | dict[str, Any] | str | Path) -> bool:
    """Whether a model has an NMS-free (one-to-one) head: a built model, a resolved config (dict or ultralytics
    YAML name), or a ``.pt`` checkpoint. Exported models carry the choice in their metadata instead (False here)."""
    if isinstance(model, torch.nn.Module):
        head = model.model[-1] if hasattr(model, "model") else None
        return getattr(head, "one2one_cv2", None) is not None
    if isinstance(model, dict):
        return bool(model.get("end2end", False))
    if str(model).endswith((".pt", ".pth")):
        ckpt = torch.load(str(model), map_location="cpu", weights_only=False)
        module = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
        return isinstance(module, torch.nn.Module) and has_end_to_end_head(module)
    if str(model).endswith((".yaml", ".yml")):  # ultralytics' YAML or a CSF-Net one: the same top-level key
        from ultralytics.nn.tasks import yaml_model_load

        return bool(yaml_model_load(str(model)).get("end2end", False))
    return False


def head_args(model: torch.nn.Module | dict[str, Any] | str | Path, end_to_end: bool) -> dict[str, Any]:
    """ultralytics arguments that choose the head a model is validated, predicted and exported with: ``nms=False``
    (its one-to-one branch, no NMS) for a model with an NMS-free head when ``end_to_end`` (setting
    ``eval.end_to_end``), else none (ultralytics' default: the one-to-many branch + NMS)."""
    return {"nms": False} if end_to_end and has_end_to_end_head(model) else {}
