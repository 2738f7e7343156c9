"""Raw video data (fetched from an object store or synthesised) and frame extraction."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE)
def raw_data(
    run_id: str,
    raw: Output[Dataset],
    source_uri: str = "",
    train_videos: int = 0,
    val_videos: int = 0,
    frames: int = 0,
    seed: int = 0,
):
    """Copy the raw dataset root at ``source_uri`` (s3://..., a path), or synthesise the benchmark when empty."""
    from csfnet.kubeflow import flags, run_step

    if source_uri:
        run_step(run_id, ["data", "fetch", "--source", source_uri, "--out", raw.path])
    else:
        sizes = {"--train-videos": train_videos, "--val-videos": val_videos, "--frames": frames}
        run_step(run_id, ["data", "synth", "--out", raw.path, "--seed", str(seed), *flags(sizes)])


@dsl.component(base_image=IMAGE)
def extract_frames(
    run_id: str,
    raw: Input[Dataset],
    dataset: Output[Dataset],
    stats: Output[Metrics],
    stats_report: Output[HTML],
    stride: int = 0,
):
    """Validate the raw videos and write the YOLO dataset; object size statistics as metrics and a histogram."""
    import json
    import tempfile
    from pathlib import Path

    from csfnet.kubeflow import log_metrics, run_step, write_html

    run_step(
        run_id,
        [
            "data",
            "extract",
            "--source",
            raw.path,
            "--out",
            dataset.path,
            *(["--stride", str(stride)] if stride else []),
        ],
    )
    out = Path(tempfile.mkdtemp())
    run_step(run_id, ["data", "stats", "--data", f"{dataset.path}/data.yaml", "--out", str(out)])
    data = json.loads((out / "stats.json").read_text())
    log_metrics(stats, data)
    write_html(stats_report, "Object sizes", data, [out / "size_histogram.png"])
