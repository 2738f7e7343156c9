"""Training under an external launcher (``torchrun`` on one node or many, a Kubeflow TrainJob).

The launcher starts one process per rank on every node and exports ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``. ultralytics reads ``RANK`` and ``LOCAL_RANK`` when it is
imported but takes its world size from the devices in its ``device`` string; here the launcher's environment
decides who a process is, and the device type decides the backend: NCCL on GPUs, gloo on CPU.

Stages that run many trainings (tuning trials, comparison cells) are led by rank 0: it decides what to train next
and tells the other ranks (:func:`tell`), which do as told (:func:`follow`) until it ends the stage (:func:`end`);
it alone writes and logs. An error on any rank ends that process; its peers fail at their next collective (at once
when the process is gone, after :data:`TIMEOUT` when it hangs), so a launch never waits forever.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import distributed as dist

from csfnet.errors import SettingsError

TIMEOUT = timedelta(minutes=30)  # a collective waits this long for a rank that hangs (a dead one fails at once)
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class Launch:
    """This process's place in a launch; the defaults describe a single process."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str = ""

    @property
    def distributed(self) -> bool:
        """More than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that logs, writes checkpoints and outputs (rank 0; the only one when not distributed)."""
        return self.rank == 0


def current_launch(env: dict[str, str] | None = None) -> Launch:
    """The launch described by the environment (``torchrun``'s variables); a single process without them."""
    env = dict(os.environ if env is None else env)
    if int(env.get("WORLD_SIZE", "1") or 1) <= 1:
        return Launch()
    missing = [name for name in LAUNCH_VARIABLES if not env.get(name)]
    if missing:
        raise SettingsError(f"WORLD_SIZE={env['WORLD_SIZE']} but {', '.join(missing)} unset: start with torchrun")
    launch = Launch(
        rank=int(env["RANK"]),
        local_rank=int(env["LOCAL_RANK"]),
        world_size=int(env["WORLD_SIZE"]),
        local_world_size=int(env.get("LOCAL_WORLD_SIZE") or 1),
        master_addr=env.get("MASTER_ADDR", ""),
    )
    if not 0 <= launch.rank < launch.world_size or not 0 <= launch.local_rank < launch.local_world_size:
        raise SettingsError(f"inconsistent launch: {launch}")
    return launch


def on_cpu(device: str) -> bool:
    """Whether a ``device`` setting (``cpu``, ``0``, ``0,1`` ...) trains on the CPU."""
    return str(device).strip().lower().startswith("cpu") or not torch.cuda.is_available()


def device_setting(device: str, launch: Launch | None = None) -> str:
    """The ``device`` setting of this rank: ``cpu``, else its own GPU: the local rank's entry of a list naming one
    GPU per local process (``2,3`` under ultralytics' own DDP), otherwise the GPU numbered by the local rank."""
    launch = launch or current_launch()
    if on_cpu(device):
        return "cpu"
    gpus = [d.strip().removeprefix("cuda:") for d in str(device).split(",") if d.strip()]
    return gpus[launch.local_rank] if len(gpus) == launch.local_world_size else str(launch.local_rank)


def start(device: str | torch.device) -> bool:
    """Join the launcher's process group (once per process); True for the main process.

    ``device`` is a ``device`` setting, or this rank's own device. Rendezvous comes from the launcher's
    ``MASTER_ADDR``/``MASTER_PORT``; a single process joins nothing.
    """
    launch = current_launch()
    if not launch.distributed:
        return True
    if not dist.is_initialized():
        backend = "gloo" if on_cpu(device) else "nccl"
        if backend == "nccl":
            own = isinstance(device, torch.device) and device.index is not None
            torch.cuda.set_device(device.index if own else int(device_setting(str(device), launch)))
            os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # collectives then honour the timeout
        dist.init_process_group(backend, rank=launch.rank, world_size=launch.world_size, timeout=TIMEOUT)
        atexit.register(_leave)
    return launch.is_main


def from_main(value: Any) -> Any:
    """``value`` as the main process has it, on every process (all wait for it); unchanged without a group."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


END = "end"  # what rank 0 tells the other ranks when a led stage is done


def tell(kind: str, payload: Any = None) -> None:
    """On rank 0: tell the other ranks what to do next (``kind`` names a handler of their :func:`follow`).

    Nothing happens without a process group.
    """
    from_main((kind, payload))


def end(value: Any) -> Any:
    """On rank 0: end the led stage; ``value`` becomes what :func:`follow` returns on the other ranks."""
    tell(END, value)
    return value


def follow(handlers: Mapping[str, Callable[[Any], Any]]) -> Any:
    """On ranks other than 0: run the handler of whatever rank 0 tells, in its order, until it ends the stage.

    Returns the value rank 0 passed to :func:`end`. A handler's error ends this process (its peers then fail).
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("only a rank of a started launch follows rank 0 (see start)")
    while True:
        kind, payload = from_main(None)
        if kind == END:
            return payload
        handlers[kind](payload)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
