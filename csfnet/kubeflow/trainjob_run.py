"""Run a TrainJob from inside a pipeline step: create it in the step's namespace, stream the first node's log, wait
for its outcome and fail with the TrainJob's own reason.

Runs in the step's pod with the pod's service account (``kubernetes`` client, in-cluster config; the kube config
elsewhere). Creating a job that already exists (a retried step) waits for that one instead, so a retry never starts
a second training; its run folder on the shared claim resumes from ``last.pt``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from csfnet.kubeflow.trainjob import API_VERSION, failure_reason, to_dict

if TYPE_CHECKING:
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

GROUP, VERSION = API_VERSION.split("/")
PLURAL = "trainjobs"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
FIRST_NODE = "jobset.sigs.k8s.io/jobset-name={name},batch.kubernetes.io/job-completion-index=0"


class TrainJobError(RuntimeError):
    """The TrainJob ended with a ``Failed`` condition; the message is its reason."""


def own_namespace() -> str:
    """The namespace of the pod this runs in (the service account's), ``default`` outside a cluster."""
    return NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.is_file() else "default"


def run_train_job(
    job: TrainerV1alpha1TrainJob,
    namespace: str | None = None,
    poll_s: float = 10.0,
    timeout_s: float | None = None,
    log: TextIO = sys.stdout,
) -> TrainerV1alpha1TrainJob:
    """Create ``job``, stream its first node's log to ``log`` and return the completed job.

    Raises:
        TrainJobError: the job failed (its condition's reason and message) or ran past ``timeout_s``.
    """
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # read now, not at import
    namespace = namespace or job.metadata.namespace or own_namespace()
    api, core = client.CustomObjectsApi(), client.CoreV1Api()
    name = job.metadata.name
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, to_dict(job))
        print(f"created TrainJob {namespace}/{name}", file=log)
    except ApiException as e:
        if e.status != 409:
            raise
        print(f"TrainJob {namespace}/{name} exists (a retried step): waiting for it", file=log)
    started = time.monotonic()
    streamed = False
    while True:
        current = _live(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        outcome = failure_reason(current)
        if outcome == "":
            return current
        if outcome is not None:
            raise TrainJobError(f"TrainJob {namespace}/{name} failed: {outcome}")
        if not streamed:
            streamed = _stream_first_node(core, namespace, name, log)
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise TrainJobError(f"TrainJob {namespace}/{name} still running after {timeout_s:.0f} s")
        time.sleep(poll_s)


def _live(data: dict[str, Any]) -> TrainerV1alpha1TrainJob:
    """A TrainJob as the API server returns it (server-set metadata and status included), parsed leniently."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    return TrainerV1alpha1TrainJob.from_dict(data)


def _stream_first_node(core: Any, namespace: str, name: str, log: TextIO) -> bool:
    """Follow the log of node 0 until its container ends; False while it has not started."""
    pods = core.list_namespaced_pod(namespace, label_selector=FIRST_NODE.format(name=name)).items
    running = [p for p in pods if p.status and p.status.phase in ("Running", "Succeeded", "Failed")]
    if not running:
        return False
    stream = core.read_namespaced_pod_log(
        running[0].metadata.name, namespace, container="node", follow=True, _preload_content=False
    )
    for chunk in stream.stream():
        log.write(chunk.decode(errors="replace"))
    log.flush()
    return True
