"""Frame extraction: a validated raw dataset becomes an ultralytics YOLO dataset, all or nothing.

Output: ``images/<split>/<sequence>_<frame>.jpg`` and ``labels/<split>/<same stem>.txt`` (``<frame>`` is the 0-based
frame index in six digits; frames without targets are kept as negatives), ``data.yaml``, and ``report.json``.
With ``tile`` > 0, frames of the tiled splits larger than the tile become native-resolution tiles named
``<sequence>_<frame>_x<x>_y<y>`` (see :mod:`csfnet.data.tiles`); other splits keep whole frames.
Everything is written to a staging folder and renamed into place only when complete. Sequences already extracted
with the same inputs and options are reused (hard-linked) instead of decoded again. What is written depends on the
content of the raw files and the options only (no file times, no count of reused sequences): two clones holding the
same raw files get the same dataset and so the same DVC hash.

With motion channels (``temporal.offsets`` set, see :mod:`csfnet.temporal`) every source frame is decoded, also
those the stride drops (offsets count source frames), and pushed through one :class:`~csfnet.temporal.MotionBuffer`
per sequence, exactly as ``csfnet detect`` does; each kept frame (or tile: the same crop of the full-frame map) gets
``motion/d<d>/<split>/<stem>.png`` per offset, and ``data.yaml`` gains ``channels`` and ``motion``. The motion spec
is part of every sequence's fingerprint, so other offsets re-extract. Without offsets the output is as before.

At archive scale extraction fans out: ``shard=(k, n)`` extracts only the sequences whose index (in discovery order)
is ``k`` modulo ``n``, and :func:`merge_shards` extracts the whole source reusing every shard's sequences, so the
merged dataset equals a single extraction file for file while only the shards decode.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
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
from csfnet.data.tiles import check_tiling, choose_negatives, clip_boxes, grid, tile_name
from csfnet.errors import DataError
from csfnet.files import process_pool, replace_dir, staging_dir, worker_count
from csfnet.settings import Extract, Settings, load_settings
from csfnet.temporal import MotionBuffer, MotionSpec, motion_path

MANIFEST = "manifest.json"
JPEG_QUALITY = 95
OUTPUT_VERSION = 3  # bump when the files written for a sequence change, so re-runs do not reuse older output
MOTION_VERSION = 1  # bump when csfnet.temporal.motion_map computes other maps, so motion datasets re-extract


SCHEMA = Extract()  # the defaults below are the settings schema's (params.yaml's extract section), never restated


@dataclass(frozen=True)
class Tiling:
    """How frames of the tiled splits are cut (``tile`` 0: never)."""

    tile: int = SCHEMA.tile
    overlap: float = SCHEMA.overlap
    min_visible: float = SCHEMA.min_visible
    negatives: float = SCHEMA.negatives
    splits: tuple[str, ...] = tuple(SCHEMA.tile_splits)
    seed: int = SCHEMA.seed

    def applies(self, split: str) -> bool:
        return self.tile > 0 and split in self.splits


@dataclass
class SequenceResult:
    """What one sequence contributed to the dataset."""

    key: str
    fingerprint: str
    files: list[str]  # image paths relative to the dataset root
    frames: int  # images written (frames or tiles)
    boxes: int
    fixes: dict[str, int]
    decoded: int = 0  # frames in the source
    tiles: dict[str, int] = field(default_factory=dict)  # positives, negatives, clipped, dropped (tiled splits)


def extract_with_settings(
    source: str | Path,
    out: str | Path,
    settings: Settings | None = None,
    workers: int | None = None,
    report_dir: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    reuse_from: Sequence[str | Path] = (),
) -> dict:
    """:func:`extract` with every option from the ``extract`` settings (``params.yaml``)."""
    settings = settings or load_settings()
    x = settings.extract
    tiling = Tiling(x.tile, x.overlap, x.min_visible, x.negatives, tuple(x.tile_splits), x.seed)
    return extract(
        source, out, stride=x.stride, fmt=x.format, names=tuple(x.names), fix=x.fix, workers=workers, tiling=tiling,
        report_dir=report_dir, shard=shard, reuse_from=reuse_from, motion=MotionSpec.from_settings(settings),
    )  # fmt: skip


def merge_shards(
    source: str | Path,
    shards: Sequence[str | Path],
    out: str | Path,
    settings: Settings | None = None,
    workers: int | None = None,
    report_dir: str | Path | None = None,
) -> dict:
    """One dataset from the shard extractions of ``source`` (same settings): the whole source is validated and
    every sequence a shard holds unchanged is linked, not decoded, so ``out`` equals a single extraction.

    Raises:
        DataError: a shard folder is missing.
    """
    missing = [str(s) for s in shards if not (Path(s) / MANIFEST).is_file()]
    if missing:
        raise DataError(f"shard {missing[0]}: no {MANIFEST} (not an extraction)")
    return extract_with_settings(source, out, settings, workers, report_dir, reuse_from=shards)


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``0 <= K < N``."""
    k, sep, n = text.partition("/")
    if not (sep and k.strip().isdigit() and n.strip().isdigit()) or not 0 <= int(k) < int(n):
        raise DataError(f"shard {text!r} is not K/N with 0 <= K < N")
    return int(k), int(n)


def extract(
    source: str | Path,
    out: str | Path,
    stride: int = 1,
    fmt: str = "auto",
    names: tuple[str, ...] = ("uav",),
    fix: bool = False,
    workers: int | None = None,
    tiling: Tiling = Tiling(),
    report_dir: str | Path | None = None,
    shard: tuple[int, int] | None = None,
    reuse_from: Sequence[str | Path] = (),
    motion: MotionSpec | None = None,
) -> dict:
    """Validate ``source`` and write the YOLO dataset ``out``; return the extraction report.

    ``report_dir``: also write the ingestion report there (``ingest.json``, ``ingest.html``, see
    :mod:`csfnet.data.report`). ``shard``: ``(k, n)``, only the sequences whose index is ``k`` modulo ``n``.
    ``reuse_from``: earlier extractions (shards) whose unchanged sequences are linked, as ``out``'s own are.
    ``motion``: also write the motion channels of every image (None: single-frame data).
    """
    source, out = Path(source), Path(out)
    if stride < 1:
        raise DataError(f"stride must be >= 1, got {stride}")
    check_tiling(tiling.tile, tiling.overlap, tiling.min_visible, tiling.negatives)
    if fmt in ("auto", "yolo") and detect_format(source) == "yolo":
        if motion is not None:
            raise DataError(
                f"{source}: a YOLO dataset has no frame order, so it cannot get motion channels (temporal.offsets "
                f"{list(motion.offsets)}); extract from the videos or set temporal.offsets: []"
            )
        if shard is not None:
            raise DataError(f"{source}: a YOLO dataset is copied whole; shards apply to raw sequences")
        report = _import_yolo(source, out, names)
    else:
        previous = [out, *map(Path, reuse_from)]
        report = _extract_sequences(
            source, out, stride, fmt, tuple(names), fix, workers, tiling, shard, previous, motion
        )
    if report_dir is not None:
        from csfnet.data.report import write_report

        write_report(report, out, report_dir)
    return report


def _extract_sequences(
    source: Path,
    out: Path,
    stride: int,
    fmt: str,
    names: tuple[str, ...],
    fix: bool,
    workers: int | None,
    tiling: Tiling,
    shard: tuple[int, int] | None,
    previous_roots: list[Path],
    motion: MotionSpec | None = None,
) -> dict:
    sequences = discover(source, fmt)
    if shard is not None:
        sequences = [seq for index, seq in enumerate(sequences) if index % shard[1] == shard[0]]
    previous = {key: found for root in reversed(previous_roots) for key, found in _read_manifest(root).items()}
    with process_pool(worker_count(workers, len(sequences)), __name__) as pool, staging_dir(out) as tmp:
        try:
            validate = pool.map(_plan, sequences, repeat(names), repeat(fix))
            plans = list(tqdm(validate, total=len(sequences), desc="validate", unit="seq"))
            sources = list(pool.map(_source_digest, sequences))
            results, todo = _reuse_previous(plans, sources, previous, tmp, stride, fix, tiling, motion)
            reused = len(results)
            futures = [pool.submit(_extract_sequence, tmp, *job, stride, fix, tiling, motion) for job in todo]
            for future in tqdm(futures, desc="extract", unit="seq"):
                results.append(future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)  # fail now, not after every queued sequence has been decoded
            raise
        report = _report(plans, results, reused, stride, names, tiling, motion)
        if motion is not None:  # where robustness finds the source frames to add noise to before motion (relative:
            report["source"] = os.path.relpath(source.resolve(), out.resolve())  # clones keep the same dataset)
        _write_dataset_files(tmp, results, report, names, motion)
        replace_dir(tmp, out)
    return report


def _plan(seq: SequenceSource, names: tuple[str, ...], fix: bool) -> tuple[SequenceSource, Annotations, tuple, dict]:
    """Validate one sequence (size probe and annotations; runs in a worker process, all before any frame is written)
    and describe its source (resolution, fps, codec)."""
    width, height, stated = probe_size(seq)
    ann = read_annotations(seq, width, height, len(names), fix, names)
    return seq, ann, (width, height, stated), _source_info(seq, width, height)


def _source_info(seq: SequenceSource, width: int, height: int) -> dict:
    info: dict = {"format": seq.format, "media": seq.media.name, "width": width, "height": height}
    if seq.video is None:
        return info | {"fps": None, "codec": next(iter(frame_files(seq))).suffix.lstrip(".").lower()}
    cap = cv2.VideoCapture(str(seq.video))
    try:
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC))
        codec = "".join(chr((fourcc >> (8 * i)) & 0xFF) for i in range(4)).strip("\x00 ") or "unknown"
        return info | {"fps": round(float(cap.get(cv2.CAP_PROP_FPS)), 3) or None, "codec": codec}
    finally:
        cap.release()


def _source_digest(seq: SequenceSource) -> str:
    """sha256 over the names and bytes of a sequence's media and annotation files, never their times: a clone or a
    copy of the same raw data has the same digest (runs in a worker; hashing costs a read, decoding far more)."""
    media = [seq.video] if seq.video else frame_files(seq)
    labels = sorted(seq.annotation.glob("*.txt")) if seq.annotation.is_dir() else [seq.annotation]
    digest = hashlib.sha256()
    for path in [*media, *labels]:
        digest.update(f"{path.name}\0".encode())
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _fingerprint(
    seq: SequenceSource, source: str, stride: int, fix: bool, tiling: Tiling, motion: MotionSpec | None = None
) -> str:
    cut = asdict(tiling) if tiling.applies(seq.split) else None
    settings = [stride, fix, JPEG_QUALITY, OUTPUT_VERSION, cut]
    if motion is not None:  # single-frame fingerprints stay as they were
        settings.append({"motion": motion.to_dict(), "version": MOTION_VERSION})
    return hashlib.sha256(json.dumps([source, settings]).encode()).hexdigest()[:16]


def _reuse_previous(
    plans: list[tuple],
    sources: list[str],
    previous: dict[str, tuple[Path, dict]],
    tmp: Path,
    stride: int,
    fix: bool,
    tiling: Tiling,
    motion: MotionSpec | None = None,
) -> tuple[list[SequenceResult], list[tuple]]:
    """Link unchanged sequences of previous extractions (``key -> (root, manifest record)``) into ``tmp``; return
    them and the jobs still to run."""
    reused, todo = [], []
    offsets = motion.offsets if motion else ()
    for (seq, ann, size, _), source in zip(plans, sources):
        fingerprint = _fingerprint(seq, source, stride, fix, tiling, motion)
        root, done = previous.get(seq.key, (None, None))
        if done and done["fingerprint"] == fingerprint and _link_previous(root, tmp, done, offsets):
            reused.append(SequenceResult(**done))
        else:
            todo.append((seq, ann, size, fingerprint))
    return reused, todo


def _read_manifest(out: Path) -> dict[str, tuple[Path, dict]]:
    try:
        return {r["key"]: (out, r) for r in json.loads((out / MANIFEST).read_text())["sequences"]}
    except (OSError, ValueError, KeyError):
        return {}


def _link_previous(out: Path, tmp: Path, done: dict, offsets: Sequence[int] = ()) -> bool:
    """Hard-link a previously extracted sequence (and its motion files of ``offsets``) into the staging folder;
    False if any file is gone."""
    pairs = [(f, f.replace("images/", "labels/", 1).rsplit(".", 1)[0] + ".txt") for f in done["files"]]
    motion = [motion_path(f, d).as_posix() for f in done["files"] for d in offsets]
    if not all((out / rel).is_file() for rel in [*(p for pair in pairs for p in pair), *motion]):
        return False
    for rel in [*(p for pair in pairs for p in pair), *motion]:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(out / rel, tmp / rel)
        except OSError:
            shutil.copy2(out / rel, tmp / rel)
    return True


def _frames(
    seq: SequenceSource, stride: int = 1, decode: bool = False, every: bool = False
) -> Iterator[tuple[np.ndarray | Path | None, np.ndarray | None]]:
    """Yield per source frame, in order, what to write and its pixels. What to write: a BGR array, ``None`` for
    frames the stride drops, and for frame folders the path of frames that are already JPEG files (copied byte for
    byte: re-encoding would add a second round of compression artefacts to targets a few pixels wide) unless
    ``decode`` (tiles need the pixels). Pixels: with ``every`` (motion), every frame as BGR, else None."""
    if seq.frames_dir is not None:
        for index, path in enumerate(frame_files(seq)):
            kept = index % stride == 0
            if not (kept or every):
                yield None, None
                continue
            is_jpeg = path.suffix.lower() in (".jpg", ".jpeg") and not decode
            quick = is_jpeg and not every  # only checks that the file decodes
            image = cv2.imread(str(path), cv2.IMREAD_REDUCED_GRAYSCALE_8 if quick else cv2.IMREAD_COLOR)
            if image is None:
                raise DataError(f"sequence {seq.name}: cannot read frame image {path} (frame {index})")
            written = (path if is_jpeg else image) if kept else None
            yield written, image if every else None
        return
    for index, frame in enumerate(video_frames(seq.video, 1 if every else stride)):
        yield (frame if index % stride == 0 else None), frame if every else None


def source_frames(seq: SequenceSource) -> Iterator[np.ndarray]:
    """Every frame of a sequence, decoded to BGR in order, as extraction feeds them to the motion buffer."""
    for _, pixels in _frames(seq, 1, decode=True, every=True):
        assert pixels is not None
        yield pixels


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
    root: Path,
    seq: SequenceSource,
    ann: Annotations,
    size: tuple,
    fingerprint: str,
    stride: int,
    fix: bool,
    tiling: Tiling,
    motion: MotionSpec | None = None,
) -> SequenceResult:
    """Decode one sequence and write every ``stride``-th frame (or its tiles) with its labels and, with ``motion``,
    its motion channels from a MotionBuffer fed every source frame (in a worker)."""
    cv2.setNumThreads(1)
    width, height, stated = size
    images, labels = root / "images" / seq.split, root / "labels" / seq.split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    fixes, files, n_boxes, decoded = Fixes(**vars(ann.fixes)), [], 0, 0
    limit = seq.expected_frames
    cut = tiling.applies(seq.split) and (width > tiling.tile or height > tiling.tile)
    tiles = grid(width, height, tiling.tile, tiling.overlap) if cut else []
    keep_negatives, counts = set(), {"positives": 0, "negatives": 0, "clipped": 0, "dropped": 0}
    if cut:  # planned on the frame count the source states; frames beyond it contribute positives only
        planned = range(0, limit or stated or max(ann.boxes, default=-1) + 1, stride)
        keep_negatives = choose_negatives(
            ann.boxes, planned, tiles, tiling.negatives, tiling.seed, seq.key, tiling.min_visible
        )

    buffer = MotionBuffer(motion) if motion is not None else None

    def write(stem: str, image: np.ndarray | Path, boxes: list[Box], w: int, h: int, maps: np.ndarray | None) -> None:
        nonlocal n_boxes
        if isinstance(image, Path):
            shutil.copyfile(image, images / f"{stem}.jpg")
        elif not cv2.imwrite(str(images / f"{stem}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"cannot write {images / stem}.jpg")
        (labels / f"{stem}.txt").write_text("".join(_yolo_line(b, w, h) for b in boxes))
        files.append(f"images/{seq.split}/{stem}.jpg")
        n_boxes += len(boxes)
        for i, d in enumerate(motion.offsets if maps is not None else ()):
            path = root / motion_path(files[-1], d)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), np.ascontiguousarray(maps[..., i])):
                raise OSError(f"cannot write {path}")

    for index, (frame, pixels) in enumerate(_frames(seq, stride, decode=cut, every=buffer is not None)):
        decoded = index + 1
        if limit is not None and index >= limit:
            if not fix:
                continue  # reported as a length mismatch below
            fixes.skipped_frames += 1
            continue
        maps = None
        if buffer is not None:  # every source frame goes through the buffer, in order, as in csfnet detect
            maps = buffer.push(pixels) if frame is not None else buffer.remember(pixels)
        if frame is None:
            continue
        boxes = ann.boxes.get(index, [])
        if not cut:
            write(tile_name(seq.name, index), frame, boxes, width, height, maps)
            continue
        for t in tiles:
            kept, dropped, clipped = clip_boxes(boxes, t, tiling.min_visible)
            counts["dropped"] += dropped
            counts["clipped"] += clipped
            if not kept and (index, t.x, t.y) not in keep_negatives:
                continue
            counts["positives" if kept else "negatives"] += 1
            crop = None if maps is None else maps[t.y : t.y + t.h, t.x : t.x + t.w]
            write(tile_name(seq.name, index, t), frame[t.y : t.y + t.h, t.x : t.x + t.w], kept, t.w, t.h, crop)
    _check_length(seq, ann, decoded, stated, fix, fixes)
    return SequenceResult(
        seq.key, fingerprint, files, len(files), n_boxes, asdict(fixes), decoded, counts if cut else {}
    )


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


PERCENTILES = (5, 25, 50, 75, 95)
HISTOGRAM_EDGES = [*range(0, 65, 2), 128]


def size_percentiles(sizes: list[float] | np.ndarray) -> dict[str, float]:
    """Percentiles of object sizes (sqrt of box area, px) as ``{"p5": ..., "p95": ...}`` (zeros when empty)."""
    values = np.percentile(sizes, PERCENTILES) if len(sizes) else np.zeros(len(PERCENTILES))
    return {f"p{q}": round(float(v), 2) for q, v in zip(PERCENTILES, values)}


def _report(
    plans: list[tuple],
    results: list[SequenceResult],
    reused: int,
    stride: int,
    names: tuple[str, ...],
    tiling: Tiling,
    motion: MotionSpec | None = None,
) -> dict:
    """Counts per split (images, boxes, negatives as before) and per sequence: resolution, fps, codec, frames,
    annotated frames, objects, source object size percentiles, repairs, tiles."""
    by_key = {r.key: r for r in results}
    splits: dict[str, dict] = {}
    sequences: dict[str, dict] = {}
    sizes_by_split: dict[str, list[float]] = {}
    fixes = Fixes()
    for seq, ann, _size, info in sorted(plans, key=lambda plan: plan[0].key):
        r = by_key[seq.key]
        split = splits.setdefault(seq.split, {"sequences": 0, "images": 0, "boxes": 0, "negatives": 0})
        split["sequences"] += 1
        split["images"] += r.frames
        split["boxes"] += r.boxes
        fixes.add(Fixes(**r.fixes))
        sizes = [float(np.sqrt(b.w * b.h)) for boxes in ann.boxes.values() for b in boxes]
        sizes_by_split.setdefault(seq.split, []).extend(sizes)
        sequences[seq.key] = info | {
            "split": seq.split,
            "frames": r.decoded,
            "annotated_frames": len(ann.boxes),
            "objects": ann.count,
            "size_px": size_percentiles(sizes),
            "images": r.frames,
            "boxes": r.boxes,
            "fixes": r.fixes,
            "tiles": r.tiles,
        }
    for name, split in splits.items():
        members = [s for s in sequences.values() if s["split"] == name]
        split["frames"] = sum(s["frames"] for s in members)
        split["annotated_frames"] = sum(s["annotated_frames"] for s in members)
        split["objects"] = sum(s["objects"] for s in members)
        split["resolutions"] = sorted({f"{s['width']}x{s['height']}" for s in members})
        split["size_px"] = size_percentiles(sizes_by_split[name])
        counts, _ = np.histogram(np.minimum(sizes_by_split[name], HISTOGRAM_EDGES[-1] - 1e-6), HISTOGRAM_EDGES)
        split["size_histogram"] = {"edges": HISTOGRAM_EDGES, "counts": counts.tolist()}  # last bin: 64 px and more
        split["tiled"] = tiling.applies(name)
    report = {
        "splits": splits,
        "fixes": asdict(fixes),
        "reused_sequences": reused,
        "stride": stride,
        "names": list(names),
        "tiling": asdict(tiling),
        "sequences": sequences,
    }
    return report if motion is None else report | {"motion": motion.to_dict()}


def _write_dataset_files(
    root: Path, results: list[SequenceResult], report: dict, names: tuple[str, ...], motion: MotionSpec | None = None
) -> None:
    for split, counts in report["splits"].items():
        labels = root / "labels" / split
        counts["negatives"] = sum(1 for p in labels.glob("*.txt") if p.stat().st_size == 0)
    data = {split: f"images/{split}" for split in report["splits"]}  # paths relative to this file's folder
    data["names"] = dict(enumerate(names))
    if motion is not None:  # ultralytics builds the model with ch = channels
        data |= {"channels": 3 + motion.channels, "motion": motion.to_dict()}
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    run_only = ("reused_sequences",)  # how this run got there, not what the dataset holds
    (root / "report.json").write_text(json.dumps({k: v for k, v in report.items() if k not in run_only}, indent=2))
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
