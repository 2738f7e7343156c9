"""Optuna search for the CSwitch channel partition (and optionally CReToNeXt depth and learning rate).

Every trial trains through :func:`csfnet.train.train`, the code behind ``csfnet train``, reports validation
mAP50-95 to Optuna after each epoch so that the pruner can stop it, and is logged as a nested run under the study's
stage run (:class:`csfnet.trial_log.TrialLogger`). The study lives in any SQLAlchemy database (a SQLite file by
default, PostgreSQL for several workers); running again continues it: finished trials are kept, trials of a killed
worker are failed once their heartbeat goes stale and retried with the same parameters. The study's best
partition replaces the config's own only once re-validation (:mod:`csfnet.revalidate`) shows it better beyond the
noise.

Under ``torchrun`` (one node or many) rank 0 drives the study: it asks Optuna for each trial, tells the other ranks
to train it with it (:mod:`csfnet.distributed`), reports each epoch, decides pruning for all ranks, and alone writes
the study, trial folders, the outcome and MLflow runs; the other ranks return rank 0's result. A trial that fails
on any rank ends the launch (recorded as failed in the study; running again continues the study).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryFailedTrialCallback, fail_stale_trials
from optuna.trial import TrialState

from csfnet import distributed
from csfnet.checks import check_dataset
from csfnet.device import resolve_device
from csfnet.files import write_json
from csfnet.lineage import data_hash
from csfnet.model import model_summary, resolve_config, takes_partition
from csfnet.revalidate import TRAIN, Decision, TrainingScorer, cache_key, decide, train_together
from csfnet.runlog import NullLogger, StageLogger
from csfnet.services import probe_database
from csfnet.settings import Settings, Tune, load_settings
from csfnet.temporal import MotionSpec, dataset_motion
from csfnet.train import check_motion_match
from csfnet.trial_log import EPOCH_VALUES, TrialLogger

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
    decision: dict[str, Any] | None = None  # see csfnet.revalidate.Decision; ``partition`` is its outcome

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
    logger: StageLogger | None = None,
    settings: Settings | None = None,
    revalidate: bool = True,
    **overrides: Any,
) -> TuneResult:
    """Run (or continue) a study until it holds ``trials`` finished trials, decide, write the partition to ``out``.

    The study's best partition is adopted only when retraining it and the config's own once per
    ``tune.revalidate.seeds`` shows it better (the ``decision`` in ``out``); otherwise ``partition`` is the
    config's own. A complete study runs no trial: calling again only decides (a stored re-validation is reused).

    Args:
        data: ``data.yaml`` of the dataset.
        out: JSON receiving the best partition (``{"partition": [...], ...}``), read by ``csfnet train``.
        work_dir: Trial run folders and the default SQLite study.
        model: Config to tune (``train.model``); a config without CSwitch/DFuse writes ``partition: null``.
        preset: Training preset the trials start from (``train.preset``).
        device: Training device; one device per worker (several workers share a study instead of DDP), or under
            ``torchrun`` each rank's own (see :func:`csfnet.distributed.device_setting`).
        worker: Index of this worker among those sharing the study; offsets the sampler seed.
        logger: Records the study as the ``tune`` stage, each trial as a nested run (default: nothing).
        settings: Validated settings (default: :func:`csfnet.settings.load_settings`).
        revalidate: Retrain a challenger against the incumbent; False (workers sharing a study) leaves the decision
            ``pending`` with the config's own partition, for a final call to decide.
        **overrides: ``tune`` settings (``trials``, ``epochs``, ``storage`` ...).
    """
    every = (settings or load_settings()).override({"train.model": model, "train.preset": preset}, "options")
    every = every.override({f"tune.{k}": v for k, v in overrides.items()}, "options")
    settings, model, preset = every.tune, every.train.model, every.train.preset
    info = check_dataset(data, ("train", "val"))
    nc = len(info["names"])
    data, out, work_dir = Path(data).resolve(), Path(out), Path(work_dir)
    config = resolve_config(model, nc=nc)
    check_motion_match(model, config, data, info, MotionSpec.from_settings(every))  # before anything is written
    if not takes_partition(config):
        result = _empty_result(f"{model} has no CSwitch feeding DFuse: nothing to tune")
        if distributed.current_launch().is_main:
            write_json(out, result.to_json())
        return result
    if not distributed.start(resolve_device(_single_device(device), every)):
        return _follow(every, data, _single_device(device))  # rank 0 leads: the other ranks train what it tells
    result = _study_on_main(every, data, nc, config, out, work_dir, device, worker, logger, revalidate)
    return distributed.end(result)


def _study_on_main(
    every: Settings,
    data: Path,
    nc: int,
    config: dict[str, Any],
    out: Path,
    work_dir: Path,
    device: str | None,
    worker: int,
    logger: StageLogger | None,
    revalidate: bool,
) -> TuneResult:
    """:func:`tune`'s study, run by the only process or by rank 0 of a launch."""
    settings, model = every.tune, every.train.model
    storage_url = settings.storage or os.environ.get(STORAGE_ENV)
    if storage_url:  # a shared database: unreachable fails now, naming it, before anything is written
        probe_database(storage_url, every.services.timeout, "Optuna storage")
    work_dir.mkdir(parents=True, exist_ok=True)
    # a relative work dir gives a relative SQLite URL, so best_partition.json (a DVC output) is the same on every clone
    storage_url = storage_url or f"sqlite:///{work_dir / 'study.db'}"
    name = settings.study_name or _study_name(model, data, settings)
    study = _load_study(name, storage_url, settings, worker, _baseline(config, settings))
    budget = _budget(settings)
    objective = _Objective(every, data, nc, device, work_dir, worker, budget)
    budget = {**budget, "epochs": settings.revalidate.epochs or settings.epochs}
    scorer = TrainingScorer(every, model, data, nc, budget, _single_device(device), work_dir / "revalidate" / name)
    params, tags = _run_params(settings, model, name), {"csfnet.data_hash": data_hash(data)}
    # fan-out workers (no re-validation) run side by side: one failing must not fail the parent
    with (logger or NullLogger()).stage("tune", params, tags, fail_parent=revalidate) as run:
        # under torchrun a failed trial ends the launch: its peers may be stuck mid-training in a collective
        catch = () if distributed.current_launch().distributed else (Exception,)
        _optimize(study, objective, settings, [TrialLogger(run, objective.budget)], catch)
        if not revalidate and not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            # a fan-out worker whose trials are still running elsewhere (or were all pruned): the deciding step
            # reads the study once every worker is done
            result = _empty_result("no trial complete yet; the deciding `csfnet tune` step chooses")
            write_json(out, result.to_json())
            return result
        result = _result(study, name, storage_url, settings)
        decision = _decide(study, result, _incumbent(config), scorer if revalidate else None, settings, budget)
        result.partition, result.decision = decision.partition, decision.to_json()
        write_json(out, result.to_json())
        if run.active:
            _log_study(run, study, result, out, settings)
            _log_decision(run, decision)
    return result


def _follow(every: Settings, data: Path, device: str | None) -> TuneResult:
    """A rank other than 0: train every run rank 0 tells (trials, re-validation) until it ends; its result."""

    from csfnet.train import train

    def train_told(told: dict[str, Any]) -> None:
        listen = {"on_fit_epoch_end": _pruning_decision(None)} if told["epoch_decisions"] else None
        with contextlib.suppress(optuna.TrialPruned):  # rank 0 pruned the trial for every rank
            train(data, device=device, callbacks=listen, settings=every, **told["run"])

    return distributed.follow({TRAIN: train_told})


def _pruning_decision(trial: optuna.Trial | None, multi: bool = False) -> Callable[[Any], None]:
    """An ``on_fit_epoch_end`` callback: rank 0 (``trial`` given) reports the epoch's mAP50-95 and decides whether
    to prune; every rank of a launch receives the decision, so all stop at the same epoch."""
    history: list[float] = []

    def report(trainer: Any) -> None:
        if trainer.epoch >= trainer.epochs:  # ultralytics' extra call with the best checkpoint's metrics
            return
        prune, value = False, float((trainer.metrics or {}).get(METRIC, 0.0))
        if trial is not None and multi:  # Optuna cannot prune multi-objective trials nor keep their intermediates
            history.append(value)
            trial.set_user_attr(EPOCH_VALUES, history)
        elif trial is not None:
            trial.report(value, trainer.epoch + 1)
            prune = trial.should_prune()
        if distributed.from_main(prune):
            raise optuna.TrialPruned(f"pruned after epoch {trainer.epoch + 1} at mAP50-95 {value:.4f}")

    return report


def _budget(settings: Tune) -> dict[str, Any]:
    """Training overrides of a trial (and of a re-validation run)."""
    return {
        "epochs": settings.epochs,
        "imgsz": settings.imgsz,
        "fraction": settings.fraction,
        "plots": False,
        "patience": 0,
        "val": True,  # every epoch scored: the pruner decides on intermediate values (whatever the preset says)
        "val_last": 0,  # including the epochs a preset's val_last would skip
    }


def _incumbent(config: dict[str, Any]) -> list[int]:
    from csfnet.nn.builder import scaled_partition

    return [int(c) for c in scaled_partition(config)]


def _decide(
    study: optuna.Study,
    result: TuneResult,
    incumbent: list[int],
    scorer: TrainingScorer | None,
    settings: Tune,
    budget: dict[str, Any],
) -> Decision:
    """The decision for the study's best partition; a re-validation stored in the study is not trained again."""
    challenger = list(result.partition or [])
    digest = hashlib.sha256(cache_key(challenger, incumbent, settings.revalidate, budget).encode()).hexdigest()[:16]
    stored = study.user_attrs.get(f"revalidation:{digest}")
    if stored:
        return Decision(**stored)
    values = [float(t.values[0]) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    decision = decide(challenger, incumbent, values, scorer, settings.revalidate)
    if decision.interval is not None:
        study.set_user_attr(f"revalidation:{digest}", decision.to_json())
    return decision


def _baseline(config: dict[str, Any], settings: Tune) -> dict[str, int] | None:
    """The config's own (hand-set, width-scaled) partition as trial parameters, if it lies in the search space."""
    from csfnet.nn.builder import scaled_partition

    step = settings.partition.step
    params = {f"partition_p{i + 3}": c for i, c in enumerate(scaled_partition(config))}
    bounds = zip(params.values(), settings.partition.min, settings.partition.max)
    inside = len(params) == len(settings.partition.min) and all(lo <= c <= hi and c % step == 0 for c, lo, hi in bounds)
    return params if inside else None


def _study_name(model: str, data: Path, settings: Tune) -> str:
    keys = {"epochs", "imgsz", "fraction", "objective", "partition", "head_depth", "lr0"}
    space = json.dumps([model, data_hash(data), settings.model_dump(include=keys)], sort_keys=True)
    return f"{model}-partition-{hashlib.sha256(space.encode()).hexdigest()[:10]}"


def _storage(url: str, settings: Tune, attempts: int = 5) -> RDBStorage:
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
    name: str, url: str, settings: Tune, worker: int, baseline: dict[str, int] | None = None
) -> optuna.Study:
    storage = _storage(url, settings)
    kwargs = dict(settings.pruner.model_extra or {})
    multi = settings.objective == "pareto"
    pruner = optuna.pruners.NopPruner() if multi else PRUNERS[settings.pruner.type](**kwargs)
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


def _optimize(
    study: optuna.Study,
    objective: _Objective,
    settings: Tune,
    callbacks: Sequence[Callable],
    catch: tuple[type[Exception], ...] = (Exception,),
) -> None:
    """Run trials one by one until the study holds ``settings.trials`` counted trials; ``callbacks`` see each end.

    A trial raising one of ``catch`` is recorded as failed and the study goes on; any other error ends the study.
    """
    while True:
        with _quiet_experimental():
            fail_stale_trials(study)  # trials of a killed worker: FAIL, then retried with the same parameters
        counted = _counted(study)
        waiting = any(t.state == TrialState.WAITING for t in counted)  # enqueued (baseline, retries): run them
        if len(counted) >= settings.trials and not waiting:
            break
        failed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))]
        if len(failed) > settings.trials * (settings.max_retry + 1):
            raise RuntimeError(f"study {study.study_name}: {len(failed)} trials failed; last error: {_error(failed)}")
        study.optimize(objective, n_trials=1, catch=catch, callbacks=callbacks, gc_after_trial=True)


def _error(failed: Sequence[optuna.trial.FrozenTrial]) -> str:
    return str(failed[-1].user_attrs.get("error", "unknown")) if failed else ""


class _Objective:
    """Builds a trial's model, trains it, reports every epoch and returns mAP50-95 (and GFLOPs when Pareto)."""

    def __init__(
        self,
        every: Settings,
        data: Path,
        nc: int,
        device: str | None,
        work_dir: Path,
        worker: int,
        budget: dict[str, Any],
    ):
        self.every, self.settings, self.model = every, every.tune, every.train.model
        self.data, self.nc, self.device = data, nc, _single_device(device)
        self.work_dir, self.worker, self.budget = work_dir, worker, budget

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        study = trial.study
        earlier = [t for t in _counted(study) if t.number < trial.number]
        if len(earlier) >= self.settings.trials:  # another worker filled the study meanwhile
            trial.set_user_attr("surplus", True)
            study.stop()
            raise optuna.TrialPruned("study already complete")
        partition, config, overrides = self._suggest(trial)
        motion = dataset_motion(self.data)  # a temporal model's GFLOPs at the data's channels
        gflops = model_summary(config, nc=self.nc, ch=3 + (motion.channels if motion else 0))["gflops"]
        trial.set_user_attr("worker", self.worker)
        trial.set_user_attr("partition", partition)
        trial.set_user_attr("gflops", gflops)
        run_dir = self.work_dir / "trials" / f"{study.study_name}-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            value = self._train(trial, config, run_dir, overrides)
        except optuna.TrialPruned:
            raise
        except BaseException as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            raise
        finally:
            shutil.rmtree(run_dir / "weights", ignore_errors=True)  # trials keep results.csv, not weights
        return (value, gflops) if self.settings.objective == "pareto" else value

    def _suggest(self, trial: optuna.Trial) -> tuple[list[int], dict[str, Any], dict[str, Any]]:
        """The trial's partition, its resolved model config (passed on as data) and training overrides."""
        bounds = self.settings.partition
        partition = [
            trial.suggest_int(f"partition_p{i + 3}", lo, hi, step=bounds.step)
            for i, (lo, hi) in enumerate(zip(bounds.min, bounds.max))
        ]
        config = resolve_config(self.model, nc=self.nc, partition=partition)
        if self.settings.head_depth:
            low, high = self.settings.head_depth
            _set_head_depth(config, trial.suggest_int("head_depth", int(low), int(high)))
        overrides = dict(self.budget)
        if self.settings.lr0:
            overrides["lr0"] = trial.suggest_float("lr0", *map(float, self.settings.lr0), log=True)
        return partition, config, overrides

    def _train(self, trial: optuna.Trial, config: dict[str, Any], run_dir: Path, overrides: dict[str, Any]) -> float:
        """Train the trial (on every rank of a launch), pruned through Optuna after any epoch."""
        report = _pruning_decision(trial, multi=self.settings.objective == "pareto")
        run = {"model": config, "out": str(run_dir.resolve()), "overrides": overrides}  # every rank: rank 0's folder
        result = train_together(self.every, self.data, self.device, run, {"on_fit_epoch_end": report}, True)
        value = float(result.metrics.get(METRIC, 0.0))
        return 0.0 if math.isnan(value) else value


def _single_device(device: str | None) -> str | None:
    """Trials need the Optuna callback in-process, so one device each; several GPUs run several workers, or one
    launch whose ranks each train on their own device (``torchrun``: the setting passes unchanged)."""
    if device and "," in str(device) and not distributed.current_launch().distributed:
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


def _run_params(settings: Tune, model: str, name: str) -> dict[str, Any]:
    return {"study": name, "model": model, **settings.model_dump(exclude={"storage"})}


def _empty_result(reason: str) -> TuneResult:
    return TuneResult("", "", None, None, {}, None, [], {}, reason)


def _result(study: optuna.Study, name: str, url: str, settings: Tune) -> TuneResult:
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


def _log_study(run: StageLogger, study: optuna.Study, result: TuneResult, out: Path, settings: Tune) -> None:
    """Study outcome and plots as artifacts of the study's run."""
    run.log_artifact(out)
    if result.value is not None:
        run.log_metrics({"best_map50_95": result.value})
    run.log_metrics({f"trials.{k}": v for k, v in result.counts.items()})
    for name, figure in _study_plots(study, settings).items():
        run.log_figure(figure, f"plots/{name}.png")


def _log_decision(run: StageLogger, decision: Decision) -> None:
    """The decision as tags of the study's run; effect, interval and per-seed scores as metrics."""
    run.set_tags(
        {
            "csfnet.tune.decision": decision.outcome,
            "csfnet.tune.reason": decision.reason,
            "csfnet.tune.partition": json.dumps(decision.partition),
        }
    )
    if decision.effect is None or decision.interval is None:
        return
    low, high = decision.interval
    run.log_metrics({"revalidate.effect_map50_95": decision.effect, "revalidate.low": low, "revalidate.high": high})
    for side, scores in decision.per_seed.items():
        for step, value in enumerate(scores):
            run.log_metrics({f"revalidate.{side}.map50_95": value}, step=step)


def _study_plots(study: optuna.Study, settings: Tune) -> Mapping[str, Any]:
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
