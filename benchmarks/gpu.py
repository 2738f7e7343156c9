"""GPU check: one command, at most 8 minutes on one NVIDIA GPU, results in ``benchmarks/gpu.json`` and ``gpu.md``.

Sections, each in its own process with its own time box (a section still running when its box or the whole budget
ends is killed; what it measured so far is kept); the JSON and the markdown are rewritten after every section:

1. ``env``: torch, CUDA, cuDNN, ultralytics, onnxruntime and its providers, the GPUs.
2. ``throughput``: CUDA + AMP training throughput (images/s; forward, loss, backward, optimizer step on a fixed
   batch) of CSF-Net-n, YOLOv8n and the current-generation baseline (YOLO26n), same imgsz and batch.
3. ``train``: one short ``csfnet.train`` run end to end (the CSFNetTrainer, AMP, EMA), interrupted after the first
   epoch's checkpoint and resumed from ``last.pt`` + ``last_state.pt``.
4. ``onnx``: onnxruntime's CUDA provider against PyTorch eager (FP32 and FP16), batch 1 and 8.
5. ``detect``: ``csfnet detect`` with PyTorch on the GPU on a synthetic 1920x1080 video, whole frames and slices.
6. ``ddp``: one epoch of DDP training on 2 GPUs against one, when there are two.

Without CUDA (or with ``--cpu``) it runs the same code on the CPU with tiny settings (imgsz 64, a few steps, tiny
synthetic data), which is how the test suite keeps it working; every section or row it cannot measure is listed
with the reason (no CUDA, one GPU, no onnxruntime-gpu, time budget spent ...).

Usage: python benchmarks/gpu.py [--out benchmarks/gpu.json] [--cpu] [--tiny] [--budget 480] [--only SECTION ...]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ORDER = ("env", "throughput", "train", "onnx", "detect", "ddp")
# Time boxes of the sections on CUDA (their sum exceeds the budget on purpose: a slow section eats only its own box
# and the budget caps the rest); on the CPU only the budget bounds them, so a loaded machine still finishes each.
BOX_S = {"env": 45, "throughput": 100, "train": 150, "onnx": 75, "detect": 90, "ddp": 120}
MIN_S = 15  # a section is not started with less than this left of the budget
CUDA = {"device": "cuda:0", "train_device": "0", "amp": True}
CPU = {"device": "cpu", "train_device": "cpu", "amp": False}
FULL = {  # on one H100/H200: about 5 minutes in all
    "imgsz": 640,
    "batch": 32,
    "warmup": 10,
    "steps": 40,
    "repeats": 30,
    "latency_batches": [1, 8],
    "video": [1920, 1080, 24],  # width, height, frames
    "synth": {"train_videos": 12, "val_videos": 3, "frames": 40, "width": 640, "height": 384},
    "stride": 1,
    "train_args": {"imgsz": 640, "batch": 32, "workers": 8, "plots": False},
}
TINY = {  # the test suite's CPU run, and --tiny
    "imgsz": 64,
    "batch": 2,
    "warmup": 0,
    "steps": 1,
    "repeats": 2,
    "latency_batches": [1],
    "video": [128, 96, 2],
    "synth": {"train_videos": 1, "val_videos": 1, "frames": 6, "width": 96, "height": 64, "seed": 3},
    "stride": 2,
    "train_args": {"imgsz": 64, "batch": 2, "workers": 0, "plots": False, "mosaic": 0.0},
}


def cuda_devices() -> int:
    """CUDA devices torch sees (0 without CUDA), asked in a child process so the runner never initialises CUDA."""
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return 0


def run_section(name: str, plan: dict, work: Path, timeout: float) -> dict[str, Any]:
    """Run one section in a new process group; kill the group when ``timeout`` passes. Returns its entry."""
    result, log = work / f"{name}.json", work / f"{name}.log"
    result.unlink(missing_ok=True)
    (work / "plan.json").write_text(json.dumps(plan))
    command = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--work", str(work)]
    start = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=work, env=_child_env()
        )
        try:
            code = child.wait(timeout=timeout)
            status = "ok" if code == 0 else "error"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)  # DDP workers and loader processes too
            child.wait()
            status = "timeout"
    entry = json.loads(result.read_text()) if result.is_file() else {}
    entry.update(status=status, seconds=round(time.perf_counter() - start, 1), log=str(log))
    if status == "timeout":
        entry["reason"] = f"time box of {round(timeout, 1):g} s ended (rows measured before it are kept)"
    elif status == "error":
        entry["reason"] = _last_error(log)
    if status != "ok":  # the log lives in the temporary work folder: keep its end
        entry["log_tail"] = log.read_text(errors="replace").splitlines()[-20:]
    return entry


def _child_env() -> dict[str, str]:
    """The environment with this checkout first on PYTHONPATH: sections, and the DDP workers ultralytics starts from
    them, import csfnet from here whether or not it is installed."""
    paths = [str(HERE.parent), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "PYTHONUNBUFFERED": "1"}


def _last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line]
    return (errors or lines or ["exited without output"])[-1][:300]


def section_main(name: str, work: Path) -> None:
    """Child process: run one section, writing its entry after every recorded row."""
    sys.path.insert(0, str(HERE))  # benchmarks/run.py and gpu_sections.py
    import gpu_sections

    plan = json.loads((work / "plan.json").read_text())
    entry: dict[str, Any] = {"rows": [], "skipped": []}

    def record(row: dict | None = None, skip: tuple[str, str] | None = None, **facts: Any) -> None:
        if row is not None:
            entry["rows"].append(row)
        if skip is not None:
            entry["skipped"].append({"what": skip[0], "reason": skip[1]})
        entry.update(facts)
        _write_atomic(work / f"{name}.json", json.dumps(entry, indent=2, default=str))

    record()
    gpu_sections.SECTIONS[name](plan, work, record)


def check(out: Path, cpu: bool, tiny: bool, budget: float, only: list[str]) -> dict[str, Any]:
    """Run every selected section within ``budget`` seconds; write ``out`` and its markdown after each.

    CUDA when torch sees a device and ``cpu`` is not set, else the CPU; tiny settings on the CPU or when ``tiny``.
    """
    start = time.perf_counter()
    gpus = 0 if cpu else cuda_devices()
    tiny = tiny or not gpus
    plan = {**(CUDA if gpus else CPU), **(TINY if tiny else FULL)}
    plan["train_args"] = {**plan["train_args"], "amp": plan["amp"]}
    report: dict[str, Any] = {
        "meta": {
            "mode": "cuda" if gpus else "cpu",
            "tiny": tiny,
            "cuda_devices": gpus,
            "budget_s": budget,
            "plan": plan,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
        },
        "sections": {},
    }
    if not gpus:
        reason = "--cpu given" if cpu else "no CUDA device visible to torch"
        print(f"CPU mode ({reason}): tiny settings, CPU rows instead of CUDA ones", flush=True)
    with tempfile.TemporaryDirectory(prefix="csfnet-gpu-check-") as tmp:
        work = Path(tmp)
        for name in ORDER:
            left = budget - (time.perf_counter() - start)
            if name not in only:
                entry = {"status": "skipped", "reason": "not selected (--only)"}
            elif name == "ddp" and gpus < 2:
                entry = {"status": "skipped", "reason": f"{gpus} CUDA device(s): DDP needs 2"}
            elif left < MIN_S:
                entry = {"status": "skipped", "reason": f"time budget spent ({left:.0f} s of {budget:.0f} s left)"}
            else:
                entry = run_section(name, plan, work, min(BOX_S[name], left) if gpus else left)
                entry.pop("log")  # in the temporary folder: gone after the check
            report["sections"][name] = entry
            report["total_s"] = round(time.perf_counter() - start, 1)
            _print_progress(name, entry)
            write(report, out)
    return report


def _print_progress(name: str, entry: dict[str, Any]) -> None:
    status = entry["status"]
    where = f" in {entry['seconds']} s" if "seconds" in entry else ""
    print(f"[{name}] {status}{where}" + (f": {entry['reason']}" if "reason" in entry else ""), flush=True)
    for skip in entry.get("skipped", []):
        print(f"[{name}] skipped {skip['what']}: {skip['reason']}", flush=True)


def write(report: dict[str, Any], out: Path) -> None:
    """``out`` (JSON) and the markdown tables beside it (same name, ``.md``), each written atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, json.dumps(report, indent=2, default=str) + "\n")
    _write_atomic(out.with_suffix(".md"), markdown(report))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def markdown(report: dict[str, Any]) -> str:
    """One table per section with rows, then what was skipped and why."""
    meta = report["meta"]
    env = report["sections"].get("env", {})
    device = ", ".join(env.get("gpus") or []) or "CPU"
    lines = [
        f"# GPU check ({meta['mode']} mode, {meta['started']})",
        "",
        f"Device: {device}; torch {env.get('torch', '?')}, CUDA {env.get('cuda')}, ultralytics "
        f"{env.get('ultralytics', '?')}, onnxruntime {env.get('onnxruntime', '?')}. Total {report.get('total_s')} s "
        f"of a {meta['budget_s']:.0f} s budget. Command: `{meta['command']}`",
    ]
    skipped = []
    for name, entry in report["sections"].items():
        rows = entry.get("rows") or []
        if rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            lines += ["", f"## {name} ({entry['status']}, {entry.get('seconds')} s)", ""]
            lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
        if entry["status"] != "ok":
            skipped.append((name, entry["status"], entry.get("reason", "")))
        skipped += [(f"{name}: {s['what']}", "skipped", s["reason"]) for s in entry.get("skipped", [])]
    if skipped:
        lines += ["", "## Not measured", "", "| what | status | reason |", "|---|---|---|"]
        lines += [f"| {what} | {status} | {reason} |" for what, status, reason in skipped]
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "gpu.json", help="JSON report (markdown beside it)")
    parser.add_argument("--cpu", action="store_true", help="CPU mode (tiny settings) even when CUDA is present")
    parser.add_argument("--tiny", action="store_true", help="tiny settings on CUDA too (a smoke run)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole check")
    parser.add_argument("--only", nargs="+", choices=ORDER, default=list(ORDER))
    parser.add_argument("--section", choices=ORDER, help=argparse.SUPPRESS)  # child process: run this section
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.section:
        section_main(args.section, args.work)
        return
    report = check(args.out.resolve(), args.cpu, args.tiny, args.budget, args.only)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {report['total_s']} s")


if __name__ == "__main__":
    main()
