"""The raw-data step's content fingerprint: it changes exactly when the data behind the source changes."""

from __future__ import annotations

import shutil

import boto3
import pytest

from csfnet.errors import InputNotFoundError
from csfnet.kubeflow.fingerprint import source_fingerprint, synth_fingerprint

from .conftest import free_port
from .services import moto_s3

FILES = {
    "train/seq1/RGB.mp4": b"\x00video-one" * 100,
    "train/seq1/RGB_label.json": b'{"exist": [1], "gt_rect": [[1, 2, 3, 4]]}',
    "val/seq2/RGB.mp4": b"\x01video-two" * 100,
    "val/seq2/RGB_label.json": b'{"exist": [0], "gt_rect": [[]]}',
}


@pytest.mark.slow  # starts an S3 server
def test_object_store_fingerprint_follows_object_changes(monkeypatch):
    with moto_s3(free_port()) as endpoint:
        for key, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="data")
        for key, body in FILES.items():
            s3.put_object(Bucket="data", Key=f"raw/{key}", Body=body)

        first = source_fingerprint("s3://data/raw")
        assert source_fingerprint("s3://data/raw/") == first  # same objects, same fingerprint
        s3.put_object(Bucket="data", Key="elsewhere/x.mp4", Body=b"not under the source")
        s3.put_object(Bucket="data", Key="raw/train/seq1/RGB.mp4", Body=FILES["train/seq1/RGB.mp4"])  # rewritten as is
        assert source_fingerprint("s3://data/raw") == first

        changed = bytearray(FILES["val/seq2/RGB.mp4"])
        changed[5] ^= 0xFF  # one object, same size, different content
        s3.put_object(Bucket="data", Key="raw/val/seq2/RGB.mp4", Body=bytes(changed))
        second = source_fingerprint("s3://data/raw")
        assert second != first
        s3.put_object(Bucket="data", Key="raw/val/seq3/RGB.mp4", Body=b"new video")  # one more object
        assert source_fingerprint("s3://data/raw") not in {first, second}
        with pytest.raises(InputNotFoundError, match="not a folder"):
            source_fingerprint("s3://data/missing")


def test_local_fingerprint_hashes_contents(tmp_path):
    for rel, body in FILES.items():
        (tmp_path / "raw" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "raw" / rel).write_bytes(body)
    first = source_fingerprint(str(tmp_path / "raw"))
    shutil.copytree(tmp_path / "raw", tmp_path / "copy")  # new times, same contents
    assert source_fingerprint(str(tmp_path / "copy")) == first
    (tmp_path / "copy" / "val/seq2/RGB_label.json").write_bytes(b'{"exist": [1], "gt_rect": [[]]}')
    assert source_fingerprint(str(tmp_path / "copy")) != first
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="no files"):
        source_fingerprint(str(tmp_path / "empty"))


def test_synth_fingerprint_is_the_spec(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("synth: {width: 96, height: 64}\ntrain: {epochs: 3}\n")
    spec = {"train_videos": 2, "val_videos": 1, "frames": 6, "seed": 0}
    first = synth_fingerprint(spec, params)
    assert synth_fingerprint(dict(spec), params) == first
    assert synth_fingerprint({**spec, "frames": 7}, params) != first
    params.write_text("synth: {width: 96, height: 64}\ntrain: {epochs: 30}\n")  # another section: same data
    assert synth_fingerprint(spec, params) == first
    params.write_text("synth: {width: 160, height: 64}\ntrain: {epochs: 30}\n")
    assert synth_fingerprint(spec, params) != first
