"""Frame extraction: a validated raw dataset becomes an ultralytics YOLO dataset, all or nothing.

Output: ``images/<split>/<sequence>_<frame>.jpg`` and ``labels/<split>/<same stem>.txt`` (``<frame>`` is the 0-based
frame index in six digits; frames without targets are kept as negatives), ``data.yaml``, and ``report.json``.
Everything is written to a staging folder and renamed into place only when complete. Sequences already extracted
with the same inputs and options are reused (hard-linked) instead of decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from csfnet.data.formats import (
    IMAGE_SUFFIXES,
    Annotations,
    Box,
    Fixes,
    SequenceSource,
    detect_format,
    discover,
    frame_files,
    probe_size,
    read_annotations,
)
from csfnet.data.io import replace_dir, staging_dir, worker_count
from csfnet.errors import DataError

MANIFEST = "manifest.json"
JPEG_QUALITY = 95
OUTPUT_VERSION = 2  # bump when the files written for a sequence change, so re-runs do not reuse older output


@dataclass
class SequenceResult:
    """What one sequence contributed to the dataset."""

    key: str
    fingerprint: str
    files: list[str]  # image paths relative to the dataset root
    frames: int
    boxes: int
    fixes: dict[str, int]


def extract(
    source: str | Path,
    out: str | Path,
    stride: int = 1,
    fmt: str = "auto",
    names: tuple[str, ...] = ("uav",),
    fix: bool = False,
    workers: int | None = None,
) -> dict:
    """Validate ``source`` and write the YOLO dataset ``out``; return the extraction report."""
    source, out = Path(source), Path(out)
    if stride < 1:
        raise DataError(f"stride must be >= 1, got {stride}")
    if (fmt if fmt != "auto" else detect_format(source)) == "yolo":
        return _import_yolo(source, out, names)
    sequences = discover(source, fmt)
    previous = _read_manifest(out)
    with ProcessPoolExecutor(worker_count(workers, len(sequences))) as pool, staging_dir(out) as tmp:
        try:
            validate = pool.map(_plan, sequences, repeat(len(names)), repeat(fix))
            plans = list(tqdm(validate, total=len(sequences), desc="validate", unit="seq"))
            results, todo = _reuse_previous(plans, previous, out, tmp, stride, fix)
            reused = len(results)
            futures = [pool.submit(_extract_sequence, tmp, *job, stride, fix) for job in todo]
            for future in tqdm(futures, desc="extract", unit="seq"):
                results.append(future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)  # fail now, not after every queued sequence has been decoded
            raise
        report = _report(results, reused, stride, names)
        _write_dataset_files(tmp, results, report, names)
        replace_dir(tmp, out)
    return report


def _plan(seq: SequenceSource, n_classes: int, fix: bool) -> tuple[SequenceSource, Annotations, tuple]:
    """Validate one sequence (size probe and annotations; runs in a worker process, all before any frame is written)."""
    width, height, stated = probe_size(seq)
    ann = read_annotations(seq, width, height, n_classes, fix)
    return seq, ann, (width, height, stated)


def _fingerprint(seq: SequenceSource, stride: int, fix: bool) -> str:
    media = [seq.video] if seq.video else frame_files(seq)
    parts = [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in [*media, seq.annotation]]
    settings = [stride, fix, JPEG_QUALITY, OUTPUT_VERSION]
    return hashlib.sha256(json.dumps([parts, settings]).encode()).hexdigest()[:16]


def _reuse_previous(
    plans: list[tuple], previous: dict[str, dict], out: Path, tmp: Path, stride: int, fix: bool
) -> tuple[list[SequenceResult], list[tuple]]:
    """Link unchanged sequences of the previous extraction into ``tmp``; return them and the jobs still to run."""
    reused, todo = [], []
    for seq, ann, size in plans:
        fingerprint = _fingerprint(seq, stride, fix)
        done = previous.get(seq.key)
        if done and done["fingerprint"] == fingerprint and _link_previous(out, tmp, done):
            reused.append(SequenceResult(**done))
        else:
            todo.append((seq, ann, size, fingerprint))
    return reused, todo


def _read_manifest(out: Path) -> dict[str, dict]:
    try:
        return {r["key"]: r for r in json.loads((out / MANIFEST).read_text())["sequences"]}
    except (OSError, ValueError, KeyError):
        return {}


def _link_previous(out: Path, tmp: Path, done: dict) -> bool:
    """Hard-link a previously extracted sequence into the staging folder; False if any file is gone."""
    pairs = [(f, f.replace("images/", "labels/", 1).rsplit(".", 1)[0] + ".txt") for f in done["files"]]
    if not all((out / img).is_file() and (out / lbl).is_file() for img, lbl in pairs):
        return False
    for rel in (p for pair in pairs for p in pair):
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(out / rel, tmp / rel)
        except OSError:
            shutil.copy2(out / rel, tmp / rel)
    return True


def _frames(seq: SequenceSource, stride: int = 1) -> Iterator[np.ndarray | Path | None]:
    """Yield a sequence's frames in order: BGR arrays, ``None`` for frames the stride drops, and for ``img1/``
    folders the path of frames that are already JPEG files (copied byte for byte: re-encoding would add a second
    round of compression artefacts to targets a few pixels wide)."""
    if seq.frames_dir is not None:
        for index, path in enumerate(frame_files(seq)):
            if index % stride:
                yield None
                continue
            is_jpeg = path.suffix.lower() in (".jpg", ".jpeg")
            image = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_8 if is_jpeg else cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"sequence {seq.name}: cannot read frame image {path} (frame {index})")
            yield path if is_jpeg else image
        return
    yield from video_frames(seq.video, stride)


def video_frames(video: Path, stride: int = 1) -> Iterator[np.ndarray | None]:
    """Decode a video with OpenCV, the decoder extraction uses; every ``stride``-th frame as BGR, others ``None``.

    Dropped frames are still decoded (inter-frame codecs need them, and the count validates the annotations) but
    skip the colour conversion, the larger part of a frame's cost for small videos.
    """
    cap = cv2.VideoCapture(str(video))
    try:
        index = 0
        while cap.grab():
            if index % stride:
                yield None
            else:
                ok, frame = cap.retrieve()
                if not ok:
                    return
                yield frame
            index += 1
    finally:
        cap.release()


def _extract_sequence(
    root: Path, seq: SequenceSource, ann: Annotations, size: tuple, fingerprint: str, stride: int, fix: bool
) -> SequenceResult:
    """Decode one sequence and write every ``stride``-th frame with its labels (runs in a worker process)."""
    cv2.setNumThreads(1)
    width, height, stated = size
    images, labels = root / "images" / seq.split, root / "labels" / seq.split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    fixes, files, n_boxes, decoded = Fixes(**vars(ann.fixes)), [], 0, 0
    limit = seq.expected_frames
    for index, frame in enumerate(_frames(seq, stride)):
        decoded = index + 1
        if limit is not None and index >= limit:
            if not fix:
                continue  # reported as a length mismatch below
            fixes.skipped_frames += 1
            continue
        if frame is None:
            continue
        stem = f"{seq.name}_{index:06d}"
        if isinstance(frame, Path):
            shutil.copyfile(frame, images / f"{stem}.jpg")
        elif not cv2.imwrite(str(images / f"{stem}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"cannot write {images / stem}.jpg")
        boxes = ann.boxes.get(index, [])
        (labels / f"{stem}.txt").write_text("".join(_yolo_line(b, width, height) for b in boxes))
        files.append(f"images/{seq.split}/{stem}.jpg")
        n_boxes += len(boxes)
    _check_length(seq, ann, decoded, stated, fix, fixes)
    return SequenceResult(seq.key, fingerprint, files, len(files), n_boxes, asdict(fixes))


def _check_length(seq: SequenceSource, ann: Annotations, decoded: int, stated: int | None, fix: bool, fixes: Fixes):
    where = f"sequence {seq.name}, file {seq.media}"
    if decoded == 0:
        raise DataError(f"{where}: no decodable frame (corrupt or truncated video)")
    if seq.video is not None and stated and decoded < stated:
        raise DataError(
            f"{where}: truncated: the container states {stated} frames but decoding stops at frame {decoded}"
        )
    beyond = [f for f in ann.boxes if f >= decoded]
    if (seq.expected_frames is not None and seq.expected_frames != decoded) or beyond:
        expected = seq.expected_frames if seq.expected_frames is not None else max(beyond) + 1
        if not fix:
            raise DataError(
                f"{where}: annotation {seq.annotation} covers {expected} frames but the video has {decoded} "
                f"(first mismatch at frame {min(expected, decoded)}; use --fix to skip unmatched frames)"
            )
        if seq.expected_frames is not None and seq.expected_frames > decoded:
            fixes.dropped_annotations += seq.expected_frames - decoded
        fixes.dropped_annotations += sum(len(ann.boxes[f]) for f in beyond) if seq.expected_frames is None else 0


def _yolo_line(box: Box, width: int, height: int) -> str:
    cx, cy = (box.x + box.w / 2) / width, (box.y + box.h / 2) / height
    return f"{box.cls} {cx:.6f} {cy:.6f} {box.w / width:.6f} {box.h / height:.6f}\n"


def _report(results: list[SequenceResult], reused: int, stride: int, names: tuple[str, ...]) -> dict:
    splits: dict[str, dict[str, int]] = {}
    fixes = Fixes()
    for r in results:
        split = splits.setdefault(r.key.split("/")[0], {"sequences": 0, "images": 0, "boxes": 0, "negatives": 0})
        split["sequences"] += 1
        split["images"] += r.frames
        split["boxes"] += r.boxes
        fixes.add(Fixes(**r.fixes))
    return {
        "splits": splits,
        "fixes": asdict(fixes),
        "reused_sequences": reused,
        "stride": stride,
        "names": list(names),
    }


def _write_dataset_files(root: Path, results: list[SequenceResult], report: dict, names: tuple[str, ...]) -> None:
    for split, counts in report["splits"].items():
        labels = root / "labels" / split
        counts["negatives"] = sum(1 for p in labels.glob("*.txt") if p.stat().st_size == 0)
    data = {split: f"images/{split}" for split in report["splits"]}  # paths relative to this file's folder
    data["names"] = dict(enumerate(names))
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (root / "report.json").write_text(json.dumps(report, indent=2))
    manifest = {"sequences": [asdict(r) for r in sorted(results, key=lambda r: r.key)]}
    (root / MANIFEST).write_text(json.dumps(manifest))


def _import_yolo(source: Path, out: Path, names: tuple[str, ...]) -> dict:
    """Validate an already extracted YOLO dataset and copy it to ``out`` in the same layout."""
    splits = [p.name for p in sorted((source / "images").iterdir()) if p.is_dir()]
    if "train" not in splits or "val" not in splits:
        raise DataError(f"{source}: a YOLO dataset needs images/train and images/val (found: {splits})")
    report: dict = {"splits": {}, "fixes": asdict(Fixes()), "reused_sequences": 0, "stride": 1, "names": list(names)}
    with staging_dir(out) as tmp:
        for split in splits:
            images = sorted(p for p in (source / "images" / split).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            counts = {"sequences": 0, "images": len(images), "boxes": 0, "negatives": 0}
            for image in images:
                label = source / "labels" / split / f"{image.stem}.txt"
                lines = label.read_text().split("\n") if label.is_file() else []
                rows = [line.split() for line in lines if line.strip()]
                for n, row in enumerate(rows, 1):
                    _check_yolo_row(row, len(names), f"file {label}, line {n}")
                counts["boxes"] += len(rows)
                counts["negatives"] += not rows
                for src, rel in ((image, f"images/{split}/{image.name}"), (label, f"labels/{split}/{image.stem}.txt")):
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, tmp / rel) if src.is_file() else (tmp / rel).write_text("")
            report["splits"][split] = counts
        data = {split: f"images/{split}" for split in splits} | {"names": dict(enumerate(names))}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (tmp / "report.json").write_text(json.dumps(report, indent=2))
        replace_dir(tmp, out)
    return report


def _check_yolo_row(row: list[str], n_classes: int, where: str) -> None:
    if len(row) != 5:
        raise DataError(f"{where}: expected 'class cx cy w h', got {' '.join(row)!r}")
    try:
        cls, values = int(row[0]), [float(v) for v in row[1:]]
    except ValueError as e:
        raise DataError(f"{where}: not numbers: {' '.join(row)!r}") from e
    if not 0 <= cls < n_classes:
        raise DataError(f"{where}: unknown class {cls} (known: 0..{n_classes - 1})")
    cx, cy, w, h = values
    if any(v != v for v in values) or w <= 0 or h <= 0:
        raise DataError(f"{where}: box {values} has NaN or non-positive size")
    if cx - w / 2 < -1e-6 or cy - h / 2 < -1e-6 or cx + w / 2 > 1 + 1e-6 or cy + h / 2 > 1 + 1e-6:
        raise DataError(f"{where}: box {values} lies outside the image")
