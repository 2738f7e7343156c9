"""Comparison of configurations x seeds: the cell list, the bench data sizes, one training per cell, the report."""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from components.image import component


@component
def comparison_cells(configs: list = [], seeds: list = []) -> list:  # noqa: B006  (KFP reads defaults)
    """``[{"config": c, "seed": s}, ...]`` for every configuration x seed (empty: params.yaml's ``compare``),
    validated as params.yaml would be (unknown configurations fail here, before any training). With the run's id
    in ``$CSFNET_PIPELINE_ID`` it also opens the comparison's MLflow parent run, before the cells fan out."""
    import os

    from csfnet.settings import load_settings

    chosen = {"compare.configs": list(configs) or None, "compare.seeds": list(seeds) or None}
    compare = load_settings().override(chosen, "pipeline parameters").compare
    if os.environ.get("CSFNET_PIPELINE_ID"):
        from csfnet.compare.cell import comparison_parent
        from csfnet.mlflow_tracking import open_parent

        open_parent(comparison_parent(os.environ["CSFNET_PIPELINE_ID"]))
    return [{"config": config, "seed": seed} for config in compare.configs for seed in compare.seeds]


@component
def bench_sizes(train_videos: int = 0, val_videos: int = 0, frames: int = 0) -> NamedTuple(
    "Outputs", train_videos=int, val_videos=int, frames=int
):
    """The synthetic bench data's sizes: each 0 takes params.yaml's ``compare.synth`` value."""
    from typing import NamedTuple

    from csfnet.settings import load_settings

    class Outputs(NamedTuple):
        train_videos: int
        val_videos: int
        frames: int

    synth = load_settings().compare.synth
    return Outputs(train_videos or synth.train_videos, val_videos or synth.val_videos, frames or synth.frames)


@component
def compare_cell(
    dataset: Input[Dataset],
    cell: Output[Artifact],
    metrics: Output[Metrics],
    config: str,
    seed: int,
    preset: str = "",
):
    """Train and evaluate one configuration with one seed; ``cell`` holds ``cell.json``, ``matches.npz`` (per-image
    matches for the paired bootstrap) and ``weights/best.pt``."""
    from pathlib import Path

    from csfnet.kubeflow.step import flags, log_metrics, read_json, run_step

    args = ["compare", "cell", "--config", config, "--seed", seed, "--data", f"{dataset.path}/data.yaml"]
    run_step([*args, "--out", cell.path, *flags({"--preset": preset})])
    scores = read_json(Path(cell.path) / "cell.json")
    cell.metadata.update({"config": config, "seed": seed})
    costs = ("params", "gflops", "latency_ms_cpu", "train_s", "cpu_s", "gpu_hours")
    log_metrics(metrics, {**scores["metrics"], **{k: scores[k] for k in costs}})


@component
def compare_report(
    cells: Input[list[Artifact]],
    table: Output[Markdown],
    results: Output[Artifact],
    report: Output[HTML],
    metrics: Output[Metrics],
    configs: list = [],  # noqa: B006  (KFP reads defaults)
):
    """The comparison table over every cell: mean and interval over seeds, paired bootstrap against the first
    configuration (of ``configs``, else of params.yaml's). ``results`` holds compare.json, compare.md and
    compare.png."""
    import shutil
    from pathlib import Path

    from csfnet.kubeflow.step import log_metrics, read_json, run_step, write_html

    out = Path(results.path)
    order = ["--configs", *configs] if configs else []
    run_step(["compare", "report", "--cells", *(c.path for c in cells), "--out", str(out), *order])
    shutil.copyfile(out / "compare.md", table.path)
    result = read_json(out / "compare.json")
    means = {  # per configuration: the mean over seeds of each metric and of each difference from the first row
        name: {key: value["mean"] for key, value in row.items() if isinstance(value, dict) and "mean" in value}
        for name, row in result["rows"].items()
    }
    log_metrics(metrics, means)
    head = {k: result[k] for k in ("reference", "preset", "epochs", "imgsz", "images", "objects", "confidence")}
    write_html(report, "Comparison", {**head, **means}, [out / "compare.png"])
