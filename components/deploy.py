"""Serving: the champion as a KServe InferenceService (run only when registration changed the champion)."""

from kfp.dsl import Artifact, Output

from components.image import component


@component
def deploy(
    model_uri: str,
    manifest: Output[Artifact],
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
    apply: bool = True,
):
    """Create or update the InferenceService ``serving.name`` serving ``model_uri`` (``models:/<name>/<version>``)
    as params.yaml's ``serving`` with the run's ``settings`` says (``serving.canary_percent`` 1-99 sends that share
    to the new revision, 0 all of it). The manifest is the step's output; with ``apply`` off (local runs) it is only
    rendered."""
    from csfnet.kubeflow.deploy import apply as apply_isvc
    from csfnet.kubeflow.deploy import inference_service, render
    from csfnet.kubeflow.step import merged

    serving = merged(settings).serving
    isvc = inference_service(serving.name, model_uri, **serving.options())
    if apply:
        apply_isvc(isvc)
    render(isvc, manifest.path)
