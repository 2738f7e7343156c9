"""The comparison pipeline for Kubeflow Pipelines v2, mirroring ``csfnet compare``: configurations x seeds trained
at equal budget on the same data and evaluated on the same split, one GPU per cell, all cells in parallel:

bench sizes -> raw-data fingerprint -> extract ─┐
comparison cells [{config, seed}] ──────────────┴─> ParallelFor(cells): compare-cell -> compare-report (Collected)

Empty/zero parameters take the image's params.yaml (``compare.configs``, ``compare.seeds``, ``compare.preset``,
``compare.synth`` sizes). Caching as in the main pipeline: the raw-data step is never cached, every other step takes
only its real inputs, so a resubmission with one more seed trains only the new cells. Every cell logs a nested MLflow
run under the comparison's one parent run, found by ``$CSFNET_PIPELINE_ID`` (the run's pod label); the report step
returns the Markdown table (the run's output) with Metrics and an HTML page holding the plot.
"""

from collections.abc import Mapping, Sequence

from kfp import dsl

from components import bench_sizes, compare_cell, compare_report, comparison_cells, extract_frames, raw_data
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
):
    """The comparison pipeline function; the options are :func:`pipelines.csfnet_pipeline.build_pipeline`'s
    (``gpus``: GPUs per cell; ``apply_serving`` is accepted for the same signature and unused: nothing is served)."""
    cluster = Cluster(gpus, node_selector, tolerations, secrets, retries, cpu, memory)
    heavy, tracked, s3 = cluster.heavy, cluster.tracked, cluster.s3

    @dsl.pipeline(
        name="csfnet-compare",
        description="CSF-Net against baselines and ablations: configurations x seeds at equal budget, with intervals",
    )
    def compare_pipeline(
        configs: list = [],  # noqa: B006  (KFP parameters are declared by their defaults)
        seeds: list = [],  # noqa: B006
        preset: str = "",
        source_uri: str = "",
        train_videos: int = 0,
        val_videos: int = 0,
        frames: int = 0,
        stride: int = 0,
    ) -> dsl.Markdown:
        """Empty/zero parameters take the image's params.yaml ``compare`` values."""
        plan = cluster.light(bench_sizes(train_videos=train_videos, val_videos=val_videos, frames=frames))
        sizes = {k: plan.outputs[k] for k in ("train_videos", "val_videos", "frames")}
        raw = s3(raw_data(source_uri=source_uri, **sizes))
        raw.set_caching_options(False)  # its output depends on what is behind the URI, not on its inputs
        data = extract_frames(fingerprint=raw.outputs["fingerprint"], source_uri=source_uri, stride=stride, **sizes)
        dataset = s3(heavy(data, gpu=False)).outputs["dataset"]

        cells = tracked(cluster.light(comparison_cells(configs=configs, seeds=seeds)))
        cells.set_caching_options(False)  # opens this run's MLflow parent before the cells fan out
        with dsl.ParallelFor(cells.output, name="cells") as cell:
            trained = compare_cell(dataset=dataset, config=cell.config, seed=cell.seed, preset=preset)
            tracked(heavy(trained, gpu=True))
        report = tracked(compare_report(cells=dsl.Collected(trained.outputs["cell"]), configs=configs))
        report.set_caching_options(True)
        report.set_retry(num_retries=retries)
        return report.outputs["table"]

    return compare_pipeline
