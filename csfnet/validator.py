"""ultralytics' detection validator reading a temporal dataset's images stacked with their motion channels."""

from __future__ import annotations

from ultralytics.data.utils import get_split_fraction
from ultralytics.models.yolo.detect import DetectionValidator

from csfnet.stacked_data import build_dataset


class CSFNetValidator(DetectionValidator):
    """``DetectionValidator`` whose dataset is a :class:`csfnet.stacked_data.StackedDataset` when ``data.yaml``
    has ``motion`` (ultralytics' own otherwise), so standalone validation (``csfnet eval``) reads what training
    read. Per-epoch validation during training uses the trainer's loader, built the same way."""

    def build_dataset(self, img_path: str, mode: str = "val", batch: int | None = None):
        fraction = get_split_fraction(self.args.fraction, self.args.split or "val")
        return build_dataset(self.args, img_path, batch, self.data, mode=mode, stride=self.stride, fraction=fraction)
