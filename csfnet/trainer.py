"""ultralytics' detection trainer taught to build CSF-Net configs, to start from a local YOLOv8 checkpoint, to skip
early validations, to use every CPU core (:mod:`csfnet.threads`) and, on request, to train in bfloat16 mixed
precision on CPUs that compute it natively."""

from __future__ import annotations

import functools
import os
import random
from collections.abc import Callable
from copy import copy
from typing import Any

import numpy as np
import torch
from torch import distributed as dist
from torch import nn
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import DetectionModel, load_checkpoint
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.torch_utils import get_torch_device_backend, init_seeds, strip_optimizer, unwrap_model

from csfnet import distributed
from csfnet.model import build_model, is_csfnet, load_config
from csfnet.stacked_data import build_dataset, plotted
from csfnet.temporal import dataset_motion
from csfnet.temporal.model_spec import set_model_motion
from csfnet.threads import use_cpu_threads
from csfnet.validator import CSFNetValidator

RESUME_STATE = "last_state.pt"  # beside last.pt: what ultralytics' half-precision checkpoint leaves out


class CSFNetTrainer(DetectionTrainer):
    """``DetectionTrainer`` whose ``get_model`` understands CSF-Net names, YAMLs and checkpoint config dicts, whose
    resume is exact, which can skip the early epochs' validation (``val_last``) and can run the forward pass in
    bfloat16 on CPUs with native bf16 (``cpu_bf16``, see ``_setup_train``).

    ``overrides`` are ultralytics' training arguments plus csfnet's own ``val_last``: validate only the last N
    epochs (0 = all), for recipes whose model scores nothing early (the quick preset's scores mAP 0 for its first
    9 epochs of 18), where each validation costs a quarter to a third of a training epoch on CPU; ``channels_last``:
    train in the NHWC memory layout (float32 as before, 1.19x less CPU per step on AVX-512); and ``cpu_bf16``.

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

    Under ``torchrun`` (one node or many) rank, local rank and world size come from the launcher's environment, not
    from the ``device`` string: ultralytics never spawns its own DDP workers, each rank trains on its shard with
    ``batch / world_size`` images (the global batch is the preset's), NCCL joins GPUs and gloo CPUs, and only rank
    0 writes checkpoints and outputs. Every rank resumes the same full-precision weights and optimizer state; the
    random states saved are rank 0's alone, so a resumed multi-rank run is exact in weights but not bit for bit.
    """

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None) -> None:
        overrides = dict(overrides or {})
        self.val_last = int(overrides.pop("val_last", 0))  # csfnet's own arguments: ultralytics would reject them
        self.cpu_bf16 = bool(overrides.pop("cpu_bf16", False))
        self.channels_last = bool(overrides.pop("channels_last", False))
        launch = distributed.current_launch()
        if launch.distributed and overrides and "device" in overrides:  # ultralytics makes it current: this rank's
            overrides = {**overrides, "device": distributed.device_setting(overrides["device"], launch)}
        super().__init__(cfg, overrides, _callbacks)
        use_cpu_threads()  # every core, not ultralytics' cores - 1 (csfnet.threads)
        self.launch = launch
        if self.launch.distributed:  # one process per rank, already started: never ultralytics' own DDP spawn
            self.world_size, self.ddp = self.launch.world_size, False
            # ultralytics seeds rank r with seed + 1 + r, a single process with seed: rank 0 (whose weights DDP
            # hands to all) then starts from the model a single process would build
            init_seeds(self.args.seed + self.launch.rank, deterministic=self.args.deterministic)

    def _setup_ddp(self) -> None:
        """Join the launcher's process group on this rank's device (the CPU or its own GPU, chosen at __init__)."""
        if self.device.type != "cpu":
            self.accelerator = get_torch_device_backend(self.device)
            self.accelerator.set_device(self.device.index)
        distributed.start(self.device)

    def _launched_on_cpu(self) -> bool:
        return self.launch.distributed and self.device.type == "cpu"

    def _setup_train(self) -> None:
        """ultralytics' setup; on CPU ranks the model is wrapped for DDP here, since ultralytics passes CUDA ids.

        With ``cpu_bf16`` and a CPU that computes bfloat16 natively, the training model's forward pass runs under
        bfloat16 autocast (ultralytics' AMP is CUDA-only and leaves the CPU in float32); the loss, the optimizer,
        the EMA and validation stay float32. Off by default: a training step takes 1.07x less CPU, and the one
        quick-preset run measured with it scored mAP50 0.30 against 0.46-0.60 in float32 (benchmarks/README.md).
        It is set up after ultralytics copied the model into the EMA, so the copy, and every checkpoint written
        from it, is a plain model.
        """
        if self._launched_on_cpu():
            self.args.amp = False  # what check_amp decides on CPU; ranks other than 0 would skip the check
            self.world_size = 1  # skips ultralytics' CUDA-only DDP wrap; _build_train_pipeline restores it
        bf16 = self.cpu_bf16 and self.device.type == "cpu" and cpu_has_native_bf16()
        super()._setup_train()
        if self.channels_last:  # NHWC convolutions: float32 still, ~1.2x less CPU per step (benchmarks/train_step.py)
            unwrap_model(self.model).to(memory_format=torch.channels_last)  # parameters stay the optimizer's objects
        if bf16:
            forward_in_bf16(unwrap_model(self.model))
            LOGGER.info("CPU mixed precision: forward pass in bfloat16 autocast, loss and weights in float32")
        if self._launched_on_cpu():
            self.model = nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=True)  # rank 0's
            for tensor in self.ema.ema.state_dict().values():  # weights everywhere, and its EMA for validation
                dist.broadcast(tensor, src=0)

    def _build_train_pipeline(self) -> None:
        """ultralytics' loaders and optimizer, each rank loading its share of the global batch."""
        if self.launch.distributed:
            self.world_size = self.launch.world_size
        super()._build_train_pipeline()

    def preprocess_batch(self, batch: dict) -> dict:
        """ultralytics' batch preparation; images in channels_last when the model is."""
        batch = super().preprocess_batch(batch)
        if self.channels_last:
            batch["img"] = batch["img"].contiguous(memory_format=torch.channels_last)
        return batch

    def get_dataloader(self, dataset_path: str, batch_size: int = 16, rank: int = 0, mode: str = "train"):
        """ultralytics' loader (sharded per rank); the global rank 0 builds the label cache first, since nodes may
        share the dataset folder (ultralytics orders by local rank)."""
        if rank != -1 and self.launch.distributed:
            rank = self.launch.rank
        return super().get_dataloader(dataset_path, batch_size, rank, mode)

    def validate(self) -> tuple[dict | None, float | None]:
        """ultralytics' validation, skipped before the last ``val_last`` epochs (0: every epoch validates).

        A skipped epoch reports NaN metrics and no fitness, so ``best.pt`` is chosen among the validated epochs
        (ultralytics saves a best.pt while none has validated yet; the first validated epoch replaces it) and early
        stopping counts validated epochs only. The final epoch always validates.
        """
        if self.val_last and self.epoch < self.epochs - self.val_last:
            return dict.fromkeys(self.metrics or {}, float("nan")), None
        return super().validate()

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
        if not self.launch.is_main:  # the random states saved are rank 0's; other ranks keep their own seeds
            LOGGER.info(f"Resumed the full-precision weights of epoch {state['epoch'] + 1}")
            return
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
        result = self._final_eval_on_cpu_ranks() if self._launched_on_cpu() else super().final_eval()
        if self.launch.is_main:
            (self.wdir / RESUME_STATE).unlink(missing_ok=True)
        return result

    def _final_eval_on_cpu_ranks(self) -> None:
        """The final validation of ``best.pt`` shared by all CPU ranks (ultralytics' own puts ranks above 0 on a
        CUDA device): best.pt's weights go into the EMA every rank validates with, as during training."""
        if self.launch.is_main and self.last.exists():
            ckpt = strip_optimizer(self.last)
            if self.best.exists():
                strip_optimizer(self.best, updates={"train_results": ckpt.get("train_results")})
        if not distributed.from_main(self.best.exists()):
            return
        best, _ = load_checkpoint(self.best)
        self.ema.ema.load_state_dict(best.float().state_dict())
        LOGGER.info(f"\nValidating {self.best}...")
        self.validator.args.plots = self.args.plots
        metrics = self.validator(self)
        if metrics is not None:
            self.metrics = {k: v for k, v in metrics.items() if k != "fitness" and not k.startswith("val/")}
        self.epoch += 1  # ultralytics logs the best checkpoint's metrics one step after the last epoch
        self.run_callbacks("on_fit_epoch_end")
        self.epoch -= 1

    def get_model(self, cfg: str | dict | None = None, weights: torch.nn.Module | None = None, verbose: bool = True):
        """Build the configured model for the dataset's classes and channels, optionally initialised from weights."""
        nc, ch = self.data["nc"], self.data["channels"]
        if cfg is not None and is_csfnet(cfg):
            cfg = cfg if isinstance(cfg, dict) else load_config(cfg, nc=nc)
            model = build_model(cfg, nc=nc, ch=ch, verbose=verbose and RANK == -1)
        else:
            model = DetectionModel(cfg, nc=nc, ch=ch, verbose=verbose and RANK == -1)
        model = self.set_model_names_for_load(model)
        set_model_motion(model.yaml, dataset_motion(self.data))  # checkpoints carry the motion spec
        if weights is not None:
            loaded, total = transfer_weights(model, weights)
            LOGGER.info(f"Pretrained initialisation: loaded {loaded}/{total} tensors from the checkpoint")
            self.pretrained_tensors = loaded
        return model

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        """ultralytics' dataset, or images stacked with their motion channels when data.yaml has ``motion``."""
        stride = max(int(unwrap_model(self.model).stride.max()), 32)
        return build_dataset(self.args, img_path, batch, self.data, mode=mode, rect=mode == "val", stride=stride)

    def plot_training_samples(self, batch: dict[str, Any], ni: int) -> None:
        """ultralytics' plot, with a stacked batch's colour in its true order (:func:`csfnet.stacked_data.plotted`)."""
        super().plot_training_samples(plotted(batch), ni)

    def get_validator(self) -> CSFNetValidator:
        """ultralytics' validator, reading motion datasets as training does."""
        return CSFNetValidator(
            self.test_loader, save_dir=self.save_dir, args=copy(self.args), _callbacks=self.callbacks
        )


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX), where bf16 autocast is faster than float32;
    elsewhere PyTorch emulates it, slower than float32."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def forward_in_bf16(model: nn.Module) -> None:
    """Run ``model``'s forward pass (``predict``, which ultralytics' loss calls) under CPU bfloat16 autocast and hand
    the loss float32 predictions: its box decoding and assignment work in pixels, beyond bfloat16's 8-bit mantissa."""
    model.predict = _bf16_call(model.predict)


def _bf16_call(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(*args, **kwargs)
        return _to_float(out)

    return call


def _to_float(value: Any) -> Any:
    """Tensors (nested in dicts, lists and tuples) in bfloat16 back in float32."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, dict):
        return {k: _to_float(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_float(v) for v in value)
    return value


def _loader_generator(trainer: DetectionTrainer) -> torch.Generator | None:
    """The generator that shuffles the training batches (drawn once per epoch)."""
    return getattr(getattr(trainer, "train_loader", None), "generator", None)


def transfer_weights(model: torch.nn.Module, source: torch.nn.Module | dict[str, torch.Tensor]) -> tuple[int, int]:
    """Copy every shape-matching tensor of ``source`` into ``model``; return (tensors loaded, tensors in model).

    When both have ultralytics-style configs, backbone layers are matched by their rows (module and arguments, in
    order, wherever they sit: CSF-Net's shallow backbone is YOLOv8's layer for layer, one index later in the
    temporal configs, whose layer 0 keeps the input addressable) and head layers by position from the start of the
    head, so a YOLOv8 or single-frame CSF-Net checkpoint also initialises the matching layers of another config.
    Otherwise layers are matched by index.
    """
    src_state = source.float().state_dict() if isinstance(source, torch.nn.Module) else source
    dst_state = model.state_dict()
    layer_map = _layer_map(model, source)
    loaded = {}
    for key, tensor in src_state.items():
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "model" and parts[1].isdigit():
            index = int(parts[1])
            if layer_map is not None:
                if index not in layer_map:
                    continue
                parts[1] = str(layer_map[index])
            target = ".".join(parts)
            if target in dst_state and dst_state[target].shape == tensor.shape:
                loaded[target] = tensor
    model.load_state_dict(loaded, strict=False)
    return len(loaded), len(dst_state)


def _layer_map(model: torch.nn.Module, source: Any) -> dict[int, int] | None:
    """Source layer index -> model layer index when both have ultralytics YAML configs, else None."""
    from difflib import SequenceMatcher

    src_yaml, dst_yaml = getattr(source, "yaml", None), getattr(model, "yaml", None)
    if not isinstance(src_yaml, dict) or not isinstance(dst_yaml, dict):
        return None

    def rows(config: dict) -> list[str]:
        return [f"{row[2]}{row[1:2]}{row[3:]}" for row in config["backbone"]]  # module, repeats, args; not `from`

    src_rows, dst_rows = rows(src_yaml), rows(dst_yaml)
    matcher = SequenceMatcher(None, src_rows, dst_rows, autojunk=False)
    mapping = {b.a + i: b.b + i for b in matcher.get_matching_blocks() for i in range(b.size)}
    head = min(len(src_yaml["head"]), len(dst_yaml["head"]))
    mapping.update({len(src_rows) + i: len(dst_rows) + i for i in range(head)})
    return mapping
