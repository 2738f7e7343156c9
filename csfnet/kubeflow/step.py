"""Helpers a Kubeflow component calls inside its pod: its share of the run's settings mapping as ``--set`` flags,
one ``csfnet`` command run with them, its results reported.

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
from typing import TYPE_CHECKING, Any

from csfnet.reports import html_report, numeric

if TYPE_CHECKING:
    from csfnet.settings import Settings

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


# Which steps read a settings key, by its longest matching dotted prefix; a key no prefix names reaches every step.
# A step receives only the keys it reads (:func:`for_step`), so a changed key re-runs only its readers and the rest
# come from the cache. Planning steps (step settings, tuning worker specs, comparison cells) read what they are given.
READERS: dict[str, tuple[str, ...]] = {
    "synth": ("data",),
    "extract": ("data",),
    "tune": ("tune",),
    "robustness": ("robustness",),
    "export": ("export",),
    "register": ("register",),
    "serving": ("deploy",),
    "detect": ("evaluate",),
    "compare": ("compare_cell", "compare_report"),  # preset, latency_images
    "compare.configs": ("compare_report",),  # cells get theirs from the plan; the report orders rows by it
    "compare.seeds": (),
    "compare.synth": (),  # the plan turns it into the bench data's synth.* keys
    "compare.confidence": ("compare_report",),
    "compare.resamples": ("compare_report",),
}
STEPS = (
    "data",
    "tune",
    "train",
    "evaluate",
    "robustness",
    "export",
    "register",
    "deploy",
    "compare_cell",
    "compare_report",
)


def for_step(settings: Mapping[str, Any], step: str) -> dict[str, Any]:
    """The keys of the run's ``settings`` mapping that ``step`` (one of :data:`STEPS`) reads (see :data:`READERS`)."""
    if step not in STEPS:
        raise ValueError(f"unknown pipeline step {step!r}; known: {', '.join(STEPS)}")
    return {key: value for key, value in settings.items() if step in _readers(key)}


def _readers(key: str) -> tuple[str, ...]:
    parts = key.split(".")
    for depth in range(len(parts), 0, -1):
        readers = READERS.get(".".join(parts[:depth]))
        if readers is not None:
            return readers
    return STEPS


def merged(settings: Mapping[str, Any]) -> Settings:
    """The image's params.yaml with the run's ``settings`` mapping (dotted keys, as ``--set``) applied.

    Raises:
        SettingsError: an unknown key or a bad value, named as ``pipeline settings: <key>: ...``.
    """
    from csfnet.settings import load_settings

    values = {key: _whole(value) for key, value in settings.items()}
    return load_settings().override(values, "pipeline settings", keep_none=True)


def set_flags(settings: Mapping[str, Any]) -> list[str]:
    """``{"extract.tile": 640}`` -> ``["--set", "extract.tile=640"]``: values as JSON, which ``--set`` reads back
    as YAML unchanged (strings, numbers, booleans, lists, mappings, null)."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={json.dumps(_whole(value))}")]


def _whole(value: Any) -> Any:
    """Whole floats as integers, also inside lists and mappings: a pipeline's struct parameter carries every number
    as a float (``640`` arrives as ``640.0``), which integer settings such as ``args.epochs`` refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    return value


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


def raw_folder(source_uri: str, fingerprint: str, settings: Mapping[str, Any], work: str | Path) -> Path:
    """The raw data of a data step in ``work/raw``: fetched from ``source_uri`` (checked against the ``fingerprint``
    the pipeline was keyed on), else synthesised with the step's ``settings``."""
    from csfnet.kubeflow.fingerprint import source_fingerprint

    raw = Path(work) / "raw"
    if source_uri:
        run_step(["data", "fetch", "--source", source_uri, "--out", raw])
        if source_fingerprint(source_uri) != fingerprint:
            raise RuntimeError(f"{source_uri} changed while the pipeline ran; submit it again")
    else:
        run_step(["data", "synth", "--out", raw, *set_flags(settings)])
    return raw


def extract_dataset(
    source_uri: str,
    fingerprint: str,
    settings: Mapping[str, Any],
    dataset: Any,
    stats: Any,
    stats_report: Any,
    extra: Sequence[str] = (),
) -> None:
    """``csfnet data extract`` of the raw data into the ``dataset`` artifact (``extra``: more options, e.g. the
    shards to merge), then its object size statistics as ``stats`` metrics and a ``stats_report`` histogram."""
    import shutil
    import tempfile

    work = Path(tempfile.mkdtemp())
    raw = raw_folder(source_uri, fingerprint, settings, work)
    run_step(["data", "extract", "--source", raw, "--out", dataset.path, *extra, *set_flags(settings)])
    shutil.rmtree(raw, ignore_errors=True)
    dataset.metadata["fingerprint"] = fingerprint
    out = work / "stats"
    run_step(["data", "stats", "--data", f"{dataset.path}/data.yaml", "--out", out, *set_flags(settings)])
    data = read_json(out / "stats.json")
    log_metrics(stats, data)
    write_html(stats_report, "Object sizes", data, [out / "size_histogram.png"])
