"""Motion channels in extracted datasets: every image has them, they equal what MotionBuffer gives over the decoded
source (the extraction == detect identity), tiles are crops of the full-frame map, stale or missing ones are
refused, and other offsets re-extract."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from csfnet.cli import main
from csfnet.data.extract import Tiling, extract, video_frames
from csfnet.data.formats import discover
from csfnet.data.tiles import parse_tile_name
from csfnet.errors import DataError
from csfnet.temporal import MotionBuffer, MotionSpec, check_dataset_motion, dataset_motion, load_stacked, motion_path

SPEC = MotionSpec((1, 3), "homography", 320)


@pytest.fixture(scope="module")
def motion_data(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("motion") / "dataset"
    extract(tiny_raw, out, stride=2, workers=1, motion=SPEC)
    return out


def _source_maps(raw: Path) -> dict[str, list[np.ndarray]]:
    """The detect side: per sequence, MotionBuffer pushed every decoded source frame."""
    maps = {}
    for seq in discover(raw):
        buffer = MotionBuffer(SPEC)
        maps[seq.name] = [buffer.push(frame) for frame in video_frames(seq.video)]
    return maps


def _images(root: Path) -> list[Path]:
    return sorted((root / "images").rglob("*.jpg"))


def test_every_image_has_its_motion_files_and_data_yaml_says_so(motion_data):
    data = yaml.safe_load((motion_data / "data.yaml").read_text())
    assert data["channels"] == 5 and data["motion"] == SPEC.to_dict()
    assert dataset_motion(motion_data / "data.yaml") == SPEC
    images = _images(motion_data)
    assert len(images) == 3 * 4  # 3 sequences x 8 frames at stride 2
    for image in images:
        stacked = load_stacked(image, SPEC)
        assert stacked.shape == (64, 96, 5)
        for i, d in enumerate(SPEC.offsets):
            assert motion_path(image, d).is_file()
            assert np.array_equal(stacked[..., 3 + i], cv2.imread(str(motion_path(image, d)), cv2.IMREAD_GRAYSCALE))
    check_dataset_motion(motion_data, SPEC)  # complete and current: no error


def test_extracted_motion_equals_the_buffer_over_the_decoded_video(motion_data, tiny_raw):
    maps = _source_maps(tiny_raw)
    compared = nonzero = 0
    for image in _images(motion_data):
        name = parse_tile_name(image.stem)
        expected = maps[name.sequence][name.frame]
        got = np.stack([cv2.imread(str(motion_path(image, d)), cv2.IMREAD_GRAYSCALE) for d in SPEC.offsets], axis=2)
        assert np.array_equal(got, expected), image.name
        assert not got[..., 0].any() if name.frame == 0 else True  # first frame: the documented zero fallback
        assert not got[..., 1].any() if name.frame < 3 else True
        compared += 1
        nonzero += bool(got.any())
    assert compared == 12 and nonzero >= 8  # frames 2, 4, 6 of each sequence see their earlier frames


def test_motion_tiles_are_crops_of_the_full_frame_map(tiny_raw, tmp_path):
    out = tmp_path / "tiled"
    extract(tiny_raw, out, stride=1, workers=1, tiling=Tiling(tile=64, negatives=1.0), motion=SPEC)
    maps = _source_maps(tiny_raw)
    tiles = [p for p in _images(out) if "_x" in p.stem]
    assert tiles, "96 px frames cut into 64 px tiles"
    for image in _images(out):
        name = parse_tile_name(image.stem)
        h, w = cv2.imread(str(image)).shape[:2]
        for i, d in enumerate(SPEC.offsets):
            crop = maps[name.sequence][name.frame][name.y : name.y + h, name.x : name.x + w, i]
            assert np.array_equal(cv2.imread(str(motion_path(image, d)), cv2.IMREAD_GRAYSCALE), crop), image.name


def test_stale_or_missing_motion_is_refused_naming_the_mismatch(tiny_raw, tmp_path, motion_data):
    old = tmp_path / "old"
    extract(tiny_raw, old, stride=2, workers=1, motion=MotionSpec((1,), "homography", 320))
    with pytest.raises(DataError, match=r"offsets \[1\] .* offsets \[1, 3\]"):
        check_dataset_motion(old, SPEC)
    with pytest.raises(DataError, match=r"no motion channels"):
        check_dataset_motion(old, None)  # a single-frame model given motion
    single = tmp_path / "single"
    extract(tiny_raw, single, stride=2, workers=1)
    with pytest.raises(DataError, match=r"no motion channels .* offsets \[1, 3\]"):
        check_dataset_motion(single, SPEC)
    broken = tmp_path / "broken"
    extract(tiny_raw, broken, stride=2, workers=1, motion=SPEC)
    victim = motion_path(_images(broken)[0], 3)
    victim.unlink()
    with pytest.raises(DataError, match=f"1 motion files missing .*{victim.name}"):
        check_dataset_motion(broken, SPEC)
    with pytest.raises(DataError, match="missing or unreadable"):
        load_stacked(_images(broken)[0], SPEC)


def test_single_frame_extraction_is_unchanged(tiny_raw, tmp_path):
    extract(tiny_raw, tmp_path / "single", stride=2, workers=1)
    data = yaml.safe_load((tmp_path / "single/data.yaml").read_text())
    assert "channels" not in data and "motion" not in data and not (tmp_path / "single/motion").exists()
    assert dataset_motion(tmp_path / "single") is None
    check_dataset_motion(tmp_path / "single", None)


def test_other_offsets_re_extract_and_the_same_reuse_with_motion_files(tiny_raw, tmp_path):
    out = tmp_path / "ds"
    first = extract(tiny_raw, out, stride=2, workers=1, motion=MotionSpec((1,), "homography", 320))
    assert first["reused_sequences"] == 0
    second = extract(tiny_raw, out, stride=2, workers=1, motion=SPEC)
    assert second["reused_sequences"] == 0 and second["motion"] == SPEC.to_dict()  # offsets changed: decoded again
    before = {p: p.read_bytes() for p in (out / "motion").rglob("*.png")}
    third = extract(tiny_raw, out, stride=2, workers=1, motion=SPEC)
    assert third["reused_sequences"] == 3  # same spec: linked, motion files too
    assert {p: p.read_bytes() for p in (out / "motion").rglob("*.png")} == before and len(before) == 24
    check_dataset_motion(out, SPEC)


def _contents(root: Path) -> dict[str, str]:
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_shards_carry_motion_files_into_the_merge(tiny_raw, tmp_path, capsys):
    temporal = ["--set", "temporal.offsets=[1, 3]"]
    assert main(["data", "extract", "--source", str(tiny_raw), "--out", "single", "--workers", "1", *temporal]) == 0
    for k in range(2):
        shard = ["data", "extract", "--source", str(tiny_raw), "--out", f"shard{k}", "--shard", f"{k}/2"]
        assert main([*shard, "--workers", "1", *temporal]) == 0
    merge = ["data", "extract", "--source", str(tiny_raw), "--out", "merged", "--merge", "shard0", "--merge", "shard1"]
    capsys.readouterr()
    assert main([*merge, *temporal]) == 0
    assert '"reused_sequences": 3' in capsys.readouterr().out
    single, merged = _contents(tmp_path / "single"), _contents(tmp_path / "merged")
    assert sum(k.startswith("motion/") for k in single) == 24 and merged == single


def test_yolo_import_with_offsets_is_one_line_and_writes_nothing(tmp_path, motion_data, capsys):
    code = main(["data", "extract", "--source", str(motion_data), "--out", "ds", "--set", "temporal.offsets=[1]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no frame order" in err and "\n" not in err, err
    assert not (tmp_path / "ds").exists()


def test_frame_folders_get_motion_from_their_decoded_frames(tiny_raw, tmp_path):
    """MOT ``img1/`` folders: JPEG frames are still copied byte for byte, and the motion of every kept frame is the
    buffer over the decoded frame files (PNG frames are the video's own pixels, so the maps equal the video's)."""
    from tests.test_data import _copy, _video_to_img1

    raw = _copy(tiny_raw, tmp_path)
    jpegs = _video_to_img1(raw / "train/uav_train_0000", ".jpg")
    pngs = _video_to_img1(raw / "train/uav_train_0001", ".png")
    out = tmp_path / "ds"
    extract(raw, out, stride=2, workers=1, motion=SPEC)
    video_maps = _source_maps(tiny_raw)
    for frames, name in ((jpegs, "uav_train_0000"), (pngs, "uav_train_0001")):
        buffer = MotionBuffer(SPEC)
        maps = [buffer.push(cv2.imread(str(p))) for p in frames]
        for index in range(0, len(frames), 2):
            image = out / f"images/train/{name}_{index:06d}.jpg"
            got = np.stack([cv2.imread(str(motion_path(image, d)), cv2.IMREAD_GRAYSCALE) for d in SPEC.offsets], 2)
            assert np.array_equal(got, maps[index]), image.name
            if name == "uav_train_0001":
                assert np.array_equal(got, video_maps[name][index])
            else:
                assert image.read_bytes() == frames[index].read_bytes()
    check_dataset_motion(out, SPEC)


def test_noise_goes_into_the_source_frames_and_motion_is_recomputed(motion_data, tmp_path):
    """The robustness sweep's noisy copy of a motion dataset: at sigma 0 it reproduces the extracted motion maps
    exactly (same source frames, same function); at sigma 25 every channel sees the noise."""
    from csfnet.data.noisy_motion import source_root
    from csfnet.robustness import _noisy_dataset

    raw = source_root(motion_data)
    images = sorted((motion_data / "images/val").glob("*.jpg"))
    names = {0: "uav"}
    clean = yaml.safe_load(_noisy_dataset(images, names, tmp_path / "s0", 0, 0, SPEC, raw).read_text())
    assert clean["channels"] == 5 and clean["motion"] == SPEC.to_dict()
    for image in images:
        copy = tmp_path / "s0/images/val" / f"{image.stem}.png"
        assert np.array_equal(load_stacked(copy, SPEC)[..., 3:], load_stacked(image, SPEC)[..., 3:]), image.name
    _noisy_dataset(images, names, tmp_path / "s25", 25, 0, SPEC, raw)
    changed = [
        not np.array_equal(load_stacked(tmp_path / "s25/images/val" / f"{i.stem}.png", SPEC), load_stacked(i, SPEC))
        for i in images
    ]
    assert all(changed) and (tmp_path / "s25/labels/val").is_dir()
    check_dataset_motion(tmp_path / "s25", SPEC)
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "report.json").write_text('{"source": "../nowhere"}')
    with pytest.raises(DataError, match="source frames are not reachable"):
        source_root(moved)
