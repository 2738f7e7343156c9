"""CSF-Net as an ultralytics ``DetectionModel``: named configs, building, and size accounting."""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import yaml
from ultralytics.nn.modules import Detect
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils.torch_utils import get_flops, initialize_weights

from csfnet.config_names import csfnet_file, ultralytics_yaml, unknown_config
from csfnet.nn.builder import build_layers

DEFAULT_MOTION_CHANNELS = 2  # k of a temporal config whose YAML does not say, when no dataset gives it


def is_csfnet(name: str | Path | dict) -> bool:
    """Whether ``name`` is a CSF-Net config name, or a YAML file or dict marked ``builder: csfnet``."""
    if isinstance(name, dict):
        return name.get("builder") == "csfnet"
    if csfnet_file(str(name)):
        return True
    return str(name).endswith((".yaml", ".yml")) and Path(name).is_file() and _read(name).get("builder") == "csfnet"


def is_temporal(config: dict[str, Any] | str | Path) -> bool:
    """Whether a config (resolved dict, CSF-Net name or YAML) takes colour + motion channels (``temporal: true``)."""
    if not isinstance(config, dict):
        if not is_csfnet(config):
            return False
        config = load_config(config)
    return bool(config.get("temporal", False))


def input_channels(config: dict[str, Any] | str | Path, motion_channels: int | None = None) -> int:
    """Input channels a config is built with: 3 + k for a temporal one (k = ``motion_channels``, else the config's
    ``motion_channels``), else 3."""
    if not is_temporal(config):
        return 3
    if motion_channels is None:
        cfg = config if isinstance(config, dict) else load_config(config)
        motion_channels = int(cfg.get("motion_channels", DEFAULT_MOTION_CHANNELS))
    return 3 + int(motion_channels)


def _read(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def load_config(name: str | Path, nc: int | None = None, partition: Sequence[int] | None = None) -> dict[str, Any]:
    """Resolve a config name (``csfnet-n``, ``csfnet-no-dfuse-s`` ...) or YAML path into a model dict.

    Args:
        name: Config name or path to a YAML file.
        nc: Number of classes, overriding the YAML's.
        partition: Absolute CSwitch channels per fusion stage (e.g. from tuning), overriding the width-scaled default.
    """
    known = csfnet_file(str(name))
    if known:
        path, scale = known
    elif Path(name).is_file():
        path, scale = Path(name), None
        if _read(path).get("builder") != "csfnet":
            raise ValueError(f"{name} is not a CSF-Net config (no 'builder: csfnet' key)")
    else:
        raise ValueError(unknown_config(str(name)))
    cfg = _read(path)
    if "backbone" not in cfg or "head" not in cfg:
        raise ValueError(f"{path}: a model config needs 'backbone' and 'head' sections")
    cfg["scale"] = scale or cfg.get("scale") or next(iter(cfg["scales"]))
    if cfg["scale"] not in cfg["scales"]:
        raise ValueError(f"{name}: scale {cfg['scale']!r} not in {sorted(cfg['scales'])}")
    cfg.setdefault("yaml_file", str(path))
    cfg.setdefault("name", str(name))
    if nc is not None:
        cfg["nc"] = int(nc)
    if partition is not None:
        if "partition" not in cfg:
            raise ValueError(f"{name} has no CSwitch, so it takes no partition")
        if len(partition) != len(cfg["partition"]):
            raise ValueError(f"{name} needs {len(cfg['partition'])} partition entries, got {list(partition)}")
        cfg["partition"], cfg["partition_absolute"] = [int(c) for c in partition], True
    return cfg


class CSFNetModel(DetectionModel):
    """A detection model built from a CSF-Net config; trains, validates, predicts and exports like ``DetectionModel``.

    Args:
        cfg: Config name, YAML path or an already loaded config dict.
        ch: Input channels (default: :func:`input_channels` of the config: 3, or 3 + k for a temporal one).
        nc: Number of classes (overrides the config).
        verbose: Print the model summary.
    """

    def __init__(
        self, cfg: str | Path | dict = "csfnet-n", ch: int | None = None, nc: int | None = None, verbose: bool = True
    ):
        torch.nn.Module.__init__(self)
        self.yaml = deepcopy(cfg) if isinstance(cfg, dict) else load_config(cfg)
        if nc is not None:
            self.yaml["nc"] = int(nc)
        ch = input_channels(self.yaml) if ch is None else int(ch)
        if is_temporal(self.yaml):
            if ch < 4:
                raise ValueError(
                    f"{self.yaml.get('name', 'this config')} takes colour + motion (>= 4 channels), got {ch}"
                )
            self.yaml["motion_channels"] = ch - 3  # the config rebuilds as built
        self.yaml["channels"] = ch
        self.model, self.save = build_layers(self.yaml, ch)
        self.names = {i: str(i) for i in range(self.yaml["nc"])}
        self.inplace = self.yaml.get("inplace", True)
        self._init_strides(ch)
        initialize_weights(self)
        if verbose:
            self.info()

    def _init_strides(self, ch: int, size: int = 256) -> None:
        """Derive the Detect strides from a dry forward pass, as ultralytics' ``DetectionModel`` does."""
        head = self.model[-1]
        assert isinstance(head, Detect), "the last layer of a detection config must be Detect"
        head.inplace = self.inplace
        self.model.eval()
        head.training = True  # return raw feature maps
        preds = self.forward(torch.zeros(1, ch, size, size))
        feats = preds.get("one2many", preds)["feats"]  # an end-to-end head returns both branches
        head.stride = torch.tensor([size / f.shape[-2] for f in feats])
        self.stride = head.stride
        self.model.train()
        head.bias_init()


def baseline_yaml(name: str | Path) -> str:
    """ultralytics config file of a detector name (``yolo26n-p2`` -> ``yolo26n-p2.yaml``, whose scale letter
    ultralytics reads; never a ``.pt`` download)."""
    return str(name) if str(name).endswith((".yaml", ".yml")) else f"{name}.yaml"


def resolve_config(name: str | Path, nc: int = 1, partition: Sequence[int] | None = None) -> dict[str, Any] | str:
    """A CSF-Net config dict, or the ultralytics YAML name of a baseline, ready to build with ``nc`` classes."""
    if is_csfnet(name):
        return load_config(name, nc=nc, partition=partition)
    if partition is not None:
        raise ValueError(f"{name} has no CSwitch, so it takes no partition")
    if ultralytics_yaml(str(name)) is None and not Path(name).is_file():
        raise ValueError(unknown_config(str(name)))
    return baseline_yaml(name)


def takes_partition(config: dict[str, Any] | str) -> bool:
    """Whether a resolved config accepts any CSwitch partition: it has CSwitch and fuses with DFuse (static
    ``CBFuse`` needs the partition to equal the fusion widths, and baselines have no CSwitch)."""
    return isinstance(config, dict) and "partition" in config and any(row[2] == "DFuse" for row in config["backbone"])


def build_model(
    name: str | Path | dict,
    nc: int = 1,
    partition: Sequence[int] | None = None,
    ch: int | None = None,
    verbose: bool = False,
) -> DetectionModel:
    """Build any supported config (CSF-Net variants or an ultralytics detector) with ``nc`` classes and ``ch`` input
    channels (default: :func:`input_channels`, 3 + k for a temporal config)."""
    cfg = name if isinstance(name, dict) else resolve_config(name, nc=nc, partition=partition)
    if is_csfnet(cfg):
        return CSFNetModel(cfg, ch=ch, nc=nc, verbose=verbose)
    if isinstance(cfg, str):
        cfg = {**yaml_model_load(cfg), "nc": nc}  # set nc up front: no "Overriding nc" message on stdout
    return DetectionModel(cfg, ch=3 if ch is None else ch, nc=nc, verbose=verbose)


def model_summary(name: str | dict[str, Any], imgsz: int = 640, nc: int = 1, ch: int | None = None) -> dict[str, Any]:
    """Layers, parameters and GFLOPs of a config (name or resolved dict), counted the way ultralytics counts them,
    with its input ``channels`` (default: :func:`input_channels`; a temporal config's own motion_channels)."""
    model = build_model(name, nc=nc, ch=ch)
    return {
        "name": name.get("name", "config") if isinstance(name, dict) else name,
        "channels": int(model.yaml["channels"]),
        "layers": len(list(model.modules())),
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": round(get_flops(model, imgsz), 2),
        "imgsz": imgsz,
        "nc": nc,
    }
