"""Content fingerprint of the pipeline's raw data: what the extraction step's cache key depends on.

The raw-data step is never cached and computes only this fingerprint (no download): a listing of the source, so it
is cheap even for terabytes of video. Extraction takes the fingerprint as a parameter, so KFP reuses the cached
dataset (and everything after it) exactly when the data behind the URI is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from csfnet.errors import InputNotFoundError

VERSION = 1  # bump when the fingerprint's recipe changes


def source_fingerprint(uri: str) -> str:
    """sha256 over every file below ``uri`` (any fsspec URI or a local folder).

    Object stores: relative key, size and ETag of each object. Local folders: relative path, size and content hash
    (sha256 of the bytes), so a rewritten file with the same size and time still changes the fingerprint.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    root = root.rstrip("/")
    fs.invalidate_cache()  # fsspec caches listings per process: always list afresh
    if not fs.isdir(root):
        raise InputNotFoundError(f"{uri} is not a folder (expected a raw dataset root with train/ and val/)")
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    entries = []
    for path, info in sorted(fs.find(root, detail=True).items()):
        if info.get("type") == "directory":
            continue
        rel = path[len(root) :].lstrip("/")
        tag = _file_sha256(path) if local else _etag(info)
        entries.append([rel, int(info.get("size") or 0), tag])
    if not entries:
        raise InputNotFoundError(f"{uri} holds no files (expected a raw dataset root with train/ and val/)")
    return _digest({"kind": "source", "version": VERSION, "files": entries})


def synth_fingerprint(spec: Mapping[str, Any], params_file: str | Path | None = None) -> str:
    """sha256 of a synthesis spec: the step's arguments plus the ``synth`` defaults of the params file they fall
    back to (``$CSFNET_PARAMS``, else ``params.yaml``), which is all the synthetic data depends on."""
    import yaml

    path = Path(params_file or os.environ.get("CSFNET_PARAMS") or "params.yaml")
    defaults = (yaml.safe_load(path.read_text()) or {}).get("synth", {}) if path.is_file() else {}
    return _digest({"kind": "synth", "version": VERSION, "spec": dict(spec), "defaults": defaults})


def _etag(info: Mapping[str, Any]) -> str:
    for key in ("ETag", "etag", "md5Hash", "md5", "mtime", "LastModified", "last_modified"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
