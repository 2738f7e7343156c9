"""Whether the study's best partition really beats the config's own: retrain both per seed, bootstrap the gain.

A study of short trials ranks partitions by one noisy run each, so its winner only replaces the incumbent (the
config's own, width-scaled partition) when retraining both once per seed at the trial budget and scoring them on
the same validation images gives a paired-bootstrap interval of the mAP50-95 gain that lies above zero.

Under ``torchrun`` every rank trains each run together (:func:`train_together`); rank 0 alone scores it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from csfnet import distributed
from csfnet.compare.predictions import image_matches
from csfnet.metrics import ImageMatches, average_precision, paired_bootstrap
from csfnet.model import resolve_config
from csfnet.settings import Revalidate, Settings

METRIC = "map50_95"
TRAIN = "train"  # what rank 0 tells the other ranks of a launch: train this run with me
Score = Callable[[list[int], int], ImageMatches]  # (partition, seed) -> matched detections on the validation images


@dataclass
class Decision:
    """Which partition training uses, and why (the ``decision`` block of ``best_partition.json``)."""

    outcome: str  # adopted | kept | inconclusive | pending
    reason: str
    challenger: list[int] | None
    incumbent: list[int]
    seeds: list[int] = field(default_factory=list)
    effect: float | None = None  # mean mAP50-95 gain of the challenger over the incumbent
    interval: list[float] | None = None  # paired bootstrap over validation images
    confidence: float | None = None
    per_seed: dict[str, list[float]] = field(default_factory=dict)  # {"challenger": [...], "incumbent": [...]}

    @property
    def partition(self) -> list[int]:
        """The partition training should use."""
        return list(self.challenger if self.outcome == "adopted" and self.challenger else self.incumbent)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def decide(
    challenger: Sequence[int],
    incumbent: Sequence[int],
    values: Sequence[float],
    score: Score | None,
    settings: Revalidate | None = None,
) -> Decision:
    """Decide between the study's best partition and the incumbent; retrain only when the study ranked them.

    Args:
        challenger: Partition of the study's best trial.
        incumbent: The config's own partition.
        values: Final mAP50-95 of every complete trial.
        score: Trains a partition with a seed and matches its detections on the validation images; None leaves
            a challenger that needs re-validation ``pending`` (the config's own partition stands meanwhile).
        settings: Seeds, confidence and resamples (default: the schema's).
    """
    settings = settings or Revalidate()
    challenger, incumbent = [int(c) for c in challenger], [int(c) for c in incumbent]
    if len(values) >= 2 and len(set(values)) == 1:
        reason = (
            f"could not separate partitions at this budget: all {len(values)} complete trials scored "
            f"mAP50-95 {values[0]:.4f}"
        )
        return Decision("inconclusive", reason, challenger, incumbent)
    if challenger == incumbent:
        return Decision("kept", "the config's own partition won the study", challenger, incumbent)
    if score is None:
        reason = "not re-validated yet (--no-revalidate): the config's own partition stands until `csfnet tune` decides"
        return Decision("pending", reason, challenger, incumbent)
    return revalidate(challenger, incumbent, score, settings.seeds, settings.confidence, settings.resamples)


def revalidate(
    challenger: Sequence[int],
    incumbent: Sequence[int],
    score: Score,
    seeds: Sequence[int],
    confidence: float = Revalidate().confidence,
    resamples: int = Revalidate().resamples,
) -> Decision:
    """Score both partitions once per seed; adopt the challenger iff the gain's interval lies above zero."""
    challenger, incumbent = [int(c) for c in challenger], [int(c) for c in incumbent]
    rows = [score(challenger, s) for s in seeds]
    reference = [score(incumbent, s) for s in seeds]
    gain = paired_bootstrap(rows, reference, metric=METRIC, resamples=resamples, confidence=confidence)
    adopted = gain.low > 0
    pct = f"{100 * confidence:g}%"
    measured = f"mAP50-95 {gain.mean:+.4f} ({pct} interval {gain.low:+.4f} to {gain.high:+.4f}, {len(seeds)} seeds)"
    reason = (
        f"re-validated better than the config's own partition: {measured}"
        if adopted
        else f"not better than the config's own partition beyond the noise: {measured}"
    )
    return Decision(
        outcome="adopted" if adopted else "kept",
        reason=reason,
        challenger=challenger,
        incumbent=incumbent,
        seeds=[int(s) for s in seeds],
        effect=float(gain.mean),
        interval=[float(gain.low), float(gain.high)],
        confidence=confidence,
        per_seed={
            "challenger": [average_precision(m)[METRIC] for m in rows],
            "incumbent": [average_precision(m)[METRIC] for m in reference],
        },
    )


def cache_key(challenger: Sequence[int], incumbent: Sequence[int], settings: Revalidate, budget: Mapping) -> str:
    """What a re-validation depends on: a stored decision with this key need not be retrained."""
    return json.dumps([list(challenger), list(incumbent), settings.model_dump(), dict(budget)], sort_keys=True)


def train_together(
    every: Settings,
    data: Path,
    device: str | None,
    run: Mapping[str, Any],
    callbacks: Mapping[str, Any] | None = None,
    epoch_decisions: bool = False,
) -> Any:
    """Train ``run`` (:func:`csfnet.train.train`'s ``model``, ``out`` and ``overrides``) on every rank of a launch.

    Called on rank 0 (or a single process), which first tells the other ranks ``{"run": run, "epoch_decisions":
    ...}`` under :data:`TRAIN`; their :func:`csfnet.distributed.follow` handler trains the same run. With
    ``epoch_decisions`` rank 0's ``on_fit_epoch_end`` callback broadcasts after each epoch whether every rank stops
    (tuning's pruning), so the other ranks must listen for it. ``out`` must be absolute: every rank takes rank 0's
    folder. Returns the :class:`csfnet.train.TrainResult`.
    """
    from csfnet.train import train

    distributed.tell(TRAIN, {"run": dict(run), "epoch_decisions": epoch_decisions})
    return train(data, device=device, callbacks=callbacks, settings=every, **run)


class TrainingScorer:
    """Trains a partition as the trials do (``csfnet.train.train``, one seed) and matches it on the validation split.

    Run folders go to ``work_dir/<partition>-seed<seed>``; their weights are deleted once scored. Under ``torchrun``
    it runs on rank 0, every rank trains (:func:`train_together`) and rank 0 alone scores.
    """

    def __init__(
        self,
        every: Settings,
        model: str,
        data: Path,
        nc: int,
        budget: Mapping[str, Any],
        device: str | None,
        work_dir: Path,
    ):
        self.every, self.model, self.data, self.nc = every, model, data, nc
        self.budget, self.device, self.work_dir = dict(budget), device, work_dir

    def __call__(self, partition: list[int], seed: int) -> ImageMatches:
        from csfnet.device import resolve_device

        run_dir = (self.work_dir / f"p{'-'.join(map(str, partition))}-seed{seed}").resolve()
        try:
            config = resolve_config(self.model, nc=self.nc, partition=partition)
            run = {"model": config, "out": str(run_dir), "overrides": {**self.budget, "seed": seed}}
            result = train_together(self.every, self.data, self.device, run)
            device = resolve_device(self.device, self.every)
            if distributed.current_launch().distributed:
                device = distributed.device_setting(device)  # rank 0 scores on its own device
            e = self.every.eval
            return image_matches(result.best, self.data, int(self.budget["imgsz"]), e.conf, e.iou, device, "val")
        finally:
            shutil.rmtree(run_dir / "weights", ignore_errors=True)  # like trials: results.csv stays, weights go
