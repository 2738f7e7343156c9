"""Kubeflow: the compiled IR, a local run of the whole pipeline, the manifests and the Dockerfiles."""

from __future__ import annotations

import os
import re
import subprocess

import mlflow
import pytest
import tomllib
import yaml
from dockerfile_parse import DockerfileParser
from mlflow import MlflowClient

from .conftest import REPO, tool

STEPS = {"raw-data", "extract-frames", "tune", "train", "evaluate", "robustness", "export-onnx", "register-model"}


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    cmd = [tool("csfnet"), "pipeline", "compile", "--out", str(out), "--gpus", "2"]
    cmd += [
        "--node-selector",
        "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3",
        "--toleration",
        "nvidia.com/gpu:NoSchedule",
    ]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    pipeline, platform = yaml.safe_load_all(out.read_text())
    return {"pipeline": pipeline, "platform": platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]}


def _executor(ir: dict, task: str) -> str:
    return ir["pipeline"]["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")


def test_ir_has_every_step_and_exposes_parameters(ir):
    tasks = ir["pipeline"]["root"]["dag"]["tasks"]
    assert set(tasks) == STEPS
    params = set(ir["pipeline"]["root"]["inputDefinitions"]["parameters"])
    assert {"preset", "model", "epochs", "trials", "sigmas", "registry_name", "source_uri"} <= params
    assert all(t["cachingOptions"].get("enableCache") for t in tasks.values())
    assert all("retryPolicy" in tasks[t] for t in STEPS - {"raw-data"})
    assert set(tasks["register-model"]["dependentTasks"]) >= {"evaluate", "robustness", "export-onnx"}


def test_gpu_steps_request_gpus_on_gpu_nodes(ir):
    executors = ir["pipeline"]["deploymentSpec"]["executors"]
    for task in STEPS:
        resources = executors[_executor(ir, task)]["container"].get("resources", {})
        if task in {"tune", "train"}:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "2"
            platform = ir["platform"][_executor(ir, task)]
            assert platform["nodeSelector"]["labels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
            assert platform["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        else:
            assert "accelerator" not in resources


def test_credentials_come_from_secrets_only(ir):
    for task in STEPS - {"raw-data", "extract-frames"}:
        secrets = {s["secretName"]: s for s in ir["platform"][_executor(ir, task)]["secretAsEnv"]}
        keys = {k["envVar"] for k in secrets["csfnet-mlflow"]["keyToEnv"]}
        assert {"MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys
    tune = {s["secretName"] for s in ir["platform"][_executor(ir, "tune")]["secretAsEnv"]}
    assert "csfnet-optuna" in tune
    text = yaml.safe_dump(ir)
    assert not re.search(
        r"(?i)password|secret_access_key:\s*\S+[A-Za-z0-9]{16}", text.replace("AWS_SECRET_ACCESS_KEY", "")
    )


@pytest.mark.slow
def test_local_run_ends_with_a_registered_model(tmp_path):
    params = {
        "synth": {"train_videos": 2, "val_videos": 1, "frames": 6, "width": 96, "height": 64, "seed": 3},
        "extract": {"stride": 1},
        "train": {"model": "csfnet-n", "preset": "quick"},
        "presets": {"quick": {"imgsz": 64, "epochs": 1, "batch": 4, "workers": 0, "mosaic": 0.0, "plots": False}},
        "tune": {"trials": 2, "epochs": 1, "imgsz": 64},
        "robustness": {"sigmas": [0, 10]},
        "export": {"int8": False, "verify_frames": 2},
        "register": {"name": "kfp-uav", "margin": 0.0},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CSFNET_PARAMS": str(tmp_path / "params.yaml")}
    cmd = [tool("csfnet"), "pipeline", "run-local", "--pipeline-root", str(tmp_path / "kfp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "kfp-uav v1" in proc.stdout and "first version: becomes champion" in proc.stdout

    mlflow.set_tracking_uri(uri)
    champion = MlflowClient().get_model_version_by_alias("kfp-uav", "champion")
    assert str(champion.version) == "1"
    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # one parent per Kubeflow run, closed
    stages = sorted(
        r.data.tags["csfnet.stage"] for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    )
    assert stages == ["eval", "export", "register", "robustness", "train", "tune"]
    reports = list((tmp_path / "kfp").rglob("evaluate/report"))
    assert reports and '<img src="data:image/png;base64,' in reports[0].read_text()


def test_manifests_render_with_kustomize():
    out = subprocess.run(["kubectl", "kustomize", str(REPO / "infra/k8s")], check=True, capture_output=True, text=True)
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
    assert {
        ("Deployment", "mlflow"),
        ("StatefulSet", "postgres"),
        ("Service", "mlflow"),
        ("Service", "postgres"),
    } <= set(docs)
    assert {("Secret", n) for n in ("csfnet-mlflow", "csfnet-optuna", "csfnet-postgres")} <= set(docs)
    assert all(d["metadata"].get("namespace") == "csfnet" for k, d in docs.items() if k[0] != "Namespace")
    server = docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]["containers"][0]
    assert any(a.startswith("--backend-store-uri=postgresql") for a in server["args"])
    assert server["image"] == "ghcr.io/csfnet/csfnet:0.1.0-cpu"
    secrets = [d for k, d in docs.items() if k[0] == "Secret"]
    for secret in secrets:  # templates: nothing that looks like a real credential
        for key, value in secret["stringData"].items():
            if "PASSWORD" in key or "SECRET" in key or "KEY_ID" in key:
                assert value == "CHANGE_ME", (secret["metadata"]["name"], key)


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfile_is_sound(name):
    parser = DockerfileParser(fileobj=(REPO / "infra/docker" / name).open("rb"))
    instructions = parser.structure
    base = parser.baseimage
    assert ":" in base and not base.endswith(":latest")  # pinned base image
    for ins in instructions:
        if ins["instruction"] == "COPY":
            *sources, _ = ins["value"].split()
            for source in sources:
                assert (REPO / source).exists(), f"{name}: COPY source {source} missing"
    users = [ins["value"] for ins in instructions if ins["instruction"] == "USER"]
    assert users and users[-1] not in {"0", "root"}  # runs as a non-root user
    env = " ".join(ins["value"] for ins in instructions if ins["instruction"] == "ENV")
    assert not re.search(r"(?i)(password|secret|token|AWS_ACCESS)", env)  # no credentials baked in
    runs = " ".join(ins["value"] for ins in instructions if ins["instruction"] == "RUN")
    assert "torch==2.14.1" in runs and "requirements" in runs
    requirements = [
        line
        for line in (REPO / "infra/docker/requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert requirements and all(re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[^=\s]+", r) for r in requirements)
    entry = (
        yaml.safe_load(parser.structure[-2]["value"]) if parser.structure[-2]["instruction"] == "ENTRYPOINT" else None
    )
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry and entry[0] in scripts  # the entry command is a console script of the package
