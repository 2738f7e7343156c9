"""``csfnet detect`` end to end on a 1080p video: whole frames against slices, per runtime (``--only detect``).

For every runtime (PyTorch, onnxruntime FP32 and INT8, OpenVINO FP32 and INT8; PyTorch on CUDA when present):
the latency of one crop at batch 1, end-to-end frames per second of ``csfnet.detect.detect`` (decoding,
pre-processing, inference, NMS, merging, writing MOT/JSON lines; no video) with whole frames and with slices of
``imgsz`` px (overlap 0.2, plus the whole frame downscaled), and the slicing overhead against the ideal (every crop
of a frame through the runtime at batch 1, forward only): ``overhead`` for the sliced prediction itself (measured
interleaved with the ideal, medians), ``e2e`` for the whole sliced ``detect`` run per frame (decoding and writing
included). Exports are made here, unverified (timing only).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from csfnet.data.synth import SynthSpec, generate
from csfnet.detect import Predictor, SliceOptions, detect, load_runtime
from csfnet.detect.runtimes import Runtime, TorchRuntime
from csfnet.export import onnx_export, openvino_export, quantize_int8


def exports(weights: Path, data: Path, imgsz: int, tmp: Path) -> list[tuple[str, str | Path]]:
    """(name, model) of every CPU runtime: the checkpoint, ONNX FP32/INT8, OpenVINO FP32/INT8."""
    staged = tmp / "detect-bench.pt"
    staged.write_bytes(weights.read_bytes())
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        fp32 = onnx_export(staged, imgsz)
        int8 = quantize_int8(fp32, tmp / "detect-bench-int8.onnx", data, imgsz, frames=32)
        ov = openvino_export(staged, imgsz)
        ov_int8 = openvino_export(staged, imgsz, int8_data=data, frames=32)
    return [
        ("PyTorch eager", staged),
        ("onnxruntime FP32", fp32),
        ("onnxruntime INT8", int8),
        ("OpenVINO FP32", ov),
        ("OpenVINO INT8", ov_int8),
    ]


def slicing_overhead(runtime: Runtime, frames: list[np.ndarray], imgsz: int, batch: int) -> tuple[float, float]:
    """(ideal ms, sliced ms) per frame, medians over ``frames``, measured interleaved so that load on a shared
    machine hits both alike: ideal = every crop of the frame through the runtime one at a time (batch 1, forward
    only), sliced = the whole sliced prediction of the frame (crops, pre-processing, batched inference, NMS, merge).
    """
    predictor = Predictor(runtime, slicing=SliceOptions(imgsz, 0.2, True), batch=batch)
    ideal, actual = [], []
    for frame in frames:
        x = predictor.preprocess([c[2] for c in predictor.crops(frame)])
        start = time.perf_counter()
        for i in range(len(x)):
            runtime.forward(x[i : i + 1])
        middle = time.perf_counter()
        predictor([frame])
        ideal.append(middle - start)
        actual.append(time.perf_counter() - middle)
    return 1000 * statistics.median(ideal), 1000 * statistics.median(actual)


def run(weights: Path, data: Path, imgsz: int, frames: int, repeats: int, batch: int, tmp: Path) -> None:
    """Print the table (see the module docstring)."""
    import cv2

    raw = generate(tmp / "hd", SynthSpec(train_videos=0, val_videos=1, frames=frames, width=1920, height=1080, seed=1))
    video = next(raw.rglob("*.mp4"))
    capture = cv2.VideoCapture(str(video))
    decoded = [capture.read()[1] for _ in range(min(frames, 6))]
    capture.release()
    models = exports(weights, data, imgsz, tmp)
    runtimes: list[tuple[str, Runtime]] = [(name, load_runtime(m, imgsz)) for name, m in models]
    if torch.cuda.is_available():
        runtimes.append(("PyTorch eager (CUDA)", TorchRuntime(weights, imgsz, device="cuda")))
    print(f"1920x1080 video, {frames} frames; slices {imgsz} px, overlap 0.2, + whole frame; {batch} crops per call")
    header = f"{'runtime':<22} {'crop ms':>8} {'full fps':>9} {'sliced fps':>10} {'crops':>5}"
    print(f"{header} {'ideal ms':>9} {'sliced ms':>9} {'overhead':>8} {'e2e':>6} {'vs ORT FP32':>11}")
    rows = []
    for name, runtime in runtimes:
        crop = runtime.latency_ms(1, repeats)
        full = detect(runtime, video, tmp / "out", save_video=False, progress=False)
        sliced = detect(runtime, video, tmp / "out", slice_size=imgsz, batch=batch, save_video=False, progress=False)
        ideal, actual = slicing_overhead(runtime, decoded, imgsz, batch)
        rows.append((name, crop, full.fps, sliced.fps, sliced.crops_per_frame, ideal, actual))
    reference = {r[0]: r[3] for r in rows}["onnxruntime FP32"]
    for name, crop, full_fps, sliced_fps, crops, ideal, actual in rows:
        e2e = 1000 / sliced_fps / ideal
        print(
            f"{name:<22} {crop:>8.1f} {full_fps:>9.2f} {sliced_fps:>10.2f} {crops:>5} {ideal:>9.0f} {actual:>9.0f} "
            f"{actual / ideal:>7.2f}x {e2e:>5.2f}x {sliced_fps / reference:>10.2f}x"
        )
