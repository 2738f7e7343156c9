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
