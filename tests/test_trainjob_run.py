"""The pipeline step's TrainJob launcher against an HTTP server speaking the Kubernetes API paths it calls (no
cluster here): created in the namespace, node 0's log streamed, the outcome read from the TrainJob's conditions."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar
from urllib.parse import parse_qs, urlparse

import pytest
import yaml

from csfnet.kubeflow.trainjob import train_job
from csfnet.kubeflow.trainjob_run import TrainJobError, run_train_job

NS = "team-a"
JOBS = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/{NS}/trainjobs"
AT = "2026-12-02T01:00:00Z"


class FakeApi(BaseHTTPRequestHandler):
    """TrainJobs that report Created on the first read and ``outcome`` on the third; node 0's pod and its log."""

    store: ClassVar[dict] = {}
    outcome: ClassVar[dict] = {}
    calls: ClassVar[list] = []

    def log_message(self, *args):  # quiet
        pass

    def _reply(self, code: int, body: dict | str) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if isinstance(body, str) else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.calls.append(("create", self.path, body["metadata"]["name"]))
        if body["metadata"]["name"] in self.store:
            return self._reply(409, {"kind": "Status", "reason": "AlreadyExists", "code": 409})
        self.store[body["metadata"]["name"]] = {"job": body, "reads": 0}
        return self._reply(201, body)

    def do_GET(self):
        url = urlparse(self.path)
        if url.path.startswith(JOBS + "/"):
            entry = self.store[url.path.rsplit("/", 1)[1]]
            entry["reads"] += 1
            condition = {"type": "Created", "status": "True", "reason": "JobsCreationSucceeded", "message": "ok"}
            condition = self.outcome if entry["reads"] >= 3 else condition
            job = {**entry["job"], "metadata": {**entry["job"]["metadata"], "uid": "u-1", "resourceVersion": "7"}}
            return self._reply(200, {**job, "status": {"conditions": [{**condition, "lastTransitionTime": AT}]}})
        if url.path == f"/api/v1/namespaces/{NS}/pods":
            self.calls.append(("pods", parse_qs(url.query)["labelSelector"][0]))
            pod = {"metadata": {"name": "job-node-0-0"}, "status": {"phase": "Running"}}
            return self._reply(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [pod]})
        if url.path == f"/api/v1/namespaces/{NS}/pods/job-node-0-0/log":
            self.calls.append(("log", parse_qs(url.query)))
            return self._reply(200, "epoch 1/2\nepoch 2/2\n")
        return self._reply(404, {"kind": "Status", "code": 404})


@pytest.fixture
def api(tmp_path, monkeypatch):
    FakeApi.store, FakeApi.calls = {}, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": NS}}],
        "current-context": "c",
    }
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield FakeApi
    server.shutdown()


def test_a_completed_trainjob_is_created_followed_and_returned(api):
    api.outcome = {"type": "Complete", "status": "True", "reason": "JobsCompleted", "message": "done"}
    log = io.StringIO()
    job = train_job("csfnet-train-abc", ["--data", "/workspace/d/data.yaml"], nodes=2, gpus=4)
    done = run_train_job(job, namespace=NS, poll_s=0.01, log=log)
    assert done.status.conditions[0].type == "Complete"
    assert api.calls[0] == ("create", JOBS, "csfnet-train-abc")
    assert api.store["csfnet-train-abc"]["job"]["spec"]["trainer"]["numNodes"] == 2  # the manifest as rendered
    selector = "jobset.sigs.k8s.io/jobset-name=csfnet-train-abc,batch.kubernetes.io/job-completion-index=0"
    assert ("pods", selector) in api.calls
    (query,) = [c[1] for c in api.calls if c[0] == "log"]
    assert query["container"] == ["node"] and query["follow"] == ["True"]  # Go's ParseBool reads it
    assert "epoch 2/2" in log.getvalue()


def test_a_failed_trainjob_fails_with_its_reason_and_a_retry_waits_on_the_same_job(api):
    api.outcome = {"type": "Failed", "status": "True", "reason": "FailedJobs", "message": "node-1 OOMKilled"}
    job = train_job("csfnet-train-abc", ["--data", "x"], nodes=2)
    with pytest.raises(TrainJobError, match=r"team-a/csfnet-train-abc failed: FailedJobs: node-1 OOMKilled"):
        run_train_job(job, namespace=NS, poll_s=0.01, log=io.StringIO())
    log = io.StringIO()
    with pytest.raises(TrainJobError, match="FailedJobs"):  # a retried step: no second job, same outcome
        run_train_job(job, namespace=NS, poll_s=0.01, log=log)
    assert [c[0] for c in api.calls].count("create") == 2 and len(api.store) == 1
    assert "exists (a retried step)" in log.getvalue()
