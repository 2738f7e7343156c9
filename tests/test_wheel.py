"""The pipeline ships with the package: a wheel installed outside the checkout compiles it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import yaml

from .conftest import REPO

SOURCES = ("pyproject.toml", "README.md", "csfnet", "components", "pipelines")


@pytest.mark.slow
def test_wheel_compiles_the_pipeline_outside_the_checkout(tmp_path):
    src = tmp_path / "src"  # build from a copy: no build/ or egg-info left in the shared checkout
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, src], check=True, timeout=300)
    (wheel,) = wheels.glob("csfnet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"pipelines/csfnet_pipeline.py", "components/deploy.py", "csfnet/kubeflow/client.py"} <= names

    # a fresh venv with the wheel only; its dependencies (kfp, mlflow ...) come from this environment, read-only
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (tmp_path / site / "_csfnet_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], check=True, timeout=300)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the venv and its .pth
    where = subprocess.run(
        [python, "-c", "import csfnet, components, pipelines; print(csfnet.__file__, pipelines.__file__)"],
        cwd=elsewhere,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert all(path.startswith(str(venv)) for path in where), where  # the wheel's copies, not the checkout's
    out = elsewhere / "pipeline.yaml"
    proc = subprocess.run(
        [venv / "bin" / "csfnet", "pipeline", "compile", "--out", out],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    pipeline = next(yaml.safe_load_all(out.read_text()))
    tasks = set(pipeline["root"]["dag"]["tasks"])
    assert {"raw-data", "register-model"} <= tasks and any(t.startswith("condition-") for t in tasks)
    proc = subprocess.run(  # the comparison pipeline ships in the wheel too
        [venv / "bin" / "csfnet", "pipeline", "compile", "--pipeline", "compare", "--out", out],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "compare-report" in next(yaml.safe_load_all(out.read_text()))["root"]["dag"]["tasks"]
