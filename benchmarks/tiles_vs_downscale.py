"""AP50 of micro targets: training on native-resolution tiles vs on downscaled whole frames, same model and budget.

A scaled-down HD case that fits a CPU: synthetic 640x360 videos with the usual 3-24 px targets, a model input of
``--imgsz`` 160 px, so whole frames shrink 4x (as 1080p frames do at imgsz 480) while 160 px tiles keep native
scale. Both CSF-Net-n models see the same number of training images (``--budget``, epochs adjusted to each
dataset's size) at the same imgsz; the last weights of each are evaluated on the same whole validation frames: the
downscaled model on whole frames, the tiled model with sliced inference (160 px slices, overlap 0.2), both reported
by size band (AP50 of objects under 8 px is the figure of interest).

Usage: python benchmarks/tiles_vs_downscale.py [--budget 6000] [--imgsz 160] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import csfnet  # noqa: F401  (offline defaults)
from csfnet.data.extract import Tiling, extract
from csfnet.data.synth import SynthSpec, generate
from csfnet.detect.sliced_eval import sliced_vs_full
from csfnet.settings import Settings
from csfnet.train import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=int, default=6000, help="training images seen by each model")
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="tiles-vs-downscale-"))
    spec = SynthSpec(train_videos=8, val_videos=4, frames=25, width=640, height=360, seed=0)
    with contextlib.redirect_stderr(io.StringIO()):
        raw = generate(root / "raw", spec)
        whole = extract(raw, root / "whole", stride=1)
        cut = Tiling(tile=args.imgsz, overlap=0.2, min_visible=0.5, negatives=1.0)
        tiles = extract(raw, root / "tiles", stride=1, tiling=cut)
    results = {}
    for name, report, data in (("downscale", whole, root / "whole"), ("tiles", tiles, root / "tiles")):
        images = report["splits"]["train"]["images"]
        epochs = max(2, round(args.budget / images))
        overrides = {"epochs": epochs, "imgsz": args.imgsz, "close_mosaic": max(1, epochs // 4), "plots": False}
        start = time.perf_counter()
        run = train(
            data / "data.yaml",
            model="csfnet-n",
            out=root / f"run-{name}",
            preset="quick",
            overrides=overrides,
            device="cpu",
            settings=Settings(),
        )
        minutes = (time.perf_counter() - start) / 60
        weights = run.last  # the tiled run validates on downscaled whole frames: its "best" means little
        evaluation = sliced_vs_full(weights, root / "whole/data.yaml", slice_size=args.imgsz, imgsz=args.imgsz)
        results[name] = {
            "train_images": images,
            "epochs": epochs,
            "train_minutes": round(minutes, 1),
            "whole_frames": evaluation["full"],
            "sliced": evaluation["sliced"],
            "ms_per_image": evaluation["ms_per_image"],
        }
        print(name, json.dumps(results[name]), flush=True)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'training':<10} {'inference':<12} {'AP50 <8 px':>10} {'AP50 8-16':>10} {'AP50 16-32':>10}")
    for name, r in results.items():
        for mode in ("whole_frames", "sliced"):
            cells = [r[mode][band]["ap50"] for band in ("very_tiny", "tiny", "small")]
            print(f"{name:<10} {mode:<12} {cells[0]:>10.3f} {cells[1]:>10.3f} {cells[2]:>10.3f}")
    print(f"results in {root / 'results.json'}")


if __name__ == "__main__":
    main()
