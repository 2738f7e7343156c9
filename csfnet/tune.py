"""Optuna search for the CSwitch channel partition (and optionally CReToNeXt depth and learning rate).

Every trial trains through :func:`csfnet.train.train`, the code behind ``csfnet train``, reports validation
mAP50-95 to Optuna after each epoch so that the pruner can stop it, and is logged as a nested MLflow run under the
study's run. The study lives in any SQLAlchemy database (a SQLite file by default, PostgreSQL for several workers);
running again continues it: finished trials are kept, trials of a killed worker are failed once their heartbeat
goes stale and retried with the same parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import optuna
import yaml
from optuna.storages import RDBStorage, RetryFailedTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from csfnet.data.io import write_json
from csfnet.model import model_summary, resolve_config, takes_partition
from csfnet.params import section
from csfnet.tracking import data_hash, log_flat_metrics, stage_run

METRIC = "metrics/mAP50-95(B)"
OBJECTIVES = ("map50_95", "pareto")  # pareto: maximise mAP50-95, minimise GFLOPs
PRUNERS = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}
STORAGE_ENV = "CSFNET_OPTUNA_STORAGE"  # a shared study database, e.g. from a Kubernetes secret
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


@dataclass
class TuneSettings:
    """What to search and how; every field has a ``tune:`` key of the same name in ``params.yaml``."""

    trials: int = 3
    epochs: int = 2
    imgsz: int = 160
    fraction: float = 1.0  # share of the training split each trial trains on
    objective: str = "map50_95"
    storage: str = ""  # SQLAlchemy URL; "" = $CSFNET_OPTUNA_STORAGE, else sqlite:///<work dir>/study.db
    study_name: str = ""  # "" = derived from model, data and search space, so changed inputs start a new study
    seed: int = 0
    partition: dict[str, Any] = field(
        default_factory=lambda: {"min": [32, 64, 128], "max": [128, 256, 512], "step": 16}
    )
    head_depth: list[int] | None = None  # [low, high] CReToNeXt blocks, or None to keep the config's
    lr0: list[float] | None = None  # [low, high] (log scale), or None to keep the preset's
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median", "n_startup_trials": 2})
    heartbeat_interval: int = 30  # seconds; a trial silent for grace_period is failed and retried
    grace_period: int = 90
    max_retry: int = 1

    @classmethod
    def from_params(cls, **overrides: Any) -> TuneSettings:
        """``params.yaml``'s ``tune`` section with non-None ``overrides`` on top."""
        known = cls.__dataclass_fields__
        values = {k: v for k, v in section("tune").items() if k in known}
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"tune objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.pruner.get("type", "median") not in PRUNERS:
            raise ValueError(f"tune pruner type must be one of {sorted(PRUNERS)}, got {self.pruner.get('type')!r}")
        low, high, step = self.partition["min"], self.partition["max"], int(self.partition.get("step", 16))
        if len(low) != len(high) or any(lo < step or lo > hi for lo, hi in zip(low, high)):
            raise ValueError(f"tune partition bounds need step <= min <= max per stage, got {self.partition}")
        if self.trials < 1 or self.epochs < 1:
            raise ValueError("tune trials and epochs must be >= 1")


@dataclass
class TuneResult:
    """The study's outcome, as written to the best-partition JSON."""

    study_name: str
    storage: str
    partition: list[int] | None
    value: float | None
    params: dict[str, Any]
    trial: int | None
    pareto_front: list[dict[str, Any]]
    counts: dict[str, int]
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def tune(
    data: str | Path,
    out: str | Path = "metrics/tune/best_partition.json",
    work_dir: str | Path = "runs/tune",
    model: str | None = None,
    preset: str | None = None,
    device: str | None = None,
    worker: int = 0,
    track: bool = True,
    **overrides: Any,
) -> TuneResult:
    """Run (or continue) a study until it holds ``trials`` finished trials; write the best partition to ``out``.

    Args:
        data: ``data.yaml`` of the dataset.
        out: JSON receiving the best partition (``{"partition": [...], ...}``), read by ``csfnet train``.
        work_dir: Trial run folders and the default SQLite study.
        model: Config to tune (``train.model``); a config without CSwitch/DFuse writes ``partition: null``.
        preset: Training preset the trials start from (``train.preset``).
        device: Training device; one device per worker (several workers share a study instead of DDP).
        worker: Index of this worker among those sharing the study; offsets the sampler seed.
        track: Log the study and its trials to MLflow.
        **overrides: :class:`TuneSettings` fields (``trials``, ``epochs``, ``storage`` ...).
    """
    settings = TuneSettings.from_params(**overrides)
    train_settings = section("train")
    model = model or train_settings.get("model", "csfnet-n")
    preset = preset or train_settings.get("preset", "quick")
    data, out, work_dir = Path(data).resolve(), Path(out), Path(work_dir)
    if not data.is_file():
        raise FileNotFoundError(f"dataset file {data} not found (run `csfnet data extract` first)")
    nc = len((yaml.safe_load(data.read_text()) or {}).get("names") or [0])
    config = resolve_config(model, nc=nc)
    if not takes_partition(config):
        result = _empty_result(f"{model} has no CSwitch feeding DFuse: nothing to tune")
        write_json(out, result.to_json())
        return result

    work_dir.mkdir(parents=True, exist_ok=True)
    # a relative work dir gives a relative SQLite URL, so best_partition.json (a DVC output) is the same on every clone
    storage_url = settings.storage or os.environ.get(STORAGE_ENV) or f"sqlite:///{work_dir / 'study.db'}"
    name = settings.study_name or _study_name(model, data, settings)
    study = _load_study(name, storage_url, settings, worker, _baseline(config, settings))
    objective = _Objective(settings, data, model, nc, preset, device, work_dir, track, worker)
    context = (
        stage_run("tune", params=_run_params(settings, model, name), tags={"csfnet.data_hash": data_hash(data)})
        if track
        else contextlib.nullcontext()
    )
    with context:
        _optimize(study, objective, settings)
        result = _result(study, name, storage_url, settings)
        write_json(out, result.to_json())
        if track:
            _log_study(study, result, out, settings)
    return result


def _baseline(config: dict[str, Any], settings: TuneSettings) -> dict[str, int] | None:
    """The config's own (hand-set, width-scaled) partition as trial parameters, if it lies in the search space."""
    from csfnet.nn.builder import scaled_partition

    step = int(settings.partition.get("step", 16))
    params = {f"partition_p{i + 3}": c for i, c in enumerate(scaled_partition(config))}
    bounds = zip(params.values(), settings.partition["min"], settings.partition["max"])
    inside = len(params) == len(settings.partition["min"]) and all(
        lo <= c <= hi and c % step == 0 for c, lo, hi in bounds
    )
    return params if inside else None


def _study_name(model: str, data: Path, settings: TuneSettings) -> str:
    keys = ("epochs", "imgsz", "fraction", "objective", "partition", "head_depth", "lr0")
    space = json.dumps([model, data_hash(data), {k: getattr(settings, k) for k in keys}], sort_keys=True)
    return f"{model}-partition-{hashlib.sha256(space.encode()).hexdigest()[:10]}"


def _storage(url: str, settings: TuneSettings, attempts: int = 5) -> RDBStorage:
    """The study database; workers starting together race to create its tables, so retry on a conflict."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            with _quiet_experimental():
                return RDBStorage(
                    url,
                    heartbeat_interval=settings.heartbeat_interval,
                    grace_period=settings.grace_period,
                    heartbeat_stale_trial_callback=RetryFailedTrialCallback(max_retry=settings.max_retry),
                    engine_kwargs={"pool_pre_ping": True},
                )
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _load_study(
    name: str, url: str, settings: TuneSettings, worker: int, baseline: dict[str, int] | None = None
) -> optuna.Study:
    storage = _storage(url, settings)
    kwargs = {k: v for k, v in settings.pruner.items() if k != "type"}
    multi = settings.objective == "pareto"
    pruner = optuna.pruners.NopPruner() if multi else PRUNERS[settings.pruner.get("type", "median")](**kwargs)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        load_if_exists=True,
        directions=["maximize", "minimize"] if multi else ["maximize"],
        pruner=pruner,
    )
    # A resumed study or a second worker must not replay the first worker's random start.
    seed = settings.seed + 1000 * worker + len(study.trials)
    if worker == 0 and not study.trials and baseline is not None:
        study.enqueue_trial(baseline, user_attrs={"baseline": True})  # the config's own partition competes too
    with _quiet_experimental():
        study.sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    return study


def _counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards the requested number: finished or in progress, not failed or surplus."""
    return [t for t in study.get_trials(deepcopy=False, states=COUNTED) if not t.user_attrs.get("surplus")]


def _optimize(study: optuna.Study, objective: _Objective, settings: TuneSettings) -> None:
    """Run trials one by one until the study holds ``settings.trials`` counted trials."""
    while True:
        with _quiet_experimental():
            fail_stale_trials(study)  # trials of a killed worker: FAIL, then retried with the same parameters
        counted = _counted(study)
        if len(counted) >= settings.trials:
            break
        failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
        if len(failed) > settings.trials * (settings.max_retry + 1):
            raise RuntimeError(f"study {study.study_name}: {len(failed)} trials failed; last error: {_error(failed)}")
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)


def _error(failed: Sequence[optuna.trial.FrozenTrial]) -> str:
    return str(failed[-1].user_attrs.get("error", "unknown")) if failed else ""


class _Objective:
    """Builds a trial's model, trains it, reports every epoch and returns mAP50-95 (and GFLOPs when Pareto)."""

    def __init__(
        self,
        settings: TuneSettings,
        data: Path,
        model: str,
        nc: int,
        preset: str,
        device: str | None,
        work_dir: Path,
        track: bool,
        worker: int,
    ):
        self.settings, self.data, self.model, self.nc = settings, data, model, nc
        self.preset, self.device, self.work_dir, self.track = preset, _single_device(device), work_dir, track
        self.worker = worker

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        study = trial.study
        earlier = [t for t in _counted(study) if t.number < trial.number]
        if len(earlier) >= self.settings.trials:  # another worker filled the study meanwhile
            trial.set_user_attr("surplus", True)
            study.stop()
            raise optuna.TrialPruned("study already complete")
        partition, config_file, overrides = self._suggest(trial)
        config = resolve_config(config_file, nc=self.nc)
        gflops = model_summary(config, nc=self.nc)["gflops"]
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("partition", partition)
        trial.set_user_attr("gflops", gflops)
        run_dir = self.work_dir / "trials" / f"{study.study_name}-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        started = time.time()
        if self.track:
            self._start_run(trial, partition, overrides, gflops)
        try:
            value = self._train(trial, config_file, run_dir, overrides)
        except optuna.TrialPruned:
            self._end_run("PRUNED", started)
            raise
        except BaseException as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            self._end_run("FAIL", started)
            raise
        finally:
            shutil.rmtree(run_dir / "weights", ignore_errors=True)  # trials keep results.csv, not weights
        self._end_run("COMPLETE", started, value)
        return (value, gflops) if self.settings.objective == "pareto" else value

    def _suggest(self, trial: optuna.Trial) -> tuple[list[int], Path, dict[str, Any]]:
        bounds, step = self.settings.partition, int(self.settings.partition.get("step", 16))
        partition = [
            trial.suggest_int(f"partition_p{i + 3}", int(lo), int(hi), step=step)
            for i, (lo, hi) in enumerate(zip(bounds["min"], bounds["max"]))
        ]
        config = resolve_config(self.model, nc=self.nc, partition=partition)
        if self.settings.head_depth:
            low, high = self.settings.head_depth
            _set_head_depth(config, trial.suggest_int("head_depth", int(low), int(high)))
        overrides: dict[str, Any] = {
            "epochs": self.settings.epochs,
            "imgsz": self.settings.imgsz,
            "fraction": self.settings.fraction,
            "plots": False,
            "patience": 0,
        }
        if self.settings.lr0:
            overrides["lr0"] = trial.suggest_float("lr0", *map(float, self.settings.lr0), log=True)
        config_file = self.work_dir / "configs" / f"{trial.study.study_name}-{trial.number:04d}.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        return partition, config_file, overrides

    def _train(self, trial: optuna.Trial, config_file: Path, run_dir: Path, overrides: dict[str, Any]) -> float:
        from csfnet.train import train

        multi = self.settings.objective == "pareto"

        def report(trainer: Any) -> None:
            if trainer.epoch >= trainer.epochs:  # ultralytics' extra call with the best checkpoint's metrics
                return
            value = float((trainer.metrics or {}).get(METRIC, 0.0))
            if self.track:
                mlflow.log_metric("map50_95", value, step=trainer.epoch + 1)
            if multi:  # Optuna cannot prune multi-objective trials
                return
            trial.report(value, trainer.epoch + 1)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {trainer.epoch + 1} at mAP50-95 {value:.4f}")

        result = train(
            self.data,
            model=str(config_file),
            out=run_dir,
            preset=self.preset,
            overrides=overrides,
            device=self.device,
            partition=[],  # the config file already holds the trial's partition
            track=False,
            callbacks={"on_fit_epoch_end": report},
        )
        value = float(result.metrics.get(METRIC, 0.0))
        return 0.0 if math.isnan(value) else value

    def _start_run(self, trial: optuna.Trial, partition: list[int], overrides: dict, gflops: float) -> None:
        params = {"trial": trial.number, "partition": json.dumps(partition), "gflops": gflops, **trial.params}
        params.update({k: v for k, v in overrides.items() if k in ("epochs", "imgsz", "fraction")})
        tags = {"csfnet.stage": "tune-trial", "csfnet.study": trial.study.study_name}
        mlflow.start_run(run_name=f"trial-{trial.number}", nested=True, tags=tags)
        mlflow.log_params({k: str(v) for k, v in params.items()})

    def _end_run(self, state: str, started: float, value: float | None = None) -> None:
        """Close the trial's MLflow run: FINISHED when complete, KILLED when pruned, FAILED on error."""
        if not self.track:
            return
        mlflow.set_tag("optuna.state", state)
        mlflow.log_metric("duration_s", time.time() - started)
        if value is not None:
            mlflow.log_metric("final_map50_95", value)
        mlflow.end_run({"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED"))


def _single_device(device: str | None) -> str | None:
    """Trials need the Optuna callback in-process, so one device each; several GPUs run several workers."""
    if device and "," in str(device):
        return str(device).split(",")[0]
    return device


def _set_head_depth(config: dict[str, Any], blocks: int) -> None:
    """Set the CReToNeXt row's repeats so that the config's depth multiple yields ``blocks``."""
    depth = config["scales"][config["scale"]][0]
    for row in config["head"]:
        if row[2] == "CReToNeXt":
            row[1] = max(blocks / depth, 1)
            return
    raise ValueError(f"{config.get('name')} has no CReToNeXt layer, so head_depth cannot be tuned")


def _run_params(settings: TuneSettings, model: str, name: str) -> dict[str, Any]:
    return {"study": name, "model": model, **{k: v for k, v in vars(settings).items() if k != "storage"}}


def _empty_result(reason: str) -> TuneResult:
    return TuneResult("", "", None, None, {}, None, [], {}, reason)


def _result(study: optuna.Study, name: str, url: str, settings: TuneSettings) -> TuneResult:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {s.name.lower(): states.count(s) for s in TrialState if states.count(s)}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise RuntimeError(f"study {name}: no trial completed ({counts}); nothing to choose from")
    if settings.objective == "pareto":
        front = sorted(study.best_trials, key=lambda t: -t.values[0])
        best = front[0]  # the most accurate Pareto-optimal partition; the front is reported for other trade-offs
    else:  # ties (short trials often all score 0) go to the config's own partition, then to the cheapest one
        best = max(complete, key=lambda t: (t.values[0], t.user_attrs.get("baseline", False), -t.user_attrs["gflops"]))
        front = []
    return TuneResult(
        study_name=name,
        storage=_redact(url),
        partition=list(best.user_attrs["partition"]),
        value=float(best.values[0]),
        params=dict(best.params),
        trial=best.number,
        pareto_front=[
            {"trial": t.number, "map50_95": t.values[0], "gflops": t.values[1], "partition": t.user_attrs["partition"]}
            for t in front
        ],
        counts=counts,
    )


def _redact(url: str) -> str:
    """Storage URL without a password, fit for files and logs."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _log_study(study: optuna.Study, result: TuneResult, out: Path, settings: TuneSettings) -> None:
    """Study outcome and plots as artifacts of the study's run."""
    mlflow.log_artifact(str(out))
    if result.value is not None:
        mlflow.log_metric("best_map50_95", result.value)
    log_flat_metrics({f"trials.{k}": v for k, v in result.counts.items()})
    for name, figure in _study_plots(study, settings).items():
        mlflow.log_figure(figure, f"plots/{name}.png")


def _study_plots(study: optuna.Study, settings: TuneSettings) -> Mapping[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as vis

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: dict[str, Any] = {}
    target = {"target": lambda t: t.values[0], "target_name": "mAP50-95"} if settings.objective == "pareto" else {}
    with _quiet_experimental():
        plots["optimization_history"] = vis.plot_optimization_history(study, **target).figure
        plots["intermediate_values"] = vis.plot_intermediate_values(study).figure
        if len(complete) >= 2 and len(study.best_trials[0].params) > 1:
            plots["param_importances"] = vis.plot_param_importances(study, **target).figure
        if settings.objective == "pareto":
            plots["pareto_front"] = vis.plot_pareto_front(study, target_names=["mAP50-95", "GFLOPs"]).figure
    return plots


@contextlib.contextmanager
def _quiet_experimental():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
