"""Kubeflow Pipelines v2 components: one per pipeline step, each a thin caller of the ``csfnet`` command line.

Every component runs ``python -m csfnet <command>`` (:func:`csfnet.kubeflow.step.run_step`), the same code path as
the DVC stages, inside the project image, and maps its outputs to typed artifacts. Nothing here holds pipeline logic:
the planning steps (the run's settings cut per step, tuning workers, comparison cells) only read params.yaml with
the run's settings mapping through :mod:`csfnet.settings`. Every step takes its share of that mapping as
``settings`` and passes it to its command as ``--set KEY=VALUE``.
"""

from components.compare import compare_cell, compare_report, comparison_cells
from components.data import extract_frames, extract_shard, merge_extraction, raw_data
from components.deploy import deploy
from components.detect import detect_shard, detect_shards, detect_summary
from components.evaluate import evaluate, robustness
from components.export import export_onnx, register_model
from components.settings import step_settings
from components.train import train, train_job
from components.tune import tune, tune_worker, tune_worker_specs

__all__ = [
    "compare_cell",
    "compare_report",
    "comparison_cells",
    "deploy",
    "detect_shard",
    "detect_shards",
    "detect_summary",
    "evaluate",
    "export_onnx",
    "extract_frames",
    "extract_shard",
    "merge_extraction",
    "raw_data",
    "register_model",
    "robustness",
    "step_settings",
    "train",
    "train_job",
    "tune",
    "tune_worker",
    "tune_worker_specs",
]
