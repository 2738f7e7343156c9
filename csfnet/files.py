"""File helpers shared by every stage: all-or-nothing output folders and files, worker counts."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` (same filesystem, so it can be renamed into place); removed if still there.

    Staging folders that a killed process (SIGKILL skips every ``finally``) left beside ``out`` are removed first.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.tmp-*-*"):
        pid = stale.name.removeprefix(f".{out.name}.tmp-").split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def replace_dir(src: Path, dst: Path) -> None:
    """Move the finished ``src`` to ``dst``, replacing any previous ``dst`` with two renames."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(old)
    src.rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to write; renamed onto ``path`` when the block succeeds, removed otherwise,
    so readers (the next DVC stage, a concurrent process) never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text``, all or nothing (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, all or nothing (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def process_pool(workers: int, preload: str = "") -> ProcessPoolExecutor:
    """A pool of ``workers`` processes started from a clean forkserver, not forked from this process: a child forked
    after OpenCV's thread pool ran here inherits its locked state and hangs in its first OpenCV call. ``preload``:
    a module the forkserver imports when it first starts, so workers fork with it loaded (scripts that use the pool
    need the ``if __name__ == "__main__":`` guard, as with spawn; a script piped on stdin, ``python - <<EOF``, cannot
    start workers at all: CPython's workers re-run ``<stdin>`` as a file and the pool breaks. ``python -c``,
    ``python -m`` and console scripts work)."""
    context = multiprocessing.get_context("forkserver")
    if preload:
        context.set_forkserver_preload([preload])  # no effect once this process's forkserver runs
    return ProcessPoolExecutor(workers, mp_context=context)


def worker_count(requested: int | None, jobs: int) -> int:
    """Processes to use: ``requested`` or every available core, never more than there are jobs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(requested or cores, max(jobs, 1)))
