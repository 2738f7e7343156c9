"""CSF-Net training on the tuned partition (GPU when the task gets one)."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

from components.image import component


@component
def train(
    dataset: Input[Dataset],
    best_partition: Input[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """Train through ultralytics with the run's ``settings`` (train, presets, args ...); ``model`` holds ``best.pt``."""
    import shutil
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import last_epoch, log_metrics, read_json, run_step, set_flags, write_html

    run = Path(tempfile.mkdtemp()) / "train"
    args = ["train", "--data", f"{dataset.path}/data.yaml", "--partition", best_partition.path, "--out", str(run)]
    run_step(args + set_flags(settings))
    Path(model.path).mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "weights" / "best.pt", Path(model.path) / "best.pt")
    results = read_json(run / "csfnet_train.json")
    model.metadata.update({"config": results["model"], "imgsz": results["args"].get("imgsz")})
    log_metrics(metrics, last_epoch(run / "results.csv"))
    write_html(report, "Training", results["args"], sorted(run.glob("*.png")))


@component
def train_job(
    dataset: Input[Dataset],
    best_partition: Input[Artifact],
    model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    nodes: int,
    gpus_per_node: int,
    image: str,
    secret: str,
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """Train on ``nodes`` nodes as a Kubeflow Trainer ``TrainJob`` in this step's namespace, ``image`` on each with
    ``gpus_per_node`` GPUs and the MLflow credentials of ``secret``: dataset, partition and params.yaml go to a
    folder of the shared claim (mounted here and on every node at ``/workspace``), the step streams node 0's log,
    fails with the TrainJob's reason, and ``model`` holds the run's ``best.pt``."""
    import hashlib
    import json
    import os
    import shutil
    from pathlib import Path

    from csfnet.kubeflow.step import last_epoch, log_metrics, read_json, set_flags, write_html
    from csfnet.kubeflow.trainjob import WORKSPACE, train_job
    from csfnet.kubeflow.trainjob_run import run_train_job

    key = json.dumps([dataset.uri, best_partition.uri, settings, nodes, gpus_per_node], sort_keys=True)
    name = f"csfnet-train-{hashlib.sha256(key.encode()).hexdigest()[:12]}"  # a retry finds the same job
    shared = Path(WORKSPACE) / "pipeline" / name
    shutil.copytree(dataset.path, shared / "dataset", dirs_exist_ok=True)  # a retry completes a partial copy
    shutil.copy2(best_partition.path, shared / "partition.json")
    shutil.copy2(os.environ.get("CSFNET_PARAMS") or "params.yaml", shared / "params.yaml")
    run = shared / "train"
    devices = ",".join(map(str, range(gpus_per_node))) or "cpu"
    args = ["--data", f"{shared}/dataset/data.yaml", "--partition", f"{shared}/partition.json", "--out", str(run)]
    args += [*set_flags(settings), "--device", devices]
    env = {k: os.environ[k] for k in ("CSFNET_PIPELINE_ID",) if os.environ.get(k)}  # the run's MLflow parent
    params = f"{shared}/params.yaml"
    job = train_job(name, args, nodes=nodes, gpus=gpus_per_node, image=image, secret=secret, params=params, env=env)
    run_train_job(job)
    Path(model.path).mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "weights" / "best.pt", Path(model.path) / "best.pt")
    results = read_json(run / "csfnet_train.json")
    model.metadata.update({"config": results["model"], "imgsz": results["args"].get("imgsz"), "nodes": nodes})
    log_metrics(metrics, last_epoch(run / "results.csv"))
    write_html(report, "Training", results["args"], sorted(run.glob("*.png")))
