"""`csfnet compare`: false positives per image in the table, and the same cells re-scored on another dataset with
sliced inference (`csfnet compare rescore`), cached in the cells and refused when the data cannot fit a cell."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from csfnet.cli import main
from csfnet.compare.cell import CELL_FILE, MATCHES_FILE
from csfnet.compare.rescore import RESCORE_DIR
from csfnet.data.extract import extract_with_settings
from csfnet.data.synth import SynthSpec, generate
from csfnet.metrics import IOU_THRESHOLDS, ImageMatches, average_precision, match_images
from csfnet.settings import load_settings
from tests.conftest import TINY_TRAIN

BANDS_PX = {"very_tiny": [0.0, 8.0], "tiny": [8.0, 16.0], "small": [16.0, 32.0], "medium": [32.0, None]}


def _tp(at_50: bool, at_75: bool = False) -> list[bool]:
    """A prediction's true-positive row: matched at IoU 0.5 (and up to 0.75 when ``at_75``)."""
    return [at_50 and (t < 0.5 + 1e-6 or (at_75 and t < 0.75 + 1e-6)) for t in IOU_THRESHOLDS]


def _cell(
    folder: Path,
    config: str,
    seed: int,
    predictions: list[tuple[int, float, bool]],
    n_gt: list[int],
    matches: ImageMatches | None = None,
) -> None:
    """A finished cell folder written by hand: ``predictions`` as (image, confidence, matched at IoU 0.5), saved
    without sizes as older cells were, or ``matches`` as given."""
    if matches is None:
        image, conf, tp = zip(*predictions)
        tp = [_tp(t, at_75=i % 2 == 0) for i, t in enumerate(tp)]
        matches = ImageMatches(image=image, conf=conf, tp=tp, n_gt=n_gt)
    folder.mkdir(parents=True)
    matches.save(folder / MATCHES_FILE)
    cell = {
        "config": config, "seed": seed, "preset": "quick", "args": {"epochs": 1, "seed": seed}, "data_hash": "d",
        "comparison": None, "eval": load_settings().eval.model_dump(), "images": len(n_gt), "objects": sum(n_gt),
        "metrics": {"map50": 0.5, "map50_95": 0.2, "ap50_bands": dict.fromkeys(BANDS_PX, 0.5)},
        "bands_px": BANDS_PX, "bands_objects": dict.fromkeys(BANDS_PX, 1), "params": 1, "gflops": 1.0, "imgsz": 64,
        "latency_ms_cpu": 1.0, "train_s": 1.0, "device": "cpu", "gpu_hours": 0.0, "cpu_s": 1.0,
    }  # fmt: skip
    (folder / CELL_FILE).write_text(json.dumps(cell))


def test_false_positives_per_image_equal_a_hand_count(tmp_path: Path) -> None:
    """Predictions at or above eval.report_conf (0.25) matching no ground truth at IoU 0.5, per image, per seed."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"compare": {"configs": ["csfnet-n", "yolov8n"]}}))
    n_gt = [1, 1, 0, 2, 1, 0]
    # reference: image 0 one FP at 0.3 (0.1 is below the operating point); image 2 one; image 3 one exactly at 0.25
    ref0 = [(0, 0.9, True), (0, 0.3, False), (0, 0.1, False), (2, 0.5, False), (3, 0.25, False), (3, 0.8, True)]
    ref1 = [(0, 0.9, True), (4, 0.7, True), (5, 0.6, False)]  # 1 FP
    # the other configuration: image 1 two FPs, 4 one, 5 two (one at 0.2 does not count)
    other0 = [(1, 0.4, False), (1, 0.35, False), (4, 0.9, False), (5, 0.5, False), (5, 0.3, False), (5, 0.2, False)]
    other1 = [(1, 0.9, False), (2, 0.6, False), (3, 0.7, True)]  # 2 FPs
    for config, seed, predictions in (
        ("csfnet-n", 0, ref0), ("csfnet-n", 1, ref1), ("yolov8n", 0, other0), ("yolov8n", 1, other1)
    ):  # fmt: skip
        _cell(tmp_path / "cells" / f"{config}-seed{seed}", config, seed, predictions, n_gt)

    assert main(["compare", "report", "--cells", "cells", "--out", "report", "--no-mlflow"]) == 0
    result = json.loads(Path("report/compare.json").read_text())
    rows = result["rows"]
    ref, other = rows["csfnet-n"], rows["yolov8n"]
    per_seed = {
        (name, s): v["fp_per_image"] for name in ("csfnet-n", "yolov8n") for s, v in rows[name]["per_seed"].items()
    }
    hand = {("csfnet-n", "0"): 3 / 6, ("csfnet-n", "1"): 1 / 6, ("yolov8n", "0"): 5 / 6, ("yolov8n", "1"): 2 / 6}
    assert per_seed == pytest.approx(hand, abs=1e-5)
    assert ref["fp_per_image"]["mean"] == pytest.approx(2 / 6, abs=1e-5)
    assert other["fp_per_image"]["mean"] == pytest.approx(3.5 / 6, abs=1e-5)
    delta = other["delta_fp_per_image"]
    assert delta["mean"] == pytest.approx(1.5 / 6, abs=1e-5) and delta["n"] == 6
    assert delta["low"] <= delta["mean"] <= delta["high"]
    assert delta["verdict"] == {True: "worse", False: "not separated"}[delta["low"] > 0]  # more FPs is never better
    table = Path("report/compare.md").read_text()
    assert "FP / image @0.25" in table and "| yolov8n | 2 |" in table and "0.58 [" in table
    assert "delta_ap50_bands" not in other and "Δ AP50" not in table  # matches saved without sizes: no band Δ
    assert _png_width(Path("report/compare.png")) == 2 * 660  # two panels: mAP50 and its Δ


def _png_width(path: Path) -> int:
    """Pixel width from a PNG's header (IHDR)."""
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    return int.from_bytes(data[16:20], "big")


def test_band_difference_is_a_paired_bootstrap_of_that_band(tmp_path: Path) -> None:
    """Twelve frames, each a 5 px and a 20 px target: the reference finds all; the other finds every 20 px target
    but only the 5 px targets of the first four frames. Its Δ AP50 below 8 px is the difference of the two bands'
    AP50 with a paired interval below 0, its 16-32 px Δ is 0."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"compare": {"configs": ["csfnet-n", "yolov8n"]}}))
    gt = [np.array([[10.0, 10, 15, 15], [40, 40, 60, 60]])] * 12
    conf = np.linspace(0.9, 0.5, 12)
    ref = match_images(gt, [(g, np.array([c, c])) for g, c in zip(gt, conf)])
    found = [
        (g if i < 4 else g[1:], np.array([c, c]) if i < 4 else np.array([c])) for i, (g, c) in enumerate(zip(gt, conf))
    ]
    other = match_images(gt, found)
    for config, matches in (("csfnet-n", ref), ("yolov8n", other)):
        _cell(tmp_path / "cells" / config, config, 0, [], [2] * 12, matches=matches)

    assert main(["compare", "report", "--cells", "cells", "--out", "report", "--no-mlflow"]) == 0
    deltas = json.loads(Path("report/compare.json").read_text())["rows"]["yolov8n"]["delta_ap50_bands"]
    assert set(deltas) == set(BANDS_PX)  # every band holds objects in the hand-written cell.json
    hand = average_precision(other.band(0, 8))["map50"] - average_precision(ref.band(0, 8))["map50"]
    assert hand == pytest.approx(1 / 3 - 1, abs=0.01)  # recall 4/12 at precision 1, against all found
    assert deltas["very_tiny"]["mean"] == pytest.approx(hand, abs=1e-5)
    assert deltas["very_tiny"]["high"] < 0 and deltas["very_tiny"]["verdict"] == "worse"
    assert deltas["small"]["mean"] == 0 and deltas["small"]["verdict"] == "not separated"
    table = Path("report/compare.md").read_text()
    assert "Δ AP50 <8 px vs csfnet-n" in table and "worse |" in table.splitlines()[-1]
    assert _png_width(Path("report/compare.png")) == 3 * 660  # a third panel: the <8 px Δ


@pytest.fixture(scope="module")
def second_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny benchmark, wider frames, extracted with the motion channels the temporal cell trains with."""
    root = tmp_path_factory.mktemp("second")
    generate(root / "raw", SynthSpec(train_videos=1, val_videos=1, frames=8, width=192, height=128, seed=11), 1)
    settings = load_settings().override({"temporal.offsets": [1, 3]}, "test")
    extract_with_settings(root / "raw", root / "dataset", settings, workers=1)
    return root / "dataset" / "data.yaml"


@pytest.mark.slow
def test_rescore_on_a_second_dataset_writes_the_table_reuses_its_cache_and_refuses_a_misfit(
    motion_data: Path, second_data: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from csfnet.compare.cell import run_cell

    args = {f"args.{k}": v for k, v in TINY_TRAIN.items()}
    values = {"temporal.offsets": [1, 3], "train.device": "cpu", "compare.preset": "quick", **args}
    settings = load_settings().override({**values, "compare.latency_images": 2}, "test")
    for config in ("yolov8n", "csfnet-t-n"):  # a single-frame cell (colour view) and a temporal one
        run_cell(config, 0, motion_data, tmp_path / "cells" / f"{config}-seed0", settings=settings)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"compare": {"configs": ["yolov8n", "csfnet-t-n"]}}))

    command = ["compare", "rescore", "--cells", "cells", "--eval-data", str(second_data), "--out", "hd"]
    assert main([*command, "--slice", "64", "--device", "cpu"]) == 0
    result = json.loads(Path("hd/compare.json").read_text())
    val_images = sorted((second_data.parent / "images" / "val").iterdir())
    assert result["images"] == len(val_images) and result["scoring"]["slice"] == 64
    assert result["scoring"]["imgsz"] == 64 and result["data_hash"] == result["scoring"]["data_hash"]
    assert set(result["bands_px"]) == set(BANDS_PX)  # AI-TOD band names
    row = result["rows"]["csfnet-t-n"]
    for key in ("map50", "fp_per_image", "delta_map50", "delta_fp_per_image"):
        assert key in row
    assert row["latency_ms_cpu"] > 0 and set(row["ap50_bands"]) == set(BANDS_PX)
    table = Path("hd/compare.md").read_text()
    assert "Re-scored on" in table and "64 px slices" in table and "| csfnet-t-n | 1 |" in table
    assert Path("hd/compare.png").read_bytes()[:4] == b"\x89PNG"
    caches = sorted(Path("cells").glob(f"*/{RESCORE_DIR}/*/{MATCHES_FILE}"))
    assert len(caches) == 2
    scored = ImageMatches.load(caches[0])
    assert scored.images == len(val_images) and not list(Path("cells").glob(f"*/{RESCORE_DIR}/.*"))

    # a rerun reuses every cached score: same files, same table
    before = {p: p.stat().st_mtime_ns for p in caches}
    assert main([*command, "--slice", "64", "--device", "cpu"]) == 0
    assert {p: p.stat().st_mtime_ns for p in Path("cells").glob(f"*/{RESCORE_DIR}/*/{MATCHES_FILE}")} == before
    assert json.loads(Path("hd/compare.json").read_text())["rows"] == result["rows"]

    # single-frame data has no motion for the temporal cell: one line, exit 2, nothing written (not even the
    # single-frame cell's score, which alone would fit)
    capsys.readouterr()
    bad = ["compare", "rescore", "--cells", "cells", "--eval-data", str(tiny_data), "--slice", "64", "--out", "bad"]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "csfnet-t-n" in err and "no motion channels" in err
    assert not Path("bad").exists()
    assert sorted(Path("cells").glob(f"*/{RESCORE_DIR}/*/{MATCHES_FILE}")) == caches


@pytest.fixture(scope="module")
def motion_data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.test_temporal_model import temporal_dataset

    return temporal_dataset(tiny_data, tmp_path_factory.mktemp("temporal") / "dataset")


def test_false_positive_helper_weights_images_like_a_resample() -> None:
    """Counting an image twice (a bootstrap weight of 2) equals repeating it."""
    from csfnet.metrics import false_positives_per_image

    m = ImageMatches(image=[0, 1, 1], conf=[0.9, 0.5, 0.3], tp=[_tp(False), _tp(True), _tp(False)], n_gt=[0, 1, 1])
    assert false_positives_per_image(m, 0.25) == pytest.approx(2 / 3)
    assert false_positives_per_image(m, 0.25, np.array([2, 1, 0])) == pytest.approx(3 / 3)
    assert false_positives_per_image(m, 0.95) == 0.0
