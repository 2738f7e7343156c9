"""Keep ultralytics offline: no weight, font or analytics downloads, no auto-installs, no duplicate trackers.

Imported by ``csfnet/__init__.py`` before anything imports ultralytics. Every variable is only a default, so users
can still point ``YOLO_CONFIG_DIR`` elsewhere or opt back in.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FONTS = ("Arial.ttf", "Arial.Unicode.ttf")  # the names ultralytics' plotting looks up before downloading
_DISABLED_INTEGRATIONS = ("mlflow", "wandb", "comet", "clearml", "dvc", "neptune", "raytune", "tensorboard", "hub")


def configure_environment() -> None:
    """Set offline defaults for ultralytics; idempotent."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "true")
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(Path.home() / ".config" / "csfnet")))
    config_dir.mkdir(parents=True, exist_ok=True)
    _install_fonts(config_dir)


def _install_fonts(config_dir: Path) -> None:
    """Give ultralytics local copies of the fonts it would otherwise download (matplotlib ships DejaVu Sans)."""
    missing = [config_dir / name for name in FONTS if not (config_dir / name).exists()]
    if not missing:
        return
    import matplotlib

    dejavu = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    for target in missing:
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(dejavu, tmp)
        tmp.replace(target)  # atomic: concurrent processes never see a half-copied font


def disable_ultralytics_integrations() -> None:
    """Switch off ultralytics' own loggers (csfnet logs to MLflow itself, exactly one run per stage)."""
    from ultralytics.utils import SETTINGS

    wanted = {key: False for key in _DISABLED_INTEGRATIONS if key in SETTINGS}
    wanted["sync"] = False
    if any(SETTINGS.get(k) != v for k, v in wanted.items()):
        SETTINGS.update(wanted)
