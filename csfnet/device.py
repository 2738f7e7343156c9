"""Which device a stage runs on."""

from __future__ import annotations

from csfnet.settings import Settings, load_settings


def resolve_device(device: str | int | None = None, settings: Settings | None = None) -> str:
    """``device`` (else ``train.device``); ``""`` means the first CUDA GPU when present, else the CPU.

    Anything else (``cpu``, ``0``, ``0,1`` for DDP) is passed to ultralytics as is.
    """
    if device is None:
        device = (settings or load_settings()).train.device
    if str(device).strip() == "":
        import torch

        return "0" if torch.cuda.is_available() else "cpu"
    return str(device)
