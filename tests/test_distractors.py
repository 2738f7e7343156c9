"""False positives on the benchmark's distractors: the generator's birds and specks replayed exactly, each false
positive put on the right kind, per-frame counts a hand count confirms, and refusals for frames that are not the
benchmark's."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from csfnet.compare.distractors import (
    distractor_report,
    false_positives_by_kind,
    image_distractors,
    kind_of,
    markdown,
)
from csfnet.data.synth import SynthSpec, _render, distractors, generate
from csfnet.errors import DataError, InputNotFoundError
from csfnet.metrics import false_positives_per_image

SPEC = SynthSpec(train_videos=0, val_videos=3, frames=6, width=160, height=128, seed=5)


def test_replay_draws_the_same_video_and_finds_the_specks_in_it(tmp_path: Path) -> None:
    """Recording distractors leaves the random stream alone (identical frames), and every replayed speck is a dark
    or bright single pixel at its place in the generated frame."""
    for index in range(SPEC.val_videos):
        plain = [f for f, _ in _render(np.random.default_rng([SPEC.seed, 1, index]), SPEC, 1)]
        sink: list = []
        recorded = [f for f, _ in _render(np.random.default_rng([SPEC.seed, 1, index]), SPEC, 1, sink)]
        assert all(np.array_equal(a, b) for a, b in zip(plain, recorded)) and len(sink) == SPEC.frames
    generate(tmp_path / "raw", SPEC, workers=1)
    specks = 0
    for index in range(SPEC.val_videos):
        video = cv2.VideoCapture(str(tmp_path / "raw" / "val" / f"uav_val_{index:04d}" / f"uav_val_{index:04d}.mp4"))
        for boxes in distractors(SPEC, "val", index):
            ok, frame = video.read()
            assert ok
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY).astype(float)
            background = cv2.medianBlur(gray.astype(np.uint8), 5).astype(float)
            for kind, x, y, w, h in boxes:
                if kind == "speck":
                    specks += 1
                    assert w == h == 1
                    assert abs(gray[int(y), int(x)] - background[int(y), int(x)]) > 10  # stands out where replayed
    assert specks > 5


def test_kinds_by_hand() -> None:
    near = [("bird", 10.0, 10.0, 8.0, 4.0), ("speck", 50.0, 50.0, 1.0, 1.0)]
    assert kind_of(np.array([9, 9, 17, 15]), near) == "bird"  # overlaps the bird's box
    assert kind_of(np.array([0, 0, 30, 26]), near) == "bird"  # IoU 0.04, but its centre (15, 13) is in the box
    assert kind_of(np.array([52, 52, 58, 58]), near) == "speck"  # the speck (50.5, 50.5) within 2 px
    assert kind_of(np.array([53, 53, 58, 58]), near) == "other"  # 2.5 px away
    assert kind_of(np.array([100, 100, 105, 105]), near) == "other"


def test_false_positives_by_kind_count_per_frame_and_report_paired_differences() -> None:
    """Two frames with one target each. Row A: a hit, a bird FP, a speck FP and one below the operating point.
    Row B: the hit and an other FP. Matched detections and low scores never count."""
    truths = [np.array([[60.0, 60, 66, 66]]), np.array([[20.0, 80, 26, 86]])]
    near = [[("bird", 10.0, 10.0, 8.0, 4.0)], [("speck", 100.0, 30.0, 1.0, 1.0)]]
    a = [
        (np.array([[60, 60, 66, 66], [10, 10, 18, 14], [0, 0, 4, 4]]), np.array([0.9, 0.5, 0.2])),
        (np.array([[20, 80, 26, 86], [98, 28, 104, 34]]), np.array([0.8, 0.3])),
    ]
    b = [
        (np.array([[60, 60, 66, 66], [120, 100, 126, 106]]), np.array([0.9, 0.4])),
        (np.array([[20, 80, 26, 86]]), np.array([0.8])),
    ]
    ka, kb = (false_positives_by_kind(truths, p, near, conf=0.25) for p in (a, b))
    count = {k: false_positives_per_image(m, 0.25) for k, m in ka.items()}
    assert count == {"bird": 0.5, "speck": 0.5, "other": 0.0}
    assert {k: false_positives_per_image(m, 0.25) for k, m in kb.items()} == {"bird": 0, "speck": 0, "other": 0.5}

    cells = [({"config": "a"}, ka), ({"config": "b"}, kb)]
    report = distractor_report(cells, ["a", "b"], 0.25, resamples=200)
    row = report["rows"]["b"]
    assert row["bird"]["mean"] == 0 and row["delta_bird"]["mean"] == -0.5 and row["delta_other"]["mean"] == 0.5
    table = markdown(report)
    assert "| a | 1 | 0.50 | 0.50 | 0.00 | reference |" in table and "bird FP / frame" in table


def test_frames_that_are_not_the_benchmarks_are_refused(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    frame = tmp_path / "uav_val_0000_000002.jpg"
    cv2.imwrite(str(frame), np.zeros((SPEC.height, SPEC.width, 3), np.uint8))
    with pytest.raises(InputNotFoundError, match=r"no synth\.json"):
        image_distractors(raw, [frame])
    (raw / "synth.json").write_text(json.dumps(SPEC.__dict__))
    assert len(image_distractors(raw, [frame])) == 1
    tile = tmp_path / "uav_val_0000_000002_t0.jpg"
    cv2.imwrite(str(tile), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(DataError, match="not a whole frame"):
        image_distractors(raw, [tile])
    late = tmp_path / "uav_val_0000_000009.jpg"
    cv2.imwrite(str(late), np.zeros((SPEC.height, SPEC.width, 3), np.uint8))
    with pytest.raises(DataError, match="frame 9 but the sequence has 6"):
        image_distractors(raw, [late])
