"""Comparison of configurations x seeds: the cell list, one training per cell, the report."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output

from components.image import component


@component
def comparison_cells(settings: dict = {}) -> list:  # noqa: B006  (KFP reads defaults)
    """``[{"config": c, "seed": s, "settings": share}, ...]`` for every configuration x seed of ``compare.configs`` x
    ``compare.seeds`` (params.yaml with the run's ``settings``), validated as params.yaml would be (unknown
    configurations fail here, before any training); ``share``: the keys a cell reads (the loop items carry it:
    kfp's local runner hands a step inside a ``dsl.ParallelFor`` the loop item in place of another step's output).
    With the run's id in ``$CSFNET_PIPELINE_ID`` it also opens the comparison's MLflow parent run, before the cells
    fan out."""
    import os

    from csfnet.kubeflow.step import for_step, merged

    compare = merged(settings).compare
    if os.environ.get("CSFNET_PIPELINE_ID"):
        from csfnet.compare.cell import comparison_parent
        from csfnet.mlflow_tracking import open_parent

        open_parent(comparison_parent(os.environ["CSFNET_PIPELINE_ID"]))
    share = for_step(settings, "compare_cell")
    return [{"config": c, "seed": s, "settings": share} for c in compare.configs for s in compare.seeds]


@component
def compare_cell(
    dataset: Input[Dataset],
    cell: Output[Artifact],
    metrics: Output[Metrics],
    config: str,
    seed: int,
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """Train and evaluate one configuration with one seed; ``cell`` holds ``cell.json``, ``matches.npz`` (per-image
    matches for the paired bootstrap) and ``weights/best.pt``."""
    from pathlib import Path

    from csfnet.kubeflow.step import log_metrics, read_json, run_step, set_flags

    args = ["compare", "cell", "--config", config, "--seed", seed, "--data", f"{dataset.path}/data.yaml"]
    run_step([*args, "--out", cell.path, *set_flags(settings)])
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
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """The comparison table over every cell: mean and interval over seeds, paired bootstrap against the first
    configuration of ``compare.configs``. ``results`` holds compare.json, compare.md and compare.png."""
    import shutil
    from pathlib import Path

    from csfnet.kubeflow.step import log_metrics, read_json, run_step, set_flags, write_html

    out = Path(results.path)
    run_step(["compare", "report", "--cells", *(c.path for c in cells), "--out", str(out), *set_flags(settings)])
    shutil.copyfile(out / "compare.md", table.path)
    result = read_json(out / "compare.json")
    means = {  # per configuration: the mean over seeds of each metric and of each difference from the first row
        name: {key: value["mean"] for key, value in row.items() if isinstance(value, dict) and "mean" in value}
        for name, row in result["rows"].items()
    }
    log_metrics(metrics, means)
    head = {k: result[k] for k in ("reference", "preset", "epochs", "imgsz", "images", "objects", "confidence")}
    write_html(report, "Comparison", {**head, **means}, [out / "compare.png"])
