"""The run's settings mapping, checked once and cut into what each step reads (so a changed key re-runs only the
steps reading it; every other step comes from the cache)."""

from typing import NamedTuple

from components.image import component


@component
def step_settings(settings: dict = {}, bench: bool = False) -> NamedTuple(  # noqa: B006  (KFP reads defaults)
    "Outputs",
    data=dict,
    tune=dict,
    train=dict,
    evaluate=dict,
    robustness=dict,
    export=dict,
    register=dict,
    deploy=dict,
    compare_cell=dict,
    compare_report=dict,
):
    """Validate ``settings`` (dotted keys, as ``--set``) against the image's params.yaml, failing before any work with
    the key named, and return each step's share (:func:`csfnet.kubeflow.step.for_step`). ``bench``: the data step
    synthesises the comparison's bench data (``synth`` sizes from ``compare.synth``)."""
    from typing import NamedTuple

    from csfnet.kubeflow.step import STEPS, for_step, merged

    everything = merged(settings)
    shares = {step: for_step(settings, step) for step in STEPS}
    if bench:
        shares["data"].update({f"synth.{k}": v for k, v in everything.compare.synth.model_dump().items()})
    Outputs = NamedTuple("Outputs", [(step, dict) for step in STEPS])
    return Outputs(**shares)
