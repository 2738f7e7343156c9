"""MLflow experiment tracking: one parent run per pipeline execution, exactly one nested run per stage.

The store defaults to a SQLite database and an artifact folder inside the project (``mlruns.db``, ``mlartifacts/``)
and follows ``MLFLOW_TRACKING_URI`` when set (a server, PostgreSQL, S3 artifacts). Stages launched by ``dvc repro``
run as separate processes: they share the parent run named by ``CSFNET_PARENT_RUN_ID``, or else the running parent
whose ``csfnet.pipeline_id`` tag matches the current commit and ``params.yaml``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from csfnet.files import pid_alive
from csfnet.lineage import git_commit, pipeline_id
from csfnet.runlog import ParentRun
from csfnet.services import probe_tracking
from csfnet.settings import load_settings

PARENT_ENV = "CSFNET_PARENT_RUN_ID"
DEFAULT_DB = "mlruns.db"
DEFAULT_ARTIFACTS = "mlartifacts"
FINAL_STAGE_TAG = "csfnet.final_stage"
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3 opens it on the training runs


def configure(experiment: str | None = None) -> str:
    """Point MLflow at the configured store and experiment (probed first); return the experiment id."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{Path(DEFAULT_DB).resolve()}")
    settings = load_settings()
    _probe(mlflow.get_tracking_uri(), settings.services.timeout)
    name = experiment or settings.mlflow.experiment
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        uri = mlflow.get_tracking_uri()
        local = uri.startswith("sqlite:///") and not os.environ.get("MLFLOW_ARTIFACT_ROOT")
        # a SQLite store keeps its artifacts beside the database file, wherever the process runs
        db_dir = Path(uri.removeprefix("sqlite:///")).parent
        root = (db_dir / DEFAULT_ARTIFACTS).resolve().as_uri() if local else os.environ.get("MLFLOW_ARTIFACT_ROOT")
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=root, tags=EXPERIMENT_KIND)
        except mlflow.exceptions.MlflowException:  # created concurrently by another stage
            experiment_id = mlflow.get_experiment_by_name(name).experiment_id
    if found is not None and found.tags.get("mlflow.experimentKind") is None:  # created before the kind existed
        MlflowClient().set_experiment_tag(experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def ui_link(ui: str | None = None) -> str | None:
    """The address at which the MLflow UI shows this project's training runs, or None before the first run.

    MLflow 3.17's UI opens every experiment in its GenAI view unless the address (or the browser's remembered
    choice) asks for the machine-learning view; the experiment's kind tag alone no longer decides.
    ``ui`` is the UI's base address (default: the tracking server, or ``mlflow ui``'s own for a local store).
    """
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        if not Path(DEFAULT_DB).is_file():
            return None
        mlflow.set_tracking_uri(f"sqlite:///{Path(DEFAULT_DB).resolve()}")
    uri = mlflow.get_tracking_uri()
    found = mlflow.get_experiment_by_name(load_settings().mlflow.experiment)
    if found is None:
        return None
    base = ui or (uri if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000")
    return f"{base.rstrip('/')}/#/experiments/{found.experiment_id}?workflowType=machine_learning"


@functools.cache
def _probe(uri: str, timeout: float) -> None:
    """Probe each tracking store once per process: unreachable fails within ``timeout`` instead of minutes."""
    probe_tracking(uri, timeout)


def _parent_run_id(experiment_id: str) -> str:
    if os.environ.get(PARENT_ENV):
        return os.environ[PARENT_ENV]
    return parent_run(experiment_id, "csfnet.pipeline_id", pipeline_id(), "pipeline")


def parent_run(
    experiment_id: str, key: str, value: str, prefix: str, tags: Mapping[str, str] | None = None, settle: float = 1.0
) -> str:
    """The RUNNING parent run tagged ``key = value`` (created, named ``<prefix>-<value[:8]>``, when there is none):
    separate processes (DVC stages, Kubeflow pods) of one execution nest under it.

    Processes starting together (parallel Kubeflow cells) may each create one: a creator waits ``settle`` seconds
    for the others' to appear, then all settle on the oldest and delete their own.
    """
    client = MlflowClient()
    found = _running(client, experiment_id, key, value)
    if found:
        return found[0]
    all_tags = {key: value, "csfnet.git_commit": git_commit(), **(tags or {})}
    mine = client.create_run(experiment_id, run_name=f"{prefix}-{value[:8]}", tags=all_tags).info.run_id
    time.sleep(settle)
    oldest = _running(client, experiment_id, key, value)[0]
    if oldest != mine:
        client.delete_run(mine)
    return oldest


def open_parent(parent: ParentRun) -> str:
    """Create (or find) ``parent`` and return its id: a planning step calls it before parallel steps fan out (the
    cells of a comparison), so they find one parent instead of racing to create it."""
    return parent_run(configure(), parent.tag, parent.value, parent.prefix)


def _running(client: MlflowClient, experiment_id: str, key: str, value: str) -> list[str]:
    """Ids of the RUNNING runs tagged ``key = value``, oldest first (ties by id, the same order in every process)."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{key}` = '{value}' and attributes.status = 'RUNNING'"
    )
    return [r.info.run_id for r in sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))]


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    final: bool = False,
    parent: Callable[[str], str] | None = None,
    fail_parent: bool = True,
) -> Iterator[mlflow.ActiveRun]:
    """A nested MLflow run for one pipeline stage under the pipeline's parent run.

    Args:
        stage: Stage name (``train``, ``eval`` ...), used as run name (``mlflow.runName`` in ``tags`` overrides it).
        params: Parameters to log.
        tags: Extra tags; the git commit is always added.
        final: The last stage of the pipeline: closes the parent run when this stage ends.
        parent: Finds the parent run id from the experiment id (default: the pipeline's, :func:`parent_run`).
        fail_parent: Mark the parent FAILED when this stage fails (off for steps running in parallel, such as
            comparison cells: their siblings and a retry must still find the RUNNING parent).
    """
    experiment_id = configure()
    parent = (parent or _parent_run_id)(experiment_id)
    _close_orphans(experiment_id, parent, stage)
    all_tags = {
        "csfnet.stage": stage,
        "csfnet.git_commit": git_commit(),
        "mlflow.parentRunId": parent,
        "csfnet.process": f"{socket.gethostname()}:{os.getpid()}",
        **(tags or {}),
    }
    # Nest by tag rather than by re-entering the parent: leaving a resumed parent run would mark it finished.
    with mlflow.start_run(
        run_name=all_tags.get("mlflow.runName", stage), experiment_id=experiment_id, tags=all_tags
    ) as run:
        if params:
            mlflow.log_params({k: param_text(v) for k, v in params.items()})
        try:
            yield run
        except BaseException:
            if fail_parent:
                MlflowClient().set_terminated(parent, "FAILED")
            raise
    if final and not os.environ.get(PARENT_ENV):
        MlflowClient().set_terminated(parent, "FINISHED")


def _close_orphans(experiment_id: str, parent: str, stage: str) -> None:
    """Mark KILLED the runs of ``stage`` left RUNNING by a killed process of this host (a SIGKILLed ``dvc repro``)."""
    client = MlflowClient()
    running = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`csfnet.stage` = '{stage}' "
        "and attributes.status = 'RUNNING'",
    )
    host = socket.gethostname()
    for run in running:
        run_host, _, pid = run.data.tags.get("csfnet.process", "").rpartition(":")
        if run_host == host and pid.isdigit() and not pid_alive(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")


def param_text(value: Any) -> str:
    """A parameter value as MLflow stores it: lists and dicts as JSON, cut to MLflow's length limit."""
    text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text[:6000]


def metric_names(metrics: Mapping[str, float]) -> dict[str, float]:
    """``metrics`` under names MLflow accepts."""
    return {_metric_name(k): v for k, v in metrics.items()}


def _metric_name(name: str) -> str:
    """MLflow metric names allow alphanumerics, ``_ - . space /``; ultralytics uses ``metrics/mAP50(B)``."""
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name).rstrip("_")
