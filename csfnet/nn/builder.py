"""Project-owned builder for ultralytics-style model YAMLs that use the CSF-Net modules.

It follows ultralytics' conventions (``[from, repeats, module, args]`` rows, ``scales`` of depth/width/max-channels,
``make_divisible`` widths) without touching ultralytics' own ``parse_model``, so new modules need no patching.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import nn
from ultralytics.nn.modules import C2PSA, SPPF, C2f, C3k2, CBFuse, Concat, Conv, Detect
from ultralytics.utils.ops import make_divisible

from csfnet.nn.modules import Channels, CReToNeXt, CSwitch, DFuse

# Modules whose first argument is an output channel count scaled by the width multiple.
_SCALED = {"Conv": Conv, "C2f": C2f, "C3k2": C3k2, "C2PSA": C2PSA, "SPPF": SPPF, "CReToNeXt": CReToNeXt}
_REPEATED = {"C2f", "C3k2", "C2PSA", "CReToNeXt"}  # modules taking the repeat count as their third argument
_CURRENT = {"C3k2"}  # blocks of the YOLO11/YOLO26 generation: their configs use the current Detect head layout
_OTHER = {
    "Concat": Concat,
    "Detect": Detect,
    "CSwitch": CSwitch,
    "Channels": Channels,
    "DFuse": DFuse,
    "CBFuse": CBFuse,
    "nn.Upsample": nn.Upsample,
    "nn.Identity": nn.Identity,
}
KNOWN_MODULES = frozenset(_SCALED) | frozenset(_OTHER)


@contextlib.contextmanager
def _detect_head_layout(legacy: bool) -> Iterator[None]:
    """Build Detect with the YOLOv8 (``legacy``) or current head layout, restoring ultralytics' class default."""
    previous = Detect.legacy
    Detect.legacy = legacy
    try:
        yield
    finally:
        Detect.legacy = previous


def _literal(value: Any) -> Any:
    """YAML strings such as ``None`` become Python literals; other strings (e.g. ``nearest``) stay as they are."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError, SyntaxError):
            return ast.literal_eval(value)
    return value


def scaled_partition(cfg: dict[str, Any]) -> list[int]:
    """CSwitch channels sent to each fusion stage: ``cfg['partition']`` verbatim if absolute, else width-scaled."""
    if cfg.get("partition_absolute"):
        return [int(c) for c in cfg["partition"]]
    _, width, max_ch = cfg["scales"][cfg["scale"]]
    return [make_divisible(min(c, max_ch) * width, 8) for c in cfg["partition"]]


def build_layers(cfg: dict[str, Any], ch: int = 3) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list of a model config.

    Args:
        cfg: Model config with ``nc``, ``scales``, ``scale``, ``backbone``, ``head`` and, when CSwitch is used,
            ``partition``; optionally ``reg_max`` and ``end2end`` (YOLO26's NMS-free head), as in ultralytics.
        ch: Input image channels.

    Returns:
        The layers (each tagged with ``i``, ``f``, ``type``, ``np`` as ultralytics expects) and the save list.
    """
    depth, width, max_ch = cfg["scales"][cfg["scale"]]
    partition = scaled_partition(cfg) if "partition" in cfg else []
    nc, head = cfg["nc"], {"reg_max": cfg.get("reg_max", 16), "end2end": bool(cfg.get("end2end", False))}
    rows = cfg["backbone"] + cfg["head"]
    head["legacy"] = not any(row[2] in _CURRENT for row in rows)  # as ultralytics' parse_model decides
    chans: list[Any] = [ch]  # output channels per layer; a CSwitch layer stores its list of branch widths
    layers, save = [], []
    for i, (f, n, name, args) in enumerate(rows):
        if name not in KNOWN_MODULES:
            raise ValueError(f"layer {i}: unknown module {name!r}; known: {sorted(KNOWN_MODULES)}")
        args = [nc if a == "nc" else _literal(a) for a in args]
        n = max(round(n * depth), 1) if n > 1 else n
        c_in = chans[f] if isinstance(f, int) else [chans[j] for j in f]
        if name in _SCALED:
            c2 = make_divisible(min(args[0], max_ch) * width, 8)
            args = [c_in, c2, *args[1:]]
            if name in _REPEATED:
                args.insert(2, n)
                n = 1
            if name == "C3k2" and cfg["scale"] in {"m", "l", "x"}:
                args[3:4] = [True]  # C3k inner blocks at the larger scales, as ultralytics builds them
            module = nn.Sequential(*(_SCALED[name](*args) for _ in range(n))) if n > 1 else _SCALED[name](*args)
        else:
            module, c2 = _build_other(name, args, c_in, partition, head)
        module.i, module.f, module.type = i, f, name
        module.np = sum(p.numel() for p in module.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(module)
        chans.append(c2)
        if i == 0:
            chans = chans[1:]  # index layers from 0, as ultralytics does
    return nn.Sequential(*layers), sorted(set(save))


def _build_other(
    name: str, args: list[Any], c_in: Any, partition: Sequence[int], head: dict[str, Any]
) -> tuple[nn.Module, Any]:
    """Build a module whose channels follow from its inputs rather than from a width-scaled argument."""
    if name == "Concat":
        return Concat(*args), sum(c_in)
    if name == "Detect":
        with _detect_head_layout(head["legacy"]):
            return Detect(args[0], head["reg_max"], head["end2end"], list(c_in)), None
    if name == "Channels":  # part of a stacked input, e.g. the colour of colour + motion
        module = Channels(*args)
        return module, module.out_channels(c_in)
    if name == "CSwitch":
        branches = [partition[s] for s in args[0]]
        return CSwitch(c_in, branches), branches
    if name == "DFuse":
        idx = args[0] if args else None
        chans = [c[j] for c, j in zip(c_in[:-1], idx)] + [c_in[-1]] if idx is not None else list(c_in)
        return DFuse(chans, idx), c_in[-1]
    if name == "CBFuse":  # static fusion (ablation): resize and sum with no projection, so channels must match
        branch = [c[j] for c, j in zip(c_in[:-1], args[0])]
        if any(c != c_in[-1] for c in branch):
            raise ValueError(f"CBFuse needs equal channels, got branches {branch} for reference {c_in[-1]}")
        return CBFuse(args[0]), c_in[-1]
    if name == "nn.Upsample":
        return nn.Upsample(*args), c_in
    return nn.Identity(), c_in  # nn.Identity
