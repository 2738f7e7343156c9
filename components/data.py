"""Raw data fingerprint (never cached) and frame extraction (cached on the fingerprint)."""

from typing import NamedTuple

from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components.image import component


@component
def raw_data(
    source_uri: str = "",
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
) -> NamedTuple("Outputs", fingerprint=str):
    """Content fingerprint of the raw data: keys, sizes and ETags under ``source_uri`` (s3://..., a path), or the
    synthesis spec (params.yaml's ``synth`` with the data step's ``settings``) when it is empty. Only a listing:
    the data itself is read by extraction."""
    from typing import NamedTuple

    from csfnet.kubeflow.fingerprint import source_fingerprint, synth_fingerprint
    from csfnet.kubeflow.step import merged

    class Outputs(NamedTuple):
        fingerprint: str

    if source_uri:
        return Outputs(source_fingerprint(source_uri))
    return Outputs(synth_fingerprint(merged(settings).synth.model_dump()))


@component
def extract_frames(
    fingerprint: str,
    dataset: Output[Dataset],
    stats: Output[Metrics],
    stats_report: Output[HTML],
    source_uri: str = "",
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """Fetch (or synthesise) the raw videos, validate them and write the YOLO dataset; object size statistics as
    metrics and a histogram. ``fingerprint`` keys the cache: same data, same settings, same dataset."""
    from csfnet.kubeflow.step import extract_dataset

    extract_dataset(source_uri, fingerprint, settings, dataset, stats, stats_report)


@component
def extract_shard(
    fingerprint: str,
    shard: int,
    shards: int,
    dataset: Output[Dataset],
    source_uri: str = "",
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """Extract the sequences whose index is ``shard`` modulo ``shards`` (``csfnet data extract --shard``); the merge
    step links them into the dataset."""
    import shutil
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import raw_folder, run_step, set_flags

    raw = raw_folder(source_uri, fingerprint, settings, Path(tempfile.mkdtemp()))
    run_step(["data", "extract", "--source", raw, "--out", dataset.path, "--shard", f"{shard}/{shards}",
              *set_flags(settings)])  # fmt: skip
    shutil.rmtree(raw, ignore_errors=True)


@component
def merge_extraction(
    fingerprint: str,
    shards: Input[list[Dataset]],
    dataset: Output[Dataset],
    stats: Output[Metrics],
    stats_report: Output[HTML],
    source_uri: str = "",
    settings: dict = {},  # noqa: B006  (KFP reads defaults)
):
    """One dataset from the shards (``csfnet data extract --merge``): the source is validated whole and every
    sequence is linked from its shard, so the dataset equals a single extraction; statistics as ``extract_frames``."""
    from csfnet.kubeflow.step import extract_dataset

    merge = [arg for shard in shards for arg in ("--merge", shard.path)]
    extract_dataset(source_uri, fingerprint, settings, dataset, stats, stats_report, merge)
