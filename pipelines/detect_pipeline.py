"""The detection pipeline: ``csfnet detect`` over a folder or bucket of videos in parallel shards.

detect-shards (the unfinished videos, dealt over ``workers``) -> ParallelFor(shards): detect-shard -> detect-summary.

Each video's results go to ``<out>/<video stem>/`` (``csfnet detect`` renames the folder into place when complete),
so a re-run skips finished videos and resumes an interrupted archive; ``<out>/summary.json`` merges every video's
summary and the run's output is a Markdown table of it. ``out`` is a path the steps share: on the cluster under the
``csfnet-workspace`` claim mounted at ``/workspace``. Nothing is cached (the work depends on ``out``'s contents).
Settings: the ``settings`` mapping (``detect.*`` ..., as ``csfnet --set``), checked by the planning step; a ``.pt``
model uses the shard's GPU with ``detect.device=0`` (params.yaml's default is the CPU).
"""

from collections.abc import Mapping, Sequence
from typing import Any

from kfp import dsl, kubernetes

from components import detect_shard, detect_shards, detect_summary
from pipelines.csfnet_pipeline import MLFLOW_SECRET, S3_KEYS, WORKSPACE, WORKSPACE_CLAIM, Cluster


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
):
    """The detection pipeline function; the options are :func:`pipelines.csfnet_pipeline.build_pipeline`'s
    (``gpus``: GPUs per shard; ``secrets``: S3 credentials and the workspace claim; ``apply_serving`` unused)."""
    cluster = Cluster(gpus, node_selector, tolerations, secrets, retries, cpu, memory)
    defaults = dict(settings or {})

    def shared(task: dsl.PipelineTask) -> dsl.PipelineTask:
        task.set_caching_options(False)  # finished videos are found in `out`, not in the inputs
        if secrets:
            kubernetes.use_secret_as_env(task, MLFLOW_SECRET, secret_key_to_env={k: k for k in S3_KEYS})
            kubernetes.mount_pvc(task, pvc_name=WORKSPACE_CLAIM, mount_path=WORKSPACE)
        return task

    @dsl.pipeline(name="csfnet-detect", description="csfnet detect over a folder or bucket of videos, in shards")
    def detect_pipeline(
        source_uri: str,
        model: str,
        out: str = f"{WORKSPACE}/detections",
        workers: int = 4,
        settings: dict = defaults,
    ) -> dsl.Markdown:
        """``source_uri``: folder or bucket prefix of videos; ``model``: .pt, .onnx, OpenVINO folder or
        ``models:/name@alias``; ``out``: shared output folder; ``workers``: parallel shards."""
        plan = shared(detect_shards(source_uri=source_uri, out=out, workers=workers, settings=settings))
        with dsl.ParallelFor(plan.output, name="detect-workers") as shard:
            task = detect_shard(videos=shard.videos, model=model, out=out, settings=shard.settings)
            task = shared(cluster.heavy(task, gpu=True))
        summary = shared(detect_summary(source_uri=source_uri, out=out, shards=dsl.Collected(task.output)))
        return summary.outputs["table"]

    return detect_pipeline
