"""The comparison pipeline for Kubeflow Pipelines v2, mirroring ``csfnet compare``: configurations x seeds trained
at equal budget on the same data and evaluated on the same split, one GPU per cell, all cells in parallel:

step settings (bench sizes) -> raw-data fingerprint -> extract ─┐
comparison cells [{config, seed}] ──────────────────────────────┴─> ParallelFor(cells): compare-cell -> compare-report

One ``settings`` parameter (dotted keys over the image's params.yaml, as ``csfnet --set``) reaches every step, cut
to what each reads (a cell never sees ``compare.seeds``). Caching as in the main pipeline: the raw-data step is never
cached, every other step takes only its real inputs, so a resubmission with one more seed trains only the new
cells. Every cell logs a nested MLflow
run under the comparison's one parent run, found by ``$CSFNET_PIPELINE_ID`` (the run's pod label); the report step
returns the Markdown table (the run's output) with Metrics and an HTML page holding the plot.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from kfp import dsl

from components import compare_cell, compare_report, comparison_cells, extract_frames, raw_data, step_settings
from pipelines.csfnet_pipeline import Cluster


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
    """The comparison pipeline function; the options are :func:`pipelines.csfnet_pipeline.build_pipeline`'s
    (``gpus``: GPUs per cell; ``apply_serving`` is accepted for the same signature and unused: nothing is served)."""
    cluster = Cluster(gpus, node_selector, tolerations, secrets, retries, cpu, memory)
    defaults = dict(settings or {})
    heavy, tracked, s3 = cluster.heavy, cluster.tracked, cluster.s3

    @dsl.pipeline(
        name="csfnet-compare",
        description="CSF-Net against baselines and ablations: configurations x seeds at equal budget, with intervals",
    )
    def compare_pipeline(source_uri: str = "", settings: dict = defaults) -> dsl.Markdown:
        """``settings``: dotted params.yaml keys (as ``csfnet --set``) over the image's params.yaml, every key
        reachable (``compare.configs``, ``compare.seeds``, ``compare.preset``, ``compare.synth`` ...)."""
        share = cluster.light(step_settings(settings=settings, bench=True)).outputs  # data: the bench sizes
        raw = s3(raw_data(source_uri=source_uri, settings=share["data"]))
        raw.set_caching_options(False)  # its output depends on what is behind the URI, not on its inputs
        data = extract_frames(fingerprint=raw.outputs["fingerprint"], source_uri=source_uri, settings=share["data"])
        dataset = s3(heavy(data, gpu=False)).outputs["dataset"]

        cells = tracked(cluster.light(comparison_cells(settings=settings)))
        cells.set_caching_options(False)  # opens this run's MLflow parent before the cells fan out
        with dsl.ParallelFor(cells.output, name="cells") as cell:
            trained = compare_cell(dataset=dataset, config=cell.config, seed=cell.seed, settings=cell.settings)
            tracked(heavy(trained, gpu=True))
        collected = dsl.Collected(trained.outputs["cell"])
        report = tracked(compare_report(cells=collected, settings=share["compare_report"]))
        report.set_caching_options(True)
        report.set_retry(num_retries=retries)
        return report.outputs["table"]

    return compare_pipeline
