"""Raw data fingerprint (never cached) and frame extraction (cached on the fingerprint)."""

from typing import NamedTuple

from kfp.dsl import HTML, Dataset, Metrics, Output

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

    from csfnet.kubeflow.fingerprint import source_fingerprint
    from csfnet.kubeflow.step import log_metrics, run_step, set_flags, write_html

    work = Path(tempfile.mkdtemp())
    raw = work / "raw"
    if source_uri:
        run_step(["data", "fetch", "--source", source_uri, "--out", raw])
        if source_fingerprint(source_uri) != fingerprint:
            raise RuntimeError(f"{source_uri} changed while the pipeline ran; submit it again")
    else:
        run_step(["data", "synth", "--out", raw, *set_flags(settings)])
    run_step(["data", "extract", "--source", raw, "--out", dataset.path, *set_flags(settings)])
    shutil.rmtree(raw, ignore_errors=True)
    dataset.metadata["fingerprint"] = fingerprint
    out = work / "stats"
    run_step(["data", "stats", "--data", f"{dataset.path}/data.yaml", "--out", out, *set_flags(settings)])
    data = json.loads((out / "stats.json").read_text())
    log_metrics(stats, data)
    write_html(stats_report, "Object sizes", data, [out / "size_histogram.png"])
