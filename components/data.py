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
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import log_metrics, raw_folder, run_step, set_flags, write_html

    work = Path(tempfile.mkdtemp())
    raw = raw_folder(source_uri, fingerprint, settings, work)
    run_step(["data", "extract", "--source", raw, "--out", dataset.path, *set_flags(settings)])
    shutil.rmtree(raw, ignore_errors=True)
    dataset.metadata["fingerprint"] = fingerprint
    out = work / "stats"
    run_step(["data", "stats", "--data", f"{dataset.path}/data.yaml", "--out", out, *set_flags(settings)])
    data = json.loads((out / "stats.json").read_text())
    log_metrics(stats, data)
    write_html(stats_report, "Object sizes", data, [out / "size_histogram.png"])


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
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow.step import log_metrics, raw_folder, run_step, set_flags, write_html

    work = Path(tempfile.mkdtemp())
    raw = raw_folder(source_uri, fingerprint, settings, work)
    merge = [arg for shard in shards for arg in ("--merge", shard.path)]
    run_step(["data", "extract", "--source", raw, "--out", dataset.path, *merge, *set_flags(settings)])
    shutil.rmtree(raw, ignore_errors=True)
    dataset.metadata["fingerprint"] = fingerprint
    out = work / "stats"
    run_step(["data", "stats", "--data", f"{dataset.path}/data.yaml", "--out", out, *set_flags(settings)])
    data = json.loads((out / "stats.json").read_text())
    log_metrics(stats, data)
    write_html(stats_report, "Object sizes", data, [out / "size_histogram.png"])
