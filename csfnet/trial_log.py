"""Optuna trials as nested runs of the study's stage run, written by an Optuna callback once each trial ends."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from csfnet.runlog import RunStatus, StageLogger

EPOCH_VALUES = "epoch_map50_95"  # per-epoch mAP50-95 of a trial Optuna keeps no intermediate values for (Pareto)
STATUS: dict[TrialState, RunStatus] = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}


class TrialLogger:
    """``study.optimize(..., callbacks=[TrialLogger(run, budget)])``: one nested run per finished trial with its
    parameters, per-epoch mAP50-95, duration and outcome (FINISHED when complete, KILLED when pruned, FAILED on
    error). Trials that only found the study full (``surplus``) are not logged.

    Args:
        run: The study's stage run.
        budget: Training overrides of every trial; its ``epochs``, ``imgsz`` and ``fraction`` are logged.
    """

    def __init__(self, run: StageLogger, budget: Mapping[str, Any]):
        self.run = run
        self.budget = {k: v for k, v in budget.items() if k in ("epochs", "imgsz", "fraction")}

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        attrs = trial.user_attrs
        if attrs.get("surplus"):
            return
        params = {"trial": trial.number, "partition": json.dumps(attrs.get("partition")), **trial.params}
        params.update({"gflops": attrs.get("gflops"), **self.budget})
        tags = {"csfnet.stage": "tune-trial", "csfnet.study": study.study_name, "optuna.state": trial.state.name}
        status = STATUS.get(trial.state, "FAILED")
        with self.run.nested(f"trial-{trial.number}", params, tags, status) as child:
            epochs = trial.intermediate_values or dict(enumerate(attrs.get(EPOCH_VALUES, []), start=1))
            for step, value in sorted(epochs.items()):
                child.log_metrics({"map50_95": value}, step=step)
            if trial.duration is not None:
                child.log_metrics({"duration_s": trial.duration.total_seconds()})
            if trial.state == TrialState.COMPLETE and trial.values:
                child.log_metrics({"final_map50_95": trial.values[0]})
