"""The settings schema: every section of ``params.yaml``, validated once, with its defaults.

``params.yaml`` (or ``$CSFNET_PARAMS``) holds the same defaults as this schema (a test keeps them equal); keys it
leaves out take the schema's. ``--set KEY=VALUE`` on the command line and a Kubeflow run's settings mapping
override single keys (:meth:`Settings.override`) and never re-default. Every problem is a
:class:`~csfnet.errors.SettingsError` naming the file, the key and the value, with the closest valid key suggested
for a misspelt one.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from csfnet.errors import SettingsError
from csfnet.ultralytics_files import default_args, key_sets, tracker_keys

PARAMS_ENV = "CSFNET_PARAMS"
ACTIVE_PRESET = "args"  # override prefix for the active preset's ultralytics arguments: args.epochs=3

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Section(BaseModel):
    """A section of params.yaml: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=False, coerce_numbers_to_str=True)


class Data(Section):
    """Where the raw videos come from."""

    source: str = "synth"  # synth, synth-hd (the benchmark at 1920x1080), a local folder, or an fsspec URI (s3://...)


class Synth(Section):
    """The deterministic synthetic micro-UAV benchmark (``csfnet data synth``)."""

    train_videos: PositiveInt = 8
    val_videos: PositiveInt = 4
    frames: PositiveInt = 50
    width: Annotated[int, Field(ge=64)] = 160
    height: Annotated[int, Field(ge=64)] = 128
    seed: int = 0
    format: Literal["mot", "anti-uav"] = "mot"


class Extract(Section):
    """Frame extraction from raw videos into a YOLO dataset."""

    stride: PositiveInt = 2
    format: Literal["auto", "anti-uav", "mot", "drone-vs-bird", "yolo"] = "auto"
    fix: bool = False
    names: Annotated[list[str], Field(min_length=1)] = ["uav"]
    tile: Annotated[int, Field(ge=0)] = 0  # px; 0 = whole frames, else >= 32: larger frames become tiles
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.2  # share of a tile its neighbours overlap
    min_visible: Annotated[float, Field(gt=0, le=1)] = 0.5  # share of a cut box's area a tile must hold to keep it
    negatives: Annotated[float, Field(ge=0)] = 1.0  # tiles without targets kept, per positive tile
    tile_splits: list[Literal["train", "val", "test"]] = ["train"]  # val stays whole: pair it with sliced inference
    seed: int = 0  # choice of the negative tiles

    @field_validator("tile")
    @classmethod
    def _tile_size(cls, value: int) -> int:
        if 0 < value < 32:
            raise ValueError("must be 0 (off) or at least 32 px")
        return value


def _increasing(values: list, message: str) -> list:
    """``values`` if each is above the one before, else ValueError ``message`` naming them."""
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{message}, got {values}")
    return values


class Temporal(Section):
    """Motion channels from earlier frames (issue 24): which ones, and how they are aligned to the current frame."""

    offsets: list[PositiveInt] = []  # source-frame distances; [] = single-frame data and models
    align: Literal["homography", "affine", "translation", "none"] = "homography"
    align_size: Annotated[int, Field(ge=32)] = 320  # px: longest side at which the camera motion is estimated

    @field_validator("offsets")
    @classmethod
    def _ascending(cls, value: list[int]) -> list[int]:
        return _increasing(value, "offsets must be unique and ascending")


class Train(Section):
    """What to train and where."""

    model: str = "csfnet-n"
    preset: str = "quick"
    device: str = ""
    pretrained: str = ""
    seed: int = 0

    @field_validator("device", mode="before")
    @classmethod
    def _device_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        from csfnet.config_names import ALL_CONFIGS, is_known_config

        if is_known_config(value) or value.endswith((".yaml", ".yml")):
            return value
        known = _unknown(value, ALL_CONFIGS, "a model configuration")
        raise ValueError(f"{known.removesuffix(')')}, any yolov8/yolo11/yolo12/yolo26 scale n-x) or a YAML file")


class PartitionSpace(Section):
    """Channels CSwitch may send to fusion P3, P4, P5: multiples of ``step`` within ``min``..``max``."""

    min: Annotated[list[PositiveInt], Field(min_length=1)] = [32, 64, 128]
    max: Annotated[list[PositiveInt], Field(min_length=1)] = [128, 256, 512]
    step: PositiveInt = 16

    @model_validator(mode="after")
    def _bounds(self) -> PartitionSpace:
        if len(self.min) != len(self.max):
            raise ValueError(f"min and max need one value per stage, got {self.min} and {self.max}")
        if any(lo < self.step or lo > hi for lo, hi in zip(self.min, self.max)):
            raise ValueError(f"need step <= min <= max per stage, got min {self.min}, max {self.max}, step {self.step}")
        return self


class Pruner(BaseModel):
    """An Optuna pruner: ``type`` plus that pruner's own keyword arguments."""

    model_config = ConfigDict(extra="allow")
    type: Literal["none", "median", "successive_halving", "hyperband"] = "median"


class Revalidate(Section):
    """Retraining the study's best partition against the config's own before adopting it."""

    seeds: Annotated[list[int], Field(min_length=2)] = [0, 1]  # each side trains once per seed
    epochs: PositiveInt | None = None  # None = tune.epochs
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95  # of the paired bootstrap interval of the gain
    resamples: Annotated[int, Field(ge=100)] = 1000


class Tune(Section):
    """Optuna search for the CSwitch partition (``csfnet tune``)."""

    trials: PositiveInt = 3
    epochs: PositiveInt = 2
    imgsz: Annotated[int, Field(ge=32)] = 160
    fraction: Annotated[float, Field(gt=0, le=1)] = 1.0
    objective: Literal["map50_95", "pareto"] = "map50_95"
    storage: str = ""
    study_name: str = ""
    seed: int = 0
    partition: PartitionSpace = PartitionSpace()
    head_depth: tuple[PositiveInt, PositiveInt] | None = None
    lr0: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = None
    pruner: Pruner = Pruner(type="hyperband", min_resource=1, reduction_factor=3)
    revalidate: Revalidate = Revalidate()
    workers: PositiveInt = 1  # Kubeflow: parallel tuning steps sharing the study (a GPU each)
    heartbeat_interval: PositiveInt = 30
    grace_period: PositiveInt = 90
    max_retry: Annotated[int, Field(ge=0)] = 1


class CompareSynth(Section):
    """Sizes of the bench data: the synth benchmark (``synth``) with these keys replaced."""

    train_videos: PositiveInt = 32
    val_videos: PositiveInt = 16
    frames: PositiveInt = 50


class Compare(Section):
    """Configurations x seeds trained at equal budget on the same data and compared (``csfnet compare``)."""

    configs: Annotated[list[str], Field(min_length=1)] = [
        "csfnet-n",
        "csfnet-no-cswitch",
        "csfnet-no-dfuse",
        "csfnet-no-cretonext",
        "csfnet26-n",
        "csfnet26-n-p2",
        "yolov8n",
        "yolov8n-p2",
        "yolov8s",
        "yolo26n",
        "yolo26n-p2",
    ]  # the first row is the reference of every paired difference
    seeds: Annotated[list[int], Field(min_length=1)] = [0, 1, 2]
    preset: str = "bench"
    confidence: Annotated[float, Field(gt=0, lt=1)] = 0.95  # of the intervals over seeds and of the bootstrap
    resamples: Annotated[int, Field(ge=100)] = 2000  # paired bootstrap over validation images
    latency_images: PositiveInt = 20  # CPU latency at batch 1: median over this many validation images
    synth: CompareSynth = CompareSynth()

    @field_validator("configs")
    @classmethod
    def _known_configs(cls, values: list[str]) -> list[str]:
        for value in values:
            Train._known_model(value)
        if len(set(values)) != len(values):
            raise ValueError(f"configurations must be distinct, got {values}")
        return values


class Eval(Section):
    """Validation settings shared by evaluation, robustness and export."""

    batch: PositiveInt = 16
    conf: Fraction = 0.001
    iou: Fraction = 0.6
    report_conf: Fraction = 0.25
    size_bands: Annotated[list[Annotated[float, Field(gt=0)]], Field(min_length=1)] = [8, 16, 32]
    samples: Annotated[int, Field(ge=0)] = 6
    end_to_end: bool = True  # NMS-free heads (YOLO26) run through their one-to-one branch; false: one-to-many + NMS

    @field_validator("size_bands")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        return _increasing(value, "size band edges must increase")


class Robustness(Section):
    """The Gaussian-noise sweep (paper Table 1)."""

    sigmas: Annotated[list[Annotated[float, Field(ge=0)]], Field(min_length=1)] = [0, 5, 10, 25, 50]
    seed: int = 0


class Export(Section):
    """Verified ONNX export and INT8 quantisation."""

    opset: Annotated[int, Field(ge=11, le=21)] = 17
    dynamic_size: bool = False
    int8: bool = True
    calib_frames: PositiveInt = 100
    verify_frames: PositiveInt = 8


class Persistence(Section):
    """Track-level filtering after the tracker (:mod:`csfnet.detect.persistence`); ``csfnet eval --track`` measures
    it whether enabled or not."""

    enabled: bool = False  # csfnet detect filters its tracks (needs detect.track)
    mode: Literal["suppress", "rescore"] = "suppress"  # what happens to a detection on a young track
    min_hits: PositiveInt = 3  # frames a track must have been reported to count as persistent
    window: PositiveInt = 10  # frames of a persistent track's mean confidence (1 = no boost)
    young_factor: Fraction = 0.5  # rescore: a young track's confidence is multiplied by this

    def rule(self) -> dict[str, Any]:
        """Keyword arguments of :class:`csfnet.detect.persistence.PersistenceRule`."""
        return self.model_dump(exclude={"enabled"})


class Detect(Section):
    """``csfnet detect``: sliced inference and tracking on videos, images and streams."""

    conf: Fraction = 0.25
    iou: Fraction = 0.6
    imgsz: Annotated[int, Field(ge=32)] | None = None  # None = the model's own
    slice: Annotated[int, Field(ge=0)] = 640  # px at native resolution; 0 = whole frames only
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.2
    full_frame: bool = True  # also the whole frame, downscaled, merged with the slices
    merge: Literal["nmm", "nms"] = "nmm"
    merge_threshold: Fraction = 0.5
    track: Literal["none", "bytetrack", "botsort"] = "none"
    batch: PositiveInt = 8  # crops per runtime call
    device: str = "cpu"
    save_video: bool = True
    single_target: bool = False  # also states.json: per frame the best track or "target absent" (Anti-UAV)
    track_args: dict[str, bool | int | float | str] = {}  # replace the tracker config's: {track_buffer: 60}
    persistence: Persistence = Persistence()

    @field_validator("track_args")
    @classmethod
    def _tracker_keys(cls, value: dict[str, bool | int | float | str]) -> dict[str, bool | int | float | str]:
        known = tracker_keys()
        for key in value:
            if key not in known:
                raise ValueError(f"{key!r} is not a tracker setting{_suggest(key, sorted(known))}")
        return value

    @field_validator("slice")
    @classmethod
    def _slice_size(cls, value: int) -> int:
        if 0 < value < 32:
            raise ValueError("must be 0 (whole frames) or at least 32 px")
        return value

    def options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`csfnet.detect.detect` (``slice`` 0 and ``track`` none mean off)."""
        values = self.model_dump()
        values["slice_size"] = values.pop("slice") or None
        values["tracker"] = None if values.pop("track") == "none" else self.track
        values["tracker_overrides"] = values.pop("track_args") or None
        values["persistence"] = self.persistence.rule() if values.pop("persistence")["enabled"] else None
        return values


class Register(Section):
    """The MLflow model registry."""

    name: Annotated[str, Field(min_length=1)] = "csfnet-uav"
    margin: Annotated[float, Field(ge=0)] = 0.005


class Serving(Section):
    """``csfnet deploy``: the KServe InferenceService of the registry's champion."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")] = "csfnet"
    namespace: str = ""  # "" = the kube config's current namespace
    runtime: Annotated[str, Field(min_length=1)] = "csfnet-mlflow"
    canary_percent: Annotated[int, Field(ge=0, le=100)] = 0  # 0 = all traffic to the new revision
    cpu: str = "1"
    memory: str = "2Gi"
    gpus: Annotated[int, Field(ge=0)] = 0
    min_replicas: Annotated[int, Field(ge=0)] = 1

    def options(self) -> dict[str, Any]:
        """Keyword arguments of :func:`csfnet.kubeflow.deploy.inference_service` besides the name and model URI
        (an empty namespace and a zero canary share mean "none")."""
        values = self.model_dump(exclude={"name"})
        return {**values, "namespace": self.namespace or None, "canary_percent": self.canary_percent or None}


class Mlflow(Section):
    """MLflow experiment (the store follows ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db``)."""

    experiment: Annotated[str, Field(min_length=1)] = "csfnet"


class Services(Section):
    """Probes of the services a stage needs, made when it starts."""

    timeout: Annotated[float, Field(gt=0, le=60)] = 5.0  # seconds per probe; unreachable fails within it


QUICK_ONLY = {  # for 18 short epochs on 2 CPU cores; bench keeps ultralytics' defaults
    "nbs": 16,  # one optimizer step per batch: 4x ultralytics' (nbs 64) in 18 short epochs; +0.09 mAP50, seed 0
    "plots": False,  # evaluation draws its own
    "cache": "ram",
    "val_last": 6,  # validate the last 6 epochs only: the quick model scores mAP 0 before its 9th
}
QUICK = {
    "imgsz": 320,
    "epochs": 18,
    "batch": 16,
    "optimizer": "AdamW",
    "lr0": 0.002,
    "cos_lr": True,
    "warmup_epochs": 1,
    "patience": 0,
    "amp": True,
    "mosaic": 1.0,
    "close_mosaic": 4,
    "scale": 0.25,
    "translate": 0.1,
    "fliplr": 0.5,
    "mixup": 0.0,
    "copy_paste": 0.0,
    "workers": 2,
    **QUICK_ONLY,
}
PAPER = {
    "imgsz": 640,
    "epochs": 80,
    "batch": 32,
    "optimizer": "AdamW",
    "lr0": 0.001,
    "cos_lr": True,
    "warmup_epochs": 3,
    "patience": 20,
    "amp": True,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.3,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.1,
    "copy_paste": 0.1,
    "close_mosaic": 15,
    "workers": 8,
}
BENCH = {
    **{k: v for k, v in QUICK.items() if k not in QUICK_ONLY},
    "epochs": 40,
    "batch": 32,
    "close_mosaic": 8,
    "workers": 8,
}
# csfnet's trainer's own preset arguments and their defaults
TRAINER_ARGS = {"val_last": 0, "cpu_bf16": False, "channels_last": False}
RESERVED_ARGS = ("data", "model", "project", "name", "device", "resume", "pretrained", "exist_ok")


warnings.filterwarnings("ignore", 'Field name "register"', UserWarning)


class Settings(Section):
    """Everything ``params.yaml`` can hold (``register`` shadows only ABCMeta.register, harmlessly)."""

    data: Data = Data()
    synth: Synth = Synth()
    extract: Extract = Extract()
    temporal: Temporal = Temporal()
    train: Train = Train()
    presets: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"quick": dict(QUICK), "bench": dict(BENCH), "paper": dict(PAPER)}
    )
    tune: Tune = Tune()
    compare: Compare = Compare()
    eval: Eval = Eval()
    robustness: Robustness = Robustness()
    export: Export = Export()
    detect: Detect = Detect()
    register: Register = Register()
    serving: Serving = Serving()
    mlflow: Mlflow = Mlflow()
    services: Services = Services()

    @field_validator("presets")
    @classmethod
    def _ultralytics_arguments(cls, presets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, args in presets.items():
            if not isinstance(args, dict):
                raise ValueError(f"preset {name!r} must be a mapping of ultralytics training arguments")
            for key, value in args.items():
                check_ultralytics_argument(key, value, f"presets.{name}.")
        return presets

    @model_validator(mode="after")
    def _preset_exists(self) -> Settings:
        if self.train.preset not in self.presets:
            raise SettingsError(f"train.preset: {_unknown(self.train.preset, self.presets, 'a preset')}")
        return self

    def check_preset(self, key: str, name: str) -> None:
        """A SettingsError naming ``key`` unless ``name`` is a preset (``compare.preset`` is checked when used, so
        params files with only the presets they train with stay valid)."""
        if name not in self.presets:
            raise SettingsError(f"{key}: {_unknown(name, self.presets, 'a preset')}")

    def train_args(self) -> dict[str, Any]:
        """The active preset's ultralytics training arguments (``presets[train.preset]``)."""
        return dict(self.presets[self.train.preset])

    @property
    def imgsz(self) -> int:
        """Training image size of the active preset; evaluation and export use the same."""
        return int(self.train_args().get("imgsz", 640))

    def override(self, values: Mapping[str, Any], source: str = "command line", *, keep_none: bool = False) -> Settings:
        """A copy with dotted keys replaced (``{"train.model": "yolov8n", "args.epochs": 3}``); None values are
        skipped unless ``keep_none`` (``--set tune.head_depth=null``). ``args.KEY`` sets an ultralytics argument of
        the active preset (after ``train.preset``)."""
        values = {k: v for k, v in values.items() if keep_none or v is not None}
        if not values:
            return self
        data = self.model_dump()
        ordered = sorted(values.items(), key=lambda kv: kv[0].startswith(f"{ACTIVE_PRESET}."))
        for key, value in ordered:
            if key.startswith(f"{ACTIVE_PRESET}."):
                key = f"presets.{data['train']['preset']}.{key.split('.', 1)[1]}"
            _set(data, key.split("."), value)
        return validate(data, source)


def check_ultralytics_argument(key: str, value: Any, where: str = "") -> None:
    """Type and name check of one ultralytics training argument (ValueError with the closest valid name)."""
    keys = key_sets()
    float_keys, fraction_keys, int_keys = keys["CFG_FLOAT_KEYS"], keys["CFG_FRACTION_KEYS"], keys["CFG_INT_KEYS"]
    if key in RESERVED_ARGS:
        raise ValueError(f"{where}{key} is set by csfnet itself (use the matching csfnet option), not by a preset")
    if key == "val_last" and not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        raise ValueError(f"{where}{key}: {value!r} is not a count (an integer >= 0)")
    if key in ("cpu_bf16", "channels_last") and not isinstance(value, bool):
        raise ValueError(f"{where}{key}: {value!r} is not true or false")
    if key in TRAINER_ARGS:
        return
    if key not in default_args():
        raise ValueError(f"{where}{key}: not an ultralytics training argument{_suggest(key, default_args())}")
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in int_keys and not (isinstance(value, int) and not isinstance(value, bool)):
        raise ValueError(f"{where}{key}: {value!r} is not an integer")
    if key in (float_keys | fraction_keys) and not number:
        raise ValueError(f"{where}{key}: {value!r} is not a number")
    if key in fraction_keys and not 0 <= value <= 1:
        raise ValueError(f"{where}{key}: {value!r} is not between 0 and 1")
    if key in keys["CFG_BOOL_KEYS"] and not isinstance(value, bool):
        raise ValueError(f"{where}{key}: {value!r} is not true or false")
    if key == "imgsz" and not (isinstance(value, int) and value >= 32):
        raise ValueError(f"{where}imgsz: {value!r} is not an image size (an integer >= 32)")


def params_path() -> Path:
    """``$CSFNET_PARAMS`` if set, else ``params.yaml`` in the working directory."""
    return Path(os.environ.get(PARAMS_ENV, "params.yaml"))


def load_settings(path: str | Path | None = None) -> Settings:
    """The validated settings of ``path`` (default :func:`params_path`); the schema's defaults without a file."""
    path = Path(path) if path else params_path()
    try:
        stat = path.stat()
    except FileNotFoundError:
        return Settings()
    return _load(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load(path: str, mtime_ns: int, size: int) -> Settings:
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SettingsError(f"{Path(path).name}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise SettingsError(f"{Path(path).name}: expected a mapping of sections at the top level")
    return validate(raw, Path(path).name)


def validate(data: Mapping[str, Any], source: str) -> Settings:
    """``Settings`` from a mapping; every error becomes one SettingsError line naming ``source``, key and value."""
    try:
        return Settings.model_validate(data)
    except SettingsError as e:
        raise SettingsError(f"{source}: {e}") from None
    except ValidationError as e:
        raise SettingsError(f"{source}: {_describe(e.errors()[0], data)}") from None


def _describe(error: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    loc = [str(p) for p in error["loc"] if not str(p).startswith(("function-", "tuple["))]
    key = ".".join(loc)
    if error["type"] == "extra_forbidden":
        parent = _schema_at(loc[:-1])
        known = list(parent.model_fields) if parent else []
        hint = _suggest(loc[-1], known, ".".join(loc[:-1]))
        if not hint and loc[0] == "train":
            hint = " (ultralytics training arguments such as epochs belong in presets.<name>)"
        return f"unknown key {key!r}{hint}"
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if message.startswith(f"{key}.") or not key:
        return message
    if error["type"] == "value_error":  # the schema's own checks state the offending values themselves
        return f"{key}: {message}"
    shown = repr(error.get("input"))
    return f"{key}: {shown}: {message}" if "input" in error and len(shown) <= 60 else f"{key}: {message}"


def _schema_at(loc: list[str]) -> type[BaseModel] | None:
    model: Any = Settings
    for part in loc:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        model = field.annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _suggest(name: str, known: list[str] | Mapping[str, Any], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {(f'{prefix}.' if prefix else '') + close[0]!r}?)" if close else ""


def _unknown(value: str, known: list[str] | Mapping[str, Any], what: str) -> str:
    close = difflib.get_close_matches(value, list(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{value!r} is not {what} ({hint}known: {', '.join(known)})"


def _set(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for depth, part in enumerate(keys[:-1]):
        child = data.get(part)
        if not isinstance(child, dict):
            hint = _suggest(part, [k for k, v in data.items() if isinstance(v, dict)], ".".join(keys[:depth]))
            raise SettingsError(f"command line: unknown key {'.'.join(keys)!r}{hint}")
        data = child
    data[keys[-1]] = value
