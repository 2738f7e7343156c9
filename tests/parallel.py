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

# Seconds (setup + call) of the longest tests: the top ones from `make test` on a fresh clone (2 idle cores, 2 workers,
# ``--durations``), less what the test-speed changes of issue 22 took out of them; the rest measured earlier on 2 busy
# cores. A node id prefix matches a test and its parameters. Unlisted tests weigh DEFAULT_WEIGHT. Only the order of
# work depends on these numbers.
WEIGHTS = {
    "tests/test_pipeline.py::test_dvc_repro_runs_the_whole_pipeline": 180,  # 116 + 95, less the exp run's 3 stages
    "tests/test_pipeline.py::test_killed_repro_resumes_to_the_uninterrupted_result": 176,
    "tests/test_kubeflow.py::test_local_run_ends_with_a_registered_model": 175,
    "tests/test_kubeflow.py::test_local_comparison_fans_out_and_reports": 62,
    "tests/test_kubeflow.py::test_extraction_fans_out_over_shards_and_merges_to_one_extraction": 54,
    "tests/test_kubeflow.py::test_one_settings_mapping_reaches_every_step": 29,
    "tests/test_kubeflow.py::test_ir_has_every_step_and_exposes_parameters": 22,
    "tests/test_current_detectors.py::test_every_stage_runs[csfnet26-n]": 77,
    "tests/test_current_detectors.py::test_every_stage_runs[yolo26n-p2]": 55,
    "tests/test_current_detectors.py::test_pytorch_onnx_and_openvino_agree_on_real_detections": 55,  # shared tiles
    "tests/test_detect.py::test_sliced_detection_finds_micro_targets_full_frames_miss": 55,  # shared tiles
    "tests/test_distributed.py::test_two_nodes_revalidate_the_winner_of_a_complete_study": 56,
    "tests/test_distributed.py::test_two_nodes_compare_cells_written_once_by_rank_0": 52,
    "tests/test_distributed.py::test_two_nodes_tune_one_study_led_by_rank_0": 49,
    "tests/test_distributed.py::test_a_node_killed_mid_epoch_resumes_from_the_shared_checkpoint": 45,
    "tests/test_distributed.py::test_two_nodes_train_like_one_process_and_only_rank_0_writes": 39,
    "tests/test_distributed.py::test_a_node_killed_mid_trial_fails_the_tuning_launch": 35,
    "tests/test_distributed.py::test_rank_0_killed_mid_cell_fails_the_comparison_launch": 17,
    "tests/test_export.py::test_racing_promotions_keep_the_better_champion": 57,
    "tests/test_export.py::test_served_champion_answers_http": 69,
    "tests/test_export.py::test_champion_changes_only_for_a_better_model": 17,
    "tests/test_export.py::test_export_is_verified_and_carries_metadata": 14,
    "tests/test_ingest.py::test_dvc_repro_with_an_s3_source": 49,
    "tests/test_ingest.py::test_dvc_repro_with_a_local_folder_source": 38,
    "tests/test_mlflow_auth.py::test_only_the_pipeline_moves_the_champion": 45,
    "tests/test_detect_pipeline.py::test_local_run_detects_every_video_and_resumes": 43,
    "tests/test_temporal_inference.py::test_onnx_export_keeps_channels_motion_and_detections": 43,
    "tests/test_tune.py::test_killed_study_resumes": 41,
    "tests/test_openvino.py::test_export_is_verified_and_int8_is_quantised": 52,
    "tests/test_tune.py::test_two_workers_share_one_postgres_study": 49,
    "tests/test_mlflow_ui.py::test_stage_runs_nest_under_one_parent_in_postgres": 42,
    "tests/test_mlflow_ui.py::test_mlflow_ui_shows_both_runs_and_their_map": 40,
    "tests/test_tune.py::test_a_complete_study_revalidates_its_winner_by_training": 36,
    "tests/test_tune.py::test_pareto_search_over_partition_depth_and_learning_rate": 35,
    "tests/test_gpu_check.py::test_cpu_mode_measures_every_section_and_says_what_it_skipped": 34,
    "tests/test_tune.py::test_study_prunes_logs_and_writes_the_best_partition": 31,
    "tests/test_tune.py::test_failed_trial_is_recorded_and_the_study_goes_on": 28,
    "tests/test_train.py::test_killed_training_resumes_from_last_pt": 22,
    "tests/test_compare.py::test_compare_writes_table_with_intervals_nested_runs_and_is_deterministic": 19,
    "tests/test_train.py::test_training_logs_one_mlflow_run_with_epoch_metrics": 16,
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
