"""Every user mistake and dead service: one line on stderr, exit code 2, no traceback, nothing left behind, no
attempt to reach the network (only loopback connections are allowed, and only to the services named)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from csfnet.cli import main

from .conftest import free_port
from .services import postgres

SECRET = "s3cret-Pa55"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every connection or name lookup that would leave this machine."""
    attempts: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def local(host: object) -> bool:
        return str(host) in ("localhost", "::1", "") or str(host).startswith("127.")

    def connect(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if self.family in (socket.AF_INET, socket.AF_INET6) and not local(host):
            attempts.append(f"connect {address}")
            raise OSError("network disabled in this test")
        return real_connect(self, address)

    def getaddrinfo(host: object, *args: object, **kwargs: object) -> object:
        if host is not None and not local(host):
            attempts.append(f"lookup {host}")
            raise socket.gaierror("network disabled in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


def _params(text: str) -> None:
    Path("params.yaml").write_text(text)


def _closed() -> str:
    return f"127.0.0.1:{free_port()}"


def _bad_data_yaml(tmp: Path) -> str:
    (tmp / "bad.yaml").write_text("names: [uav\npath: .\n")
    return "bad.yaml"


def _empty_val(tmp: Path) -> str:
    for split in ("train", "val"):
        (tmp / "empty" / "images" / split).mkdir(parents=True)
    (tmp / "empty" / "data.yaml").write_text(
        yaml.safe_dump({"path": str(tmp / "empty"), "train": "images/train", "val": "images/val", "names": ["uav"]})
    )
    return "empty/data.yaml"


def _garbage(tmp: Path) -> str:
    (tmp / "garbage.pt").write_bytes(b"this is not a checkpoint\n" * 10)
    return "garbage.pt"


def _passed_report(tmp: Path, data: str) -> str:
    (tmp / "model.onnx").write_bytes(b"\x08\x07")
    verification = {"map50_95": 0.2, "checks": {}}
    (tmp / "ok.json").write_text(
        json.dumps({"passed": True, "data": data, "weights": "w.pt", "verification": verification})
    )
    return "ok.json"


def _failed_report(tmp: Path) -> str:
    (tmp / "model.onnx").write_bytes(b"\x08\x07")  # an (empty) ONNX protobuf
    (tmp / "report.json").write_text(json.dumps({"passed": False, "data": "d.yaml", "weights": "w.pt"}))
    return "report.json"


# (id, params.yaml text or None, environment, argv with {data} {weights} placeholders, expected message part)
CASES = [
    ("epochs-not-a-number", "presets: {quick: {epochs: ten}}", {}, ["train", "--data", "{data}"],
     "params.yaml: presets.quick.epochs: 'ten' is not an integer"),
    ("misspelt-section", "trian: {model: yolov8n}", {}, ["train", "--data", "{data}"],
     "unknown key 'trian' (did you mean 'train'?)"),
    ("misspelt-ultralytics-argument", "presets: {quick: {epoch: 3}}", {}, ["train", "--data", "{data}"],
     "presets.quick.epoch: not an ultralytics training argument (did you mean 'epochs'?)"),
    ("params-not-yaml", "train: [model: x\n", {}, ["train", "--data", "{data}"], "params.yaml: line"),
    ("unknown-preset", None, {}, ["train", "--data", "{data}", "--preset", "fast"],
     "train.preset: 'fast' is not a preset"),
    ("unknown-model", None, {}, ["train", "--data", "{data}", "--model", "csfnet-x"],
     "'csfnet-x' is not a model configuration (did you mean 'csfnet-s'?"),
    ("missing-data-yaml", None, {}, ["train", "--data", "missing.yaml", "--out", "run"],
     "dataset file missing.yaml not found (run `csfnet data extract` first)"),
    ("data-yaml-not-yaml", None, {}, ["train", "--data", "{bad_yaml}", "--out", "run"], "bad.yaml: line"),
    ("empty-validation-split", None, {}, ["eval", "--weights", "{weights}", "--data", "{empty_val}"],
     "holds no images"),
    ("missing-pretrained", None, {},
     ["train", "--data", "{data}", "--set", "train.pretrained=yolov8n.pt", "--out", "run"],
     "pretrained checkpoint yolov8n.pt not found (a local file, never downloaded)"),
    ("missing-partition-file", None, {}, ["train", "--data", "{data}", "--partition", "best.json", "--out", "run"],
     "partition file best.json not found"),
    ("missing-weights", None, {}, ["eval", "--weights", "missing.pt", "--data", "{data}"],
     "model file missing.pt not found"),
    ("garbage-checkpoint", None, {}, ["robustness", "--weights", "{garbage}", "--data", "{data}"],
     "garbage.pt is not a PyTorch checkpoint"),
    ("negative-sigma", None, {},
     ["robustness", "--weights", "{weights}", "--data", "{data}", "--set", "robustness.sigmas=[-1.0]"],
     "robustness.sigmas.0: -1.0: Input should be greater than or equal to 0"),
    ("opset-out-of-range", None, {},
     ["export", "--weights", "{weights}", "--data", "{data}", "--set", "export.opset=5"],
     "export.opset: 5: Input should be greater than or equal to 11"),
    ("unverified-export", None, {}, ["register", "--onnx", "model.onnx", "--report", "{failed_report}"],
     "did not pass verification"),
    ("missing-raw-root", None, {}, ["data", "extract", "--source", "nowhere", "--out", "dataset"], "nowhere"),
    ("tracking-server-down", None, {"MLFLOW_TRACKING_URI": "http://{closed}"},
     ["eval", "--weights", "{weights}", "--data", "{data}"], "MLflow tracking server http://127.0.0.1:"),
    ("registry-server-down", None, {"MLFLOW_TRACKING_URI": "http://{closed}"},
     ["register", "--onnx", "model.onnx", "--report", "{passed_report}"], "MLflow tracking server http://127.0.0.1:"),
    ("optuna-storage-down", None, {},
     ["tune", "--data", "{data}", "--set", f"tune.storage=postgresql+psycopg2://csfnet:{SECRET}@{{closed}}/optuna"],
     "Optuna storage postgresql+psycopg2://csfnet:***@127.0.0.1:"),
    ("s3-endpoint-down", None, {"AWS_ENDPOINT_URL": "http://{closed}", "AWS_ACCESS_KEY_ID": "k",
                                "AWS_SECRET_ACCESS_KEY": SECRET},
     ["data", "fetch", "--source", "s3://raw-videos/flights", "--out", "raw"], "S3 s3://raw-videos/flights"),
]  # fmt: skip


@pytest.mark.parametrize(("params", "env", "argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_line_and_leaves_nothing(
    params, env, argv, expected, tiny_data, tiny_weights, tmp_path, monkeypatch, capsys, no_network
):
    if params is not None:
        _params(params)
    closed = _closed()
    values = {
        "data": str(tiny_data),
        "weights": str(tiny_weights),
        "bad_yaml": _bad_data_yaml(tmp_path),
        "empty_val": _empty_val(tmp_path),
        "garbage": _garbage(tmp_path),
        "failed_report": _failed_report(tmp_path),
        "passed_report": _passed_report(tmp_path, str(tiny_data)),
        "closed": closed,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(**values))
    before = sorted(tmp_path.rglob("*"))
    started = time.monotonic()
    code = main([arg.format(**values) for arg in argv])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err and err[-1].startswith("csfnet ") and expected in err[-1], err[-3:]
    assert not any("Traceback" in line for line in err)
    assert "\x1b[" not in err[-1] and SECRET not in "\n".join(err)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing left behind
    assert elapsed < 15, f"took {elapsed:.1f} s"
    assert no_network == []


@pytest.mark.slow  # starts PostgreSQL, tunes a trial
def test_credentials_stay_out_of_logs_params_and_tags(tiny_data, tmp_path, capsys):
    """A study in a password-protected PostgreSQL: the password never reaches the output, MLflow or the JSON."""
    _params("presets: {quick: {imgsz: 64, epochs: 1, batch: 4, workers: 0, mosaic: 0.0, plots: false}}\n")
    with postgres(free_port()) as url:
        storage = url.replace("postgres@", f"postgres:{SECRET}@")  # trust auth: the password is carried, unused
        code = main(
            [
                *(
                    "tune",
                    "--data",
                    str(tiny_data),
                    "--set",
                    f"tune.storage={storage}",
                    "--trials",
                    "1",
                    "--epochs",
                    "1",
                ),
                *("--set", "tune.imgsz=64", "--device", "cpu", "--out", "best.json"),
            ]
        )
    out = capsys.readouterr()
    assert code == 0
    assert SECRET not in out.out + out.err
    assert SECRET not in Path("best.json").read_text() and "***" in Path("best.json").read_text()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert runs
    for run in runs:
        logged = json.dumps([run.data.params, run.data.tags])
        assert SECRET not in logged


@pytest.mark.slow  # trains
def test_train_works_in_a_fresh_checkout_without_pipeline_outputs(tiny_data, tmp_path, capsys):
    """`csfnet train` needs no metrics/tune/best_partition.json: the config's own partition is the default."""
    assert not Path("metrics").exists()
    code = main(
        [
            *(
                "train",
                "--data",
                str(tiny_data),
                "--epochs",
                "1",
                "--imgsz",
                "64",
                "--set",
                "args.batch=4",
                "--device",
                "cpu",
            ),
            *("--out", "run", "--no-mlflow"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert Path("run/weights/best.pt").is_file()


def _commands() -> list[tuple[str, ...]]:
    """Every leaf command of the parser, as its words after ``csfnet``."""
    from csfnet.cli import build_parser
    from csfnet.cli_options import subcommands

    found, todo = [], [((), build_parser())]
    while todo:
        words, parser = todo.pop()
        if parser.get_default("func"):
            found.append(words)
        todo += [((*words, name), sub) for name, sub in subcommands(parser).items()]
    return sorted(found)


def _required(words: tuple[str, ...]) -> list[str]:
    """Placeholder values for the command's required options (nothing is run with them)."""
    from csfnet.cli import build_parser
    from csfnet.cli_options import subcommands

    parser = build_parser()
    for word in words:
        parser = subcommands(parser)[word]
    options = [a for a in parser._actions if a.required and a.option_strings]
    return [arg for a in options for arg in (a.option_strings[0], "1" if a.type is int else "x")]


COMMANDS = _commands()


def test_every_command_takes_set():
    assert len(COMMANDS) >= 20 and ("compare", "cell") in COMMANDS and ("pipeline", "submit") in COMMANDS


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_set_reaches_the_settings_of_every_command(words):
    """`--set KEY=VALUE` (YAML values, dotted keys, args.* for the active preset) is merged once, for every command."""
    from csfnet.cli import parse_arguments
    from csfnet.cli_options import command_settings

    argv = [*words, *_required(words), "--set", "eval.iou=0.5", "--set", "compare.configs=[yolov8n, csfnet-n]"]
    argv += ["--set", "extract.fix=true", "--set", "args.epochs=3", "--set", "serving.cpu=2"]
    settings = command_settings(parse_arguments(argv))
    assert settings.eval.iou == 0.5 and settings.compare.configs == ["yolov8n", "csfnet-n"]
    assert settings.extract.fix is True and settings.train_args()["epochs"] == 3 and settings.serving.cpu == "2"


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_the_command_line_adds_no_defaults(words):
    """Without --set or an alias a command runs on params.yaml exactly: no option holds a setting's default."""
    from csfnet.cli import parse_arguments
    from csfnet.cli_options import command_settings
    from csfnet.settings import load_settings

    assert command_settings(parse_arguments([*words, *_required(words)])) == load_settings()


@pytest.mark.parametrize(
    ("pair", "expected"),
    [
        ("eval.iuo=0.5", "command line: unknown key 'eval.iuo' (did you mean 'eval.iou'?)"),
        ("evl.iou=0.5", "command line: unknown key 'evl.iou' (did you mean 'eval'?)"),
        ("eval.iou=1.5", "command line: eval.iou: 1.5: Input should be less than or equal to 1"),
        ("args.epoch=3", "presets.quick.epoch: not an ultralytics training argument (did you mean 'epochs'?)"),
        ("eval.iou", "--set 'eval.iou': expected KEY=VALUE"),
    ],
)
@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_unknown_key_or_bad_value_is_one_line_naming_it(words, pair, expected, tmp_path, capsys):
    before = sorted(tmp_path.rglob("*"))
    assert main([*words, *_required(words), "--set", pair]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"csfnet {' '.join(words)}: error: ") and expected in err[0], err
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["compare", "--epochs", "1"], "csfnet compare: error: unknown option --epochs; settings take --set KEY=VALUE"),
        (["compare", "--epochs=1"], "(keys named epochs: args.epochs, tune.epochs, tune.revalidate.epochs)"),
        (["train", "--data", "d.yaml", "--batch", "4"], "csfnet train: error: unknown option --batch; settings take"),
        (
            ["detect", "--model", "m.pt", "--source", "s", "--out", "o", "--tarck", "bytetrack"],
            "(did you mean --track?)",
        ),
        (["compare", "cell", "--confg", "yolov8n"], "csfnet compare cell: error: unknown option --confg"),
        (
            ["eval", "--weights", "w.pt", "--data", "d.yaml", "--overlap", "0.3"],
            "(keys named overlap: extract.overlap, detect.overlap)",
        ),
        (["train", "--data"], "csfnet train: error: argument --data: expected one argument"),
    ],
)
def test_unknown_option_is_one_line_naming_it(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and expected in err[0], err


def test_aliases_are_settings_keys_and_documented():
    """The everyday flags are one table of aliases, each a real settings key, each explained in its help."""
    from csfnet.cli import build_parser, parse_arguments
    from csfnet.cli_options import ALIASES, command_settings, setting_keys, subcommands

    keys = set(setting_keys())
    assert all(key in keys for aliases in ALIASES.values() for key in aliases.values())
    assert sum(len(a) for a in ALIASES.values()) <= 20
    args = parse_arguments(["train", "--data", "d.yaml", "--epochs", "2", "--device", "0", "--set", "args.epochs=4"])
    settings = command_settings(args)
    assert settings.train_args()["epochs"] == 4 and settings.train.device == "0"  # --set after the alias wins
    assert "= --set args.epochs=VALUE" in " ".join(subcommands(build_parser())["train"].format_help().split())
