"""How many threads torch computes with on the CPU.

ultralytics' ``select_device`` sets torch to one thread less than the machine's cores whenever it picks the CPU
(``NUM_THREADS``; one thread on a 2-core machine, half of it), and its import sets ``OMP_NUM_THREADS=1`` when unset.
This project trains and validates on the CPU in its README commands and CI, so training and validation get every
core the process may use instead, unless the user chose a count with ``OMP_NUM_THREADS``: read here, when ``csfnet``
is imported, before ultralytics' import overwrites it (``torchrun`` sets it to 1 in each process it starts when it
starts several).

Spinning: GNU OpenMP (torch's on Linux) lets a thread that waits at a barrier spin for ``GOMP_SPINCOUNT`` iterations
(300 000 by default) before it sleeps. Beside another busy process that turns two threads on two cores into a
crawl: one optimizer step of the quick preset took 22.9 s instead of 3.7 s at one thread. csfnet sets
``GOMP_SPINCOUNT=1000`` (unless ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` is set; read when torch loads, so only in
processes that import csfnet first): 2 threads are then 1.57x faster than 1 on an idle 2-core machine and 0.88x
beside a busy process (benchmarks/README.md, CPU threads).
"""

from __future__ import annotations

import os
from typing import Any

USER_OMP_NUM_THREADS = os.environ.get("OMP_NUM_THREADS")
SPIN_COUNT = "1000"  # GNU OpenMP spin iterations before a waiting thread sleeps (its default: 300 000)

if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)


def cpu_threads(user: str | None = USER_OMP_NUM_THREADS) -> int:
    """``user`` (``OMP_NUM_THREADS`` as set before ultralytics' import) when it is a positive count, else the number
    of cores this process may run on."""
    if user and user.strip().isdigit() and int(user) > 0:
        return int(user)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def use_cpu_threads(*_: Any) -> None:
    """Give torch :func:`cpu_threads` threads (after ultralytics' ``select_device`` has set its own count); takes and
    ignores a trainer or validator, so that it can be an ultralytics callback."""
    import torch

    threads = cpu_threads()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
