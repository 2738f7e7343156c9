"""Extraction fanned out over sequence shards, then merged: the same dataset as one extraction, file for file."""

from __future__ import annotations

import hashlib
from pathlib import Path

from csfnet.cli import main


def _contents(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_sharded_extraction_merges_into_the_single_extraction(tiny_raw, tmp_path, capsys):
    tiles = ["--set", "extract.tile=64", "--set", "extract.stride=1"]  # tiles too: their seeded negatives
    assert main(["data", "extract", "--source", str(tiny_raw), "--out", "single", "--workers", "1", *tiles]) == 0
    for k in range(2):
        shard = ["data", "extract", "--source", str(tiny_raw), "--out", f"shard{k}", "--shard", f"{k}/2", *tiles]
        assert main([*shard, "--workers", "1"]) == 0
    held = [sorted(p.name for p in (tmp_path / f"shard{k}/images").rglob("*.jpg")) for k in range(2)]
    assert held[0] and held[1] and not set(held[0]) & set(held[1])  # each shard decoded its own sequences
    merge = ["data", "extract", "--source", str(tiny_raw), "--out", "merged", "--merge", "shard0", "--merge", "shard1"]
    capsys.readouterr()
    assert main([*merge, *tiles]) == 0
    assert '"reused_sequences": 3' in capsys.readouterr().out  # every sequence linked from a shard, none decoded
    single, merged = _contents(tmp_path / "single"), _contents(tmp_path / "merged")
    assert len(single) > 10 and merged == single  # data.yaml, manifest.json, report.json, every image and label


def test_bad_shard_options_are_one_line_and_write_nothing(tiny_raw, tmp_path, capsys):
    for options in (["--shard", "2/2"], ["--shard", "1/2", "--merge", "x"], ["--merge", "missing"]):
        code = main(["data", "extract", "--source", str(tiny_raw), "--out", "ds", *options])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("csfnet data extract: error:") and "\n" not in err, err
        assert not (tmp_path / "ds").exists()
