"""The bench data: the synthetic benchmark at the comparison's sizes (``compare.synth``), ingested and extracted
by the same functions as the pipeline's ``ingest`` and ``extract`` stages."""

from __future__ import annotations

from pathlib import Path

from csfnet.settings import Settings, load_settings


def bench_data(out: str | Path, settings: Settings | None = None, workers: int | None = None) -> Path:
    """Write ``out/raw`` (the videos) and ``out/dataset`` (frames and labels); return ``out/dataset/data.yaml``.

    ``synth`` settings apply, with ``train_videos``, ``val_videos`` and ``frames`` from ``compare.synth``.
    """
    from csfnet.data.extract import extract_with_settings
    from csfnet.data.source import ingest
    from csfnet.data.synth import SynthSpec

    settings = settings or load_settings()
    sizes = {f"synth.{k}": v for k, v in settings.compare.synth.model_dump().items()}
    settings = settings.override(sizes, "compare.synth")
    out = Path(out)
    ingest("synth", out / "raw", synth=SynthSpec(**settings.synth.model_dump()), workers=workers)
    extract_with_settings(out / "raw", out / "dataset", settings, workers=workers)
    return out / "dataset" / "data.yaml"
