"""One cell of a comparison: a configuration trained with one seed at the comparison's budget, then scored.

A cell folder holds ``cell.json`` (metrics, size, latency, training time, what it was trained with), ``matches.npz``
(its detections on every validation image matched to the ground truth: the input of the paired bootstrap) and
``weights/best.pt``. ``cell.json`` is written last: a folder without it is unfinished and is trained again (resumed
from its ``train/weights/last.pt`` when the settings are the same); one whose fingerprint matches is reused.

Under ``torchrun`` every rank trains the cell together (into rank 0's folder, on storage all nodes share); rank 0
alone decides whether it is finished, scores it, writes its files and logs its run, and every rank returns rank 0's
``cell.json``.
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from csfnet import distributed
from csfnet.checks import check_dataset
from csfnet.device import resolve_device
from csfnet.files import write_json
from csfnet.lineage import PIPELINE_ENV, data_hash
from csfnet.metrics import ImageMatches, average_precision
from csfnet.runlog import NullLogger, ParentRun, StageLogger
from csfnet.settings import Settings, load_settings

CELL_FILE = "cell.json"
MATCHES_FILE = "matches.npz"
COMPARISON_TAG = "csfnet.comparison"


def cell_settings(config: str, seed: int, preset: str | None = None, settings: Settings | None = None) -> Settings:
    """The settings a cell trains with: ``train.model`` = ``config``, ``train.seed`` = ``seed``, the comparison's
    preset (``compare.preset`` unless ``preset``)."""
    settings = settings or load_settings()
    preset = preset or settings.compare.preset
    settings.check_preset("compare.preset", preset)
    values = {"train.model": config, "train.seed": seed, "train.preset": preset, "train.pretrained": ""}
    return settings.override(values, "comparison")  # from scratch: a pretrained file would break equal budget


def comparison_id(data_version: str, settings: Settings) -> str:
    """Identity of a comparison (its MLflow parent run): the Kubeflow run id when set, else a hash of the data
    version (:func:`csfnet.lineage.data_hash`), the budget (the preset's arguments), the configurations and seeds."""
    import os

    if os.environ.get(PIPELINE_ENV):
        return os.environ[PIPELINE_ENV]
    c = settings.compare  # not the commit: DVC rewrites tracked files between cells, which would split the parent
    spec = [data_version, settings.train_args(), c.configs, c.seeds]
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def comparison_parent(comparison: str) -> ParentRun:
    """The comparison's parent run, which its cells and report nest under (created on first use)."""
    return ParentRun(COMPARISON_TAG, comparison, "compare")


def run_cell(
    config: str,
    seed: int,
    data: str | Path,
    out: str | Path,
    preset: str | None = None,
    device: str | None = None,
    logger: StageLogger | None = None,
    comparison: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Train ``config`` with ``seed`` at the comparison budget, score it on the validation split, write the cell.

    Args:
        config: Model configuration (``csfnet-n``, an ablation, ``yolov8n``, ``yolov8n-p2``, ``yolov8s`` or a YAML).
        seed: Training seed.
        data: ``data.yaml``; every cell of a comparison must use the same one.
        out: Cell folder.
        preset: Training preset (default: ``compare.preset``).
        device: ``""`` auto, ``cpu``, ``0`` ... (default: ``train.device``).
        logger: Records the cell as a run (tagged with configuration and seed) under the comparison's parent run
            (default: nothing is recorded).
        comparison: Comparison id of the parent run (default: :func:`comparison_id`).
        settings: Validated settings (default: :func:`csfnet.settings.load_settings`).

    Returns:
        The content of ``cell.json``.
    """
    every = cell_settings(config, seed, preset, settings)
    every = every.override({"train.device": device}, "options")
    info = check_dataset(data, ("train", "val"))
    colour_only = single_frame_on_motion(config, data)
    if colour_only:  # a single-frame configuration meets temporal ones on the colour frames of the same split
        every = every.override({"temporal.offsets": []}, "comparison")
    fingerprint = _fingerprint(config, seed, every, data)
    if not distributed.start(resolve_device(None, every)):
        return _follow(data, every, colour_only)
    out = Path(distributed.from_main(str(Path(out).resolve())))  # the other ranks train into this folder too
    done = distributed.from_main(_finished(out, fingerprint))
    if done is not None:
        return done
    out.mkdir(parents=True, exist_ok=True)
    (out / CELL_FILE).unlink(missing_ok=True)
    tags = {
        "csfnet.config": config,
        "csfnet.seed": str(seed),
        "csfnet.preset": every.train.preset,
        "csfnet.data_hash": data_hash(data),
        "mlflow.runName": f"{config}-seed{seed}",
    }
    logger = logger or NullLogger()
    if logger.active:  # the parent run's id, recorded in the cell for the report to nest under
        comparison = comparison or comparison_id(tags["csfnet.data_hash"], every)
        tags[COMPARISON_TAG] = comparison
    params = {"config": config, "seed": seed, **every.train_args()}
    parent = comparison_parent(comparison) if comparison else None
    with logger.stage("compare-cell", params, tags, parent=parent, fail_parent=False) as run:
        model_data = _model_data(data, out, colour_only)
        cell = _run(config, seed, data, model_data, out, every, len(info["names"]), fingerprint, run, comparison)
    return distributed.from_main(cell)  # the other ranks wait until the cell is written


def single_frame_on_motion(config: str, data: str | Path) -> bool:
    """Whether ``config`` is a single-frame configuration and ``data`` has motion channels: it then trains and is
    scored on the data's colour frames."""
    from csfnet.model import is_temporal
    from csfnet.temporal import dataset_motion

    return dataset_motion(data) is not None and not is_temporal(config)


def _model_data(data: str | Path, out: Path, colour_only: bool) -> str | Path:
    """The data.yaml the cell's model trains and is scored on: ``data``, or its colour view (same images, no motion
    channels) for a single-frame configuration on motion data."""
    from csfnet.temporal import colour_view

    return colour_view(data, out / "colour" / "data.yaml") if colour_only else data


def _follow(data: str | Path, every: Settings, colour_only: bool) -> dict[str, Any]:
    """A rank other than 0: train the cell with rank 0 unless it is finished; rank 0's ``cell.json``."""
    from csfnet.train import train

    out = Path(distributed.from_main(None))
    done = distributed.from_main(None)
    if done is not None:  # finished earlier: rank 0 returns it without another broadcast
        return done
    train(_model_data(data, out, colour_only), out=out / "train", settings=every)  # rank 0 trains it, and this rank
    return distributed.from_main(None)


def _run(
    config: str,
    seed: int,
    data: str | Path,
    model_data: str | Path,
    out: Path,
    every: Settings,
    nc: int,
    fingerprint: str,
    run: StageLogger,
    comparison: str | None,
) -> dict[str, Any]:
    from csfnet.model import model_summary
    from csfnet.temporal import dataset_motion
    from csfnet.train import epoch_logger, train

    device = resolve_device(None, every)
    gpus = 0 if device == "cpu" else len(device.split(","))
    launch = distributed.current_launch()
    if launch.distributed and device != "cpu":  # rank 0 scores on its own GPU; the cell trained on every rank's
        device, gpus = distributed.device_setting(device, launch), launch.world_size
    clock, cpu = time.perf_counter(), _cpu_seconds()
    callbacks = {"on_fit_epoch_end": epoch_logger(run)} if run.active else None
    result = train(model_data, out=out / "train", callbacks=callbacks, settings=every)  # the cell's own run
    train_s, cpu_s = time.perf_counter() - clock, _cpu_seconds() - cpu
    imgsz = every.imgsz
    matches, bands, latency = _score(result.best, model_data, imgsz, device, every)
    motion = dataset_motion(model_data)  # a temporal config's size at the data's channels
    summary = model_summary(config, imgsz=imgsz, nc=nc, ch=3 + (motion.channels if motion else 0))
    cell = {
        "config": config,
        "seed": seed,
        "preset": every.train.preset,
        "args": every.train_args(),
        "data_hash": data_hash(data),
        "fingerprint": fingerprint,
        "comparison": comparison,  # the MLflow parent's id: the report nests under the same one
        "eval": every.eval.model_dump(),  # how it was scored: cells of one report must agree
        "images": len(matches.n_gt),
        "objects": int(matches.n_gt.sum()),
        "metrics": {**average_precision(matches), "ap50_bands": {k: v["ap50"] for k, v in bands.items()}},
        "bands_px": {k: v["px"] for k, v in bands.items()},  # [lo, hi) of sqrt(box area) in source pixels
        "bands_objects": {k: v["objects"] for k, v in bands.items()},
        "params": summary["params"],
        "gflops": summary["gflops"],
        "imgsz": imgsz,
        "latency_ms_cpu": latency,
        "train_s": round(train_s, 1),
        "device": device,
        "ranks": launch.world_size,  # processes that trained it (torchrun), each on its own device
        "gpu_hours": round(train_s * gpus / 3600, 4),
        "cpu_s": round(cpu_s, 1),
    }
    weights = out / "weights"
    weights.mkdir(exist_ok=True)
    shutil.copy2(result.best, weights / "best.pt")
    matches.save(out / MATCHES_FILE)
    write_json(out / CELL_FILE, cell)  # last: marks the cell finished
    run.log_metrics({k: cell[k] for k in ("params", "gflops", "latency_ms_cpu", "train_s", "cpu_s")})
    run.log_metrics(cell["metrics"])
    run.log_artifact(out / CELL_FILE)
    return cell


def _score(
    weights: Path, data: str | Path, imgsz: int, device: str, every: Settings
) -> tuple[ImageMatches, dict[str, dict[str, Any]], float]:
    """Matches on every validation image, AP50 by size band, and the median CPU latency at batch 1 (ms)."""
    from csfnet.compare.predictions import scored_split
    from csfnet.metrics import bands_of

    e = every.eval
    images, _, _, matches = scored_split(weights, data, imgsz, e.conf, e.iou, device)
    bands = bands_of(matches, e.size_bands, e.report_conf)
    return matches, bands, cpu_latency(weights, images[: every.compare.latency_images], imgsz)


def cpu_latency(weights: Path, images: list[Path], imgsz: int) -> float:
    """Median end-to-end milliseconds per image (pre-processing, inference, NMS) on the CPU at batch 1; a temporal
    model gets the image stacked with its motion channels."""
    from ultralytics import YOLO

    from csfnet.temporal import load_stacked, model_motion

    model = YOLO(str(weights))
    motion = model_motion(model.model)
    times = []
    for i, image in enumerate(images[:2] + images):  # two warm-up runs
        source = load_stacked(image, motion) if motion else str(image)
        r = model.predict(source, imgsz=imgsz, device="cpu", verbose=False)[0]
        if i >= min(2, len(images)):
            times.append(sum(r.speed.values()))
    return round(statistics.median(times), 2) if times else 0.0


def load_cell(folder: str | Path) -> tuple[dict[str, Any], ImageMatches]:
    """``cell.json`` and the matches of a finished cell folder."""
    from csfnet.errors import InputNotFoundError

    folder = Path(folder)
    if not (folder / CELL_FILE).is_file():
        raise InputNotFoundError(f"{folder}: not a finished comparison cell (no {CELL_FILE})")
    return json.loads((folder / CELL_FILE).read_text()), ImageMatches.load(folder / MATCHES_FILE)


def _fingerprint(config: str, seed: int, every: Settings, data: str | Path) -> str:
    spec = [config, seed, every.train_args(), data_hash(data), every.eval.model_dump(), every.compare.latency_images]
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _finished(out: Path, fingerprint: str) -> dict[str, Any] | None:
    path = out / CELL_FILE
    if not path.is_file() or not (out / MATCHES_FILE).is_file():
        return None
    cell = json.loads(path.read_text())
    return cell if cell.get("fingerprint") == fingerprint else None


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (data-loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
