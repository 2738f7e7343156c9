"""``csfnet`` command line: parse, call the package function, print.

Options whose destination is a dotted settings key (``train.model``, ``args.epochs`` for the active preset's
ultralytics arguments) override ``params.yaml`` through the settings schema; nothing here holds a default of its
own. Every user error ends in one line on stderr and exit code 2, and outputs the failed command created are removed.
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

from csfnet.errors import CsfnetError
from csfnet.runlog import StageLogger
from csfnet.settings import Settings, load_settings

EPILOG = "Settings not given on the command line come from params.yaml (or $CSFNET_PARAMS)."
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
    from csfnet.model import ALL_CONFIGS, model_summary

    rows = [model_summary(name, imgsz=args.imgsz, nc=args.nc) for name in (args.configs or ALL_CONFIGS)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'config':<22}{'layers':>8}{'params':>14}{'GFLOPs':>10}   (nc={args.nc}, imgsz={args.imgsz})")
    for r in rows:
        print(f"{r['name']:<22}{r['layers']:>8}{r['params']:>14,}{r['gflops']:>10.2f}")
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
    from csfnet.data.extract import extract_with_settings

    report = extract_with_settings(args.source, args.out, settings, workers=args.workers, report_dir=args.report)
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

        render(train_job_for(settings, args.data, args.out, args.partition, not args.no_mlflow), args.render_trainjob)
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
        )
        print(json.dumps(vino.report, indent=2))
    return 0


def cmd_detect(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.detect import detect

    d = settings.detect
    result = detect(
        args.model,
        args.source,
        args.out,
        conf=d.conf,
        iou=d.iou,
        imgsz=d.imgsz,
        slice_size=d.slice or None,
        overlap=d.overlap,
        full_frame=d.full_frame,
        merge=d.merge,
        merge_threshold=d.merge_threshold,
        tracker=None if d.track == "none" else d.track,
        batch=d.batch,
        device=d.device,
        save_video=d.save_video,
        max_frames=args.max_frames,
        progress=True,
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
    print(f"wrote {compile_pipeline(out, pipeline=args.pipeline, **_cluster_options(args))}")
    return 0


def cmd_pipeline_submit(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.kubeflow.client import parse_params, submit

    params = parse_params(args.param or [])
    run = submit(args.host, params, args.experiment, args.token, pipeline=args.pipeline, **_cluster_options(args))
    print(f"submitted run {run.run_id} to {args.host}")
    return 0


def cmd_pipeline_run_local(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.kubeflow.client import parse_params, run_local

    params = parse_params(args.param or [])
    task = run_local(params, args.pipeline_root, cache=not args.no_cache, pipeline=args.pipeline)
    decision = Path(task.output.path)
    print(decision.read_text() if decision.is_file() else f"pipeline finished; outputs under {args.pipeline_root}")
    return 0


def cmd_deploy(args: argparse.Namespace, settings: Settings) -> int:
    from csfnet.kubeflow.deploy import deploy_champion
    from csfnet.mlflow_tracking import configure

    configure()  # the champion is looked up in the configured MLflow registry
    v = settings.serving
    isvc, _ = deploy_champion(
        settings.register.name,
        model_uri=args.model_uri,
        service=v.name,
        render_to=args.render,
        namespace=v.namespace or None,
        runtime=v.runtime,
        canary_percent=v.canary_percent or None,
        cpu=v.cpu,
        memory=v.memory,
        gpus=v.gpus,
        min_replicas=v.min_replicas,
    )
    if args.render:
        print(f"wrote {args.render}")
    else:
        namespace = isvc.metadata.namespace or "(current namespace)"
        print(f"applied InferenceService {namespace}/{v.name} serving {isvc.spec.predictor.model.storage_uri}")
    return 0


def _cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    from csfnet.kubeflow.client import parse_params

    tolerations = []
    for spec in args.toleration or []:  # key=value:Effect or key:Effect
        key_value, _, effect = spec.rpartition(":")
        key, sep, value = key_value.partition("=")
        operator = "Equal" if sep else "Exists"
        tolerations.append({"key": key, "operator": operator, "value": value or None, "effect": effect})
    return {
        "gpus": args.gpus,
        "node_selector": {k: str(v) for k, v in parse_params(args.node_selector or []).items()},
        "tolerations": tolerations,
    }


# --- parser -----------------------------------------------------------------------------------------------------------


def _command(sub: Any, name: str, handler: Handler, helptext: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=helptext, description=helptext, epilog=EPILOG)
    parser.set_defaults(func=handler)
    return parser


def _setting(parser: argparse.ArgumentParser, flag: str, key: str, **kwargs: Any) -> None:
    """An option overriding the settings key ``key`` (``args.X``: the active preset's ultralytics argument)."""
    parser.add_argument(flag, dest=key, default=None, help=kwargs.pop("help", f"overrides {key}"), **kwargs)


def _validation_options(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--weights", required=True, help="trained .pt")
    p.add_argument("--data", required=True, help="data.yaml (its val split is used)")
    p.add_argument("--out", default=default_out, help="output folder (replaced)")
    _setting(p, "--imgsz", "args.imgsz", type=int, help="image size (default: the preset's)")
    _setting(p, "--device", "train.device", help="'' auto, cpu, 0 ...")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csfnet", description=__doc__.splitlines()[0], epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="model configurations").add_subparsers(dest="action", required=True)
    p = _command(model, "info", cmd_model_info, "layers, parameters and GFLOPs of every configuration")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--imgsz", type=int, default=640, help="image size the GFLOPs are counted at")
    p.add_argument("--nc", type=int, default=1, help="number of classes")
    p.add_argument("configs", nargs="*", help="configs to show (default: all)")

    data = sub.add_parser("data", help="synthesise, fetch, extract and inspect datasets")
    data = data.add_subparsers(dest="action", required=True)
    p = _command(data, "synth", cmd_data_synth, "generate the synthetic micro-UAV video benchmark")
    p.add_argument("--out", required=True, help="raw dataset folder to create")
    for flag in ("train-videos", "val-videos", "frames", "width", "height", "seed"):
        _setting(p, f"--{flag}", f"synth.{flag.replace('-', '_')}", type=int)
    _setting(p, "--format", "synth.format", choices=["mot", "anti-uav"])
    p.add_argument("--workers", type=int, help="processes (default: all cores)")

    p = _command(data, "fetch", cmd_data_fetch, "copy a raw dataset root from s3://... or any fsspec URI")
    p.add_argument("--source", required=True, help="URI of a folder with train/ and val/")
    p.add_argument("--out", required=True, help="local folder to create")

    p = _command(data, "ingest", cmd_data_ingest, "bring data.source into a raw root, copying only what changed")
    p.add_argument("--out", required=True, help="raw root to update (data/raw)")
    _setting(p, "--source", "data.source", help="synth, synth-hd, a folder or an fsspec URI (s3://bucket/raw)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")

    p = _command(data, "extract", cmd_data_extract, "validate raw videos and write a YOLO dataset")
    p.add_argument("--source", required=True, help="raw root with train/ and val/ (and optionally test/)")
    p.add_argument("--out", required=True, help="dataset folder to create")
    _setting(p, "--stride", "extract.stride", type=int, help="keep every K-th frame")
    _setting(p, "--format", "extract.format", choices=["auto", "anti-uav", "mot", "drone-vs-bird", "yolo"])
    _setting(p, "--fix", "extract.fix", action=argparse.BooleanOptionalAction, help="clip/drop bad boxes (counted)")
    _setting(p, "--tile", "extract.tile", type=int, help="cut larger frames into tiles of this size (0: off)")
    _setting(p, "--overlap", "extract.overlap", type=float, help="share of a tile its neighbours overlap")
    p.add_argument("--report", help="folder for the ingestion report (ingest.json, sequences.json, ingest.html)")
    p.add_argument("--workers", type=int, help="processes (default: all cores)")

    p = _command(data, "stats", cmd_data_stats, "object size distribution and a histogram")
    p.add_argument("--data", required=True, help="data.yaml")
    _setting(p, "--imgsz", "args.imgsz", type=int, help="training image size (default: the preset's)")
    p.add_argument("--tile", type=int, help="tile size to compare downscaling with (default: extract.tile or imgsz)")
    p.add_argument("--out", help="folder for stats.json and size_histogram.png")
    p.add_argument("--json", action="store_true")

    p = _command(sub, "train", cmd_train, "train a configuration with ultralytics")
    p.add_argument("--data", required=True, help="data.yaml")
    _setting(p, "--model", "train.model", help="csfnet-n|s|m, an ablation, yolov8n, or a YAML")
    _setting(p, "--preset", "train.preset", help="preset from params.yaml: quick or paper")
    for flag in ("epochs", "imgsz", "batch"):
        _setting(p, f"--{flag}", f"args.{flag}", type=int, help=f"the preset's {flag}")
    _setting(p, "--device", "train.device", help="'' auto, cpu, 0, or 0,1 for DDP")
    _setting(p, "--pretrained", "train.pretrained", help="local YOLOv8 .pt to initialise matching layers")
    p.add_argument("--partition", help="`csfnet tune`'s JSON with a CSwitch partition (default: the config's own)")
    p.add_argument("--out", default="runs/train", help="run folder (gets weights/best.pt)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--render-trainjob", metavar="PATH", help="write the Kubeflow TrainJob here instead of training")

    p = _command(sub, "tune", cmd_tune, "Optuna search for the CSwitch partition")
    p.add_argument("--data", required=True, help="data.yaml")
    _setting(p, "--trials", "tune.trials", type=int, help="finished trials the study should hold (continues it)")
    _setting(p, "--epochs", "tune.epochs", type=int, help="epochs per trial")
    _setting(p, "--imgsz", "tune.imgsz", type=int)
    _setting(p, "--storage", "tune.storage", help="SQLAlchemy URL shared by workers (default: SQLite in --work-dir)")
    _setting(p, "--study-name", "tune.study_name", help="default: derived from model, data and search space")
    _setting(p, "--objective", "tune.objective", choices=["map50_95", "pareto"], help="pareto: mAP50-95 vs GFLOPs")
    _setting(p, "--model", "train.model", help="config to tune")
    _setting(p, "--preset", "train.preset", help="training preset trials start from")
    _setting(p, "--device", "train.device", help="one device per worker: '' auto, cpu, 0 ...")
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
    _setting(p, "--configs", "compare.configs", nargs="+", help="configurations; the first is the reference")
    _setting(p, "--seeds", "compare.seeds", nargs="+", type=int)
    _setting(p, "--preset", "compare.preset", help="training preset of every cell (bench by default)")
    _setting(p, "--device", "train.device", help="'' auto, cpu, 0 ...")
    p.add_argument("--cells-dir", default="runs/compare", help="cell folders; finished cells are reused")
    p.add_argument("--out", default="metrics/compare", help="report folder (compare.md/json/png)")
    p.add_argument("--no-mlflow", action="store_true")
    actions = p.add_subparsers(dest="action")
    q = _command(actions, "cell", cmd_compare_cell, "train and score one configuration with one seed")
    q.add_argument("--config", required=True, help="configuration")
    q.add_argument("--seed", required=True, type=int)
    q.add_argument("--data", required=True, help="data.yaml")
    q.add_argument("--out", required=True, help="cell folder (cell.json, matches.npz, weights/best.pt)")
    _setting(q, "--preset", "compare.preset", help="training preset (bench by default)")
    _setting(q, "--device", "train.device", help="'' auto, cpu, 0 ...")
    q.add_argument("--no-mlflow", action="store_true")
    q = _command(actions, "report", cmd_compare_report, "the table with intervals from finished cells")
    q.add_argument("--cells", required=True, nargs="+", help="cell folders, or folders holding them")
    q.add_argument("--configured", action="store_true", help="only the cells of compare.configs x compare.seeds")
    _setting(q, "--configs", "compare.configs", nargs="+", help="row order; the first is the reference")
    q.add_argument("--out", required=True, help="report folder (compare.md/json/png)")
    q.add_argument("--no-mlflow", action="store_true")
    q = _command(actions, "data", cmd_compare_data, "the bench data: synth benchmark at compare.synth sizes")
    q.add_argument("--out", required=True, help="folder receiving raw/ and dataset/")
    q.add_argument("--workers", type=int, help="processes (default: all cores)")

    p = _command(sub, "eval", cmd_eval, "mAP, size-band AP/recall, per-sequence recall, latency, plots")
    _validation_options(p, "metrics/eval")
    p.add_argument("--slice", type=int, help="also AP by size band with slices of this size against full frames")
    _setting(p, "--overlap", "detect.overlap", type=float, help="slice overlap")
    p.add_argument("--track", choices=["bytetrack", "botsort"], help="also HOTA/MOTA/IDF1 on the val sequences")
    p.add_argument("--raw", default="data/raw", help="raw root whose val sequences carry track IDs (for --track)")
    p = _command(sub, "robustness", cmd_robustness, "metrics under Gaussian noise of growing sigma")
    _validation_options(p, "metrics/robustness")
    _setting(p, "--sigmas", "robustness.sigmas", type=float, nargs="+", help="noise std devs on the 0-255 scale")
    p.add_argument("--final", action="store_true", help="last stage of the pipeline: close the parent run")

    p = _command(sub, "export", cmd_export, "ONNX export verified with onnxruntime, optional INT8")
    p.add_argument("--weights", required=True, help="trained .pt")
    p.add_argument("--data", required=True, help="data.yaml whose val split verifies the export")
    p.add_argument("--out", default="models/csfnet.onnx", help="FP32 ONNX file (INT8: <stem>-int8.onnx)")
    p.add_argument("--report", help="verification report JSON (default: next to --out)")
    _setting(p, "--imgsz", "args.imgsz", type=int, help="export image size (default: the preset's)")
    _setting(p, "--opset", "export.opset", type=int)
    _setting(p, "--dynamic", "export.dynamic_size", action=argparse.BooleanOptionalAction, help="dynamic size too")
    _setting(p, "--int8", "export.int8", action=argparse.BooleanOptionalAction, help="also write an INT8 model")
    p.add_argument("--calib-data", help="data.yaml whose train frames calibrate INT8 (default: --data)")
    p.add_argument("--openvino", action="store_true", help="also OpenVINO FP32 (and INT8 through NNCF), verified")
    p.add_argument("--no-mlflow", action="store_true")

    p = _command(sub, "detect", cmd_detect, "drones in a video, images or a stream: annotated video, MOT tracks")
    p.add_argument("--model", required=True, help=".pt, .onnx (FP32/INT8), an OpenVINO folder or models:/name@alias")
    p.add_argument("--source", required=True, help="video file, image folder or glob, or stream URL")
    p.add_argument("--out", required=True, help="output folder (annotated.mp4, mot.txt, detections.jsonl)")
    _setting(p, "--conf", "detect.conf", type=float)
    _setting(p, "--iou", "detect.iou", type=float)
    _setting(p, "--imgsz", "detect.imgsz", type=int, help="default: the model's")
    _setting(p, "--slice", "detect.slice", type=int, help="slice size at native resolution (0: whole frames)")
    _setting(p, "--overlap", "detect.overlap", type=float)
    _setting(p, "--full-frame", "detect.full_frame", action=argparse.BooleanOptionalAction)
    _setting(p, "--merge", "detect.merge", choices=["nmm", "nms"])
    _setting(p, "--merge-threshold", "detect.merge_threshold", type=float)
    _setting(p, "--track", "detect.track", choices=["none", "bytetrack", "botsort"])
    _setting(p, "--batch", "detect.batch", type=int, help="crops per runtime call")
    _setting(p, "--device", "detect.device")
    _setting(p, "--video", "detect.save_video", action=argparse.BooleanOptionalAction, help="annotated MP4")
    p.add_argument("--max-frames", type=int, help="stop after this many frames")

    p = _command(sub, "register", cmd_register, "register the ONNX model in MLflow; champion/challenger")
    p.add_argument("--onnx", required=True, help="verified ONNX model")
    p.add_argument("--report", required=True, help="its verification report (gives mAP50-95 and the data)")
    _setting(p, "--name", "register.name", help="registered model name")
    _setting(p, "--margin", "register.margin", type=float, help="mAP50-95 a challenger must gain over the champion")
    p.add_argument("--out", help="JSON with the version and the promotion decision")
    p.add_argument("--final", action="store_true", help="last stage of the pipeline: close the parent run")

    p = _command(sub, "deploy", cmd_deploy, "serve the registry's champion on KServe (or --render its manifest)")
    _setting(p, "--name", "register.name", help="registered model whose champion is served")
    p.add_argument("--model-uri", help="models:/<name>/<version> to serve instead of the champion")
    _setting(p, "--service", "serving.name", help="InferenceService name")
    _setting(p, "--namespace", "serving.namespace")
    _setting(p, "--runtime", "serving.runtime", help="ServingRuntime (infra/k8s/serving)")
    _setting(p, "--canary-percent", "serving.canary_percent", type=int, help="traffic to the new revision (0: all)")
    _setting(p, "--cpu", "serving.cpu")
    _setting(p, "--memory", "serving.memory")
    _setting(p, "--gpus", "serving.gpus", type=int)
    _setting(p, "--min-replicas", "serving.min_replicas", type=int)
    p.add_argument("--render", metavar="PATH", help="write the manifest here (GitOps) instead of applying it")

    p = _command(sub, "summary", cmd_summary, "headline figures of the last pipeline run (from dvc.yaml's metrics)")
    p.add_argument("--dvc-file", default="dvc.yaml", help="dvc.yaml whose stages name the metrics files")

    pipeline = sub.add_parser("pipeline", help="Kubeflow Pipelines").add_subparsers(dest="action", required=True)
    p = _command(pipeline, "compile", cmd_pipeline_compile, "write the pipeline's IR YAML")
    p.add_argument("--out", help="IR YAML to write (default: pipelines/<pipeline>_pipeline.yaml)")
    _cluster_arguments(p)
    p = _command(pipeline, "submit", cmd_pipeline_submit, "submit a run to a Kubeflow Pipelines endpoint")
    p.add_argument("--host", required=True, help="Kubeflow Pipelines API, e.g. https://kubeflow.example/pipeline")
    p.add_argument("--experiment", default="csfnet", help="Kubeflow experiment")
    p.add_argument("--token", help="bearer token (default: $KF_PIPELINES_TOKEN, else kube credentials)")
    p.add_argument("--param", action="append", metavar="K=V", help="pipeline parameter (repeatable)")
    _cluster_arguments(p)
    p = _command(pipeline, "run-local", cmd_pipeline_run_local, "run the pipeline here (kfp SubprocessRunner)")
    p.add_argument("--pipeline-root", default="runs/kfp", help="where local artifacts are written")
    p.add_argument("--param", action="append", metavar="K=V", help="pipeline parameter (repeatable)")
    p.add_argument("--no-cache", action="store_true", help="run every step again instead of reusing cached ones")
    _pipeline_choice(p)
    return parser


def _pipeline_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pipeline", choices=["csfnet", "compare"], default="csfnet", help="csfnet (the pipeline) or compare"
    )


def _cluster_arguments(p: argparse.ArgumentParser) -> None:
    _pipeline_choice(p)
    p.add_argument("--gpus", type=int, default=1, help="GPUs for tune and train (0: CPU only)")
    p.add_argument("--node-selector", action="append", metavar="K=V", help="node label for GPU steps")
    p.add_argument("--toleration", action="append", metavar="KEY[=VALUE]:EFFECT", help="taint GPU steps tolerate")


# --- entry point ------------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csfnet`` console command."""
    args = build_parser().parse_args(argv)
    overrides = {key: value for key, value in vars(args).items() if "." in key}
    made = [_first_missing(Path(p)) for p in (getattr(args, o, None) for o in OUTPUT_OPTIONS) if p]
    _plain_logs()
    try:
        return args.func(args, load_settings().override(overrides))
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
