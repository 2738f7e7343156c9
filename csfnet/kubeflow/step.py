"""Helpers a Kubeflow component calls inside its pod: run one ``csfnet`` command, report its results.

A step runs the command line in a fresh process (``python -m csfnet ...``), the same code path as the DVC stage, so
this module never imports :mod:`csfnet.cli`. The MLflow parent run comes from ``$CSFNET_PIPELINE_ID``, which the
pipeline sets on the pod (from the run's pod label) and the local runner sets in its own environment.
"""

from __future__ import annotations

import collections
import csv
import json
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from csfnet.reports import html_report, numeric

STDERR_TAIL = 40  # lines of the failed command's stderr repeated in the error


class StepError(RuntimeError):
    """A ``csfnet`` command run by a pipeline step failed; the message has its exit code and stderr tail."""


def run_step(args: Sequence[str]) -> None:
    """Run ``csfnet <args>`` as ``python -m csfnet`` in a subprocess; stdout and stderr stream to the pod log.

    Raises:
        StepError: the command exited non-zero (the message names the command, exit code and last stderr lines).
    """
    cmd = [sys.executable, "-m", "csfnet", *map(str, args)]
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    with subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
    if proc.returncode:
        text = "\n".join(tail)
        raise StepError(f"csfnet {' '.join(map(str, args))} exited with {proc.returncode}; stderr ends:\n{text}")


def flags(options: Mapping[str, Any]) -> list[str]:
    """``{"--epochs": 3, "--model": ""}`` -> ``["--epochs", "3"]``: empty/zero parameters defer to params.yaml."""
    return [arg for flag, value in options.items() if value for arg in (flag, str(value))]


def log_metrics(artifact: Any, data: Mapping[str, Any]) -> None:
    """Every numeric leaf of ``data`` on a KFP ``Metrics`` artifact (shown in the run's UI), also written to the
    artifact's file: kfp's local cache treats an output without a file as missing and re-runs the step."""
    values = numeric(data)
    for key, value in values.items():
        artifact.log_metric(key, value)
    path = Path(artifact.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2) + "\n")


def write_html(artifact: Any, title: str, data: Mapping[str, Any], images: Iterable[str | Path] = ()) -> None:
    """A self-contained HTML report on a KFP ``HTML`` artifact."""
    Path(artifact.path).write_text(html_report(title, data, images))


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON file written by a ``csfnet`` command."""
    return json.loads(Path(path).read_text())


def last_epoch(results_csv: str | Path) -> dict[str, float]:
    """The last row of ultralytics' ``results.csv`` (losses and validation metrics of the final epoch)."""
    with open(results_csv) as f:
        rows = list(csv.DictReader(f))
    return {k.strip(): float(v) for k, v in rows[-1].items() if v.strip()} if rows else {}


def new_champion_uri(decision: Mapping[str, Any]) -> str:
    """``models:/<name>/<version>`` when the registration ``decision`` (``csfnet register --out``) left as champion
    a version that this pipeline execution registered, else ``""``: a resubmission that re-registers an existing
    version (the registry keeps one version per model) or a version that did not beat the champion changes nothing
    to serve."""
    name, version = decision["name"], str(decision["version"])
    if str(decision.get("champion") or "") != version:
        return ""
    from mlflow import MlflowClient

    from csfnet.lineage import pipeline_id
    from csfnet.mlflow_tracking import configure

    configure()  # the store the register command used
    client = MlflowClient()
    run_id = client.get_model_version(name, version).run_id  # the run that logged it (a re-registration keeps it)
    if run_id:  # registered under which pipeline execution's parent run?
        parent = client.get_run(run_id).data.tags.get("mlflow.parentRunId")
        owner = client.get_run(parent).data.tags.get("csfnet.pipeline_id") if parent else None
        if owner != pipeline_id():
            return ""
    return f"models:/{name}/{version}"
