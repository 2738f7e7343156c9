"""CPU threads: training and validation use every core (ultralytics' select_device leaves one idle: half of a
2-core machine), unless the user set OMP_NUM_THREADS before csfnet was imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from csfnet.threads import cpu_threads

CORES = len(os.sched_getaffinity(0))

PROBE = """
import json, os, sys, torch
from csfnet.trainer import CSFNetTrainer  # csfnet first, as its command line does: it reads OMP_NUM_THREADS
from csfnet.validator import CSFNetValidator
from ultralytics.utils.torch_utils import select_device

trainer = CSFNetTrainer(overrides={"model": "csfnet-n", "data": sys.argv[1], "device": "cpu", "imgsz": 64,
                                   "project": sys.argv[2], "name": "t", "plots": False})
counts = {"trainer": torch.get_num_threads()}
select_device("cpu")
counts["select_device"] = torch.get_num_threads()
CSFNetValidator(args={"data": sys.argv[1], "device": "cpu"}).run_callbacks("on_val_start")
counts["validator"] = torch.get_num_threads()
print(json.dumps({**counts, "spin": os.environ.get("GOMP_SPINCOUNT")}))
"""


def _probe(tiny_data: Path, tmp_path: Path, omp: str | None, spin: str | None = None) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    if spin is not None:
        env["GOMP_SPINCOUNT"] = spin
    run = subprocess.run([sys.executable, "-c", PROBE, str(tiny_data), str(tmp_path)], env=env, capture_output=True,
                         text=True, timeout=300, check=True)  # fmt: skip
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_thread_count_is_the_users_else_every_core():
    assert cpu_threads(None) == cpu_threads("") == cpu_threads("0") == cpu_threads("many") == CORES
    assert cpu_threads("3") == 3 and cpu_threads(" 5 ") == 5


def test_training_and_validation_use_every_core_unless_the_user_chose(tiny_data, tmp_path):
    ultralytics = min(8, max(1, CORES - 1))  # what select_device leaves torch with on the CPU
    every_core = {"trainer": CORES, "select_device": ultralytics, "validator": CORES}
    assert _probe(tiny_data, tmp_path, None) == {**every_core, "spin": "1000"}  # waiting threads sleep soon
    assert _probe(tiny_data, tmp_path, "3", "5") == {"trainer": 3, "select_device": ultralytics, "validator": 3,
                                                      "spin": "5"}  # fmt: skip
