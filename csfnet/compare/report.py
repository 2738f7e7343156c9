"""The comparison report: the paper's Tables 2 and 3 with intervals, from finished cells.

Per configuration: mAP50, mAP50-95, AP50 by size band and false positives per image at ``eval.report_conf`` (from
the stored matches) as the mean and Student-t interval over seeds; parameters, GFLOPs, CPU latency and training time;
and, for every row after the first, its difference from the first row (mAP50, mAP50-95, false positives and AP50
per size band) as a paired bootstrap over validation images (every seed's model of both rows scored on the same
resampled images).
Written as ``compare.json`` (DVC metrics), ``compare.md`` and ``compare.png``, all or nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from csfnet.compare.cell import CELL_FILE, COMPARISON_TAG, cell_settings, comparison_id, comparison_parent, load_cell
from csfnet.errors import DataError, InputNotFoundError
from csfnet.files import replace_dir, staging_dir
from csfnet.metrics import ImageMatches, Interval, false_positives_per_image, paired_bootstrap, seed_interval
from csfnet.runlog import NullLogger, StageLogger
from csfnet.settings import Settings, load_settings

METRICS = ("map50", "map50_95")
LABELS = {"map50": "mAP50", "map50_95": "mAP50-95"}
FP = "fp_per_image"  # predictions at eval.report_conf matching no ground truth, per validation image
T = TypeVar("T")


def find_cells(paths: Sequence[str | Path]) -> list[Path]:
    """Cell folders among ``paths``: each a cell folder, or a folder whose sub-folders are cells."""
    cells: list[Path] = []
    for path in map(Path, paths):
        if (path / CELL_FILE).is_file():
            cells.append(path)
        elif path.is_dir():
            cells.extend(sorted(p.parent for p in path.glob(f"*/{CELL_FILE}")))
        else:
            raise InputNotFoundError(f"{path}: no comparison cell there")
    if not cells:
        raise InputNotFoundError(f"no finished comparison cell ({CELL_FILE}) in {', '.join(map(str, paths))}")
    return cells


def report(
    cells: Sequence[str | Path],
    out: str | Path,
    configured: bool = False,
    logger: StageLogger | None = None,
    comparison: str | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Compare the configurations of ``cells`` (folders, see :func:`find_cells`) and write the report to ``out``.

    Rows follow ``compare.configs`` (configurations not listed there come after, in folder order); the first row
    is the reference of every paired difference. Cells must share the data, the validation split and the budget.
    ``configured``: keep only the cells of ``compare.configs`` x ``compare.seeds`` (a folder may hold older ones).
    ``logger`` records the report as the run closing the comparison's parent run (default: nothing is recorded).
    """
    settings = settings or load_settings()
    loaded = [load_cell(c) for c in find_cells(cells)]
    if configured:
        loaded = select_configured(loaded, lambda item: item[0], settings, cells)
    return write_report(loaded, out, logger=logger, comparison=comparison, settings=settings)


def select_configured(
    items: list[T], cell_of: Callable[[T], dict[str, Any]], settings: Settings, where: Any
) -> list[T]:
    """The ``items`` whose cell (``cell_of(item)``) is in ``compare.configs`` x ``compare.seeds``; InputNotFoundError
    when none is, or none of the reference configuration (the first of ``compare.configs``)."""
    c = settings.compare
    wanted = {(config, seed) for config in c.configs for seed in c.seeds}
    kept = [item for item in items if (cell_of(item)["config"], cell_of(item)["seed"]) in wanted]
    places = ", ".join(map(str, where if isinstance(where, (list, tuple)) else [where]))
    if not kept:
        raise InputNotFoundError(f"none of the cells in {places} is in compare.configs x seeds")
    if not any(cell_of(item)["config"] == c.configs[0] for item in kept):
        raise InputNotFoundError(f"no finished cell of the reference configuration {c.configs[0]} (compare.configs)")
    return kept


def write_report(
    loaded: list[tuple[dict[str, Any], ImageMatches]],
    out: str | Path,
    logger: StageLogger | None = None,
    comparison: str | None = None,
    settings: Settings | None = None,
    scoring: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of already loaded ``(cell.json, matches)`` pairs (see :func:`report`); ``scoring`` describes how
    they were re-scored (:mod:`csfnet.compare.rescore`), None for the cells' own validation split."""
    settings = settings or load_settings()
    _check_comparable([c for c, _ in loaded])
    groups: dict[str, list[tuple[dict[str, Any], ImageMatches]]] = {}
    for cell, matches in loaded:
        groups.setdefault(cell["config"], []).append((cell, matches))
    c = settings.compare
    order = [name for name in c.configs if name in groups] + [name for name in groups if name not in c.configs]
    reference = order[0]
    report_conf = (loaded[0][0].get("eval") or {}).get("report_conf", settings.eval.report_conf)  # as scored
    rows = {
        name: _row(groups[name], groups[reference] if name != reference else None, c, report_conf) for name in order
    }
    first = loaded[0][0]
    result = {
        "reference": reference,
        "order": order,
        "confidence": c.confidence,
        "resamples": c.resamples,
        "preset": first["preset"],
        "epochs": first["args"].get("epochs"),
        "imgsz": first["imgsz"],
        "images": first["images"],
        "objects": first["objects"],
        "data_hash": first["data_hash"],
        "bands_px": first["bands_px"],
        "bands_objects": first.get("bands_objects"),  # validation objects per band (cells before it: None)
        "report_conf": report_conf,  # operating point of the false positives per image
        "scoring": scoring,
        "rows": rows,
    }
    out = Path(out)
    with staging_dir(out) as tmp:
        (tmp / "compare.json").write_text(json.dumps(result, indent=2))
        (tmp / "compare.md").write_text(markdown(result))
        plot(result, tmp / "compare.png")
        replace_dir(tmp, out)
    logger = logger or NullLogger()
    if logger.active:
        budget = cell_settings(first["config"], first["seed"], first["preset"], settings)
        _log(logger, result, out, comparison or first.get("comparison") or comparison_id(first["data_hash"], budget))
    return result


def _check_comparable(cells: list[dict[str, Any]]) -> None:
    """Same data, split and budget (the preset's arguments up to the seed) in every cell; no duplicate seed."""
    first = cells[0]
    for cell in cells[1:]:
        for key in ("data_hash", "images", "objects", "imgsz", "bands_px", "eval"):
            if cell.get(key) != first.get(key):
                raise DataError(
                    f"cells {first['config']}/seed {first['seed']} and {cell['config']}/seed {cell['seed']} differ in "
                    f"{key} ({first.get(key)} vs {cell.get(key)}): a comparison needs the same data, split and scoring"
                )
        budget = {k: v for k, v in cell["args"].items() if k != "seed"}
        if budget != {k: v for k, v in first["args"].items() if k != "seed"}:
            raise DataError(f"{cell['config']}/seed {cell['seed']} was trained with other arguments: unequal budget")
    seen = set()
    for cell in cells:
        key = (cell["config"], cell["seed"])
        if key in seen:
            raise DataError(f"{cell['config']} seed {cell['seed']} appears twice among the cells")
        seen.add(key)


def _row(
    cells: list[tuple[dict, ImageMatches]],
    reference: list[tuple[dict, ImageMatches]] | None,
    c: Any,
    report_conf: float,
) -> dict:
    first = cells[0][0]
    metrics = [cell["metrics"] for cell, _ in cells]
    fp = [false_positives_per_image(m, report_conf) for _, m in cells]
    latency = [cell["latency_ms_cpu"] for cell, _ in cells]
    row: dict[str, Any] = {
        "seeds": sorted(cell["seed"] for cell, _ in cells),
        **{m: _ap_interval([x[m] for x in metrics], c.confidence) for m in METRICS},
        "ap50_bands": {
            band: _ap_interval([x["ap50_bands"][band] for x in metrics], c.confidence)
            for band in first["metrics"]["ap50_bands"]
        },
        FP: count_interval(fp, c.confidence),
        "params": first["params"],
        "gflops": first["gflops"],
        "latency_ms_cpu": None if None in latency else round(sum(latency) / len(cells), 2),
        "train_s": round(sum(cell["train_s"] for cell, _ in cells) / len(cells), 1),
        "cpu_s": round(sum(cell["cpu_s"] for cell, _ in cells) / len(cells), 1),
        "gpu_hours": round(sum(cell["gpu_hours"] for cell, _ in cells) / len(cells), 4),
        "device": first["device"],
        "per_seed": {
            str(cell["seed"]): {**{m: cell["metrics"][m] for m in METRICS}, FP: round(f, 5)}
            for (cell, _), f in zip(cells, fp)
        },
    }
    if reference is not None:
        mine, theirs = [m for _, m in cells], [m for _, m in reference]
        for m in METRICS:
            delta = paired_bootstrap(mine, theirs, metric=m, resamples=c.resamples, confidence=c.confidence)
            row[f"delta_{m}"] = {**delta.to_json(), "verdict": verdict(delta)}

        def fp_score(matches: ImageMatches, weights: Any) -> float:
            return false_positives_per_image(matches, report_conf, weights)

        delta = paired_bootstrap(mine, theirs, metric=fp_score, resamples=c.resamples, confidence=c.confidence)
        row[f"delta_{FP}"] = {**delta.to_json(), "verdict": verdict(delta, lower_is_better=True)}
        if all(m.sized for m in mine + theirs):  # matches saved before sizes were stored have no band bootstrap
            row["delta_ap50_bands"] = _band_deltas(mine, theirs, first, c)
    return row


def _band_deltas(mine: list[ImageMatches], theirs: list[ImageMatches], cell: dict, c: Any) -> dict[str, dict]:
    """Paired-bootstrap difference of AP50 per size band that holds validation objects."""
    out = {}
    for band, (lo, hi) in cell["bands_px"].items():
        if (cell.get("bands_objects") or {}).get(band, 1) == 0:
            continue
        hi = math.inf if hi is None else hi
        ours, ref = [m.band(lo, hi) for m in mine], [m.band(lo, hi) for m in theirs]
        delta = paired_bootstrap(ours, ref, metric="map50", resamples=c.resamples, confidence=c.confidence)
        out[band] = {**delta.to_json(), "verdict": verdict(delta)}
    return out


def count_interval(values: list[float], confidence: float) -> dict[str, Any]:
    """Student-t interval over seeds of a count per image, its lower bound clipped at 0."""
    interval = seed_interval(values, confidence).to_json()
    if interval["low"] is not None:
        interval["low"] = max(interval["low"], 0.0)
    return interval


def _ap_interval(values: list[float], confidence: float) -> dict[str, Any]:
    """Student-t interval over seeds, clipped to AP's range [0, 1] (two seeds give wide intervals)."""
    interval = seed_interval(values, confidence).to_json()
    for key in ("low", "high"):
        if interval[key] is not None:
            interval[key] = min(max(interval[key], 0.0), 1.0)
    return interval


def verdict(delta: Interval, lower_is_better: bool = False) -> str:
    """``better`` / ``worse`` when the interval of the difference excludes 0, else ``not separated``; a decrease is
    ``better`` when ``lower_is_better`` (false positives)."""
    up, down = ("worse", "better") if lower_is_better else ("better", "worse")
    if delta.low > 0:
        return up
    if delta.high < 0:
        return down
    return "not separated"


def fmt_interval(interval: dict[str, Any], spec: str = ".3f") -> str:
    """``mean [low, high]``, or the mean alone when the interval is undefined (one seed, all values equal)."""
    mean, low, high = interval["mean"], interval["low"], interval["high"]
    if low is None or high is None:
        return f"{mean:{spec}}"
    return f"{mean:{spec}} [{low:{spec}}, {high:{spec}}]"


def band_label(px: list[float | None]) -> str:
    """``<8 px``, ``8-16 px``, ``≥32 px`` for a band's ``[lo, hi)`` of sqrt(box area)."""
    lo, hi = px
    if not lo:
        return f"<{hi:g} px"
    return f"≥{lo:g} px" if hi is None else f"{lo:g}-{hi:g} px"


def markdown(result: dict[str, Any]) -> str:
    """The report as a Markdown table (means and intervals) with a legend."""
    ref, conf = result["reference"], round(result["confidence"] * 100)
    counts = result.get("bands_objects") or {}
    bands = [b for b in result["rows"][ref]["ap50_bands"] if counts.get(b, 1)]  # no column for an empty band
    scoring = result.get("scoring")
    fp_head = f"FP / image @{result['report_conf']:g}"
    head = ["config", "seeds", "mAP50", "mAP50-95", *[f"AP50 {band_label(result['bands_px'][b])}" for b in bands]]
    head += [fp_head, f"Δ mAP50 vs {ref}", f"Δ mAP50-95 vs {ref}", f"Δ {fp_head} vs {ref}"]
    smallest = delta_band(result)
    if smallest:  # the band this project exists for, paired like the rest
        head.append(f"Δ AP50 {band_label(result['bands_px'][smallest])} vs {ref}")
    head += ["params (M)", "GFLOPs", "CPU ms / frame" if scoring else "CPU ms", "training / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in result["order"]:
        r = result["rows"][name]
        cells = [name, str(len(r["seeds"])), fmt_interval(r["map50"]), fmt_interval(r["map50_95"])]
        cells += [fmt_interval(r["ap50_bands"][b]) for b in bands]
        cells.append(fmt_interval(r[FP], ".2f"))
        for m, spec in zip((*METRICS, FP), (".3f", ".3f", ".2f")):
            d = r.get(f"delta_{m}")
            cells.append(f"{fmt_interval(d, spec)} {d['verdict']}" if d else "reference")
        if smallest:
            d = r.get("delta_ap50_bands", {}).get(smallest)
            cells.append(f"{fmt_interval(d)} {d['verdict']}" if d else "reference" if name == ref else "–")
        latency = "–" if r["latency_ms_cpu"] is None else f"{r['latency_ms_cpu']:.1f}"
        cells += [f"{r['params'] / 1e6:.2f}", f"{r['gflops']:.1f}", latency]
        gpu = f"{r['gpu_hours']:.3f} GPU-h" if r["gpu_hours"] else f"{r['cpu_s']:.0f} CPU-s"
        cells.append(f"{r['train_s']:.0f} s, {gpu} ({r['device']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(
        [
            f"# Comparison: {len(result['order'])} configurations, preset {result['preset']} "
            f"({result['epochs']} epochs, imgsz {result['imgsz']})",
            "",
            *([scoring_line(scoring), ""] if scoring else []),
            f"Validation: {result['images']} images, {result['objects']} objects. Values: mean over seeds "
            f"[{conf}% Student-t interval]. Δ: difference from {ref} on the same images, mean over seeds, "
            f"[{conf}% paired bootstrap interval over validation images, {result['resamples']} resamples]; "
            "better/worse only when the interval excludes 0 (fewer false positives is better). "
            f"{fp_head}: predictions scoring at least {result['report_conf']:g} that match no ground truth at IoU "
            "0.5, per validation image (on the synthetic benchmark: its unannotated birds, specks and clutter). "
            + (
                "Δ AP50 of a size band: the same paired bootstrap on that band's targets and detections. "
                if smallest
                else ""
            )
            + "GFLOPs at the training image size."
            + (" CPU ms / frame: sliced prediction of one validation frame, merging included." if scoring else ""),
            "",
            *lines,
            "",
        ]
    )


def delta_band(result: dict[str, Any]) -> str | None:
    """The smallest size band holding validation objects when the rows carry its paired AP50 difference (the table's
    column and the plot's third panel), else None (matches saved without sizes)."""
    counts, rows = result.get("bands_objects") or {}, result["rows"]
    smallest = next((b for b in rows[result["reference"]]["ap50_bands"] if counts.get(b, 1)), None)
    return smallest if smallest and any(smallest in r.get("delta_ap50_bands", {}) for r in rows.values()) else None


def scoring_line(scoring: dict[str, Any]) -> str:
    """How re-scored cells were scored: the dataset and the slicing."""
    how = "whole frames"
    if scoring.get("slice"):
        how = (
            f"{scoring['slice']} px slices (overlap {scoring['overlap']:g}, {scoring['merge']} merge"
            f"{', + the whole frame' if scoring['full_frame'] else ''})"
        )
    return (
        f"Re-scored on {scoring['data']} ({scoring['data_hash']}) with {how}, each crop at imgsz "
        f"{scoring['imgsz']}, on {scoring['device']}: the same trained cells (data {scoring['trained_on']})."
    )


def plot(result: dict[str, Any], path: Path) -> None:
    """mAP50 per configuration (mean, interval, every seed) and the paired difference from the reference; with band
    differences, also the paired difference in AP50 of the smallest band holding objects."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order, rows = result["order"], result["rows"]
    smallest = delta_band(result)
    panels = 3 if smallest else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 0.5 * len(order) + 2), sharey=True)
    left, deltas = axes[0], [("delta_map50", axes[1])]
    if smallest:
        deltas.append((smallest, axes[2]))
    for y, name in enumerate(order):
        r = rows[name]
        left.errorbar(r["map50"]["mean"], y, xerr=_err(r["map50"]), fmt="o", color="C0", capsize=4)
        left.scatter([s["map50"] for s in r["per_seed"].values()], [y] * len(r["per_seed"]), color="C0", alpha=0.35)
        for key, ax in deltas:
            d = r.get(key) if key == "delta_map50" else r.get("delta_ap50_bands", {}).get(key)
            if d:
                color = {"better": "C2", "worse": "C3"}.get(d["verdict"], "C7")
                ax.errorbar(d["mean"], y, xerr=_err(d), fmt="s", color=color, capsize=4)
    left.set_yticks(range(len(order)), order)
    left.invert_yaxis()
    conf, ref = round(result["confidence"] * 100), result["reference"]
    left.set_xlabel(f"mAP50 (mean, {conf}% interval over seeds; dots: seeds)")
    for key, ax in deltas:
        ax.axvline(0, color="k", lw=0.8)
        what = "mAP50" if key == "delta_map50" else f"AP50 {band_label(result['bands_px'][key])}"
        ax.set_xlabel(f"Δ {what} vs {ref} ({conf}% paired bootstrap)")
    fig.suptitle(f"preset {result['preset']}: {result['images']} validation images, {result['objects']} objects")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _err(interval: dict[str, Any]) -> list[list[float]]:
    if interval["low"] is None or interval["high"] is None:
        return [[0.0], [0.0]]
    return [[interval["mean"] - interval["low"]], [interval["high"] - interval["mean"]]]


def _log(logger: StageLogger, result: dict[str, Any], out: Path, comparison: str) -> None:
    """The report as a nested run closing the comparison's parent run; the table on the parent run too."""
    tags = {COMPARISON_TAG: comparison, "csfnet.data_hash": result["data_hash"], "mlflow.runName": "report"}
    params = {"reference": result["reference"], "configs": result["order"], "preset": result["preset"]}
    parent = comparison_parent(comparison)
    with logger.stage("compare-report", params, tags, final=True, parent=parent) as run:
        for name, row in result["rows"].items():
            flat = {m: row[m]["mean"] for m in (*METRICS, FP)}
            flat.update({f"delta_{m}": row[f"delta_{m}"]["mean"] for m in (*METRICS, FP) if f"delta_{m}" in row})
            run.log_metrics(flat, prefix=name)
        run.log_artifacts(out, "compare")
        comparison_run = run.parent
    for name in ("compare.md", "compare.json", "compare.png"):
        comparison_run.log_artifact(out / name, "compare")
