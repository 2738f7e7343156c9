"""Ingestion: the raw root of a data source lands in ``data/raw``, incrementally and all or nothing.

A source is ``synth`` (the deterministic benchmark), ``synth-hd`` (the same at 1920x1080), a local folder, or any
fsspec URI (``s3://bucket/raw``; S3-compatible stores such as MinIO take ``$AWS_ENDPOINT_URL``). Files whose size and
modification time match the copy already in ``out`` are kept (hard-linked into the new tree), others are downloaded
and stamped with the source's modification time, files gone from the source disappear. The new tree is built in a
staging folder and swapped in only when complete: an unreachable or empty source, or any error, leaves ``out``
exactly as it was. Nothing is written into ``out`` besides the source's own files, so DVC's content hash of it
changes exactly when the source's content does.
"""

from __future__ import annotations

import dataclasses
import filecmp
import hashlib
import json
import os
import re
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

from csfnet.data.synth import SynthSpec, generate
from csfnet.errors import DataError, InputNotFoundError, ServiceError
from csfnet.files import replace_dir, staging_dir
from csfnet.services import mask

SYNTH_SOURCES = {"synth": None, "synth-hd": (1920, 1080)}  # name -> (width, height) overriding the spec
CONNECT_TIMEOUT = 3.0  # s: a closed port or an unreachable host fails within seconds


def _userinfo(uri: str) -> str | None:
    match = re.match(r"^[a-zA-Z][\w+.-]*://([^/@\s]*)@", uri)
    return match.group(1) if match else None


def ingest(source: str, out: str | Path, synth: SynthSpec | None = None, workers: int | None = None) -> dict[str, Any]:
    """Bring the raw root of ``source`` into ``out``; return what changed.

    ``synth`` / ``synth-hd`` generate the benchmark from ``synth`` (default :class:`SynthSpec`), skipped when
    ``out`` already holds the same spec. Any other value is a folder or fsspec URI holding ``train/`` and ``val/``
    (optionally ``test/``), or an extracted YOLO dataset (``images/`` + ``labels/``).
    """
    out = Path(out)
    if source in SYNTH_SOURCES:
        return _ingest_synth(source, out, synth or SynthSpec(), workers)
    masked = mask(source)
    fs, root = _filesystem(source)
    if _is_local(fs) and Path(root).resolve() == out.resolve():
        raise DataError(f"data source {masked} is the output folder itself; point data.source elsewhere")
    try:
        if not fs.isdir(root):
            raise InputNotFoundError(f"data source {masked} is not a folder (or does not exist)")
        listing = fs.find(root, detail=True)
    except InputNotFoundError:
        raise
    except FileNotFoundError as e:
        raise InputNotFoundError(f"data source {masked} does not exist") from e
    except Exception as e:
        raise ServiceError(f"cannot read data source {masked}: {_reason(e, source)}") from e
    files = {_relative(path, root): info for path, info in listing.items() if info.get("type", "file") == "file"}
    _check_root(masked, files)
    todo, keep = [], []
    for rel, info in sorted(files.items()):
        size, mtime = int(info.get("size") or 0), _mtime(info)
        old = out / rel
        if not old.is_file() or old.stat().st_size != size:
            todo.append((rel, info["name"], mtime))
        elif mtime is not None and abs(old.stat().st_mtime - mtime) < 1e-3:
            keep.append(rel)
        elif _same_content(fs, info, old):  # e.g. restored by dvc checkout: same bytes, new mtime
            keep.append(rel)
            if mtime is not None:
                os.utime(old, (mtime, mtime))  # metadata only; the next run compares by size and time again
        else:
            todo.append((rel, info["name"], mtime))
    old_files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} if out.is_dir() else set()
    removed = sorted(old_files - set(files))
    summary = {
        "source": masked,
        "files": len(files),
        "downloaded": len(todo),
        "kept": len(keep),
        "removed": len(removed),
        "bytes_downloaded": sum(int(files[rel].get("size") or 0) for rel, _, _ in todo),
        "changed": bool(todo or removed),
    }
    if not summary["changed"]:
        return summary
    with staging_dir(out) as tmp:
        for rel in keep:
            _link(out / rel, tmp / rel)
        for rel, _, _ in todo:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            fs.get([remote for _, remote, _ in todo], [str(tmp / rel) for rel, _, _ in todo])
        except Exception as e:
            raise ServiceError(f"cannot download from data source {masked}: {_reason(e, source)}") from e
        for rel, _, mtime in todo:
            if not (tmp / rel).is_file():
                raise ServiceError(f"data source {masked}: {rel} did not arrive")
            if mtime is not None:
                os.utime(tmp / rel, (mtime, mtime))
        replace_dir(tmp, out)
    return summary


def _ingest_synth(source: str, out: Path, spec: SynthSpec, workers: int | None) -> dict[str, Any]:
    size = SYNTH_SOURCES[source]
    if size is not None:
        spec = dataclasses.replace(spec, width=size[0], height=size[1])
    marker = out / "synth.json"
    same = marker.is_file() and json.loads(marker.read_text()) == spec.__dict__
    if not same:
        generate(out, spec, workers=workers)
    return {"source": source, "spec": spec.__dict__, "changed": not same}


def _filesystem(source: str) -> tuple[Any, str]:
    """The fsspec filesystem and root path of ``source``; S3 with short timeouts and no retry storm."""
    import fsspec

    options: dict[str, Any] = {}
    protocol = fsspec.core.split_protocol(source)[0]
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {
            "config_kwargs": {
                "connect_timeout": CONNECT_TIMEOUT,
                "read_timeout": 60,
                "retries": {"max_attempts": 2, "mode": "standard"},
            },
            "skip_instance_cache": True,
        }
        if endpoint:
            options["endpoint_url"] = endpoint
    try:
        fs, root = fsspec.core.url_to_fs(source, **options)
    except (ImportError, ValueError) as e:
        raise DataError(f"data source {mask(source)}: {e}") from e
    if hasattr(fs, "retries"):
        fs.retries = 1
    return fs, root.rstrip("/")


def _relative(path: str, root: str) -> str:
    rel = path[len(root) :].lstrip("/") if path.startswith(root) else path
    if not rel or rel.startswith("..") or "/../" in f"/{rel}":
        raise DataError(f"unexpected path {path!r} listed under {root!r}")
    return rel


def _check_root(masked: str, files: dict[str, dict]) -> None:
    if not files:
        raise DataError(f"data source {masked} is empty (expected train/ and val/ with sequences)")
    tops = {rel.split("/", 1)[0] for rel in files if "/" in rel}
    if not ({"train", "val"} <= tops or {"images", "labels"} <= tops):
        found = ", ".join(sorted(tops)) or "no folder"
        raise DataError(f"data source {masked} has no train/ and val/ folders (found: {found})")


def _mtime(info: dict) -> float | None:
    """Modification time (epoch seconds) from an fsspec listing entry: local ``mtime``, S3 ``LastModified``."""
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _same_content(fs: Any, info: dict, local: Path) -> bool:
    """Whether ``local`` holds the bytes of the source file ``info``: compared directly for local sources, by MD5
    against the ETag of single-part S3 uploads; unknown (False) otherwise."""
    if _is_local(fs):
        return filecmp.cmp(info["name"], local, shallow=False)
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    if len(etag) != 32 or "-" in etag:
        return False
    digest = hashlib.md5(usedforsecurity=False)
    with open(local, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest() == etag


def _is_local(fs: Any) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _reason(e: BaseException, source: str) -> str:
    """One line: the exception type and message, with any URI and the source's credentials in it masked."""
    text = mask(" ".join(str(e).split()) or type(e).__name__)
    secret = _userinfo(source)
    if secret:
        text = text.replace(secret, "***")
    return f"{type(e).__name__}: {text}"[:300]
