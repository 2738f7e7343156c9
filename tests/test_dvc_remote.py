"""DVC data versioning against a real S3-compatible server (moto) on loopback."""

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import free_port, tool
from .services import moto_s3


def _run(*cmd: str, cwd: Path, env: dict | None = None) -> str:
    return subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.mark.slow  # starts an S3 server
def test_dvc_push_to_s3_and_pull_restores_identical_bytes(tiny_raw, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with moto_s3(free_port()) as endpoint:
        import boto3

        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        ).create_bucket(Bucket="csfnet-dvc")
        _run("git", "init", "-q", cwd=repo)
        _run(tool("dvc"), "init", "-q", cwd=repo)
        _run(tool("dvc"), "remote", "add", "-d", "s3", "s3://csfnet-dvc/store", cwd=repo)
        _run(tool("dvc"), "remote", "modify", "s3", "endpointurl", endpoint, cwd=repo)
        shutil.copytree(tiny_raw, repo / "raw")
        _run(tool("dvc"), "add", "raw", cwd=repo)
        _run(tool("dvc"), "push", cwd=repo, env=env)
        shutil.rmtree(repo / "raw")
        shutil.rmtree(repo / ".dvc" / "cache")
        _run(tool("dvc"), "pull", cwd=repo, env=env)
    files = sorted(p.relative_to(tiny_raw) for p in tiny_raw.rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(repo / "raw") for p in (repo / "raw").rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(tiny_raw, repo / "raw", [str(f) for f in files], shallow=False)
    assert not mismatch and not errors and len(match) == len(files)
