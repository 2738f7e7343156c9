"""Tiles for HD frames: grid, clipping and dropping against hand computations, names, negatives, determinism."""

import numpy as np
import pytest

from csfnet.data.extract import Tiling, extract
from csfnet.data.formats import Box
from csfnet.data.synth import SynthSpec, generate
from csfnet.data.tiles import Tile, TileName, choose_negatives, clip_boxes, grid, origins, parse_tile_name, tile_name
from csfnet.errors import DataError


def test_grid_matches_hand_computation():
    # 1920 px, 640 px tiles, overlap 0.2: step int(640 * 0.8) = 512 -> 0, 512, 1024, then flush with the edge: 1280
    assert origins(1920, 640, 0.2) == [0, 512, 1024, 1280]
    assert origins(1080, 640, 0.2) == [0, 440]
    tiles = grid(1920, 1080, 640, 0.2)
    assert len(tiles) == 8 and tiles[0] == Tile(0, 0, 640, 640) and tiles[-1] == Tile(1280, 440, 640, 640)
    assert grid(640, 480, 640, 0.2) == [Tile(0, 0, 640, 480)]  # fits: kept whole
    assert grid(1000, 500, 640, 0.25) == [Tile(0, 0, 640, 500), Tile(360, 0, 640, 500)]  # short side not cut
    assert grid(1920, 1080, 0, 0.2) == [Tile(0, 0, 1920, 1080)]  # tiling off


def test_boxes_cut_by_a_tile_edge_are_clipped_or_dropped_exactly():
    tile = Tile(0, 0, 640, 640)
    inside = Box(0, 0, 100, 100, 8, 6)
    half = Box(0, 0, 630, 200, 20, 10)  # 10 of its 20 px wide inside: 50 % of the area
    sliver = Box(0, 0, 636, 300, 20, 10)  # 4 of 20 px: 20 %
    outside = Box(0, 0, 700, 100, 8, 8)
    kept, dropped, clipped = clip_boxes([inside, half, sliver, outside], tile, 0.5)
    assert kept == [Box(0, 0, 100, 100, 8, 6), Box(0, 0, 630, 200, 10, 10)]
    assert (dropped, clipped) == (1, 1)
    kept, dropped, clipped = clip_boxes([half, sliver], tile, 0.6)
    assert (kept, dropped, clipped) == ([], 2, 0)
    kept, _, _ = clip_boxes([sliver], tile, 0.2)
    assert kept == [Box(0, 0, 636, 300, 4, 10)]
    # the next tile (x 512) holds both whole, in its own coordinates
    kept, dropped, clipped = clip_boxes([half, sliver], Tile(512, 0, 640, 640), 0.5)
    assert kept == [Box(0, 0, 118, 200, 20, 10), Box(0, 0, 124, 300, 20, 10)] and (dropped, clipped) == (0, 0)
    # a corner: 3 x 4 of a 6 x 8 box at the tile's bottom-right corner is 25 % of it
    corner = Box(0, 0, 637, 636, 6, 8)
    assert clip_boxes([corner], tile, 0.25)[0] == [Box(0, 0, 637, 636, 3, 4)]
    assert clip_boxes([corner], tile, 0.26)[0] == []


def test_tile_names_map_back():
    name = tile_name("uav_train_0001", 17, Tile(512, 440, 640, 640))
    assert name == "uav_train_0001_000017_x512_y440"
    assert parse_tile_name(name) == TileName("uav_train_0001", 17, 512, 440)
    assert parse_tile_name(tile_name("seq_2_000003", 5)) == TileName("seq_2_000003", 5, 0, 0)
    with pytest.raises(DataError, match="not a dataset image name"):
        parse_tile_name("frame.jpg")


def _boxes(frames: int) -> dict[int, list[Box]]:
    """One 10 px target per frame moving right across a 1280 x 640 frame cut into 640 px tiles."""
    return {f: [Box(f, 0, 40 + 150 * f, 300, 10, 10)] for f in range(frames)}


def test_negatives_ratio_and_seed_determinism():
    tiles = grid(1280, 640, 640, 0.0)  # two tiles per frame
    boxes = _boxes(8)  # frames 0-3 in the left tile, 4 (640-650) in the right, 5-7 right: 8 positives
    positives = sum(1 for f in range(8) for t in tiles if clip_boxes(boxes[f], t, 0.5)[0])
    assert positives == 8
    frames = range(12)  # 4 frames without targets: 8 negative candidates, plus the 8 empty halves
    chosen = choose_negatives(boxes, frames, tiles, 0.5, seed=0, key="train/a", min_visible=0.5)
    assert len(chosen) == 4 and all(f >= 0 and (x, y) in {(0, 0), (640, 0)} for f, x, y in chosen)
    assert chosen == choose_negatives(boxes, frames, tiles, 0.5, seed=0, key="train/a", min_visible=0.5)
    others = [choose_negatives(boxes, frames, tiles, 0.5, seed=s, key="train/a", min_visible=0.5) for s in (1, 2, 3)]
    assert any(o != chosen for o in others)
    assert choose_negatives(boxes, frames, tiles, 0.0, 0, "train/a", 0.5) == set()
    assert len(choose_negatives(boxes, frames, tiles, 10.0, 0, "train/a", 0.5)) == 16  # every candidate
    # a tile holding only a dropped fragment is never a negative: the target is there
    fragment = {0: [Box(0, 0, 636, 300, 10, 10)]}  # 4 px in the left tile, 6 px in the right one
    assert choose_negatives(fragment, [0], tiles, 5.0, 0, "k", 0.5) == set()


def test_extract_tiles_train_keeps_val_whole_and_every_box_maps_back(tmp_path):
    raw = generate(tmp_path / "raw", SynthSpec(train_videos=2, val_videos=1, frames=4, width=320, height=192, seed=5))
    cut = Tiling(tile=128, overlap=0.25, min_visible=0.5, negatives=0.5, seed=0)
    report = extract(raw, tmp_path / "ds", tiling=cut, workers=2)
    train = sorted((tmp_path / "ds/images/train").iterdir())
    assert train and all("_x" in p.stem for p in train)
    assert all("_x" not in p.stem for p in (tmp_path / "ds/images/val").iterdir())  # whole frames
    truth = _mot_boxes(raw)
    for key, result in report["sequences"].items():
        if result["split"] != "train":
            continue
        tiles, name = result["tiles"], key.split("/")[1]
        boxes = {
            f: [Box(f, 0, x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in truth.get((name, f), [])] for f in range(4)
        }
        empty = sum(1 for f in range(4) for t in grid(320, 192, 128, 0.25) if clip_boxes(boxes[f], t, 1e-9)[0] == [])
        assert tiles["positives"] > 0 and tiles["negatives"] == min(round(0.5 * tiles["positives"]), empty)
        assert result["images"] == tiles["positives"] + tiles["negatives"]
    for image in train:
        where = parse_tile_name(image.stem)
        label = tmp_path / "ds/labels/train" / f"{image.stem}.txt"
        rows = np.loadtxt(label, ndmin=2) if label.stat().st_size else []
        for _, cx, cy, w, h in rows:
            x0, y0 = (cx - w / 2) * 128 + where.x, (cy - h / 2) * 128 + where.y
            x1, y1 = x0 + w * 128, y0 + h * 128
            sources = truth[(where.sequence, where.frame)]
            clipped = [
                (max(b[0], where.x), max(b[1], where.y), min(b[2], where.x + 128), min(b[3], where.y + 128))
                for b in sources
            ]
            assert min(max(abs(np.subtract((x0, y0, x1, y1), c))) for c in clipped) < 1e-3
    again = extract(raw, tmp_path / "again", tiling=cut, workers=2)
    assert sorted(p.name for p in (tmp_path / "again/images/train").iterdir()) == [p.name for p in train]
    assert again["splits"] == report["splits"]


def _mot_boxes(raw) -> dict[tuple[str, int], list[tuple[float, float, float, float]]]:
    truth: dict = {}
    for gt in raw.rglob("gt.txt"):
        for line in gt.read_text().split():
            f, _, x, y, w, h = (float(v) for v in line.split(",")[:6])
            truth.setdefault((gt.parent.parent.name, int(f) - 1), []).append((x, y, x + w, y + h))
    return truth
