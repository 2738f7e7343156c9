"""The champion's KServe InferenceService: built with the kserve SDK, validated by its models, written for GitOps."""

from __future__ import annotations

import mlflow
import pytest
import yaml
from mlflow import MlflowClient

from csfnet.errors import ServiceError, SettingsError
from csfnet.kubeflow.deploy import champion_uri, from_dict, inference_service, render


def test_manifest_carries_the_champion_runtime_resources_and_canary(tmp_path):
    isvc = inference_service(
        "uav-detector", "models:/uav/7", namespace="team", canary_percent=10, cpu="2", memory="4Gi"
    )
    out = tmp_path / "gitops" / "isvc.yaml"
    text = render(isvc, out)
    assert out.read_text() == text and not list(out.parent.glob(".*tmp*"))
    data = yaml.safe_load(text)
    assert (data["apiVersion"], data["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    parsed = from_dict(data)  # the kserve SDK's models accept it, field for field
    predictor = parsed.spec.predictor
    assert predictor.model.storage_uri == "models:/uav/7"
    assert predictor.model.runtime == "csfnet-mlflow" and predictor.model.model_format.name == "mlflow"
    assert predictor.model.resources.requests == {"cpu": "2", "memory": "4Gi"}
    assert predictor.model.resources.limits == {"memory": "4Gi"}
    assert predictor.canary_traffic_percent == 10
    assert predictor.labels == {"csfnet.io/mlflow-client": "true"}  # NetworkPolicy: the model download reaches MLflow
    assert (parsed.metadata.name, parsed.metadata.namespace) == ("uav-detector", "team")
    assert "canaryTrafficPercent" not in yaml.safe_load(render(inference_service("a", "models:/uav/7")))["spec"]


def test_validation_rejects_what_kserve_would():
    data = yaml.safe_load(render(inference_service("a", "models:/uav/1")))
    data["spec"]["predictor"]["modle"] = {}
    with pytest.raises(SettingsError, match="has no field 'modle'"):
        from_dict(data)
    for kwargs, message in [
        ({"name": "Bad_Name", "model_uri": "models:/uav/1"}, "DNS label"),
        ({"name": "a", "model_uri": "models:/uav@champion"}, "models:/<name>/<version>"),
        ({"name": "a", "model_uri": "runs:/abc/model"}, "models:/<name>/<version>"),
        ({"name": "a", "model_uri": "models:/uav/1", "canary_percent": 0}, "between 1 and 100"),
        ({"name": "a", "model_uri": "models:/uav/1", "canary_percent": 101}, "between 1 and 100"),
    ]:
        with pytest.raises(SettingsError, match=message):
            inference_service(**kwargs)


def test_champion_uri_resolves_the_alias(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", None)  # no global URI
    client = MlflowClient()
    client.create_registered_model("uav")
    for _ in range(3):
        client.create_model_version("uav", str(tmp_path / "model"))
    client.set_registered_model_alias("uav", "champion", "2")
    assert champion_uri("uav") == "models:/uav/2"
    with pytest.raises(ServiceError, match="no 'champion' version"):
        champion_uri("unknown")


def test_cli_renders_the_manifest_for_gitops(tmp_path):
    from csfnet.cli import main

    code = main(
        ["deploy", "--model-uri", "models:/csfnet-uav/3", "--set", "serving.canary_percent=10", "--render", "isvc.yaml"]
    )
    manifest = yaml.safe_load((tmp_path / "isvc.yaml").read_text())
    assert code == 0
    predictor = manifest["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == "models:/csfnet-uav/3" and predictor["canaryTrafficPercent"] == 10
    assert predictor["model"]["runtime"] == "csfnet-mlflow" and manifest["metadata"]["name"] == "csfnet"
