"""One raw root mixing Anti-UAV, MOT, Drone-vs-Bird and YOLO-frame sequences; each format's bad-input errors."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from csfnet.data.extract import extract
from csfnet.data.synth import SynthSpec, generate
from csfnet.errors import DataError

from .conftest import TINY


def _mot_rows(seq: Path) -> list[tuple[int, float, float, float, float]]:
    rows = [line.split(",") for line in (seq / "gt/gt.txt").read_text().split()]
    return [(int(r[0]) - 1, *(float(v) for v in r[2:6])) for r in rows]


def _to_dvb(seq: Path) -> None:
    """MOT sequence -> Drone-vs-Bird: ``<stem>.txt`` with ``frame n x y w h drone ...`` (0-based frames)."""
    rows = _mot_rows(seq)
    lines = []
    for frame in range(TINY.frames):
        objs = [r[1:] for r in rows if r[0] == frame]
        lines.append(" ".join([str(frame), str(len(objs))] + [f"{x} {y} {w} {h} drone" for x, y, w, h in objs]))
    (seq / f"{seq.name}.txt").write_text("\n".join(lines) + "\n")
    next(seq.glob("*.mp4")).rename(seq / f"{seq.name}.mp4")  # one txt per video, named like it
    shutil.rmtree(seq / "gt")


def _to_yolo(seq: Path) -> None:
    """MOT sequence -> YOLO frames: ``images/000000.png`` + ``labels/000000.txt`` (normalised)."""
    rows = _mot_rows(seq)
    video = next(seq.glob("*.mp4"))
    cap = cv2.VideoCapture(str(video))
    (seq / "images").mkdir()
    (seq / "labels").mkdir()
    frame = 0
    while (read := cap.read())[0]:
        cv2.imwrite(str(seq / f"images/{frame:06d}.png"), read[1])
        h, w = read[1].shape[:2]
        objs = [r[1:] for r in rows if r[0] == frame]
        text = "".join(f"0 {(x + bw / 2) / w} {(y + bh / 2) / h} {bw / w} {bh / h}\n" for x, y, bw, bh in objs)
        (seq / f"labels/{frame:06d}.txt").write_text(text)
        frame += 1
    cap.release()
    video.unlink()
    shutil.rmtree(seq / "gt")


@pytest.fixture
def mixed_root(tmp_path: Path) -> tuple[Path, dict[str, list[tuple]]]:
    """train: MOT, Anti-UAV (visible.mp4 + visible.json), Drone-vs-Bird; val: YOLO frames, Anti-UAV (_label.json).
    Returns the root and every sequence's boxes (frame, x, y, w, h) as the source states them."""
    mot = generate(tmp_path / "mot", TINY, workers=2)
    auav = generate(tmp_path / "auav", SynthSpec(**{**TINY.__dict__, "format": "anti-uav", "seed": 9}), workers=2)
    root = tmp_path / "raw"
    moves = {
        "train/mot_a": mot / "train/uav_train_0000",
        "train/dvb_a": mot / "train/uav_train_0001",
        "val/yolo_a": mot / "val/uav_val_0000",
        "train/auav_a": auav / "train/uav_train_0000",
        "val/auav_b": auav / "val/uav_val_0000",
    }
    truth = {}
    for dst, src in moves.items():
        shutil.move(src, root / dst)
        seq = root / dst
        if (seq / "gt").is_dir():
            truth[seq.name] = _mot_rows(seq)
        else:
            ann = json.loads(next(seq.glob("*.json")).read_text())
            truth[seq.name] = [(f, *r) for f, (e, r) in enumerate(zip(ann["exist"], ann["gt_rect"])) if e]
    _to_dvb(root / "train/dvb_a")
    _to_yolo(root / "val/yolo_a")
    (root / "train/auav_a/uav_train_0000.mp4").rename(root / "train/auav_a/visible.mp4")
    (root / "train/auav_a/uav_train_0000.json").rename(root / "train/auav_a/visible.json")
    (root / "val/auav_b/uav_val_0000.json").rename(root / "val/auav_b/uav_val_0000_label.json")
    return root, truth


def test_mixed_root_extracts_every_box_back_in_place(mixed_root, tmp_path):
    root, truth = mixed_root
    report = extract(root, tmp_path / "ds", workers=2, report_dir=tmp_path / "metrics")
    layouts = {k.split("/")[1]: s["format"] for k, s in report["sequences"].items()}
    assert layouts == {
        "mot_a": "mot",
        "dvb_a": "drone-vs-bird",
        "auav_a": "anti-uav",
        "yolo_a": "yolo",
        "auav_b": "anti-uav",
    }
    assert report["sequences"]["val/yolo_a"]["codec"] == "png"
    for name, boxes in truth.items():
        split = "val" if name in ("yolo_a", "auav_b") else "train"
        got = []
        for label in sorted(p for p in (tmp_path / "ds/labels" / split).glob(f"{name}_*.txt") if p.stat().st_size):
            frame = int(label.stem.rsplit("_", 1)[1])
            for _, cx, cy, w, h in np.loadtxt(label, ndmin=2):
                got.append(
                    (frame, (cx - w / 2) * TINY.width, (cy - h / 2) * TINY.height, w * TINY.width, h * TINY.height)
                )
        assert len(got) == len(boxes) > 0, name
        for g, b in zip(sorted(got), sorted(boxes)):
            assert g[0] == b[0] and np.abs(np.subtract(g[1:], b[1:])).max() < 1.0, (name, g, b)
    saved = json.loads((tmp_path / "metrics/ingest.json").read_text())
    assert saved["splits"]["train"]["objects"] == sum(len(truth[n]) for n in ("mot_a", "dvb_a", "auav_a"))
    assert set(saved["splits"]["train"]["size_px"]) == {"p5", "p25", "p50", "p75", "p95"} and "sequences" not in saved
    per_sequence = json.loads((tmp_path / "metrics/sequences.json").read_text())
    assert per_sequence["train/dvb_a"]["objects"] == len(truth["dvb_a"]) and per_sequence["train/dvb_a"]["fps"] == 25
    page = (tmp_path / "metrics/ingest.html").read_text()
    assert "data:image/png;base64," in page and page.count("data:image/jpeg;base64,") >= 4
    assert "dvb_a" in page and "http" not in page.replace("http-equiv", "")  # self-contained


def _edit_line(path: Path, index: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = new
    path.write_text("\n".join(lines) + "\n")


BAD = {
    "dvb token count": (
        lambda r: _edit_line(r / "train/dvb_a/dvb_a.txt", 2, "2 1 10 10 5"),
        r"sequence dvb_a, file .*dvb_a\.txt, line 3, frame 2: expected",
    ),
    "dvb unknown class": (
        lambda r: _edit_line(r / "train/dvb_a/dvb_a.txt", 3, "3 1 10 10 5 5 bird"),
        r"sequence dvb_a, file .*dvb_a\.txt, frame 3: unknown class 'bird'",
    ),
    "dvb box outside": (
        lambda r: _edit_line(r / "train/dvb_a/dvb_a.txt", 4, "4 1 90 10 20 5 drone"),
        r"sequence dvb_a, file .*dvb_a\.txt, frame 4: .*outside",
    ),
    "dvb missing file": (lambda r: (r / "train/dvb_a/dvb_a.txt").unlink(), r"sequence dvb_a: cannot tell its layout"),
    "yolo bad row": (
        lambda r: (r / "val/yolo_a/labels/000003.txt").write_text("0 0.5 0.5\n"),
        r"sequence yolo_a, file .*labels/000003\.txt, frame 3, line 1: expected 'class cx cy w h'",
    ),
    "yolo unknown class": (
        lambda r: (r / "val/yolo_a/labels/000005.txt").write_text("2 0.5 0.5 0.1 0.1\n"),
        r"sequence yolo_a, file .*labels/000005\.txt, frame 5: unknown class 2",
    ),
    "yolo unreadable frame": (
        lambda r: (r / "val/yolo_a/images/000002.png").write_bytes(b"no png"),
        r"yolo_a.*000002\.png \(frame 2\)",
    ),
    "anti-uav exist without box": (
        lambda r: _set_rect(r / "val/auav_b/uav_val_0000_label.json", 1, []),
        r"sequence auav_b, file .*uav_val_0000_label\.json, frame 1: exist=1 but gt_rect",
    ),
    "anti-uav nan": (
        lambda r: _set_rect(r / "train/auav_a/visible.json", 2, [float("nan"), 1, 4, 4]),
        r"sequence auav_a, file .*visible\.json, frame 2: .*NaN",
    ),
}


def _set_rect(path: Path, frame: int, rect: list) -> None:
    data = json.loads(path.read_text())
    data["exist"][frame], data["gt_rect"][frame] = 1, rect
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_sequence_file_and_frame(mixed_root, tmp_path, case):
    root, _ = mixed_root
    damage, message = BAD[case]
    damage(root)
    with pytest.raises(DataError, match=message):
        extract(root, tmp_path / "ds", workers=2, report_dir=tmp_path / "metrics")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "metrics").exists()
