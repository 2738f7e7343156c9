"""The measurements of the GPU check (``benchmarks/gpu.py``), one function per section.

Each section runs in its own process (the runner kills it when its time box ends), takes the plan and a work folder
shared with the other sections, and reports through ``record``: ``record(row=...)`` keeps a measured row,
``record(skip=(what, reason))`` a row it could not measure and why, ``record(**facts)`` anything else. Rows are
written as they are measured, so a section cut off by its time box keeps what it finished.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import csfnet  # noqa: F401  (offline defaults before ultralytics is imported)
from csfnet.data.extract import extract
from csfnet.data.synth import SynthSpec, generate

Record = Callable[..., None]
CURRENT_BASELINE = "yolo26n"  # the best current-generation baseline (NMS-free YOLO26, ultralytics 8.4)
THROUGHPUT_MODELS = ("csfnet-n", "yolov8n", CURRENT_BASELINE)
CUDA_PROVIDER = "CUDAExecutionProvider"


def build(name: str) -> torch.nn.Module:
    """A detection model (nc=1) by name: csfnet's builder when it knows the name, else ultralytics' own YAML of that
    name (how ``yolo26n`` is built while csfnet's config names do not include it)."""
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    from csfnet.model import build_model

    try:
        return build_model(name)
    except ValueError:
        return DetectionModel({**yaml_model_load(f"{name}.yaml"), "nc": 1}, nc=1, verbose=False)


def env(plan: dict, work: Path, record: Record) -> None:
    """Versions and devices."""
    import onnxruntime as ort
    import ultralytics

    cuda = torch.cuda.is_available()
    record(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        ultralytics=ultralytics.__version__,
        onnxruntime=ort.__version__,
        ort_providers=ort.get_available_providers(),
        gpus=[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
        cpu_threads=torch.get_num_threads(),
    )


def throughput(plan: dict, work: Path, record: Record) -> None:
    """Training throughput (images/s) of forward + loss + backward + optimizer step on a fixed synthetic batch, with
    AMP (fp16 autocast and a gradient scaler) on CUDA: the model's own cost, without data loading."""
    from ultralytics.cfg import get_cfg

    device = torch.device(plan["device"])
    torch.backends.cudnn.benchmark = device.type == "cuda"
    batch, imgsz, amp = plan["batch"], plan["imgsz"], plan["amp"]
    data = _synthetic_batch(batch, imgsz, device)
    for name in THROUGHPUT_MODELS:
        model = build(name).to(device).train()
        model.args = get_cfg()  # the loss reads its gains (box, cls, dfl) from the training arguments
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=amp)

        def step(model=model, optimizer=optimizer, scaler=scaler) -> None:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss, _ = model.loss(data)
            scaler.scale(loss.sum()).backward()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

        for _ in range(plan["warmup"]):
            step()
        _sync(device)
        start = time.perf_counter()
        for _ in range(plan["steps"]):
            step()
        _sync(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        record(
            row={
                "model": name,
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "imgsz": imgsz,
                "batch": batch,
                "amp": amp,
                "steps": plan["steps"],
                "images_per_s": round(batch * plan["steps"] / seconds, 1),
                "peak_gib": round(peak, 2) if peak is not None else None,
            }
        )
        del model, optimizer, scaler
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def _synthetic_batch(batch: int, imgsz: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Random images with three small boxes each (normalised xywh), in the layout ultralytics' losses take."""
    g = torch.Generator().manual_seed(0)
    n = 3 * batch
    size = 0.01 + 0.09 * torch.rand(n, 2, generator=g)
    centre = 0.1 + 0.8 * torch.rand(n, 2, generator=g)
    return {
        "img": torch.rand(batch, 3, imgsz, imgsz, generator=g).to(device),
        "batch_idx": torch.arange(batch).repeat_interleave(3).float().to(device),
        "cls": torch.zeros(n, 1, device=device),
        "bboxes": torch.cat([centre, size], 1).to(device),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dataset(plan: dict, work: Path) -> Path:
    """data.yaml of the synthetic training set every training section shares (made once)."""
    data = work / "data" / "data.yaml"
    if not data.is_file():
        spec = SynthSpec(**plan["synth"])
        with contextlib.redirect_stderr(io.StringIO()):
            raw = generate(work / "raw", spec)
            extract(raw, work / "data", stride=plan["stride"])
    return data


class _PlannedStopError(Exception):
    """Raised by the callback that stops the first training run after its first checkpoint."""


def train(plan: dict, work: Path, record: Record) -> None:
    """One short ``csfnet.train`` run end to end (CSFNetTrainer, AMP, EMA): interrupted after the first epoch's
    checkpoint, then resumed from ``last.pt`` + ``last_state.pt`` to the end."""
    from csfnet.train import train as train_model

    data = dataset(plan, work)
    run = work / "train"
    shutil.rmtree(run, ignore_errors=True)
    overrides = {**plan["train_args"], "epochs": 2}
    seen: dict[str, Any] = {"epoch_s": []}

    def stop_after_first(trainer: Any) -> None:
        if trainer.epoch == 0:
            seen["state_saved"] = (Path(trainer.wdir) / "last_state.pt").is_file()
            raise _PlannedStopError

    def epoch_start(trainer: Any) -> None:
        seen["epoch_start"] = time.perf_counter()

    def epoch_end(trainer: Any) -> None:
        seen["epoch_s"].append(time.perf_counter() - seen["epoch_start"])
        seen["images"] = len(trainer.train_loader.dataset)

    def train_end(trainer: Any) -> None:
        seen.update(amp=bool(trainer.amp), ema_updates=int(trainer.ema.updates), device=str(trainer.device))

    timing = {"on_train_epoch_start": epoch_start, "on_train_epoch_end": epoch_end}
    start = time.perf_counter()
    with contextlib.suppress(_PlannedStopError):
        train_model(data, "csfnet-n", run, overrides=overrides, device=plan["train_device"],
                    callbacks={**timing, "on_model_save": stop_after_first})  # fmt: skip
    first = time.perf_counter() - start
    result = train_model(data, "csfnet-n", run, overrides=overrides, device=plan["train_device"],
                         callbacks={**timing, "on_train_end": train_end})  # fmt: skip
    epochs = len((run / "results.csv").read_text().splitlines()) - 1
    images_per_s = seen["images"] / min(seen["epoch_s"]) if seen["epoch_s"] else None
    record(
        row={
            "model": "csfnet-n",
            "device": seen.get("device"),
            "imgsz": overrides["imgsz"],
            "batch": overrides["batch"],
            "amp": seen.get("amp"),
            "ema_updates": seen.get("ema_updates"),
            "state_saved": seen.get("state_saved", False),
            "resumed": result.resumed,
            "epochs": epochs,
            "state_removed": not (run / "weights" / "last_state.pt").exists(),
            "first_run_s": round(first, 1),
            "seconds": round(time.perf_counter() - start, 1),
            "images_per_s": round(images_per_s, 1) if images_per_s else None,
            "map50": round(result.metrics.get("metrics/mAP50(B)", 0.0), 4),
        }
    )
    if plan["amp"] and not seen.get("amp"):
        record(skip=("AMP in training", "ultralytics' AMP check turned AMP off (see the section log)"))


def weights(plan: dict, work: Path) -> tuple[Path, bool]:
    """The trained checkpoint of the train section, else an untrained CSF-Net-n (timing only); and whether trained."""
    trained = work / "train" / "weights" / "best.pt"
    if trained.is_file():
        return trained, True
    import run  # benchmarks/run.py

    return run.untrained_checkpoint(work / "untrained.pt"), False


def onnx(plan: dict, work: Path, record: Record) -> None:
    """Latency of ONNX Runtime (CUDA provider; CPU in CPU mode) against PyTorch eager (FP32, and FP16 on CUDA)."""
    import onnxruntime as ort
    import run  # benchmarks/run.py

    from csfnet.detect.onnx_detector import session
    from csfnet.export import onnx_export

    checkpoint, trained = weights(plan, work)
    staged = work / "onnx" / "model.pt"
    staged.parent.mkdir(exist_ok=True)
    staged.write_bytes(checkpoint.read_bytes())
    imgsz, repeats, device = plan["imgsz"], plan["repeats"], plan["device"]
    with contextlib.redirect_stdout(io.StringIO()):
        path = onnx_export(staged, imgsz)
    record(trained_weights=trained, imgsz=imgsz)
    provider = "CUDA" if device != "cpu" else "CPU"
    usable, why = True, ""
    if provider == "CUDA" and "CUDAExecutionProvider" not in ort.get_available_providers():
        usable, why = False, "onnxruntime has no CUDA provider (onnxruntime-gpu is not installed)"
    elif provider == "CUDA" and "CUDAExecutionProvider" not in session(path, [CUDA_PROVIDER]).get_providers():
        usable, why = False, "onnxruntime-gpu could not load its CUDA/cuDNN libraries (it fell back to the CPU)"
    if not usable:
        record(skip=("onnxruntime FP32 (CUDA)", why))
    for batch in plan["latency_batches"]:
        rows = [("PyTorch FP32", run.torch_latency_ms(staged, imgsz, batch, repeats, device))]
        if device != "cpu":
            rows.append(("PyTorch FP16", _torch_half_ms(staged, imgsz, batch, repeats, device)))
        if usable:
            rows.append((f"onnxruntime FP32 ({provider})", run.ort_latency_ms(path, imgsz, batch, repeats, provider)))
        reference = rows[0][1]
        for name, ms in rows:
            speed = {"ms": round(ms, 2), "images_per_s": round(1000 * batch / ms, 1)}
            record(
                row={
                    "runtime": name,
                    "device": device,
                    "batch": batch,
                    **speed,
                    "vs_pytorch_fp32": round(reference / ms, 2),
                }
            )


def _torch_half_ms(weights_path: Path, imgsz: int, batch: int, repeats: int, device: str) -> float:
    from ultralytics import YOLO

    model = YOLO(str(weights_path)).model.float().eval().fuse(verbose=False).half().to(device)  # fuse in FP32
    x = torch.rand(batch, 3, imgsz, imgsz, device=device).half()
    times = []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            model(x)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def detect(plan: dict, work: Path, record: Record) -> None:
    """``csfnet detect`` (``csfnet.detect.detect``) end to end on a synthetic video, PyTorch on the check's device:
    whole frames and slices of imgsz px (overlap 0.2, plus the whole frame), no video written."""
    from csfnet.detect import detect as run_detect
    from csfnet.detect.runtimes import TorchRuntime

    checkpoint, trained = weights(plan, work)
    width, height, frames = plan["video"]
    spec = SynthSpec(train_videos=0, val_videos=1, frames=frames, width=width, height=height, seed=1)
    with contextlib.redirect_stderr(io.StringIO()):
        video = next(generate(work / "video", spec).rglob("*.mp4"))
    runtime = TorchRuntime(checkpoint, plan["imgsz"], device=plan["device"])
    runtime.latency_ms(1, 2)  # warm-up (CUDA context, cuDNN autotuning)
    for mode, options in (("full frame", {}), ("sliced", {"slice_size": plan["imgsz"], "batch": 8})):
        result = run_detect(runtime, video, work / "detect", save_video=False, progress=False, **options)
        source = {"video": f"{width}x{height}", "frames": result.frames, "crops_per_frame": result.crops_per_frame}
        record(row={"mode": mode, "device": plan["device"], **source, "fps": result.fps, "trained_weights": trained})


def ddp(plan: dict, work: Path, record: Record) -> None:
    """One epoch of ``csfnet.train`` with DDP on two GPUs (ultralytics starts the workers), against one GPU. (The
    parent of ultralytics' DDP run holds no metrics: its workers validate.)"""
    from csfnet.train import train as train_model

    data = dataset(plan, work)
    images = sum(1 for _ in (data.parent / "images" / "train").iterdir())
    overrides = {**plan["train_args"], "epochs": 1, "plots": False}
    for devices in ("0", "0,1"):
        start = time.perf_counter()
        run = work / f"ddp-{devices.replace(',', '')}"
        train_model(data, "csfnet-n", run, overrides=overrides, device=devices)
        seconds = time.perf_counter() - start
        rate = round(images / seconds, 1)  # wall time of the whole run: start-up, the epoch, validation
        record(row={"devices": devices, "epochs": 1, "batch": overrides["batch"], "images": images,
                    "seconds": round(seconds, 1), "images_per_s_with_startup": rate})  # fmt: skip


SECTIONS: dict[str, Callable[[dict, Path, Record], None]] = {
    "env": env,
    "throughput": throughput,
    "train": train,
    "onnx": onnx,
    "detect": detect,
    "ddp": ddp,
}
