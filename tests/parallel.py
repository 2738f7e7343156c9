"""Running the suite on several pytest-xdist workers (`make test`: ``-n 2``): artefacts the workers share, and the
order in which the work is handed out.

- ``shared``: a session artefact (the tiny dataset, the tiny model) is built once per run, not once per worker: the
  first worker builds it under a file lock in the run's base folder, the others wait for it and reuse it.
- ``heaviest_first``: with ``--dist loadfile`` a work unit is one test module (its module-scoped fixtures, such as
  test_pipeline's whole `dvc repro`, are set up once), and the units go out in collection order, so the long modules
  (``WEIGHTS``, seconds measured on 2 busy cores) are moved to the front and the short ones fill the gaps at the
  end. Without xdist the order is left as collected. (``--dist loadgroup`` would allow finer units, but
  pytest-xdist 3.8 cannot group under pytest 9: it renames ``item._nodeid``, which pytest 9 no longer reads;
  pytest-xdist issue 1386.)
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

# Seconds (setup + call) of the longest tests on 2 busy cores (``--durations``); a node id prefix matches a test and
# its parameters. Unlisted tests weigh DEFAULT_WEIGHT. Only the order of work depends on these numbers.
WEIGHTS = {
    "tests/test_kubeflow.py::test_local_run_ends_with_a_registered_model": 516,
    "tests/test_pipeline.py::test_dvc_repro_runs_the_whole_pipeline": 321,
    "tests/test_pipeline.py::test_killed_repro_resumes_to_the_uninterrupted_result": 209,
    "tests/test_ingest.py::test_dvc_repro_with_an_s3_source": 189,
    "tests/test_export.py::test_racing_promotions_keep_the_better_champion": 166,
    "tests/test_ingest.py::test_dvc_repro_with_a_local_folder_source": 162,
    "tests/test_current_detectors.py::test_pytorch_onnx_and_openvino_agree_on_real_detections": 100,
    "tests/test_current_detectors.py::test_every_stage_runs": 95,
    "tests/test_kubeflow.py::test_local_comparison_fans_out_and_reports": 92,
    "tests/test_mlflow_auth.py::test_only_the_pipeline_moves_the_champion": 70,
    "tests/test_export.py::test_served_champion_answers_http": 69,
    "tests/test_distributed.py::test_a_node_killed_mid_epoch_resumes_from_the_shared_checkpoint": 61,
    "tests/test_detect_pipeline.py::test_local_run_detects_every_video_and_resumes": 60,
    "tests/test_detect.py::test_sliced_detection_finds_micro_targets_full_frames_miss": 57,
    "tests/test_openvino.py::test_export_is_verified_and_int8_is_quantised": 52,
    "tests/test_tune.py::test_killed_study_resumes": 49,
    "tests/test_tune.py::test_two_workers_share_one_postgres_study": 49,
    "tests/test_mlflow_ui.py::test_stage_runs_nest_under_one_parent_in_postgres": 42,
    "tests/test_mlflow_ui.py::test_mlflow_ui_shows_both_runs_and_their_map": 40,
    "tests/test_distributed.py::test_two_nodes_train_like_one_process_and_only_rank_0_writes": 37,
    "tests/test_tune.py::test_a_complete_study_revalidates_its_winner_by_training": 36,
    "tests/test_tune.py::test_pareto_search_over_partition_depth_and_learning_rate": 35,
    "tests/test_gpu_check.py::test_cpu_mode_measures_every_section_and_says_what_it_skipped": 34,
    "tests/test_tune.py::test_study_prunes_logs_and_writes_the_best_partition": 31,
    "tests/test_kubeflow.py::test_one_settings_mapping_reaches_every_step": 29,
    "tests/test_tune.py::test_failed_trial_is_recorded_and_the_study_goes_on": 28,
    "tests/test_kubeflow.py::test_ir_has_every_step_and_exposes_parameters": 22,
    "tests/test_train.py::test_killed_training_resumes_from_last_pt": 22,
    "tests/test_compare.py::test_compare_writes_table_with_intervals_nested_runs_and_is_deterministic": 19,
    "tests/test_export.py::test_champion_changes_only_for_a_better_model": 17,
    "tests/test_train.py::test_training_logs_one_mlflow_run_with_epoch_metrics": 16,
    "tests/test_export.py::test_export_is_verified_and_carries_metadata": 14,
    "tests/test_dvc_remote.py::test_dvc_push_to_s3_and_pull_restores_identical_bytes": 14,
    "tests/test_model.py::test_model_info_json_lists_every_config": 14,
    "tests/test_train.py::test_pretrained_checkpoint_initialises_and_reports": 12,
    "tests/test_cli_errors.py::test_credentials_stay_out_of_logs_params_and_tags": 11,
    "tests/test_wheel.py::test_wheel_compiles_the_pipeline_outside_the_checkout": 10,
}
DEFAULT_WEIGHT = 1.0


def worker() -> str | None:
    """This process's xdist worker id (``gw0`` ...), or None when the suite runs in one process."""
    return os.environ.get("PYTEST_XDIST_WORKER")


def shared(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """``build(folder)``'s result, built once for all workers of this run in a folder of their common base."""
    if worker() is None:
        return build(factory.mktemp(name))
    root = factory.getbasetemp().parent / f"shared-{name}"
    with open(root.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes: a crashed builder frees it too
        done = root / ".built"
        if not done.is_file():
            shutil.rmtree(root, ignore_errors=True)  # what a crashed builder left
            root.mkdir()
            result = build(root)
            done.write_text(str(result.relative_to(root)))
        return root / done.read_text()


def _weight(nodeid: str) -> float:
    return max((w for prefix, w in WEIGHTS.items() if nodeid.startswith(prefix)), default=DEFAULT_WEIGHT)


def heaviest_first(items: list[pytest.Item]) -> None:
    """Reorder ``items`` in place: modules by their summed weight, heaviest first; a module's tests stay in order."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(item.nodeid.split("::")[0], []).append(item)
    order = sorted(units.values(), key=lambda unit: -sum(_weight(i.nodeid) for i in unit))  # stable: ties as collected
    items[:] = [item for unit in order for item in unit]
