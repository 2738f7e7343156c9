"""The three CSF-Net building blocks (paper sections 3.1-3.3).

Each is a plain ``nn.Module`` built from ultralytics' ``Conv``/``RepConv`` so that ultralytics' ``fuse()``,
export and checkpointing treat them like its own layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import Conv, RepConv

__all__ = ("CReToNeXt", "CSwitch", "Channels", "DFuse", "RepResBlock")


class Channels(nn.Module):
    """Channel selection ``x[:, start:stop]``: routes part of a stacked input (e.g. the colour of colour + motion)
    to one branch of a model.

    Args:
        start: First channel kept.
        stop: One past the last channel kept; None keeps every channel from ``start`` on.
    """

    def __init__(self, start: int = 0, stop: int | None = None):
        super().__init__()
        if start < 0 or (stop is not None and stop <= start):
            raise ValueError(f"Channels needs 0 <= start < stop, got start={start}, stop={stop}")
        self.start, self.stop = int(start), None if stop is None else int(stop)

    def out_channels(self, c1: int) -> int:
        """Channels kept from a ``c1``-channel input; ValueError if the input has too few."""
        if self.start >= c1 or (self.stop is not None and self.stop > c1):
            raise ValueError(f"Channels({self.start}, {self.stop}) needs more than the {c1} input channels")
        return len(range(c1)[self.start : self.stop])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start : self.stop]


class CSwitch(nn.Module):
    """Channel Switch: one shared 1x1 convolution to ``sum(partition)`` channels, split into one branch per entry.

    Args:
        c1: Input channels.
        partition: Channels of each output branch, e.g. ``(64, 128, 256)`` gives 448 channels split 64/128/256.
    """

    def __init__(self, c1: int, partition: Sequence[int]):
        super().__init__()
        if not partition or any(int(c) <= 0 for c in partition):
            raise ValueError(f"CSwitch partition must be non-empty positive channel counts, got {partition!r}")
        self.partition = [int(c) for c in partition]
        self.conv = nn.Conv2d(c1, sum(self.partition), 1, bias=True)  # linear: no BN, no activation

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the branches, in partition order."""
        return list(self.conv(x).split(self.partition, dim=1))


class DFuse(nn.Module):
    """Dynamic Fusion: align every input to the last (reference) one and sum element-wise.

    Inputs whose channel count differs from the reference's are projected by a learnable 1x1 convolution; all
    inputs are resized to the reference's spatial size by nearest interpolation.

    Args:
        channels: Channel count of each input; the last one is the reference.
        idx: Optional branch index per non-reference input, for inputs that are ``CSwitch`` branch lists.
    """

    def __init__(self, channels: Sequence[int], idx: Sequence[int] | None = None):
        super().__init__()
        if len(channels) < 2:
            raise ValueError("DFuse needs at least one input besides the reference")
        if idx is not None and len(idx) != len(channels) - 1:
            raise ValueError(f"DFuse idx has {len(idx)} entries for {len(channels) - 1} non-reference inputs")
        c_ref = channels[-1]
        self.idx = list(idx) if idx is not None else None
        self.proj = nn.ModuleList(nn.Conv2d(c, c_ref, 1) if c != c_ref else nn.Identity() for c in channels[:-1])

    def forward(self, xs: Sequence[torch.Tensor | Sequence[torch.Tensor]]) -> torch.Tensor:
        """Fuse ``xs`` (last = reference) into one map shaped like the reference."""
        inputs = [x[i] for x, i in zip(xs[:-1], self.idx)] if self.idx is not None else list(xs[:-1])
        out = xs[-1]
        size = out.shape[-2:]
        for proj, x in zip(self.proj, inputs):
            # 1x1 projection and nearest resizing commute: run the projection at the smaller of the two sizes.
            if x.shape[-2] * x.shape[-1] > size[0] * size[1]:
                x = proj(F.interpolate(x, size=size, mode="nearest"))
            else:
                x = F.interpolate(proj(x), size=size, mode="nearest") if x.shape[-2:] != size else proj(x)
            out = out + x
        return out


class RepResBlock(nn.Module):
    """Residual block of CReToNeXt's deep branch: ``x + Conv3x3(RepConv3x3(x))``."""

    def __init__(self, c: int):
        super().__init__()
        self.rep = RepConv(c, c, 3)
        self.conv = Conv(c, c, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.rep(x))


class CReToNeXt(nn.Module):
    """Cross-depth dense block that replaces C2f in the P3 head.

    A 1x1 shallow shortcut branch and a 1x1 deep branch; the deep branch runs ``n`` residual blocks and keeps every
    block's output. The shortcut and all block outputs are concatenated and fused to ``c2`` by a 1x1 convolution.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of cascaded residual blocks.
    """

    def __init__(self, c1: int, c2: int, n: int = 1):
        super().__init__()
        if n < 1:
            raise ValueError(f"CReToNeXt needs n >= 1 residual blocks, got {n}")
        self.c_a = c2 // 2
        self.c_b = c2 - self.c_a
        self.shortcut = Conv(c1, self.c_a, 1)
        self.stem = Conv(c1, self.c_b, 1)
        self.blocks = nn.ModuleList(RepResBlock(self.c_b) for _ in range(n))
        self.fuse = Conv(self.c_a + n * self.c_b, c2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.shortcut(x)]
        y = self.stem(x)
        for block in self.blocks:
            y = block(y)
            outs.append(y)
        return self.fuse(torch.cat(outs, 1))
