"""Serving: the champion as a KServe InferenceService (run only when registration changed the champion)."""

from kfp.dsl import Artifact, Output

from components.image import component


@component
def deploy(
    model_uri: str,
    manifest: Output[Artifact],
    service: str = "csfnet",
    namespace: str = "",
    runtime: str = "csfnet-mlflow",
    canary_percent: int = 0,
    cpu: str = "1",
    memory: str = "2Gi",
    gpus: int = 0,
    apply: bool = True,
):
    """Create or update the InferenceService ``service`` serving ``model_uri`` (``models:/<name>/<version>``);
    ``canary_percent`` (1-99) sends that share to the new revision, 0 all of it. The manifest is the step's output;
    with ``apply`` off (local runs) it is only rendered."""
    from csfnet.kubeflow.deploy import apply as apply_isvc
    from csfnet.kubeflow.deploy import inference_service, render

    isvc = inference_service(
        service,
        model_uri,
        namespace=namespace or None,
        runtime=runtime,
        canary_percent=canary_percent or None,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
    )
    if apply:
        apply_isvc(isvc)
    render(isvc, manifest.path)
