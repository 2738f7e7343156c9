"""Ingestion from a data source into data/raw, and the DVC mechanism around it, in a temporary git + DVC repo:
a local folder and moto's S3 server as sources; an edited label re-runs extract and after; an unchanged source
re-runs nothing downstream and downloads nothing; a closed port fails within seconds and leaves data/raw as it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from csfnet.data.source import ingest
from csfnet.data.synth import SynthSpec
from csfnet.errors import DataError, InputNotFoundError, ServiceError
from csfnet.services import mask

from .conftest import REPO, TINY, free_port, tool
from .services import moto_s3

S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _edit_label(raw: Path) -> None:
    gt = raw / "train/uav_train_0000/gt/gt.txt"
    rows = gt.read_text().splitlines()
    cols = rows[0].split(",")
    cols[2] = f"{float(cols[2]) + 1:.2f}"  # one box moves by 1 px
    gt.write_text("\n".join([",".join(cols), *rows[1:]]) + "\n")


def test_local_ingest_copies_only_changes_and_mirrors_deletions(tiny_raw, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(tiny_raw, source)
    first = ingest(str(source), tmp_path / "raw")
    assert first["changed"] and first["downloaded"] == first["files"] == len(_tree(source))
    assert _tree(tmp_path / "raw") == _tree(source)
    video = tmp_path / "raw/train/uav_train_0001/uav_train_0001.mp4"
    inode = video.stat().st_ino
    assert ingest(str(source), tmp_path / "raw") == {
        **first,
        "downloaded": 0,
        "kept": first["files"],
        "bytes_downloaded": 0,
        "changed": False,
    }
    _edit_label(source)
    (source / "synth.json").unlink()
    again = ingest(str(source), tmp_path / "raw")
    assert (again["downloaded"], again["removed"], again["changed"]) == (1, 1, True)
    assert _tree(tmp_path / "raw") == _tree(source)
    assert video.stat().st_ino == inode  # unchanged files are linked from the previous tree, not copied again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "source"]  # no staging leftovers


def test_empty_or_missing_source_fails_and_keeps_previous_raw(tiny_raw, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    before = _tree(raw)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"data source .*empty is empty"):
        ingest(str(tmp_path / "empty"), raw)
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat/video.mp4").write_bytes(b"x")
    with pytest.raises(DataError, match=r"no train/ and val/ folders"):
        ingest(str(tmp_path / "flat"), raw)
    with pytest.raises(InputNotFoundError, match="missing"):
        ingest(str(tmp_path / "missing"), raw)
    assert _tree(raw) == before


def test_closed_port_fails_within_seconds_naming_the_masked_uri(tiny_raw, tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    shutil.copytree(tiny_raw, raw)
    before = _tree(raw)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    start = time.perf_counter()
    with pytest.raises(ServiceError, match=r"cannot read data source s3://csfnet-data/raw: EndpointConnectionError"):
        ingest("s3://csfnet-data/raw", raw)
    assert time.perf_counter() - start < 5
    assert _tree(raw) == before
    assert (
        mask("s3://AKIA:s3cr3t@bucket/raw?X-Amz-Signature=abc&x=1")
        == "s3://AKIA:***@bucket/raw?X-Amz-Signature=***&x=1"
    )


def test_synth_source_is_deterministic_and_skips_an_identical_spec(tmp_path):
    first = ingest("synth", tmp_path / "raw", TINY, workers=2)
    assert first["changed"] and (tmp_path / "raw/train/uav_train_0000/gt/gt.txt").is_file()
    stamp = (tmp_path / "raw/synth.json").stat().st_mtime_ns
    assert not ingest("synth", tmp_path / "raw", TINY)["changed"]
    assert (tmp_path / "raw/synth.json").stat().st_mtime_ns == stamp
    other = ingest("synth", tmp_path / "other", SynthSpec(**{**TINY.__dict__}), workers=2)
    assert _tree(tmp_path / "other") == _tree(tmp_path / "raw") and other["changed"]


# --- dvc repro end to end ------------------------------------------------------------------------------------------

PY = sys.executable
COUNT_STAGE = {  # a cheap stand-in for training: what re-runs after extraction
    "cmd": f"{PY} -c \"import json; r = json.load(open('data/dataset/report.json')); "
    "json.dump({s: v['boxes'] for s, v in r['splits'].items()}, open('counts.json', 'w'))\"",
    "deps": ["data/dataset"],
    "metrics": [{"counts.json": {"cache": False}}],
}


def _repo(tmp_path: Path, source: str) -> Path:
    """The project's own ingest and extract stages (and code, and params.yaml with ``data.source`` set)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([tool("dvc"), "init", "-q"], cwd=repo, check=True)
    shutil.copytree(REPO / "csfnet", repo / "csfnet", ignore=shutil.ignore_patterns("__pycache__"))
    project = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stages = {"ingest": project["ingest"], "extract": project["extract"], "count": COUNT_STAGE}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["source"] = source
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def _repro(repo: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    env.pop("CSFNET_PARAMS", None)  # the repository's own params.yaml
    proc = subprocess.run([tool("dvc"), "repro"], cwd=repo, env=env, capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(proc.stdout + proc.stderr)
    return proc


def _ran(proc: subprocess.CompletedProcess) -> list[str]:
    return [s for s in ("ingest", "extract", "count") if f"Running stage '{s}'" in proc.stdout]


def _raw_hash(repo: Path) -> str:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return lock["stages"]["ingest"]["outs"][0]["md5"]


def _check_cycle(repo: Path, edit, env: dict | None = None) -> None:
    """First run, an unchanged re-run, one edited label, then a closed port."""
    assert _ran(_repro(repo, env)) == ["ingest", "extract", "count"]
    first = _raw_hash(repo)
    again = _repro(repo, env)
    assert _ran(again) == ["ingest"], again.stdout  # the source is checked; nothing downstream re-runs
    assert '"downloaded": 0' in again.stdout and _raw_hash(repo) == first
    for path in (repo / "data/raw").rglob("*"):  # as after `dvc checkout`: same bytes, new modification times
        os.utime(path)
    touched = _repro(repo, env)
    assert _ran(touched) == ["ingest"] and '"downloaded": 0' in touched.stdout  # compared by content, not fetched
    edit()
    edited = _repro(repo, env)
    assert _ran(edited) == ["ingest", "extract", "count"] and '"downloaded": 1' in edited.stdout
    assert _raw_hash(repo) != first
    before = _tree(repo / "data/raw")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["data"]["source"] = "s3://csfnet-data/raw"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    closed = {**S3_ENV, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    start = time.perf_counter()
    failed = _repro(repo, closed, check=False)
    assert failed.returncode != 0 and time.perf_counter() - start < 20
    assert "s3://csfnet-data/raw" in failed.stdout + failed.stderr
    assert _tree(repo / "data/raw") == before


@pytest.mark.slow
def test_dvc_repro_with_a_local_folder_source(tiny_raw, tmp_path):
    source = tmp_path / "videos"
    shutil.copytree(tiny_raw, source)
    repo = _repo(tmp_path, str(source))
    _check_cycle(repo, lambda: _edit_label(source))
    subprocess.run([tool("dvc"), "remote", "add", "-d", "store", str(tmp_path / "store")], cwd=repo, check=True)
    subprocess.run([tool("dvc"), "push", "-q"], cwd=repo, check=True)
    pushed = {p.parent.name + p.name for p in (tmp_path / "store").rglob("*") if p.is_file()}
    raw = {hashlib.md5(p.read_bytes()).hexdigest() for p in (repo / "data/raw").rglob("*") if p.is_file()}
    frames = {hashlib.md5(p.read_bytes()).hexdigest() for p in (repo / "data/dataset").rglob("*.jpg")}
    assert raw <= pushed and frames and not frames & pushed  # `dvc push` sends the raw videos, not the frames


@pytest.mark.slow
def test_dvc_repro_with_an_s3_source(tiny_raw, tmp_path):
    import boto3

    with moto_s3(free_port()) as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, **_boto_args())
        s3.create_bucket(Bucket="videos")
        for path in tiny_raw.rglob("*"):
            if path.is_file():
                s3.upload_file(str(path), "videos", f"raw/{path.relative_to(tiny_raw).as_posix()}")
        repo = _repo(tmp_path, "s3://videos/raw")
        edited = tmp_path / "edited"
        shutil.copytree(tiny_raw, edited)
        _edit_label(edited)
        key = "raw/train/uav_train_0000/gt/gt.txt"
        _check_cycle(
            repo,
            lambda: s3.upload_file(str(edited / "train/uav_train_0000/gt/gt.txt"), "videos", key),
            {**S3_ENV, "AWS_ENDPOINT_URL": endpoint},
        )


def _boto_args() -> dict:
    return {
        "region_name": "us-east-1",
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
    }


def test_mlflow_dataset_input_carries_source_digest_and_counts(tiny_data, tmp_path):
    import json

    import mlflow

    from csfnet.mlflow_logger import mlflow_dataset

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    dataset = mlflow_dataset(tiny_data, "s3://key:secret@videos/raw", "0123456789abcdef0123456789abcdef.dir")
    with mlflow.start_run() as run:
        mlflow.log_input(dataset, context="training")
    inputs = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
    logged = inputs[0].dataset
    assert logged.digest == "0123456789abcdef0123456789abcdef.dir" and logged.name == "raw"
    assert json.loads(logged.source) == {"uri": "s3://key:***@videos/raw"} and "secret" not in logged.source
    assert json.loads(logged.profile)["train"]["boxes"] > 0 and inputs[0].tags[0].value == "training"
