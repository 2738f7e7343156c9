"""ultralytics' detection trainer taught to build CSF-Net configs and to start from a local YOLOv8 checkpoint."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from csfnet.model import build_model, is_csfnet, load_config

RESUME_STATE = "last_state.pt"  # beside last.pt: what ultralytics' half-precision checkpoint leaves out


class CSFNetTrainer(DetectionTrainer):
    """``DetectionTrainer`` whose ``get_model`` understands CSF-Net names, YAMLs and checkpoint config dicts, and
    whose resume is exact.

    ``args.model`` may be a CSF-Net config (name, YAML path with ``builder: csfnet``), an ultralytics YAML such as
    ``yolov8n.yaml``, or a ``last.pt`` to resume. ``args.pretrained`` may name a local ``.pt`` whose shape-matching
    tensors initialise the model; ultralytics loads that file itself and never downloads it here.

    ultralytics resumes from ``last.pt``, which holds the EMA weights and optimizer state in half precision, so a
    resumed run continues from rounded weights and differs from an uninterrupted one. Each epoch this trainer also
    writes the full-precision model, EMA, optimizer and random states (including the batch shuffle) to
    ``weights/last_state.pt`` and restores them on resume; the file is removed when training finishes. A resumed
    run then equals an uninterrupted one bit for bit when batches are loaded in-process (``workers: 0``; worker
    processes draw the next epoch's shuffle ahead), no gradient-accumulation window spans the epoch boundary (e.g.
    ``nbs == batch``: ultralytics keeps the open window's step counter in a local variable no checkpoint holds) and
    the run does not resume past its close-mosaic epoch (ultralytics then rebuilds the loader once more than an
    uninterrupted run does). Otherwise it continues from the exact weights with a different batch order.
    """

    def save_model(self):
        """ultralytics' checkpoints, then the exact resume state (atomically: a kill never leaves half a file)."""
        saved = super().save_model()
        if RANK in {-1, 0}:
            state = {
                "epoch": self.epoch,
                "model": unwrap_model(self.model).state_dict(),
                "ema": self.ema.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "random": random.getstate(),
                    "loader": _loader_generator(self).get_state() if _loader_generator(self) else None,
                },
            }
            tmp = self.wdir / f".{RESUME_STATE}.{os.getpid()}"
            torch.save(state, tmp)
            tmp.replace(self.wdir / RESUME_STATE)
        return saved

    def resume_training(self, ckpt: dict | None) -> None:
        """ultralytics' resume, then the full-precision state saved with the same epoch, if there is one."""
        super().resume_training(ckpt)
        path = self.wdir / RESUME_STATE
        if ckpt is None or not self.resume or not path.is_file():
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("epoch") != ckpt.get("epoch"):
            return
        unwrap_model(self.model).load_state_dict(state["model"])
        self.ema.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        generator = _loader_generator(self)
        if state["rng"].get("loader") is not None and generator is not None:
            if getattr(self.train_loader, "iterator", "none kept") is None:
                # ultralytics creates the loader's iterator on first use, which draws from the generator too
                self.train_loader.iterator = self.train_loader._get_iterator()
            generator.set_state(state["rng"]["loader"])  # so that the next epoch's shuffle is the one saved
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["random"])
        LOGGER.info(f"Resumed the full-precision training state of epoch {state['epoch'] + 1}")

    def final_eval(self):
        """ultralytics' final validation; the run is complete, so the resume state is no longer needed."""
        result = super().final_eval()
        (self.wdir / RESUME_STATE).unlink(missing_ok=True)
        return result

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


def _loader_generator(trainer: DetectionTrainer) -> torch.Generator | None:
    """The generator that shuffles the training batches (drawn once per epoch)."""
    return getattr(getattr(trainer, "train_loader", None), "generator", None)


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
