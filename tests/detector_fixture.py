"""A detector of micro UAVs that a CPU trains in about a minute, for tests that need real detections of 3-8 px
targets in 1920x1080 frames.

The synthetic HD benchmark is cut into 64 px tiles at native resolution (``csfnet data extract``'s tiling), so the
targets keep their 3-12 px; a fully convolutional stride-4 model of 27 k parameters (one P2 head, ``reg_max`` 4)
learns them in 20 epochs at imgsz 64 through csfnet's trainer and then runs on 160 px slices at native scale. Measured
on 2 busy cores (13 micro targets in 24 held-out 1080p frames, three training seeds): 9-10 of 13 found sliced at
160 px, none on the whole frame letterboxed to 160 px.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from csfnet.data.extract import Tiling, extract
from csfnet.data.synth import SynthSpec, generate

TILE = 64  # training tile = training imgsz: targets at native scale, 6x less compute per target than 160 px tiles
SLICE = 160  # inference slice = inference imgsz: native scale again
MICRO = 8.0  # px: a target is micro when the square root of its box area is below this
TRAIN_SPEC = SynthSpec(train_videos=12, val_videos=1, frames=8, width=1920, height=1080, seed=5)
TEST_SPEC = SynthSpec(train_videos=0, val_videos=8, frames=2, width=1920, height=1080, seed=31)
MODEL = {
    "nc": 1,
    "reg_max": 4,  # boxes up to 2 x 4 x stride: enough for 3-24 px targets, and 4x fewer box channels
    "backbone": [
        [-1, 1, "Conv", [8, 3, 2]],  # 0-P1/2
        [-1, 1, "Conv", [16, 3, 2]],  # 1-P2/4
        [-1, 1, "C2f", [16, True]],  # 2
        [-1, 1, "Conv", [32, 3, 2]],  # 3-P3/8
        [-1, 1, "C2f", [32, True]],  # 4
    ],
    "head": [
        [-1, 1, "nn.Upsample", [None, 2, "nearest"]],
        [[-1, 2], 1, "Concat", [1]],
        [-1, 1, "C2f", [16]],  # 7 (P2/4)
        [[7], 1, "Detect", ["nc"]],
    ],
}
TRAIN = {
    "imgsz": TILE,
    "epochs": 20,
    "batch": 8,
    "nbs": 64,  # ultralytics' default, which this recipe was tuned with (the quick preset's is 16)
    "optimizer": "AdamW",
    "lr0": 0.01,
    "lrf": 0.1,
    "cos_lr": False,
    "warmup_epochs": 0,
    "amp": False,
    "mosaic": 0.0,
    "scale": 0.0,
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.0,
    "workers": 0,
    "cache": "ram",
    "plots": False,
    "val": False,
    "deterministic": True,
}


def micro_tiles(root: Path) -> Path:
    """Generate the HD training videos and cut them into native-scale tiles under ``root``; return the tiles'
    ``data.yaml``. Every micro model trains on these tiles: tests build them once per run (``parallel.shared``)."""
    raw = generate(root / "raw", TRAIN_SPEC, workers=2)
    extract(raw, root / "tiles", workers=2, tiling=Tiling(TILE, 0.2, negatives=0.5, splits=("train", "val")))
    return root / "tiles" / "data.yaml"


def train_micro_detector(root: Path, tiles: Path, model: dict | None = None) -> Path:
    """Train the micro model (or ``model``, a config of the same kind) on ``tiles`` (:func:`micro_tiles`' data.yaml)
    in ``root``; return its ``best.pt``."""
    from csfnet.train import train

    config = root / "micro.yaml"
    config.write_text(yaml.safe_dump(model or MODEL))
    old = Path.cwd()
    os.chdir(root)  # ultralytics writes nothing outside the run folder, but be sure
    try:
        result = train(
            tiles, model=str(config), out=root / "train", preset="quick", overrides=TRAIN,
            device="cpu",
        )  # fmt: skip
    finally:
        os.chdir(old)
    return result.best


def xyxy(mot_rows: np.ndarray) -> np.ndarray:
    """``x1, y1, x2, y2`` of MOT rows (``frame, id, x, y, w, h, ...``)."""
    boxes = mot_rows[:, 2:6].astype(np.float64).copy()
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def found(targets: np.ndarray, detections: np.ndarray, px: float = MICRO / 2) -> np.ndarray:
    """Which ``targets`` (``x1, y1, x2, y2``) have a detection whose centre lies within ``px`` of theirs (IoU is
    too harsh a test for a 4 px box: one pixel of offset costs half of it)."""
    if not len(targets) or not len(detections):
        return np.zeros(len(targets), bool)
    centre = lambda b: (b[:, :2] + b[:, 2:4]) / 2  # noqa: E731
    return np.linalg.norm(centre(targets)[:, None] - centre(detections)[None], axis=-1).min(1) <= px
