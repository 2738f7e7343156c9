"""``csfnet compare``: every configuration x seed trained at equal budget on the same data, then the report.

Under ``torchrun`` every rank trains each cell in the same order (:func:`csfnet.compare.cell.run_cell`); rank 0
alone writes the cells and the report and logs to MLflow, and every rank returns rank 0's report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tqdm import tqdm

from csfnet import distributed
from csfnet.checks import check_dataset
from csfnet.compare.cell import cell_settings, comparison_id, run_cell
from csfnet.compare.report import report
from csfnet.lineage import data_hash
from csfnet.runlog import StageLogger
from csfnet.settings import Settings, load_settings


def cell_dir(cells_dir: str | Path, config: str, seed: int) -> Path:
    """Folder of one cell: ``<cells_dir>/<config>-seed<seed>``."""
    return Path(cells_dir) / f"{Path(config).stem if config.endswith(('.yaml', '.yml')) else config}-seed{seed}"


def compare(
    data: str | Path,
    out: str | Path = "metrics/compare",
    cells_dir: str | Path = "runs/compare",
    logger: StageLogger | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Train and score every (configuration, seed) cell not finished yet, then write the report.

    Args:
        data: ``data.yaml`` every cell trains and validates on.
        out: Report folder (``compare.json``, ``compare.md``, ``compare.png``).
        cells_dir: Cell folders (see :func:`cell_dir`); finished cells with the same settings are reused, so a
            killed comparison continues where it stopped.
        logger: Records one parent run for the comparison, a nested run per cell and one for the report
            (default: nothing is recorded).
        settings: Validated settings: ``compare.configs`` x ``compare.seeds`` (the first configuration is the
            reference), ``compare.preset``, ``train.device`` ... (default: :func:`csfnet.settings.load_settings`).
    """
    settings = settings or load_settings()
    check_dataset(data, ("train", "val"))
    c = settings.compare
    comparison = comparison_id(data_hash(data), cell_settings(c.configs[0], c.seeds[0], settings=settings))
    cells = [(config, seed) for config in c.configs for seed in c.seeds]
    is_main = distributed.current_launch().is_main
    folders = []
    for config, seed in tqdm(cells, desc="comparison cells", unit="cell", disable=not is_main):
        folder = cell_dir(cells_dir, config, seed)
        run_cell(config, seed, data, folder, logger=logger, comparison=comparison, settings=settings)
        folders.append(folder)
    if not is_main:
        return distributed.from_main(None)  # rank 0's report, once written
    return distributed.from_main(report(folders, out, logger=logger, comparison=comparison, settings=settings))
