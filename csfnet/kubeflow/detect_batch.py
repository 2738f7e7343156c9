"""``csfnet detect`` over an archive of videos, in parallel shards: the detection pipeline's logic.

Every video of a folder or bucket (any fsspec URI) gets its own output folder ``<out>/<video stem>/``, which
``csfnet detect`` renames into place only when complete, so a folder holding ``summary.json`` is a finished video:
a re-run skips it, and a run cut short resumes with the rest. One merged ``<out>/summary.json`` lists them all.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from csfnet.data.formats import VIDEO_SUFFIXES
from csfnet.errors import DataError, InputNotFoundError
from csfnet.files import write_json

SUMMARY = "summary.json"  # csfnet.detect.run.SUMMARY: written last, so its presence means finished


def list_videos(uri: str) -> list[str]:
    """The videos below ``uri`` (a folder or bucket prefix), sorted; their stems name the output folders.

    Raises:
        InputNotFoundError: no video there.
        DataError: two videos share a stem (their outputs would collide).
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache()
    found = sorted(p for p in fs.find(root.rstrip("/")) if PurePosixPath(p).suffix.lower() in VIDEO_SUFFIXES)
    if not found:
        raise InputNotFoundError(f"{uri}: no video ({', '.join(VIDEO_SUFFIXES)}) found")
    protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    videos = [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in found]
    stems: dict[str, str] = {}
    for video in videos:
        stem = PurePosixPath(video).stem
        if stem in stems:
            raise DataError(f"videos {stems[stem]} and {video} share the name {stem!r}: their outputs would collide")
        stems[stem] = video
    return videos


def output_folder(out: str | Path, video: str) -> Path:
    """Where the results of ``video`` go: ``<out>/<video stem>``."""
    return Path(out) / PurePosixPath(video).stem


def finished(out: str | Path, video: str) -> bool:
    """Whether ``video`` has complete results under ``out``."""
    return (output_folder(out, video) / SUMMARY).is_file()


def plan_shards(videos: Sequence[str], out: str | Path, workers: int) -> list[list[str]]:
    """``workers`` lists of the unfinished videos, dealt round-robin (some may be empty)."""
    if workers < 1:
        raise DataError(f"detection workers must be >= 1, got {workers}")
    pending = [v for v in videos if not finished(out, v)]
    return [pending[i::workers] for i in range(workers)]


def detect_videos(videos: Sequence[str], model: str, out: str | Path, flags: Sequence[str] = ()) -> dict[str, list]:
    """Run ``csfnet detect`` (with ``flags``, e.g. ``--set`` pairs) on each unfinished video of ``videos``;
    return the stems run and skipped. Remote videos are downloaded to a temporary file first."""
    import fsspec

    from csfnet.kubeflow.step import run_step

    ran, skipped = [], []
    for video in videos:
        stem = PurePosixPath(video).stem
        if finished(out, video):
            skipped.append(stem)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            local = video
            if "://" in video:
                local = str(Path(tmp) / PurePosixPath(video).name)
                fs, path = fsspec.core.url_to_fs(video)
                fs.get(path, local)
            run_step(["detect", "--model", model, "--source", local, "--out", output_folder(out, video), *flags])
        ran.append(stem)
    return {"ran": ran, "skipped": skipped}


def merge_summaries(videos: Sequence[str], out: str | Path) -> dict[str, Any]:
    """One ``<out>/summary.json`` over every video's summary: totals, per-video results, the videos still missing."""
    per_video, missing = {}, []
    for video in videos:
        path = output_folder(out, video) / SUMMARY
        if path.is_file():
            per_video[PurePosixPath(video).stem] = json.loads(path.read_text())
        else:
            missing.append(PurePosixPath(video).stem)
    summary = {
        "videos": len(videos),
        "finished": len(per_video),
        "missing": missing,
        "frames": sum(s["frames"] for s in per_video.values()),
        "detections": sum(s["detections"] for s in per_video.values()),
        "per_video": per_video,
    }
    write_json(Path(out) / SUMMARY, summary)
    return summary
