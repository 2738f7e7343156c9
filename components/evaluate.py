"""Evaluation on the validation split and the Gaussian-noise robustness sweep."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.image import component


@component
def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """mAP, AP/recall by size band, per-sequence recall and latency; PR curve, confusion matrix, samples."""
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import log_metrics, read_json, run_step, set_flags, write_html

    out = Path(tempfile.mkdtemp())
    args = ["eval", "--weights", f"{model.path}/best.pt", "--data", f"{dataset.path}/data.yaml", "--out", str(out)]
    run_step(args + set_flags(settings))
    data = read_json(out / "metrics.json")
    log_metrics(metrics, {k: v for k, v in data.items() if k != "per_sequence_recall"})
    write_html(report, "Evaluation", data, [out / n for n in ("pr_curve.png", "confusion_matrix.png", "samples.jpg")])


@component
def robustness(
    dataset: Input[Dataset],
    model: Input[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """mAP50, mAP50-95, precision and recall under Gaussian noise of growing sigma (``robustness.sigmas``; the
    paper's Table 1)."""
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import log_metrics, read_json, run_step, set_flags, write_html

    out = Path(tempfile.mkdtemp())
    args = [
        "robustness",
        "--weights",
        f"{model.path}/best.pt",
        "--data",
        f"{dataset.path}/data.yaml",
        "--out",
        str(out),
    ]
    run_step(args + set_flags(settings))
    data = read_json(out / "robustness.json")
    log_metrics(metrics, data)
    write_html(report, "Robustness to Gaussian noise", data, [out / "robustness.png"])
