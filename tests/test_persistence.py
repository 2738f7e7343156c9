"""Track-level filtering: on hand-built sequences the filter drops one-frame blips and keeps the track (its first
frames too when offline), through ultralytics' real ByteTrack as ``csfnet detect`` runs it, its settings, and a real
``csfnet eval --track`` reporting the tracks with and without it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from csfnet.detect.persistence import PersistenceFilter, PersistenceRule, filter_mot, rescore_offline
from csfnet.errors import SettingsError
from csfnet.settings import Settings

TARGET, BLIP = 1, 2  # track ids
FRAMES = 10


def constructed_sequence() -> np.ndarray:
    """MOT rows ``frame, id, x, y, w, h, conf``: a target moving 4 px a frame for 10 frames (a confidence dip to
    0.3 on frame 7) and a confident one-frame blip elsewhere on frame 5."""
    target = [[f, TARGET, 10 + 4 * (f - 1), 20, 8, 6, 0.3 if f == 7 else 0.7] for f in range(1, FRAMES + 1)]
    blip = [[5, BLIP, 120, 80, 6, 6, 0.9]]
    return np.array(sorted(target + blip), float)


def test_online_suppress_drops_the_blip_and_keeps_the_track_after_min_hits():
    rows = constructed_sequence()
    kept = filter_mot(rows, PersistenceRule(mode="suppress", min_hits=3, window=10))
    assert BLIP not in kept[:, 1]
    assert kept[:, 0].tolist() == list(range(3, FRAMES + 1))  # the target from its third frame on: the latency
    assert (kept[:, 1] == TARGET).all()
    dip = kept[kept[:, 0] == 7][0, 6]
    assert dip == pytest.approx(np.mean([0.7] * 6 + [0.3]))  # frames 1-7 so far: boosted above its own 0.3


def test_offline_keeps_the_whole_track_including_its_first_frames():
    rows = constructed_sequence()
    kept = filter_mot(rows, PersistenceRule(min_hits=3, window=10), offline=True)
    assert BLIP not in kept[:, 1] and kept[:, 0].tolist() == list(range(1, FRAMES + 1))
    assert kept[kept[:, 0] == 7][0, 6] == pytest.approx(np.mean([0.7] * 9 + [0.3]))
    assert (kept[kept[:, 0] != 7][:, 6] == 0.7).all()  # never lowered below its own confidence


def test_rescore_keeps_young_detections_with_lower_confidence():
    rows = constructed_sequence()
    rule = PersistenceRule(mode="rescore", min_hits=3, window=1, young_factor=0.5)
    out = filter_mot(rows, rule)
    assert len(out) == len(rows)
    blip = out[out[:, 1] == BLIP][0]
    assert blip[6] == pytest.approx(0.45)  # 0.9 x 0.5: now ranked below the target's 0.7
    assert out[(out[:, 1] == TARGET) & (out[:, 0] <= 2)][:, 6] == pytest.approx([0.35, 0.35])
    assert out[(out[:, 1] == TARGET) & (out[:, 0] == 7)][0, 6] == pytest.approx(0.3)  # window 1: no boost
    keep, scores = rescore_offline(rows[:, 0], rows[:, 1], rows[:, 6], rule)
    assert keep.all() and scores[rows[:, 1] == BLIP] == pytest.approx([0.45])


def test_the_online_filter_is_causal_and_passes_untracked_rows():
    """Judging frame by frame gives what the whole-sequence helper gives; rows without a track id pass as they are."""
    rows, rule = constructed_sequence(), PersistenceRule(min_hits=2)
    online, kept = PersistenceFilter(rule), []
    for f in range(1, FRAMES + 1):
        at = rows[rows[:, 0] == f]
        keep, scores = online.update(at[:, 1], at[:, 6])
        kept += [[*r[:6], s] for r, s in zip(at[keep], scores[keep])]
    assert np.array_equal(np.array(kept), filter_mot(rows, rule))
    untracked = np.array([[0, 0, 5, 5, 0.8, 0, -1]])  # x1, y1, x2, y2, score, class, id
    assert np.array_equal(PersistenceFilter(rule).filter_rows(untracked), untracked)
    assert PersistenceFilter(rule).filter_rows(np.zeros((0, 7))).shape == (0, 7)


def test_bytetrack_with_the_filter_drops_a_two_frame_blip_and_keeps_the_target():
    """ultralytics' ByteTrack already hides a one-frame blip (a new track is confirmed by its second detection);
    a two-frame false alarm gets through it and the filter removes it, while the target keeps one ID."""
    from csfnet.detect.tracker import Tracker

    frame = np.zeros((128, 160, 3), np.uint8)
    reported = {}
    for persistence in (None, {"min_hits": 3}):
        tracker, out = Tracker("bytetrack", persistence=persistence), []
        for f in range(1, FRAMES + 1):
            dets = [[10 + 2 * f, 20, 18 + 2 * f, 26, 0.8, 0]]  # x1, y1, x2, y2, score, class
            if f in (5, 6):
                dets.append([120, 80, 126, 86, 0.9, 0])
            out += [(f, *t) for t in tracker.update(np.array(dets, np.float32), frame)]
        reported[persistence is not None] = np.array(out)  # frame, x1, y1, x2, y2, id, score, class
    plain, filtered = reported[False], reported[True]
    assert (plain[:, 1] > 100).any()  # the blip is a track without the filter
    assert not (filtered[:, 1] > 100).any() and len(np.unique(filtered[:, 5])) == 1
    first = np.flatnonzero(plain[:, 1] < 100)[0]
    assert filtered[0, 0] == plain[first, 0] + 2  # the target from its third reported frame on


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"detect.persistence.min_hit": 2}, "unknown key 'detect.persistence.min_hit' (did you mean"),
        ({"detect.persistence.mode": "soft"}, "detect.persistence.mode: 'soft'"),
        ({"detect.persistence.min_hits": 0}, "detect.persistence.min_hits: 0: Input should be greater than 0"),
        ({"detect.persistence.young_factor": 2}, "detect.persistence.young_factor: 2"),
        ({"detect.track_args": {"track_bufer": 60}}, "'track_bufer' is not a tracker setting (did you mean"),
    ],
)
def test_bad_persistence_settings_are_schema_errors(values, message):
    with pytest.raises(SettingsError) as error:
        Settings().override(values)
    assert message in str(error.value)


def test_settings_default_to_today_and_reach_detect(tmp_path):
    from csfnet.detect import detect

    assert Settings().detect.options()["persistence"] is None  # enabled: false leaves detect unfiltered
    on = Settings().override({"detect.persistence.enabled": True, "detect.persistence.mode": "rescore"})
    assert on.detect.options()["persistence"] == {"mode": "rescore", "min_hits": 3, "window": 10, "young_factor": 0.5}
    buffer = Settings().override({"detect.track_args.track_buffer": 60}).detect.options()
    assert buffer["tracker_overrides"] == {"track_buffer": 60}
    with pytest.raises(SettingsError, match="needs a tracker"):
        detect("model.pt", "video.mp4", tmp_path / "out", persistence={"min_hits": 3})
    assert not (tmp_path / "out").exists()
    with pytest.raises(SettingsError, match="min_hits >= 1"):  # the Python API: a one-line user error too
        PersistenceRule(min_hits=0)


@pytest.mark.slow
def test_eval_track_reports_tracks_with_and_without_the_filter(tiny_weights, tiny_data, tiny_raw, tmp_path):
    """A real `csfnet eval --track` on the session's one-epoch model: tracking.md has the three rows, and the
    filter only removes tracked detections (online within offline within the unfiltered ones)."""
    from csfnet.cli import main

    low = "{track_high_thresh: 0.002, track_low_thresh: 0.001, new_track_thresh: 0.002}"  # one-epoch scores
    settings = ["detect.conf=0.001", "detect.slice=0", f"detect.track_args={low}", "detect.persistence.min_hits=2"]
    args = ["eval", "--weights", str(tiny_weights), "--data", str(tiny_data), "--out", str(tmp_path / "eval")]
    args += ["--track", "bytetrack", "--raw", str(tiny_raw), "--no-mlflow", "--set", "args.imgsz=64"]
    assert main([*args, *(x for s in settings for x in ("--set", s))]) == 0
    table = (tmp_path / "eval" / "tracking.md").read_text()
    assert [line.split("|")[1].strip() for line in table.splitlines()[4:]] == ["none", "online", "offline"]
    result = json.loads((tmp_path / "eval" / "tracking.json").read_text())
    none, p = result["overall"], result["persistence"]
    online, offline = p["online"]["overall"], p["offline"]["overall"]
    assert p["rule"]["min_hits"] == 2 and none["gt_tracks"] > 0
    assert online["false_positives"] <= offline["false_positives"] <= none["false_positives"]
    assert online["false_negatives"] >= offline["false_negatives"] >= none["false_negatives"]
    for metrics in (none, online, offline):
        assert 0 <= metrics["AP50"] <= 1 and 0 <= metrics["AP50_95"] <= metrics["AP50"] and metrics["MOTA"] <= 1
    print(table)


@pytest.mark.slow
def test_csfnet_detect_writes_what_eval_scores_as_online(tiny_weights, tiny_raw, tmp_path):
    """`csfnet detect` with `detect.persistence.enabled` writes the unfiltered run's tracks passed through the online
    filter, which is what `eval --track` scores as its online row."""
    from csfnet.cli import main

    video = next((tiny_raw / "val").rglob("*.mp4"))
    low = "{track_high_thresh: 0.002, track_low_thresh: 0.001, new_track_thresh: 0.002}"
    args = ["detect", "--model", str(tiny_weights), "--source", str(video), "--set", "detect.conf=0.001"]
    for setting in ("detect.slice=0", "detect.save_video=false", "detect.track=bytetrack", f"detect.track_args={low}"):
        args += ["--set", setting]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    on = ["--set", "detect.persistence.enabled=true", "--set", "detect.persistence.min_hits=2"]
    assert main([*args, *on, "--out", str(tmp_path / "filtered")]) == 0
    plain, filtered = (_mot(tmp_path / d / "mot.txt") for d in ("plain", "filtered"))
    again = filter_mot(plain[:, :7], PersistenceRule(min_hits=2))
    assert len(filtered) == len(again) and np.allclose(filtered[:, :7], again, atol=1e-3)
    assert len(plain) > len(filtered)  # the one-epoch model's short tracks are dropped


def _mot(path) -> np.ndarray:
    text = path.read_text().strip()
    return np.loadtxt(path, delimiter=",", ndmin=2) if text else np.zeros((0, 10))
