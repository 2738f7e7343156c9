"""Kubeflow: the compiled IR, a local run of the whole pipeline, the manifests and the Dockerfiles."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest
import tomllib
import yaml
from dockerfile_parse import DockerfileParser
from mlflow import MlflowClient

from csfnet.kubeflow.deploy import from_dict

from .conftest import REPO, free_port, tool
from .services import wait_http

STEPS = {"raw-data", "extract-frames", "tune", "train", "evaluate", "robustness", "export-onnx", "register-model"}
TRACKED = STEPS - {"raw-data", "extract-frames"}


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
    return {
        "pipeline": pipeline,
        "platform": platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"],
        "text": out.read_text(),
    }


def _executor(ir: dict, task: str) -> str:
    return ir["pipeline"]["root"]["dag"]["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")


def test_ir_has_every_step_and_exposes_parameters(ir):
    tasks = ir["pipeline"]["root"]["dag"]["tasks"]
    assert set(tasks) == STEPS | {"condition-1"}
    params = set(ir["pipeline"]["root"]["inputDefinitions"]["parameters"])
    assert {"preset", "model", "epochs", "trials", "sigmas", "registry_name", "source_uri", "canary_percent"} <= params
    assert all(tasks[t]["cachingOptions"].get("enableCache") for t in STEPS - {"raw-data"})
    assert all("retryPolicy" in tasks[t] for t in STEPS - {"raw-data"})
    assert set(tasks["register-model"]["dependentTasks"]) >= {"evaluate", "robustness", "export-onnx"}


def test_cache_keys_hold_only_real_inputs(ir):
    """No step takes a per-run value; raw-data is never cached and feeds extraction the content fingerprint."""
    tasks = ir["pipeline"]["root"]["dag"]["tasks"]
    assert not re.search(r"pipeline_job_(uuid|name)|PIPELINE_JOB|workflow\.uid|\{\{\$\.pipeline", ir["text"])
    for name, task in tasks.items():
        for spec in task.get("inputs", {}).get("parameters", {}).values():
            assert set(spec) <= {"componentInputParameter", "taskOutputParameter", "runtimeValue"}, (name, spec)
    assert not tasks["raw-data"]["cachingOptions"].get("enableCache")
    outputs = ir["pipeline"]["components"]["comp-raw-data"]["outputDefinitions"]["parameters"]
    assert outputs == {"fingerprint": {"parameterType": "STRING"}}
    fingerprint = tasks["extract-frames"]["inputs"]["parameters"]["fingerprint"]["taskOutputParameter"]
    assert fingerprint == {"outputParameterKey": "fingerprint", "producerTask": "raw-data"}
    # the MLflow parent comes from the run's pod label, an environment variable outside the cache key
    for task in TRACKED:
        env = ir["platform"][_executor(ir, task)]["fieldPathAsEnv"]
        assert {"name": "CSFNET_PIPELINE_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in env


def test_pods_install_nothing(ir):
    assert "pip install" not in ir["text"] and "pip3 install" not in ir["text"]
    for executor in ir["pipeline"]["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"].startswith("ghcr.io/csfnet/csfnet:")
    # one kfp pin: pyproject == the compiler's version == the image's requirements
    pins = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d.split("#")[0].strip() for d in pins if re.match(r"kfp\s*==", d)]
    requirements = (REPO / "infra/docker/requirements.txt").read_text().splitlines()
    assert pin == f"kfp=={version('kfp')}" and pin in requirements
    assert f"kfp-kubernetes=={version('kfp-kubernetes')}" in requirements
    assert ir["pipeline"]["sdkVersion"] == f"kfp-{version('kfp')}"  # the IR says which kfp compiled it


def test_deploy_runs_only_when_the_champion_changed(ir):
    condition = ir["pipeline"]["root"]["dag"]["tasks"]["condition-1"]
    assert condition["dependentTasks"] == ["register-model"]
    trigger = condition["triggerPolicy"]["condition"]
    assert trigger == "inputs.parameter_values['pipelinechannel--register-model-Output'] != ''"
    deploy = ir["pipeline"]["components"]["comp-condition-1"]["dag"]["tasks"]["deploy"]
    inputs = deploy["inputs"]["parameters"]
    assert inputs["model_uri"] == {"componentInputParameter": "pipelinechannel--register-model-Output"}
    assert inputs["canary_percent"] == {"componentInputParameter": "pipelinechannel--canary_percent"}
    assert inputs["apply"]["runtimeValue"]["constant"] is True


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
    for task in TRACKED:
        platform = ir["platform"][_executor(ir, task)]
        secrets = {s["secretName"]: s for s in platform["secretAsEnv"]}
        keys = {k["envVar"] for k in secrets["csfnet-mlflow"]["keyToEnv"]}
        assert {"MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} <= keys
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= keys
        assert platform["podMetadata"]["labels"]["csfnet.io/mlflow-client"] == "true"  # NetworkPolicy to MLflow
    for task in ("raw-data", "extract-frames"):  # object store only
        (secret,) = ir["platform"][_executor(ir, task)]["secretAsEnv"]
        assert {k["envVar"] for k in secret["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL",
        }
    tune = ir["platform"][_executor(ir, "tune")]
    assert "csfnet-optuna" in {s["secretName"] for s in tune["secretAsEnv"]}
    assert tune["podMetadata"]["labels"]["csfnet.io/optuna-client"] == "true"
    text = ir["text"]
    for name in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"):  # secret key names, not values
        text = text.replace(name, "")
    assert not re.search(r"(?i)password|secret_access_key:\s*\S+[A-Za-z0-9]{16}", text)


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

    # the champion changed, so deploy ran (locally it renders): the InferenceService serves models:/kfp-uav/1
    (manifest,) = (tmp_path / "kfp").rglob("deploy/manifest")
    isvc = from_dict(yaml.safe_load(manifest.read_text()))
    assert isvc.spec.predictor.model.storage_uri == "models:/kfp-uav/1"
    assert isvc.spec.predictor.model.runtime == "csfnet-mlflow"
    (image,) = list((tmp_path / "kfp").rglob("extract-frames/dataset/images/val/*.jpg"))[:1]
    start = time.monotonic()
    _serves_like_mlflow_models_serve(uri, "models:/kfp-uav/1", image, tmp_path)
    print(f"serving check: {time.monotonic() - start:.1f} s")

    # resubmitted with only the margin changed: raw-data re-lists the data (same fingerprint), every step up to
    # export comes from the cache, register re-registers the same model (no new version, no new champion) and
    # deploy is skipped
    before = set((tmp_path / "kfp").iterdir())
    start = time.monotonic()
    proc = subprocess.run(
        [*cmd, "--param", "margin=10"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (second,) = set((tmp_path / "kfp").iterdir()) - before
    ran = {p.name for p in second.iterdir()}  # a step served from the cache writes nothing
    if len(list((tmp_path / "kfp" / ".kfp_cache").iterdir())) > 1:
        # csfnet's code or params changed between the runs (a shared checkout): the cache must not serve anything
        assert {"extract-frames", "train"} <= ran
        return
    assert ran == {"raw-data", "register-model"}, sorted(ran)
    registered = json.loads((second / "register-model" / "executor_output.json").read_text())
    assert registered["parameterValues"]["Output"] == ""  # no new champion: the condition is false
    assert "deploy" not in ran and len(list((tmp_path / "kfp").rglob("deploy/manifest"))) == 1
    versions = MlflowClient().search_model_versions("name='kfp-uav'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(MlflowClient().get_model_version_by_alias("kfp-uav", "champion").version) == "1"
    print(f"cached resubmission: {time.monotonic() - start:.1f} s")


def _serves_like_mlflow_models_serve(tracking_uri: str, model_uri: str, image: Path, tmp_path: Path) -> None:
    """KServe's path (the storage container's command, then the ServingRuntime's command on /mnt/models) answers
    byte for byte what ``mlflow models serve -m <model_uri>`` answers: its request handler, run here in-process."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    storage = yaml.safe_load((REPO / "infra/k8s/serving/storage.yaml").read_text())["spec"]["container"]
    runtime = yaml.safe_load((REPO / "infra/k8s/serving/runtime.yaml").read_text())["spec"]["containers"][0]
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # mlflow's uvicorn: this environment's
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    local = {"python": sys.executable, "mlflow": tool("mlflow")}
    mnt = tmp_path / "mnt-models"
    init = [local.get(c, c) for c in storage["command"]] + [model_uri, str(mnt)]
    subprocess.run(init, env=env, check=True, capture_output=True, timeout=300)
    port = free_port()
    args = [a.replace("/mnt/models", str(mnt)).replace("0.0.0.0", "127.0.0.1") for a in runtime["args"]]
    args = [f"--port={port}" if a.startswith("--port=") else a for a in args]
    kserve = [*(local.get(c, c) for c in runtime["command"]), *args]
    server = subprocess.Popen(kserve, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = {"image": base64.b64encode(image.read_bytes()).decode()}
    body = json.dumps({"dataframe_records": [record], "params": {"conf": 0.001}})
    try:
        model = mlflow.pyfunc.load_model(model_uri)  # what `mlflow models serve -m models:/...` loads and runs
        expected = scoring_server.invocations(body, "application/json", model, model.metadata.get_input_schema())
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=180)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = response.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert expected.status == 200 and json.loads(expected.response)["predictions"]
    assert served == expected.response


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


def test_serving_manifests_render_with_kustomize():
    out = subprocess.run(
        ["kubectl", "kustomize", str(REPO / "infra/k8s/serving")], check=True, capture_output=True, text=True
    )
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
    runtime = docs[("ServingRuntime", "csfnet-mlflow")]["spec"]
    assert runtime["supportedModelFormats"][0]["name"] == "mlflow"
    (container,) = runtime["containers"]
    assert container["command"] == ["mlflow", "models", "serve"] and "--env-manager=local" in container["args"]
    assert "--model-uri=/mnt/models" in container["args"] and container["image"].startswith("ghcr.io/csfnet/csfnet:")
    storage = docs[("ClusterStorageContainer", "csfnet-mlflow")]["spec"]
    assert storage["supportedUriFormats"] == [{"prefix": "models:/"}]
    assert storage["container"]["envFrom"] == [{"secretRef": {"name": "csfnet-mlflow-serving"}}]
    assert all("namespace" not in d["metadata"] for d in docs.values())  # applied to the serving namespace


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
    copied = {ins["value"].split()[0] for ins in instructions if ins["instruction"] == "COPY"}
    assert {"csfnet", "components", "pipelines"} <= copied  # the pipeline ships in the image
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


def test_step_runs_the_command_line_in_a_subprocess(capfd):
    """Pod-side code never imports the CLI; a failed command is one clear error with its exit code and stderr."""
    code = "import sys, csfnet.kubeflow.step, csfnet.kubeflow.client; assert 'csfnet.cli' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
    from csfnet.kubeflow.step import StepError, run_step

    with pytest.raises(StepError, match=r"csfnet no-such-command exited with 2; stderr ends:\n(.|\n)*no-such-command"):
        run_step(["no-such-command"])
    assert "no-such-command" in capfd.readouterr().err  # streamed to the pod log as well
