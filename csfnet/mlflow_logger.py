"""The MLflow :class:`csfnet.runlog.StageLogger`: stage runs under the pipeline's parent, nested runs, and the
dataset record of a training run. Every call names its run by id, so nothing depends on MLflow's active run."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import DatasetInput as MlflowDatasetInput
from mlflow.entities import InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from csfnet.mlflow_tracking import metric_names, param_text, parent_run, stage_run
from csfnet.runlog import NullLogger, ParentRun, RunStatus, StageLogger, flat_metrics


class MlflowLogger:
    """Records to MLflow (the store :func:`csfnet.mlflow_tracking.configure` points at).

    Built without a run (``MlflowLogger()``), it only opens stage runs; nothing touches the store before that.
    """

    def __init__(self, run_id: str | None = None, experiment_id: str | None = None, parent_id: str | None = None):
        self.run_id, self.experiment_id, self.parent_id = run_id, experiment_id, parent_id

    active = True

    @property
    def parent(self) -> StageLogger:
        return MlflowLogger(self.parent_id, self.experiment_id) if self.parent_id else NullLogger()

    @contextlib.contextmanager
    def stage(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        final: bool = False,
        parent: ParentRun | None = None,
        fail_parent: bool = True,
    ) -> Iterator[MlflowLogger]:
        finder = None
        if parent is not None:
            finder = lambda experiment_id: parent_run(experiment_id, parent.tag, parent.value, parent.prefix)  # noqa: E731
        with stage_run(name, params, tags, final=final, parent=finder, fail_parent=fail_parent) as run:
            yield MlflowLogger(run.info.run_id, run.info.experiment_id, run.data.tags[MLFLOW_PARENT_RUN_ID])

    @contextlib.contextmanager
    def nested(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        status: RunStatus = "FINISHED",
    ) -> Iterator[StageLogger]:
        if self.run_id is None:  # outside any run there is nothing to nest under
            yield NullLogger()
            return
        client = MlflowClient()
        all_tags = {MLFLOW_PARENT_RUN_ID: self.run_id, MLFLOW_RUN_NAME: name, **(tags or {})}
        child = client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
        logger = MlflowLogger(child, self.experiment_id, self.run_id)
        try:
            if params:
                logger.log_params(params)
            yield logger
        except BaseException:
            client.set_terminated(child, "FAILED")
            raise
        client.set_terminated(child, status)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.run_id and params:
            MlflowClient().log_batch(self.run_id, params=[Param(k, param_text(v)) for k, v in params.items()])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        flat = metric_names(flat_metrics(metrics, prefix))
        if self.run_id and flat:
            now = int(time.time() * 1000)
            batch = [Metric(k, v, now, step or 0) for k, v in flat.items()]
            MlflowClient().log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.run_id and tags:
            MlflowClient().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        if self.run_id:
            MlflowClient().log_artifact(self.run_id, str(path), folder)

    def log_artifacts(self, directory: str | Path, folder: str | None = None) -> None:
        if self.run_id:
            MlflowClient().log_artifacts(self.run_id, str(directory), folder)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        if self.run_id:
            MlflowClient().log_dict(self.run_id, dict(data), name)

    def log_figure(self, figure: Any, name: str) -> None:
        if self.run_id:
            MlflowClient().log_figure(self.run_id, figure, name)

    def log_dataset(self, data_yaml: str | Path, source: str, digest: str, context: str = "training") -> None:
        if self.run_id:
            record = mlflow_dataset(data_yaml, source, digest)._to_mlflow_entity()
            inputs = [MlflowDatasetInput(record, [InputTag(MLFLOW_DATASET_CONTEXT, context)])]
            MlflowClient().log_inputs(self.run_id, datasets=inputs)


def mlflow_dataset(data_yaml: str | Path, source_uri: str, digest: str, name: str | None = None) -> Any:
    """The dataset record for ``mlflow.log_input(dataset, context="training")``: source = where the raw data came
    from (credentials masked), digest = its DVC content hash (e.g. of ``data/raw`` in ``dvc.lock``), profile = the
    counts per split from the dataset's ``report.json``."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    from csfnet.services import mask

    data_yaml = Path(data_yaml)
    report_path = data_yaml.parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    profile = {
        split: {k: s.get(k) for k in ("sequences", "frames", "objects", "images", "boxes") if k in s}
        for split, s in report.get("splits", {}).items()
    }

    class VideoDataset(MetaDataset):
        """Metadata only: where the videos are, their content hash, and counts per split as the profile."""

        @property
        def profile(self) -> Any | None:
            return profile or None

        def to_dict(self) -> dict[str, str]:
            return super().to_dict() | ({"profile": json.dumps(profile)} if profile else {})

    source = resolve_dataset_source(mask(source_uri))
    return VideoDataset(source, name=name or Path(str(source_uri).rstrip("/")).name or "raw", digest=digest[:36])
