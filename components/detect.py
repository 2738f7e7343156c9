"""Detection over an archive of videos: plan the shards, detect in parallel, merge the summaries
(:mod:`csfnet.kubeflow.detect_batch`). None of these steps is cached: what they do depends on the output folder's
contents (finished videos are skipped), not only on their inputs."""

from kfp.dsl import Markdown, Output

from components.image import component


@component
def detect_shards(source_uri: str, out: str, workers: int, settings: dict = {}) -> list:  # noqa: B006
    """``[{"videos": [...], "settings": settings}, ...]``: the unfinished videos of ``source_uri`` dealt over
    ``workers`` shards; ``settings`` (dotted keys, as ``--set``) is checked here, before any detection."""
    from csfnet.kubeflow.detect_batch import list_videos, plan_shards
    from csfnet.kubeflow.step import merged

    merged(settings)
    return [
        {"videos": shard, "settings": dict(settings)} for shard in plan_shards(list_videos(source_uri), out, workers)
    ]


@component
def detect_shard(videos: list, model: str, out: str, settings: dict = {}) -> dict:  # noqa: B006
    """``csfnet detect`` on each unfinished video into ``<out>/<stem>/``; the stems run and skipped."""
    from csfnet.kubeflow.detect_batch import detect_videos
    from csfnet.kubeflow.step import set_flags

    return detect_videos(videos, model, out, set_flags(settings))


@component
def detect_summary(source_uri: str, out: str, shards: list, table: Output[Markdown]) -> dict:
    """``<out>/summary.json`` over every video of ``source_uri``; ``shards``: what each shard ran. The videos
    finished before this run count as skipped."""
    from csfnet.kubeflow.detect_batch import list_videos, merge_summaries

    summary = merge_summaries(list_videos(source_uri), out)
    ran = sorted(stem for shard in shards for stem in shard["ran"])
    skipped = sorted(set(summary["per_video"]) - set(ran))  # finished before: never dealt to a shard
    rows = [f"| {stem} | {s['frames']} | {s['detections']} |" for stem, s in summary["per_video"].items()]
    lines = ["| video | frames | detections |", "|---|---:|---:|", *rows, ""]
    lines.append(f"{summary['finished']}/{summary['videos']} videos finished; this run: {len(ran)} run, ")
    lines[-1] += f"{len(skipped)} skipped as finished; missing: {', '.join(summary['missing']) or 'none'}"
    with open(table.path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return {"ran": ran, "skipped": skipped, "finished": summary["finished"], "videos": summary["videos"]}
