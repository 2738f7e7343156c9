"""Only the pipeline may promote: a real `mlflow server --app-name basic-auth`, the users Job's entry point, and the
manifests that configure authentication and NetworkPolicies."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from .conftest import REPO, free_port
from .services import mlflow_server

ADMIN = ("admin", "admin-Pa55word-1")
PIPELINE = ("csfnet-pipeline", "pipeline-Pa55word-2")
SERVING = ("csfnet-serving", "serving-Pa55word-3")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    ini = root / "basic_auth.ini"
    ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{root / 'auth.db'}\n")
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-key",
    }
    with mlflow_server(f"sqlite:///{root / 'mlflow.db'}", root / "artifacts", free_port(), "basic-auth", env) as url:
        # the users Job's entry point, as infra/k8s/base/mlflow-users.yaml runs it
        job_env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": url,
            "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
            "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
            "CSFNET_PIPELINE_USERNAME": PIPELINE[0],
            "CSFNET_PIPELINE_PASSWORD": PIPELINE[1],
            "CSFNET_SERVING_USERNAME": SERVING[0],
            "CSFNET_SERVING_PASSWORD": SERVING[1],
        }
        cmd = [sys.executable, "-m", "csfnet.kubeflow.mlflow_users"]
        proc = subprocess.run(cmd, env=job_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "csfnet-pipeline: created" in proc.stdout and "csfnet-serving: created" in proc.stdout
        yield url


def _as(monkeypatch, url: str, user: tuple[str, str] | None) -> MlflowClient:
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    if user:
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user[0])
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    return MlflowClient(tracking_uri=url, registry_uri=url)  # explicit: other tests may set a global URI


@pytest.mark.slow  # starts a tracking server
def test_only_the_pipeline_moves_the_champion(auth_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    pipeline = _as(monkeypatch, auth_server, PIPELINE)  # the credentials pipeline steps get from secret csfnet-mlflow
    experiment = pipeline.create_experiment("csfnet-auth")
    run = pipeline.create_run(experiment)
    pipeline.create_registered_model("uav")
    version = pipeline.create_model_version("uav", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    pipeline.set_registered_model_alias("uav", "champion", version.version)
    assert pipeline.get_model_version_by_alias("uav", "champion").version == version.version

    body = {"name": "uav", "alias": "champion", "version": version.version}
    anonymous = requests.post(f"{auth_server}/api/2.0/mlflow/registered-models/alias", json=body, timeout=30)
    assert anonymous.status_code == 401
    wrong = requests.post(
        f"{auth_server}/api/2.0/mlflow/registered-models/alias", json=body, auth=(PIPELINE[0], "nope"), timeout=30
    )
    assert wrong.status_code == 401

    serving = _as(monkeypatch, auth_server, SERVING)  # read-only: may read the champion (to download it), never move it
    assert serving.get_model_version_by_alias("uav", "champion").version == version.version
    with pytest.raises(MlflowException, match=r"(?i)permission"):
        serving.set_registered_model_alias("uav", "champion", version.version)
    with pytest.raises(MlflowException):
        _as(monkeypatch, auth_server, None).set_registered_model_alias("uav", "champion", version.version)


@pytest.mark.slow  # starts a tracking server
def test_users_job_is_idempotent(auth_server):
    from csfnet.kubeflow.mlflow_users import ensure_users

    assert ensure_users(auth_server, ADMIN, dict([PIPELINE])) == {PIPELINE[0]: "updated"}
    with pytest.raises(Exception, match=r"(?i)cannot manage users|permission|unauthori"):
        ensure_users(auth_server, SERVING, {"intruder": "x-Pa55word-9"})


def _render(path: str) -> dict:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / path)], check=True, capture_output=True, text=True)
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(out.stdout)}


def test_manifests_turn_on_auth_and_fence_the_services():
    docs = _render("infra/k8s")
    server = docs[("Deployment", "mlflow")]["spec"]["template"]["spec"]
    container = server["containers"][0]
    assert "--app-name=basic-auth" in container["args"]
    assert {"name": "MLFLOW_AUTH_CONFIG_PATH", "value": "/etc/mlflow-auth/basic_auth.ini"} in container["env"]
    assert {e["secretRef"]["name"] for e in container["envFrom"]} >= {"csfnet-mlflow-admin", "csfnet-postgres"}
    assert server["volumes"][0]["secret"]["secretName"] == "csfnet-mlflow-auth"

    postgres = docs[("NetworkPolicy", "postgres-from-mlflow-only")]["spec"]
    assert postgres["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "postgres"}
    peers = [peer for rule in postgres["ingress"] for peer in rule["from"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}} in peers
    assert all(p.get("podSelector", {}).get("matchLabels") for p in peers)  # no open rule
    mlflow = docs[("NetworkPolicy", "mlflow-from-pipeline-and-serving")]["spec"]
    assert mlflow["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "mlflow"}
    (rule,) = mlflow["ingress"]
    assert [p["podSelector"]["matchLabels"] for p in rule["from"]] == [{"csfnet.io/mlflow-client": "true"}]
    job = docs[("Job", "mlflow-users")]["spec"]["template"]
    assert job["metadata"]["labels"]["csfnet.io/mlflow-client"] == "true"

    # no credential values anywhere: secrets are CHANGE_ME templates, everything else refers to them
    for (kind, name), doc in docs.items():
        if kind == "Secret":
            for key, value in doc["stringData"].items():
                if key.endswith(("PASSWORD", "SECRET_KEY", "SECRET_ACCESS_KEY", "KEY_ID")):
                    assert value == "CHANGE_ME", (name, key)
                if ("://" in value and "@" in value) or key.endswith(".ini"):
                    assert ":CHANGE_ME@" in value, (name, key)
        else:
            text = yaml.safe_dump(doc)
            assert "CHANGE_ME" not in text and "value: admin" not in text, (kind, name)
            assert not any(
                e.get("name", "").endswith("PASSWORD") and "value" in e
                for c in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
                for e in c.get("env", [])
            ), (kind, name)
