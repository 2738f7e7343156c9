"""Gaussian-noise robustness (paper Table 1): validation metrics as the noise level grows.

For a dataset with motion channels the noise goes into the source frames and the motion is recomputed from the
noisy frames (:mod:`csfnet.data.noisy_motion`), as a noisy camera would give it; the source is the raw root that
extraction recorded in ``report.json``."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from csfnet.checks import check_checkpoint, check_dataset
from csfnet.data.dataset import label_path, split_images
from csfnet.device import resolve_device
from csfnet.evaluate import validate
from csfnet.files import replace_dir, staging_dir
from csfnet.lineage import lineage_tags
from csfnet.runlog import NullLogger, StageLogger
from csfnet.settings import Settings, load_settings
from csfnet.temporal import MotionSpec, dataset_motion

METRICS = ("map50", "map50_95", "precision", "recall")


def add_gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8, 0-255) plus zero-mean Gaussian noise of standard deviation ``sigma``, clipped to 0-255."""
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return image.copy()
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def noise_sweep(
    weights: str | Path,
    data: str | Path,
    out_dir: str | Path,
    sigmas: Sequence[float] | None = None,
    imgsz: int | None = None,
    device: str | None = None,
    logger: StageLogger | None = None,
    final: bool = False,
    settings: Settings | None = None,
) -> list[dict[str, Any]]:
    """Validate ``weights`` on noisy copies of the validation split, as the ``robustness`` stage.

    Writes ``robustness.json``/``.csv``/``.png`` to ``out_dir`` (all or nothing). σ = 0 validates the original
    frames, so its row equals plain evaluation. Noisy frames are written losslessly (PNG) to a temporary dataset
    next to ``out_dir`` and removed afterwards. ``sigmas`` default to ``robustness.sigmas``, validation settings
    come from ``eval``; ``logger`` records the stage (default: nothing), ``final`` closes the pipeline's parent run.
    """
    settings = (settings or load_settings()).override({"robustness.sigmas": sigmas}, "options")
    weights, data, out_dir = check_checkpoint(weights), Path(data), Path(out_dir)
    info = check_dataset(data)
    spec = dataset_motion(info)
    raw = None
    if spec is not None:  # before anything runs: a sweep that cannot recompute motion fails now
        from csfnet.data.noisy_motion import source_root

        raw = source_root(Path(info["path"]) if info.get("path") else data.parent)
    e, r = settings.eval, settings.robustness
    imgsz, device = imgsz or settings.imgsz, resolve_device(device, settings)
    params = {"sigmas": r.sigmas, "seed": r.seed, "imgsz": imgsz, "batch": e.batch, "conf": e.conf, "iou": e.iou}
    images = split_images(data, "val")
    names = yaml.safe_load(data.read_text())["names"]
    stage = (logger or NullLogger()).stage(
        "robustness", {**params, "device": device}, lineage_tags(data, weights), final=final
    )
    with stage as run:
        rows = []
        for sigma in tqdm(r.sigmas, desc="noise sweep", unit="sigma"):
            if sigma == 0:
                metrics = validate(weights, data, imgsz, e.batch, e.conf, e.iou, device, plots=False)
            else:
                with staging_dir(out_dir) as tmp:  # beside out_dir: nothing is left inside it on failure
                    noisy_data = _noisy_dataset(images, names, tmp, sigma, r.seed, spec, raw)
                    metrics = validate(weights, noisy_data, imgsz, e.batch, e.conf, e.iou, device, plots=False)
            rows.append({"sigma": float(sigma), **{k: round(metrics[k], 5) for k in METRICS}})
        with staging_dir(out_dir) as tmp:
            write_outputs(rows, tmp)
            replace_dir(tmp, out_dir)
        for row in rows:
            run.log_metrics({f"noise_{k}": v for k, v in row.items() if k != "sigma"}, step=int(row["sigma"]))
        run.log_artifacts(out_dir, "robustness")
    return rows


def _noisy_dataset(
    images: Sequence[Path],
    names: Any,
    root: Path,
    sigma: float,
    seed: int,
    spec: MotionSpec | None = None,
    raw: Path | None = None,
) -> Path:
    """A one-split dataset of noisy PNG copies with the original labels linked beside them; with motion (``spec``),
    made from the noisy source frames of ``raw`` with their recomputed motion channels."""
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    if spec is not None and raw is not None:
        from csfnet.data.noisy_motion import write_noisy_images

        write_noisy_images(images, root / "images" / "val", spec, sigma, seed, add_gaussian_noise, raw)
    else:
        rng = np.random.default_rng([seed, int(sigma * 1000)])
        for image_path in images:
            image = cv2.imread(str(image_path))
            cv2.imwrite(str(root / "images" / "val" / f"{image_path.stem}.png"), add_gaussian_noise(image, sigma, rng))
    for image_path in images:
        label = label_path(image_path)
        if label.is_file():
            os.symlink(label.resolve(), root / "labels" / "val" / label.name)
    data = root / "data.yaml"
    motion = {} if spec is None else {"channels": 3 + spec.channels, "motion": spec.to_dict()}
    data.write_text(yaml.safe_dump({"train": "images/val", "val": "images/val", "names": names, **motion}))
    return data


def write_outputs(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """The sweep as a DVC metric (JSON keyed by σ), a DVC plot table (CSV) and a curve (PNG)."""
    (out_dir / "robustness.json").write_text(json.dumps({f"sigma_{r['sigma']:g}": r for r in rows}, indent=2))
    with open(out_dir / "robustness.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sigma", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    sigmas = [r["sigma"] for r in rows]
    for key, label in zip(METRICS, ("mAP50", "mAP50-95", "precision", "recall")):
        ax.plot(sigmas, [r[key] for r in rows], marker="o", label=label)
    ax.set(xlabel="Gaussian noise σ (0-255 scale)", ylabel="score", ylim=(0, 1), title="Robustness to sensor noise")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "robustness.png")
    plt.close(fig)
