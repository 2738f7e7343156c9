"""One-command CPU benchmark, measured side by side in one run.

1. Forward latency of YOLOv8n and CSF-Net-n at imgsz 640, batch 1 and 8, next to their GFLOPs ratio.
2. Frame extraction throughput (video frames processed per second) against decode-only throughput of the same
   videos with the same decoder (OpenCV), with 1 worker and with every core, keeping every frame (stride 1) and
   every 2nd frame (params.yaml's default).

Usage: python benchmarks/run.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import torch

import csfnet  # noqa: F401  (offline defaults)
from csfnet.data.extract import extract, video_frames
from csfnet.data.synth import SynthSpec, generate
from csfnet.model import build_model, model_summary


def latency_ms(name: str, batch: int, repeats: int) -> float:
    model = build_model(name).eval().fuse()
    x = torch.rand(batch, 3, 640, 640)
    with torch.inference_mode():
        model(x)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def _decode(video: str) -> int:
    cv2.setNumThreads(1)  # as in extraction workers
    return sum(1 for _ in video_frames(Path(video)))


def decode_fps(videos: list[str], workers: int) -> tuple[float, int]:
    """Decode-only throughput (every frame converted to BGR) and the number of frames."""
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        frames = sum(pool.map(_decode, videos))
    return frames / (time.perf_counter() - start), frames


def extract_fps(raw: Path, out: Path, workers: int, stride: int, frames: int) -> float:
    """Extraction throughput in video frames processed per second (validation, decoding, JPEG, labels)."""
    start = time.perf_counter()
    extract(raw, out, stride=stride, workers=workers)
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, "
        f"{args.threads} threads"
    )

    print("\n## Forward latency, imgsz 640, CPU (median of", args.repeats, "runs)")
    flops = {n: model_summary(n)["gflops"] for n in ("yolov8n", "csfnet-n")}
    print(f"{'batch':>5} {'yolov8n ms':>11} {'csfnet-n ms':>12} {'latency ratio':>14} {'GFLOPs ratio':>13}")
    for batch in (1, 8):
        base, ours = latency_ms("yolov8n", batch, args.repeats), latency_ms("csfnet-n", batch, args.repeats)
        print(
            f"{batch:>5} {base:>11.1f} {ours:>12.1f} {ours / base:>14.2f} {flops['csfnet-n'] / flops['yolov8n']:>13.2f}"
        )

    print("\n## Extraction vs decode-only (synthetic 320x256 videos, 50 frames each)")
    with tempfile.TemporaryDirectory() as tmp:
        raw = generate(Path(tmp) / "raw", SynthSpec(train_videos=12, val_videos=4, frames=50, width=320, height=256))
        videos = [str(v) for v in raw.rglob("*.mp4")]
        print(f"{'workers':>7} {'stride':>6} {'decode fps':>11} {'extract fps':>12} {'ratio':>6}")
        for workers in sorted({1, cores}):
            dec, frames = decode_fps(videos, workers)
            for stride in (1, 2):
                ext = extract_fps(raw, Path(tmp) / f"ds{workers}-{stride}", workers, stride, frames)
                print(f"{workers:>7} {stride:>6} {dec:>11.0f} {ext:>12.0f} {ext / dec:>6.2f}")


if __name__ == "__main__":
    main()
