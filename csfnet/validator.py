"""ultralytics' detection validator reading a temporal dataset's images stacked with their motion channels."""

from __future__ import annotations

from typing import Any

from ultralytics.data.utils import get_split_fraction
from ultralytics.models.yolo.detect import DetectionValidator

from csfnet.stacked_data import build_dataset, plotted
from csfnet.threads import use_cpu_threads


class CSFNetValidator(DetectionValidator):
    """``DetectionValidator`` whose dataset is a :class:`csfnet.stacked_data.StackedDataset` when ``data.yaml``
    has ``motion`` (ultralytics' own otherwise), so standalone validation (``csfnet eval``) reads what training
    read. Per-epoch validation during training uses the trainer's loader, built the same way. Plots show the colour
    of stacked images in its true order (:func:`csfnet.stacked_data.plotted`); validation on the CPU uses every core
    (:mod:`csfnet.threads`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_callback("on_val_start", use_cpu_threads)  # after ultralytics' select_device has set cores - 1

    def build_dataset(self, img_path: str, mode: str = "val", batch: int | None = None):
        fraction = get_split_fraction(self.args.fraction, self.args.split or "val")
        return build_dataset(self.args, img_path, batch, self.data, mode=mode, stride=self.stride, fraction=fraction)

    def plot_val_samples(self, batch: dict[str, Any], ni: int) -> None:
        super().plot_val_samples(plotted(batch), ni)

    def plot_predictions(self, batch: dict[str, Any], preds: list[dict[str, Any]], ni: int, max_det: int | None = None):
        super().plot_predictions(plotted(batch), preds, ni, max_det)
