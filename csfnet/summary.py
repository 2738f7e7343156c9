"""One screen of headline figures from the pipeline's metrics files (``dvc metrics show`` has every value).

The files are found through ``dvc.yaml``: each stage's first ``metrics`` entry. Stages that have not run yet are
left out.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml


def stage_metrics(dvc_file: str | Path = "dvc.yaml") -> dict[str, dict]:
    """``{stage: metrics}`` for every stage of ``dvc_file`` whose metrics file exists (paths relative to it)."""
    dvc_file = Path(dvc_file)
    stages = yaml.safe_load(dvc_file.read_text()).get("stages", {})
    found = {}
    for name, stage in stages.items():
        entries = stage.get("metrics") or []
        if not entries:
            continue
        first = entries[0]
        path = dvc_file.parent / stage.get("wdir", ".") / (first if isinstance(first, str) else next(iter(first)))
        if path.is_file():
            found[name] = json.loads(path.read_text())
    return found


def summary(metrics: dict[str, dict]) -> str:
    """Aligned ``label  figures`` lines for the stages present in ``metrics``."""
    rows = [(label, fmt(metrics[stage])) for stage, label, fmt in _ROWS if stage in metrics]
    lines = [(label, text) for label, text in rows if text]
    width = max((len(label) for label, _ in lines), default=0)
    indent = "\n" + " " * (width + 2)  # continuation lines of multi-line figures
    return "\n".join(f"{label:<{width}}  {text.replace(chr(10), indent)}" for label, text in lines)


def _stats(m: dict) -> str:
    splits = m["splits"]
    per_split = [
        " / ".join(f"{s['objects']}" for s in splits.values()) + f" objects ({' / '.join(splits)})",
        "median " + " / ".join(f"{s['source_px']['median']:g}" for s in splits.values()) + " px",
        f"below the {m['finest_stride']} px stride at imgsz {m['imgsz']}: "
        + " / ".join(f"{100 * s['below_stride_share']:.0f}%" for s in splits.values()),
    ]
    return ", ".join(per_split)


def _tune(m: dict) -> str:
    if not m.get("partition"):
        return f"no tunable CSwitch ({m.get('reason', '')})".strip()
    trials = sum(m.get("counts", {}).values())
    decision = m.get("decision")
    if not decision:  # written before tuning decided
        return f"{_channels(m['partition'])} (trial {m['trial']} of {trials}, mAP50-95 {m['value']:.3f})"
    own = f"the config's own {_channels(decision['incumbent'])}"
    best = f"study best {_channels(decision['challenger'])} (trial {m['trial']} of {trials}, mAP50-95 {m['value']:.3f})"
    outcome = decision["outcome"]
    if outcome == "inconclusive":
        tied = m.get("counts", {}).get("complete", trials)
        return f"the search could not separate partitions at this budget ({tied} trials tied); training uses {own}"
    if outcome == "pending":
        return f"{best} not re-validated yet; training uses {own}"
    if decision.get("interval") is None:  # the config's own partition won the study
        return f"{own} kept: it won the study ({trials} trials, mAP50-95 {m['value']:.3f})"
    low, high = decision["interval"]
    gain = (
        f"mAP50-95 {decision['effect']:+.3f}, {100 * decision['confidence']:g}% interval {low:+.3f} to {high:+.3f} "
        f"over {len(decision['seeds'])} seeds"
    )
    if outcome == "adopted":
        return f"{_channels(decision['challenger'])} adopted over {own} ({gain})"
    return f"{own} kept: {best} not better beyond the noise ({gain})"


def compare_lines(m: dict) -> str:
    """One line per configuration: mAP50 over seeds and the paired difference from the reference."""
    lines = []
    for name in m["order"]:
        row = m["rows"][name]
        text = f"{name} mAP50 {_interval(row['map50'])} ({len(row['seeds'])} seeds)"
        delta = row.get("delta_map50")
        lines.append(f"{text}, {_interval(delta, '+.3f')} vs {m['reference']}: {delta['verdict']}" if delta else text)
    return "\n".join(lines)


def _interval(i: dict, spec: str = ".3f") -> str:
    from csfnet.compare.report import fmt_interval

    return fmt_interval(i, spec)


def _channels(partition: list[int]) -> str:
    return "/".join(map(str, partition))


def _eval(m: dict) -> str:
    return (
        f"mAP50 {m['map50']:.3f}  mAP50-95 {m['map50_95']:.3f}  precision {m['precision']:.3f}  "
        f"recall {m['recall']:.3f}  ({m['images']} images, {m['objects']} objects)"
    )


def _bands(m: dict) -> str:
    def span(band: dict) -> str:
        lo, hi = band["px"]
        return f"<{hi:g} px" if not lo else f">={lo:g} px" if hi is None else f"{lo:g}-{hi:g} px"

    bands = [b for b in m["size_bands"].values() if b["objects"]]
    return "  ".join(f"{span(b)} {b['ap50']:.2f} ({b['objects']} objects)" for b in bands)


def _robustness(m: dict) -> str:
    rows = sorted(m.values(), key=lambda r: r["sigma"])
    return "  ".join(f"σ {r['sigma']:g}: {r['map50']:.3f}" for r in rows)


def _export(m: dict) -> str:
    v = m["verification"]
    if not v.get("passed"):
        failed = [name for name, check in v.get("checks", {}).items() if not check.get("passed")]
        return f"NOT verified: {', '.join(failed)} failed"
    raw = v["checks"]["raw_outputs"]["max_abs_diff"]
    return f"verified, {m['fp32']['size_mb']:g} MB (max |Δ| {raw:.1e}, mAP50-95 {v['map50_95']:.3f} in both runtimes)"


def _int8(m: dict) -> str:
    q = m.get("int8")
    if not q:
        return ""
    return (
        f"{q['size_mb']:g} MB, {q['speedup_cpu']:.2f}x (batch 1) / {q['speedup_cpu_batch8']:.2f}x (batch 8) "
        f"faster on CPU, mAP50 {q['map50_change_points']:+.1f} points"
    )


def _register(m: dict) -> str:
    role = "champion" if m.get("champion") == m.get("version") else "challenger"
    return f"{m['name']} version {m['version']}: {role} ({m['reason']})"


_ROWS: list[tuple[str, str, Callable[[Any], str]]] = [
    ("stats", "data", _stats),
    ("tune", "CSwitch partition", _tune),
    ("eval", "validation", _eval),
    ("eval", "AP50 by target size", _bands),
    ("robustness", "mAP50 under noise", _robustness),
    ("export", "ONNX export", _export),
    ("export", "INT8 model", _int8),
    ("register", "MLflow registry", _register),
    ("report", "comparison", compare_lines),  # compare/dvc.yaml: csfnet summary --dvc-file compare/dvc.yaml
]
