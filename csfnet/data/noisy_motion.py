"""Noisy copies of a motion dataset's validation images: noise is added to the source frames and the motion channels
are recomputed from the noisy frames, as a noisy camera would give them (used by the robustness sweep).

The source is found through ``report.json``'s ``source`` (the raw root, relative to the dataset, recorded by
extraction for motion datasets). Every source frame of a sequence gets its own noise draw and goes through one
:class:`~csfnet.temporal.MotionBuffer`; each validation image (frame or tile) becomes the crop of its noisy source
frame (PNG, no JPEG round trip) with the crops of the recomputed motion maps.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from csfnet.data.extract import source_frames
from csfnet.data.formats import discover
from csfnet.data.tiles import parse_tile_name
from csfnet.errors import DataError
from csfnet.temporal import MotionBuffer, MotionSpec, motion_path

Noise = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def source_root(dataset_root: Path) -> Path:
    """The raw root a motion dataset was extracted from; DataError when it is not recorded or not reachable."""
    try:
        recorded = json.loads((dataset_root / "report.json").read_text()).get("source")
    except (OSError, ValueError):
        recorded = None
    raw = (dataset_root / recorded).resolve() if recorded else None
    if raw is None or not raw.is_dir():
        where = f"recorded source {recorded!r} is not a folder here" if recorded else "report.json names no source"
        raise DataError(
            f"dataset {dataset_root} has motion channels but its source frames are not reachable ({where}); the noise "
            "sweep adds noise to the source frames and recomputes motion from them"
        )
    return raw


def write_noisy_images(
    images: Sequence[Path],
    out_images: Path,
    spec: MotionSpec,
    sigma: float,
    seed: int,
    add_noise: Noise,
    raw: Path,
) -> None:
    """Write ``<out_images>/<stem>.png`` and its motion PNGs (``motion_path`` of it) for every image in ``images``
    (of the dataset extracted from ``raw``), with ``add_noise(frame, sigma, rng)`` applied to every source frame."""
    wanted: dict[str, dict[int, list[tuple[Path, int, int]]]] = {}
    for image in images:  # extraction writes images/<split>/<sequence>_<frame>...: names repeat across splits
        name = parse_tile_name(image.stem)
        key = f"{image.parent.name}/{name.sequence}"  # SequenceSource.key
        wanted.setdefault(key, {}).setdefault(name.frame, []).append((image, name.x, name.y))
    out_images.mkdir(parents=True, exist_ok=True)
    done = set()
    for seq in discover(raw):
        sequence = seq.key
        if sequence not in wanted:
            continue
        rng = np.random.default_rng([seed, int(sigma * 1000), zlib.crc32(seq.name.encode())])
        buffer = MotionBuffer(spec)
        last = max(wanted[sequence])
        for index, frame in enumerate(source_frames(seq)):
            noisy = add_noise(frame, sigma, rng)
            if index not in wanted[sequence]:
                buffer.remember(noisy)
            else:
                maps = buffer.push(noisy)
                for image, x, y in wanted[sequence][index]:
                    h, w = cv2.imread(str(image), cv2.IMREAD_UNCHANGED).shape[:2]
                    target = out_images / f"{image.stem}.png"
                    cv2.imwrite(str(target), noisy[y : y + h, x : x + w])
                    for i, d in enumerate(spec.offsets):
                        path = motion_path(target, d)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        cv2.imwrite(str(path), np.ascontiguousarray(maps[y : y + h, x : x + w, i]))
                    done.add(image)
            if index >= last:
                break
    missing = [image for image in images if image not in done]
    if missing:
        raise DataError(f"{missing[0]}: its frame is not in the source {raw} ({len(missing)} images not found)")
