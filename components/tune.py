"""Optuna search for the CSwitch partition; the study database comes from a secret when workers share it."""

from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components.image import component


@component
def tune(
    dataset: Input[Dataset],
    best_partition: Output[Artifact],
    report: Output[HTML],
    model: str = "",
    preset: str = "",
    trials: int = 0,
    epochs: int = 0,
    worker: int = 0,
):
    """Run or continue the study (``$CSFNET_OPTUNA_STORAGE`` when set) and write the best partition JSON."""
    import json
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import flags, run_step, write_html

    work = Path(tempfile.mkdtemp())
    args = ["tune", "--data", f"{dataset.path}/data.yaml", "--out", best_partition.path, "--work-dir", str(work)]
    options = {"--model": model, "--preset": preset, "--trials": trials, "--epochs": epochs, "--worker": worker}
    run_step(args + flags(options))
    write_html(report, "CSwitch partition search", json.loads(Path(best_partition.path).read_text()))
