"""The detection pipeline (`csfnet pipeline ... --pipeline detect`): its IR, and a local run over three videos that a
re-run resumes, skipping the finished ones."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import yaml

from csfnet.kubeflow.client import compile_pipeline

from .conftest import REPO, tool


def test_ir_fans_detection_out_over_shards_on_the_shared_claim(tmp_path):
    pipeline, platform = yaml.safe_load_all(
        compile_pipeline(tmp_path / "d.yaml", pipeline="detect", gpus=1).read_text()
    )
    root = pipeline["root"]
    assert set(root["inputDefinitions"]["parameters"]) == {"source_uri", "model", "out", "workers", "settings"}
    tasks = root["dag"]["tasks"]
    (loop,) = [n for n, t in tasks.items() if "parameterIterator" in t]
    assert tasks[loop]["parameterIterator"]["items"] == {"inputParameter": "pipelinechannel--detect-shards-Output"}
    assert set(pipeline["components"][f"comp-{loop}"]["dag"]["tasks"]) == {"detect-shard"}
    assert tasks["detect-summary"]["dependentTasks"] == [loop]
    inner = pipeline["components"][f"comp-{loop}"]["dag"]["tasks"]["detect-shard"]
    every = [tasks["detect-shards"], tasks["detect-summary"], inner]
    assert not any(t["cachingOptions"].get("enableCache") for t in every)  # the work depends on `out`'s contents
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for executor in executors.values():  # every step sees the shared output folder
        assert executor["pvcMount"][0]["mountPath"] == "/workspace"
    gpu = pipeline["deploymentSpec"]["executors"]["exec-detect-shard"]["container"]["resources"]["accelerator"]
    assert (gpu["resourceType"], gpu["resourceCount"]) == ("nvidia.com/gpu", "1")


@pytest.mark.slow
@pytest.mark.e2e
def test_local_run_detects_every_video_and_resumes(tiny_raw, tiny_weights, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for video in sorted(tiny_raw.rglob("*.mp4"))[:3]:
        shutil.copy(video, videos / video.name)
    stems = sorted(p.stem for p in videos.iterdir())
    assert len(stems) == 3
    out = tmp_path / "detections"
    params = [f"source_uri={videos}", f"model={tiny_weights}", f"out={out}", "workers=2"]
    cmd = [tool("csfnet"), "pipeline", "run-local", "--pipeline", "detect", "--pipeline-root", str(tmp_path / "kfp")]
    cmd += [arg for p in params for arg in ("--param", p)]
    cmd += ["--set", "detect.save_video=false", "--set", "detect.slice=0", "--set", "detect.conf=0.01"]

    def run() -> dict:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "videos finished" in proc.stdout  # the Markdown table is the run's output
        return json.loads((out / "summary.json").read_text())

    summary = run()
    assert summary["videos"] == summary["finished"] == 3 and summary["missing"] == []
    assert sorted(summary["per_video"]) == stems and summary["frames"] == sum(
        json.loads((out / s / "summary.json").read_text())["frames"] for s in stems
    )
    assert all((out / s / "detections.jsonl").is_file() for s in stems)
    kept = {s: (out / s / "summary.json").stat().st_ino for s in stems[1:]}
    shutil.rmtree(out / stems[0])  # an interrupted run: one video unfinished

    summary = run()
    assert summary["finished"] == 3 and (out / stems[0] / "summary.json").is_file()
    assert {s: (out / s / "summary.json").stat().st_ino for s in stems[1:]} == kept  # finished ones skipped
    found = (tmp_path / "kfp").rglob("detect-summary/executor_output.json")
    outputs = [json.loads(p.read_text())["parameterValues"]["Output"] for p in found]
    assert {"ran": [stems[0]], "skipped": stems[1:], "finished": 3, "videos": 3} in outputs
    run()  # everything finished: nothing runs again
    found = (tmp_path / "kfp").rglob("detect-summary/executor_output.json")
    outputs = [json.loads(p.read_text())["parameterValues"]["Output"] for p in found]
    assert {"ran": [], "skipped": stems, "finished": 3, "videos": 3} in outputs


@pytest.mark.slow  # starts an S3 server
def test_videos_of_a_bucket_are_listed_downloaded_detected_and_skipped_once_finished(
    tiny_raw, tiny_weights, tmp_path, monkeypatch
):
    """The shard step's work on a bucket (moto's S3 server): every video under the prefix, each downloaded and
    detected into its own folder, skipped on the next pass; two videos with one name are refused."""
    import boto3

    from csfnet.errors import DataError
    from csfnet.kubeflow.detect_batch import detect_videos, list_videos, merge_summaries, plan_shards

    from .conftest import free_port
    from .services import moto_s3

    keys = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in keys.items():
        monkeypatch.setenv(key, value)
    with moto_s3(free_port()) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="flights")
        videos = sorted(tiny_raw.rglob("*.mp4"))[:2]
        for video in videos:
            s3.upload_file(str(video), "flights", f"archive/day1/{video.name}")
        s3.put_object(Bucket="flights", Key="archive/notes.txt", Body=b"not a video")
        found = list_videos("s3://flights/archive")
        assert found == [f"s3://flights/archive/day1/{v.name}" for v in videos]
        out = tmp_path / "out"
        flags = ["--set", "detect.save_video=false", "--set", "detect.slice=0"]
        assert plan_shards(found, out, 3) == [[found[0]], [found[1]], []]
        assert detect_videos(found, str(tiny_weights), out, flags) == {"ran": [v.stem for v in videos], "skipped": []}
        assert plan_shards(found, out, 3) == [[], [], []]  # finished: nothing left to deal
        assert detect_videos(found, str(tiny_weights), out, flags) == {"ran": [], "skipped": [v.stem for v in videos]}
        assert merge_summaries(found, out)["finished"] == 2 and (out / "summary.json").is_file()
        s3.upload_file(str(videos[0]), "flights", f"archive/day2/{videos[0].name}")
        with pytest.raises(DataError, match="share the name"):
            list_videos("s3://flights/archive")
