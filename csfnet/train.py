"""Training: any configuration through ultralytics' trainer, logged as the ``train`` stage, resumable after a kill."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from csfnet import distributed
from csfnet._offline import disable_ultralytics_integrations
from csfnet.checks import check_dataset, require_file
from csfnet.device import resolve_device
from csfnet.errors import DataError
from csfnet.heads import head_args
from csfnet.lineage import data_hash, dvc_hash
from csfnet.model import is_temporal, resolve_config
from csfnet.runlog import NullLogger, StageLogger
from csfnet.settings import Settings, load_settings
from csfnet.temporal import MotionSpec, check_dataset_motion, dataset_motion
from csfnet.trainer import CSFNetTrainer

RAW_DATA = "data/raw"  # the ingest stage's output: the version of the data a model was trained on
STATE_FILE = "csfnet_train.json"  # what the run in a folder was started with, to decide whether to resume


@dataclass
class TrainResult:
    """Where a training run left its outputs."""

    run_dir: Path
    best: Path
    last: Path
    metrics: dict[str, float]
    resumed: bool


def read_partition(spec: str | Path | Sequence[int] | None) -> list[int] | None:
    """A partition given inline or as a JSON file (``{"partition": [...]}`` as ``csfnet tune`` writes, or a list).

    ``None``, ``""``, ``[]`` and a file whose partition is ``null`` (nothing was tuned) mean the config's own.
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, (list, tuple)):
        return [int(c) for c in spec] or None
    path = require_file(spec, "partition file")
    try:
        data = json.loads(path.read_text())
        values = data.get("partition") if isinstance(data, dict) else data
        return [int(c) for c in values] if values else None
    except (ValueError, TypeError, AttributeError):
        raise DataError(f"{path}: expected {{'partition': [channels ...]}} as `csfnet tune` writes") from None


def train(
    data: str | Path,
    model: str | dict[str, Any] | None = None,
    out: str | Path = "runs/train",
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    device: str | None = None,
    pretrained: str | Path | None = None,
    partition: str | Path | Sequence[int] | None = None,
    logger: StageLogger | None = None,
    callbacks: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> TrainResult:
    """Train a model on a YOLO dataset; what is not given comes from ``settings`` (default: ``params.yaml``).

    A folder holding an unfinished run started with the same settings is resumed from its ``last.pt``; any other
    content of ``out`` is replaced.

    Args:
        data: ``data.yaml`` of the dataset.
        model: Config name or YAML (``train.model``), or a resolved config dict (as tuning builds per trial).
        out: Run folder; receives ``weights/best.pt`` and ``weights/last.pt``.
        preset: Name of a preset in ``params.yaml`` (``train.preset``).
        overrides: ultralytics training arguments on top of the preset (``epochs``, ``imgsz``, ``batch`` ...).
        device: ``""`` for auto, ``cpu``, ``0``, ``0,1`` (DDP) ...
        pretrained: Optional local checkpoint whose shape-matching tensors initialise the model.
        partition: CSwitch partition (list or ``csfnet tune``'s JSON file) replacing the config's own.
        logger: Records the run as the ``train`` stage (default: nothing is recorded).
        callbacks: Extra ultralytics callbacks ``{event: fn}`` (used by tuning to report to Optuna).
        settings: Validated settings (default: :func:`csfnet.settings.load_settings`).
    """
    named = {"train.model": model} if not isinstance(model, dict) else {}
    settings = (settings or load_settings()).override(
        {**named, "train.preset": preset, "train.device": device, "train.pretrained": _text(pretrained)}, "options"
    )
    settings = settings.override({f"args.{k}": v for k, v in (overrides or {}).items()}, "training overrides")
    info = check_dataset(data, ("train", "val"))  # before resolving: errors name the path as given
    data, out = Path(data).resolve(), Path(out).resolve()
    pretrained = settings.train.pretrained or None
    if pretrained:
        require_file(pretrained, "pretrained checkpoint", "a local file, never downloaded")
    partition_list = read_partition(partition)
    if isinstance(model, dict):
        model_name, config = str(model.get("name", "custom")), model
    else:
        model_name = settings.train.model
        config = resolve_config(model_name, nc=len(info["names"]), partition=partition_list)
    check_motion_match(model_name, config, data, info, MotionSpec.from_settings(settings))

    args = settings.train_args()
    args.update(
        data=str(data),
        device=resolve_device(settings.train.device),
        seed=int(args.get("seed", settings.train.seed)),
        pretrained=str(Path(pretrained).resolve()) if pretrained else False,
        project=str(out.parent),
        name=out.name,
        exist_ok=True,
        plots=args.get("plots", True),
    )
    args.update(head_args(config, settings.eval.end_to_end))  # the head its validation runs (ultralytics' nms arg)
    state = {"model": model_name, "config": config, "args": {k: v for k, v in args.items() if k != "device"}}
    is_main = distributed.start(args["device"])  # under torchrun only rank 0 writes outputs and logs to MLflow
    logger = logger if is_main else None
    resume_from = _resumable(out, state) if is_main else None
    if resume_from is None and is_main:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        (out / STATE_FILE).write_text(json.dumps(state, indent=2, default=str))
    if isinstance(config, dict):  # ultralytics (and its DDP workers) take the model as a file
        model_file = out / "model.yaml"
        if is_main:
            model_file.write_text(yaml.safe_dump(config, sort_keys=False))
        args["model"] = str(model_file)
    else:
        args["model"] = config
    resume_from = distributed.from_main(resume_from)  # every rank waits for rank 0's decision and files
    if resume_from is not None:
        args["resume"] = str(resume_from)

    disable_ultralytics_integrations()
    preset = settings.train.preset
    tags = {"csfnet.model_config": model_name, "csfnet.data_hash": data_hash(data), "csfnet.preset": preset}
    run_params = {"model": model_name, "preset": preset, "partition": partition_list, **args}
    with (logger or NullLogger()).stage("train", params=run_params, tags=tags) as run:
        trainer = CSFNetTrainer(overrides=args)
        if run.active:
            trainer.add_callback("on_fit_epoch_end", epoch_logger(run))
        for event, fn in (callbacks or {}).items():
            trainer.add_callback(event, fn)
        trainer.train()
        result = TrainResult(
            run_dir=Path(trainer.save_dir),
            best=Path(trainer.best),
            last=Path(trainer.last),
            metrics={k: float(v) for k, v in (trainer.metrics or {}).items()},
            resumed=resume_from is not None,
        )
        if run.active:
            _log_outputs(run, result, getattr(trainer, "pretrained_tensors", None))
            _log_data_stats(run, data, int(args.get("imgsz", 640)), result.run_dir / "data_stats")
            _log_dataset(run, data, settings.data.source)
    return result


def check_motion_match(
    model_name: str, config: dict[str, Any] | str, data: Path, info: dict[str, Any], expected: MotionSpec | None
) -> None:
    """DataError naming the mismatch, before anything is written: a temporal model on a dataset without motion
    channels, a single-frame model on one with them, or a dataset whose motion is stale for the ``temporal``
    settings (other offsets or alignment, missing motion files)."""
    found = dataset_motion(info)
    if is_temporal(config) and found is None:
        raise DataError(
            f"{model_name} is a temporal model (colour + motion) but dataset {data} has no motion channels; set "
            "temporal.offsets and re-extract it, or train a single-frame model"
        )
    if not is_temporal(config) and found is not None:
        raise DataError(
            f"{model_name} is a single-frame model but dataset {data} has motion channels (offsets "
            f"{list(found.offsets)}); train a temporal model (csfnet-t-n) or re-extract with temporal.offsets: []"
        )
    check_dataset_motion(data, expected)


def _text(value: str | Path | None) -> str | None:
    return None if value is None else str(value)


def _log_dataset(run: StageLogger, data: Path, source: str) -> None:
    """The data version as the run's dataset input: source = data.source (masked), digest = the DVC hash of the
    raw data (``data/raw`` in ``dvc.lock``), else of the extracted dataset."""
    run.log_dataset(data, source, dvc_hash(RAW_DATA) or data_hash(data))


def _log_data_stats(run: StageLogger, data: Path, imgsz: int, out_dir: Path) -> None:
    """The trained-on dataset's object sizes (at source and at imgsz) with the training run."""
    from csfnet.data.stats import dataset_stats

    stats = dataset_stats(data, imgsz=imgsz, out_dir=out_dir)
    for split, values in stats["splits"].items():
        run.log_metrics(
            {
                f"data.{split}.objects": values["objects"],
                f"data.{split}.below_stride_share": values["below_stride_share"],
            }
        )
    run.log_artifacts(out_dir, "data_stats")


def _resumable(out: Path, state: dict) -> Path | None:
    """``last.pt`` of an unfinished run in ``out`` started with the same settings, else None."""
    last, state_file = out / "weights" / "last.pt", out / STATE_FILE
    if not last.is_file() or not state_file.is_file():
        return None
    if json.loads(state_file.read_text()) != json.loads(json.dumps(state, default=str)):
        return None
    try:
        epoch = torch.load(last, map_location="cpu", weights_only=False).get("epoch", -1)
    except Exception:  # a checkpoint cut off mid-write cannot be resumed
        return None
    return last if epoch is not None and epoch >= 0 else None


def epoch_logger(run: StageLogger) -> Callable[[Any], None]:
    """An ultralytics ``on_fit_epoch_end`` callback logging per-epoch losses, validation metrics and learning rate.

    ultralytics calls it once more after the last epoch with the best checkpoint's metrics; those go to ``best/``.
    """

    def log_epoch(trainer: Any) -> None:
        if trainer.epoch >= trainer.epochs:
            run.log_metrics({f"best/{k}": float(v) for k, v in (trainer.metrics or {}).items()})
            return
        values = {**trainer.label_loss_items(trainer.tloss, prefix="train"), **(trainer.metrics or {}), **trainer.lr}
        run.log_metrics({k: float(v) for k, v in values.items()}, step=trainer.epoch + 1)

    return log_epoch


def _log_outputs(run: StageLogger, result: TrainResult, pretrained_tensors: int | None) -> None:
    run.log_metrics({f"final/{k}": v for k, v in result.metrics.items()})
    if pretrained_tensors is not None:
        run.log_metrics({"pretrained_tensors_loaded": pretrained_tensors})
    run.set_tags({"csfnet.resumed": result.resumed})
    for name in ("results.csv", "args.yaml", "model.yaml"):
        if (result.run_dir / name).is_file():
            run.log_artifact(result.run_dir / name)
    for plot in sorted(result.run_dir.glob("*.png")) + sorted(result.run_dir.glob("*.jpg")):
        run.log_artifact(plot, "plots")
    if result.best.is_file():
        run.log_artifact(result.best, "weights")
