"""Temporal CSF-Net (issue 24): colour + motion channels in, motion routed to the shallow backbone only; training,
validation and evaluation read the same stacked images; checkpoints carry the motion spec; mismatches are errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from ultralytics.cfg import get_cfg
from ultralytics.data.augment import RandomHSV

from csfnet.config_names import unknown_config
from csfnet.errors import DataError
from csfnet.model import build_model, load_config, model_summary
from csfnet.settings import load_settings
from csfnet.stacked_data import ColourHSV, StackedDataset, plotted
from csfnet.temporal import MotionSpec, load_stacked, model_motion, motion_path
from csfnet.trainer import transfer_weights

from .conftest import TINY_TRAIN

SPEC = MotionSpec((1, 3), "homography", 320)
FUSION_STEM = 15  # csfnet-t.yaml: layer 14 selects the channels the fusion backbone's stem (15) reads


def temporal_dataset(single_frame: Path, out: Path, spec: MotionSpec = SPEC) -> Path:
    """A copy of a single-frame dataset with motion channels: offset ``spec.offsets[i]`` holds colour channel
    ``2 * i`` (B, then R) of its image, so that a test can tell whether the channels travelled together."""
    root = single_frame.parent
    shutil.copytree(root / "images", out / "images")
    shutil.copytree(root / "labels", out / "labels", ignore=shutil.ignore_patterns("*.cache"))
    for image in sorted((out / "images").rglob("*.jpg")):
        colour = cv2.imread(str(image))
        for i, d in enumerate(spec.offsets):
            path = motion_path(image, d)
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), colour[..., (2 * i) % 3])
    data = {**yaml.safe_load(single_frame.read_text()), "channels": 3 + spec.channels, "motion": spec.to_dict()}
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return out / "data.yaml"


@pytest.fixture(scope="module")
def motion_data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return temporal_dataset(tiny_data, tmp_path_factory.mktemp("temporal") / "dataset")


def _temporal_settings(offsets=(1, 3)):
    return load_settings().override({"temporal.offsets": list(offsets)}, "test")


def _stem_inputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What the fusion backbone's stem receives for input ``x``."""
    seen = []
    hook = model.model[FUSION_STEM].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("k", [1, 2])
def test_temporal_configs_build_for_any_k_and_route_motion(k):
    x = torch.rand(1, 3 + k, 64, 96)
    still = x.clone()
    still[:, 3:] = 0  # the same frame without motion
    for name, fusion_channels in (("csfnet-t-n", 3), ("csfnet-t-n-both", 3 + k)):
        model = build_model(name, nc=2, ch=3 + k).eval()
        assert model.yaml["channels"] == 3 + k and model.model[1].conv.in_channels == 3 + k  # shallow: all
        assert build_model(model.yaml).yaml["channels"] == 3 + k  # its config rebuilds it as built
        assert model.model[FUSION_STEM].conv.in_channels == fusion_channels
        with torch.no_grad():
            out, out_still = model(x)[0], model(still)[0]
        assert out.shape == (1, 4 + 2, (64 // 8) * (96 // 8) + (64 // 16) * (96 // 16) + (64 // 32) * (96 // 32))
        assert not torch.equal(out, out_still)  # motion changes the detections ...
        same_fusion_input = torch.equal(_stem_inputs(model, x), _stem_inputs(model, still))
        assert same_fusion_input == (name == "csfnet-t-n")  # ... through the shallow path only, in csfnet-t-n
    with pytest.raises(ValueError, match="colour \\+ motion"):
        build_model("csfnet-t-n", ch=3)


def test_model_info_states_channels_and_names_are_known():
    temporal, single = model_summary("csfnet-t-n", imgsz=64), model_summary("csfnet-n", imgsz=64)
    assert temporal["channels"] == 5 and single["channels"] == 3  # default k = 2 for a temporal config
    assert model_summary("csfnet-t-n", imgsz=64, ch=4)["params"] < temporal["params"]
    assert "did you mean 'csfnet-t-n'" in unknown_config("csfnet-t-nn")
    both_s = load_config("csfnet-t-s-both")  # other scales and the ablation resolve too
    assert both_s["scale"] == "s" and both_s["temporal"] and Path(both_s["yaml_file"]).name == "csfnet-t-both.yaml"


def test_single_frame_weights_initialise_the_temporal_model_but_its_stems():
    single, temporal = build_model("csfnet-n", nc=1), build_model("csfnet-t-n", nc=1)
    loaded, total = transfer_weights(temporal, single)
    # every tensor but the shallow stem's convolution (3 + k inputs now) and the new colour-only fusion stem
    assert loaded == total - 1 - len(temporal.model[FUSION_STEM].state_dict())
    torch.testing.assert_close(temporal.state_dict()["model.5.m.0.cv1.conv.weight"],
                               single.state_dict()["model.4.m.0.cv1.conv.weight"])  # fmt: skip


def test_colour_hsv_jitters_colour_only():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 5), dtype=np.uint8)
    untouched = RandomHSV(0.5, 0.5, 0.5)({"img": image.copy()})["img"]
    assert np.array_equal(untouched, image)  # why it is replaced: ultralytics skips non-3-channel images
    np.random.seed(0)
    jittered = ColourHSV(0.5, 0.5, 0.5)({"img": image.copy()})["img"]
    assert not np.array_equal(jittered[..., :3], image[..., :3])
    assert np.array_equal(jittered[..., 3:], image[..., 3:])
    np.random.seed(0)
    colour = RandomHSV(0.5, 0.5, 0.5)({"img": np.ascontiguousarray(image[..., :3])})["img"]
    assert np.array_equal(jittered[..., :3], colour)  # exactly ultralytics' jitter on the colour


def test_augmentations_move_all_channels_together_and_keep_channel_order(motion_data):
    hyp = get_cfg(overrides={"mosaic": 1.0, "degrees": 10.0, "translate": 0.2, "scale": 0.5, "shear": 2.0,
                             "fliplr": 0.5, "flipud": 0.5, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0})  # fmt: skip
    data = yaml.safe_load(motion_data.read_text())
    dataset = StackedDataset(
        img_path=str(motion_data.parent / "images/train"), imgsz=64, augment=True, hyp=hyp, batch_size=4, data=data
    )
    assert any(isinstance(t, ColourHSV) for t in dataset.transforms.transforms)
    padded_pixels = 0
    for i in range(6):
        img = dataset[i]["img"]  # CHW tensor after ultralytics' Format
        assert img.shape == (5, 64, 64)
        assert img[0].float().std() > 0  # content, not only padding
        # motion d1 = B and d3 = R of the same image: equal after mosaic, affine, flips, letterbox, and Format
        # kept the order (it reverses BGR to RGB for 3-channel images only, as the predictor does); where
        # ultralytics padded (grey 114 in every channel) the motion is 0 instead
        padded_pixels += _assert_motion_follows_colour(img)
    assert padded_pixels > 0  # mosaic and affine borders did pad
    val = StackedDataset(img_path=str(motion_data.parent / "images/val"), imgsz=64, augment=False, hyp=hyp, data=data)
    _assert_motion_follows_colour(val[0]["img"])


def _assert_motion_follows_colour(img: torch.Tensor) -> int:
    """Every pixel of a ``temporal_dataset`` sample: motion = (B, R), or padding (colour 114, motion 0); returns the
    number of padded pixels."""
    padded = (img[:3] == 114).all(0) & (img[3:] == 0).all(0)
    assert torch.equal(img[3][~padded], img[0][~padded]) and torch.equal(img[4][~padded], img[2][~padded])
    return int(padded.sum())


def test_plots_show_a_stacked_batch_in_true_colour():
    """ultralytics' plot_images keeps the first 3 channels as they are: a stacked batch (BGR + motion) goes in as
    RGB."""
    stacked = torch.arange(10, 60, 10, dtype=torch.uint8).view(1, 5, 1, 1).expand(2, 5, 4, 4)
    batch = {"img": stacked, "im_file": ["a.jpg", "b.jpg"]}
    shown = plotted(batch)
    assert shown["img"][:, :, 0, 0].tolist() == [[30, 20, 10]] * 2 and shown["im_file"] == ["a.jpg", "b.jpg"]
    colour = {"img": stacked[:, :3]}
    assert plotted(colour) is colour  # 3-channel batches are flipped to RGB by Format already


def test_disk_cache_holds_the_stacked_image(tiny_data, tmp_path):
    data_yaml = temporal_dataset(tiny_data, tmp_path / "dataset")
    folder = data_yaml.parent / "images/val"
    dataset = StackedDataset(img_path=str(folder), imgsz=64, augment=False, hyp=get_cfg(), cache="disk",
                             data=yaml.safe_load(data_yaml.read_text()))  # fmt: skip
    image = sorted(folder.glob("*.jpg"))[0]
    cached = np.load(image.with_suffix(".npy"))
    assert cached.shape[2] == 5 and np.array_equal(cached, load_stacked(image, SPEC))
    assert dataset[0]["img"].shape[0] == 5


@pytest.mark.slow
def test_temporal_model_trains_evaluates_and_carries_its_motion(motion_data, tiny_data, tmp_path):
    from csfnet.evaluate import evaluate
    from csfnet.train import train

    start = time.perf_counter()
    result = train(motion_data, model="csfnet-t-n", out=tmp_path / "run", overrides=TINY_TRAIN, device="cpu",
                   settings=_temporal_settings())  # fmt: skip
    seconds = time.perf_counter() - start
    assert model_motion(result.best) == SPEC == model_motion(result.last)
    ckpt = torch.load(result.best, map_location="cpu", weights_only=False)
    assert ckpt["model"].yaml["channels"] == 5 and ckpt["model"].model[FUSION_STEM].conv.in_channels == 3
    assert "metrics/mAP50(B)" in result.metrics  # per-epoch validation ran on the stacked val images
    out = tmp_path / "eval"
    cli = [sys.executable, "-m", "csfnet.cli", "eval", "--weights", str(result.best), "--data", str(motion_data),
           "--out", str(out), "--no-mlflow", "--device", "cpu", "--set", "args.imgsz=64"]  # fmt: skip
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == len(list((motion_data.parent / "images/val").glob("*.jpg")))
    with pytest.raises(DataError, match=r"temporal model .* no motion channels"):
        evaluate(result.best, tiny_data, tmp_path / "eval-single", imgsz=64, device="cpu")
    assert not (tmp_path / "eval-single").exists()
    print(f"csfnet-t-n, 1 epoch at imgsz 64 on {metrics['images']} val images: trained in {seconds:.1f} s")


def test_mismatches_are_one_line_errors_before_anything_is_written(motion_data, tiny_data, tmp_path):
    from csfnet.train import train

    cases = [
        (tiny_data, "csfnet-t-n", (1, 3), "csfnet-t-n is a temporal model .* has no motion channels"),
        (motion_data, "csfnet-n", (1, 3), "csfnet-n is a single-frame model .* has motion channels"),
        (motion_data, "csfnet-t-n", (1, 2), "motion offsets \\[1, 3\\].* settings ask for motion offsets \\[1, 2\\]"),
    ]
    for i, (data, model, offsets, message) in enumerate(cases):
        with pytest.raises(DataError, match=message):
            train(
                data, model=model, out=tmp_path / f"run{i}", overrides=TINY_TRAIN, settings=_temporal_settings(offsets)
            )
        assert not (tmp_path / f"run{i}").exists()
    cli = [sys.executable, "-m", "csfnet.cli", "train", "--data", str(tiny_data), "--model", "csfnet-t-n",
           "--out", str(tmp_path / "cli"), "--no-mlflow"]  # fmt: skip
    proc = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "temporal model" in proc.stderr and not (tmp_path / "cli").exists()


def _tiny_temporal_settings(**values):
    args = {f"args.{k}": v for k, v in TINY_TRAIN.items()}
    return load_settings().override({"temporal.offsets": [1, 3], "train.device": "cpu", **args, **values}, "test")


@pytest.mark.slow
def test_partition_search_runs_on_the_temporal_model(motion_data, tmp_path):
    import optuna

    from csfnet.tune import tune

    settings = _tiny_temporal_settings(**{"tune.trials": 1, "tune.epochs": 1, "tune.imgsz": 64})
    result = tune(motion_data, tmp_path / "best.json", tmp_path / "runs", model="csfnet-t-n", device="cpu",
                  settings=settings, revalidate=False)  # fmt: skip
    study = optuna.load_study(study_name=result.study_name, storage=result.storage)
    (trial,) = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    config = load_config("csfnet-t-n", nc=1, partition=trial.user_attrs["partition"])
    assert trial.user_attrs["gflops"] == model_summary(config, nc=1, ch=5)["gflops"]  # at the data's channels


@pytest.mark.slow
def test_comparison_cell_trains_and_scores_a_temporal_config(motion_data, tmp_path):
    from csfnet.compare.cell import run_cell

    settings = _tiny_temporal_settings(**{"compare.preset": "quick", "compare.latency_images": 2})
    cell = run_cell("csfnet-t-n-both", 0, motion_data, tmp_path / "cell", settings=settings)
    assert cell["params"] == model_summary("csfnet-t-n-both", imgsz=64, ch=5)["params"]
    assert cell["latency_ms_cpu"] > 0 and cell["images"] == len(list((motion_data.parent / "images/val").iterdir()))


@pytest.mark.slow
def test_a_single_frame_cell_meets_temporal_ones_on_the_colour_frames_of_the_same_split(motion_data, tmp_path):
    from csfnet.compare.cell import run_cell

    settings = _tiny_temporal_settings(**{"compare.preset": "quick", "compare.latency_images": 2})
    cell = run_cell("yolov8n", 0, motion_data, tmp_path / "cell", settings=settings)
    assert cell["params"] == model_summary("yolov8n", imgsz=64)["params"]  # built for 3 channels
    assert cell["images"] == len(list((motion_data.parent / "images/val").iterdir()))
    view = yaml.safe_load((tmp_path / "cell/colour/data.yaml").read_text())
    assert "motion" not in view and "channels" not in view and Path(view["path"]) == motion_data.parent.resolve()
    assert model_motion(torch.load(tmp_path / "cell/weights/best.pt", weights_only=False)["model"]) is None
