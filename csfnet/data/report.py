"""Ingestion report (JSON for DVC, a self-contained HTML page) and the dataset record MLflow runs log as input.

``write_report`` turns the extraction report into ``ingest.json`` (per split: sequences, resolutions, frames,
annotated frames, objects, object size percentiles and histogram at source, images, boxes, negatives; ``--fix``
repairs; tiling), ``sequences.json`` (the same per sequence, with fps and codec) and ``ingest.html`` (the same
tables, the source size histogram and a contact sheet of sample images with their boxes, every image embedded as
base64: one file to open or attach anywhere).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from csfnet.files import write_json

THUMB_WIDTH = 320
SAMPLES = 12


def write_report(report: dict, dataset: str | Path, out_dir: str | Path, samples: int = SAMPLES) -> Path:
    """Write the report of :func:`csfnet.data.extract.extract` for the dataset folder ``dataset``: ``ingest.json``
    (per split, repairs, tiling: the DVC metric), ``sequences.json`` (per sequence) and ``ingest.html``; returns the
    HTML path."""
    out_dir = Path(out_dir)
    write_json(out_dir / "ingest.json", {k: v for k, v in report.items() if k != "sequences"})
    write_json(out_dir / "sequences.json", report.get("sequences", {}))
    page = render_html(report, Path(dataset), samples)
    tmp = out_dir / ".ingest.html.tmp"
    tmp.write_text(page)
    tmp.replace(out_dir / "ingest.html")
    return out_dir / "ingest.html"


def render_html(report: dict, dataset: Path, samples: int = SAMPLES) -> str:
    """The report as one self-contained HTML page."""
    splits = report.get("splits", {})
    split_rows = [
        [
            name,
            s.get("sequences", 0),
            ", ".join(s.get("resolutions", [])),
            s.get("frames", ""),
            s.get("annotated_frames", ""),
            s.get("objects", ""),
            s["images"],
            s["boxes"],
            s["negatives"],
            _sizes(s.get("size_px")),
            "tiles" if s.get("tiled") else "whole frames",
        ]
        for name, s in splits.items()
    ]
    seq_rows = [
        [
            key,
            s["format"],
            s["media"],
            f"{s['width']}x{s['height']}",
            s["fps"] or "",
            s["codec"],
            s["frames"],
            s["annotated_frames"],
            s["objects"],
            _sizes(s["size_px"]),
            ", ".join(f"{k} {v}" for k, v in s["fixes"].items() if v) or "none",
            ", ".join(f"{k} {v}" for k, v in s["tiles"].items()) or "",
        ]
        for key, s in report.get("sequences", {}).items()
    ]
    fixes = ", ".join(f"{k}: {v}" for k, v in report.get("fixes", {}).items())
    tiling = report.get("tiling") or {}
    tile_text = (
        f"tile {tiling['tile']} px, overlap {tiling['overlap']}, min_visible {tiling['min_visible']}, negatives "
        f"{tiling['negatives']} x positives, tiled splits: {', '.join(tiling['splits'])}"
        if tiling.get("tile")
        else "off (whole frames)"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>csfnet ingestion report</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}td:first-child{text-align:left}"
        ".sheet{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0;font-size:11px}</style></head><body>",
        "<h1>Ingestion report</h1>",
        f"<p>stride {report.get('stride')}, classes {html.escape(', '.join(report.get('names', [])))}; "
        f"tiling: {html.escape(tile_text)}; repairs (--fix): {html.escape(fixes)}</p>",
        "<h2>Splits</h2>",
        _table(
            [
                "split",
                "sequences",
                "resolution",
                "frames",
                "annotated frames",
                "objects",
                "images",
                "boxes",
                "negatives",
                "size px p5/p25/p50/p75/p95",
                "images are",
            ],
            split_rows,
        ),
    ]
    histogram = _histogram_png(report)
    if histogram:
        image = f"<img alt='size histogram' src='data:image/png;base64,{histogram}'>"
        parts += ["<h2>Object size at source</h2>", image]
    if seq_rows:
        parts += [
            "<h2>Sequences</h2>",
            _table(
                [
                    "sequence",
                    "layout",
                    "file",
                    "resolution",
                    "fps",
                    "codec",
                    "frames",
                    "annotated",
                    "objects",
                    "size px p5/p25/p50/p75/p95",
                    "repairs",
                    "tiles",
                ],
                seq_rows,
            ),
        ]
    sheet = contact_sheet(dataset, samples)
    if sheet:
        figures = "".join(
            f"<figure><img alt='{html.escape(c)}' src='data:image/jpeg;base64,{b}'><figcaption>{html.escape(c)}"
            "</figcaption></figure>"
            for c, b in sheet
        )
        parts += ["<h2>Sample images with their boxes</h2>", f"<div class='sheet'>{figures}</div>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _sizes(percentiles: dict | None) -> str:
    return " / ".join(f"{v:g}" for v in percentiles.values()) if percentiles else ""


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _histogram_png(report: dict) -> str | None:
    """Bar chart of the per-split size histograms the report holds, as base64 PNG."""
    hists = {n: s["size_histogram"] for n, s in report.get("splits", {}).items() if s.get("size_histogram")}
    if not hists:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
    for name, h in hists.items():
        edges = np.array(h["edges"], float)
        edges[-1] = edges[-2] + (edges[-2] - edges[-3])  # the open last bin ("64 px and more") drawn one bin wide
        ax.stairs(h["counts"], edges, label=name, fill=True, alpha=0.5)
    ax.axvline(8, color="red", linestyle="--", label="8 px (finest stride at native scale)")
    ax.set(xlabel="sqrt(box area) at source [px] (last bin: larger)", ylabel="objects")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def contact_sheet(dataset: Path, samples: int = SAMPLES) -> list[tuple[str, str]]:
    """Up to ``samples`` images with targets (spread evenly over the dataset, train first), boxes drawn, as
    ``(name, base64 JPEG thumbnail)``."""
    labels = sorted(p for p in (dataset / "labels").rglob("*.txt") if p.stat().st_size) if dataset.is_dir() else []
    if not labels:
        return []
    picks = [labels[int(i)] for i in np.linspace(0, len(labels) - 1, min(samples, len(labels)))]
    out = []
    for label in picks:
        rel = label.relative_to(dataset / "labels").with_suffix(".jpg")
        image = cv2.imread(str(dataset / "images" / rel))
        if image is None:
            continue
        h, w = image.shape[:2]
        scale = THUMB_WIDTH / w
        thumb = cv2.resize(image, (THUMB_WIDTH, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        for row in np.loadtxt(label, ndmin=2):
            cx, cy, bw, bh = row[1] * w * scale, row[2] * h * scale, row[3] * w * scale, row[4] * h * scale
            pad = 3  # micro targets: draw the box a few pixels out so it stays visible on the thumbnail
            p0 = (int(cx - bw / 2) - pad, int(cy - bh / 2) - pad)
            p1 = (int(cx + bw / 2) + pad, int(cy + bh / 2) + pad)
            cv2.rectangle(thumb, p0, p1, (0, 0, 255), 1)
        ok, buf = cv2.imencode(".jpg", thumb, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if ok:
            out.append((str(rel), base64.b64encode(buf.tobytes()).decode()))
    return out
