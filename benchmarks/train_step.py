"""Training-step cost on CPU, variants side by side: one optimizer step (forward, loss, backward, AdamW step) of
a detector at the quick preset's batch and imgsz, in fp32, with bf16 autocast, in channels_last memory format,
and both; then the validation forward at the quick batch and at twice it.

The batch is synthetic but shaped like the quick data (1-3 targets of 3-20 px per image), so the loss and its
assigner do the same work as in training. The loss must stay finite in every variant; each variant reports the
median of ``--repeats`` steps after ``--warmup`` steps, and its speed-up against fp32.

Usage: python benchmarks/train_step.py [--model csfnet-n] [--batch 16] [--imgsz 320] [--repeats 5] [--warmup 2]
       [--threads N]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from ultralytics.cfg import get_cfg
from ultralytics.utils import DEFAULT_CFG

import csfnet  # noqa: F401  (offline defaults)
from csfnet.model import build_model


def synthetic_batch(batch: int, imgsz: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images with 1-3 tiny boxes each, in ultralytics' training-batch layout (normalised xywh)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 4, (batch,), generator=gen)
    idx = torch.repeat_interleave(torch.arange(batch), counts).float()
    n = int(counts.sum())
    wh = (3 + 17 * torch.rand(n, 2, generator=gen)) / imgsz
    xy = 0.1 + 0.8 * torch.rand(n, 2, generator=gen)
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=gen),
        "cls": torch.zeros(n, 1),
        "bboxes": torch.cat([xy, wh], 1),
        "batch_idx": idx,
    }


def time_train_step(
    model_name: str, batch: int, imgsz: int, bf16: bool, channels_last: bool, repeats: int, warmup: int
) -> tuple[float, float]:
    """Median seconds per optimizer step and the last loss."""
    torch.manual_seed(0)
    model = build_model(model_name).train()
    model.args = get_cfg(DEFAULT_CFG)
    data = synthetic_batch(batch, imgsz)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        data["img"] = data["img"].contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.002)
    times, loss_value = [], float("nan")
    for i in range(warmup + repeats):
        start = time.perf_counter()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss, _ = model(data)
        loss = loss.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
        loss_value = float(loss)
    return statistics.median(times), loss_value


def time_val_forward(model_name: str, batch: int, imgsz: int, repeats: int) -> float:
    """Median seconds per image of the evaluation forward pass (fused, inference mode)."""
    model = build_model(model_name).eval().fuse()
    x = torch.rand(batch, 3, imgsz, imgsz)
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="csfnet-n")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"## Training step, {args.model}, batch {args.batch}, imgsz {args.imgsz}, {torch.get_num_threads()} threads")
    print(f"{'variant':<22}{'s/step':>8}{'vs fp32':>9}{'loss':>9}")
    base = None
    for name, bf16, cl in [("fp32", False, False), ("bf16 autocast", True, False), ("channels_last", False, True),
                           ("bf16 + channels_last", True, True)]:  # fmt: skip
        seconds, loss = time_train_step(args.model, args.batch, args.imgsz, bf16, cl, args.repeats, args.warmup)
        base = base or seconds
        print(f"{name:<22}{seconds:>8.2f}{base / seconds:>8.2f}x{loss:>9.2f}", flush=True)
    print(f"\n## Validation forward, {args.model}, imgsz {args.imgsz}")
    print(f"{'batch':<8}{'ms/img':>8}")
    for batch in (args.batch, 2 * args.batch):
        print(f"{batch:<8}{1000 * time_val_forward(args.model, batch, args.imgsz, args.repeats):>8.1f}", flush=True)


if __name__ == "__main__":
    main()
