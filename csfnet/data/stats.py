"""Object size statistics of a YOLO dataset, at source and at training resolution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from csfnet.data.dataset import read_labels, split_images
from csfnet.data.tiles import parse_tile_name
from csfnet.errors import DataError

FINEST_STRIDE = 8  # P3: a box with no anchor centre inside it gets no positive sample in ultralytics' assigner
WARN_SHARE = 0.25
TILE_MARGIN = 0.05  # tiling is recommended when it leaves at least 5 points fewer objects below the stride


def object_sizes(data: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """sqrt(w*h) in source pixels of every labelled object of a split, and each image's longest side."""
    sizes, long_sides, _ = _sizes(data, split, {})
    return sizes, long_sides


def _sizes(data: str | Path, split: str, frames: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object sizes, each image's longest side, and the longest side of the source frame it was cut from (from
    ``frames``: sequence -> longest side; the image's own when unknown)."""
    sizes, long_sides, frame_sides = [], [], []
    for image in split_images(data, split):
        boxes, (w, h) = read_labels(image)
        sizes.append(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        long_sides.append(np.full(len(boxes), max(w, h)))
        try:
            frame_side = frames.get(parse_tile_name(image.stem).sequence, max(w, h))
        except DataError:
            frame_side = max(w, h)
        frame_sides.append(np.full(len(boxes), frame_side))
    if not sizes:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    return np.concatenate(sizes), np.concatenate(long_sides), np.concatenate(frame_sides)


def _frame_sides(data: str | Path) -> dict[str, int]:
    """Sequence -> longest side of its source frames, from the extraction report beside ``data.yaml``."""
    report = Path(data).parent / "report.json"
    try:
        sequences = json.loads(report.read_text()).get("sequences", {})
    except (OSError, ValueError):
        return {}
    return {key.split("/", 1)[-1]: max(s["width"], s["height"]) for key, s in sequences.items()}


def compare_tiling(sizes: np.ndarray, frame_sides: np.ndarray, imgsz: int, tile: int) -> dict[str, Any]:
    """Share of objects below the finest stride when whole frames are downscaled to ``imgsz`` vs when frames are
    cut into ``tile`` px tiles shown at ``imgsz`` (frames no larger than a tile stay whole); and a recommendation."""
    if not len(sizes):
        return {
            "tile": tile,
            "downscale_below_stride": 0.0,
            "tile_below_stride": 0.0,
            "recommendation": "downscale",
            "reason": "no objects",
        }
    downscaled = sizes * imgsz / frame_sides
    tiled = sizes * imgsz / np.minimum(frame_sides, tile)
    down, cut = float((downscaled < FINEST_STRIDE).mean()), float((tiled < FINEST_STRIDE).mean())
    larger = float((frame_sides > tile).mean())
    if larger > 0 and cut + TILE_MARGIN <= down:
        choice = "tile"
        reason = (
            f"tiles of {tile} px keep {down - cut:.0%} more objects above the {FINEST_STRIDE} px stride: set "
            f"extract.tile: {tile} (validation frames stay whole: pair them with sliced inference)"
        )
    else:
        choice = "downscale"
        reason = (
            "frames are no larger than a tile" if larger == 0 else f"tiling gains under {TILE_MARGIN:.0%} of objects"
        ) + f"; keep whole frames at imgsz {imgsz}"
    return {
        "tile": tile,
        "downscale_below_stride": round(down, 4),
        "tile_below_stride": round(cut, 4),
        "recommendation": choice,
        "reason": reason,
    }


def dataset_stats(
    data: str | Path, imgsz: int = 640, out_dir: str | Path | None = None, tile: int | None = None
) -> dict[str, Any]:
    """Size distribution per split at source and at ``imgsz`` (ultralytics letterboxes the long side to it), and
    the comparison of downscaling whole frames with ``tile`` px tiles (default ``imgsz``) over every split.

    Writes ``stats.json`` and ``size_histogram.png`` to ``out_dir`` when given.
    """
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(data))
    result: dict[str, Any] = {"imgsz": imgsz, "finest_stride": FINEST_STRIDE, "splits": {}}
    histograms = {}
    frames = _frame_sides(data)
    pooled: list[tuple[np.ndarray, np.ndarray]] = []
    for split in ("train", "val", "test"):
        if not info.get(split):
            continue
        src, long_side, frame_side = _sizes(data, split, frames)
        pooled.append((src, frame_side))
        at_train = src * imgsz / long_side if len(src) else src
        histograms[split] = (src, at_train)
        result["splits"][split] = {
            "objects": len(src),
            "source_px": _summary(src),
            "train_px": _summary(at_train),
            "below_stride_share": float((at_train < FINEST_STRIDE).mean()) if len(src) else 0.0,
        }
    sizes = np.concatenate([p[0] for p in pooled]) if pooled else np.zeros(0)
    sides = np.concatenate([p[1] for p in pooled]) if pooled else np.zeros(0)
    result["tiling"] = compare_tiling(sizes, sides, imgsz, tile or imgsz)
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
