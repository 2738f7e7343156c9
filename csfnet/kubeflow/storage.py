"""KServe storage initializer for ``models:/<name>/<version>`` URIs (ClusterStorageContainer ``csfnet-mlflow``).

KServe runs ``python -m csfnet.kubeflow.storage <storageUri> /mnt/models`` in the predictor pod before the server
starts; the MLflow model (MLmodel, code, ONNX file) lands in ``/mnt/models``, which the ``csfnet-mlflow``
ServingRuntime serves with ``mlflow models serve``. Tracking URI and credentials come from the pod's environment.
"""

from __future__ import annotations

import sys
from pathlib import Path


def download(model_uri: str, dest: str | Path) -> Path:
    """Download the MLflow model at ``model_uri`` into ``dest`` (``dest/MLmodel`` afterwards)."""
    import mlflow

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest))
    if not (dest / "MLmodel").is_file():
        raise FileNotFoundError(f"{model_uri}: no MLmodel file after download to {dest}")
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m csfnet.kubeflow.storage MODEL_URI DEST")
    print(f"downloaded {sys.argv[1]} to {download(sys.argv[1], sys.argv[2])}")
