"""Kubeflow Trainer v2: the TrainJob of `csfnet train`, validated by the Trainer API models, and infra/k8s/trainer."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from csfnet.errors import SettingsError
from csfnet.kubeflow.trainjob import from_dict, render, runtime_from_dict, train_job, train_job_for
from csfnet.settings import Settings

from .conftest import REPO

TRAINER = REPO / "infra/k8s/trainer"


def test_cli_renders_a_trainjob_the_api_models_accept(tmp_path):
    from csfnet.cli import main

    render_to = ["--partition", "runs/tune/partition.json", "--render-trainjob", "gitops/trainjob.yaml"]
    code = main(
        [
            "train",
            "--data",
            "data/dataset/data.yaml",
            "--model",
            "yolov8n",
            "--device",
            "0,1",
            "--epochs",
            "3",
            *render_to,
        ]
    )
    assert code == 0 and not (tmp_path / "runs").exists()  # rendered, nothing trained
    manifest = yaml.safe_load((tmp_path / "gitops/trainjob.yaml").read_text())
    job = from_dict(manifest)  # the Trainer API models take it, field for field
    assert (job.api_version, job.kind) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    assert job.spec.runtime_ref.name == "csfnet-torch-distributed"
    trainer = job.spec.trainer
    assert trainer.num_nodes == 1 and trainer.image.startswith("ghcr.io/csfnet/csfnet:") and "cuda" in trainer.image
    command = trainer.command
    assert command[:2] == ["csfnet", "train"]
    options = dict(zip(command[2::2], command[3::2]))
    assert options["--data"] == "/workspace/data/dataset/data.yaml" and options["--out"] == "/workspace/runs/train"
    assert options["--model"] == "yolov8n" and options["--device"] == "0,1" and options["--epochs"] == "3"
    assert options["--partition"] == "/workspace/runs/tune/partition.json"
    assert manifest["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    env = {e["name"]: e for e in manifest["spec"]["trainer"]["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "csfnet-mlflow",
        "key": "MLFLOW_TRACKING_PASSWORD",
    }
    assert env["CSFNET_PARAMS"]["value"] == "/workspace/params.yaml"
    (patch,) = manifest["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"] == {"csfnet.io/mlflow-client": "true"}  # NetworkPolicy: reaches MLflow
    assert pod["spec"]["volumes"] == [{"name": "workspace", "persistentVolumeClaim": {"claimName": "csfnet-workspace"}}]
    assert pod["spec"]["containers"][0]["volumeMounts"] == [{"mountPath": "/workspace", "name": "workspace"}]


def test_cpu_job_asks_for_no_gpu_and_keeps_mlflow_off_when_told():
    settings = Settings().override({"train.device": "cpu"})
    manifest = yaml.safe_load(render(train_job_for(settings, "d/data.yaml", "/abs/run", track=False)))
    trainer = manifest["spec"]["trainer"]
    assert "nvidia.com/gpu" not in trainer["resourcesPerNode"]["limits"]
    assert trainer["command"][-1] == "--no-mlflow" and "/abs/run" in trainer["command"]
    assert trainer["command"][trainer["command"].index("--device") + 1] == "cpu"


def test_validation_rejects_what_the_trainer_api_would():
    manifest = yaml.safe_load(render(train_job("a", ["--data", "x"])))
    manifest["spec"]["trainer"]["numProcsPerNode"] = 2  # misspelt
    with pytest.raises(SettingsError, match=r"TrainJob\.spec\.trainer\.numProcsPerNode"):
        from_dict(manifest)
    manifest["spec"]["trainer"].pop("numProcsPerNode")
    manifest["spec"]["trainer"]["numNodes"] = "two"
    with pytest.raises(SettingsError, match="numNodes"):
        from_dict(manifest)
    with pytest.raises(SettingsError, match="DNS label"):
        train_job("Bad_Name", [])
    with pytest.raises(SettingsError, match=r"train\.device"):
        train_job_for(Settings().override({"train.device": "mps"}), "d", "o")


def test_trainer_manifests_render_with_kustomize_and_validate():
    out = subprocess.run(["kubectl", "kustomize", str(TRAINER)], check=True, capture_output=True, text=True)
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}
    assert set(docs) == {
        ("ClusterTrainingRuntime", "csfnet-torch-distributed"),
        ("PersistentVolumeClaim", "csfnet-workspace"),
        ("TrainJob", "csfnet-train"),
    }
    assert all("namespace" not in d["metadata"] for d in docs.values())  # applied to the jobs' namespace
    runtime = runtime_from_dict(docs[("ClusterTrainingRuntime", "csfnet-torch-distributed")])
    (node,) = runtime.spec.template.spec.replicated_jobs
    assert node.name == "node" and node.template.spec.template.spec.containers[0].name == "node"
    assert runtime.spec.ml_policy.torch is not None
    job = docs[("TrainJob", "csfnet-train")]
    from_dict(job)
    assert job["spec"]["runtimeRef"]["name"] == runtime.metadata.name
    claim = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert claim["template"]["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == (
        "csfnet-workspace"
    )


def test_committed_trainjob_is_what_the_command_renders_now():
    """infra/k8s/trainer/trainjob.yaml is `csfnet train --data data/dataset/data.yaml --device 0,1 --render-trainjob`
    output; everything but the preset-dependent training options must match a fresh render."""
    committed = yaml.safe_load((TRAINER / "trainjob.yaml").read_text())
    fresh = yaml.safe_load(
        render(train_job_for(Settings().override({"train.device": "0,1"}), "data/dataset/data.yaml", "runs/train"))
    )
    committed_command, fresh_command = (
        committed["spec"]["trainer"].pop("command"),
        fresh["spec"]["trainer"].pop("command"),
    )
    assert committed == fresh
    assert committed_command[:8] == fresh_command[:8]  # csfnet train --data ... --out ... --model ...


def test_a_device_a_trainjob_cannot_ask_for_is_one_line_and_writes_nothing(tmp_path, capsys):
    from csfnet.cli import main

    code = main(["train", "--data", "d/data.yaml", "--device", "mps", "--render-trainjob", "gitops/job.yaml"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("csfnet train: error: train.device") and "\n" not in err
    assert not (tmp_path / "gitops").exists()


def test_multi_node_trainjob_runs_torchrun_on_every_node(tmp_path):
    """Two nodes of two GPUs: numNodes 2, the GPUs per node, and torchrun (node rank and rendezvous from the
    Trainer's PET_* variables) around `csfnet train` with each node's devices."""
    from csfnet.cli import main

    args = ["train", "--data", "d/data.yaml", "--device", "0,1", "--nodes", "2", "--render-trainjob", "job.yaml"]
    assert main(args) == 0
    manifest = yaml.safe_load((tmp_path / "job.yaml").read_text())
    job = from_dict(manifest)
    trainer = job.spec.trainer
    assert trainer.num_nodes == 2 and manifest["spec"]["trainer"]["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "2"
    command = trainer.command
    assert command[:8] == ["torchrun", "--nnodes", "2", "--nproc-per-node", "2", "-m", "csfnet", "train"]
    assert command[command.index("--device") + 1] == "0,1"  # each rank takes its local rank's GPU
    assert not any(a.startswith("--node-rank") or a.startswith("--master") for a in command)  # PET_* give them


def test_failure_reason_comes_from_the_trainjob_conditions():
    from csfnet.kubeflow.trainjob import failure_reason

    manifest = yaml.safe_load(render(train_job("a", ["--data", "x"], nodes=2)))
    job = from_dict(manifest)
    assert failure_reason(job) is None  # just created: no status
    condition = {"lastTransitionTime": "2026-12-02T01:00:00Z", "status": "True"}
    running = job.from_dict({**manifest, "status": {"conditions": [{**condition, "type": "Created",
                             "reason": "JobsCreationSucceeded", "message": "jobs created"}]}})  # fmt: skip
    assert failure_reason(running) is None
    failed = {**condition, "type": "Failed", "reason": "FailedJobs", "message": "jobset failed:\n node-0 OOMKilled"}
    assert failure_reason(job.from_dict({**manifest, "status": {"conditions": [failed]}})) == (
        "FailedJobs: jobset failed: node-0 OOMKilled"
    )
    done = {**condition, "type": "Complete", "reason": "JobsCompleted", "message": "done"}
    assert failure_reason(job.from_dict({**manifest, "status": {"conditions": [done]}})) == ""
    with pytest.raises(SettingsError, match="nodes"):
        train_job("a", [], nodes=0)


def test_pipeline_step_may_do_what_the_launcher_does():
    """infra/k8s/trainer/pipeline-access.yaml grants the step's service account exactly the calls
    csfnet.kubeflow.trainjob_run makes: create and read TrainJobs, list node pods, read their logs."""
    from csfnet.kubeflow.trainjob_run import GROUP, PLURAL

    role, binding = yaml.safe_load_all((TRAINER / "pipeline-access.yaml").read_text())
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}  # fmt: skip
    assert {(GROUP, PLURAL, "create"), (GROUP, PLURAL, "get"), ("", "pods", "list"), ("", "pods/log", "get")} <= granted
    assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["subjects"][0]["name"] == "default-editor"
