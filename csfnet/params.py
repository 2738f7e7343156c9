"""The one place that reads ``params.yaml``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

PARAMS_ENV = "CSFNET_PARAMS"


def params_path() -> Path:
    """``$CSFNET_PARAMS`` if set, else ``params.yaml`` in the working directory."""
    return Path(os.environ.get(PARAMS_ENV, "params.yaml"))


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """The pipeline configuration; an empty dict when there is no file (every setting then has a default)."""
    path = Path(path) if path else params_path()
    if not path.is_file():
        return {}
    with open(path) as f:
        params = yaml.safe_load(f) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return params


def section(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """One top-level section of the configuration (``{}`` if absent)."""
    return dict(load_params(path).get(name) or {})


def preset(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """ultralytics training arguments of a named preset from ``presets:`` (``{}`` when there is no params file)."""
    params = load_params(path)
    presets = params.get("presets") or {}
    if not params:
        return {}
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; params.yaml defines: {', '.join(presets) or 'none'}")
    return dict(presets[name])
