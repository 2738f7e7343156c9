"""`csfnet compare`: a tiny comparison of two configurations x two seeds, its report, MLflow runs and determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from csfnet.cli import main
from csfnet.compare.cell import run_cell
from csfnet.compare.report import band_label, report
from csfnet.errors import DataError
from csfnet.metrics import ImageMatches
from csfnet.model import model_summary
from csfnet.summary import summary
from tests.conftest import TINY_TRAIN

CONFIGS = ["yolov8n", "csfnet-n"]


def _params(path: Path) -> None:
    settings = {
        "train": {"preset": "tiny", "device": "cpu"},
        "presets": {"tiny": TINY_TRAIN},
        "compare": {"configs": CONFIGS, "seeds": [0, 1], "preset": "tiny", "resamples": 200, "latency_images": 2},
    }
    path.write_text(yaml.safe_dump(settings))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"].float().state_dict()


@pytest.mark.slow
def test_compare_writes_table_with_intervals_nested_runs_and_is_deterministic(tiny_data: Path, tmp_path: Path) -> None:
    _params(tmp_path / "params.yaml")
    assert main(["compare", "--data", str(tiny_data), "--cells-dir", "cells", "--out", "report"]) == 0

    result = json.loads(Path("report/compare.json").read_text())
    assert result["order"] == CONFIGS and result["reference"] == "yolov8n"
    assert result["images"] > 0 and result["objects"] > 0
    for name in CONFIGS:
        row = result["rows"][name]
        assert row["seeds"] == [0, 1]
        for metric in ("map50", "map50_95"):
            interval = row[metric]
            assert interval["n"] == 2 and interval["low"] <= interval["mean"] <= interval["high"]
            assert interval["mean"] == pytest.approx(sum(s[metric] for s in row["per_seed"].values()) / 2)
        assert row["params"] == model_summary(name, imgsz=64)["params"]
        assert row["latency_ms_cpu"] > 0 and row["train_s"] > 0 and row["cpu_s"] > 0
        assert set(row["ap50_bands"]) == {"very_tiny", "tiny", "small", "medium"}
    delta = result["rows"]["csfnet-n"]["delta_map50"]
    assert delta["n"] == result["images"] and delta["verdict"] in ("better", "worse", "not separated")
    assert "delta_map50" not in result["rows"]["yolov8n"]  # the reference
    table = Path("report/compare.md").read_text()
    assert "| yolov8n | 2 |" in table and "| csfnet-n | 2 |" in table and "paired bootstrap" in table
    header = table.splitlines()[4]
    for band, objects in result["bands_objects"].items():  # a size band without validation objects gets no column
        assert (f"AP50 {band_label(result['bands_px'][band])} |" in header) == (objects > 0)
    assert Path("report/compare.png").read_bytes()[:4] == b"\x89PNG"
    lines = summary({"report": result}).splitlines()
    assert lines[0].startswith("comparison  yolov8n mAP50") and f"vs yolov8n: {delta['verdict']}" in lines[1]

    # MLflow: one parent for the comparison, one nested run per (configuration, seed) tagged with both, the report
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parents = [r for r in runs if r.data.tags.get("mlflow.runName", "").startswith("compare-")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    cells = {
        (r.data.tags["csfnet.config"], r.data.tags["csfnet.seed"]) for r in children if "csfnet.config" in r.data.tags
    }
    assert cells == {(c, s) for c in CONFIGS for s in ("0", "1")}
    assert any(r.data.tags.get("csfnet.stage") == "compare-report" for r in children)
    artifacts = mlflow.MlflowClient().list_artifacts(parents[0].info.run_id, "compare")
    assert "compare/compare.md" in {a.path for a in artifacts}

    # finished cells are reused: a second run retrains nothing
    before = {p: p.stat().st_mtime_ns for p in Path("cells").glob("*/weights/best.pt")}
    assert main(["compare", "--data", str(tiny_data), "--cells-dir", "cells", "--out", "report", "--no-mlflow"]) == 0
    assert {p: p.stat().st_mtime_ns for p in Path("cells").glob("*/weights/best.pt")} == before

    # determinism: the same seed on the same machine gives the same weights and detections; another seed does not
    again = run_cell("yolov8n", 0, tiny_data, tmp_path / "again")
    first = json.loads(Path("cells/yolov8n-seed0/cell.json").read_text())
    assert again["metrics"] == first["metrics"]
    seed0, seed1 = (
        _weights(Path("cells/yolov8n-seed0/weights/best.pt")),
        _weights(Path("cells/yolov8n-seed1/weights/best.pt")),
    )
    rerun = _weights(tmp_path / "again" / "weights" / "best.pt")
    assert all(torch.equal(seed0[k], rerun[k]) for k in seed0)
    assert not all(torch.equal(seed0[k], seed1[k]) for k in seed0)
    a, b = ImageMatches.load(tmp_path / "again" / "matches.npz"), ImageMatches.load("cells/yolov8n-seed0/matches.npz")
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in ("image", "conf", "tp", "n_gt"))

    # cells trained at another budget are refused, naming the cell
    shutil.copytree("cells/csfnet-n-seed1", "odd/csfnet-n-seed1")
    cell = json.loads(Path("odd/csfnet-n-seed1/cell.json").read_text())
    cell["args"]["epochs"] = 5
    Path("odd/csfnet-n-seed1/cell.json").write_text(json.dumps(cell))
    with pytest.raises(DataError, match="unequal budget"):
        report(["cells/yolov8n-seed0", "odd"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_dvc_runs_the_comparison_only_on_request(tmp_path: Path) -> None:
    """compare/dvc.yaml expands to one stage per configuration x seed of params.yaml; `dvc repro` leaves it out."""
    import subprocess

    from tests.conftest import REPO, tool

    (tmp_path / "compare").mkdir()
    for name in ("dvc.yaml", "params.yaml", "compare/dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    for cmd in (["git", "init", "-q"], [tool("dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)

    def stages(*target: str) -> list[str]:
        listed = subprocess.run(
            [tool("dvc"), "stage", "list", *target], cwd=tmp_path, check=True, capture_output=True, text=True
        )
        return [line.split()[0] for line in listed.stdout.splitlines()]

    settings = yaml.safe_load((REPO / "params.yaml").read_text())["compare"]
    cells = {f"compare/dvc.yaml:cell@{c}-{s}" for c in settings["configs"] for s in settings["seeds"]}
    assert set(stages("compare/dvc.yaml")) == cells | {"compare/dvc.yaml:bench-data", "compare/dvc.yaml:report"}
    assert not any("cell" in name or "bench" in name for name in stages())  # the default pipeline
