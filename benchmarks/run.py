"""One-command CPU benchmark, measured side by side in one run.

1. Forward latency of YOLOv8n and CSF-Net-n at imgsz 640, batch 1 and 8, next to their GFLOPs ratio.
2. Frame extraction throughput (video frames processed per second) against decode-only throughput of the same
   videos with the same decoder (OpenCV), with 1 worker and with every core, keeping every frame (stride 1) and
   every 2nd frame (params.yaml's default); medians of ``--repeats`` runs, datasets written to ``--scratch``
   (default: the system's temporary folder; ``/dev/shm`` takes the disk out of the measurement); then the per-frame
   decode and JPEG-encode costs, and the ceiling they put on the stride-1 ratio. Then ``--hd-videos`` 1920x1080
   videos extracted as whole frames and as 640 px tiles (training split tiled), each against decode-only and the
   decode + JPEG-encode ceiling of the images it writes.
3. Deployment runtimes: PyTorch eager, onnxruntime FP32 and INT8 (and onnxruntime's CUDA provider when a GPU is
   present), batch 1 and 8, on trained weights (``--weights``, default runs/train/weights/best.pt) or, without them,
   an untrained CSF-Net-n (timing only).

4. ``--only detect`` (not in the default run: a few minutes): ``csfnet detect`` end to end on a 1080p video, whole
   frames against slices, per runtime (PyTorch, onnxruntime FP32/INT8, OpenVINO FP32/INT8), with the slicing
   overhead against the ideal (crops per frame x one-crop latency); see ``benchmarks/detect_bench.py``.

Usage: python benchmarks/run.py [--repeats 5] [--threads N] [--only latency extract deploy detect] [--weights PT]
       [--imgsz 640] [--scratch DIR] [--detect-frames 12] [--detect-batch 8] [--hd-videos 4]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import torch

import csfnet  # noqa: F401  (offline defaults)
from csfnet.data.extract import JPEG_QUALITY, Tiling, extract, video_frames
from csfnet.data.synth import SynthSpec, generate
from csfnet.data.tiles import grid
from csfnet.detect.runtimes import OnnxRuntime
from csfnet.export import onnx_export, quantize_int8
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


def decode_fps(videos: list[str], workers: int, repeats: int) -> tuple[float, int]:
    """Decode-only throughput (every frame converted to BGR; median of ``repeats``) and the number of frames."""
    rates, frames = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            frames = sum(pool.map(_decode, videos))
        rates.append(frames / (time.perf_counter() - start))
    return statistics.median(rates), frames


def jpeg_ceiling(videos: list[str]) -> tuple[float, float]:
    """Per-frame CPU time of decoding and of JPEG encoding (ms, all threads of one process; same frames and quality
    as extraction).

    Extraction does both for every kept frame, so once every core is busy its stride-1 throughput cannot exceed
    decode / (decode + encode) of decode-only. (With fewer workers than cores FFmpeg's decoder threads can overlap
    the encoding, so the 1-worker ratio may sit slightly above it.)
    """
    cv2.setNumThreads(1)
    decode = encode = 0.0
    frames = 0
    for video in videos:  # one video's frames in memory at a time
        start = time.process_time()
        decoded = list(video_frames(Path(video)))
        middle = time.process_time()
        for frame in decoded:
            cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        decode, encode = decode + middle - start, encode + time.process_time() - middle
        frames += len(decoded)
    return 1000 * decode / frames, 1000 * encode / frames


def extract_fps(
    raw: Path, scratch: Path, workers: int, stride: int, frames: int, repeats: int, tiling: Tiling | None = None
) -> tuple[float, dict]:
    """Extraction throughput in video frames processed per second (validation, decoding, JPEG, labels; median),
    and the last run's report.

    Each repeat writes a new dataset: deleting the previous one first would charge its deletion to the next run.
    """
    rates, report = [], {}
    for repeat in range(repeats):
        start = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):  # extraction's progress bars would bury the table
            out = scratch / f"w{workers}-s{stride}-t{tiling.tile if tiling else 0}-{repeat}"
            report = extract(raw, out, stride=stride, workers=workers, tiling=tiling or Tiling())
        rates.append(frames / (time.perf_counter() - start))
    return statistics.median(rates), report


def tile_encode_ms(videos: list[str], tile: int, overlap: float) -> float:
    """CPU time of JPEG-encoding one tile (ms; every tile of every frame, same quality as extraction)."""
    cv2.setNumThreads(1)
    spent, count = 0.0, 0
    for video in videos:
        for frame in video_frames(Path(video)):
            h, w = frame.shape[:2]
            start = time.process_time()
            for t in grid(w, h, tile, overlap):
                cv2.imencode(".jpg", frame[t.y : t.y + t.h, t.x : t.x + t.w], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                count += 1
            spent += time.process_time() - start
    return 1000 * spent / max(count, 1)


def hd_tiles(scratch: Path, videos: int, repeats: int, cores: int) -> None:
    """Extraction of 1920x1080 synthetic videos, whole frames vs 640 px tiles (overlap 0.2, one negative per
    positive, train split tiled), against decode-only and the decode + JPEG-encode ceiling of what each writes."""
    half = max(1, videos // 2)
    spec = SynthSpec(train_videos=videos - half, val_videos=half, frames=25, width=1920, height=1080)
    raw = generate(scratch / "hd-raw", spec)
    paths = [str(v) for v in raw.rglob("*.mp4")]
    dec, frames = decode_fps(paths, cores, repeats)
    dec_ms, frame_ms = jpeg_ceiling(paths)
    tile_ms = tile_encode_ms(paths, 640, 0.2)
    print(
        f"\n## HD extraction: {len(paths)} synthetic 1920x1080 videos x {spec.frames} frames, {cores} workers, "
        f"stride 1 (decode {dec_ms:.2f} ms/frame, JPEG q{JPEG_QUALITY}: frame {frame_ms:.2f} ms, 640 px tile "
        f"{tile_ms:.2f} ms)"
    )
    print(f"{'mode':<26} {'images/frame':>12} {'extract fps':>12} {'decode fps':>11} {'ratio':>6} {'ceiling':>8}")
    for name, tiling in (("whole frames", Tiling()), ("tiles 640, overlap 0.2", Tiling(tile=640, overlap=0.2))):
        fps, report = extract_fps(raw, scratch, cores, 1, frames, repeats, tiling)
        splits = report["splits"]
        images = sum(s["images"] for s in splits.values())
        tiles = sum(s["images"] for s in splits.values() if s["tiled"])  # the others are whole frames
        encode = (tiles * tile_ms + (images - tiles) * frame_ms) / frames  # JPEG CPU time per source frame
        ceiling = dec_ms / (dec_ms + encode)
        print(f"{name:<26} {images / frames:>12.2f} {fps:>12.1f} {dec:>11.1f} {fps / dec:>6.2f} {ceiling:>8.2f}")


def ort_latency_ms(path: Path, imgsz: int, batch: int, repeats: int, provider: str = "CPU") -> float:
    """Median onnxruntime latency of one batch, through the runtime ``csfnet detect`` and serving use."""
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "CUDA" else ["CPUExecutionProvider"]
    return OnnxRuntime(path, imgsz, providers).latency_ms(batch, repeats)


def torch_latency_ms(weights: Path, imgsz: int, batch: int, repeats: int, device: str = "cpu") -> float:
    from ultralytics import YOLO

    model = YOLO(str(weights)).model.float().eval().fuse(verbose=False).to(device)
    x = torch.rand(batch, 3, imgsz, imgsz, device=device)
    with torch.inference_mode():
        model(x)
        times = []
        for _ in range(repeats):
            if device != "cpu":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            if device != "cpu":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def untrained_checkpoint(path: Path) -> Path:
    """An untrained CSF-Net-n saved the way ultralytics saves checkpoints (for timing only)."""
    model = build_model("csfnet-n")
    model.names = {0: "uav"}
    torch.save({"model": model.half(), "train_args": {}, "epoch": -1}, path)
    return path


def deploy(weights: Path | None, data: Path, imgsz: int, repeats: int, tmp: Path) -> None:
    import onnxruntime as ort

    if weights is None or not weights.is_file():
        print("(no trained weights: untrained CSF-Net-n, latency only)")
        weights = untrained_checkpoint(tmp / "untrained.pt")
    staged = tmp / "bench.pt"
    staged.write_bytes(weights.read_bytes())
    fp32 = onnx_export(staged, imgsz)
    int8 = quantize_int8(fp32, tmp / "bench-int8.onnx", data, imgsz)
    rows = [("PyTorch eager (CPU)", lambda b: torch_latency_ms(staged, imgsz, b, repeats))]
    rows += [("onnxruntime FP32 (CPU)", lambda b: ort_latency_ms(fp32, imgsz, b, repeats))]
    rows += [("onnxruntime INT8 (CPU)", lambda b: ort_latency_ms(int8, imgsz, b, repeats))]
    if torch.cuda.is_available():
        rows += [("PyTorch eager (CUDA)", lambda b: torch_latency_ms(staged, imgsz, b, repeats, "cuda"))]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        rows += [("onnxruntime FP32 (CUDA)", lambda b: ort_latency_ms(fp32, imgsz, b, repeats, "CUDA"))]
    print(f"{'runtime':<24} {'batch':>5} {'ms/batch':>9} {'img/s':>7} {'vs ORT FP32':>11}")
    for batch in (1, 8):
        results = [(name, fn(batch)) for name, fn in rows]
        reference = dict(results)["onnxruntime FP32 (CPU)"]
        for name, ms in results:
            print(f"{name:<24} {batch:>5} {ms:>9.1f} {1000 * batch / ms:>7.1f} {reference / ms:>10.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["latency", "extract", "deploy", "detect"],
        default=["latency", "extract", "deploy"],
    )
    parser.add_argument("--weights", type=Path, default=Path("runs/train/weights/best.pt"))
    parser.add_argument("--imgsz", type=int, default=640, help="deployment benchmark image size")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for the extracted datasets")
    parser.add_argument("--detect-frames", type=int, default=12, help="frames of the 1080p video (--only detect)")
    parser.add_argument("--detect-batch", type=int, default=8, help="crops per runtime call (--only detect)")
    parser.add_argument("--hd-videos", type=int, default=4, help="1920x1080 videos for the tiling benchmark (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, "
        f"{args.threads} threads"
    )

    if "latency" in args.only:
        print("\n## Forward latency, imgsz 640, CPU (median of", args.repeats, "runs)")
        flops = {n: model_summary(n)["gflops"] for n in ("yolov8n", "csfnet-n")}
        print(f"{'batch':>5} {'yolov8n ms':>11} {'csfnet-n ms':>12} {'latency ratio':>14} {'GFLOPs ratio':>13}")
        for batch in (1, 8):
            base, ours = latency_ms("yolov8n", batch, args.repeats), latency_ms("csfnet-n", batch, args.repeats)
            ratio = flops["csfnet-n"] / flops["yolov8n"]
            print(f"{batch:>5} {base:>11.1f} {ours:>12.1f} {ours / base:>14.2f} {ratio:>13.2f}")

    with tempfile.TemporaryDirectory() as tmp:
        raw = generate(Path(tmp) / "raw", SynthSpec(train_videos=24, val_videos=8, frames=50, width=320, height=256))
        if "extract" in args.only:
            scratch = Path(tempfile.mkdtemp(dir=args.scratch))
            print(f"\n## Extraction vs decode-only (32 synthetic 320x256 videos x 50 frames, output in {scratch})")
            videos = [str(v) for v in raw.rglob("*.mp4")]
            print(f"{'workers':>7} {'stride':>6} {'decode fps':>11} {'extract fps':>12} {'ratio':>6}")
            for workers in sorted({1, cores}):
                dec, frames = decode_fps(videos, workers, args.repeats)
                for stride in (1, 2):
                    ext, _ = extract_fps(raw, scratch, workers, stride, frames, args.repeats)
                    print(f"{workers:>7} {stride:>6} {dec:>11.0f} {ext:>12.0f} {ext / dec:>6.2f}")
            shutil.rmtree(scratch)
            dec_ms, enc_ms = jpeg_ceiling(videos)
            print(
                f"CPU time per frame: decode {dec_ms:.3f} ms, JPEG q{JPEG_QUALITY} encode {enc_ms:.3f} ms -> "
                f"stride-1 ceiling with every core busy {dec_ms / (dec_ms + enc_ms):.2f} of decode-only"
            )
            if args.hd_videos:
                scratch = Path(tempfile.mkdtemp(dir=args.scratch))
                hd_tiles(scratch, args.hd_videos, args.repeats, cores)
                shutil.rmtree(scratch)
        if "deploy" in args.only:
            print(f"\n## Deployment runtimes, imgsz {args.imgsz} (median of {args.repeats} runs)")
            data = Path(tmp) / "calib"
            extract(raw, data, stride=5)
            deploy(args.weights, data / "data.yaml", args.imgsz, args.repeats, Path(tmp))
        if "detect" in args.only:
            import detect_bench

            print(f"\n## csfnet detect on 1080p, full frame vs sliced, imgsz {args.imgsz} (median of {args.repeats})")
            data = Path(tmp) / "detect-calib"
            extract(raw, data, stride=5)
            weights = args.weights if args.weights.is_file() else untrained_checkpoint(Path(tmp) / "untrained.pt")
            if weights != args.weights:
                print("(no trained weights: untrained CSF-Net-n, speed only)")
            frames, batch = args.detect_frames, args.detect_batch
            detect_bench.run(weights, data / "data.yaml", args.imgsz, frames, args.repeats, batch, Path(tmp))


if __name__ == "__main__":
    main()
