"""``csfnet`` command line: thin wrappers over the package functions; defaults come from ``params.yaml``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from csfnet.params import section

EPILOG = "Settings not given on the command line come from params.yaml (or $CSFNET_PARAMS)."


def _pick(value: Any, section_name: str, key: str, default: Any = None) -> Any:
    """Command-line value, else ``params.yaml``'s ``section.key``, else ``default``."""
    if value is not None:
        return value
    found = section(section_name).get(key)
    return default if found is None or found == "" else found


# --- model ---------------------------------------------------------------------------------------------------------


def cmd_model_info(args: argparse.Namespace) -> int:
    from csfnet.model import ALL_CONFIGS, model_summary

    rows = [model_summary(name, imgsz=args.imgsz, nc=args.nc) for name in (args.configs or ALL_CONFIGS)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'config':<22}{'layers':>8}{'params':>14}{'GFLOPs':>10}   (nc={args.nc}, imgsz={args.imgsz})")
    for r in rows:
        print(f"{r['name']:<22}{r['layers']:>8}{r['params']:>14,}{r['gflops']:>10.2f}")
    return 0


# --- data ----------------------------------------------------------------------------------------------------------


def cmd_data_synth(args: argparse.Namespace) -> int:
    from csfnet.data.synth import SynthSpec, generate

    spec = SynthSpec(
        train_videos=_pick(args.train_videos, "synth", "train_videos", 8),
        val_videos=_pick(args.val_videos, "synth", "val_videos", 4),
        frames=_pick(args.frames, "synth", "frames", 50),
        width=_pick(args.width, "synth", "width", 320),
        height=_pick(args.height, "synth", "height", 256),
        seed=_pick(args.seed, "synth", "seed", 0),
        format=_pick(args.format, "synth", "format", "mot"),
    )
    out = generate(args.out, spec, workers=args.workers)
    print(f"wrote {spec.train_videos} train + {spec.val_videos} val videos to {out}")
    return 0


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from csfnet.data.io import fetch

    print(f"fetched {args.source} to {fetch(args.source, args.out)}")
    return 0


def cmd_data_extract(args: argparse.Namespace) -> int:
    from csfnet.data.extract import extract

    report = extract(
        args.source,
        args.out,
        stride=_pick(args.stride, "extract", "stride", 1),
        fmt=_pick(args.format, "extract", "format", "auto"),
        names=tuple(_pick(None, "extract", "names", ["uav"])),
        fix=args.fix or bool(section("extract").get("fix", False)),
        workers=args.workers,
    )
    print(json.dumps(report, indent=2))
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from csfnet.data.stats import dataset_stats

    imgsz = args.imgsz or _train_args().get("imgsz", 640)
    stats = dataset_stats(args.data, imgsz=imgsz, out_dir=args.out)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        for split, s in stats["splits"].items():
            print(
                f"{split}: {s['objects']} objects, median {s['source_px']['median']} px at source, "
                f"{s['train_px']['median']} px at imgsz {imgsz}; {s['below_stride_share']:.0%} below stride 8"
            )
    if stats["warning"]:
        print(f"WARNING: {stats['warning']}", file=sys.stderr)
    return 0


# --- training and evaluation -----------------------------------------------------------------------------------------


def _train_args(preset: str | None = None) -> dict[str, Any]:
    from csfnet.params import preset as load_preset

    name = preset or section("train").get("preset", "quick")
    try:
        return load_preset(name)
    except ValueError:
        return {}


def cmd_train(args: argparse.Namespace) -> int:
    from csfnet.train import train

    overrides = {"epochs": args.epochs, "imgsz": args.imgsz, "batch": args.batch}
    result = train(
        args.data,
        model=args.model,
        out=args.out,
        preset=args.preset,
        overrides=overrides,
        device=args.device,
        pretrained=args.pretrained,
        partition=args.partition,
        track=not args.no_mlflow,
    )
    print(json.dumps({"best": str(result.best), "resumed": result.resumed, **result.metrics}, indent=2))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from csfnet.tune import tune

    result = tune(
        args.data,
        out=args.out,
        work_dir=args.work_dir,
        model=args.model,
        preset=args.preset,
        device=args.device,
        worker=args.worker,
        track=not args.no_mlflow,
        trials=args.trials,
        epochs=args.epochs,
        imgsz=args.imgsz,
        storage=args.storage,
        study_name=args.study_name,
        objective=args.objective,
    )
    print(json.dumps(result.to_json(), indent=2))
    return 0


def _validation_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Validator settings shared by ``eval`` and ``robustness``: image size, batch, NMS, device."""
    from csfnet.train import resolve_device

    p = section("eval")
    return {
        "imgsz": args.imgsz or _train_args().get("imgsz", 640),
        "batch": p.get("batch", 16),
        "conf": p.get("conf", 0.001),
        "iou": p.get("iou", 0.6),
        "device": resolve_device(_pick(args.device, "train", "device", "")),
    }


def cmd_eval(args: argparse.Namespace) -> int:
    from csfnet.evaluate import evaluate
    from csfnet.tracking import log_flat_metrics

    p = section("eval")
    kwargs = {
        **_validation_settings(args),
        "report_conf": p.get("report_conf", 0.25),
        "size_bands": p.get("size_bands", [8, 16, 32]),
        "samples": p.get("samples", 6),
    }
    with _maybe_run(args, "eval", kwargs, args.data):
        metrics = evaluate(args.weights, args.data, args.out, **kwargs)
        if not args.no_mlflow:
            import mlflow

            log_flat_metrics({k: v for k, v in metrics.items() if k != "per_sequence_recall"})
            mlflow.log_artifacts(args.out, "eval")
    print(json.dumps({k: metrics[k] for k in ("map50", "map50_95", "precision", "recall", "latency_ms_per_image")}))
    return 0


def cmd_robustness(args: argparse.Namespace) -> int:
    from csfnet.robustness import noise_sweep

    p = section("robustness")
    kwargs = {
        **_validation_settings(args),
        "sigmas": [float(s) for s in (args.sigmas or p.get("sigmas", [0, 5, 10, 25, 50]))],
        "seed": p.get("seed", 0),
    }
    with _maybe_run(args, "robustness", kwargs, args.data, final=args.final):
        rows = noise_sweep(args.weights, args.data, args.out, **kwargs)
        if not args.no_mlflow:
            import mlflow

            for row in rows:
                mlflow.log_metrics({f"noise_{k}": v for k, v in row.items() if k != "sigma"}, step=int(row["sigma"]))
            mlflow.log_artifacts(args.out, "robustness")
    for row in rows:
        print("  ".join(f"{k}={v:.4g}" for k, v in row.items()))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from csfnet.export import export
    from csfnet.tracking import log_flat_metrics

    p = section("export")
    kwargs = {
        "imgsz": args.imgsz or _train_args().get("imgsz", 640),
        "opset": _pick(args.opset, "export", "opset", 17),
        "dynamic_size": args.dynamic or bool(p.get("dynamic_size", False)),
        "int8": args.int8 or bool(p.get("int8", False)),
        "calib_frames": p.get("calib_frames", 100),
        "verify_frames": p.get("verify_frames", 8),
        "batch": section("eval").get("batch", 16),
        "conf": section("eval").get("report_conf", 0.25),
        "iou": section("eval").get("iou", 0.6),
    }
    with _maybe_run(args, "export", kwargs, args.data):
        result = export(
            args.weights, args.out, args.data, calib_data=args.calib_data, report_path=args.report, **kwargs
        )
        if not args.no_mlflow:
            import mlflow

            report = result.report
            log_flat_metrics({"verification": report["verification"]["checks"], "int8": report.get("int8", {})})
            mlflow.log_dict(report, "export/report.json")
    print(json.dumps(result.report, indent=2))
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    import mlflow

    from csfnet.data.dataset import split_images
    from csfnet.data.io import write_json
    from csfnet.registry import log_detector, register
    from csfnet.tracking import data_hash, git_commit, stage_run

    p = section("register")
    report = json.loads(Path(args.report).read_text())
    if not report.get("passed"):
        raise ValueError(f"{args.report}: the export did not pass verification; refusing to register it")
    name = args.name or p.get("name", "csfnet")
    margin = float(_pick(args.margin, "register", "margin", 0.0))
    data = report["data"]
    lineage = {"csfnet.git_commit": git_commit(), "csfnet.data_hash": data_hash(data)}
    with stage_run("register", params={"name": name, "margin": margin}, tags=lineage, final=args.final) as run:
        info = log_detector(args.onnx, split_images(data, "val")[0])
        mlflow.log_dict(report, "export/report.json")
        tags = {**lineage, "csfnet.run_id": run.info.run_id, "csfnet.weights": report["weights"]}
        decision = register(info.model_uri, name, report["verification"]["map50_95"], margin, tags=tags)
        mlflow.set_tags({"csfnet.registered_version": decision.version, "csfnet.promotion": decision.reason})
    if args.out:
        write_json(args.out, decision.to_json())
    print(json.dumps(decision.to_json(), indent=2))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from csfnet.summary import stage_metrics, summary

    metrics = stage_metrics(args.dvc_file)
    if not metrics:
        print(f"no metrics yet: run `dvc repro` (looked for the metrics files named in {args.dvc_file})")
        return 1
    print(summary(metrics))
    return 0


def _cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    from csfnet.kubeflow import parse_params

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


def cmd_pipeline_compile(args: argparse.Namespace) -> int:
    from csfnet.kubeflow import compile_pipeline

    print(f"wrote {compile_pipeline(args.out, **_cluster_options(args))}")
    return 0


def cmd_pipeline_submit(args: argparse.Namespace) -> int:
    from csfnet.kubeflow import parse_params, submit

    run = submit(args.host, parse_params(args.param or []), args.experiment, args.token, **_cluster_options(args))
    print(f"submitted run {run.run_id} to {args.host}")
    return 0


def cmd_pipeline_run_local(args: argparse.Namespace) -> int:
    from csfnet.kubeflow import parse_params, run_local

    task = run_local(parse_params(args.param or []), args.pipeline_root)
    decision = Path(task.output.path)
    print(decision.read_text() if decision.is_file() else f"pipeline finished; outputs under {args.pipeline_root}")
    return 0


def _maybe_run(args: argparse.Namespace, stage: str, params: dict, data: str, final: bool = False):
    if getattr(args, "no_mlflow", False):
        return contextlib.nullcontext()
    from csfnet.tracking import data_hash, stage_run

    tags = {"csfnet.data_hash": data_hash(data), "csfnet.weights": str(Path(args.weights).resolve())}
    return stage_run(stage, params=params, tags=tags, final=final)


# --- parser ----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csfnet", description=__doc__, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)

    model = sub.add_parser("model", help="model configurations").add_subparsers(dest="action", required=True)
    info = model.add_parser("info", help="layers, parameters and GFLOPs of every configuration")
    info.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    info.add_argument("--imgsz", type=int, default=640)
    info.add_argument("--nc", type=int, default=1)
    info.add_argument("configs", nargs="*", help="configs to show (default: all)")
    info.set_defaults(func=cmd_model_info)

    data = sub.add_parser("data", help="synthesise, extract and inspect datasets").add_subparsers(
        dest="action", required=True
    )
    synth = data.add_parser("synth", help="generate the synthetic micro-UAV video benchmark", epilog=EPILOG)
    synth.add_argument("--out", required=True, help="raw dataset folder to create")
    synth.add_argument("--train-videos", type=int)
    synth.add_argument("--val-videos", type=int)
    synth.add_argument("--frames", type=int)
    synth.add_argument("--width", type=int)
    synth.add_argument("--height", type=int)
    synth.add_argument("--seed", type=int)
    synth.add_argument("--format", choices=["mot", "anti-uav"])
    synth.add_argument("--workers", type=int, help="processes (default: all cores)")
    synth.set_defaults(func=cmd_data_synth)

    fetch = data.add_parser("fetch", help="copy a raw dataset root from s3://... or any fsspec URI")
    fetch.add_argument("--source", required=True, help="URI of a folder with train/ and val/")
    fetch.add_argument("--out", required=True, help="local folder to create")
    fetch.set_defaults(func=cmd_data_fetch)

    extract = data.add_parser("extract", help="validate raw videos and write a YOLO dataset", epilog=EPILOG)
    extract.add_argument("--source", required=True, help="raw root with train/ and val/ (and optionally test/)")
    extract.add_argument("--out", required=True, help="dataset folder to create")
    extract.add_argument("--stride", type=int, help="keep every K-th frame")
    extract.add_argument("--format", choices=["auto", "anti-uav", "mot", "yolo"])
    extract.add_argument("--fix", action="store_true", help="clip/drop bad boxes, skip unmatched frames (counted)")
    extract.add_argument("--workers", type=int, help="processes (default: all cores)")
    extract.set_defaults(func=cmd_data_extract)

    stats = data.add_parser("stats", help="object size distribution and a histogram")
    stats.add_argument("--data", required=True, help="data.yaml")
    stats.add_argument("--imgsz", type=int, help="training image size (default: the preset's)")
    stats.add_argument("--out", help="folder for stats.json and size_histogram.png")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_data_stats)

    train = sub.add_parser("train", help="train a configuration with ultralytics", epilog=EPILOG)
    train.add_argument("--data", required=True, help="data.yaml")
    train.add_argument("--model", help="csfnet-n|s|m, an ablation, yolov8n, or a YAML")
    train.add_argument("--preset", help="preset from params.yaml: quick or paper")
    train.add_argument("--epochs", type=int)
    train.add_argument("--imgsz", type=int)
    train.add_argument("--batch", type=int)
    train.add_argument("--device", help="'' auto, cpu, 0, or 0,1 for DDP")
    train.add_argument("--pretrained", help="local YOLOv8 .pt to initialise matching layers")
    train.add_argument("--partition", help="JSON file with a tuned CSwitch partition")
    train.add_argument("--out", default="runs/train", help="run folder (gets weights/best.pt)")
    train.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    train.set_defaults(func=cmd_train)

    tune = sub.add_parser("tune", help="Optuna search for the CSwitch partition", epilog=EPILOG)
    tune.add_argument("--data", required=True, help="data.yaml")
    tune.add_argument("--trials", type=int, help="finished trials the study should hold (continues a study)")
    tune.add_argument("--epochs", type=int, help="epochs per trial")
    tune.add_argument("--imgsz", type=int)
    tune.add_argument("--storage", help="SQLAlchemy URL shared by workers (default: SQLite in --work-dir)")
    tune.add_argument("--study-name", help="default: derived from model, data and search space")
    tune.add_argument("--objective", choices=["map50_95", "pareto"], help="pareto: mAP50-95 against GFLOPs")
    tune.add_argument("--model", help="config to tune (default: train.model)")
    tune.add_argument("--preset", help="training preset trials start from")
    tune.add_argument("--device", help="one device per worker: '' auto, cpu, 0 ...")
    tune.add_argument("--worker", type=int, default=0, help="index of this worker among those sharing a study")
    tune.add_argument("--work-dir", default="runs/tune", help="trial folders and the default SQLite study")
    tune.add_argument("--out", default="metrics/tune/best_partition.json", help="best partition JSON")
    tune.add_argument("--no-mlflow", action="store_true")
    tune.set_defaults(func=cmd_tune)

    exp = sub.add_parser("export", help="ONNX export verified with onnxruntime, optional INT8", epilog=EPILOG)
    exp.add_argument("--weights", required=True, help="trained .pt")
    exp.add_argument("--data", required=True, help="data.yaml whose val split verifies the export")
    exp.add_argument("--out", default="models/csfnet.onnx", help="FP32 ONNX file (INT8: <stem>-int8.onnx)")
    exp.add_argument("--report", help="verification report JSON (default: next to --out)")
    exp.add_argument("--imgsz", type=int)
    exp.add_argument("--opset", type=int)
    exp.add_argument("--dynamic", action="store_true", help="dynamic image size too (the batch always is)")
    exp.add_argument("--int8", action="store_true", help="also write a statically quantised INT8 model")
    exp.add_argument("--calib-data", help="data.yaml whose train frames calibrate INT8 (default: --data)")
    exp.add_argument("--no-mlflow", action="store_true")
    exp.set_defaults(func=cmd_export)

    reg = sub.add_parser("register", help="register the ONNX model in MLflow; champion/challenger", epilog=EPILOG)
    reg.add_argument("--onnx", required=True, help="verified ONNX model")
    reg.add_argument("--report", required=True, help="its verification report (gives mAP50-95 and the data)")
    reg.add_argument("--name", help="registered model name")
    reg.add_argument("--margin", type=float, help="mAP50-95 a challenger must gain over the champion")
    reg.add_argument("--out", help="JSON with the version and the promotion decision")
    reg.add_argument("--final", action="store_true", help="last stage of the pipeline: close the parent run")
    reg.set_defaults(func=cmd_register)

    summ = sub.add_parser("summary", help="headline figures of the last pipeline run (from dvc.yaml's metrics)")
    summ.add_argument("--dvc-file", default="dvc.yaml", help="dvc.yaml whose stages name the metrics files")
    summ.set_defaults(func=cmd_summary)

    pipeline = sub.add_parser("pipeline", help="Kubeflow Pipelines").add_subparsers(dest="action", required=True)
    for action, func, helptext in (
        ("compile", cmd_pipeline_compile, "write the pipeline's IR YAML"),
        ("submit", cmd_pipeline_submit, "submit a run to a Kubeflow Pipelines endpoint"),
        ("run-local", cmd_pipeline_run_local, "run the pipeline here with kfp's SubprocessRunner (no Docker)"),
    ):
        p = pipeline.add_parser(action, help=helptext)
        if action == "compile":
            p.add_argument("--out", default="pipelines/csfnet_pipeline.yaml", help="IR YAML to write")
        if action == "submit":
            p.add_argument(
                "--host", required=True, help="Kubeflow Pipelines API, e.g. https://kubeflow.example/pipeline"
            )
            p.add_argument("--experiment", default="csfnet")
            p.add_argument("--token", help="bearer token (default: $KF_PIPELINES_TOKEN, else kube credentials)")
        if action == "run-local":
            p.add_argument("--pipeline-root", default="runs/kfp", help="where local artifacts are written")
        if action != "compile":
            p.add_argument("--param", action="append", metavar="K=V", help="pipeline parameter (repeatable)")
        if action != "run-local":
            p.add_argument("--gpus", type=int, default=1, help="GPUs for tune and train (0: CPU only)")
            p.add_argument("--node-selector", action="append", metavar="K=V", help="node label for GPU steps")
            p.add_argument(
                "--toleration", action="append", metavar="KEY[=VALUE]:EFFECT", help="taint GPU steps tolerate"
            )
        p.set_defaults(func=func)

    for name, func, default_out, helptext in (
        ("eval", cmd_eval, "metrics/eval", "mAP, size-band AP/recall, per-sequence recall, latency, plots"),
        ("robustness", cmd_robustness, "metrics/robustness", "metrics under Gaussian noise of growing sigma"),
    ):
        p = sub.add_parser(name, help=helptext, epilog=EPILOG)
        p.add_argument("--weights", required=True, help="trained .pt")
        p.add_argument("--data", required=True, help="data.yaml (its val split is used)")
        p.add_argument("--imgsz", type=int)
        p.add_argument("--device")
        p.add_argument("--out", default=default_out)
        p.add_argument("--no-mlflow", action="store_true")
        if name == "robustness":
            p.add_argument("--sigmas", type=float, nargs="+", help="noise standard deviations on the 0-255 scale")
            p.add_argument("--final", action="store_true", help="last stage of the pipeline: close the parent run")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csfnet`` console command."""
    args = build_parser().parse_args(argv)
    from csfnet.errors import CsfnetError

    try:
        return args.func(args)
    except (CsfnetError, FileNotFoundError, ValueError) as e:
        print(f"csfnet {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
