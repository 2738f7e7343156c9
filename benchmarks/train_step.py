"""Training-step cost on CPU, variants side by side: one optimizer step (forward, loss, backward, AdamW step) of
a detector at the quick preset's batch and imgsz, in fp32, with bf16 autocast, in channels_last memory format,
and both; then the validation forward at the quick batch and at twice it; with ``--data``, one epoch of the
training loader as the quick preset builds it (images cached in RAM, mosaic, in-process as ultralytics loads on CPU).

The batch is synthetic but shaped like the quick data (1-3 targets of 3-20 px per image), so the loss and its
assigner do the same work as in training. The loss must stay finite in every variant; each variant reports the
median of ``--repeats`` steps after ``--warmup`` steps in wall time and in process CPU time (the figure that
stays comparable on a shared machine: other processes' load stretches wall time, not CPU time), and the speed-up
against fp32 in CPU time.

First, the fp32 step at ultralytics' CPU thread count (``select_device`` leaves torch one thread less than the
cores) against every core (what ``csfnet.threads`` gives training): a wall-time ratio, run back to back.

Usage: python benchmarks/train_step.py [--model csfnet-n] [--batch 16] [--imgsz 320] [--repeats 5] [--warmup 2]
       [--threads N] [--threads-only] [--data data/dataset/data.yaml]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from ultralytics.cfg import get_cfg
from ultralytics.data import build_dataloader, build_yolo_dataset
from ultralytics.data.utils import check_det_dataset
from ultralytics.utils import DEFAULT_CFG

import csfnet  # noqa: F401  (offline defaults)
from csfnet.model import build_model
from csfnet.settings import TRAINER_ARGS, load_settings
from csfnet.threads import cpu_threads


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
) -> tuple[float, float, float]:
    """Median wall and CPU seconds per optimizer step, and the last loss."""
    torch.manual_seed(0)
    model = build_model(model_name).train()
    model.args = get_cfg(DEFAULT_CFG)
    data = synthetic_batch(batch, imgsz)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        data["img"] = data["img"].contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.002)
    times, cpu_times, loss_value = [], [], float("nan")
    for i in range(warmup + repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with autocast:
            loss, _ = model(data)
        loss = loss.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        loss_value = float(loss.detach())
    return statistics.median(times), statistics.median(cpu_times), loss_value


def compare_threads(model_name: str, batch: int, imgsz: int, repeats: int, warmup: int) -> None:
    """The fp32 step at ultralytics' CPU thread count and at every core, back to back (wall time)."""
    every = cpu_threads(None)  # the cores (this script imports ultralytics before csfnet: OMP_NUM_THREADS is 1 by then)
    ultralytics = min(8, max(1, every - 1))
    print(f"## fp32 step, {model_name}, batch {batch}, imgsz {imgsz}: threads")
    print(f"{'threads':<30}{'wall s/step':>12}{'CPU s/step':>11}{'speed-up':>9}")
    base = None
    for label, n in ((f"{ultralytics} (ultralytics' cores - 1)", ultralytics), (f"{every} (every core)", every)):
        torch.set_num_threads(n)
        wall, cpu, _ = time_train_step(model_name, batch, imgsz, False, False, repeats, warmup)
        base = base or wall
        print(f"{label:<30}{wall:>12.2f}{cpu:>11.2f}{base / wall:>8.2f}x", flush=True)
    print()


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


def loader_epoch_seconds(data_yaml: str, batch: int, imgsz: int) -> tuple[float, float, int]:
    """Wall and CPU seconds of one pass over the training loader (quick preset's augmentation), and its images."""
    preset = load_settings().override({"train.preset": "quick"}).train_args()
    args = {k: v for k, v in preset.items() if k not in TRAINER_ARGS}  # ultralytics' arguments only
    cfg = get_cfg(DEFAULT_CFG, {**args, "imgsz": imgsz, "batch": batch, "workers": 0})
    data = check_det_dataset(data_yaml)
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train")
    loader = build_dataloader(dataset, batch, workers=0, shuffle=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    images = sum(len(b["img"]) for b in loader)
    return time.perf_counter() - start, time.process_time() - cpu_start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="csfnet-n")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--threads-only", action="store_true", help="only the thread-count comparison")
    parser.add_argument("--data", help="data.yaml: also time one epoch of the training loader")
    args = parser.parse_args()
    compare_threads(args.model, args.batch, args.imgsz, args.repeats, args.warmup)
    if args.threads_only:
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"## Training step, {args.model}, batch {args.batch}, imgsz {args.imgsz}, {torch.get_num_threads()} threads")
    print(f"{'variant':<22}{'wall s/step':>12}{'CPU s/step':>11}{'vs fp32':>9}{'loss':>9}")
    base = None
    for name, bf16, cl in [("fp32", False, False), ("bf16 autocast", True, False), ("channels_last", False, True),
                           ("bf16 + channels_last", True, True)]:  # fmt: skip
        wall, cpu, loss = time_train_step(args.model, args.batch, args.imgsz, bf16, cl, args.repeats, args.warmup)
        base = base or cpu
        print(f"{name:<22}{wall:>12.2f}{cpu:>11.2f}{base / cpu:>8.2f}x{loss:>9.2f}", flush=True)
    print(f"\n## Validation forward, {args.model}, imgsz {args.imgsz}")
    print(f"{'batch':<8}{'ms/img':>8}")
    for batch in (args.batch, 2 * args.batch):
        print(f"{batch:<8}{1000 * time_val_forward(args.model, batch, args.imgsz, args.repeats):>8.1f}", flush=True)
    if args.data:
        wall, cpu, images = loader_epoch_seconds(args.data, args.batch, args.imgsz)
        print(f"\n## Training loader, one epoch of {images} images: {wall:.1f} s wall, {cpu:.1f} CPU-s")


if __name__ == "__main__":
    main()
