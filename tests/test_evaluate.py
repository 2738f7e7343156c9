"""Evaluation metrics and the noise sweep on a tiny trained model."""

import json

import numpy as np
import pytest

from csfnet.evaluate import evaluate, validate
from csfnet.robustness import add_gaussian_noise, noise_sweep


def test_noise_has_the_requested_std_and_clips():
    rng = np.random.default_rng(0)
    gray = np.full((256, 256, 3), 128, np.uint8)
    for sigma in (5, 10, 25):
        noisy = add_gaussian_noise(gray, sigma, rng).astype(float)
        assert abs(noisy.std() - sigma) < 0.05 * sigma
        assert abs(noisy.mean() - 128) < 0.5
    white = add_gaussian_noise(np.full((64, 64, 3), 250, np.uint8), 50, rng)
    assert white.dtype == np.uint8 and white.max() == 255 and (white == 255).mean() > 0.3
    assert np.array_equal(add_gaussian_noise(gray, 0, rng), gray)
    with pytest.raises(ValueError):
        add_gaussian_noise(gray, -1, rng)


def test_evaluate_writes_documented_metrics_and_plots(tiny_weights, tiny_data, tmp_path):
    metrics = evaluate(tiny_weights, tiny_data, tmp_path / "eval", imgsz=64, size_bands=[8, 16], samples=2)
    saved = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in ("map50", "map50_95", "precision", "recall"):
        assert 0 <= saved[key] <= 1
    assert set(saved["size_bands"]) == {"very_tiny", "tiny", "small"}
    assert [b["px"] for b in saved["size_bands"].values()] == [[0, 8], [8, 16], [16, None]]
    assert sum(b["objects"] for b in saved["size_bands"].values()) == saved["objects"] > 0
    assert set(saved["per_sequence_recall"]) == {"uav_val_0000"}
    assert saved["latency_ms_per_image"] > 0
    for plot in ("samples.jpg", "pr_curve.png", "confusion_matrix.png"):
        assert (tmp_path / "eval" / plot).stat().st_size > 1000


def test_noise_sweep_zero_row_equals_plain_evaluation(tiny_weights, tiny_data, tmp_path):
    rows = noise_sweep(tiny_weights, tiny_data, tmp_path / "rob", sigmas=[0, 25], imgsz=64)
    plain = validate(tiny_weights, tiny_data, imgsz=64, plots=False)
    assert [r["sigma"] for r in rows] == [0, 25]
    for key in ("map50", "map50_95", "precision", "recall"):
        assert rows[0][key] == pytest.approx(plain[key], abs=1e-5)
        assert 0 <= rows[1][key] <= 1
    table = json.loads((tmp_path / "rob/robustness.json").read_text())
    assert set(table) == {"sigma_0", "sigma_25"}
    assert (tmp_path / "rob/robustness.csv").read_text().startswith("sigma,map50,map50_95,precision,recall")
    assert (tmp_path / "rob/robustness.png").stat().st_size > 5000
    assert not list((tmp_path / "rob").glob(".noise*"))  # temporary noisy copies are gone
