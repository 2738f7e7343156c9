"""Lineage of a run: the code (git commit), the data (DVC hash) and the pipeline execution it belongs to.

Used by stages for fingerprints and by tracking for tags; no tracking backend here.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
from pathlib import Path

import yaml

from csfnet.settings import params_path

PIPELINE_ENV = "CSFNET_PIPELINE_ID"


@functools.cache
def git_commit() -> str:
    """Current git commit (with ``-dirty`` when the tree has changes), or ``unknown`` outside a repository."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], capture_output=True, text=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_hash(path: str | Path) -> str | None:
    """The md5 ``dvc.lock`` records for the stage output at ``path``, or None when DVC does not track it."""
    lock = Path("dvc.lock")
    if not lock.is_file():
        return None
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if Path(out["path"]).resolve() == Path(path).resolve():
                return out.get("md5")
    return None


def data_hash(dataset: str | Path) -> str:
    """DVC hash of a dataset folder from ``dvc.lock`` when DVC tracks it, else a hash of its manifest."""
    dataset = Path(dataset)
    if dataset.is_file():
        dataset = dataset.parent
    tracked = dvc_hash(dataset)
    if tracked:
        return tracked
    digest = hashlib.md5()
    for name in ("data.yaml", "manifest.json", "report.json"):
        if (dataset / name).is_file():
            digest.update((dataset / name).read_bytes())
    return f"content-{digest.hexdigest()}"


def lineage_tags(data: str | Path, weights: str | Path | None = None) -> dict[str, str]:
    """Tags naming the data version (and the evaluated weights) of a stage run."""
    tags = {"csfnet.data_hash": data_hash(data)}
    if weights is not None:
        tags["csfnet.weights"] = str(Path(weights).resolve())
    return tags


def pipeline_id() -> str:
    """Identity of one pipeline execution: ``$CSFNET_PIPELINE_ID`` (a Kubeflow run id), else the commit and the
    parameters it runs with."""
    if os.environ.get(PIPELINE_ENV):
        return os.environ[PIPELINE_ENV]
    path = params_path()
    params = path.read_bytes() if path.is_file() else b""
    return hashlib.sha256(git_commit().encode() + params).hexdigest()[:16]
