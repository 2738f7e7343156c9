"""`csfnet detect`: runtimes, slicing, writers, serving parity and bad inputs, on the session's tiny model and real
synthetic videos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from csfnet.data.dataset import split_images
from csfnet.detect import Predictor, SliceOptions, detect, load_runtime
from csfnet.detect.run import JSONL, MOT, SUMMARY, VIDEO
from csfnet.detect.slicing import merge, windows
from csfnet.errors import CheckpointError, DataError, InputNotFoundError, SettingsError

pytestmark = pytest.mark.slow

CONF = 0.001  # the one-epoch model's scores are all low: there must be boxes to compare


@pytest.fixture(scope="module")
def onnx_models(tiny_weights, tiny_data, tmp_path_factory):
    """(FP32, INT8) exports of the session's model, made the way `csfnet export` makes them."""
    from csfnet.export import onnx_export, quantize_int8

    tmp = tmp_path_factory.mktemp("detect-models")
    staged = tmp / "model.pt"
    shutil.copy2(tiny_weights, staged)
    fp32 = onnx_export(staged, 64)
    return fp32, quantize_int8(fp32, tmp / "model-int8.onnx", tiny_data, 64, frames=8)


@pytest.fixture(scope="module")
def val_video(tiny_raw) -> Path:
    return next((tiny_raw / "val").rglob("*.mp4"))


def _images(data: Path, n: int = 4) -> list[np.ndarray]:
    return [cv2.imread(str(p)) for p in split_images(data, "val")[:n]]


def _matched_within(reference: np.ndarray, other: np.ndarray, min_score: float, px: float = 1.0) -> bool:
    """Every reference box scoring at least ``min_score`` has a box of ``other`` within ``px`` on every side."""
    ref = reference[reference[:, 4] >= min_score]
    if not len(ref):
        return True
    if not len(other):
        return False
    return bool((np.abs(ref[:, None, :4] - other[None, :, :4]).max(-1).min(1) <= px).all())


@pytest.mark.parametrize("slice_size", [None, 48])
def test_runtimes_agree_with_pytorch(onnx_models, tiny_weights, tiny_data, slice_size):
    images = _images(tiny_data)
    # no merging across slices: the one-epoch model scores many boxes the same, and a greedy merge of exact ties
    # depends on their order; every crop's detections must agree (the merge is tested on its own)
    slicing = SliceOptions(slice_size, overlap=0.2, merge_threshold=1.01)
    torch_rt = load_runtime(tiny_weights)
    reference = Predictor(torch_rt, CONF, slicing=slicing)(images)
    assert sum(len(d) for d in reference) > 0
    for path in onnx_models:
        runtime = load_runtime(path)
        assert runtime.imgsz == 64 and runtime.batch is None and runtime.names == {0: "uav"}
        got = Predictor(runtime, CONF, slicing=slicing)(images)
        for a, b in zip(reference, got):
            assert _matched_within(a, b, 5 * CONF) and _matched_within(b, a, 5 * CONF)
    assert load_runtime(onnx_models[1]).kind == "onnxruntime-int8"


def test_slicing_batches_every_crop_once(onnx_models):
    """Windows cover the frame inside its bounds; a frame's crops go through the runtime in batches."""
    wins = windows(1080, 1920, 640, 0.2)
    assert len(wins) == 8 and wins[:, 2].max() == 1920 and wins[:, 3].max() == 1080 and (wins[:, :2] >= 0).all()
    covered = np.zeros((1080, 1920), bool)
    for x0, y0, x1, y1 in wins:
        assert x1 - x0 == 640 and y1 - y0 == 640
        covered[y0:y1, x0:x1] = True
    assert covered.all()

    runtime = load_runtime(onnx_models[0])
    calls = []
    forward = runtime.forward
    runtime.forward = lambda x: calls.append(len(x)) or forward(x)  # count the batches the runtime gets
    frame = np.full((192, 320, 3), 127, np.uint8)
    predictor = Predictor(runtime, CONF, slicing=SliceOptions(64, 0.2), batch=8)
    predictor([frame])
    crops = predictor.slices_per_frame(192, 320)
    assert crops == len(windows(192, 320, 64, 0.2)) + 1 and sum(calls) == crops and max(calls) == 8


def test_merge_joins_a_target_cut_by_a_slice_edge():
    whole = [100, 100, 108, 106, 0.9, 0]
    piece = [105, 100, 108, 106, 0.6, 0]  # the same target, cut off by the neighbouring slice's border
    other_class = [104, 100, 108, 106, 0.5, 1]
    far = [300, 300, 306, 306, 0.4, 0]
    dets = np.array([piece, whole, other_class, far], np.float32)
    nmm = merge(dets, "nmm", 0.5)
    assert len(nmm) == 3 and np.allclose(nmm[0], whole)
    assert len(merge(dets, "nms", 0.5)) == 3
    assert len(merge(dets, "nms", 0.5, metric="iou")) == 4  # IoU 0.375: NMS by IoU keeps the piece


def test_slices_keep_micro_targets_at_native_scale(tmp_path):
    """On a synthetic 1080p video with known boxes, every target under 8 px lies whole inside a 640 px slice, so it
    reaches a 640 px model at native scale; the whole frame letterboxed to 640 shrinks it 3x, below 3 px."""
    from csfnet.data.synth import SynthSpec, generate

    spec = SynthSpec(train_videos=0, val_videos=2, frames=3, width=1920, height=1080, seed=7)
    raw = generate(tmp_path / "hd", spec, workers=1)
    rows = np.concatenate([np.loadtxt(p, delimiter=",", ndmin=2) for p in raw.rglob("gt.txt")])
    boxes = rows[:, 2:6].copy()
    boxes[:, 2:] += boxes[:, :2]
    micro = boxes[np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])) < 8]
    assert len(micro) > 0
    wins = windows(1080, 1920, 640, 0.2)
    inside = (micro[:, None, 0] >= wins[None, :, 0]) & (micro[:, None, 2] <= wins[None, :, 2])
    inside &= (micro[:, None, 1] >= wins[None, :, 1]) & (micro[:, None, 3] <= wins[None, :, 3])
    assert inside.any(1).all()
    assert ((micro[:, 2:] - micro[:, :2]).max(1) * 640 / 1920 < 3).all()


def test_detect_video_writes_every_output(onnx_models, val_video, tmp_path):
    out = tmp_path / "out"
    result = detect(onnx_models[0], val_video, out, conf=CONF, slice_size=48, progress=False)
    assert {p.name for p in out.iterdir()} == {VIDEO, MOT, JSONL, SUMMARY}
    assert result.frames == 8 and result.fps > 0 and result.crops_per_frame == 7 and result.runtime == "onnxruntime"
    cap = cv2.VideoCapture(str(out / VIDEO))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8 and int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == 96
    cap.release()
    mot = np.loadtxt(out / MOT, delimiter=",", ndmin=2)
    records = [json.loads(line) for line in (out / JSONL).read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(1, 9))
    assert len(mot) == result.detections == sum(len(r["detections"]) for r in records) > 0
    assert (mot[:, 1] == -1).all() and (mot[:, 7:] == -1).all() and mot[:, 0].min() >= 1  # untracked, 1-based
    first = records[int(mot[0, 0]) - 1]["detections"][0]
    assert np.allclose(
        mot[0, 2:6], [first["x1"], first["y1"], first["x2"] - first["x1"], first["y2"] - first["y1"]], atol=0.02
    )
    assert json.loads((out / SUMMARY).read_text())["frames"] == 8
    assert result.summary().startswith("8 frames in ") and "onnxruntime, 7 crops/frame" in result.summary()


def test_detect_image_folder_and_glob_with_pytorch(tiny_weights, tiny_data, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for p in split_images(tiny_data, "val")[:3]:
        shutil.copy(p, folder / p.name)
    by_folder = detect(tiny_weights, folder, tmp_path / "a", conf=CONF, progress=False, save_video=False)
    by_glob = detect(tiny_weights, str(folder / "*.jpg"), tmp_path / "b", conf=CONF, progress=False)
    assert by_folder.frames == by_glob.frames == 3 and by_folder.runtime == "pytorch"
    assert (tmp_path / "a" / MOT).read_text() == (tmp_path / "b" / MOT).read_text()
    names = [json.loads(line)["image"] for line in (tmp_path / "a" / JSONL).read_text().splitlines()]
    assert names == sorted(p.name for p in folder.iterdir())
    assert detect(tiny_weights, folder, tmp_path / "c", max_frames=2, progress=False).frames == 2


def test_mot_output_reingests_with_extract(onnx_models, val_video, tmp_path):
    from csfnet.data.dataset import read_labels
    from csfnet.data.extract import extract

    out = tmp_path / "out"
    result = detect(onnx_models[0], val_video, out, conf=0.005, progress=False, save_video=False)
    for split in ("train", "val"):
        seq = tmp_path / "raw" / split / f"reviewed_{split}"
        (seq / "gt").mkdir(parents=True)
        shutil.copy(val_video, seq / f"{seq.name}.mp4")
        shutil.copy(out / MOT, seq / "gt" / "gt.txt")
    extract(tmp_path / "raw", tmp_path / "dataset", workers=1)
    labels = [read_labels(p)[0] for p in split_images(tmp_path / "dataset" / "data.yaml", "val")]
    assert sum(len(b) for b in labels) == result.detections
    mot = np.loadtxt(out / MOT, delimiter=",", ndmin=2)
    first = labels[int(mot[0, 0]) - 1]
    assert np.abs(first - [*mot[0, 2:4], *(mot[0, 2:4] + mot[0, 4:6])]).max(1).min() < 0.5


def _bad_onnx(path: Path) -> Path:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "not-a-detector", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_bad_inputs_fail_and_leave_nothing(tiny_weights, onnx_models, val_video, tmp_path, monkeypatch):
    corrupt_video = tmp_path / "corrupt.mp4"
    corrupt_video.write_bytes(val_video.read_bytes()[:300])
    truncated_pt = tmp_path / "truncated.pt"
    truncated_pt.write_bytes(tiny_weights.read_bytes()[:5000])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'registry.db'}")
    cases = [
        (onnx_models[0], tmp_path / "missing.mp4", InputNotFoundError),
        (onnx_models[0], corrupt_video, DataError),
        (onnx_models[0], tmp_path / "empty-folder", DataError),
        (tmp_path / "missing.pt", val_video, InputNotFoundError),
        (truncated_pt, val_video, CheckpointError),
        (_bad_onnx(tmp_path / "relu.onnx"), val_video, CheckpointError),
        ("models:/csfnet-uav@champion", val_video, InputNotFoundError),
    ]
    (tmp_path / "empty-folder").mkdir()
    results = tmp_path / "results"
    results.mkdir()
    with pytest.raises(SettingsError):
        detect(onnx_models[0], val_video, results / "out", tracker="sort", progress=False)
    with pytest.raises(SettingsError):
        detect(onnx_models[0], val_video, results / "out", slice_size=48, overlap=1.5, progress=False)
    for model, source, error in cases:
        with pytest.raises(error) as info:
            detect(model, source, results / "out", progress=False)
        assert "\n" not in str(info.value)
        assert list(results.iterdir()) == [], (model, source)


def test_tracking_keeps_one_id_per_target(tiny_raw):
    """ByteTrack and BoT-SORT on a clean synthetic sequence fed its true boxes, every third frame at a low score
    (below the trackers' first-stage threshold): one ID per target, no switch."""
    from csfnet.detect.track_metrics import tracking_metrics
    from csfnet.detect.tracker import Tracker

    seq = next(p for p in sorted((tiny_raw / "val").iterdir()) if p.is_dir())
    gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2)
    cap = cv2.VideoCapture(str(next(seq.glob("*.mp4"))))
    frames = [cap.read()[1] for _ in range(int(gt[:, 0].max()))]
    for kind in ("bytetrack", "botsort"):
        tracker, out = Tracker(kind), []
        for f, frame in enumerate(frames, 1):
            rows = gt[gt[:, 0] == f]
            score = 0.15 if f % 3 == 0 else 0.9
            dets = np.array([[x, y, x + w, y + h, score, 0] for x, y, w, h in rows[:, 2:6]], np.float32)
            for x1, y1, x2, y2, tid, s, _ in tracker.update(dets, frame):
                out.append([f, tid, x1, y1, x2 - x1, y2 - y1, s])
        metrics = tracking_metrics(gt[:, :6], np.array(out)[:, :6])
        assert metrics["id_switches"] == 0 and metrics["IDF1"] > 0.9, (kind, metrics)
        assert len(np.unique(np.array(out)[:, 1])) == len(np.unique(gt[:, 1])), kind


def test_tracking_metrics_count_an_id_switch():
    gt = np.array([[f, i, 10 * i + f, 10, 5, 5] for f in range(1, 11) for i in (1, 2)], float)
    swapped = gt.copy()
    swapped[(swapped[:, 0] > 5) & (swapped[:, 1] == 1), 1] = 7  # target 1 gets a new ID halfway
    from csfnet.detect.track_metrics import combined_tracking_metrics, tracking_metrics

    perfect = tracking_metrics(gt, gt)
    assert perfect["HOTA"] == perfect["MOTA"] == perfect["IDF1"] == 1.0 and perfect["id_switches"] == 0
    switched = tracking_metrics(gt, swapped)
    assert switched["id_switches"] == 1 and switched["IDF1"] == 0.75 and switched["MOTA"] == 0.95
    assert combined_tracking_metrics([(gt, gt), (gt, swapped)])["id_switches"] == 1


def test_served_model_with_slicing_equals_detect_and_registry_uri_loads(onnx_models, tiny_data, tmp_path, monkeypatch):
    """The registered pyfunc (models-from-code, csfnet/mlflow_model.py) asked to slice gives csfnet detect's boxes
    on the same frame; ``models:/name@alias`` runs the registered ONNX model."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from csfnet.registry import encode_image, log_detector

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'registry.db'}")
    image = split_images(tiny_data, "val")[0]
    example = pd.DataFrame({"image": [encode_image(image)]})
    with mlflow.start_run():
        info = log_detector(onnx_models[0], image)
    version = mlflow.register_model(info.model_uri, "csfnet-uav")
    MlflowClient().set_registered_model_alias("csfnet-uav", "champion", version.version)

    served = mlflow.pyfunc.load_model("models:/csfnet-uav@champion").predict(
        example, params={"conf": CONF, "slice": 48, "overlap": 0.2}
    )
    detected = detect(onnx_models[0], image, tmp_path / "file", conf=CONF, slice_size=48, progress=False)
    rows = json.loads((tmp_path / "file" / JSONL).read_text().splitlines()[0])["detections"]
    assert len(served) == len(rows) == detected.detections > 0
    assert np.allclose(
        served[["x1", "y1", "x2", "y2", "score"]].to_numpy(),
        [[r[k] for k in ("x1", "y1", "x2", "y2", "score")] for r in rows],
        atol=0.01,
    )

    by_uri = detect("models:/csfnet-uav@champion", image, tmp_path / "uri", conf=CONF, slice_size=48, progress=False)
    assert (
        by_uri.runtime == "onnxruntime"
        and (tmp_path / "uri" / MOT).read_text() == (tmp_path / "file" / MOT).read_text()
    )


def test_sliced_vs_full_on_the_validation_split(onnx_models, tiny_data):
    from csfnet.detect.sliced_eval import flat_metrics, sliced_vs_full

    result = sliced_vs_full(onnx_models[0], tiny_data, slice_size=48, size_bands=(8, 16, 32))
    assert result["images"] == 8 and result["crops_per_image"] == 7 and result["objects"] > 0
    for mode in ("full", "sliced"):
        assert set(result[mode]) == {"very_tiny", "tiny", "small", "medium"}
        assert sum(b["objects"] for b in result[mode].values()) == result["objects"]
    flat = flat_metrics(result)
    assert "sliced/very_tiny/ap50" in flat and "full/ms_per_image" in flat and all(v >= 0 for v in flat.values())


def test_evaluate_tracking_scores_sequences_with_known_ids(onnx_models, tiny_raw):
    from csfnet.detect.track_eval import evaluate_tracking, flat_metrics

    low = {"track_high_thresh": 0.002, "track_low_thresh": 0.001, "new_track_thresh": 0.002}  # one-epoch scores
    result = evaluate_tracking(onnx_models[0], tiny_raw, conf=CONF, tracker_overrides=low)
    gt = np.loadtxt(next((tiny_raw / "val").rglob("gt.txt")), delimiter=",", ndmin=2)
    assert result["sequences"] == 1 and len(result["per_sequence"]) == 1
    overall = result["overall"]
    assert overall["gt_tracks"] == len(np.unique(gt[:, 1])) and 0 <= overall["HOTA"] <= 1 and overall["MOTA"] <= 1
    assert flat_metrics(result)["track/IDF1"] == overall["IDF1"]


def test_detect_reads_a_stream_url(onnx_models, val_video, tmp_path):
    """An HTTP URL is read as a stream (OpenCV/FFmpeg), frame by frame, like a camera feed."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(val_video.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{val_video.name}"
        result = detect(onnx_models[1], url, tmp_path / "out", conf=CONF, progress=False, save_video=False)
        assert result.frames == 8 and result.runtime == "onnxruntime-int8" and result.source == url
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def micro_detector(micro_tiles, tmp_path_factory) -> Path:
    """A real micro-target detector: trained on native-scale tiles of synthetic 1080p video (tests/detector_fixture)."""
    from .detector_fixture import train_micro_detector

    return train_micro_detector(tmp_path_factory.mktemp("micro-detector"), micro_tiles)


def test_sliced_detection_finds_micro_targets_full_frames_miss(micro_detector, tmp_path):
    """On held-out synthetic 1920x1080 videos with known boxes, the same weights find most targets under 8 px in
    160 px slices and none in the whole frame letterboxed to 160 px (12x smaller: an 8 px target becomes < 1 px);
    the sliced MOT output re-ingests with `csfnet data extract` and its labels are the detections."""
    from csfnet.cli import main
    from csfnet.data.dataset import read_labels
    from csfnet.data.synth import generate

    from .detector_fixture import MICRO, SLICE, TEST_SPEC, found, xyxy

    raw = generate(tmp_path / "hd", TEST_SPEC, workers=2)
    runtime = load_runtime(micro_detector, SLICE)
    counts = {"micro": 0, "sliced": 0, "full": 0}
    best = None  # (micro targets found, sequence, MOT file) of the sequence with most found
    for seq in sorted(p for p in (raw / "val").iterdir() if p.is_dir()):
        gt = np.loadtxt(seq / "gt" / "gt.txt", delimiter=",", ndmin=2).reshape(-1, 9)
        gt = gt[np.sqrt(gt[:, 4] * gt[:, 5]) < MICRO]
        counts["micro"] += len(gt)
        for mode, size in (("sliced", SLICE), ("full", None)):
            out = tmp_path / mode / seq.name
            result = detect(runtime, next(seq.glob("*.mp4")), out, slice_size=size, save_video=False, progress=False)
            assert result.frames == TEST_SPEC.frames
            mot = np.loadtxt(out / MOT, delimiter=",", ndmin=2).reshape(-1, 10)
            hits = sum(
                int(found(xyxy(gt[gt[:, 0] == f]), xyxy(mot[mot[:, 0] == f])).sum()) for f in np.unique(gt[:, 0])
            )
            counts[mode] += hits
            if mode == "sliced" and hits and (best is None or hits > best[0]):
                best = (hits, seq, out / MOT)
    assert counts["micro"] >= 6, counts  # the held-out videos do hold micro targets
    # measured 5-6 of 7 (three training seeds); 0.4 leaves two targets of margin
    assert counts["sliced"] >= 0.4 * counts["micro"] and counts["sliced"] > counts["full"], counts

    # the sliced detections, micro boxes included, become labels of a dataset (whole frames, no tiling)
    _, seq, mot_file = best
    for split in ("train", "val"):
        review = tmp_path / "review" / split / f"reviewed_{split}"
        (review / "gt").mkdir(parents=True)
        shutil.copy(next(seq.glob("*.mp4")), review / f"{review.name}.mp4")
        shutil.copy(mot_file, review / "gt" / "gt.txt")
    args = ["data", "extract", "--source", str(tmp_path / "review"), "--out", str(tmp_path / "ds"), "--workers", "1"]
    every_frame = ["--set", "extract.tile=0", "--set", "extract.stride=1"]  # params.yaml keeps every 2nd
    assert main([*args, *every_frame]) == 0
    mot = np.loadtxt(mot_file, delimiter=",", ndmin=2)
    images = {int(p.stem.rsplit("_", 1)[1]) + 1: p for p in split_images(tmp_path / "ds" / "data.yaml", "val")}
    assert sorted(images) == list(range(1, TEST_SPEC.frames + 1))
    for f, image in images.items():
        labels, dets = read_labels(image)[0], xyxy(mot[mot[:, 0] == f])
        assert len(labels) == len(dets)
        if len(dets):  # every detection is a label, within the 2-decimal rounding of the two files
            assert np.abs(dets[:, None] - labels[None]).max(-1).min(1).max() < 0.05


def test_evaluate_tracking_adds_state_accuracy_on_single_target_sequences(onnx_models, tiny_raw, tmp_path):
    import shutil

    from csfnet.detect.track_eval import evaluate_tracking

    sequence = next(p.parent.parent for p in (tiny_raw / "val").rglob("gt.txt"))
    single = tmp_path / "raw" / "val" / sequence.name
    shutil.copytree(sequence, single)
    gt = np.loadtxt(single / "gt" / "gt.txt", delimiter=",", ndmin=2)
    kept = gt[gt[:, 1] == gt[0, 1]]  # one target: a single-target (Anti-UAV style) sequence
    kept = kept[kept[:, 0] % 2 == 0]  # absent on odd frames
    np.savetxt(single / "gt" / "gt.txt", kept, delimiter=",", fmt="%g")
    low = {"track_high_thresh": 0.002, "track_low_thresh": 0.001, "new_track_thresh": 0.002}
    result = evaluate_tracking(onnx_models[0], tmp_path / "raw", conf=CONF, tracker_overrides=low)
    metrics = result["per_sequence"][sequence.name]
    assert metrics["visible_frames"] == len(kept) < metrics["frames"]
    assert 0 <= metrics["SA"] <= 1 and metrics["SA_penalised"] <= metrics["SA"] and 0 <= metrics["miss_rate"] <= 1
    assert result["overall"]["SA"] == metrics["SA"]
