"""Optuna search for the CSwitch partition, fanned out: workers add trials to one shared study, then one step decides.

The study lives in the database ``$CSFNET_OPTUNA_STORAGE`` names (the cluster's PostgreSQL, from a secret), so any
number of workers fill it together; the deciding step runs no new trial: it re-validates the study's best partition
against the configuration's own and writes ``best_partition.json``.
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components.image import component


@component
def tune_worker_specs(settings: dict = {}) -> list:  # noqa: B006  (KFP reads defaults)
    """``[{"worker": i, "settings": settings}, ...]``: one item per tuning worker, ``tune.workers`` of them
    (params.yaml with ``settings``). The loop items carry the workers' settings: kfp's local runner hands a step
    inside a ``dsl.ParallelFor`` the loop item in place of another step's output."""
    from csfnet.kubeflow.step import merged

    return [{"worker": i, "settings": dict(settings)} for i in range(merged(settings).tune.workers)]


@component
def tune_worker(
    dataset: Input[Dataset],
    study: Output[Artifact],
    worker: int,
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """Add trials to the shared study until it holds ``tune.trials`` finished ones; no decision
    (``--no-revalidate``)."""
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import run_step, set_flags

    work = Path(tempfile.mkdtemp())
    args = ["tune", "--data", f"{dataset.path}/data.yaml", "--work-dir", work, "--out", study.path]
    run_step([*args, "--worker", worker, "--no-revalidate", *set_flags(settings)])
    study.metadata["worker"] = worker


@component
def tune(
    dataset: Input[Dataset],
    best_partition: Output[Artifact],
    report: Output[HTML],
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """Decide on the complete study (``$CSFNET_OPTUNA_STORAGE`` when set): re-validate its best partition against the
    configuration's own and write the adopted one as JSON. Same settings as the workers, so it finds their study."""
    import json
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import run_step, set_flags, write_html

    work = Path(tempfile.mkdtemp())
    args = ["tune", "--data", f"{dataset.path}/data.yaml", "--out", best_partition.path, "--work-dir", str(work)]
    run_step(args + set_flags(settings))
    write_html(report, "CSwitch partition search", json.loads(Path(best_partition.path).read_text()))
