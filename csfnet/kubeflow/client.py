"""Kubeflow Pipelines on the user's machine: compile a pipeline, submit it, or run it here.

Three pipelines (``pipeline=``): ``csfnet`` (pipelines/csfnet_pipeline.py, the DVC pipeline with tuning fanned out
over workers), ``compare`` (pipelines/compare_pipeline.py, configurations x seeds in parallel, then the report) and
``detect`` (pipelines/detect_pipeline.py, ``csfnet detect`` over an archive of videos in parallel shards).

``pipelines/`` and ``components/`` are installed with the distribution (and copied into the images), so this works
from a wheel outside any checkout as well as from the project tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PIPELINE_ENV = "CSFNET_PIPELINE_ID"  # read by csfnet.lineage.pipeline_id(): one MLflow parent per execution
OPTUNA_ENV = "CSFNET_OPTUNA_STORAGE"  # csfnet.tune.STORAGE_ENV: the study the tuning workers share
PIPELINES = {
    "csfnet": "pipelines.csfnet_pipeline",
    "compare": "pipelines.compare_pipeline",
    "detect": "pipelines.detect_pipeline",
}


def build(pipeline: str = "csfnet", **options: Any):
    """The pipeline function (a name in :data:`PIPELINES`), with cluster options (GPUs, node selector,
    tolerations, secrets) applied.

    Raises:
        SettingsError: ``pipeline`` names no pipeline.
    """
    import importlib

    from csfnet.errors import SettingsError

    if pipeline not in PIPELINES:
        raise SettingsError(f"pipeline {pipeline!r} is not one of {', '.join(PIPELINES)}")
    return importlib.import_module(PIPELINES[pipeline]).build_pipeline(**options)


def compile_pipeline(out: str | Path, *, pipeline: str = "csfnet", **options: Any) -> Path:
    """Write the IR YAML of ``pipeline`` to ``out`` (options: see ``pipelines.csfnet_pipeline.build_pipeline``)."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}.yaml")
    try:
        compiler.Compiler().compile(build(pipeline, **options), str(tmp))
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
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


def submit(
    host: str,
    params: Mapping[str, Any],
    experiment: str = "csfnet",
    token: str | None = None,
    *,
    pipeline: str = "csfnet",
    **options: Any,
):
    """Submit a run of ``pipeline`` to Kubeflow Pipelines at ``host`` with caching on; ``params``: ``source_uri`` and
    ``settings`` (dotted params.yaml keys, as ``csfnet --set``); credentials: ``token`` / ``$KF_PIPELINES_TOKEN``,
    else the kube config."""
    import kfp

    func = build(pipeline, **options)
    client = kfp.Client(host=host, existing_token=token or os.environ.get("KF_PIPELINES_TOKEN"))
    return client.create_run_from_pipeline_func(
        func, arguments=_typed(func, params), experiment_name=experiment, enable_caching=True
    )


def run_local(
    params: Mapping[str, Any],
    pipeline_root: str | Path = "runs/kfp",
    *,
    cache: bool = True,
    pipeline_id: str | None = None,
    pipeline: str = "csfnet",
) -> Any:
    """Execute ``pipeline`` with kfp's local ``SubprocessRunner`` in this environment (no Docker, no cluster:
    the deploy step only renders its manifest; ``dsl.ParallelFor`` iterations run two at a time).

    Args:
        params: Pipeline arguments: ``source_uri`` and ``settings`` (dotted params.yaml keys, as ``csfnet --set``).
        pipeline_root: Where step outputs (and the local cache) are written.
        cache: Reuse outputs of earlier local runs under ``pipeline_root`` whose inputs match, as the cluster does.
            The cache lives in a folder keyed on the params file and the csfnet code (what the image is on a
            cluster), so editing either never serves stale outputs.
        pipeline_id: Identity of this execution for MLflow (default: a fresh id), set as ``$CSFNET_PIPELINE_ID``
            so the steps share one parent run.
        pipeline: ``csfnet``, ``compare`` or ``detect``.

    Without ``$CSFNET_OPTUNA_STORAGE`` (and params.yaml's ``tune.storage``) the tuning workers share a SQLite study
    in ``pipeline_root/optuna.db``, kept across runs as the cluster's PostgreSQL is.
    """
    from kfp import local

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)  # the local study database lives here
    cache_root = root / ".kfp_cache" / _environment_digest()
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=cache,
        cache_root=str(cache_root),
    )
    func = build(pipeline, gpus=0, secrets=False, apply_serving=False)
    env = {
        PIPELINE_ENV: pipeline_id or f"local-{uuid.uuid4().hex[:16]}",
        OPTUNA_ENV: os.environ.get(OPTUNA_ENV) or f"sqlite:///{root / 'optuna.db'}",
    }
    previous = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return func(**_typed(func, params))
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _typed(pipeline: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """Check names against the pipeline's parameters (an unknown one is named with the known ones) and pass whole
    numbers to float parameters as floats (``--param x=1`` parses as an integer, which kfp refuses for a float)."""
    inputs = pipeline.component_spec.inputs or {}
    unknown = sorted(set(params) - set(inputs))
    if unknown:
        raise ValueError(f"unknown pipeline parameter {unknown[0]!r}; known: {', '.join(sorted(inputs))}")
    return {
        k: float(v) if inputs[k].type == "Float" and isinstance(v, int) and not isinstance(v, bool) else v
        for k, v in params.items()
    }


def _environment_digest() -> str:
    """sha256 (16 hex) of the params file and the csfnet, components and pipelines sources."""
    import components
    import csfnet
    import pipelines

    digest = hashlib.sha256()
    params = Path(os.environ.get("CSFNET_PARAMS") or "params.yaml")
    digest.update(params.read_bytes() if params.is_file() else b"")
    for package in (csfnet, components, pipelines):
        base = Path(package.__file__).parent
        for path in sorted(p for p in base.rglob("*") if p.suffix in {".py", ".yaml"}):
            digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]
