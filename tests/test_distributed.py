"""Training under torchrun: two "nodes" on this machine (one launcher each, loopback rendezvous, gloo on CPU)."""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import psutil
import pytest
import torch
import yaml
from ultralytics import YOLO
from ultralytics.utils.torch_utils import unwrap_model

from csfnet.distributed import Launch, current_launch, device_setting
from csfnet.errors import SettingsError
from csfnet.train import train

from .conftest import TINY_TRAIN, free_port, tool

# A global batch of all 16 training images, 8 per rank on two ranks: every SGD step sees the same images as one
# process's, without augmentation, so what separates the runs is the sharding itself (per-rank BatchNorm batches).
PRESET = {**TINY_TRAIN, "batch": 16, "nbs": 16, "warmup_epochs": 0, "epochs": 2, "optimizer": "SGD", "lr0": 0.01}
PRESET.update(dict.fromkeys(("fliplr", "hsv_h", "hsv_s", "hsv_v", "translate", "scale"), 0.0))


def _params(tmp_path: Path, epochs: int) -> None:
    """params.yaml (CSFNET_PARAMS points here) with a tiny CPU preset, so `csfnet train` needs no flags for it."""
    tiny = {**PRESET, "epochs": epochs}
    params = {"train": {"model": "csfnet-n", "preset": "tiny", "device": "cpu"}, "presets": {"tiny": tiny}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))


@pytest.fixture
def two_nodes(tmp_path: Path):
    """Start two one-rank "nodes" training a run folder together; any launcher left running is killed at the end."""
    started: list[subprocess.Popen] = []

    def start(data: Path, out: Path) -> tuple[subprocess.Popen, subprocess.Popen]:
        port = free_port()
        started.extend((_launch(0, port, data, out, tmp_path), _launch(1, port, data, out, tmp_path / "node1")))
        return started[-2], started[-1]

    yield start
    for launcher in started:
        if launcher.poll() is None:
            _kill_node(launcher)


def _launch(node: int, port: int, data: Path, out: Path, cwd: Path) -> subprocess.Popen:
    """One node's launcher running `csfnet train` with a static rendezvous on the loopback interface."""
    cwd.mkdir(exist_ok=True)
    command = [tool("torchrun"), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node)]
    command += ["--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "csfnet", "train"]
    command += ["--data", str(data), "--out", str(out)]
    log = (cwd / f"node{node}.log").open("a")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_node(launcher: subprocess.Popen) -> None:
    """What a node failure does: SIGKILL the launcher and its workers (torchrun gives each its own session)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for process in [psutil.Process(launcher.pid), *psutil.Process(launcher.pid).children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    launcher.wait(timeout=30)


def _epochs(run: Path) -> list[dict[str, float]]:
    with (run / "results.csv").open() as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _wait(procs: tuple[subprocess.Popen, ...], timeout: float = 240) -> list[int]:
    return [p.wait(timeout=timeout) for p in procs]


def test_launch_comes_from_the_launchers_environment():
    assert current_launch({}) == Launch()  # a plain process
    assert current_launch({"WORLD_SIZE": "1", "RANK": "0"}) == Launch()  # torchrun with one process
    env = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node0"}
    launch = current_launch(env)
    assert (launch.rank, launch.local_rank, launch.world_size, launch.distributed, launch.is_main) == (
        3,
        1,
        4,
        True,
        False,
    )
    assert device_setting("cpu", launch) == "cpu"  # gloo; a GPU setting becomes the local rank's GPU
    with pytest.raises(SettingsError, match="RANK"):
        current_launch({"WORLD_SIZE": "2"})


@pytest.mark.slow
def test_two_nodes_train_like_one_process_and_only_rank_0_writes(tiny_data, tmp_path, two_nodes):
    _params(tmp_path, epochs=2)
    out = tmp_path / "runs" / "torchrun"
    assert _wait(two_nodes(tiny_data, out)) == [0, 0], (tmp_path / "node0.log").read_text()[-3000:]

    assert (out / "weights" / "best.pt").is_file() and not (out / "weights" / "last_state.pt").exists()
    assert sorted(p.name for p in (tmp_path / "node1").iterdir()) == ["node1.log"]  # rank 1 wrote nothing
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")  # rank 0's store (its working folder)
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert [r.data.tags.get("csfnet.stage") for r in runs].count("train") == 1
    assert "DDP: debug command" not in (tmp_path / "node0.log").read_text()  # ultralytics spawned no workers

    start = {}
    grab = {"on_pretrain_routine_end": lambda t: start.update(_weights(unwrap_model(t.model)))}
    single = train(tiny_data, out=tmp_path / "single", callbacks=grab)  # one process, same batch
    assert [r["epoch"] for r in _epochs(out)] == [r["epoch"] for r in _epochs(single.run_dir)] == [1, 2]
    two, one = _weights(YOLO(str(out / "weights" / "last.pt")).model), _weights(YOLO(str(single.last)).model)
    one_update, two_update = _norm({k: one[k] - start[k] for k in one}), _norm({k: two[k] - start[k] for k in one})
    gap = _norm({k: two[k] - one[k] for k in one})
    print(f"weight update: one process {one_update:.4g}, two ranks {two_update:.4g}; gap {gap:.4g}")
    # Measured: updates 0.2564 and 0.2577 (0.5% apart), gap 0.363, while halving the BatchNorm batch in one process
    # (batch 8, two accumulated per step) moved it by 0.380: on this set the updates are noise-dominated directions.
    assert abs(two_update - one_update) < 0.1 * one_update  # the global batch, averaged over ranks, is one step
    assert gap < 2 * one_update


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().clone() for k, v in model.named_parameters()}


def _norm(tensors: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in tensors.values())))


@pytest.mark.slow
def test_a_node_killed_mid_epoch_resumes_from_the_shared_checkpoint(tiny_data, tmp_path, two_nodes):
    _params(tmp_path, epochs=3)
    out = tmp_path / "runs" / "torchrun"
    node0, node1 = two_nodes(tiny_data, out)
    deadline = time.monotonic() + 240
    while not (out / "weights" / "last_state.pt").is_file():  # written after last.pt, once the epoch is saved
        assert node0.poll() is None and time.monotonic() < deadline, (tmp_path / "node0.log").read_text()[-3000:]
        time.sleep(0.2)
    _kill_node(node1)  # node 1 dies during the second epoch
    assert node1.returncode == -signal.SIGKILL
    assert node0.wait(timeout=120) != 0  # its peer is gone: the surviving node fails instead of hanging
    assert [r["epoch"] for r in _epochs(out)] == [1]

    assert _wait(two_nodes(tiny_data, out)) == [0, 0], (tmp_path / "node0.log").read_text()[-3000:]
    log = (tmp_path / "node0.log").read_text()
    assert "Resuming training" in log and "from epoch 2 to 3 total epochs" in log
    assert [r["epoch"] for r in _epochs(out)] == [1, 2, 3]
    assert '"resumed": true' in log  # what `csfnet train` printed
