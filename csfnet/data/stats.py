"""Object size statistics of a YOLO dataset, at source and at training resolution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from csfnet.data.dataset import read_labels, split_images

FINEST_STRIDE = 8  # P3: a box with no anchor centre inside it gets no positive sample in ultralytics' assigner
WARN_SHARE = 0.25


def object_sizes(data: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """sqrt(w*h) in source pixels of every labelled object of a split, and each image's longest side."""
    sizes, long_sides = [], []
    for image in split_images(data, split):
        boxes, (w, h) = read_labels(image)
        sizes.append(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        long_sides.append(np.full(len(boxes), max(w, h)))
    if not sizes:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(sizes), np.concatenate(long_sides)


def dataset_stats(data: str | Path, imgsz: int = 640, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Size distribution per split at source and at ``imgsz`` (ultralytics letterboxes the long side to it).

    Writes ``stats.json`` and ``size_histogram.png`` to ``out_dir`` when given.
    """
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(data))
    result: dict[str, Any] = {"imgsz": imgsz, "finest_stride": FINEST_STRIDE, "splits": {}}
    histograms = {}
    for split in ("train", "val", "test"):
        if not info.get(split):
            continue
        src, long_side = object_sizes(data, split)
        at_train = src * imgsz / long_side if len(src) else src
        histograms[split] = (src, at_train)
        result["splits"][split] = {
            "objects": len(src),
            "source_px": _summary(src),
            "train_px": _summary(at_train),
            "below_stride_share": float((at_train < FINEST_STRIDE).mean()) if len(src) else 0.0,
        }
    shares = [s["below_stride_share"] for s in result["splits"].values()]
    result["warning"] = (
        f"{max(shares):.0%} of objects are smaller than the finest stride ({FINEST_STRIDE} px) at imgsz {imgsz}: "
        "ultralytics' assigner gives them few or no positive anchors; raise imgsz or upscale the frames"
        if shares and max(shares) > WARN_SHARE
        else None
    )
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "stats.json").write_text(json.dumps(result, indent=2))
        _plot(histograms, imgsz, out_dir / "size_histogram.png")
    return result


def _summary(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {"min": 0.0, "median": 0.0, "mean": 0.0, "max": 0.0}
    return {
        k: round(float(f(values)), 2)
        for k, f in (("min", np.min), ("median", np.median), ("mean", np.mean), ("max", np.max))
    }


def _plot(histograms: dict[str, tuple[np.ndarray, np.ndarray]], imgsz: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=110, sharey=True)
    for ax, which, title in zip(axes, (0, 1), ("source resolution", f"training resolution (imgsz {imgsz})")):
        top = max([float(v[which].max()) for v in histograms.values() if len(v[which])] + [FINEST_STRIDE * 2])
        bins = np.linspace(0, top, 40)
        for split, values in histograms.items():
            ax.hist(values[which], bins=bins, alpha=0.6, label=split)
        if which == 1:
            ax.axvline(FINEST_STRIDE, color="red", linestyle="--", label=f"finest stride ({FINEST_STRIDE} px)")
        ax.set(title=f"Object size at {title}", xlabel="sqrt(box area) [px]", ylabel="objects")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
