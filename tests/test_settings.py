"""The settings schema: params.yaml and the schema agree, errors name file, key and value, overrides re-validate;
the service probes answer quickly and mask credentials."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from csfnet.errors import ServiceError, SettingsError
from csfnet.services import mask, probe_database, probe_s3, probe_tracking
from csfnet.settings import Settings, load_settings
from csfnet.ultralytics_files import default_args, key_sets

from .conftest import REPO, free_port


def test_params_yaml_holds_exactly_the_schema_defaults():
    """Every setting has one home: the file and the schema may not drift apart."""
    from_file = load_settings(REPO / "params.yaml")
    assert from_file == Settings()
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(raw) == set(Settings.model_fields)  # every section is written out for users to see


def test_no_defaults_outside_params_yaml_and_the_schema():
    """Library tables and Kubeflow steps restate no setting: they take the schema's values or the run's mapping."""
    import inspect

    import components
    from csfnet.data.extract import Tiling
    from csfnet.detect.run import DEFAULTS
    from csfnet.kubeflow.client import build

    x, schema = Settings().extract, Settings()
    assert Tiling() == Tiling(x.tile, x.overlap, x.min_visible, x.negatives, tuple(x.tile_splits), x.seed)
    assert schema.detect == DEFAULTS
    # every Kubeflow step takes settings only as its share of the run's one mapping (passed on as --set)
    structural = {"settings", "source_uri", "fingerprint", "worker", "config", "seed", "model_uri", "apply", "bench"}
    structural |= {"videos", "model", "out", "workers", "shards", "shard"}  # fan-outs: shards and their inputs
    structural |= {"nodes", "gpus_per_node", "image", "secret"}  # the cluster a TrainJob runs on, fixed at compile
    for name in components.__all__:
        parameters = inspect.signature(getattr(components, name).python_func).parameters.values()
        plain = {p.name for p in parameters if p.annotation in (str, int, float, bool, list, dict)}
        assert plain <= structural, (name, plain - structural)
        assert all(p.default == {} for p in parameters if p.name == "settings"), name
    for pipeline in ("csfnet", "compare"):
        inputs = build(pipeline, secrets=False).component_spec.inputs
        assert set(inputs) == {"settings", "source_uri"}, pipeline


def test_validating_params_yaml_reads_ultralytics_declarations_without_importing_torch():
    """Every csfnet process validates params.yaml: doing it must not cost the torch import (about 2 CPU-s), and the
    argument names and types read from ultralytics' files must be the ones ultralytics itself declares."""
    code = (
        "import sys; from csfnet.settings import load_settings; s = load_settings('params.yaml');"
        "s.override({'detect.track_args': {'track_buffer': 60}, 'args.epochs': 3});"
        "print(sorted(m for m in ('torch', 'ultralytics', 'mlflow') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr

    import ultralytics.cfg
    from ultralytics.utils import DEFAULT_CFG_DICT

    assert key_sets() == {name: getattr(ultralytics.cfg, name) for name in key_sets()}
    assert default_args() == DEFAULT_CFG_DICT
    with pytest.raises(SettingsError, match=r"presets\.quick\.epoch: not an ultralytics training argument"):
        Settings().override({"presets.quick.epoch": 3})
    with pytest.raises(SettingsError, match="'trak_buffer' is not a tracker setting"):
        Settings().override({"detect.track_args": {"trak_buffer": 3}})


def test_missing_keys_take_the_schema_defaults(tmp_path):
    (tmp_path / "params.yaml").write_text("train: {model: yolov8n}\n")
    settings = load_settings(tmp_path / "params.yaml")
    assert settings.train.model == "yolov8n" and settings.train.preset == "quick" and settings.eval.iou == 0.6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("eval: {iou: 1.5}", "params.yaml: eval.iou: 1.5: Input should be less than or equal to 1"),
        ("eval: {size_bands: [16, 8]}", "eval.size_bands: size band edges must increase, got [16.0, 8.0]"),
        ("register: {margni: 0.1}", "unknown key 'register.margni' (did you mean 'register.margin'?)"),
        ("tune: {partition: {min: [8], max: [4], step: 16}}", "tune.partition: need step <= min <= max"),
        ("train: {epochs: 3}", "ultralytics training arguments such as epochs belong in presets.<name>"),
        ("presets: {quick: {fliplr: 2}}", "presets.quick.fliplr: 2 is not between 0 and 1"),
        ("presets: {quick: {data: x.yaml}}", "presets.quick.data is set by csfnet itself"),
        ("- just a list", "params.yaml: expected a mapping of sections"),
    ],
)
def test_errors_name_the_file_the_key_and_the_value(text, message, tmp_path):
    (tmp_path / "params.yaml").write_text(text + "\n")
    with pytest.raises(SettingsError) as error:
        load_settings(tmp_path / "params.yaml")
    assert message in str(error.value)


def test_overrides_revalidate_and_reach_the_active_preset():
    base = Settings()
    paper = base.override({"args.epochs": 3, "train.preset": "paper"})
    assert paper.train_args()["epochs"] == 3 and base.presets["paper"]["epochs"] == 80  # a copy, args after preset
    assert paper.imgsz == 640
    with pytest.raises(SettingsError, match=r"command line: train\.preset: 'papr' is not a preset \(did you mean"):
        base.override({"train.preset": "papr"})
    with pytest.raises(SettingsError, match=r"command line: unknown key 'train\.modle'"):
        base.override({"train.modle": "yolov8n"})


def test_command_line_values_reset_and_coerce_like_params_yaml():
    """`--set tune.head_depth=null` resets a key (None is "not given" only for library keywords); a number given
    for a text setting (`--set serving.cpu=2`, a struct's `detect.device: 0`) is that text."""
    searched = Settings().override({"tune.head_depth": [1, 4]})
    assert searched.override({"tune.head_depth": None}).tune.head_depth == (1, 4)
    assert searched.override({"tune.head_depth": None}, keep_none=True).tune.head_depth is None
    coerced = Settings().override({"serving.cpu": 2, "detect.device": 0})
    assert (coerced.serving.cpu, coerced.detect.device) == ("2", "0")


def test_compare_settings_are_checked_where_they_are_used(tmp_path):
    """A params file with only the presets it trains with stays valid; a comparison names its own missing preset."""
    from csfnet.compare.cell import cell_settings

    (tmp_path / "params.yaml").write_text("presets: {quick: {epochs: 2}}\n")
    settings = load_settings(tmp_path / "params.yaml")
    with pytest.raises(SettingsError, match=r"compare\.preset: 'bench' is not a preset"):
        cell_settings("yolov8n", 0, settings=settings)
    cell = cell_settings("yolov8n", 3, preset="quick", settings=settings)
    assert (cell.train.model, cell.train.seed, cell.train_args()) == ("yolov8n", 3, {"epochs": 2})
    with pytest.raises(SettingsError, match=r"compare\.configs: 'yolov9' is not a model configuration"):
        settings.override({"compare.configs": ["csfnet-n", "yolov9"]})


def test_loaded_once_and_reloaded_when_the_file_changes(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("synth: {seed: 1}\n")
    assert load_settings(path) is load_settings(path)
    path.write_text("synth: {seed: 22}\n")
    assert load_settings(path).synth.seed == 22


def test_mask_hides_passwords_and_tokens():
    assert (
        mask("postgresql+psycopg2://optuna:hunter2@db:5432/optuna") == "postgresql+psycopg2://optuna:***@db:5432/optuna"
    )
    assert mask("https://u:p@mlflow.example/?token=abc&x=1") == "https://u:***@mlflow.example/?token=***&x=1"
    assert mask("sqlite:///mlruns.db") == "sqlite:///mlruns.db"


@pytest.mark.parametrize("kind", ["mlflow-http", "postgres", "s3"])
def test_probes_of_closed_ports_fail_within_the_timeout(kind, monkeypatch):
    port = free_port()
    started = time.monotonic()
    with pytest.raises(ServiceError) as error:
        if kind == "mlflow-http":
            probe_tracking(f"http://127.0.0.1:{port}", timeout=2)
        elif kind == "postgres":
            probe_database(f"postgresql+psycopg2://u:hunter2@127.0.0.1:{port}/db", timeout=2)
        else:
            monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
            probe_s3("s3://bucket/raw", timeout=2)
    assert time.monotonic() - started < 10
    assert str(port) in str(error.value) and "hunter2" not in str(error.value)


def test_sqlite_store_in_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(ServiceError, match="does not exist"):
        probe_tracking(f"sqlite:///{tmp_path / 'nowhere' / 'mlruns.db'}", timeout=1)
    probe_tracking(f"sqlite:///{Path(tmp_path) / 'mlruns.db'}", timeout=1)  # a writable folder is fine
