"""Synthesis, ingestion of both public formats, extraction, validation errors, statistics."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from ultralytics.data import YOLODataset
from ultralytics.data.utils import check_det_dataset

from csfnet.data import extract as extract_module
from csfnet.data.extract import extract
from csfnet.data.stats import dataset_stats
from csfnet.data.synth import SynthSpec, generate
from csfnet.errors import DataError

from .conftest import TINY


def _decoded_frames(video: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while (frame := cap.read())[0]:
        frames.append(frame[1])
    return frames


def _annotation_count(raw: Path, fmt: str) -> dict[str, int]:
    counts = {}
    for split in ("train", "val"):
        total = 0
        for seq in (raw / split).iterdir():
            if fmt == "mot":
                total += len((seq / "gt" / "gt.txt").read_text().split())
            else:
                total += sum(json.loads((seq / f"{seq.name}.json").read_text())["exist"])
        counts[split] = total
    return counts


def test_generator_is_deterministic(tmp_path):
    a, b = generate(tmp_path / "a", TINY), generate(tmp_path / "b", TINY)
    for ann in a.rglob("gt.txt"):
        assert ann.read_text() == (b / ann.relative_to(a)).read_text()
    for video in a.rglob("*.mp4"):
        fa, fb = _decoded_frames(video), _decoded_frames(b / video.relative_to(a))
        assert len(fa) == TINY.frames == len(fb)
        assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
    other = generate(tmp_path / "c", SynthSpec(**{**TINY.__dict__, "seed": TINY.seed + 1}))
    assert (other / "train/uav_train_0000/gt/gt.txt").read_text() != (a / "train/uav_train_0000/gt/gt.txt").read_text()


def test_generated_targets_are_micro_sized(tiny_raw):
    rows = [line.split(",") for f in tiny_raw.rglob("gt.txt") for line in f.read_text().split()]
    sizes = np.array([np.sqrt(float(r[4]) * float(r[5])) for r in rows])
    assert len(sizes) > 0 and sizes.min() >= 1 and sizes.max() <= 32 and np.median(sizes) < 12


@pytest.mark.parametrize("fmt", ["mot", "anti-uav"])
def test_synth_extract_load_with_ultralytics_counts_match(tmp_path, fmt):
    raw = generate(tmp_path / "raw", SynthSpec(**{**TINY.__dict__, "format": fmt}))
    report = extract(raw, tmp_path / "ds", workers=2)
    data = check_det_dataset(str(tmp_path / "ds" / "data.yaml"))
    expected = _annotation_count(raw, fmt)
    for split in ("train", "val"):
        dataset = YOLODataset(img_path=data[split], data=data, task="detect", imgsz=64, augment=False)
        assert len(dataset) == report["splits"][split]["images"] == len(list((raw / split).iterdir())) * TINY.frames
        assert sum(len(label["cls"]) for label in dataset.labels) == expected[split] == report["splits"][split]["boxes"]
    name = sorted((tmp_path / "ds/images/train").iterdir())[3].name
    assert name == "uav_train_0000_000003.jpg"


def test_stride_and_rerun_reuses_finished_sequences(tiny_raw, tmp_path, monkeypatch):
    first = extract(tiny_raw, tmp_path / "ds", stride=2)
    assert first["splits"]["train"]["images"] == 2 * TINY.frames // 2
    stamp = (tmp_path / "ds/images/val/uav_val_0000_000000.jpg").stat().st_ino
    again = extract(tiny_raw, tmp_path / "ds", stride=2)
    assert again["reused_sequences"] == 3 and again["splits"] == first["splits"]
    assert (tmp_path / "ds/images/val/uav_val_0000_000000.jpg").stat().st_ino == stamp  # linked, not re-decoded
    monkeypatch.setattr(extract_module, "OUTPUT_VERSION", extract_module.OUTPUT_VERSION + 1)
    assert extract(tiny_raw, tmp_path / "ds", stride=2)["reused_sequences"] == 0  # newer code writes afresh


def _dvc_hash(folder: Path) -> str:
    """The md5 DVC records for a folder output (``<md5>.dir``), computed by DVC's own hashing library."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    _, _, obj = build(HashFileDB(fs, str(folder.parent / ".dvc-cache")), str(folder), fs, "md5", dry_run=True)
    return obj.hash_info.value


def test_dataset_hash_depends_on_content_only(tiny_raw, tmp_path):
    """Two clones holding the same raw files with other times get the same dataset, so the same DVC hash; so does a
    re-run that reuses every sequence. Reuse follows content: an edit keeping size and time is extracted again."""
    clone = _copy(tiny_raw, tmp_path)
    for n, path in enumerate(sorted(p for p in clone.rglob("*") if p.is_file())):
        os.utime(path, ns=(10**9 * (1 + n), 10**9 * (1 + n)))  # as a fresh checkout: every file has another time
    extract(tiny_raw, tmp_path / "here", stride=2, workers=2)
    extract(clone, tmp_path / "there", stride=2, workers=2)
    assert _dvc_hash(tmp_path / "here") == _dvc_hash(tmp_path / "there")
    assert extract(tiny_raw, tmp_path / "here", stride=2, workers=2)["reused_sequences"] == 3
    assert _dvc_hash(tmp_path / "here") == _dvc_hash(tmp_path / "there")

    gt = clone / "train/uav_train_0000/gt/gt.txt"
    before = gt.stat()
    row = gt.read_text().splitlines()[0].split(",")
    _edit_gt(clone, 0, ",".join([*row[:2], f"{float(row[2]) - 1:.2f}", *row[3:]]))  # box moved 1 px left
    os.utime(gt, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert gt.stat().st_size == before.st_size
    assert extract(clone, tmp_path / "there", stride=2, workers=2)["reused_sequences"] == 2
    assert _dvc_hash(tmp_path / "here") != _dvc_hash(tmp_path / "there")


def _video_to_img1(seq: Path, suffix: str) -> list[Path]:
    """Replace a MOT sequence's video by an ``img1/`` folder of frames (``000001.jpg``... as in MOTChallenge)."""
    video = next(seq.glob("*.mp4"))
    (seq / "img1").mkdir()
    paths = []
    for index, frame in enumerate(_decoded_frames(video), 1):
        paths.append(seq / "img1" / f"{index:06d}{suffix}")
        cv2.imwrite(str(paths[-1]), frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
    video.unlink()
    return paths


def test_mot_frame_folders_keep_jpeg_bytes_and_encode_other_formats(tiny_raw, tmp_path):
    raw = _copy(tiny_raw, tmp_path)
    jpegs = _video_to_img1(raw / "train/uav_train_0000", ".jpg")
    pngs = _video_to_img1(raw / "train/uav_train_0001", ".png")
    report = extract(raw, tmp_path / "ds", stride=2, workers=2)
    images = tmp_path / "ds/images/train"
    assert report["splits"] == extract(tiny_raw, tmp_path / "from-video", stride=2)["splits"]
    for index in range(0, TINY.frames, 2):
        copied = images / f"uav_train_0000_{index:06d}.jpg"
        assert copied.read_bytes() == jpegs[index].read_bytes()  # no second round of JPEG compression
        encoded = cv2.imread(str(images / f"uav_train_0001_{index:06d}.jpg"))
        assert np.abs(encoded.astype(int) - cv2.imread(str(pngs[index])).astype(int)).mean() < 2
    assert not (images / "uav_train_0000_000001.jpg").exists()

    jpegs[3].write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"uav_train_0000.*000004\.jpg \(frame 3\)"):
        extract(raw, tmp_path / "bad", workers=2)
    assert not (tmp_path / "bad").exists()


def _copy(tiny_raw: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    return raw


def _edit_gt(raw: Path, row: int, new: str) -> None:
    gt = raw / "train/uav_train_0000/gt/gt.txt"
    lines = gt.read_text().splitlines()
    lines[row] = new
    gt.write_text("\n".join(lines) + "\n")


BAD_INPUTS = {
    "missing video": (
        lambda raw: (raw / "train/uav_train_0001/uav_train_0001.mp4").unlink(),
        "uav_train_0001.*no video",
    ),
    "corrupt video": (
        lambda raw: (raw / "train/uav_train_0001/uav_train_0001.mp4").write_bytes(b"\x00garbage" * 100),
        "uav_train_0001.*corrupt",
    ),
    "truncated video": (
        lambda raw: _truncate(raw / "val/uav_val_0000/uav_val_0000.mp4"),
        "uav_val_0000.*(truncated|corrupt)",
    ),
    "box outside": (lambda raw: _edit_gt(raw, 0, "1,1,90,10,20,10,1,1,1"), "uav_train_0000.*frame 0.*outside"),
    "non-positive size": (lambda raw: _edit_gt(raw, 0, "2,1,10,10,0,5,1,1,1"), "uav_train_0000.*frame 1.*non-positive"),
    "nan": (lambda raw: _edit_gt(raw, 0, "1,1,nan,10,5,5,1,1,1"), "uav_train_0000.*frame 0.*NaN"),
    "unknown class": (lambda raw: _edit_gt(raw, 0, "1,1,10,10,5,5,1,7,1"), "uav_train_0000.*frame 0.*unknown class 7"),
    "annotation longer than video": (
        lambda raw: _edit_gt(raw, 0, f"{TINY.frames + 3},1,10,10,5,5,1,1,1"),
        "uav_train_0000.*covers 11 frames but the video has 8",
    ),
    "empty val split": (lambda raw: shutil.rmtree(raw / "val/uav_val_0000"), "val/ holds no sequence"),
    "same sequence in two splits": (
        lambda raw: shutil.copytree(raw / "train/uav_train_0000", raw / "val/uav_train_0000"),
        "uav_train_0000.*two splits",
    ),
}


def _truncate(video: Path) -> None:
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_clearly_and_leaves_nothing(tiny_raw, tmp_path, case):
    raw = _copy(tiny_raw, tmp_path)
    damage, message = BAD_INPUTS[case]
    damage(raw)
    with pytest.raises(DataError, match=message):
        extract(raw, tmp_path / "ds", workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no dataset, no staging leftovers


def test_anti_uav_length_mismatch_names_the_file(tmp_path):
    raw = generate(tmp_path / "raw", SynthSpec(**{**TINY.__dict__, "format": "anti-uav"}))
    ann = raw / "val/uav_val_0000/uav_val_0000.json"
    data = json.loads(ann.read_text())
    ann.write_text(json.dumps({"exist": data["exist"][:-2], "gt_rect": data["gt_rect"][:-2]}))
    with pytest.raises(DataError, match=r"uav_val_0000.*uav_val_0000\.json covers 6 frames but the video has 8"):
        extract(raw, tmp_path / "ds")
    report = extract(raw, tmp_path / "ds", fix=True)
    assert report["fixes"]["skipped_frames"] == 2
    assert report["splits"]["val"]["images"] == 6


def test_anti_uav_release_layout_uses_the_visible_stream_and_a_test_split(tmp_path):
    """Anti-UAV ships visible.mp4/visible.json next to infrared.mp4/infrared.json in every sequence folder."""
    raw = generate(tmp_path / "raw", SynthSpec(**{**TINY.__dict__, "format": "anti-uav"}))
    seq = raw / "train/uav_train_0000"
    (seq / "uav_train_0000.mp4").rename(seq / "visible.mp4")
    (seq / "uav_train_0000.json").rename(seq / "visible.json")
    shutil.copy(raw / "train/uav_train_0001/uav_train_0001.mp4", seq / "infrared.mp4")
    (seq / "infrared.json").write_text(json.dumps({"exist": [1] * TINY.frames, "gt_rect": [[1, 1, 3, 3]] * 9}))
    (raw / "test/uav_test_0000").mkdir(parents=True)
    for src in (raw / "val/uav_val_0000").iterdir():
        shutil.copy(src, raw / "test/uav_test_0000" / src.name.replace("val", "test"))
    expected = sum(json.loads((seq / "visible.json").read_text())["exist"])

    report = extract(raw, tmp_path / "ds", workers=2)
    data = check_det_dataset(str(tmp_path / "ds/data.yaml"))
    assert report["splits"]["test"]["images"] == TINY.frames and "test" in data
    labels = (tmp_path / "ds/labels/train").glob("uav_train_0000_*.txt")
    assert sum(len(f.read_text().splitlines()) for f in labels) == expected  # not infrared.json's box per frame

    (seq / "visible.mp4").rename(seq / "zoom.mp4")
    with pytest.raises(DataError, match=r"uav_train_0000: several videos \(infrared\.mp4, zoom\.mp4\)"):
        extract(raw, tmp_path / "ambiguous")
    assert not (tmp_path / "ambiguous").exists()


def test_anti_uav_first_release_uses_rgb_beside_ir_and_label_suffix(tmp_path):
    """Anti-UAV's first release: RGB.mp4 + RGB_label.json next to IR.mp4 + IR_label.json; later `<stem>_label.json`."""
    raw = generate(tmp_path / "raw", SynthSpec(**{**TINY.__dict__, "format": "anti-uav"}))
    seq = raw / "train/uav_train_0000"
    (seq / "uav_train_0000.mp4").rename(seq / "RGB.mp4")
    (seq / "uav_train_0000.json").rename(seq / "RGB_label.json")
    shutil.copy(raw / "train/uav_train_0001/uav_train_0001.mp4", seq / "IR.mp4")
    (seq / "IR_label.json").write_text(json.dumps({"exist": [1] * TINY.frames, "gt_rect": [[1, 1, 3, 3]] * 9}))
    other = raw / "train/uav_train_0001"
    (other / "uav_train_0001.json").rename(other / "uav_train_0001_label.json")
    report = extract(raw, tmp_path / "ds", workers=2)
    rgb = json.loads((seq / "RGB_label.json").read_text())
    assert report["sequences"]["train/uav_train_0000"]["media"] == "RGB.mp4"
    assert report["sequences"]["train/uav_train_0000"]["objects"] == sum(rgb["exist"])


def test_fix_clips_boxes_and_counts_it(tiny_raw, tmp_path):
    raw = _copy(tiny_raw, tmp_path)
    _edit_gt(raw, 0, "1,1,90,10,20,10,1,1,1")
    report = extract(raw, tmp_path / "ds", fix=True)
    assert report["fixes"]["clipped_boxes"] == 1
    label = (tmp_path / "ds/labels/train/uav_train_0000_000000.txt").read_text().splitlines()
    assert any(abs(float(r.split()[1]) + float(r.split()[3]) / 2 - 1.0) < 1e-5 for r in label)  # right edge at 1


def test_cli_exits_non_zero_with_the_error(tiny_raw, tmp_path):
    raw = _copy(tiny_raw, tmp_path)
    _edit_gt(raw, 0, "1,1,nan,10,5,5,1,1,1")
    proc = subprocess.run(
        [sys.executable, "-m", "csfnet.cli", "data", "extract", "--source", str(raw), "--out", str(tmp_path / "ds")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "uav_train_0000" in proc.stderr and "NaN" in proc.stderr
    assert not (tmp_path / "ds").exists()


def test_yolo_dataset_is_imported_and_validated(tiny_data, tmp_path):
    report = extract(tiny_data.parent, tmp_path / "copy")
    assert report["splits"]["train"]["images"] == 2 * TINY.frames
    bad = tmp_path / "bad"
    shutil.copytree(tiny_data.parent, bad)
    next((bad / "labels/train").glob("*.txt")).write_text("3 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match="unknown class 3"):
        extract(bad, tmp_path / "copy2")
    assert not (tmp_path / "copy2").exists()


def test_stats_report_sizes_share_below_stride_and_plot(tiny_data, tmp_path):
    stats = dataset_stats(tiny_data, imgsz=64, out_dir=tmp_path / "stats")
    train = stats["splits"]["train"]
    assert train["objects"] > 0 and 0 < train["source_px"]["median"] < 24
    assert train["train_px"]["median"] < train["source_px"]["median"]  # 96 px frames shown at 64
    assert 0 <= train["below_stride_share"] <= 1
    assert stats["warning"] and "finest stride" in stats["warning"]
    assert (tmp_path / "stats/size_histogram.png").stat().st_size > 5000
    big = dataset_stats(tiny_data, imgsz=1024)
    assert big["splits"]["train"]["below_stride_share"] < train["below_stride_share"]


def test_stats_compare_downscaling_with_tiles_and_recommend(tiny_data):
    """96x64 frames: at imgsz 32 whole frames shrink 3x; 32 px tiles keep native scale."""
    stats = dataset_stats(tiny_data, imgsz=32, tile=32)
    tiling = stats["tiling"]
    assert tiling["tile_below_stride"] + 0.05 <= tiling["downscale_below_stride"]
    assert tiling["recommendation"] == "tile" and "extract.tile: 32" in tiling["reason"]
    whole = dataset_stats(tiny_data, imgsz=32, tile=128)["tiling"]  # frames fit in a tile: nothing to gain
    assert whole["recommendation"] == "downscale" and whole["tile_below_stride"] == whole["downscale_below_stride"]
