"""The CSF-Net pipeline for Kubeflow Pipelines v2, mirroring dvc.yaml:
raw data -> extract -> tune -> train -> eval / robustness -> export -> register.

Tuning and training ask for GPUs; every step gets MLflow (and S3) credentials from Kubernetes secrets, never from code
or images. ``build_pipeline`` applies cluster options at compile time.
"""

from collections.abc import Mapping, Sequence

from kfp import dsl, kubernetes

from components import evaluate, export_onnx, extract_frames, raw_data, register_model, robustness, train, tune

MLFLOW_SECRET = "csfnet-mlflow"  # MLFLOW_TRACKING_URI, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL
MLFLOW_KEYS = ("MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
OPTUNA_SECRET = "csfnet-optuna"  # CSFNET_OPTUNA_STORAGE: postgresql+psycopg2://user:pass@host/optuna
GPU_RESOURCE = "nvidia.com/gpu"


def build_pipeline(
    gpus: int = 1,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, str]] = (),
    secrets: bool = True,
    retries: int = 2,
    cpu: str = "4",
    memory: str = "16G",
):
    """The pipeline function.

    Args:
        gpus: GPUs for tuning and training (0 for CPU only).
        node_selector: Node labels GPU steps must run on (e.g. ``{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}``).
        tolerations: Taints GPU steps tolerate, as ``{"key", "operator", "value", "effect"}`` dicts.
        secrets: Wire MLflow/S3 and Optuna credentials from Kubernetes secrets (off for local runs).
        retries: Retries of each step after a transient failure (pod eviction, node loss).
        cpu: CPU request of the heavy steps.
        memory: Memory request of the heavy steps.
    """

    def heavy(task: dsl.PipelineTask, gpu: bool) -> dsl.PipelineTask:
        task.set_cpu_request(cpu).set_memory_request(memory).set_retry(num_retries=retries, backoff_duration="60s")
        task.set_caching_options(True)
        if gpu and gpus:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(gpus)
            for key, value in (node_selector or {}).items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for t in tolerations:
                kubernetes.add_toleration(task, **t)
        return task

    def tracked(task: dsl.PipelineTask) -> dsl.PipelineTask:
        if secrets:
            kubernetes.use_secret_as_env(task, MLFLOW_SECRET, secret_key_to_env={k: k for k in MLFLOW_KEYS})
        return task

    @dsl.pipeline(name="csfnet", description="CSF-Net micro-UAV detection: data, tuning, training, evaluation, export")
    def csfnet_pipeline(
        source_uri: str = "",
        train_videos: int = 0,
        val_videos: int = 0,
        frames: int = 0,
        stride: int = 0,
        model: str = "",
        preset: str = "",
        epochs: int = 0,
        trials: int = 0,
        tune_epochs: int = 0,
        sigmas: list = [],  # noqa: B006  (KFP parameters are declared by their defaults)
        registry_name: str = "",
        margin: float = -1.0,
    ) -> dsl.Markdown:
        """Empty/zero parameters take the image's params.yaml values."""
        run_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        raw = raw_data(
            run_id=run_id, source_uri=source_uri, train_videos=train_videos, val_videos=val_videos, frames=frames
        )
        if secrets:
            kubernetes.use_secret_as_env(
                raw,
                MLFLOW_SECRET,
                secret_key_to_env={k: k for k in MLFLOW_KEYS if k.startswith("AWS_")},  # S3 only: fetching raw data
            )
        data = heavy(extract_frames(run_id=run_id, raw=raw.outputs["raw"], stride=stride), gpu=False)
        dataset = data.outputs["dataset"]

        search = tracked(
            heavy(
                tune(run_id=run_id, dataset=dataset, model=model, preset=preset, trials=trials, epochs=tune_epochs),
                True,
            )
        )
        if secrets:
            kubernetes.use_secret_as_env(
                search, OPTUNA_SECRET, secret_key_to_env={"CSFNET_OPTUNA_STORAGE": "CSFNET_OPTUNA_STORAGE"}
            )
        fit = tracked(
            heavy(
                train(
                    run_id=run_id,
                    dataset=dataset,
                    best_partition=search.outputs["best_partition"],
                    config=model,
                    preset=preset,
                    epochs=epochs,
                ),
                gpu=True,
            )
        )
        weights = fit.outputs["model"]
        scores = tracked(heavy(evaluate(run_id=run_id, dataset=dataset, model=weights), gpu=False))
        noise = tracked(heavy(robustness(run_id=run_id, dataset=dataset, model=weights, sigmas=sigmas), gpu=False))
        onnx = tracked(heavy(export_onnx(run_id=run_id, dataset=dataset, model=weights), gpu=False))
        register = tracked(
            register_model(
                run_id=run_id,
                onnx_model=onnx.outputs["onnx_model"],
                verification=onnx.outputs["verification"],
                name=registry_name,
                margin=margin,
            )
        )
        register.after(scores, noise)  # the last stage: it closes the MLflow parent run
        register.set_retry(num_retries=retries)
        return register.outputs["decision"]

    return csfnet_pipeline
