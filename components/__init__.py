"""Kubeflow Pipelines v2 components: one per pipeline step, each a thin caller of the ``csfnet`` command line.

Every component runs ``python -m csfnet <command>`` (:func:`csfnet.kubeflow.step.run_step`), the same code path as
the DVC stages, inside the project image, and maps its outputs to typed artifacts. Nothing here holds pipeline logic:
the planning steps that feed a ``dsl.ParallelFor`` (tuning workers, comparison cells, bench data sizes) only read
params.yaml through :mod:`csfnet.settings`.
"""

from components.compare import bench_sizes, compare_cell, compare_report, comparison_cells
from components.data import extract_frames, raw_data
from components.deploy import deploy
from components.evaluate import evaluate, robustness
from components.export import export_onnx, register_model
from components.train import train
from components.tune import tune, tune_worker, tune_worker_indices

__all__ = [
    "bench_sizes",
    "compare_cell",
    "compare_report",
    "comparison_cells",
    "deploy",
    "evaluate",
    "export_onnx",
    "extract_frames",
    "raw_data",
    "register_model",
    "robustness",
    "train",
    "tune",
    "tune_worker",
    "tune_worker_indices",
]
