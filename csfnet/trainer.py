"""ultralytics' detection trainer taught to build CSF-Net configs and to start from a local YOLOv8 checkpoint."""

from __future__ import annotations

from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER, RANK

from csfnet.model import build_model, is_csfnet, load_config


class CSFNetTrainer(DetectionTrainer):
    """``DetectionTrainer`` whose ``get_model`` understands CSF-Net names, YAMLs and checkpoint config dicts.

    ``args.model`` may be a CSF-Net config (name, YAML path with ``builder: csfnet``), an ultralytics YAML such as
    ``yolov8n.yaml``, or a ``last.pt`` to resume. ``args.pretrained`` may name a local ``.pt`` whose shape-matching
    tensors initialise the model; ultralytics loads that file itself and never downloads it here.
    """

    def get_model(self, cfg: str | dict | None = None, weights: torch.nn.Module | None = None, verbose: bool = True):
        """Build the configured model for the dataset's classes and channels, optionally initialised from weights."""
        nc, ch = self.data["nc"], self.data["channels"]
        if cfg is not None and is_csfnet(cfg):
            cfg = cfg if isinstance(cfg, dict) else load_config(cfg, nc=nc)
            model = build_model(cfg, nc=nc, ch=ch, verbose=verbose and RANK == -1)
        else:
            model = DetectionModel(cfg, nc=nc, ch=ch, verbose=verbose and RANK == -1)
        model = self.set_model_names_for_load(model)
        if weights is not None:
            loaded, total = transfer_weights(model, weights)
            LOGGER.info(f"Pretrained initialisation: loaded {loaded}/{total} tensors from the checkpoint")
            self.pretrained_tensors = loaded
        return model


def transfer_weights(model: torch.nn.Module, source: torch.nn.Module | dict[str, torch.Tensor]) -> tuple[int, int]:
    """Copy every shape-matching tensor of ``source`` into ``model``; return (tensors loaded, tensors in model).

    Layers are matched by index inside the backbone (CSF-Net's shallow backbone is YOLOv8's, layer for layer) and by
    position from the start of the head, so a YOLOv8 checkpoint also initialises the matching PAN/Detect layers.
    """
    src_state = source.float().state_dict() if isinstance(source, torch.nn.Module) else source
    dst_state = model.state_dict()
    offset = _head_offset(model, source)
    loaded = {}
    for key, tensor in src_state.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "model" and parts[1].isdigit():
            index = int(parts[1])
            if offset is not None and index >= offset[0]:
                parts[1] = str(index - offset[0] + offset[1])
            target = ".".join(parts)
            if target in dst_state and dst_state[target].shape == tensor.shape:
                loaded[target] = tensor
    model.load_state_dict(loaded, strict=False)
    return len(loaded), len(dst_state)


def _head_offset(model: torch.nn.Module, source: Any) -> tuple[int, int] | None:
    """(first head layer in source, first head layer in model) when both have ultralytics YAML configs."""
    src_yaml, dst_yaml = getattr(source, "yaml", None), getattr(model, "yaml", None)
    if not isinstance(src_yaml, dict) or not isinstance(dst_yaml, dict):
        return None
    return len(src_yaml["backbone"]), len(dst_yaml["backbone"])
