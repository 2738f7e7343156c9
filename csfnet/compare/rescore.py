"""A comparison re-scored on another dataset, optionally with sliced inference, from the same trained cells.

Each cell's ``weights/best.pt`` predicts the validation split of the eval dataset through the project's prediction
(:class:`csfnet.detect.predict.Predictor`, slicing as ``csfnet eval --slice``: ``--slice`` px crops at native
resolution, each letterboxed to the cell's image size; overlap and merging from ``detect``): a temporal cell on the
dataset's own motion channels, which must match its offsets and alignment, a single-frame cell on its colour frames
(as :func:`csfnet.compare.cell.run_cell` trains it). Every cell is checked against the dataset before anything is
scored or written. The per-image matches are cached in the cell folder as ``rescore/<key>/`` (``cell.json`` and
``matches.npz``, written together), ``key`` hashing the dataset's content hash, the weights, the slicing, the image
size and the ``eval`` settings, so a rerun (another seed, another report) scores only what is new. The report is
:func:`csfnet.compare.report.write_report`'s: the same table, plot and paired bootstrap over the eval images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from csfnet.checks import check_dataset
from csfnet.compare.cell import CELL_FILE, MATCHES_FILE, load_cell, single_frame_on_motion
from csfnet.compare.report import find_cells, select_configured, write_report
from csfnet.device import resolve_device
from csfnet.errors import InputNotFoundError
from csfnet.files import replace_dir, staging_dir, write_json
from csfnet.lineage import data_hash
from csfnet.metrics import ImageMatches, average_precision
from csfnet.settings import Settings, load_settings

RESCORE_DIR = "rescore"
WEIGHTS = Path("weights") / "best.pt"


def rescore_report(
    cells: Sequence[str | Path],
    eval_data: str | Path,
    out: str | Path,
    slice_size: int | None = None,
    configured: bool = False,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Re-score ``cells`` (folders, see :func:`csfnet.compare.report.find_cells`) on the ``val`` split of
    ``eval_data`` and write the report to ``out`` (``compare.json``, ``compare.md``, ``compare.png``).

    Args:
        cells: Finished cells of one comparison.
        eval_data: ``data.yaml`` of the dataset to score on (motion channels as the temporal cells were trained with).
        out: Report folder.
        slice_size: Slices of this many native pixels (0 or None: whole frames), ``detect`` overlap and merging.
        configured: Only the cells of ``compare.configs`` x ``compare.seeds``.
        settings: ``eval`` (thresholds, size bands), ``detect`` (slicing), ``train.device`` (default:
            :func:`csfnet.settings.load_settings`).

    Raises:
        DataError: A cell cannot be scored on ``eval_data`` (a temporal cell on data without its motion channels,
            with other offsets, or with motion files missing); nothing is written then.
    """
    from csfnet.detect.predict import SliceOptions

    settings = settings or load_settings()
    folders = [(folder, load_cell(folder)[0]) for folder in find_cells(cells)]
    if configured:
        folders = select_configured(folders, lambda item: item[1], settings, list(cells))
    check_dataset(eval_data, ("val",))
    for folder, cell in folders:  # every cell before any is scored: a mismatch writes nothing
        check_cell_data(folder, cell, eval_data)
    d = settings.detect
    slicing = SliceOptions(slice_size or None, d.overlap, d.full_frame, d.merge, d.merge_threshold)
    device = resolve_device(None, settings)
    loaded = [rescored_cell(folder, cell, eval_data, slicing, device, settings) for folder, cell in folders]
    first = folders[0][1]
    scoring = {
        "data": str(eval_data),
        "data_hash": data_hash(eval_data),
        "trained_on": first["data_hash"],
        **_slicing_spec(slicing),
        "imgsz": first["imgsz"],
        "device": device,
    }
    return write_report(loaded, out, settings=settings, scoring=scoring)


def check_cell_data(folder: Path, cell: dict[str, Any], eval_data: str | Path) -> None:
    """DataError (one line, naming the cell) unless the cell's model can be scored on ``eval_data``."""
    from csfnet.temporal import check_dataset_motion, model_motion
    from csfnet.temporal.model_spec import check_model_data_motion

    weights = folder / WEIGHTS
    if not weights.is_file():
        raise InputNotFoundError(f"cell {folder}: no {WEIGHTS} to re-score")
    if single_frame_on_motion(cell["config"], eval_data):
        return  # scored on the colour frames, as it was trained
    check_model_data_motion(weights, eval_data, f"cell {folder} ({cell['config']})")
    check_dataset_motion(eval_data, model_motion(weights))  # every motion file present


def rescored_cell(
    folder: Path, cell: dict[str, Any], eval_data: str | Path, slicing: Any, device: str, settings: Settings
) -> tuple[dict[str, Any], ImageMatches]:
    """The cell as if it had been scored on ``eval_data`` with ``slicing``: its ``cell.json`` with the new data,
    metrics and latency, and the matches; from ``rescore/<key>/`` when cached there, else scored and cached."""
    e, weights = settings.eval, folder / WEIGHTS
    spec = [data_hash(eval_data), _file_hash(weights), _slicing_spec(slicing), cell["imgsz"], e.model_dump()]
    cache = folder / RESCORE_DIR / hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    if (cache / CELL_FILE).is_file() and (cache / MATCHES_FILE).is_file():
        cached = load_cell(cache)
        if cached[1].sized:  # one written before matches carried box sizes is scored again
            return cached
    matches, bands, seconds = _score(weights, eval_data, slicing, cell["imgsz"], device, settings)
    rescored = {
        **cell,
        "data_hash": spec[0],
        "eval": spec[4],
        "images": matches.images,
        "objects": int(matches.n_gt.sum()),
        "metrics": {**average_precision(matches), "ap50_bands": {k: v["ap50"] for k, v in bands.items()}},
        "bands_px": {k: v["px"] for k, v in bands.items()},
        "bands_objects": {k: v["objects"] for k, v in bands.items()},
        "latency_ms_cpu": round(1000 * seconds / matches.images, 2) if device == "cpu" else None,
        "rescore": {"data": str(eval_data), **_slicing_spec(slicing), "device": device, "weights_sha256": spec[1]},
    }
    with staging_dir(cache) as tmp:
        matches.save(tmp / MATCHES_FILE)
        write_json(tmp / CELL_FILE, rescored)
        replace_dir(tmp, cache)
    return rescored, matches


def _score(
    weights: Path, data: str | Path, slicing: Any, imgsz: int, device: str, settings: Settings
) -> tuple[ImageMatches, dict[str, dict[str, Any]], float]:
    """Matches and size-band AP50 of ``weights`` on the ``val`` images of ``data``, and the seconds predicting."""
    from csfnet.data.dataset import read_labels, split_images
    from csfnet.detect.predict import Predictor
    from csfnet.detect.runtimes import load_runtime
    from csfnet.detect.sliced_eval import predict_images
    from csfnet.metrics import bands_of, match_images

    e = settings.eval
    runtime = load_runtime(weights, imgsz, device=device, end_to_end=e.end_to_end)
    images = split_images(data, "val")
    truths = [read_labels(p) for p in images]
    predictions, seconds = predict_images(Predictor(runtime, e.conf, e.iou, slicing, settings.detect.batch), images)
    matches = match_images([t[0] for t in truths], predictions)
    return matches, bands_of(matches, e.size_bands, e.report_conf), seconds


def _slicing_spec(slicing: Any) -> dict[str, Any]:
    """What of the slicing changes the predictions (only the size without slicing)."""
    if not slicing.enabled:
        return {"slice": 0}
    keys = ("overlap", "full_frame", "merge", "merge_threshold")
    return {"slice": slicing.size, **{k: getattr(slicing, k) for k in keys}}


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]
