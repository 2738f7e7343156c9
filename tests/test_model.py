"""Every configuration builds, runs, has the paper's size, and is usable by ultralytics' tooling."""

import json
import subprocess
import sys

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from csfnet.config_names import ALL_CONFIGS
from csfnet.model import build_model, load_config, model_summary
from csfnet.nn import CReToNeXt, CSwitch, DFuse
from csfnet.trainer import transfer_weights

PAPER_PARAMS, PAPER_GFLOPS = 6.87e6, 18.25


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_every_config_builds_and_runs_at_two_sizes(name):
    model = build_model(name, nc=2).eval()
    assert [int(s) for s in model.stride] == ([4, 8, 16, 32] if name.endswith("-p2") else [8, 16, 32])
    for size in (64, 96):
        with torch.no_grad():
            out = model(torch.zeros(1, model.yaml["channels"], size, size))  # temporal configs: colour + motion
        anchors = sum((size // int(s)) ** 2 for s in model.stride)  # 8, 16, 32 (and 4 with a P2 head)
        assert out[0].shape == (1, 4 + 2, anchors)


def test_csfnet_n_matches_the_paper_size_within_ten_percent():
    summary = model_summary("csfnet-n", imgsz=640, nc=1)
    assert abs(summary["params"] / PAPER_PARAMS - 1) <= 0.10, summary
    assert abs(summary["gflops"] / PAPER_GFLOPS - 1) <= 0.10, summary


def test_csfnet_contains_the_paper_modules_and_ablations_remove_them():
    def kinds(name):
        return {type(m) for m in build_model(name).modules()}

    assert {CSwitch, DFuse, CReToNeXt} <= kinds("csfnet-n")
    assert CSwitch not in kinds("csfnet-no-cswitch")
    assert DFuse not in kinds("csfnet-no-dfuse")
    assert CReToNeXt not in kinds("csfnet-no-cretonext")


def test_partition_override_changes_cswitch_widths():
    model = build_model("csfnet-n", partition=[32, 64, 96])
    assert {tuple(m.partition) for m in model.modules() if isinstance(m, CSwitch)} == {(32, 64, 96)}
    with pytest.raises(ValueError, match="partition entries"):
        load_config("csfnet-n", partition=[32, 64])
    with pytest.raises(ValueError, match="unknown model config"):
        build_model("csfnet-x9")


def test_model_info_json_lists_every_config():
    out = subprocess.run(
        [sys.executable, "-m", "csfnet.cli", "model", "info", "--json"], capture_output=True, text=True, check=True
    ).stdout
    rows = json.loads(out)
    assert [r["name"] for r in rows] == list(ALL_CONFIGS)
    assert all(r["params"] > 1e6 and r["gflops"] > 1 for r in rows)


def test_fuse_keeps_outputs():
    model = build_model("csfnet-n").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)[0]
        after = model.fuse()(x)[0]
    torch.testing.assert_close(before, after, atol=1e-3, rtol=1e-3)


def test_pretrained_transfer_loads_every_shape_matching_tensor():
    yolo = DetectionModel("yolov8n.yaml", nc=1, verbose=False)
    csf = build_model("csfnet-n", nc=1)
    loaded, total = transfer_weights(csf, yolo)
    shallow = [k for k in yolo.state_dict() if int(k.split(".")[1]) < 10]
    assert loaded >= len(shallow)  # the whole shallow backbone, plus matching head layers
    assert loaded < total
    torch.testing.assert_close(
        csf.state_dict()["model.4.m.0.cv1.conv.weight"], yolo.state_dict()["model.4.m.0.cv1.conv.weight"]
    )


@pytest.mark.parametrize("name", ["csfnet26-n", "csfnet26-n-p2", "yolo26n", "yolo26n-p2"])
def test_current_generation_keeps_ultralytics_end_to_end_head_and_loss(name):
    from ultralytics.cfg import get_cfg
    from ultralytics.utils.loss import E2ELoss

    model = build_model(name, nc=1).eval()
    model.args = get_cfg()  # what the trainer attaches before building the loss
    assert isinstance(model.init_criterion(), E2ELoss)  # YOLO26's one-to-one + one-to-many loss, not swapped
    model.end2end = True  # NMS-free inference: at most 300 boxes as (x1, y1, x2, y2, score, class)
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 64))[0]
    anchors = sum((64 // int(s)) ** 2 for s in model.stride)
    assert out.shape == (1, min(300, anchors), 6)


def test_csfnet26_is_yolo26_shallow_backbone_with_a_tunable_partition():
    shallow = DetectionModel("yolo26n.yaml", nc=1, verbose=False)
    csf = build_model("csfnet26-n", nc=1)
    yolo_state, csf_state = shallow.state_dict(), csf.state_dict()
    backbone = [k for k in yolo_state if int(k.split(".")[1]) <= 10]  # YOLO26's backbone, layers 0-10
    assert all(csf_state[k].shape == yolo_state[k].shape for k in backbone)
    assert {CSwitch, DFuse, CReToNeXt} <= {type(m) for m in csf.modules()}
    tuned = build_model("csfnet26-n", partition=[48, 96, 192])
    assert {tuple(m.partition) for m in tuned.modules() if isinstance(m, CSwitch)} == {(48, 96, 192)}


def test_any_current_ultralytics_scale_is_accepted_and_unknown_names_get_the_closest():
    assert [int(s) for s in build_model("yolo11s", nc=1).stride] == [8, 16, 32]
    assert model_summary("yolo12n", imgsz=64)["params"] > 1e6
    with pytest.raises(ValueError, match="did you mean 'yolo26n'"):
        build_model("yolo26q")
    from csfnet.errors import SettingsError
    from csfnet.settings import load_settings

    with pytest.raises(SettingsError, match="did you mean 'yolo26n-p2'"):
        load_settings().override({"train.model": "yolo26n-p3"})
