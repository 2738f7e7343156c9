"""Tiles for high-resolution frames: overlapping native-resolution crops, boxes clipped to them, names that map back.

A frame larger than ``tile`` in either dimension is cut into ``tile`` x ``tile`` crops (the last row and column
aligned with the frame's edge) that overlap by at least ``overlap`` of a tile. A box cut by a tile's edge is clipped
to the tile and kept when at least ``min_visible`` of its area lies inside, otherwise dropped (a fragment). Tiles
without any part of a target are negatives; ``negatives`` (a ratio of the positive tiles) of them are kept, chosen
deterministically from ``seed`` and the sequence. A tile's file stem is ``<sequence>_<frame:06d>_x<x>_y<y>``; a
whole frame keeps ``<sequence>_<frame:06d>``; :func:`parse_tile_name` maps either back.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from csfnet.data.formats import Box
from csfnet.errors import DataError

_NAME = re.compile(r"^(?P<sequence>.+)_(?P<frame>\d{6,})(?:_x(?P<x>\d+)_y(?P<y>\d+))?$")


@dataclass(frozen=True)
class Tile:
    """A crop of a frame: top-left corner and size in source pixels."""

    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class TileName:
    """Where a dataset image comes from: sequence, 0-based frame and the tile's offset (0, 0 for whole frames)."""

    sequence: str
    frame: int
    x: int = 0
    y: int = 0


def check_tiling(tile: int, overlap: float, min_visible: float, negatives: float) -> None:
    """DataError unless the tiling settings make sense."""
    if tile < 0 or 0 < tile < 32:
        raise DataError(f"extract.tile must be 0 (off) or >= 32 px, got {tile}")
    if not 0 <= overlap < 1:
        raise DataError(f"extract.overlap must be in [0, 1), got {overlap}")
    if not 0 < min_visible <= 1:
        raise DataError(f"extract.min_visible must be in (0, 1], got {min_visible}")
    if negatives < 0:
        raise DataError(f"extract.negatives must be >= 0, got {negatives}")


def origins(size: int, tile: int, overlap: float) -> list[int]:
    """Tile offsets along one axis: every ``tile * (1 - overlap)`` px, the last one flush with the edge."""
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1 - overlap)))
    return [*range(0, size - tile, step), size - tile]


def grid(width: int, height: int, tile: int, overlap: float) -> list[Tile]:
    """The tiles of a ``width`` x ``height`` frame (row by row); one whole-frame tile when it fits in ``tile``."""
    if tile <= 0 or (width <= tile and height <= tile):
        return [Tile(0, 0, width, height)]
    tw, th = min(tile, width), min(tile, height)
    return [Tile(x, y, tw, th) for y in origins(height, tile, overlap) for x in origins(width, tile, overlap)]


def clip_boxes(boxes: Iterable[Box], tile: Tile, min_visible: float) -> tuple[list[Box], int, int]:
    """Boxes in the tile's coordinates: clipped to it and kept when at least ``min_visible`` of their area is
    inside; returns them, the number of boxes that touch the tile but were dropped, and how many kept ones were
    clipped."""
    kept, dropped, clipped = [], 0, 0
    for b in boxes:
        x0, y0 = max(b.x, tile.x), max(b.y, tile.y)
        x1, y1 = min(b.x + b.w, tile.x + tile.w), min(b.y + b.h, tile.y + tile.h)
        if x1 <= x0 or y1 <= y0:
            continue
        if (x1 - x0) * (y1 - y0) >= min_visible * b.w * b.h - 1e-9:
            kept.append(Box(b.frame, b.cls, x0 - tile.x, y0 - tile.y, x1 - x0, y1 - y0))
            clipped += (x0, y0, x1, y1) != (b.x, b.y, b.x + b.w, b.y + b.h)
        else:
            dropped += 1
    return kept, dropped, clipped


def tile_name(sequence: str, frame: int, tile: Tile | None = None) -> str:
    """File stem of a whole frame (``tile`` None) or of one of its tiles."""
    stem = f"{sequence}_{frame:06d}"
    return stem if tile is None else f"{stem}_x{tile.x}_y{tile.y}"


def parse_tile_name(stem: str) -> TileName:
    """Sequence, frame and offset of a dataset image from its file stem (inverse of :func:`tile_name`)."""
    match = _NAME.match(stem)
    if match is None:
        raise DataError(f"{stem!r} is not a dataset image name (<sequence>_<frame:06d>[_x<x>_y<y>])")
    x, y = match["x"], match["y"]
    return TileName(match["sequence"], int(match["frame"]), int(x or 0), int(y or 0))


def choose_negatives(
    boxes: Mapping[int, list[Box]],
    frames: Iterable[int],
    tiles: list[Tile],
    ratio: float,
    seed: int,
    key: str,
    min_visible: float,
) -> set[tuple[int, int, int]]:
    """``(frame, x, y)`` of the negative tiles to keep: ``round(ratio * positive tiles)`` (or every candidate when
    there are fewer) drawn from the tiles that touch no box, with a generator seeded by ``seed`` and ``key`` (the
    sequence), so the same inputs always give the same tiles."""
    positives, candidates = 0, []
    for frame in frames:
        frame_boxes = boxes.get(frame, [])
        for t in tiles:
            kept, dropped, _ = clip_boxes(frame_boxes, t, min_visible)
            if kept:
                positives += 1
            elif not dropped:
                candidates.append((frame, t.x, t.y))
    count = min(len(candidates), round(ratio * positives))
    if count == 0:
        return set()
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    return {candidates[i] for i in rng.choice(len(candidates), size=count, replace=False)}
