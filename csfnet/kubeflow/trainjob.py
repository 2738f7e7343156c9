"""Training on Kubeflow Trainer v2: the ``TrainJob`` of a ``csfnet train`` command, validated and rendered for GitOps.

The job runs on the ``csfnet-torch-distributed`` ClusterTrainingRuntime (``infra/k8s/trainer``: a torch runtime on
JobSet, the project's CUDA image, ``/dev/shm`` for the data loader workers). One node runs ``csfnet train`` with
one CUDA device per GPU of the node (``--device 0,1,...``): ultralytics then starts its own DDP workers. Several
nodes run ``torchrun --nnodes N --nproc-per-node G -m csfnet train ...``: the Trainer's torch plugin gives every
node ``PET_NODE_RANK``, ``PET_MASTER_ADDR`` and ``PET_MASTER_PORT``, which torchrun reads as its options, and
:mod:`csfnet.distributed` takes rank and world size from torchrun (ultralytics alone cannot join a multi-node
launch, issues #7282, #22878). The dataset, the run folder and ``params.yaml`` live on a PersistentVolumeClaim
mounted at ``/workspace`` on every node; MLflow credentials come from the secret every pipeline step reads
(``csfnet-mlflow``, ``infra/k8s/secrets``). :func:`failure_reason` reads a TrainJob's outcome from its conditions.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from csfnet.errors import SettingsError

if TYPE_CHECKING:
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    from csfnet.settings import Settings

API_VERSION = "trainer.kubeflow.org/v1alpha1"
RUNTIME = "csfnet-torch-distributed"  # infra/k8s/trainer/runtime.yaml
NODE = "node"  # the runtime's replicated job and container
IMAGE = "ghcr.io/csfnet/csfnet:0.1.0-cuda"  # infra/docker/Dockerfile.cuda
WORKSPACE_CLAIM = "csfnet-workspace"  # infra/k8s/trainer/workspace.yaml
WORKSPACE = "/workspace"
MLFLOW_SECRET = "csfnet-mlflow"
MLFLOW_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")  # optional: not every store has them
MLFLOW_CLIENT_LABEL = "csfnet.io/mlflow-client"  # NetworkPolicy: pods allowed to reach MLflow
PATCH_MANAGER = "csfnet.io/cli"
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


def train_job(
    name: str,
    train_args: Sequence[str],
    *,
    nodes: int = 1,
    gpus: int = 1,
    image: str = IMAGE,
    runtime: str = RUNTIME,
    namespace: str | None = None,
    claim: str = WORKSPACE_CLAIM,
    cpu: str = "8",
    memory: str = "32Gi",
    secret: str = MLFLOW_SECRET,
    params: str = f"{WORKSPACE}/params.yaml",
    env: Mapping[str, str] | None = None,
) -> TrainerV1alpha1TrainJob:
    """The TrainJob running ``csfnet train <train_args>`` on ``nodes`` nodes with ``gpus`` GPUs each (0: CPU only).

    Args:
        name: TrainJob name (a DNS label).
        train_args: Arguments of ``csfnet train`` (paths as the pod sees them, under ``/workspace``).
        nodes: Nodes training together (more than one: under ``torchrun``, one process per GPU).
        gpus: NVIDIA GPUs of each node.
        image: Container image with csfnet installed.
        runtime: ClusterTrainingRuntime the job runs on.
        namespace: Target namespace (None: the one it is applied to).
        claim: PersistentVolumeClaim mounted at ``/workspace`` (dataset, runs, params.yaml).
        cpu: CPU request of the node.
        memory: Memory request and limit of the node.
        secret: Secret holding the MLflow (and S3) credentials.
        params: The params.yaml the nodes read (``$CSFNET_PARAMS``).
        env: More environment variables of every node (e.g. ``CSFNET_PIPELINE_ID``).
    """
    if not _NAME.fullmatch(name):
        raise SettingsError(f"TrainJob name {name!r} is not a DNS label (lower-case letters, digits, '-')")
    if gpus < 0:
        raise SettingsError(f"GPUs per node must be >= 0, got {gpus}")
    if nodes < 1:
        raise SettingsError(f"nodes must be >= 1, got {nodes}")
    limits = {"memory": memory, **({"nvidia.com/gpu": str(gpus)} if gpus else {})}
    variables = [
        {"name": "CSFNET_PARAMS", "value": params},
        {"name": "YOLO_AUTOINSTALL", "value": "False"},
        *({"name": key, "value": value} for key, value in (env or {}).items()),
    ]
    variables += [_secret_env(secret, key, optional=False) for key in MLFLOW_KEYS]
    variables += [_secret_env(secret, key, optional=True) for key in S3_KEYS]
    metadata: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/part-of": "csfnet"}}
    if namespace:
        metadata["namespace"] = namespace
    pod = {
        "metadata": {"labels": {MLFLOW_CLIENT_LABEL: "true"}},
        "spec": {
            "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": claim}}],
            "containers": [{"name": NODE, "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE}]}],
        },
    }
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": metadata,
        "spec": {
            "runtimeRef": {"name": runtime},
            "trainer": {
                "numNodes": nodes,
                "image": image,
                "command": train_command(train_args, nodes, gpus),
                "env": variables,
                "resourcesPerNode": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
            },
            "runtimePatches": [
                {
                    "manager": PATCH_MANAGER,
                    "trainingRuntimeSpec": {
                        "template": {
                            "spec": {"replicatedJobs": [{"name": NODE, "template": {"spec": {"template": pod}}}]}
                        }
                    },
                }
            ],
        },
    }
    return from_dict(manifest)


def train_command(train_args: Sequence[str], nodes: int = 1, gpus: int = 1) -> list[str]:
    """The command of every node: ``csfnet train`` on one node, under ``torchrun`` (one process per GPU, node rank
    and rendezvous address from the Trainer's ``PET_*`` variables) on several."""
    if nodes == 1:
        return ["csfnet", "train", *train_args]
    launch = ["torchrun", "--nnodes", str(nodes), "--nproc-per-node", str(max(gpus, 1)), "-m", "csfnet", "train"]
    return [*launch, *train_args]


def failure_reason(job: TrainerV1alpha1TrainJob) -> str | None:
    """Why a TrainJob failed (``reason: message`` of its ``Failed`` condition), ``""`` when it completed, ``None``
    while it still runs."""
    conditions = {c.type: c for c in (job.status.conditions or [])} if job.status else {}
    failed = conditions.get("Failed")
    if failed is not None and failed.status == "True":
        return f"{failed.reason}: {' '.join(failed.message.split())}" if failed.message else failed.reason
    complete = conditions.get("Complete")
    return "" if complete is not None and complete.status == "True" else None


def _secret_env(secret: str, key: str, optional: bool) -> dict[str, Any]:
    ref = {"name": secret, "key": key, **({"optional": True} if optional else {})}
    return {"name": key, "valueFrom": {"secretKeyRef": ref}}


def train_job_for(
    settings: Settings,
    data: str | Path,
    out: str | Path,
    partition: str | Path | None = None,
    track: bool = True,
    name: str = "csfnet-train",
    nodes: int = 1,
) -> TrainerV1alpha1TrainJob:
    """The TrainJob of ``csfnet train`` with these settings: model, preset, epochs, imgsz, batch and the device
    count go on the command line; the rest of the preset comes from ``/workspace/params.yaml``.

    Relative paths are taken relative to ``/workspace`` (the claim's root); absolute ones are paths in the pod.
    ``train.device`` ``cpu`` asks for no GPU, ``""`` for one, ``0,1`` for two (on each of ``nodes`` nodes).
    """
    gpus = _gpu_count(settings.train.device)
    preset = settings.train_args()
    args = ["--data", _in_pod(data), "--out", _in_pod(out), "--model", settings.train.model]
    args += ["--preset", settings.train.preset, "--device", ",".join(map(str, range(gpus))) or "cpu"]
    args += [item for key in ("epochs", "imgsz", "batch") if key in preset for item in (f"--{key}", str(preset[key]))]
    if settings.train.pretrained:
        args += ["--pretrained", _in_pod(settings.train.pretrained)]
    if partition:
        args += ["--partition", _in_pod(partition)]
    if not track:
        args.append("--no-mlflow")
    return train_job(name, args, nodes=nodes, gpus=gpus)


def _gpu_count(device: str) -> int:
    device = str(device).strip().lower()
    if device == "cpu":
        return 0
    if device == "":
        return 1
    ids = [d for d in device.replace("cuda:", "").split(",") if d.strip()]
    if not all(d.strip().isdigit() for d in ids):
        raise SettingsError(f"train.device {device!r} is not cpu, '' or CUDA device ids such as 0,1")
    return len(ids)


def _in_pod(path: str | Path) -> str:
    path = PurePosixPath(str(path))
    return str(path if path.is_absolute() else PurePosixPath(WORKSPACE) / path)


def to_dict(job: TrainerV1alpha1TrainJob) -> dict[str, Any]:
    """The manifest as plain data (camelCase keys, no empty fields)."""
    return job.to_dict()


def from_dict(data: Mapping[str, Any]) -> TrainerV1alpha1TrainJob:
    """Parse a TrainJob manifest with the Trainer API models; a field they do not know is an error."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    return _validated(TrainerV1alpha1TrainJob, data, "TrainJob")


def runtime_from_dict(data: Mapping[str, Any]) -> Any:
    """Parse a ClusterTrainingRuntime manifest with the Trainer API models, as strictly as :func:`from_dict`."""
    from kubeflow_trainer_api.models import TrainerV1alpha1ClusterTrainingRuntime

    return _validated(TrainerV1alpha1ClusterTrainingRuntime, data, "ClusterTrainingRuntime")


def _validated(cls: Any, data: Mapping[str, Any], kind: str) -> Any:
    """The model of ``data``: the generated models drop unknown fields silently, so what does not come back
    unchanged from a round trip is reported."""
    from pydantic import ValidationError

    if data.get("kind") != kind or data.get("apiVersion") != API_VERSION:
        raise SettingsError(f"expected {API_VERSION} {kind}, got {data.get('apiVersion')} {data.get('kind')}")
    try:
        parsed = cls.from_dict(dict(data))
    except (ValidationError, ValueError, TypeError) as e:
        raise SettingsError(f"{kind}: {' '.join(str(e).split())}") from e
    where = _first_difference(dict(data), parsed.to_dict(), kind)
    if where:
        raise SettingsError(f"{where}: not a field of the Trainer API (or not of this type)")
    return parsed


def _first_difference(given: Any, parsed: Any, where: str) -> str | None:
    if isinstance(given, Mapping) and isinstance(parsed, Mapping):
        for key in given:
            if key not in parsed:
                return f"{where}.{key}"
            found = _first_difference(given[key], parsed[key], f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(given, list) and isinstance(parsed, list) and len(given) == len(parsed):
        return next(
            filter(None, (_first_difference(a, b, f"{where}[{i}]") for i, (a, b) in enumerate(zip(given, parsed)))),
            None,
        )
    return None if given == parsed else where


def render(job: TrainerV1alpha1TrainJob, out: str | Path | None = None) -> str:
    """The manifest as YAML; written atomically to ``out`` when given (GitOps: commit it, let the cluster sync)."""
    import yaml

    from csfnet.files import write_text

    text = yaml.safe_dump(to_dict(job), sort_keys=False)
    if out is not None:
        write_text(out, text)
    return text
