"""Shared fixtures: a tiny synthetic dataset and a tiny trained model, built once per session."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

import csfnet  # noqa: F401  (sets the offline environment before ultralytics is imported)
from csfnet.data.extract import extract
from csfnet.data.synth import SynthSpec, generate

from .parallel import heaviest_first, shared, worker

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"  # screenshots and other outputs worth keeping after a run
TINY = SynthSpec(train_videos=2, val_videos=1, frames=8, width=96, height=64, seed=3)
# the repositories tests `dvc init` lack the project's `core.analytics = false`: no analytics daemon per dvc command
os.environ["DVC_NO_ANALYTICS"] = "1"


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own MLflow store and no params.yaml unless it writes one."""
    for variable in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):  # MLflow exports them
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("CSFNET_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("CSFNET_PARAMS", str(tmp_path / "params.yaml"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("mlflow.tracking.fluent._active_experiment_id", None)  # no experiment of an earlier test
    # nor its mlflow.set_tracking_uri(...): that would outrank this test's MLFLOW_TRACKING_URI
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # its cache key omits AWS_ENDPOINT_URL: each test's moto server is new


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if worker() is not None:  # each worker collects; all must hand the controller the same order
        heaviest_first(items)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared(tmp_path_factory, "raw", lambda root: generate(root / "raw", TINY, workers=2))


@pytest.fixture(scope="session")
def tiny_data(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build(root: Path) -> Path:
        extract(tiny_raw, root / "dataset", workers=2)
        return root / "dataset" / "data.yaml"

    return shared(tmp_path_factory, "dataset", build)


@pytest.fixture(scope="session")
def tiny_weights(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of CSF-Net-n trained for one epoch at imgsz 64 through ultralytics' trainer."""
    from csfnet.train import train

    def build(root: Path) -> Path:
        old = Path.cwd()
        os.chdir(root)
        try:
            result = train(
                tiny_data, model="csfnet-n", out=root / "train", preset="quick", overrides=TINY_TRAIN, device="cpu"
            )
        finally:
            os.chdir(old)
        return result.best

    return shared(tmp_path_factory, "run", build)


@pytest.fixture(scope="session")
def micro_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.yaml of tests/detector_fixture's native-scale tiles of synthetic 1080p video, which every micro model
    trains on."""
    from . import detector_fixture

    return shared(tmp_path_factory, "micro-tiles", detector_fixture.micro_tiles)


TINY_TRAIN = {"epochs": 1, "imgsz": 64, "batch": 4, "workers": 0, "plots": False, "mosaic": 0.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    """A console script of this environment (dvc, mlflow ...), found next to the running Python."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name
