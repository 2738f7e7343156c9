"""What the false positives of a comparison's cells sit on: the synthetic benchmark's birds, its specks, or other
clutter (:mod:`csfnet.compare.distractors`), per frame, with seed intervals and paired differences.

    python benchmarks/false_positives.py --cells runs/compare --data data/dataset/data.yaml --raw data/raw \
        --out metrics/false-positives [--set 'compare.configs=[csfnet-n,csfnet-t-n]' --set 'temporal.offsets=[1,3]']

Each cell's ``weights/best.pt`` predicts the validation frames again (as the cell was scored: ``eval`` thresholds,
its image size; a single-frame cell on the colour frames of motion data). Writes ``false_positives.json`` and
``false_positives.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tqdm import tqdm

from csfnet.cli_options import add_setting_options, command_settings
from csfnet.compare.cell import load_cell, single_frame_on_motion
from csfnet.compare.distractors import distractor_report, false_positives_by_kind, image_distractors, markdown
from csfnet.compare.predictions import scored_split
from csfnet.compare.report import find_cells
from csfnet.files import write_json, write_text
from csfnet.temporal import colour_view


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", nargs="+", required=True, help="cell folders, or folders of cells")
    parser.add_argument("--data", required=True, help="the data.yaml the cells were trained and scored on")
    parser.add_argument("--raw", required=True, help="the benchmark as generated (holds synth.json)")
    parser.add_argument("--out", required=True)
    add_setting_options(parser)
    args = parser.parse_args()
    settings = command_settings(args)  # params.yaml with the --set values, as every csfnet command
    e, c = settings.eval, settings.compare
    loaded = []
    with tempfile.TemporaryDirectory() as tmp:
        for folder in tqdm(find_cells(args.cells), desc="cells", unit="cell"):
            cell = load_cell(folder)[0]
            data = args.data
            if single_frame_on_motion(cell["config"], data):
                data = colour_view(data, Path(tmp) / folder.name / "data.yaml")
            images, predictions, truths, _ = scored_split(
                folder / "weights" / "best.pt", data, cell["imgsz"], e.conf, e.iou
            )
            near = image_distractors(args.raw, images)
            kinds = false_positives_by_kind([t[0] for t in truths], predictions, near, e.report_conf)
            loaded.append((cell, kinds))
    order = [*c.configs, *sorted({cell["config"] for cell, _ in loaded} - set(c.configs))]
    report = distractor_report(loaded, order, e.report_conf, c.confidence, c.resamples)
    out = Path(args.out)
    write_json(out / "false_positives.json", report)
    write_text(out / "false_positives.md", markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
