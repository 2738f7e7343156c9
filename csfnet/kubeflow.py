"""Kubeflow Pipelines: the helpers components run inside the image, and compile / submit / local run.

The components (``components/``) and the pipeline (``pipelines/``) live in the project checkout: they are needed
where a pipeline is compiled or submitted, while the steps themselves only need ``csfnet`` in the image.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from csfnet.reports import html_report, numeric
from csfnet.tracking import PIPELINE_ENV

# --- inside a component -----------------------------------------------------------------------------------------------


def run_step(run_id: str, args: Sequence[str]) -> None:
    """Run ``csfnet <args>`` in-process, as the DVC stage does, under the Kubeflow run's MLflow parent run."""
    from csfnet.cli import main

    os.environ[PIPELINE_ENV] = run_id
    code = main(list(args))
    if code:
        raise RuntimeError(f"csfnet {' '.join(args)} exited with {code}")


def flags(options: Mapping[str, Any]) -> list[str]:
    """``{"--epochs": 3, "--model": ""}`` -> ``["--epochs", "3"]``: empty/zero parameters defer to params.yaml."""
    return [arg for flag, value in options.items() if value for arg in (flag, str(value))]


def log_metrics(artifact: Any, data: Mapping[str, Any]) -> None:
    """Every numeric leaf of ``data`` on a KFP ``Metrics`` artifact (shown in the run's UI)."""
    for key, value in numeric(data).items():
        artifact.log_metric(key, value)


def write_html(artifact: Any, title: str, data: Mapping[str, Any], images: Iterable[str | Path] = ()) -> None:
    """A self-contained HTML report on a KFP ``HTML`` artifact."""
    Path(artifact.path).write_text(html_report(title, data, images))


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def last_epoch(results_csv: str | Path) -> dict[str, float]:
    """The last row of ultralytics' ``results.csv`` (losses and validation metrics of the final epoch)."""
    with open(results_csv) as f:
        rows = list(csv.DictReader(f))
    return {k.strip(): float(v) for k, v in rows[-1].items() if v.strip()} if rows else {}


# --- where the pipeline is compiled or submitted ----------------------------------------------------------------------


def project_root() -> Path:
    """The checkout holding ``pipelines/`` and ``components/`` (searched from the working directory upwards)."""
    here = Path.cwd().resolve()
    for base in (here, *here.parents, Path(__file__).resolve().parents[1]):
        if (base / "pipelines" / "__init__.py").is_file() and (base / "components" / "__init__.py").is_file():
            return base
    raise FileNotFoundError("pipelines/ and components/ not found: run this from the csfnet project checkout")


def build(**options: Any):
    """The pipeline function, with cluster options (GPUs, node selector, tolerations, secrets) applied."""
    root = str(project_root())
    if root not in sys.path:
        sys.path.insert(0, root)
    return importlib.import_module("pipelines.csfnet_pipeline").build_pipeline(**options)


def compile_pipeline(out: str | Path, **options: Any) -> Path:
    """Write the pipeline's IR YAML."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(**options), str(out))
    return out


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``k=v`` pipeline arguments; values are parsed as JSON when they can be (numbers, lists), else kept as text."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"pipeline parameter {pair!r} is not key=value")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


def submit(host: str, params: Mapping[str, Any], experiment: str = "csfnet", token: str | None = None, **options: Any):
    """Submit a run to Kubeflow Pipelines at ``host``; credentials: ``token`` / ``$KF_PIPELINES_TOKEN``, else kube."""
    import kfp

    client = kfp.Client(host=host, existing_token=token or os.environ.get("KF_PIPELINES_TOKEN"))
    return client.create_run_from_pipeline_func(
        build(**options), arguments=dict(params), experiment_name=experiment, enable_caching=True
    )


def run_local(params: Mapping[str, Any], pipeline_root: str | Path = "runs/kfp") -> Any:
    """Execute the same pipeline with kfp's local ``SubprocessRunner`` in this environment (no Docker)."""
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(pipeline_root).resolve()))
    return build(gpus=0, secrets=False)(**params)
