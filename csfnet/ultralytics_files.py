"""ultralytics' own declarations read from its installed files, without importing it (which imports torch).

Settings validation and config-name lookup need only ultralytics' argument names and types, its model YAMLs and its
tracker keys; every ``csfnet`` process validates params.yaml, so importing ultralytics for them would cost each light
step (ingest, extraction, compiling a pipeline) about two CPU-seconds. The key-type sets are parsed from the literal
``frozenset`` assignments of ``ultralytics/cfg/__init__.py``; if a release stops writing them as literals, the module
is imported instead (slower, never wrong).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(importlib.util.find_spec("ultralytics").submodule_search_locations[0])  # found, not imported
MODEL_DIR = ROOT / "cfg" / "models"
TRACKER_DIR = ROOT / "cfg" / "trackers"
KEY_SETS = ("CFG_FLOAT_KEYS", "CFG_FRACTION_KEYS", "CFG_INT_KEYS", "CFG_BOOL_KEYS")


@functools.cache
def default_args() -> dict[str, Any]:
    """ultralytics' training arguments and their defaults (``cfg/default.yaml``)."""
    return yaml.safe_load((ROOT / "cfg" / "default.yaml").read_text())


@functools.cache
def key_sets() -> dict[str, frozenset[str]]:
    """``CFG_FLOAT_KEYS``, ``CFG_FRACTION_KEYS``, ``CFG_INT_KEYS`` and ``CFG_BOOL_KEYS`` of ``ultralytics.cfg``."""
    found: dict[str, frozenset[str]] = {}
    for node in ast.parse((ROOT / "cfg" / "__init__.py").read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, keys = node.targets[0].id, _frozenset_literal(node.value)
            if name in KEY_SETS and keys is not None:
                found[name] = keys
    if set(found) != set(KEY_SETS):
        import ultralytics.cfg

        return {name: getattr(ultralytics.cfg, name) for name in KEY_SETS}
    return found


@functools.cache
def tracker_keys() -> frozenset[str]:
    """Every setting of ultralytics' tracker configs (``cfg/trackers/*.yaml``) but ``tracker_type``."""
    keys: set[str] = set()
    for path in TRACKER_DIR.glob("*.yaml"):
        keys |= set(yaml.safe_load(path.read_text())) - {"tracker_type"}
    return frozenset(keys)


def _frozenset_literal(node: ast.expr) -> frozenset[str] | None:
    """The value of ``frozenset(<literal>)``, or None for any other expression."""
    if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "frozenset" and len(node.args) == 1):
        return None
    try:
        return frozenset(ast.literal_eval(node.args[0]))
    except ValueError:
        return None
