"""Kubeflow: the compiled IR of both pipelines (fan-outs, GPUs, secrets), local runs of the whole pipeline and of a
tiny comparison, the manifests and the Dockerfiles."""

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
from kfp.dsl import HTML, Dataset, Metrics
from mlflow import MlflowClient
from PIL import Image

from components import comparison_cells, extract_frames, step_settings, tune_worker_specs
from csfnet.errors import SettingsError
from csfnet.kubeflow.client import compile_pipeline
from csfnet.kubeflow.deploy import from_dict
from csfnet.kubeflow.step import STEPS as STEP_SHARES
from csfnet.kubeflow.step import set_flags

from .conftest import REPO, free_port, tool
from .services import wait_http

STEPS = {
    "step-settings",
    "raw-data",
    "extract-frames",
    "tune-worker-specs",
    "tune-worker",
    "tune",
    "train",
    "evaluate",
    "robustness",
    "export-onnx",
    "register-model",
}
TRACKED = STEPS - {"step-settings", "raw-data", "extract-frames", "tune-worker-specs"}
GPU_STEPS = {"tune-worker", "tune", "train"}
H100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
GPU_TOLERATION = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@pytest.fixture(scope="module")
def ir(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    cmd = [tool("csfnet"), "pipeline", "compile", "--out", str(out), "--gpus", "2"]
    cmd += ["--set", "extract.tile=640", "--set", "eval.iou=0.5"]  # the run's default settings mapping
    cmd += [
        "--node-selector",
        "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3",
        "--toleration",
        "nvidia.com/gpu:NoSchedule",
    ]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return _load_ir(out)


@pytest.fixture(scope="module")
def compare_ir(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ir") / "compare.yaml"
    compile_pipeline(out, pipeline="compare", gpus=1, node_selector=H100, tolerations=[GPU_TOLERATION[0]])
    return _load_ir(out)


def _load_ir(path: Path) -> dict:
    pipeline, platform = yaml.safe_load_all(path.read_text())
    tasks = dict(pipeline["root"]["dag"]["tasks"])  # every task by name, those inside loops and conditions too
    for component in pipeline["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return {
        "pipeline": pipeline,
        "platform": platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"],
        "text": path.read_text(),
        "tasks": tasks,
    }


def _executor(ir: dict, task: str) -> str:
    return ir["tasks"][task]["componentRef"]["name"].replace("comp-", "exec-")


def _component_tasks(ir: dict, task: str) -> dict:
    """The tasks of a loop's or condition's sub-DAG, by the root task's name."""
    return ir["pipeline"]["components"][ir["tasks"][task]["componentRef"]["name"]]["dag"]["tasks"]


def _loop(ir: dict) -> tuple[str, dict]:
    """The pipeline's one ``dsl.ParallelFor`` (root task name, task)."""
    ((name, task),) = [(n, t) for n, t in ir["pipeline"]["root"]["dag"]["tasks"].items() if "parameterIterator" in t]
    return name, task


def _storage_secret(ir: dict, task: str) -> set[str]:
    platform = ir["platform"][_executor(ir, task)]
    return {k["envVar"] for s in platform["secretAsEnv"] if s["secretName"] == "csfnet-optuna" for k in s["keyToEnv"]}


def _gpus(ir: dict, task: str) -> tuple[str, str]:
    """(resource, count) a task's container requests."""
    accelerator = ir["pipeline"]["deploymentSpec"]["executors"][_executor(ir, task)]["container"]["resources"]
    return accelerator["accelerator"]["resourceType"], accelerator["accelerator"]["resourceCount"]


def test_ir_has_every_step_and_exposes_parameters(ir):
    tasks = ir["tasks"]
    roots = set(ir["pipeline"]["root"]["dag"]["tasks"])
    assert roots == STEPS - {"tune-worker"} | {_loop(ir)[0], "condition-2"}
    assert set(tasks) == STEPS | {"deploy", _loop(ir)[0], "condition-2"}
    params = set(ir["pipeline"]["root"]["inputDefinitions"]["parameters"])
    assert params == {"settings", "source_uri"}  # every setting through the one mapping; the data source
    assert all(tasks[t]["cachingOptions"].get("enableCache") for t in STEPS - {"raw-data"})
    assert all("retryPolicy" in tasks[t] for t in STEPS - {"raw-data"})
    assert set(tasks["register-model"]["dependentTasks"]) >= {"evaluate", "robustness", "export-onnx"}


def test_tuning_fans_out_over_workers_that_share_one_study(ir):
    """N workers in a ParallelFor (N: tune.workers of params.yaml and the run's settings), a GPU and the study database
    each, then one deciding step after the whole loop on the same study."""
    tasks = ir["tasks"]
    name, loop = _loop(ir)
    assert loop["taskInfo"]["name"] == "tune-workers" and set(loop["dependentTasks"]) == {
        "tune-worker-specs",
        "extract-frames",
    }
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--tune-worker-specs-Output"}
    assert set(_component_tasks(ir, name)) == {"tune-worker"}
    workers = tasks["tune-worker-specs"]["inputs"]["parameters"]["settings"]
    assert workers == {"taskOutputParameter": {"outputParameterKey": "tune", "producerTask": "step-settings"}}
    worker = tasks["tune-worker"]["inputs"]["parameters"]
    item = loop["parameterIterator"]["itemInput"]
    for key in ("worker", "settings"):  # each loop item carries its index and the tuning settings
        selector = f'parseJson(string_value)["{key}"]'
        assert worker[key] == {"componentInputParameter": item, "parameterExpressionSelector": selector}
    decider = tasks["tune"]["inputs"]["parameters"]
    assert decider == {"settings": workers}  # the settings the items carry: the same study
    assert set(tasks["tune"]["dependentTasks"]) == {name, "extract-frames", "step-settings"}  # after every worker
    assert tasks["train"]["inputs"]["artifacts"]["best_partition"]["taskOutputArtifact"]["producerTask"] == "tune"
    for task in ("tune-worker", "tune"):
        assert _storage_secret(ir, task) == {"CSFNET_OPTUNA_STORAGE"}
        assert ir["platform"][_executor(ir, task)]["podMetadata"]["labels"]["csfnet.io/optuna-client"] == "true"
        assert _gpus(ir, task) == ("nvidia.com/gpu", "2")
    assert all(not _storage_secret(ir, t) for t in TRACKED - {"tune-worker", "tune"})


def test_planning_steps_read_params_yaml(tmp_path, monkeypatch):
    """The steps feeding the loops, run as their pods run them: counts and cells from params.yaml when not given."""
    monkeypatch.setenv("CSFNET_PARAMS", str(tmp_path / "params.yaml"))
    params = {"tune": {"workers": 3}, "compare": {"configs": ["csfnet-n", "yolov8n"], "seeds": [4, 5]}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert [w["worker"] for w in tune_worker_specs.python_func(settings={})] == [0, 1, 2]
    share = {"tune.workers": 2.0, "tune.trials": 5}  # a struct's numbers are floats
    assert tune_worker_specs.python_func(settings=share) == [{"worker": i, "settings": share} for i in (0, 1)]
    with pytest.raises(SettingsError, match=r"pipeline settings: tune\.workers: -1"):
        tune_worker_specs.python_func(settings={"tune.workers": -1})
    cells = comparison_cells.python_func(settings={})
    assert cells == [{"config": c, "seed": s, "settings": {}} for c in ("csfnet-n", "yolov8n") for s in (4, 5)]
    chosen = {"compare.configs": ["yolov8n-p2"], "compare.preset": "quick", "register.margin": 0.1}
    assert comparison_cells.python_func(settings=chosen) == [  # each cell gets the keys it reads, not the list
        {"config": "yolov8n-p2", "seed": 4, "settings": {"compare.preset": "quick"}},
        {"config": "yolov8n-p2", "seed": 5, "settings": {"compare.preset": "quick"}},
    ]
    with pytest.raises(SettingsError, match="yolov9"):
        comparison_cells.python_func(settings={"compare.configs": ["yolov9"], "compare.seeds": [0]})


def test_one_settings_mapping_reaches_every_step(ir, tmp_path):
    """`pipeline compile --set` gives the run's default settings mapping; the light first step checks it and cuts
    each step's share (a key reaches only the steps reading it, so a changed margin re-runs only registration), and
    the extraction step, run as its pod runs it, passes its share on as `--set` so the tiles are cut."""
    default = ir["pipeline"]["root"]["inputDefinitions"]["parameters"]["settings"]["defaultValue"]
    assert default == {"extract.tile": 640, "eval.iou": 0.5}
    tasks = ir["tasks"]
    assert tasks["step-settings"]["inputs"]["parameters"]["settings"] == {"componentInputParameter": "settings"}
    for task, share in (("extract-frames", "data"), ("evaluate", "evaluate"), ("train", "train")):
        given = tasks[task]["inputs"]["parameters"]["settings"]["taskOutputParameter"]
        assert given == {"outputParameterKey": share, "producerTask": "step-settings"}

    shares = step_settings.python_func(settings=default)
    flags = set_flags(shares.data)
    assert flags[::2] == ["--set", "--set"] and sorted(flags[1::2]) == ["eval.iou=0.5", "extract.tile=640"]
    assert shares.evaluate == {"eval.iou": 0.5} and "extract.tile" not in shares.train
    shares = step_settings.python_func(settings={"register.margin": 0.1, "args.epochs": 3.0})
    assert [step for step in STEP_SHARES if "register.margin" in getattr(shares, step)] == ["register"]
    assert all(getattr(shares, step)["args.epochs"] == 3.0 for step in STEP_SHARES)  # shared: reaches every step
    assert set_flags(shares.train) == ["--set", "args.epochs=3"]  # a struct's float, back to the integer it was
    with pytest.raises(SettingsError, match=r"pipeline settings: unknown key 'eval\.iuo' \(did you mean 'eval\.iou'"):
        step_settings.python_func(settings={"eval.iuo": 0.5})

    tiny = {"synth.train_videos": 1, "synth.val_videos": 1, "synth.frames": 2, "synth.width": 192.0}
    share = step_settings.python_func(settings={**tiny, "extract.tile": 64, "extract.stride": 1}).data
    outputs = {name: kind(name=name, uri=str(tmp_path / name)) for name, kind in (("dataset", Dataset),
               ("stats", Metrics), ("stats_report", HTML))}  # fmt: skip
    extract_frames.python_func(fingerprint="f", settings=share, **outputs)
    train = [Image.open(p).size for p in (tmp_path / "dataset/images/train").glob("*.jpg")]
    val = [Image.open(p).size for p in (tmp_path / "dataset/images/val").glob("*.jpg")]
    assert train and set(train) == {(64, 64)} and len(train) > 2  # cut into tiles: extract.tile reached the command
    assert set(val) == {(192, 128)}  # extract.tile_splits: val stays whole


def test_comparison_fans_out_one_gpu_per_cell(compare_ir):
    ir = compare_ir
    tasks = ir["tasks"]
    roots = set(ir["pipeline"]["root"]["dag"]["tasks"])
    name, loop = _loop(ir)
    cells = {"step-settings", "raw-data", "extract-frames", "comparison-cells", "compare-report"}
    assert roots == cells | {name} and set(_component_tasks(ir, name)) == {"compare-cell"}
    params = set(ir["pipeline"]["root"]["inputDefinitions"]["parameters"])
    assert params == {"settings", "source_uri"}
    # one iteration per {config, seed} the cells step lists
    assert loop["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--comparison-cells-Output"}
    item = loop["parameterIterator"]["itemInput"]
    cell = tasks["compare-cell"]["inputs"]["parameters"]
    for key in ("config", "seed", "settings"):
        assert cell[key] == {
            "componentInputParameter": item,
            "parameterExpressionSelector": f'parseJson(string_value)["{key}"]',
        }
    assert tasks["compare-cell"]["inputs"]["artifacts"]["dataset"]["componentInputArtifact"].endswith(
        "extract-frames-dataset"
    )
    # the bench data sizes come from the planning step (compare.synth of params.yaml and the run's settings)
    for step in ("raw-data", "extract-frames"):
        share = tasks[step]["inputs"]["parameters"]["settings"]["taskOutputParameter"]
        assert share == {"outputParameterKey": "data", "producerTask": "step-settings"}
    assert tasks["step-settings"]["inputs"]["parameters"]["bench"]["runtimeValue"]["constant"] is True
    # one GPU per cell on the GPU nodes; the planning and report steps ask for none
    assert _gpus(ir, "compare-cell") == ("nvidia.com/gpu", "1")
    platform = ir["platform"][_executor(ir, "compare-cell")]
    assert platform["nodeSelector"]["labels"] == H100 and platform["tolerations"] == GPU_TOLERATION
    executors = ir["pipeline"]["deploymentSpec"]["executors"]
    for task in cells:
        assert "accelerator" not in executors[_executor(ir, task)]["container"].get("resources", {})
    # the report collects every cell's artifact after the whole loop and is the run's Markdown output
    report = tasks["compare-report"]
    assert set(report["dependentTasks"]) == {name, "step-settings"}  # its share of the settings
    collected = report["inputs"]["artifacts"]["cells"]["taskOutputArtifact"]
    assert collected == {"outputArtifactKey": "pipelinechannel--compare-cell-cell", "producerTask": name}
    assert ir["pipeline"]["components"]["comp-compare-report"]["inputDefinitions"]["artifacts"]["cells"][
        "isArtifactList"
    ]
    (output,) = ir["pipeline"]["root"]["outputDefinitions"]["artifacts"].values()
    assert output["artifactType"]["schemaTitle"] == "system.Markdown"
    # MLflow: every cell and the report find the comparison's parent run by the run id, outside the cache key
    for task in ("comparison-cells", "compare-cell", "compare-report"):  # the planning step opens the parent
        env = ir["platform"][_executor(ir, task)]
        assert {"name": "CSFNET_PIPELINE_ID", "fieldPath": "metadata.labels['pipeline/runid']"} in env["fieldPathAsEnv"]
        assert {s["secretName"] for s in env["secretAsEnv"]} == {"csfnet-mlflow"}
    # caching as in the main pipeline but for the raw-data listing and the planning step (it opens this run's
    # MLflow parent before the cells fan out, so parallel cells never race to create it); no pod installs anything
    uncached = {"raw-data", "comparison-cells"}
    assert not any(tasks[t]["cachingOptions"].get("enableCache") for t in uncached)
    assert all(tasks[t]["cachingOptions"].get("enableCache") for t in (cells | {"compare-cell"}) - uncached)
    assert "pip install" not in ir["text"] and "pip3 install" not in ir["text"]
    assert all(e["container"]["image"].startswith("ghcr.io/csfnet/csfnet:") for e in executors.values())


def test_cache_keys_hold_only_real_inputs(ir):
    """No step takes a per-run value; raw-data is never cached and feeds extraction the content fingerprint."""
    tasks = ir["tasks"]  # the loop's and the condition's tasks too
    assert not re.search(r"pipeline_job_(uuid|name)|PIPELINE_JOB|workflow\.uid|\{\{\$\.pipeline", ir["text"])
    for name, task in tasks.items():
        for spec in task.get("inputs", {}).get("parameters", {}).values():
            allowed = {"componentInputParameter", "taskOutputParameter", "runtimeValue", "parameterExpressionSelector"}
            assert set(spec) <= allowed, (name, spec)  # a selector picks a field of a loop item
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
    condition = ir["pipeline"]["root"]["dag"]["tasks"]["condition-2"]
    assert set(condition["dependentTasks"]) == {"register-model", "step-settings"}  # and the serving settings
    trigger = condition["triggerPolicy"]["condition"]
    assert trigger == "inputs.parameter_values['pipelinechannel--register-model-Output'] != ''"
    deploy = ir["pipeline"]["components"]["comp-condition-2"]["dag"]["tasks"]["deploy"]
    inputs = deploy["inputs"]["parameters"]
    assert inputs["model_uri"] == {"componentInputParameter": "pipelinechannel--register-model-Output"}
    assert inputs["settings"] == {"componentInputParameter": "pipelinechannel--step-settings-deploy"}  # serving.*
    assert inputs["apply"]["runtimeValue"]["constant"] is True


def test_gpu_steps_request_gpus_on_gpu_nodes(ir):
    executors = ir["pipeline"]["deploymentSpec"]["executors"]
    for task in STEPS:
        resources = executors[_executor(ir, task)]["container"].get("resources", {})
        if task in GPU_STEPS:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "2"
            platform = ir["platform"][_executor(ir, task)]
            assert platform["nodeSelector"]["labels"] == H100
            assert platform["tolerations"] == GPU_TOLERATION
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
    for task in ("tune-worker", "tune"):  # every step opening the shared study
        tune = ir["platform"][_executor(ir, task)]
        assert "csfnet-optuna" in {s["secretName"] for s in tune["secretAsEnv"]}
        assert tune["podMetadata"]["labels"]["csfnet.io/optuna-client"] == "true"
    text = ir["text"]
    for name in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"):  # secret key names, not values
        text = text.replace(name, "")
    assert not re.search(r"(?i)password|secret_access_key:\s*\S+[A-Za-z0-9]{16}", text)


@pytest.mark.slow
@pytest.mark.e2e
def test_local_run_ends_with_a_registered_model(tmp_path):
    params = {
        "synth": {"train_videos": 2, "val_videos": 1, "frames": 6, "width": 96, "height": 64, "seed": 3},
        "extract": {"stride": 1},
        "train": {"model": "csfnet-n", "preset": "quick"},
        "presets": {"quick": {"imgsz": 64, "epochs": 1, "batch": 4, "workers": 0, "mosaic": 0.0, "plots": False}},
        "tune": {"trials": 2, "epochs": 1, "imgsz": 64},
        "compare": {"preset": "quick"},  # a preset this file defines
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
    assert stages == ["eval", "export", "register", "robustness", "train", "tune", "tune"]  # the worker, the decision
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
        [*cmd, "--set", "register.margin=10"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (second,) = set((tmp_path / "kfp").iterdir()) - before
    ran = {p.name for p in second.iterdir()}  # a step served from the cache writes nothing
    if len(list((tmp_path / "kfp" / ".kfp_cache").iterdir())) > 1:
        # csfnet's code or params changed between the runs (a shared checkout): the cache must not serve anything
        assert {"extract-frames", "train"} <= ran
        return
    assert ran == {"step-settings", "raw-data", "register-model"}, sorted(ran)  # the light split of the settings
    registered = json.loads((second / "register-model" / "executor_output.json").read_text())
    assert registered["parameterValues"]["Output"] == ""  # no new champion: the condition is false
    assert "deploy" not in ran and len(list((tmp_path / "kfp").rglob("deploy/manifest"))) == 1
    versions = MlflowClient().search_model_versions("name='kfp-uav'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(MlflowClient().get_model_version_by_alias("kfp-uav", "champion").version) == "1"
    print(f"cached resubmission: {time.monotonic() - start:.1f} s")


@pytest.mark.slow
@pytest.mark.e2e
def test_local_comparison_fans_out_and_reports(tmp_path):
    """The comparison pipeline run here end to end: cells from the parameters, bench data at compare.synth sizes,
    each cell a nested MLflow run under one comparison parent, the report step's table as the run's output."""
    tiny = {"imgsz": 64, "epochs": 1, "batch": 4, "workers": 0, "mosaic": 0.0, "plots": False}
    params = {
        "synth": {"train_videos": 3, "val_videos": 2, "frames": 8, "width": 96, "height": 64, "seed": 3},
        "extract": {"stride": 1},
        "presets": {"quick": tiny, "tiny": tiny},
        "compare": {
            "configs": ["csfnet-n", "yolov8n", "yolov8s"],
            "seeds": [0, 1],
            "preset": "quick",
            "resamples": 100,
            "latency_images": 2,
            "synth": {"train_videos": 2, "val_videos": 1, "frames": 6},
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CSFNET_PARAMS": str(tmp_path / "params.yaml")}
    arguments = ["compare.configs=[yolov8n, csfnet-n]", "compare.seeds=[1]", "compare.preset=tiny"]  # not params' order
    command = [
        tool("csfnet"),
        "pipeline",
        "run-local",
        "--pipeline",
        "compare",
        "--pipeline-root",
        str(tmp_path / "kfp"),
    ]
    start = time.monotonic()
    proc = subprocess.run(
        command + [f"--set={a}" for a in arguments], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(f"local comparison: {time.monotonic() - start:.1f} s")
    table = proc.stdout  # the pipeline's Markdown output
    assert "| csfnet-n | 1 |" in table and "| yolov8n | 1 |" in table and "yolov8s" not in table

    (results,) = (tmp_path / "kfp").rglob("compare-report/results/compare.json")
    result = json.loads(results.read_text())
    assert result["order"] == ["yolov8n", "csfnet-n"] and result["reference"] == "yolov8n"  # the parameter's order
    assert result["preset"] == "tiny" and result["images"] == 6  # the preset setting; compare.synth's 1 x 6 frames
    assert "delta_map50" in result["rows"]["csfnet-n"] and (results.parent / "compare.png").is_file()
    cells = sorted((tmp_path / "kfp").rglob("compare-cell/cell"))
    assert len(cells) == 2 and all((c / "weights" / "best.pt").is_file() for c in cells)

    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["csfnet"], output_format="list")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.status == "FINISHED" and parent.data.tags["csfnet.comparison"].startswith("local-")
    nested = [r.data.tags for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(nested) == len(runs) - 1
    cell_runs = sorted((t["csfnet.config"], t["csfnet.seed"]) for t in nested if t["csfnet.stage"] == "compare-cell")
    assert cell_runs == [("csfnet-n", "1"), ("yolov8n", "1")]
    assert [t["csfnet.stage"] for t in nested].count("compare-report") == 1


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


def test_multi_node_training_is_a_trainjob_step_and_one_node_keeps_the_ir(ir, tmp_path):
    """`--train-nodes 2`: a light `train-job` step (no GPU of its own, the shared claim mounted, MLflow secrets)
    whose inputs are the node count, the GPUs per node, the image and the secret of the TrainJob it creates, and
    whose model feeds evaluation as the in-pod training's does; `--train-nodes 1` compiles today's IR."""
    base = [tool("csfnet"), "pipeline", "compile", "--gpus", "2", "--set", "extract.tile=640", "--set", "eval.iou=0.5"]
    base += [
        "--node-selector",
        "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3",
        "--toleration",
        "nvidia.com/gpu:NoSchedule",
    ]
    one = tmp_path / "one.yaml"
    subprocess.run([*base, "--out", str(one), "--train-nodes", "1"], cwd=REPO, check=True, capture_output=True)
    assert _load_ir(one)["pipeline"] == ir["pipeline"] and _load_ir(one)["platform"] == ir["platform"]

    two = tmp_path / "two.yaml"
    cmd = [*base, "--out", str(two), "--train-nodes", "2", "--gpus-per-node", "4"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    multi = _load_ir(two)
    tasks = multi["tasks"]
    assert "train" not in tasks and set(tasks) == set(ir["tasks"]) - {"train"} | {"train-job"}
    given = tasks["train-job"]["inputs"]["parameters"]
    assert given["nodes"]["runtimeValue"]["constant"] == 2 and given["gpus_per_node"]["runtimeValue"]["constant"] == 4
    assert given["image"]["runtimeValue"]["constant"].startswith("ghcr.io/csfnet/csfnet:")
    assert given["secret"]["runtimeValue"]["constant"] == "csfnet-mlflow"
    assert given["settings"]["taskOutputParameter"] == {"outputParameterKey": "train", "producerTask": "step-settings"}
    assert tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]["producerTask"] == "train-job"
    executor = multi["pipeline"]["deploymentSpec"]["executors"][_executor(multi, "train-job")]["container"]
    assert "accelerator" not in executor.get("resources", {})  # the nodes get the GPUs, not the step
    platform = multi["platform"][_executor(multi, "train-job")]
    assert platform["pvcMount"][0]["mountPath"] == "/workspace" and platform["pvcMount"][0]["constant"] == (
        "csfnet-workspace"
    )
    assert {s["secretName"] for s in platform["secretAsEnv"]} == {"csfnet-mlflow"}
    assert tasks["train-job"]["cachingOptions"].get("enableCache") and "retryPolicy" in tasks["train-job"]
    bad = subprocess.run([*base, "--out", str(two), "--train-nodes", "0"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--train-nodes and --extract-workers must be >= 1" in bad.stderr


@pytest.mark.slow  # runs four pipeline steps, each through `csfnet` subprocesses
def test_extraction_fans_out_over_shards_and_merges_to_one_extraction(tmp_path):
    """`--extract-workers 2`: a ParallelFor of shard steps, then one merge whose dataset feeds the rest; the steps,
    run as their pods run them, give the dataset the one-pod step gives, file for file."""
    import hashlib

    from components import extract_shard, merge_extraction

    out = compile_pipeline(tmp_path / "ir.yaml", extract_workers=2)
    multi = _load_ir(out)
    roots = multi["pipeline"]["root"]["dag"]["tasks"]
    ((loop, spec),) = [(n, t) for n, t in roots.items() if t.get("taskInfo", {}).get("name") == "extract-shards"]
    assert spec["parameterIterator"]["items"] == {"raw": "[0, 1]"} and "extract-frames" not in multi["tasks"]
    assert set(_component_tasks(multi, loop)) == {"extract-shard"}
    merged = multi["tasks"]["merge-extraction"]["inputs"]["artifacts"]["shards"]["taskOutputArtifact"]
    assert merged == {"outputArtifactKey": "pipelinechannel--extract-shard-dataset", "producerTask": loop}
    assert multi["tasks"]["tune"]["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]["producerTask"] == (
        "merge-extraction"
    )

    tiny = {"synth.train_videos": 2, "synth.val_videos": 1, "synth.frames": 3, "synth.width": 96, "extract.stride": 1}
    share = step_settings.python_func(settings=tiny).data

    def outputs(folder: str) -> dict:
        kinds = (("dataset", Dataset), ("stats", Metrics), ("stats_report", HTML))
        return {name: kind(name=name, uri=str(tmp_path / folder / name)) for name, kind in kinds}

    extract_frames.python_func(fingerprint="f", settings=share, **outputs("one"))
    shards = [Dataset(name="dataset", uri=str(tmp_path / f"shard{k}")) for k in range(2)]
    for k, shard in enumerate(shards):
        extract_shard.python_func(fingerprint="f", shard=k, shards=2, dataset=shard, settings=share)
    merge_extraction.python_func(fingerprint="f", shards=shards, settings=share, **outputs("merged"))

    def contents(root: Path) -> dict:
        return {
            str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
        }

    one, merged = contents(tmp_path / "one/dataset"), contents(tmp_path / "merged/dataset")
    assert len(one) > 10 and merged == one
