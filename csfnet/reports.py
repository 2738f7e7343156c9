"""Self-contained HTML reports (metrics table and embedded plots) for Kubeflow's HTML artifacts."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def html_report(title: str, metrics: Mapping[str, Any], images: Iterable[str | Path] = ()) -> str:
    """One page: a table of ``metrics`` (nested keys flattened) and every existing image inlined as base64."""
    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(_fmt(v))}</td></tr>" for k, v in flatten(metrics).items()
    )
    figures = "".join(
        f'<figure><img src="data:image/{Path(p).suffix.lstrip(".").replace("jpg", "jpeg")};base64,'
        f'{base64.b64encode(Path(p).read_bytes()).decode()}" style="max-width:100%"><figcaption>'
        f"{html.escape(Path(p).name)}</figcaption></figure>"
        for p in images
        if Path(p).is_file()
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><table border='1' cellpadding='4'>{rows}</table>{figures}</body></html>"
    )


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def numeric(data: Mapping[str, Any]) -> dict[str, float]:
    """The numeric leaves of ``data``, flattened: what Kubeflow's Metrics artifact can show."""
    return {k: float(v) for k, v in flatten(data).items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
