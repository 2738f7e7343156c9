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
    config: str = "",
    preset: str = "",
    epochs: int = 0,
):
    """Train through ultralytics; ``model`` holds ``best.pt``."""
    import shutil
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import flags, last_epoch, log_metrics, read_json, run_step, write_html

    run = Path(tempfile.mkdtemp()) / "train"
    args = ["train", "--data", f"{dataset.path}/data.yaml", "--partition", best_partition.path, "--out", str(run)]
    options = {"--model": config, "--preset": preset, "--epochs": epochs}
    run_step(args + flags(options))
    Path(model.path).mkdir(parents=True, exist_ok=True)
    shutil.copy2(run / "weights" / "best.pt", Path(model.path) / "best.pt")
    results = read_json(run / "csfnet_train.json")
    model.metadata.update({"config": results["model"], "imgsz": results["args"].get("imgsz")})
    log_metrics(metrics, last_epoch(run / "results.csv"))
    write_html(report, "Training", results["args"], sorted(run.glob("*.png")))
