"""``csfnet detect``: a model and a source in, an annotated video, MOT rows and JSON lines out, all or nothing."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from csfnet.detect.predict import Predictor, SliceOptions
from csfnet.detect.runtimes import Runtime, load_runtime
from csfnet.detect.sources import Source, open_source
from csfnet.detect.temporal_input import FrameStacker, describe
from csfnet.detect.tracker import TRACKERS, Tracker
from csfnet.errors import DataError, SettingsError
from csfnet.files import replace_dir, staging_dir, write_json
from csfnet.settings import Detect, Eval

DEFAULTS = Detect()  # the defaults of the detect: settings, the one place they are set
END_TO_END = Eval().end_to_end  # the default head of a .pt with an NMS-free head (eval.end_to_end)

VIDEO, MOT, JSONL, STATES, SUMMARY = "annotated.mp4", "mot.txt", "detections.jsonl", "states.json", "summary.json"


@dataclass
class DetectResult:
    """What one run produced; ``fps`` counts every frame end to end (decoding, inference, tracking, writing)."""

    out: Path
    model: str
    runtime: str
    source: str
    frames: int
    detections: int
    tracks: int
    seconds: float
    fps: float
    crops_per_frame: int
    slice: int | None
    tracker: str | None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "out": str(self.out)}

    def summary(self) -> str:
        """The one line ``csfnet detect`` prints at the end."""
        how = f"{self.runtime}, " + (f"{self.crops_per_frame} crops/frame" if self.slice else "whole frames")
        tracks = f", {self.tracks} tracks ({self.tracker})" if self.tracker else ""
        return (
            f"{self.frames} frames in {self.seconds:.1f} s: {self.fps:.2f} fps ({how}); "
            f"{self.detections} detections{tracks} -> {self.out}"
        )


def detect(
    model: str | Path | Runtime,
    source: str | Path,
    out: str | Path,
    *,
    conf: float = DEFAULTS.conf,
    iou: float = DEFAULTS.iou,
    imgsz: int | None = None,
    slice_size: int | None = None,
    overlap: float = DEFAULTS.overlap,
    full_frame: bool = DEFAULTS.full_frame,
    merge: str = DEFAULTS.merge,
    merge_threshold: float = DEFAULTS.merge_threshold,
    tracker: str | None = None,
    tracker_overrides: dict[str, Any] | None = None,
    persistence: dict[str, Any] | None = None,
    batch: int = DEFAULTS.batch,
    device: str = DEFAULTS.device,
    end_to_end: bool = END_TO_END,
    save_video: bool = DEFAULTS.save_video,
    single_target: bool = DEFAULTS.single_target,
    max_frames: int | None = None,
    progress: bool = True,
) -> DetectResult:
    """Detect (and optionally track) objects in every frame of ``source`` and write the results to ``out``.

    Args:
        model: A ``.pt``, ``.onnx`` (FP32 or INT8), an OpenVINO folder, a registry URI (``models:/name@alias``) or an
            already loaded runtime.
        source: A video file, an image file, a folder or glob of images, or a stream URL. A temporal model (one
            with motion offsets) computes its motion channels from the frames before, in one ring buffer for the
            stream that every decoded frame passes through; it takes a video, a stream, or images forming a frame
            sequence (:func:`check_temporal_source`), whose first frames get the documented fallback (all-zero
            motion channels where the earlier frame does not exist yet).
        out: Output folder: ``annotated.mp4``, ``mot.txt``, ``detections.jsonl``, ``summary.json``; it appears only
            when the run completes (replacing an earlier one).
        conf: Confidence threshold of the reported detections.
        iou: NMS IoU threshold.
        imgsz: Model input size where the model allows a choice (default: the model's).
        slice_size: Slice side in source pixels; None or 0: whole frames, letterboxed to imgsz.
        overlap: Slice overlap (fraction of the side).
        full_frame: With slicing, also run the whole frame downscaled.
        merge: How detections are merged across slices: ``nmm`` or ``nms``.
        merge_threshold: Overlap (IoS) at which two detections are the same target.
        tracker: Object tracker, ``bytetrack``, ``botsort`` or None.
        tracker_overrides: Settings replacing the tracker config's.
        persistence: Track-level filter of the tracks (:class:`csfnet.detect.persistence.PersistenceRule`
            arguments, online: one-frame blips suppressed); needs ``tracker``. None: off.
        batch: Crops per runtime call.
        device: PyTorch device of a ``.pt`` model.
        end_to_end: A ``.pt`` with an NMS-free head runs through its one-to-one branch, else its one-to-many branch
            + NMS (setting ``eval.end_to_end``; an export has the head it was exported with).
        save_video: Write the annotated video.
        single_target: The stream holds at most one target: also write ``states.json``, per frame the
            highest-scoring track (or detection) or "target absent" (Anti-UAV's state layout).
        max_frames: Stop after this many frames.
        progress: Show a progress bar.

    Raises:
        csfnet.errors.CsfnetError: Bad model or source (nothing is written).
    """
    if tracker is not None and tracker not in TRACKERS:
        raise SettingsError(f"unknown tracker {tracker!r}; choose one of {', '.join(TRACKERS)}")
    if persistence is not None and tracker is None:
        raise SettingsError("detect.persistence filters tracks: it needs a tracker (detect.track)")
    out = Path(out)
    slicing = SliceOptions(slice_size or None, overlap, full_frame, merge, merge_threshold)
    src = open_source(source)  # before the model: a bad source fails fast
    try:
        runtime = model if isinstance(model, Runtime) else load_runtime(model, imgsz, device, end_to_end=end_to_end)
        check_temporal_source(runtime, src)
        object_tracker = Tracker(tracker, tracker_overrides, persistence) if tracker else None
        det_conf = min(conf, object_tracker.min_score) if object_tracker else conf
        predictor = Predictor(runtime, det_conf, iou, slicing, batch)
        with staging_dir(out) as tmp:
            counts = _run(src, predictor, object_tracker, tmp, conf, save_video, single_target, max_frames, progress)
            frames, n_dets, track_ids, seconds = counts
            result = DetectResult(
                out=out,
                model=str(model if not isinstance(model, Runtime) else runtime.describe()),
                runtime=runtime.kind,
                source=str(source),
                frames=frames,
                detections=n_dets,
                tracks=track_ids,
                seconds=round(seconds, 3),
                fps=round(frames / seconds, 3) if seconds > 0 else 0.0,
                crops_per_frame=predictor.slices_per_frame(src.height, src.width),
                slice=slicing.size,
                tracker=tracker,
            )
            write_json(tmp / SUMMARY, result.to_json())
            replace_dir(tmp, out)
    finally:
        src.close()
    return result


def check_temporal_source(runtime: Runtime, src: Source) -> None:
    """DataError unless a temporal model's source has earlier frames: a video, a stream, or images whose names end
    in consecutive frame numbers (``000001.jpg``, ``frame_0002.png`` ...: a sequence such as MOT's ``img1/``, read in
    that order). A single image, or a folder of unnumbered or gapped stills, has no defined earlier frames."""
    if runtime.motion is None or src.kind != "images":
        return
    numbers = [_frame_number(name) for name in src.names]
    steps = {b - a for a, b in pairwise(numbers)} if None not in numbers else set()
    if len(numbers) < 2 or steps != {1}:
        what = "one image" if len(numbers) < 2 else "images that are not consecutively numbered frames"
        raise DataError(
            f"source {src.spec}: a {describe(runtime.motion)} model needs earlier frames, but the source is {what}; "
            "give a video, a stream or a numbered frame sequence"
        )


def _frame_number(name: str) -> int | None:
    """The number a file stem ends in (``img1/000042.jpg`` -> 42), None when it ends in no digit."""
    match = re.search(r"(\d+)$", Path(name).stem)
    return int(match.group(1)) if match else None


def _run(
    src,
    predictor: Predictor,
    tracker: Tracker | None,
    tmp: Path,
    conf: float,
    save_video: bool,
    single_target: bool,
    max_frames: int | None,
    progress: bool,
) -> tuple[int, int, int, float]:
    from csfnet.detect.writers import AnnotatedVideo, JsonLinesWriter, MotWriter, StatesWriter

    names = predictor.runtime.names
    stacker = FrameStacker(predictor.runtime.motion)  # one motion ring buffer: this run reads one stream
    video = AnnotatedVideo(tmp / VIDEO, src.fps, src.width, src.height, names) if save_video else None
    mot, jsonl = MotWriter(tmp / MOT), JsonLinesWriter(tmp / JSONL, names)
    states = StatesWriter(tmp / STATES) if single_target else None
    total = min(src.frames or 0, max_frames or 1 << 62) or None
    frames = n_dets = 0
    track_ids: set[int] = set()
    start = time.perf_counter()
    bar = tqdm(total=total, desc="detect", unit="frame", disable=not progress)
    try:
        for frame in src:
            if max_frames is not None and frames >= max_frames:
                break
            dets = predictor([stacker(frame)])[0]
            if tracker is not None:
                tracks = tracker.update(dets, frame)
                # x1, y1, x2, y2, id, score, cls -> x1, y1, x2, y2, score, cls, id
                rows = tracks[:, [0, 1, 2, 3, 5, 6, 4]] if len(tracks) else np.zeros((0, 7), np.float32)
                track_ids.update(int(t) for t in rows[:, 6])
            else:
                dets = dets[dets[:, 4] >= conf]
                rows = np.concatenate([dets, -np.ones((len(dets), 1), np.float32)], axis=1)
            frames += 1
            n_dets += len(rows)
            mot.write(frames, rows)
            jsonl.write(frames, rows, Path(src.names[frames - 1]).name if src.names else None)
            if video is not None:
                video.write(frame, rows)
            if states is not None:
                states.write(rows)
            bar.update()
    finally:
        bar.close()  # also when a frame fails: the one-line error is not printed into a half-drawn bar
        for writer in (video, mot, jsonl, states):
            if writer is not None:
                writer.close()
    return frames, n_dets, len(track_ids), time.perf_counter() - start
