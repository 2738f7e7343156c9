"""Verified ONNX export (FP32 and INT8) and registration in the MLflow model registry."""

from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from components.image import component


@component
def export_onnx(
    dataset: Input[Dataset],
    model: Input[Model],
    onnx_model: Output[Model],
    verification: Output[Artifact],
    metrics: Output[Metrics],
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """ONNX with dynamic batch, verified against PyTorch with onnxruntime; INT8 next to it."""
    from pathlib import Path

    from csfnet.kubeflow.step import log_metrics, read_json, run_step, set_flags

    Path(onnx_model.path).mkdir(parents=True, exist_ok=True)
    out = f"{onnx_model.path}/model.onnx"
    args = ["export", "--weights", f"{model.path}/best.pt", "--data", f"{dataset.path}/data.yaml", "--out", out]
    run_step([*args, "--report", verification.path, *set_flags(settings)])
    report = read_json(verification.path)
    log_metrics(metrics, {"verification": report["verification"]["checks"], "int8": report.get("int8", {})})


@component
def register_model(
    onnx_model: Input[Model],
    verification: Input[Artifact],
    decision: Output[Markdown],
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
) -> str:
    """Register the verified model as ``register.name``; it becomes champion only if it beats the current one by
    ``register.margin``.

    Returns:
        ``models:/<name>/<version>`` when this pipeline execution registered a new champion (what deploy serves),
        else ``""`` (no better model, or a resubmission that re-registered the same one).
        A single parameter output, so ``dsl.If`` on it works with kfp's local runner too.
    """
    from pathlib import Path

    from csfnet.kubeflow.step import new_champion_uri, read_json, run_step, set_flags

    out = Path(decision.path).with_suffix(".json")
    args = ["register", "--onnx", f"{onnx_model.path}/model.onnx", "--report", verification.path, "--out", str(out)]
    run_step([*args, "--final", *set_flags(settings)])
    result = read_json(out)
    Path(decision.path).write_text(
        f"# {result['name']} v{result['version']}\n\n- mAP50-95: {result['map50_95']:.4f}\n"
        f"- champion: v{result['champion']}\n- decision: {result['reason']}\n"
    )
    return new_champion_uri(result)
