"""INT8 calibration of a temporal model's OpenVINO export on stacked frames (BGR + motion channels).

ultralytics' exporter calibrates on a dataset it reads from image files, which have 3 channels; a temporal model
takes ``3 + k``. :class:`StackedCalibrationExporter` extends the exporter (public class, nothing patched) with a
calibration loader of the training frames stacked with their stored motion channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ultralytics.engine.exporter import Exporter

from csfnet.detect.temporal_input import read_frame
from csfnet.temporal import clear_padding


class StackedCalibrationExporter(Exporter):
    """ultralytics' exporter whose INT8 calibration frames are stacked temporal inputs (BGR + motion channels, as
    :func:`csfnet.temporal.load_stacked` reads them), letterboxed as in validation (motion 0 in the padding);
    everything else is ultralytics'."""

    def __init__(self, images: list[Path], spec: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.calibration_images, self.spec = images, spec

    def get_int8_calibration_dataloader(self, prefix: str = "") -> list[dict[str, Any]]:
        import torch
        from ultralytics.data.augment import LetterBox

        letterbox = LetterBox((max(self.imgsz), max(self.imgsz)), auto=False)
        batches = []
        for path in self.calibration_images:  # channel order as ultralytics' Format gives it (no flip for C != 3)
            image = clear_padding(letterbox(image=read_frame(path, self.spec)))
            batches.append({"img": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]})
        return batches
