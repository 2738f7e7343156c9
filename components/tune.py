"""Optuna search for the CSwitch partition, fanned out: workers add trials to one shared study, then one step decides.

The study lives in the database ``$CSFNET_OPTUNA_STORAGE`` names (the cluster's PostgreSQL, from a secret), so any
number of workers fill it together; the deciding step runs no new trial: it re-validates the study's best partition
against the configuration's own and writes ``best_partition.json``.
"""

from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from components.image import component


@component
def tune_worker_indices(workers: int = 0) -> list:
    """``[0, 1, ..., n - 1]``: one index per tuning worker, ``n`` = ``workers`` or params.yaml's ``tune.workers``."""
    from csfnet.errors import SettingsError
    from csfnet.settings import load_settings

    if workers < 0:
        raise SettingsError(f"tune_workers: {workers} is negative (0 = params.yaml's tune.workers)")
    return list(range(workers or load_settings().tune.workers))


@component
def tune_worker(
    dataset: Input[Dataset],
    study: Output[Artifact],
    worker: int,
    model: str = "",
    preset: str = "",
    trials: int = 0,
    epochs: int = 0,
):
    """Add trials to the shared study until it holds ``trials`` finished ones; no decision (``--no-revalidate``)."""
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import flags, run_step

    work = Path(tempfile.mkdtemp())
    args = ["tune", "--data", f"{dataset.path}/data.yaml", "--work-dir", work, "--out", study.path]
    args += ["--worker", worker, "--no-revalidate"]
    run_step(args + flags({"--model": model, "--preset": preset, "--trials": trials, "--epochs": epochs}))
    study.metadata["worker"] = worker


@component
def tune(
    dataset: Input[Dataset],
    best_partition: Output[Artifact],
    report: Output[HTML],
    model: str = "",
    preset: str = "",
    trials: int = 0,
    epochs: int = 0,
):
    """Decide on the complete study (``$CSFNET_OPTUNA_STORAGE`` when set): re-validate its best partition against the
    configuration's own and write the adopted one as JSON. Same options as the workers, so it finds their study."""
    import json
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import flags, run_step, write_html

    work = Path(tempfile.mkdtemp())
    args = ["tune", "--data", f"{dataset.path}/data.yaml", "--out", best_partition.path, "--work-dir", str(work)]
    options = {"--model": model, "--preset": preset, "--trials": trials, "--epochs": epochs}
    run_step(args + flags(options))
    write_html(report, "CSwitch partition search", json.loads(Path(best_partition.path).read_text()))
