"""Serving the champion on KServe: the InferenceService of a registered model version, rendered or applied.

The InferenceService points at the version the ``champion`` alias names when it is built (``models:/<name>/<v>``),
so every promotion is a new spec and KServe rolls it out as a new revision (optionally as a canary). Pods fetch the
model with the ``models:/`` ClusterStorageContainer and serve it with ``mlflow models serve`` in the project image
(ServingRuntime ``csfnet-mlflow``, both in ``infra/k8s/serving``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from csfnet.errors import ServiceError, SettingsError
from csfnet.settings import Serving

DEFAULTS = Serving()  # the defaults of the serving: settings, the one place they are set

if TYPE_CHECKING:
    from kserve import KServeClient, V1beta1InferenceService

MODEL_FORMAT = "mlflow"
MLFLOW_CLIENT_LABEL = "csfnet.io/mlflow-client"  # pods allowed to reach MLflow (infra/k8s/base/network-policies.yaml)
MODEL_URI_ANNOTATION = "csfnet.io/model-uri"
_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_MODEL_URI = re.compile(r"models:/[^/@]+/\d+")


def champion_uri(registry_name: str, alias: str = "champion") -> str:
    """``models:/<name>/<version>`` of the version ``alias`` names in the MLflow registry (tracking URI from the
    environment)."""
    import mlflow
    from mlflow import MlflowClient

    try:
        version = MlflowClient().get_model_version_by_alias(registry_name, alias)
    except mlflow.exceptions.MlflowException as e:
        raise ServiceError(f"registered model {registry_name!r} has no {alias!r} version: {e.message}") from e
    return f"models:/{registry_name}/{version.version}"


def inference_service(
    name: str,
    model_uri: str,
    *,
    namespace: str | None = None,
    runtime: str = DEFAULTS.runtime,
    canary_percent: int | None = None,
    cpu: str = DEFAULTS.cpu,
    memory: str = DEFAULTS.memory,
    gpus: int = DEFAULTS.gpus,
    min_replicas: int = DEFAULTS.min_replicas,
    service_account: str | None = None,
) -> V1beta1InferenceService:
    """The InferenceService serving ``model_uri`` (``models:/<name>/<version>``) with ``runtime``.

    Args:
        name: InferenceService name (a DNS label).
        model_uri: Registered model version; resolve an alias first with :func:`champion_uri`.
        namespace: Target namespace (None: the current one).
        runtime: ServingRuntime to use.
        canary_percent: Share of traffic (1-100) the new revision gets while the previous one keeps the rest; None
            sends all traffic to the new revision once it is ready.
        cpu: CPU request (and no CPU limit, so bursts are not throttled).
        memory: Memory request and limit.
        gpus: NVIDIA GPUs per replica (0 for CPU serving).
        min_replicas: Replicas kept warm (0 allows scale to zero).
        service_account: Service account of the predictor pods.
    """
    from kserve import (
        V1beta1InferenceService,
        V1beta1InferenceServiceSpec,
        V1beta1ModelFormat,
        V1beta1ModelSpec,
        V1beta1PredictorSpec,
        constants,
    )
    from kubernetes.client import V1ObjectMeta, V1ResourceRequirements

    if not _NAME.fullmatch(name):
        raise SettingsError(f"serving name {name!r} is not a DNS label (lower-case letters, digits, '-')")
    if not _MODEL_URI.fullmatch(model_uri):
        raise SettingsError(f"model URI {model_uri!r} is not models:/<name>/<version>")
    if canary_percent is not None and not 1 <= canary_percent <= 100:
        raise SettingsError(f"canary percent {canary_percent} is not between 1 and 100")
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    limits: dict[str, str] = {"memory": memory}
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=name,
            namespace=namespace,
            labels={"app.kubernetes.io/part-of": "csfnet"},
            annotations={MODEL_URI_ANNOTATION: model_uri},
        ),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(
                min_replicas=min_replicas,
                canary_traffic_percent=canary_percent,
                service_account_name=service_account,
                labels={MLFLOW_CLIENT_LABEL: "true"},
                model=V1beta1ModelSpec(
                    name="kserve-container",
                    model_format=V1beta1ModelFormat(name=MODEL_FORMAT),
                    runtime=runtime,
                    storage_uri=model_uri,
                    resources=V1ResourceRequirements(requests=requests, limits=limits),
                ),
            )
        ),
    )


def to_dict(isvc: V1beta1InferenceService) -> dict[str, Any]:
    """The manifest as plain data (camelCase keys, no empty fields)."""
    from kserve.api_client import ApiClient

    return ApiClient().sanitize_for_serialization(isvc)


def from_dict(data: Mapping[str, Any]) -> V1beta1InferenceService:
    """Parse a manifest into the kserve SDK's models (kubernetes' for core types); unknown fields are an error."""
    return _model(data, "V1beta1InferenceService", "InferenceService")


def _model(data: Any, klass: str, where: str) -> Any:
    import kserve.models
    import kubernetes.client

    if data is None:
        return None
    if klass.startswith("list["):
        return [_model(v, klass[5:-1], f"{where}[{i}]") for i, v in enumerate(data)]
    if klass.startswith("dict("):
        inner = klass[5:-1].split(", ", 1)[1]
        return {k: _model(v, inner, f"{where}.{k}") for k, v in data.items()}
    if klass in {"str", "int", "float", "bool", "object", "datetime", "date"}:
        return data
    cls = getattr(kserve.models, klass, None) or getattr(kubernetes.client, klass)
    if not isinstance(data, Mapping):
        raise SettingsError(f"{where}: expected a mapping for {klass}, got {data!r}")
    fields = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise SettingsError(f"{where}: {klass} has no field {unknown[0]!r}")
    kwargs = {fields[k]: _model(v, cls.openapi_types[fields[k]], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise SettingsError(f"{where}: {e}") from e


def render(isvc: V1beta1InferenceService, out: str | Path | None = None) -> str:
    """The manifest as YAML; written atomically to ``out`` when given (GitOps: commit it, let the cluster sync)."""
    import yaml

    from csfnet.files import write_text

    text = yaml.safe_dump(to_dict(isvc), sort_keys=False)
    if out is not None:
        write_text(out, text)
    return text


def apply(isvc: V1beta1InferenceService, client: KServeClient | None = None) -> dict[str, Any]:
    """Create the InferenceService, or update it in place when it exists (a new revision; with the spec's canary
    percent, the previous revision keeps the rest of the traffic). A first creation takes all traffic."""
    from kserve import KServeClient
    from kserve.utils import utils

    client = client or KServeClient()
    namespace = isvc.metadata.namespace or utils.get_default_target_namespace()
    isvc.metadata.namespace = namespace
    try:
        client.get(isvc.metadata.name, namespace=namespace)
    except RuntimeError as e:
        if "(404)" not in str(e) and "Not Found" not in str(e):
            raise ServiceError(f"Kubernetes API: cannot read InferenceService {namespace}/{isvc.metadata.name}") from e
        isvc.spec.predictor.canary_traffic_percent = None  # nothing to split traffic with yet
        action, call = "create", lambda: client.create(isvc, namespace=namespace)
    else:
        if isvc.spec.predictor.canary_traffic_percent is None:
            isvc.spec.predictor.canary_traffic_percent = 100  # explicit: a merge patch would keep an old split
        action, call = "update", lambda: client.patch(isvc.metadata.name, isvc, namespace=namespace)
    try:
        return call()
    except RuntimeError as e:  # kserve wraps the API's refusal (RBAC, webhook validation) in RuntimeError
        raise ServiceError(
            f"Kubernetes API: cannot {action} InferenceService {namespace}/{isvc.metadata.name}: {e}"
        ) from e


def deploy_champion(
    registry_name: str,
    *,
    model_uri: str | None = None,
    service: str = DEFAULTS.name,
    render_to: str | Path | None = None,
    **options: Any,
) -> tuple[V1beta1InferenceService, str]:
    """``csfnet deploy``: the InferenceService for the current champion of ``registry_name`` (or ``model_uri``),
    written to ``render_to`` (GitOps) or else applied to the cluster of the kube config.

    Args:
        registry_name: Registered model whose ``champion`` is served (ignored when ``model_uri`` is given).
        model_uri: ``models:/<name>/<version>`` to serve instead of the champion.
        service: InferenceService name.
        render_to: YAML file to write instead of applying.
        **options: :func:`inference_service` options (namespace, runtime, canary_percent, cpu, memory, gpus ...).

    Returns:
        The InferenceService and the manifest's YAML text.
    """
    isvc = inference_service(service, model_uri or champion_uri(registry_name), **options)
    if render_to is None:
        apply(isvc)
    return isvc, render(isvc, render_to)
