"""Inference back ends behind one interface: a batch of letterboxed images in, the raw detection head out.

Every runtime takes ``(N, C, S, S)`` float32 in 0-1 (``S`` = :attr:`Runtime.imgsz`; ``C`` = :attr:`Runtime.channels`:
3 colour channels, then for a temporal model one motion channel per earlier frame of :attr:`Runtime.motion`, both read
from the model: ``model.yaml`` of a ``.pt``, the input shape and the ``motion`` metadata of an export; channel order
as :func:`csfnet.detect.predict.channel_order` gives it) and returns the Detect head's
output, so pre-processing, NMS and slicing are shared and the runtimes stay interchangeable. The output has one of
ultralytics' two layouts (:attr:`Runtime.end2end` says which): ``(N, 4 + classes, anchors)`` (boxes xywh, for NMS)
or, for a model run through its NMS-free one-to-one head (YOLO26), ``(N, max_det, 6)`` (x1, y1, x2, y2, score,
class; top-k taken, no NMS). The back ends: PyTorch (a ``.pt`` checkpoint), onnxruntime (FP32 or INT8 ``.onnx``) and
OpenVINO (a folder or ``.xml`` written by ultralytics' exporter, FP32 or INT8). A model is checked before it is used:
a missing or corrupt file, or a model that is not a detector, raises :mod:`csfnet.errors` with a one-line message,
and nothing is ever downloaded.
"""

from __future__ import annotations

import ast
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from csfnet.detect.temporal_input import check_model, describe, parse_spec
from csfnet.errors import CheckpointError, InputNotFoundError, ServiceError
from csfnet.temporal.model_spec import MOTION_KEY

if TYPE_CHECKING:
    from csfnet.temporal import MotionSpec

REGISTRY_SCHEMES = ("models:/", "runs:/")


class Runtime:
    """One loaded model. ``batch`` is None when the model takes any batch size in one call."""

    kind: str = "?"
    imgsz: int = 640
    names: dict[int, str]
    batch: int | None = None
    end2end: bool = False  # output (N, max_det, 6) of an NMS-free head, else (N, 4 + classes, anchors)
    channels: int = 3  # input channels: 3 colour + one per motion offset
    motion: MotionSpec | None = None  # the earlier frames a temporal model needs; None: single-frame

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Raw head output of ``x`` ``(N, channels, imgsz, imgsz)`` in the layout :attr:`end2end` names."""
        raise NotImplementedError

    def __call__(self, x: np.ndarray, batch: int = 8) -> np.ndarray:
        """:meth:`forward` in chunks of at most ``batch`` images (of exactly the model's batch when it is fixed)."""
        step = self.batch or max(1, batch)
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            if self.batch and len(chunk) < self.batch:  # a fixed-batch model: pad the last chunk
                pad = np.zeros((self.batch - len(chunk), *chunk.shape[1:]), chunk.dtype)
                outs.append(self.forward(np.concatenate([chunk, pad]))[: len(chunk)])
            else:
                outs.append(self.forward(chunk))
        if outs:
            return np.concatenate(outs)
        return np.zeros((0, 0, 6) if self.end2end else (0, 4 + len(self.names), 0), np.float32)

    def describe(self) -> str:
        motion = "" if self.motion is None else f", {describe(self.motion)}"
        return f"{self.kind} (imgsz {self.imgsz}{motion})"

    def latency_ms(self, batch: int = 1, repeats: int = 10) -> float:
        """Median :meth:`forward` time of one batch of random input, after one warm-up call."""
        x = np.random.default_rng(0).random((batch, self.channels, self.imgsz, self.imgsz), dtype=np.float32)
        self.forward(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.forward(x)
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times))


class TorchRuntime(Runtime):
    """An ultralytics ``.pt`` checkpoint, loaded with ``torch.load`` (never through ultralytics' downloader).
    ``end_to_end`` (setting ``eval.end_to_end``): an NMS-free head runs through its one-to-one branch."""

    kind = "pytorch"

    def __init__(self, path: str | Path, imgsz: int | None = None, device: str = "cpu", end_to_end: bool = True):
        import torch
        from ultralytics.nn.modules.head import Detect

        from csfnet.heads import head_args

        path = Path(path)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # truncated zip, pickle errors, missing classes ...
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
        model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
        if not isinstance(model, torch.nn.Module) or not isinstance(getattr(model, "model", [None])[-1], Detect):
            raise CheckpointError(f"{path}: not an ultralytics detection checkpoint (no model with a Detect head)")
        self.device = torch.device(device if device not in ("", None) else "cpu")
        model.end2end = head_args(model, end_to_end).get("nms") is False  # before fuse(), which drops the other
        self.model = model.float().fuse().eval().to(self.device)
        self.end2end = bool(self.model.end2end)
        train_imgsz = (ckpt.get("train_args") or {}).get("imgsz", 640)
        self.imgsz = int(imgsz or (train_imgsz[0] if isinstance(train_imgsz, (list, tuple)) else train_imgsz))
        self.names = {int(k): str(v) for k, v in dict(getattr(model, "names", {0: "object"})).items()}
        cfg = getattr(model, "yaml", None) or {}
        first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
        self.channels = int(cfg.get("channels") or (first.in_channels if first is not None else 3))
        self.motion = parse_spec(cfg.get(MOTION_KEY), path)
        check_model(self.channels, self.motion, path)

    def forward(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            y = self.model(torch.from_numpy(x).to(self.device))
        return (y[0] if isinstance(y, (list, tuple)) else y).float().cpu().numpy()


class OnnxRuntime(Runtime):
    """An ultralytics-exported detection ONNX model (FP32 or INT8) in an onnxruntime session."""

    kind = "onnxruntime"

    def __init__(self, path: str | Path, imgsz: int | None = None, providers: list[str] | None = None):
        import onnxruntime as ort

        path = Path(path)
        available = ort.get_available_providers()
        default = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers or default)
        except Exception as e:
            raise CheckpointError(f"{path}: not a loadable ONNX model ({type(e).__name__})") from e
        meta = self.session.get_modelmeta().custom_metadata_map
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.names = _names(meta.get("names"))
        shape = inputs[0].shape if len(inputs) == 1 else []
        out = outputs[0].shape
        self.end2end = _is_end2end(meta.get("end2end"), out)
        channels = out[2] if self.end2end else out[1] if len(out) == 3 else None
        if (
            meta.get("task", "detect") != "detect"
            or not self.names
            or len(shape) != 4
            or len(out) != 3
            or (isinstance(channels, int) and channels != (6 if self.end2end else 4 + len(self.names)))
        ):
            raise CheckpointError(f"{path}: not an ultralytics detection model (input {shape}, output {out})")
        self.input = inputs[0].name
        fixed = shape[2] if isinstance(shape[2], int) else None
        self.imgsz = int(fixed or imgsz or ast.literal_eval(meta.get("imgsz", "[640, 640]"))[0])
        self.batch = shape[0] if isinstance(shape[0], int) else None
        self.channels = shape[1] if isinstance(shape[1], int) else int(meta.get("channels", 3))
        self.motion = parse_spec(meta.get("motion"), path)
        check_model(self.channels, self.motion, path)
        self.kind = "onnxruntime-int8" if _is_quantised(path) else "onnxruntime"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: x})[0]


class OpenVinoRuntime(Runtime):
    """An OpenVINO model written by ultralytics' exporter (``<name>_openvino_model/`` with ``metadata.yaml``)."""

    kind = "openvino"

    def __init__(self, path: str | Path, imgsz: int | None = None, device: str = "CPU"):
        import openvino as ov
        import yaml

        path = Path(path)
        xml = path if path.suffix == ".xml" else next(iter(sorted(path.glob("*.xml"))), None)
        meta_file = (xml.parent if xml else path) / "metadata.yaml"
        if xml is None or not xml.with_suffix(".bin").is_file() or not meta_file.is_file():
            raise CheckpointError(f"{path}: not an OpenVINO model folder (needs <model>.xml, .bin and metadata.yaml)")
        meta = yaml.safe_load(meta_file.read_text()) or {}
        self.names = {int(k): str(v) for k, v in (meta.get("names") or {}).items()}
        if meta.get("task", "detect") != "detect" or not self.names:
            raise CheckpointError(f"{path}: not an ultralytics detection model (task {meta.get('task')!r})")
        core = ov.Core()
        try:
            model = core.read_model(str(xml))
        except Exception as e:
            raise CheckpointError(f"{xml}: not a readable OpenVINO model ({type(e).__name__})") from e
        shape = model.inputs[0].get_partial_shape()
        fixed = shape[2].get_length() if shape[2].is_static else None
        self.imgsz = int(fixed or imgsz or (meta.get("imgsz") or [640])[0])
        self.channels = shape[1].get_length() if shape[1].is_static else int(meta.get("channels", 3))
        self.motion = parse_spec(meta.get("motion"), path)
        check_model(self.channels, self.motion, path)
        if shape[0].is_dynamic or not shape[2].is_static:  # any batch, image size pinned: faster plans
            model.reshape([-1, self.channels, self.imgsz, self.imgsz])
        self.batch = None if model.inputs[0].get_partial_shape()[0].is_dynamic else shape[0].get_length()
        out = model.outputs[0].get_partial_shape()
        self.end2end = _is_end2end(meta.get("end2end"), [d.get_length() if d.is_static else None for d in out])
        # f32: on CPUs with bf16 support OpenVINO would otherwise run FP32 models in bf16 (boxes off by ~0.5 px)
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        self.compiled = core.compile_model(model, device, config)
        self.request = self.compiled.create_infer_request()
        args = meta.get("args") or {}
        self.kind = "openvino-int8" if args.get("quantize") == 8 or args.get("int8") else "openvino"

    def forward(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.request.infer({0: x})[self.compiled.outputs[0]])


def load_runtime(
    model: str | Path,
    imgsz: int | None = None,
    device: str = "cpu",
    providers: list[str] | None = None,
    end_to_end: bool = True,
) -> Runtime:
    """The runtime for ``model``: a ``.pt``, an ``.onnx``, an OpenVINO folder/``.xml``, or a registry URI
    (``models:/name@alias``, ``models:/name/3``, ``runs:/...``) whose ONNX artifact is loaded.

    ``imgsz`` applies where the model allows it (a ``.pt``, or an export with a dynamic image size); ``device`` to a
    ``.pt``, ``providers`` to ONNX (default: CUDA when available, else CPU). ``end_to_end`` (setting
    ``eval.end_to_end``) chooses the head of a ``.pt`` with an NMS-free head: its one-to-one branch, else the
    one-to-many branch + NMS; an export has the head it was exported with.

    Raises:
        InputNotFoundError: The file or registered model/alias does not exist.
        CheckpointError: The file exists but is not a usable detection model.
        ServiceError: The MLflow registry cannot be reached.
    """
    text = str(model)
    if text.startswith(REGISTRY_SCHEMES):
        return _from_registry(text, imgsz, providers)
    path = Path(model)
    if not path.exists():
        raise InputNotFoundError(f"model {path} not found")
    if path.is_dir() or path.suffix == ".xml":
        return OpenVinoRuntime(path, imgsz)
    if path.suffix == ".onnx":
        return OnnxRuntime(path, imgsz, providers)
    if path.suffix in (".pt", ".pth"):
        return TorchRuntime(path, imgsz, device, end_to_end)
    raise CheckpointError(f"{path}: unknown model type (expected .pt, .onnx, an OpenVINO folder or models:/...)")


def _from_registry(uri: str, imgsz: int | None, providers: list[str] | None = None) -> Runtime:
    """Download the registered pyfunc's artifacts and load its ONNX model (the session keeps it in memory)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tmp = Path(tempfile.mkdtemp(prefix="csfnet-model-"))
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                raise InputNotFoundError(f"{uri}: no such registered model, version or alias") from e
            raise ServiceError(f"{uri}: MLflow registry error ({e.error_code})") from e
        except (ConnectionError, OSError) as e:
            raise ServiceError(f"{uri}: cannot reach the MLflow registry ({type(e).__name__})") from e
        found = sorted(local.rglob("*.onnx"))
        if not found:
            raise CheckpointError(f"{uri}: the registered model has no ONNX artifact")
        runtime = OnnxRuntime(found[0], imgsz, providers)
        runtime.source = uri  # type: ignore[attr-defined]
        return runtime
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _names(value: Any) -> dict[int, str]:
    try:
        parsed = ast.literal_eval(value) if isinstance(value, str) else value
        return {int(k): str(v) for k, v in dict(parsed).items()}
    except (ValueError, SyntaxError, TypeError):
        return {}


def _is_end2end(declared: Any, output_shape: Any) -> bool:
    """Whether an exported model returns the NMS-free ``(N, max_det, 6)`` layout: its metadata's ``end2end`` (written
    by ultralytics' exporter), else a last output dimension of 6 (a layout with classes on axis 1 ends in anchors)."""
    if declared is not None:
        return str(declared).lower() == "true"
    return len(output_shape) == 3 and output_shape[2] == 6


def _is_quantised(path: Path) -> bool:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:
        return False
    return any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in graph.node)
