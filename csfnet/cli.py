"""``csfnet`` command line: parse, call the package function, print.

Every command takes its inputs and outputs as options and its settings as repeatable ``--set KEY=VALUE`` (a dotted
params.yaml key, ``args.KEY`` for the active preset's ultralytics arguments; the value read as YAML), plus a few
everyday aliases of keys (:mod:`csfnet.cli_options`). :func:`main` merges params.yaml with them once, through the
settings schema, and hands the handler one :class:`~csfnet.settings.Settings`; nothing here holds a default of its
own. Every user error (an unknown option or key, a bad value) ends in one line on stderr and exit code 2, and outputs
the failed command created are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from csfnet.cli_options import Parser, add_setting_options, check_options, command_settings, overrides
from csfnet.errors import CsfnetError, SettingsError
from csfnet.runlog import StageLogger
from csfnet.settings import Settings

EPILOG = "Settings not given with --set (or an alias) come from params.yaml (or $CSFNET_PARAMS)."
# removed after a user error if the command made them
OUTPUT_OPTIONS = ("out", "report", "work_dir", "pipeline_root", "cells_dir")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
Handler = Callable[[argparse.Namespace, Settings], int]


# --- handlers ---------------------------------------------------------------------------------------------------------


def _stage_logger(args: argparse.Namespace) -> StageLogger:
    """Where a stage records its run: MLflow, or nowhere with ``--no-mlflow``."""
    if args.no_mlflow:
        from csfnet.runlog import NullLogger

        return NullLogger()
    from csfnet.mlflow_logger import MlflowLogger

    return MlflowLogger()


def cmd_model_info(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.config_names import ALL_CONFIGS
    from csfnet.model import model_summary

    rows = [model_summary(name, imgsz=args.imgsz, nc=args.nc) for name in (args.configs or ALL_CONFIGS)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'config':<22}{'ch':>4}{'layers':>8}{'params':>14}{'GFLOPs':>10}   (nc={args.nc}, imgsz={args.imgsz})")
    for r in rows:
        print(f"{r['name']:<22}{r['channels']:>4}{r['layers']:>8}{r['params']:>14,}{r['gflops']:>10.2f}")
    if any(r["channels"] > 3 for r in rows):
        print("ch > 3: a temporal config, colour + its default motion channels; training builds it with data.yaml's")
        print("channels (3 + len(temporal.offsets))")
    return 0


def cmd_data_synth(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.data.synth import SynthSpec, generate

    spec = SynthSpec(**settings.synth.model_dump())
    out = generate(args.out, spec, workers=args.workers)
    print(f"wrote {spec.train_videos} train + {spec.val_videos} val videos to {out}")
    return 0


def cmd_data_fetch(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.data.source import ingest
    from csfnet.services import probe_s3

    if args.source.startswith("s3://"):
        probe_s3(args.source, settings.services.timeout)
    ingest(args.source, args.out)
    print(f"fetched {args.source} to {args.out}")
    return 0


def cmd_data_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.data.source import ingest
    from csfnet.data.synth import SynthSpec

    summary = ingest(
        settings.data.source, args.out, synth=SynthSpec(**settings.synth.model_dump()), workers=args.workers
    )
    print(json.dumps(summary))
    return 0


def cmd_data_extract(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.data.extract import extract_with_settings, merge_shards, parse_shard

    if args.shard and args.merge:
        raise SettingsError("--shard and --merge exclude each other: extract shards first, then merge them")
    if args.merge:
        report = merge_shards(args.source, args.merge, args.out, settings, args.workers, args.report)
    else:
        shard = parse_shard(args.shard) if args.shard else None
        report = extract_with_settings(args.source, args.out, settings, args.workers, args.report, shard=shard)
    print(json.dumps({k: v for k, v in report.items() if k != "sequences"}, indent=2))
    return 0


def cmd_data_stats(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.checks import check_dataset
    from csfnet.data.stats import dataset_stats

    check_dataset(args.data, ("val",))
    tile = args.tile or settings.extract.tile or settings.imgsz
    stats = dataset_stats(args.data, imgsz=settings.imgsz, out_dir=args.out, tile=tile)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for split, s in stats["splits"].items():
            print(
                f"{split}: {s['objects']} objects, median {s['source_px']['median']} px at source, "
                f"{s['train_px']['median']} px at imgsz {settings.imgsz}; {s['below_stride_share']:.0%} below stride 8"
            )
        t = stats["tiling"]
        print(f"recommended: {t['recommendation']} ({t['reason']})")
    if stats["warning"]:
        print(f"WARNING: {stats['warning']}", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.train import train

    if args.render_trainjob:  # GitOps: the Kubeflow TrainJob of this command instead of training here
        from csfnet.kubeflow.trainjob import render, train_job_for

        job = train_job_for(settings, args.data, args.out, args.partition, not args.no_mlflow, nodes=args.nodes)
        render(job, args.render_trainjob)
        print(f"wrote {args.render_trainjob}")
        return 0
    result = train(args.data, out=args.out, partition=args.partition, logger=_stage_logger(args), settings=settings)
    print(json.dumps({"best": str(result.best), "resumed": result.resumed, **result.metrics}, indent=2))
    return 0


def cmd_tune(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.tune import tune

    result = tune(
        args.data,
        out=args.out,
        work_dir=args.work_dir,
        worker=args.worker,
        logger=_stage_logger(args),
        settings=settings,
        revalidate=args.revalidate,
    )
    print(json.dumps(result.to_json(), indent=2))
    return 0


def cmd_compare(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.compare.run import compare

    if not args.data:
        raise CsfnetError("--data is required (or a sub-command: cell, report, data)")
    result = compare(args.data, out=args.out, cells_dir=args.cells_dir, logger=_stage_logger(args), settings=settings)
    print(_compare_text(result, args.out))
    return 0


def cmd_compare_cell(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.compare.cell import run_cell

    cell = run_cell(args.config, args.seed, args.data, args.out, logger=_stage_logger(args), settings=settings)
    print(json.dumps({k: cell[k] for k in ("config", "seed", "metrics", "train_s", "device")}, indent=2))
    return 0


def cmd_compare_report(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.compare.report import report

    result = report(args.cells, args.out, configured=args.configured, logger=_stage_logger(args), settings=settings)
    print(_compare_text(result, args.out))
    return 0


def cmd_compare_rescore(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.compare.rescore import rescore_report

    result = rescore_report(args.cells, args.eval_data, args.out, args.slice, args.configured, settings=settings)
    print(_compare_text(result, args.out))
    return 0


def cmd_compare_data(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.compare.data import bench_data

    print(f"wrote {bench_data(args.out, settings, workers=args.workers)}")
    return 0


def _compare_text(result: dict[str, Any], out: str) -> str:
    from csfnet.summary import compare_lines

    return f"report: {out}/compare.md, compare.json, compare.png\n{compare_lines(result)}"


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.evaluate import evaluate

    metrics = evaluate(
        args.weights,
        args.data,
        args.out,
        logger=_stage_logger(args),
        settings=settings,
        slice_size=args.slice,
        tracker=args.track,
        raw=args.raw,
    )
    print(json.dumps({k: metrics[k] for k in ("map50", "map50_95", "precision", "recall", "latency_ms_per_image")}))
    return 0


def cmd_robustness(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.robustness import noise_sweep

    logger = _stage_logger(args)
    rows = noise_sweep(args.weights, args.data, args.out, logger=logger, final=args.final, settings=settings)
    for row in rows:
        print("  ".join(f"{k}={v:.4g}" for k, v in row.items()))
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.export import export

    result = export(
        args.weights,
        args.out,
        args.data,
        calib_data=args.calib_data,
        report_path=args.report,
        logger=_stage_logger(args),
        settings=settings,
    )
    print(json.dumps(result.report, indent=2))
    if args.openvino:
        from csfnet.export import export_openvino

        x, e = settings.export, settings.eval
        out = Path(args.out).with_name(f"{Path(args.out).stem}_openvino_model")
        vino = export_openvino(
            args.weights,
            out,
            args.data,
            imgsz=settings.imgsz,
            int8=x.int8,
            calib_data=args.calib_data,
            calib_frames=x.calib_frames,
            report_path=Path(args.report or args.out).with_name("openvino.json"),
            verify_frames=x.verify_frames,
            batch=e.batch,
            conf=e.report_conf,
            iou=e.iou,
            map_conf=e.conf,
            end_to_end=e.end_to_end,
        )
        print(json.dumps(vino.report, indent=2))
    return 0


def cmd_detect(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.detect import detect

    result = detect(
        args.model,
        args.source,
        args.out,
        max_frames=args.max_frames,
        progress=True,
        end_to_end=settings.eval.end_to_end,
        **settings.detect.options(),
    )
    print(result.summary())
    return 0


def cmd_register(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.registry import register_export

    decision = register_export(args.onnx, args.report, out=args.out, final=args.final, settings=settings)
    print(json.dumps(decision.to_json(), indent=2))
    return 0


def cmd_summary(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.mlflow_tracking import ui_link
    from csfnet.summary import stage_metrics, summary

    metrics = stage_metrics(args.dvc_file)
    if not metrics:
        print(f"no metrics yet: run `dvc repro` (looked for the metrics files named in {args.dvc_file})")
        return 1
    print(summary(metrics))
    local = not os.environ.get("MLFLOW_TRACKING_URI")  # read first: MLflow exports the store it points at
    link = ui_link()
    if link:
        after = " (after: mlflow ui --backend-store-uri sqlite:///mlruns.db)" if local else ""
        print(f"compare runs: {link}{after}")
    return 0


def cmd_pipeline_compile(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.kubeflow.client import compile_pipeline

    out = args.out or f"pipelines/{args.pipeline}_pipeline.yaml"
    path = compile_pipeline(out, pipeline=args.pipeline, settings=overrides(args), **_cluster_options(args))
    print(f"wrote {path}")
    return 0


def cmd_pipeline_submit(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.kubeflow.client import submit

    run = submit(
        args.host, _pipeline_params(args), args.experiment, args.token, pipeline=args.pipeline, **_cluster_options(args)
    )
    print(f"submitted run {run.run_id} to {args.host}")
    return 0


def cmd_pipeline_run_local(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.kubeflow.client import run_local

    task = run_local(_pipeline_params(args), args.pipeline_root, cache=not args.no_cache, pipeline=args.pipeline)
    decision = Path(task.output.path)
    print(decision.read_text() if decision.is_file() else f"pipeline finished; outputs under {args.pipeline_root}")
    return 0


def cmd_deploy(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.kubeflow.deploy import deploy_champion
    from csfnet.mlflow_tracking import configure

    configure()  # the champion is looked up in the configured MLflow registry
    v = settings.serving
    isvc, _ = deploy_champion(
        settings.register.name, model_uri=args.model_uri, service=v.name, render_to=args.render, **v.options()
    )
    if args.render:
        print(f"wrote {args.render}")
    else:
        namespace = isvc.metadata.namespace or "(current namespace)"
        print(f"applied InferenceService {namespace}/{v.name} serving {isvc.spec.predictor.model.storage_uri}")
    return 0


def _pipeline_params(args: argparse.Namespace) -> dict[str, Any]:
    """``--param`` pipeline arguments, with ``--set`` (already validated by :func:`main`) as the ``settings`` mapping
    every step receives."""
    from csfnet.kubeflow.client import parse_params

    params = parse_params(args.param or [])
    chosen = overrides(args)
    if chosen:
        params["settings"] = {**params.get("settings", {}), **chosen}
    return params


def _cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    from csfnet.kubeflow.client import parse_params

    tolerations = []
    for spec in args.toleration or []:  # key=value:Effect or key:Effect
        key_value, _, effect = spec.rpartition(":")
        key, sep, value = key_value.partition("=")
        operator = "Equal" if sep else "Exists"
        tolerations.append({"key": key, "operator": operator, "value": value or None, "effect": effect})
    options = {
        "gpus": args.gpus,
        "node_selector": {k: str(v) for k, v in parse_params(args.node_selector or []).items()},
        "tolerations": tolerations,
    }
    if args.train_nodes != 1 or args.gpus_per_node is not None or args.extract_workers != 1:  # csfnet pipeline only
        if args.pipeline != "csfnet":
            raise SettingsError("--train-nodes, --gpus-per-node and --extract-workers apply to the csfnet pipeline")
        if args.train_nodes < 1 or args.extract_workers < 1:
            raise SettingsError("--train-nodes and --extract-workers must be >= 1")
        options.update(
            train_nodes=args.train_nodes, gpus_per_node=args.gpus_per_node, extract_workers=args.extract_workers
        )
    return options


# --- parser -----------------------------------------------------------------------------------------------------------


def _command(sub: Any, name: str, handler: Handler, helptext: str) -> argparse.ArgumentParser:
    """A command with ``--set`` and the everyday aliases :data:`csfnet.cli_options.ALIASES` gives it."""
    parser = sub.add_parser(name, help=helptext, description=helptext, epilog=EPILOG)
    parser.set_defaults(func=handler)
    add_setting_options(parser)
    return parser


def _validation_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--weights", required=True, help="trained .pt")
    p.add_argument("--data", required=True, help="data.yaml (its val split is used)")
    p.add_argument("--out", default=default_out, help="output folder (replaced)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="csfnet", description=__doc__.splitlines()[0], epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="model configurations").add_subparsers(dest="action", required=True)
    p = _command(model, "info", cmd_model_info, "layers, parameters and GFLOPs of every configuration")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--imgsz", type=int, default=640, help="image size the GFLOPs are counted at")
    p.add_argument("--nc", type=int, default=1, help="number of classes")
    p.add_argument("configs", nargs="*", help="configs to show (default: all)")

    data = sub.add_parser("data", help="synthesise, fetch, extract and inspect datasets")
    data = data.add_subparsers(dest="action", required=True)
    p = _command(data, "synth", cmd_data_synth, "generate the synthetic micro-UAV video benchmark (synth.*)")
    p.add_argument("--out", required=True, help="raw dataset folder to create")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")

    p = _command(data, "fetch", cmd_data_fetch, "copy a raw dataset root from s3://... or any fsspec URI")
    p.add_argument("--source", required=True, help="URI of a folder with train/ and val/")
    p.add_argument("--out", required=True, help="local folder to create")

    p = _command(data, "ingest", cmd_data_ingest, "bring data.source into a raw root, copying only what changed")
    p.add_argument("--out", required=True, help="raw root to update (data/raw)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")

    p = _command(data, "extract", cmd_data_extract, "validate raw videos and write a YOLO dataset (extract.*)")
    p.add_argument("--source", required=True, help="raw root with train/ and val/ (and optionally test/)")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--report", help="folder for the ingestion report (ingest.json, sequences.json, ingest.html)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")
    p.add_argument("--shard", metavar="K/N", help="extract only the sequences whose index is K modulo N")
    p.add_argument("--merge", action="append", metavar="SHARD", help="shard extraction to reuse (repeatable)")

    p = _command(data, "stats", cmd_data_stats, "object size distribution and a histogram")
    p.add_argument("--data", required=True, help="data.yaml")
    p.add_argument("--tile", type=int, help="tile size to compare downscaling with (default: extract.tile or imgsz)")
    p.add_argument("--out", help="folder for stats.json and size_histogram.png")
    p.add_argument("--json", action="store_true")

    p = _command(sub, "train", cmd_train, "train a configuration with ultralytics (train.*, presets)")
    p.add_argument("--data", required=True, help="data.yaml")
    p.add_argument("--partition", help="`csfnet tune`'s JSON with a CSwitch partition (default: the config's own)")
    p.add_argument("--out", default="runs/train", help="run folder (gets weights/best.pt)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--render-trainjob", metavar="PATH", help="write the Kubeflow TrainJob here instead of training")
    p.add_argument("--nodes", type=int, default=1, help="nodes of the rendered TrainJob (>1: under torchrun)")

    p = _command(sub, "tune", cmd_tune, "Optuna search for the CSwitch partition (tune.*)")
    p.add_argument("--data", required=True, help="data.yaml")
    p.add_argument("--worker", type=int, default=0, help="index of this worker among those sharing a study")
    p.add_argument("--work-dir", default="runs/tune", help="trial folders and the default SQLite study")
    p.add_argument("--out", default="metrics/tune/best_partition.json", help="best partition JSON")
    p.add_argument("--no-mlflow", action="store_true")
    p.add_argument(
        "--no-revalidate",
        dest="revalidate",
        action="store_false",
        help="only run trials (workers sharing a study); a final `csfnet tune` retrains the winner and decides",
    )

    p = _command(sub, "compare", cmd_compare, "configurations x seeds at equal budget: table with intervals")
    p.add_argument("--data", help="data.yaml every configuration trains and validates on")
    p.add_argument("--cells-dir", default="runs/compare", help="cell folders; finished cells are reused")
    p.add_argument("--out", default="metrics/compare", help="report folder (compare.md/json/png)")
    p.add_argument("--no-mlflow", action="store_true")
    actions = p.add_subparsers(dest="action")
    q = _command(actions, "cell", cmd_compare_cell, "train and score one configuration with one seed")
    q.add_argument("--config", required=True, help="configuration")
    q.add_argument("--seed", required=True, type=int)
    q.add_argument("--data", required=True, help="data.yaml")
    q.add_argument("--out", required=True, help="cell folder (cell.json, matches.npz, weights/best.pt)")
    q.add_argument("--no-mlflow", action="store_true")
    q = _command(actions, "report", cmd_compare_report, "the table with intervals from finished cells")
    q.add_argument("--cells", required=True, nargs="+", help="cell folders, or folders holding them")
    q.add_argument("--configured", action="store_true", help="only the cells of compare.configs x compare.seeds")
    q.add_argument("--out", required=True, help="report folder (compare.md/json/png)")
    q.add_argument("--no-mlflow", action="store_true")
    q = _command(actions, "rescore", cmd_compare_rescore, "the same cells scored on another dataset (sliced)")
    q.add_argument("--cells", required=True, nargs="+", help="cell folders, or folders holding them")
    q.add_argument("--eval-data", required=True, help="data.yaml whose val split the cells' weights are scored on")
    q.add_argument("--slice", type=int, default=0, help="slices of this many native px (detect.* overlap, merge)")
    q.add_argument("--configured", action="store_true", help="only the cells of compare.configs x compare.seeds")
    q.add_argument("--out", required=True, help="report folder (compare.md/json/png)")
    q = _command(actions, "data", cmd_compare_data, "the bench data: synth benchmark at compare.synth sizes")
    q.add_argument("--out", required=True, help="folder receiving raw/ and dataset/")
    q.add_argument("--workers", type=int, help="processes (default: all cores)")

    p = _command(sub, "eval", cmd_eval, "mAP, size-band AP/recall, per-sequence recall, latency, plots (eval.*)")
    _validation_options(p, "metrics/eval")
    p.add_argument("--slice", type=int, help="also AP by size band with slices of this size against full frames")
    p.add_argument("--track", choices=["bytetrack", "botsort"], help="also HOTA/MOTA/IDF1 on the val sequences")
    p.add_argument("--raw", default="data/raw", help="raw root whose val sequences carry track IDs (for --track)")
    p = _command(sub, "robustness", cmd_robustness, "metrics under Gaussian noise of growing sigma (robustness.*)")
    _validation_options(p, "metrics/robustness")
    p.add_argument("--final", action="store_true", help="last stage of the pipeline: close the parent run")

    p = _command(sub, "export", cmd_export, "ONNX export verified with onnxruntime, optional INT8 (export.*)")
    p.add_argument("--weights", required=True, help="trained .pt")
    p.add_argument("--data", required=True, help="data.yaml whose val split verifies the export")
    p.add_argument("--out", default="models/csfnet.onnx", help="FP32 ONNX file (INT8: <stem>-int8.onnx)")
    p.add_argument("--report", help="verification report JSON (default: next to --out)")
    p.add_argument("--calib-data", help="data.yaml whose train frames calibrate INT8 (default: --data)")
    p.add_argument("--openvino", action="store_true", help="also OpenVINO FP32 (and INT8 through NNCF), verified")
    p.add_argument("--no-mlflow", action="store_true")

    helptext = "drones in a video, images or a stream: annotated video, MOT tracks (detect.*)"
    p = _command(sub, "detect", cmd_detect, helptext)
    p.add_argument("--model", required=True, help=".pt, .onnx (FP32/INT8), an OpenVINO folder or models:/name@alias")
    p.add_argument("--source", required=True, help="video file, image folder or glob, or stream URL")
    p.add_argument("--out", required=True, help="output folder (annotated.mp4, mot.txt, detections.jsonl)")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")

    p = _command(sub, "register", cmd_register, "register the ONNX model in MLflow; champion/challenger (register.*)")
    p.add_argument("--onnx", required=True, help="verified ONNX model")
    p.add_argument("--report", required=True, help="its verification report (gives mAP50-95 and the data)")
    p.add_argument("--out", help="JSON with the version and the promotion decision")
    p.add_argument("--final", action="store_true", help="last stage of the pipeline: close the parent run")

    helptext = "serve the registry's champion on KServe (or --render its manifest) (serving.*)"
    p = _command(sub, "deploy", cmd_deploy, helptext)
    p.add_argument("--model-uri", help="models:/<name>/<version> to serve instead of the champion")
    p.add_argument("--render", metavar="PATH", help="write the manifest here (GitOps) instead of applying it")

    p = _command(sub, "summary", cmd_summary, "headline figures of the last pipeline run (from dvc.yaml's metrics)")
    p.add_argument("--dvc-file", default="dvc.yaml", help="dvc.yaml whose stages name the metrics files")

    pipeline = sub.add_parser("pipeline", help="Kubeflow Pipelines").add_subparsers(dest="action", required=True)
    p = _command(pipeline, "compile", cmd_pipeline_compile, "write the pipeline's IR YAML")
    p.add_argument("--out", help="IR YAML to write (default: pipelines/<pipeline>_pipeline.yaml)")
    _cluster_arguments(p)
    helptext = "submit a run to a Kubeflow Pipelines endpoint (--set: the run's settings mapping)"
    p = _command(pipeline, "submit", cmd_pipeline_submit, helptext)
    p.add_argument("--host", required=True, help="Kubeflow Pipelines API, e.g. https://kubeflow.example/pipeline")
    p.add_argument("--experiment", default="csfnet", help="Kubeflow experiment")
    p.add_argument("--token", help="bearer token (default: $KF_PIPELINES_TOKEN, else kube credentials)")
    p.add_argument("--param", action="append", metavar="K=V", help="pipeline parameter, e.g. source_uri (repeatable)")
    _cluster_arguments(p)
    helptext = "run the pipeline here (kfp SubprocessRunner; --set: the run's settings mapping)"
    p = _command(pipeline, "run-local", cmd_pipeline_run_local, helptext)
    p.add_argument("--pipeline-root", default="runs/kfp", help="where local artifacts are written")
    p.add_argument("--param", action="append", metavar="K=V", help="pipeline parameter, e.g. source_uri (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="run every step again instead of reusing cached ones")
    _pipeline_choice(p)
    return parser


def _pipeline_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pipeline",
        choices=["csfnet", "compare", "detect"],
        default="csfnet",
        help="csfnet (the pipeline), compare or detect (csfnet detect over a folder or bucket of videos)",
    )


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    _pipeline_choice(p)
    p.add_argument("--gpus", type=int, default=1, help="GPUs for tune and train (0: CPU only)")
    p.add_argument("--node-selector", action="append", metavar="K=V", help="node label for GPU steps")
    p.add_argument("--toleration", action="append", metavar="KEY[=VALUE]:EFFECT", help="taint GPU steps tolerate")
    p.add_argument("--train-nodes", type=int, default=1, help="nodes of training (>1: a Kubeflow Trainer TrainJob)")
    p.add_argument("--gpus-per-node", type=int, help="GPUs of each TrainJob node (default: --gpus)")
    p.add_argument("--extract-workers", type=int, default=1, help="pods extraction fans out over (sequence shards)")


# --- entry point ------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csfnet`` console command: parse, merge params.yaml with the command line once, run."""
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    made = [_first_missing(Path(p)) for p in (getattr(args, o, None) for o in OUTPUT_OPTIONS) if p]
    _plain_logs()
    try:
        return args.func(args, command_settings(args))
    except (CsfnetError, ValueError, FileNotFoundError) as e:
        if os.environ.get("CSFNET_DEBUG"):
            raise
        for path in filter(None, made):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        message = " ".join(ANSI.sub("", str(e)).split())
        command = " ".join(x for x in (args.command, getattr(args, "action", None)) if x)
        print(f"csfnet {command}: error: {message}", file=sys.stderr)
        return 2


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    """The parsed command line; an unknown option or a malformed one exits 2 with one line naming it."""
    parser = build_parser()
    check_options(parser, argv)
    return parser.parse_args(argv)


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet (what creating ``path`` would add), or None."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _plain_logs() -> None:
    """No ANSI colour codes from ultralytics' logger when stderr is not a terminal."""
    if sys.stderr.isatty():
        return
    import logging

    class _Plain(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            record.msg = ANSI.sub("", str(record.msg))
            return True

    logger = logging.getLogger("ultralytics")
    if not any(isinstance(f, _Plain) for f in logger.filters):
        logger.addFilter(_Plain())


if __name__ == "__main__":
    sys.exit(main())
