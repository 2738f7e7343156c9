"""The CSF-Net pipeline for Kubeflow Pipelines v2, mirroring dvc.yaml:
raw-data fingerprint -> extract -> tune (N workers in parallel, then one decision) -> train -> eval / robustness ->
export -> register -> deploy.

Caching: the raw-data step is never cached and outputs a content fingerprint of the source; every other step takes
only its real inputs (artifacts and parameters), so a resubmission with the same data and parameters reuses every
step and new data behind the same URI re-runs from extraction on. The run id reaches the steps as
``$CSFNET_PIPELINE_ID`` from the pod label ``pipeline/runid`` (set by the KFP API server on every pod of a run),
which is outside the cache key. ``deploy`` runs only when registration changed the champion.

Settings: one ``settings`` parameter, dotted params.yaml keys over the image's params.yaml (as ``csfnet --set``), so
every key is reachable; a first light step checks it and cuts it into each step's share
(:data:`csfnet.kubeflow.step.READERS`), which the step passes to its command as ``--set``. A changed key therefore
re-runs only the steps that read it.

Tuning fans out: ``tune.workers`` steps run in a ``dsl.ParallelFor``, a GPU each, adding trials to one Optuna study
in the cluster's PostgreSQL (``$CSFNET_OPTUNA_STORAGE`` from a secret); one step after the loop re-validates the
study's best partition and decides. Training runs in the step's pod on one node; compiled with ``train_nodes`` > 1
it runs as a Kubeflow Trainer ``TrainJob`` on that many nodes (``gpus_per_node`` each) that the ``train-job`` step
creates, follows and hands on as the same ``Model`` artifact (dataset and run folder on the shared claim
``csfnet-workspace``). With ``extract_workers`` > 1 extraction fans out over sequence shards in a ``ParallelFor`` and
one merge step links them into the dataset a single extraction writes. Node and worker counts are compile-time
options, so the IR of a pipeline compiled without them is unchanged.
Tuning and training ask for GPUs; every step gets MLflow (and S3) credentials
from Kubernetes secrets, never from code or images. :class:`Cluster` applies the cluster options at compile time
(``pipelines/compare_pipeline.py`` uses it too).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kfp import dsl, kubernetes

from components import (
    deploy,
    evaluate,
    export_onnx,
    extract_frames,
    extract_shard,
    merge_extraction,
    raw_data,
    register_model,
    robustness,
    step_settings,
    train,
    train_job,
    tune,
    tune_worker,
    tune_worker_specs,
)
from components.image import IMAGE

MLFLOW_SECRET = "csfnet-mlflow"  # tracking URI and the pipeline's MLflow user; S3 access for raw data
MLFLOW_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ENDPOINT_URL",
)
S3_KEYS = tuple(k for k in MLFLOW_KEYS if k.startswith("AWS_"))
OPTUNA_SECRET = "csfnet-optuna"  # CSFNET_OPTUNA_STORAGE: postgresql+psycopg2://user:pass@host/optuna
OPTUNA_ENV = "CSFNET_OPTUNA_STORAGE"  # csfnet.tune.STORAGE_ENV
GPU_RESOURCE = "nvidia.com/gpu"
PIPELINE_ID_ENV = "CSFNET_PIPELINE_ID"  # csfnet.lineage.PIPELINE_ENV
RUN_ID_FIELD = "metadata.labels['pipeline/runid']"  # pod label the KFP API server puts on every pod of a run
MLFLOW_CLIENT_LABEL = "csfnet.io/mlflow-client"  # NetworkPolicy: pods allowed to reach MLflow
OPTUNA_CLIENT_LABEL = "csfnet.io/optuna-client"  # NetworkPolicy: pods allowed to reach the Optuna database
WORKSPACE_CLAIM = "csfnet-workspace"  # csfnet.kubeflow.trainjob.WORKSPACE_CLAIM: shared by the step and the nodes
WORKSPACE = "/workspace"


@dataclass(frozen=True)
class Cluster:
    """How steps run on the cluster (see :func:`build_pipeline` for the fields)."""

    gpus: int = 1
    node_selector: Mapping[str, str] | None = None
    tolerations: Sequence[Mapping[str, str]] = ()
    secrets: bool = True
    retries: int = 2
    cpu: str = "4"
    memory: str = "16G"

    def heavy(self, task: dsl.PipelineTask, gpu: bool) -> dsl.PipelineTask:
        """Resources, retries and caching of a heavy step; ``gpu``: GPUs on the GPU nodes as well."""
        task.set_cpu_request(self.cpu).set_memory_request(self.memory)
        task.set_retry(num_retries=self.retries, backoff_duration="60s")
        task.set_caching_options(True)
        if gpu and self.gpus:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(self.gpus)
            for key, value in (self.node_selector or {}).items():
                kubernetes.add_node_selector(task, label_key=key, label_value=value)
            for t in self.tolerations:
                kubernetes.add_toleration(task, **t)
        return task

    def tracked(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """A step that logs to MLflow: credentials, the run id (outside the cache key), the NetworkPolicy label."""
        if self.secrets:
            kubernetes.use_secret_as_env(task, MLFLOW_SECRET, secret_key_to_env={k: k for k in MLFLOW_KEYS})
            kubernetes.use_field_path_as_env(task, env_name=PIPELINE_ID_ENV, field_path=RUN_ID_FIELD)
            kubernetes.add_pod_label(task, MLFLOW_CLIENT_LABEL, "true")
        return task

    def s3(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """A step that reads the object store."""
        if self.secrets:
            kubernetes.use_secret_as_env(task, MLFLOW_SECRET, secret_key_to_env={k: k for k in S3_KEYS})
        return task

    def optuna(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """A step that opens the shared Optuna study: its database URL from the secret, the NetworkPolicy label."""
        if self.secrets:
            kubernetes.use_secret_as_env(task, OPTUNA_SECRET, secret_key_to_env={OPTUNA_ENV: OPTUNA_ENV})
            kubernetes.add_pod_label(task, OPTUNA_CLIENT_LABEL, "true")
        return task

    def light(self, task: dsl.PipelineTask) -> dsl.PipelineTask:
        """A step that only reads params.yaml (cached on its inputs, retried like the rest)."""
        task.set_caching_options(True)
        return task.set_retry(num_retries=self.retries)


def build_pipeline(
    gpus: int = 1,
    node_selector: Mapping[str, str] | None = None,
    tolerations: Sequence[Mapping[str, str]] = (),
    secrets: bool = True,
    retries: int = 2,
    cpu: str = "4",
    memory: str = "16G",
    apply_serving: bool = True,
    settings: Mapping[str, Any] | None = None,
    train_nodes: int = 1,
    gpus_per_node: int | None = None,
    extract_workers: int = 1,
):
    """The pipeline function.

    Args:
        gpus: GPUs for each tuning worker and for training (0 for CPU only).
        node_selector: Node labels GPU steps must run on (e.g. ``{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}``).
        tolerations: Taints GPU steps tolerate, as ``{"key", "operator", "value", "effect"}`` dicts.
        secrets: Cluster wiring: credentials from Kubernetes secrets, the run id from the pod label, pod labels
            for the NetworkPolicies (off for local runs).
        retries: Retries of each step after a transient failure (pod eviction, node loss).
        cpu: CPU request of the heavy steps.
        memory: Memory request of the heavy steps.
        apply_serving: The deploy step applies the InferenceService (off: it only renders the manifest).
        settings: Default of the pipeline's ``settings`` parameter (``csfnet pipeline compile --set``).
        train_nodes: Nodes training runs on; more than one: a Kubeflow Trainer TrainJob (1: in the step's pod).
        gpus_per_node: GPUs of each TrainJob node (default: ``gpus``).
        extract_workers: Pods extraction fans out over (sequence shards, then one merge; 1: one pod).
    """
    if train_nodes < 1 or extract_workers < 1:
        raise ValueError(f"train_nodes and extract_workers must be >= 1, got {train_nodes} and {extract_workers}")
    cluster = Cluster(gpus, node_selector, tolerations, secrets, retries, cpu, memory)
    defaults = dict(settings or {})
    heavy, tracked, s3 = cluster.heavy, cluster.tracked, cluster.s3

    @dsl.pipeline(name="csfnet", description="CSF-Net micro-UAV detection: data, tuning, training, evaluation, serving")
    def csfnet_pipeline(source_uri: str = "", settings: dict = defaults) -> dsl.Markdown:
        """``settings``: dotted params.yaml keys (as ``csfnet --set``) over the image's params.yaml, every key
        reachable; ``source_uri``: raw data to fetch (s3://..., empty: synthesise ``synth``)."""
        share = cluster.light(step_settings(settings=settings)).outputs  # checked once, cut per step
        raw = s3(raw_data(source_uri=source_uri, settings=share["data"]))
        raw.set_caching_options(False)  # its output depends on what is behind the URI, not on its inputs
        fingerprint = raw.outputs["fingerprint"]
        if extract_workers == 1:
            data = extract_frames(fingerprint=fingerprint, source_uri=source_uri, settings=share["data"])
        else:  # shards decode in parallel; the merge links them into one dataset equal to a single extraction
            with dsl.ParallelFor(list(range(extract_workers)), name="extract-shards") as shard:
                part = extract_shard(fingerprint=fingerprint, shard=shard, shards=extract_workers,
                                     source_uri=source_uri, settings=share["data"])  # fmt: skip
                part = s3(heavy(part, gpu=False))
            parts = dsl.Collected(part.outputs["dataset"])
            data = merge_extraction(
                fingerprint=fingerprint, shards=parts, source_uri=source_uri, settings=share["data"]
            )
        dataset = s3(heavy(data, gpu=False)).outputs["dataset"]

        workers = cluster.light(tune_worker_specs(settings=share["tune"]))  # each with the same settings: one study
        with dsl.ParallelFor(workers.output, name="tune-workers") as spec:
            added = tune_worker(dataset=dataset, worker=spec.worker, settings=spec.settings)
            trials_added = tracked(cluster.optuna(heavy(added, True)))
        search = tune(dataset=dataset, settings=share["tune"])
        search = tracked(cluster.optuna(heavy(search, gpu=True)))  # re-validation trains
        search.after(trials_added)  # the whole loop: the study is complete
        partition = search.outputs["best_partition"]
        if train_nodes == 1:
            fit = tracked(heavy(train(dataset=dataset, best_partition=partition, settings=share["train"]), gpu=True))
        else:  # the step only creates and follows the TrainJob: no GPU of its own
            node_gpus = gpus if gpus_per_node is None else gpus_per_node
            fit = train_job(
                dataset=dataset, best_partition=partition, settings=share["train"], nodes=train_nodes,
                gpus_per_node=node_gpus, image=IMAGE, secret=MLFLOW_SECRET,
            )  # fmt: skip
            fit = tracked(heavy(fit, gpu=False))
            kubernetes.mount_pvc(fit, pvc_name=WORKSPACE_CLAIM, mount_path=WORKSPACE)
        weights = fit.outputs["model"]
        scores = tracked(heavy(evaluate(dataset=dataset, model=weights, settings=share["evaluate"]), gpu=False))
        noise = robustness(dataset=dataset, model=weights, settings=share["robustness"])
        noise = tracked(heavy(noise, gpu=False))
        onnx = tracked(heavy(export_onnx(dataset=dataset, model=weights, settings=share["export"]), gpu=False))
        register = tracked(
            register_model(
                onnx_model=onnx.outputs["onnx_model"],
                verification=onnx.outputs["verification"],
                settings=share["register"],
            )
        )
        register.after(scores, noise)  # the last tracked stage: it closes the MLflow parent run
        register.set_retry(num_retries=retries)
        new_champion = register.outputs["Output"]  # models:/<name>/<version> when the champion changed, else ""
        with dsl.If(new_champion != "", name="champion-changed"):
            serve = deploy(model_uri=new_champion, settings=share["deploy"], apply=apply_serving)
            serve.set_retry(num_retries=retries)
        return register.outputs["decision"]

    return csfnet_pipeline
