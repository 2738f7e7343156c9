"""The import graph of csfnet, components and pipelines: floors that only import downwards, and no circle.

The graph comes from the source (``ast``): every import statement, module level or inside a function, counts.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("csfnet", "components", "pipelines")

#: Floors from the ground up. A module may import its own floor and the floors below, never one above. An entry
#: names a module or a package (then every module in it, unless a longer entry names that module); the root package
#: ``csfnet`` names only its ``__init__``, so each new top-level module has to be placed here.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaves", (
        "csfnet", "csfnet._offline", "csfnet.threads", "csfnet.errors", "csfnet.files", "csfnet.metrics",
        "csfnet.reports", "csfnet.nn", "csfnet.model", "csfnet.heads", "csfnet.runlog", "csfnet.trial_log",
        "csfnet.config_names", "csfnet.ultralytics_files",  # light: settings validation reads them in every process
        "csfnet.temporal",  # motion channels: numpy/OpenCV only, used by data, training, detect and serving
    )),
    ("configuration", (
        "csfnet.settings", "csfnet.device", "csfnet.distributed", "csfnet.services", "csfnet.lineage",
        "csfnet.mlflow_tracking", "csfnet.mlflow_logger",
    )),
    ("data", ("csfnet.data", "csfnet.checks", "csfnet.trainer", "csfnet.stacked_data", "csfnet.validator")),
    ("stages", (
        "csfnet.train", "csfnet.tune", "csfnet.revalidate", "csfnet.evaluate", "csfnet.robustness", "csfnet.detect",
        "csfnet.export", "csfnet.registry", "csfnet.mlflow_model", "csfnet.compare",
        "csfnet.summary", "csfnet.kubeflow",  # kubeflow: what runs inside pipeline steps and pods
    )),
    ("pipeline definitions", ("components", "pipelines")),
    ("entry points", (
        "csfnet.cli", "csfnet.cli_options", "csfnet.__main__",
        "csfnet.kubeflow.client",  # compiles and submits
    )),
)  # fmt: skip


def modules() -> dict[str, Path]:
    """Dotted name -> source file of every module of :data:`PACKAGES` (a package by its ``__init__``)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def unit_of(module: str) -> str | None:
    """The :data:`FLOORS` entry that places ``module``: its own name or its nearest package named there."""
    entries = {name for _, names in FLOORS for name in names}
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in entries and (n == len(parts) or candidate != "csfnet"):
            return candidate
    return None


def floor_of(module: str) -> int:
    """Index of ``module``'s floor in :data:`FLOORS`."""
    unit = unit_of(module)
    found = [i for i, (_, names) in enumerate(FLOORS) if unit in names]
    assert found, f"{module} is on no floor: add it to FLOORS in {Path(__file__).name}"
    return found[0]


def imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module of ours, line) for every import in ``path``, wherever it sits in the file."""

    def ours(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [ours(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [ours(f"{base}.{alias.name}") or ours(base) for alias in node.names]  # a submodule or a name
        else:
            continue
        yield from ((t, node.lineno) for t in targets if t and t != module)


def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line importing it}."""
    known = modules()
    out: dict[str, dict[str, int]] = {}
    for module, path in known.items():
        edges = out.setdefault(module, {})
        for target, line in imports(module, path, known):
            edges.setdefault(target, line)
    return out


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``edges`` (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    return next((found for node in sorted(edges) if node not in state and (found := visit(node))), None)


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per group of mutually importing nodes, so that a failure lists every circle at once."""
    reach = {node: _reachable(node, edges) for node in edges}
    groups = {frozenset(n for n in reach[node] if node in reach.get(n, ())) for node in edges if node in reach[node]}
    return [cycle({n: edges[n] & group for n in group}) for group in sorted(groups, key=sorted)]


def _reachable(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(edges.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(edges.get(node, ()))
    return seen


def _where(module: str, target: str, g: dict[str, dict[str, int]]) -> str:
    path = modules()[module].relative_to(ROOT)
    return f"{path}:{g[module][target]}: {module} -> {target}"


def test_every_module_has_a_floor() -> None:
    unplaced = sorted(m for m in modules() if unit_of(m) is None)
    assert not unplaced, f"modules on no floor (add them to FLOORS in {Path(__file__).name}): {unplaced}"
    entries = [name for _, names in FLOORS for name in names]
    assert len(entries) == len(set(entries)), "an entry on two floors"


def test_imports_never_go_up_a_floor() -> None:
    g = graph()
    upward = [
        f"{_where(m, t, g)} ({FLOORS[floor_of(m)][0]} imports {FLOORS[floor_of(t)][0]})"
        for m, targets in sorted(g.items())
        for t in sorted(targets)
        if floor_of(t) > floor_of(m)
    ]
    assert not upward, "imports from a lower floor to a higher one:\n" + "\n".join(upward)


def test_no_import_circle_between_modules() -> None:
    g = graph()
    found = circles({m: set(targets) for m, targets in g.items()})
    assert not found, "import circles:\n" + "\n\n".join(
        "\n".join(_where(a, b, g) for a, b in itertools.pairwise(circle)) for circle in found
    )


def test_no_import_circle_between_floor_entries() -> None:
    """Packages and modules as FLOORS names them: csfnet.data, csfnet.detect, csfnet.evaluate, components ..."""
    g = graph()
    units: dict[str, set[str]] = {}
    witness: dict[tuple[str, str], tuple[str, str]] = {}
    for m, targets in g.items():
        for t in targets:
            a, b = unit_of(m), unit_of(t)
            if a != b:
                units.setdefault(a, set()).add(b)
                witness.setdefault((a, b), (m, t))
    found = circles(units)
    assert not found, "import circles between packages:\n" + "\n\n".join(
        "\n".join(_where(*witness[a, b], g) for a, b in itertools.pairwise(circle)) for circle in found
    )


def defined_names(path: Path) -> set[str] | None:
    """Names a module defines at its top level (also under ``if``/``try``), plus those it re-exports in
    ``__all__``; None when a module ``__getattr__`` can answer any name."""
    names: set[str] = set()
    exported: set[str] = set()
    todo = list(ast.parse(path.read_text(), str(path)).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            if "__all__" in names and not exported and isinstance(node.value, (ast.List, ast.Tuple)):
                exported = {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
        elif isinstance(node, (ast.If, ast.Try)):
            todo.extend([*node.body, *node.orelse, *getattr(node, "finalbody", []), *getattr(node, "handlers", [])])
        elif isinstance(node, ast.ExceptHandler):
            todo.extend(node.body)
    return None if "__getattr__" in names else names | exported


def test_every_imported_name_is_defined_where_it_is_imported_from() -> None:
    """``from csfnet.x import name``, wherever it sits (tests too), names something x defines or exports in
    ``__all__``, never a name x only imports: after a move, no import is left behind, and none hides the module
    a name really comes from (the graph above would miss that edge)."""
    known = modules()
    defined = {m: defined_names(path) for m, path in known.items()}
    sources = [*known.values(), *sorted((ROOT / "tests").glob("*.py"))]
    missing = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and not node.level and node.module in known:
                names = defined[node.module]
                for alias in node.names:
                    if names is not None and alias.name not in names and f"{node.module}.{alias.name}" not in known:
                        missing.append(f"{where}: {node.module} does not define {alias.name}")
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                for name in [module] if module else [a.name for a in node.names]:
                    if name and name.split(".")[0] in PACKAGES and name not in known:
                        missing.append(f"{where}: no module {name}")
    assert not missing, "imports of names the module neither defines nor exports:\n" + "\n".join(missing)


def test_the_checks_see_what_they_check() -> None:
    """The graph holds function-local and relative imports, and the checks catch a planted circle and upward edge."""
    g = graph()
    assert "csfnet.detect.track_eval" in g["csfnet.evaluate"]  # imported inside a function
    assert g["csfnet.kubeflow.client"].keys() >= {"components", "pipelines"}  # likewise
    assert "components.image" in g["components.train"]  # from components.image import ...
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    two = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"e"}, "e": {"d"}}
    assert circles(two) == [["a", "b", "a"], ["d", "e", "d"]]
    assert floor_of("csfnet.cli") > floor_of("csfnet.evaluate") > floor_of("csfnet.data.anything")
    assert unit_of("csfnet.new_module") is None  # the root package places nothing but itself
    assert {"match", "IOU_THRESHOLDS", "ImageMatches"} <= defined_names(ROOT / "csfnet" / "metrics.py")
