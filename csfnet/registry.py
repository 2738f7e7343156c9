"""MLflow model registry: the exported ONNX model as a serving pyfunc, and champion/challenger promotion.

Every registered version gets the alias ``challenger``. It becomes a *candidate* for ``champion`` when its validation
mAP50-95 beats the champion's by the configured margin; the champion is then always the best candidate. Promoters
re-read the registry after every write until it is stable, so promotions racing each other converge on the best
candidate instead of leaving whichever wrote last.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from csfnet.checks import check_checkpoint, require_file
from csfnet.data.dataset import split_images
from csfnet.detect.onnx_detector import COLUMNS, OnnxDetector
from csfnet.detect.serving import EARLIER
from csfnet.detect.serving import PARAMS as SERVING_PARAMS
from csfnet.errors import VerificationError
from csfnet.files import write_json
from csfnet.lineage import data_hash, git_commit
from csfnet.mlflow_tracking import stage_run
from csfnet.settings import Settings, load_settings

CHAMPION, CHALLENGER = "champion", "challenger"
METRIC_TAG = "csfnet.map50_95"
CANDIDATE_TAG = "csfnet.candidate"
DECISION_TAG = "csfnet.promotion"
SHA_TAG = "csfnet.registration_sha256"  # of the ONNX file and its verification report


def encode_image(path: str | Path) -> str:
    """An image file as the model's ``image`` input (base64 text)."""
    return base64.b64encode(Path(path).read_bytes()).decode()


@dataclass
class Decision:
    """The outcome of one registration."""

    name: str
    version: str
    map50_95: float
    candidate: bool
    champion: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))


def log_detector(onnx: str | Path, example_image: str | Path) -> mlflow.models.model.ModelInfo:
    """Log the ONNX model as a pyfunc (signature, input example, the csfnet code) in the active run."""
    import cv2
    import pandas as pd
    from mlflow.models import infer_signature
    from mlflow.types.schema import ColSpec, Schema

    import csfnet

    example = pd.DataFrame({"image": [encode_image(example_image)]})
    detector = OnnxDetector(onnx)
    output = pd.DataFrame(detector.to_rows(detector([cv2.imread(str(example_image))])), columns=COLUMNS)
    if output.empty:  # the signature needs the column types even when the example frame has no box
        output = pd.DataFrame([[0, 0.0, 0.0, 1.0, 1.0, 0.5, 0, "uav"]], columns=COLUMNS)
    signature = infer_signature(example, output, params=SERVING_PARAMS)  # MLflow drops undeclared params
    # earlier frames (temporal models), declared for every model: MLflow would drop the column silently otherwise
    signature.inputs = Schema([*signature.inputs.inputs, ColSpec("string", EARLIER, required=False)])
    return mlflow.pyfunc.log_model(
        name="model",
        python_model=str(Path(csfnet.__file__).parent / "mlflow_model.py"),
        artifacts={"onnx": str(onnx)},
        signature=signature,
        input_example=example,
        code_paths=[str(Path(csfnet.__file__).parent)],
        pip_requirements=_requirements(),
    )


def _requirements() -> list[str]:
    from importlib.metadata import version

    packages = ("mlflow", "onnxruntime", "ultralytics", "torch", "opencv-python", "pandas", "numpy", "pyyaml")
    return [f"{p}=={version(p)}" for p in packages]


def register_export(
    onnx: str | Path,
    report: str | Path,
    out: str | Path | None = None,
    final: bool = False,
    settings: Settings | None = None,
) -> Decision:
    """The ``register`` stage: register a verified export as an MLflow run, with lineage tags, and promote it.

    Registering the same ONNX file with the same report again (a ``dvc repro`` killed mid-registration) completes
    its version instead of adding another one. The model name and the margin are ``register.*`` of ``settings``;
    ``final`` closes the pipeline's parent run.
    """
    settings = settings or load_settings()
    name, margin = settings.register.name, settings.register.margin
    onnx = check_checkpoint(onnx)
    verification = json.loads(require_file(report, "export report").read_text())
    if not verification.get("passed"):
        raise VerificationError(f"{report}: the export did not pass verification; refusing to register it")
    data = verification["data"]
    digest = hashlib.sha256(onnx.read_bytes() + json.dumps(verification, sort_keys=True).encode()).hexdigest()
    lineage = {"csfnet.git_commit": git_commit(), "csfnet.data_hash": data_hash(data), SHA_TAG: digest}
    with stage_run("register", params={"name": name, "margin": margin}, tags=lineage, final=final) as run:
        existing = _version_of(MlflowClient(), name, digest)
        if existing is not None:
            model_uri = existing.source
        else:
            model_uri = log_detector(onnx, split_images(data, "val")[0]).model_uri
            mlflow.log_dict(verification, "export/report.json")
        tags = {**lineage, "csfnet.run_id": run.info.run_id, "csfnet.weights": verification["weights"]}
        decision = register(model_uri, name, verification["verification"]["map50_95"], margin, tags, existing)
        mlflow.set_tags({"csfnet.registered_version": decision.version, "csfnet.promotion": decision.reason})
    if out:
        write_json(out, decision.to_json())
    return decision


def register(
    model_uri: str,
    name: str,
    map50_95: float,
    margin: float,
    tags: Mapping[str, str] | None = None,
    existing: ModelVersion | None = None,
) -> Decision:
    """Register ``model_uri`` as a new version of ``name`` (or complete ``existing``), make it challenger, promote
    it if it earns it."""
    client = MlflowClient()
    all_tags = {**(tags or {}), METRIC_TAG: repr(float(map50_95))}
    if existing is None:
        version = mlflow.register_model(model_uri, name, tags=all_tags)
    else:
        version = existing
        for key, value in all_tags.items():
            client.set_model_version_tag(name, version.version, key, value)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    if existing is not None and DECISION_TAG in existing.tags:  # decided before the kill: only settle again
        candidate = existing.tags.get(CANDIDATE_TAG) == "true"
        return Decision(
            name, version.version, map50_95, candidate, settle_champion(client, name), existing.tags[DECISION_TAG]
        )
    champion = _champion(client, name)
    if champion is None:
        candidate, reason = True, "first version: becomes champion"
    else:
        best = _metric(champion)
        candidate = map50_95 > best + margin
        verdict = "beats" if candidate else "does not beat"
        reason = f"mAP50-95 {map50_95:.4f} {verdict} champion v{champion.version} ({best:.4f}) by the margin {margin:g}"
    client.set_model_version_tag(name, version.version, CANDIDATE_TAG, str(candidate).lower())
    client.set_model_version_tag(name, version.version, DECISION_TAG, reason)
    final = settle_champion(client, name)
    return Decision(name, version.version, map50_95, candidate, final, reason)


def settle_champion(client: MlflowClient, name: str, attempts: int = 20) -> str | None:
    """Point ``champion`` at the best candidate; repeat until a read after the last write agrees."""
    for _ in range(attempts):
        candidates = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get(CANDIDATE_TAG) == "true"]
        if not candidates:
            return None
        target = max(candidates, key=lambda v: (_metric(v), int(v.version))).version
        current = _champion(client, name)
        if current is not None and current.version == target:
            return target
        client.set_registered_model_alias(name, CHAMPION, target)
        time.sleep(0.05)
    raise RuntimeError(f"registered model {name}: champion alias did not settle after {attempts} attempts")


def _version_of(client: MlflowClient, name: str, digest: str) -> ModelVersion | None:
    """The version of ``name`` registered from the ONNX file and report with this SHA-256, if any."""
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except mlflow.exceptions.MlflowException:
        return None
    return next((v for v in versions if v.tags.get(SHA_TAG) == digest), None)


def _champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def _metric(version: ModelVersion) -> float:
    return float(version.tags.get(METRIC_TAG, "-inf"))
