"""The trainer's CPU savings: validation of the last epochs only, and the opt-in bfloat16 forward pass (loss in
float32)."""

import csv
import math
from pathlib import Path

import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.utils import DEFAULT_CFG

from csfnet.model import build_model
from csfnet.settings import Settings
from csfnet.train import train
from csfnet.trainer import cpu_has_native_bf16, forward_in_bf16

from .conftest import TINY_TRAIN


def _batch(imgsz: int = 64) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "img": torch.rand(2, 3, imgsz, imgsz, generator=gen),
        "cls": torch.zeros(3, 1),
        "bboxes": torch.tensor([[0.3, 0.3, 0.1, 0.1], [0.6, 0.5, 0.05, 0.08], [0.5, 0.5, 0.2, 0.1]]),
        "batch_idx": torch.tensor([0.0, 0.0, 1.0]),
    }


def test_bf16_forward_hands_the_loss_float32_predictions_close_to_float32_ones():
    torch.manual_seed(0)
    reference = build_model("csfnet-n").eval()  # running BN statistics: the comparison measures bf16 rounding only
    model = build_model("csfnet-n").eval()
    model.load_state_dict(reference.state_dict())
    forward_in_bf16(model)
    for m in (reference, model):
        m.model[-1].training = True  # the raw head outputs the loss takes
    batch = _batch()
    with torch.no_grad():
        expected, got = reference.predict(batch["img"]), model.predict(batch["img"])
    for e, g in zip(expected["feats"], got["feats"]):
        assert g.dtype == torch.float32
        assert (e - g).norm() / e.norm() < 0.05  # measured about 0.01
    model.train()
    model.args = get_cfg(DEFAULT_CFG)
    loss, _ = model(batch)
    loss.sum().backward()
    assert torch.isfinite(loss).all()
    assert all(p.dtype == p.grad.dtype == torch.float32 for p in model.parameters() if p.grad is not None)


def test_native_bf16_is_detected_from_the_cpu_flags():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo")
    flags = cpuinfo.read_text()
    assert cpu_has_native_bf16() == (" avx512_bf16" in flags or " amx_tile" in flags)


@pytest.mark.slow  # trains
def test_val_last_validates_only_the_last_epochs_and_best_pt_is_a_validated_one(tiny_data, tmp_path):
    result = train(
        tiny_data, model="csfnet-n", out=tmp_path / "run", overrides={**TINY_TRAIN, "epochs": 3, "val_last": 1},
        device="cpu",
    )  # fmt: skip
    rows = list(csv.DictReader((result.run_dir / "results.csv").open()))
    maps = [float(r["metrics/mAP50(B)"]) for r in rows]
    assert len(maps) == 3 and math.isnan(maps[0]) and math.isnan(maps[1]) and not math.isnan(maps[2])
    best = torch.load(result.best, map_location="cpu", weights_only=False)
    assert not math.isnan(best["train_metrics"]["metrics/mAP50(B)"])  # not the placeholder of a skipped epoch
    assert not math.isnan(result.metrics["metrics/mAP50(B)"])


def test_val_last_is_a_preset_argument_csfnet_checks():
    assert Settings().presets["quick"]["val_last"] == 6
    assert "val_last" not in Settings().presets["bench"]  # bench keeps ultralytics' every-epoch validation
    with pytest.raises(ValueError, match="val_last: -1 is not a count"):
        Settings.model_validate({"presets": {"quick": {"val_last": -1}}})


def test_bf16_is_opt_in_and_checked():
    assert not any(args.get("cpu_bf16") for args in Settings().presets.values())  # accuracy not shown to hold
    with pytest.raises(ValueError, match="cpu_bf16: 'yes' is not true or false"):
        Settings.model_validate({"presets": {"quick": {"cpu_bf16": "yes"}}})


@pytest.mark.slow  # trains
def test_channels_last_training_writes_plain_checkpoints(tiny_data, tmp_path):
    result = train(
        tiny_data, model="csfnet-n", out=tmp_path / "run", overrides={**TINY_TRAIN, "channels_last": True},
        device="cpu",
    )  # fmt: skip
    best = torch.load(result.best, map_location="cpu", weights_only=False)["model"]
    assert all(p.is_contiguous() for p in best.parameters())  # the EMA copy stays in the default layout
    assert not math.isnan(result.metrics["metrics/mAP50(B)"])
    with pytest.raises(ValueError, match="channels_last: 1 is not true or false"):
        Settings.model_validate({"presets": {"quick": {"channels_last": 1}}})
