"""Model config names: which CSF-Net YAML or ultralytics YAML a name such as ``csfnet26-n`` or ``yolo26n-p2`` stands
for. Light (no torch): settings validation checks ``train.model`` with it in every process."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from csfnet.ultralytics_files import MODEL_DIR as ULTRALYTICS_CONFIG_DIR

CONFIG_DIR = Path(__file__).parent / "cfg" / "models"
CSFNET_CONFIGS = (
    "csfnet-n",  # the paper's model: YOLOv8 blocks
    "csfnet-s",
    "csfnet-m",
    "csfnet-no-cswitch",
    "csfnet-no-dfuse",
    "csfnet-no-cretonext",
    "csfnet26-n",  # the same idea on YOLO26's blocks and NMS-free head
    "csfnet26-n-p2",
    "csfnet-t-n",  # temporal: colour + motion channels in, motion to the shallow backbone only (issue 24)
    "csfnet-t-n-both",  # its ablation: motion to both backbones
)
# ultralytics detectors shown by default; any scale of yolov8/yolo11/yolo12/yolo26 (and -p2/-p6 where ultralytics
# ships it) is accepted too. -p2: the P2-head tiny-object variant; yolo26: NMS-free (end-to-end) head.
BASELINES = ("yolov8n", "yolov8n-p2", "yolov8s", "yolo11n", "yolo26n", "yolo26n-p2")
ALL_CONFIGS = CSFNET_CONFIGS + BASELINES
# csfnet[26][-t][-no-X][-scale][-p2|-both] -> file <base><variant>.yaml at that scale (csfnet-t-n-both: csfnet-t-both)
_NAME = re.compile(r"^(?P<base>csfnet(?:26)?(?:-t)?(?:-no-[a-z]+)?)(?:-(?P<scale>[nsm]))?(?P<variant>-p2|-both)?$")
_ULTRALYTICS_NAME = re.compile(r"^(?P<family>yolov8|yolo11|yolo12|yolo26)(?P<scale>[nsmlx])(?P<variant>-p[26])?$")


def csfnet_file(name: str) -> tuple[Path, str] | None:
    """The CSF-Net YAML and scale a config name stands for, or None if no such file ships."""
    match = _NAME.match(name)
    if not match:
        return None
    path = CONFIG_DIR / f"{match['base']}{match['variant'] or ''}.yaml"
    return (path, match["scale"] or "n") if path.is_file() else None


def ultralytics_yaml(name: str) -> Path | None:
    """ultralytics' own YAML behind a detector name (``yolo26n-p2`` -> ``cfg/models/26/yolo26-p2.yaml``), or None."""
    match = _ULTRALYTICS_NAME.match(name)
    if not match:
        return None
    family = match["family"]
    folder = "v8" if family == "yolov8" else family.removeprefix("yolo")
    path = ULTRALYTICS_CONFIG_DIR / folder / f"{family}{match['variant'] or ''}.yaml"
    return path if path.is_file() else None


def is_known_config(name: str) -> bool:
    """Whether ``name`` is a CSF-Net config name or an ultralytics detector name this installation ships."""
    return csfnet_file(name) is not None or ultralytics_yaml(name) is not None


def unknown_config(name: str) -> str:
    """The error message for an unknown config name, with the closest known name."""
    close = difflib.get_close_matches(name, ALL_CONFIGS, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (
        f"unknown model config {name!r} ({hint}known: {', '.join(ALL_CONFIGS)}, any yolov8/yolo11/yolo12/yolo26 "
        "scale n-x, or a YAML path)"
    )
