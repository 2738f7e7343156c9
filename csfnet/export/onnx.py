"""ONNX writer: FP32 through ultralytics' exporter, INT8 through onnxruntime static quantisation. Unverified:
:func:`csfnet.export.export_onnx` verifies both before they are written in place.

The FP32 model has a dynamic batch (and, on request, a dynamic image size), is simplified with onnxslim and carries
ultralytics' metadata (class names, imgsz, stride). INT8 is onnxruntime static quantisation (QDQ, per-channel weights,
MinMax calibration on training frames) of the backbones and the neck; the Detect head stays FP32: quantising its
decoding rounds scores to zero (one scale for pixels and probabilities), and quantising its convolutions cost the
quick model 4.8 mAP50 points against 0 with the head in FP32. (ultralytics' own INT8 export quantises convolutions
only; the float activations between them keep onnxruntime from fusing QLinearConv, and it ran 2x slower than FP32.)
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
from onnx.tools.update_model_dims import update_inputs_outputs_dims
from tqdm import tqdm

from csfnet.data.dataset import calibration_images
from csfnet.detect.predict import letterbox_batch
from csfnet.detect.temporal_input import parse_spec, read_frame, spec_json
from csfnet.temporal.model_spec import MOTION_KEY


def onnx_export(
    weights: Path, imgsz: int, opset: int = 17, dynamic_size: bool = False, end_to_end: bool = True
) -> Path:
    """ONNX next to ``weights`` through ultralytics' exporter: dynamic batch, image size pinned unless
    ``dynamic_size``; an NMS-free head exported through its one-to-one branch when ``end_to_end``
    (:func:`csfnet.heads.head_args`; ultralytics records the choice as the ``end2end`` metadata). A temporal model
    (``model.yaml["motion"]``) is exported with its ``3 + k`` input channels and its spec as the ``motion``
    metadata entry (JSON), which the runtimes read."""
    from ultralytics import YOLO

    from csfnet.heads import head_args

    args = {"format": "onnx", "imgsz": imgsz, "opset": opset, "dynamic": True, "simplify": True, "device": "cpu"}
    yolo = YOLO(str(weights))
    path = Path(yolo.export(**args, **head_args(yolo.model, end_to_end)))
    model = _declare_shapes(onnx.load(str(path)), imgsz, dynamic_size)
    motion = spec_json(parse_spec(yolo.model.yaml.get(MOTION_KEY), weights))
    for key, value in {"dynamic_size": str(dynamic_size), "motion": motion}.items():
        if value is not None:
            meta = model.metadata_props.add()
            meta.key, meta.value = key, value
    onnx.checker.check_model(model)
    target = path.with_name(f"{path.stem}-final.onnx")
    onnx.save(model, str(target))
    path.unlink()
    return target


def quantize_int8(fp32: Path, out: Path, calib_data: Path, imgsz: int, frames: int = 100) -> Path:
    """Static INT8 quantisation with onnxruntime, calibrated on ``frames`` evenly spaced training frames (for a
    temporal model stacked with their stored motion channels, :func:`csfnet.temporal.load_stacked`)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = [str(p) for p in calibration_images(calib_data, frames)]
    spec = parse_spec(
        {p.key: p.value for p in onnx.load(str(fp32), load_external_data=False).metadata_props}.get("motion")
    )

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(tqdm(images, desc="INT8 calibration", unit="frame"))

        def get_next(self) -> dict[str, np.ndarray] | None:
            path = next(self.batches, None)
            return None if path is None else {"images": letterbox_batch([read_frame(path, spec)], imgsz)}

    prepared = out.with_name(f"{out.stem}-prepared.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    graph = onnx.load(str(prepared)).graph
    head = _head_prefix(graph)
    detect = [n.name for n in graph.node if n.name.startswith(head)]
    quantize_static(
        str(prepared),
        str(out),
        Frames(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=detect,
    )
    prepared.unlink()
    model = onnx.load(str(out))  # keep the FP32 model's metadata (names, imgsz, stride) for ultralytics and serving
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.load(str(fp32)).metadata_props)
    onnx.save(model, str(out))
    return out


def _head_prefix(graph: onnx.GraphProto) -> str:
    """Node-name prefix of the last module (the Detect head), e.g. ``/model.37/``."""
    indices = [int(m.group(1)) for n in graph.node if (m := re.match(r"/model\.(\d+)/", n.name))]
    if not indices:
        raise ValueError("cannot find the detection head in the ONNX graph (no /model.N/ node names)")
    return f"/model.{max(indices)}/"


def _declare_shapes(model: onnx.ModelProto, imgsz: int, dynamic_size: bool) -> onnx.ModelProto:
    """Declare the input and output shapes the model really has: the batch dynamic, and with a pinned image size
    every other output dimension as onnxruntime computes it at ``imgsz`` (never derived from assumed strides: a P2
    head has four levels, an NMS-free head returns ``(batch, max_det, 6)``)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name, channels = session.get_inputs()[0].name, session.get_inputs()[0].shape[1]
    shape = session.run(None, {name: np.zeros((1, channels, imgsz, imgsz), np.float32)})[0].shape
    end2end = {p.key: p.value for p in model.metadata_props}.get("end2end") == "True"
    if dynamic_size:  # top-k keeps min(max_det, anchors) boxes, so both layouts vary with the image size
        inputs, outputs = ["batch", channels, "height", "width"], ["batch", "detections", 6] if end2end else None
        outputs = outputs or ["batch", shape[1], "anchors"]
    else:
        inputs, outputs = ["batch", channels, imgsz, imgsz], ["batch", *shape[1:]]
    return update_inputs_outputs_dims(model, {name: inputs}, {model.graph.output[0].name: outputs})
