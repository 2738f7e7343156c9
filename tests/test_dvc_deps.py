"""DVC dependencies that cannot go stale: each stage depends on every ``csfnet`` file its command runs.

Nothing here names a module by hand. DVC resolves the stages (vars, matrix cells, wdir); the real ``csfnet`` parser
maps each stage's command to its handler in ``csfnet/cli.py``; ``ast`` follows the handler's imports through the
package, function-local ones included, plus the package data a module opens beside itself
(``Path(__file__).parent / "cfg"``). A stage passes when every such file lies under one of its deps.
"""

from __future__ import annotations

import ast
import shlex
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from dvc.repo import Repo

from csfnet.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "csfnet"
CLI = "csfnet.cli"

# The one list of package files no stage lists as a dep, each with why editing it cannot change a stage's outputs.
NOT_DEPS = {
    "csfnet/__init__.py": "only sets ultralytics' offline defaults (through _offline.py) and the version string",
    "csfnet/_offline.py": "offline defaults: no downloads, no ultralytics loggers; no output depends on them",
    "csfnet/cli.py": "parses the command and dispatches to the package; DVC tracks the command itself",
    "csfnet/cli_options.py": "the command line's option table: parsing only, like cli.py",
    "csfnet/settings.py": "the schema: the values are params.yaml's, which stages track through `params` "
    "(test_settings keeps the schema's defaults equal to params.yaml)",
    "csfnet/errors.py": "exception types: a stage that fails writes nothing",
    "csfnet/kubeflow/trainjob.py": "`csfnet train --render-trainjob` only writes a manifest; it trains nothing",
    **dict.fromkeys(
        ("csfnet/runlog.py", "csfnet/mlflow_tracking.py", "csfnet/mlflow_logger.py", "csfnet/trial_log.py"),
        "experiment logging (MLflow, or nothing): no stage output depends on it",
    ),
}


# --- what a stage runs --------------------------------------------------------------------------------------------

WHOLE = "*"  # the whole module: `import csfnet.x`, `from csfnet.detect import sliced_eval`
TOP = ""  # the module's top-level statements, which run when anything imports it


@cache
def module_file(name: str) -> Path | None:
    """The source file of module ``name`` inside the package (``a/b.py`` or ``a/b/__init__.py``), else None."""
    if name.split(".")[0] != PACKAGE:
        return None
    base = REPO.joinpath(*name.split("."))
    return next((f for f in (base.with_suffix(".py"), base / "__init__.py") if f.is_file()), None)


def _exempt(module: str) -> bool:
    return module_file(module).relative_to(REPO).as_posix() in NOT_DEPS


NOT_RUN = ("TYPE_CHECKING", "typing.TYPE_CHECKING", "__name__ == '__main__'")  # `if` blocks an import never runs


def _never_run(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in NOT_RUN


def _runtime_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node`` except the bodies of ``if TYPE_CHECKING:`` and ``if __name__ == "__main__":``."""
    for child in ast.iter_child_nodes(node):
        if _never_run(child):
            for branch in child.orelse:
                yield branch
                yield from _runtime_nodes(branch)
            continue
        yield child
        yield from _runtime_nodes(child)


def _beside(expression: str, file: Path) -> Path | None:
    """The folder ``Path(__file__).parent`` (or ``Path(<package module>.__file__).parent``) names in ``file``."""
    if expression == "Path(__file__).parent":
        return file.parent
    if expression.startswith("Path(") and expression.endswith(".__file__).parent"):
        owner = module_file(expression.removeprefix("Path(").removesuffix(".__file__).parent"))
        return owner.parent if owner else None
    return None


def _module_name(file: Path) -> str:
    parts = file.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class Module:
    """One package module as ``ast`` sees it: its top-level definitions and the names its imports bind."""

    def __init__(self, name: str):
        self.name, self.file = name, module_file(name)
        self.tree = ast.parse(self.file.read_text(), filename=str(self.file))
        self.package = name if self.file.name == "__init__.py" else name.rpartition(".")[0]
        self.defs = {
            n.name: n for n in self.tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        }
        self.top = [n for n in self.tree.body if n not in self.defs.values() and not _never_run(n)]
        self.bound: dict[str, list[tuple[str, str]]] = {}
        for node in self.top:
            for local, target in self.bindings(node):
                self.bound.setdefault(local, []).append(target)

    def bindings(self, node: ast.AST) -> Iterator[tuple[str, tuple[str, str]]]:
        """``(local name, (module, name in it))`` for every package import below ``node``."""
        for n in [node, *_runtime_nodes(node)]:
            if isinstance(n, ast.Import):
                for alias in n.names:  # `import a.b as c` binds c; `import a.b` binds a, used as a.b
                    yield alias.asname or alias.name.split(".")[0], (alias.name, WHOLE)
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    parts = self.package.split(".")
                    base = ".".join([*parts[: len(parts) - n.level + 1], *([n.module] if n.module else [])])
                for alias in n.names:
                    submodule = f"{base}.{alias.name}"
                    target = (submodule, WHOLE) if module_file(submodule) else (base, alias.name)
                    yield alias.asname or alias.name, target

    def runs_nothing(self) -> bool:
        """Nothing but a docstring (a package's ``__init__``, say): editing it changes no output."""
        return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in self.tree.body)

    def data_paths(self, node: ast.AST) -> set[Path]:
        """Package files opened by path: ``Path(__file__).parent / "cfg"``, ``Path(csfnet.__file__).parent / ...``."""
        paths, inner = set(), set()
        for n in _runtime_nodes(node):
            if id(n) in inner:
                continue  # `Path(__file__).parent / "cfg"` inside `... / "cfg" / "models"`
            parts: list[str] = []
            while isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div) and isinstance(n.right, ast.Constant):
                parts.insert(0, str(n.right.value))
                n = n.left
                inner.add(id(n))
            beside = _beside(ast.unparse(n), self.file)
            if parts and beside and beside.joinpath(*parts).exists():
                paths.add(beside.joinpath(*parts))
        return paths

    def reached_from(self, node: ast.AST, top: bool) -> set[tuple[str, str]]:
        """What running ``node`` reaches: the modules it imports (at the top level only their own top level; in a
        function what the import binds, as it is there to be used) and the definitions its names resolve to."""
        targets = {(module, TOP) if top else (module, name) for _, (module, name) in self.bindings(node)}
        targets |= {t for local, t in self.bindings(node) if "." in t[0] and local == t[0].split(".")[0]}  # a.b.f()
        for n in _runtime_nodes(node):
            if isinstance(n, ast.Name) and n.id in self.defs:
                targets.add((self.name, n.id))
            elif isinstance(n, ast.Name) and n.id in self.bound:
                targets.update(self.bound[n.id])
        return {t for t in targets if module_file(t[0])}


@cache
def _module(name: str) -> Module:
    return Module(name)


def _opened(paths: set[Path], files: set[Path]) -> list[tuple[str, str]]:
    """Add opened package data to ``files``; return opened Python files as modules to follow (MLflow runs a
    models-from-code file when it serves the model)."""
    files |= {p for p in paths if p.suffix != ".py"}
    return sorted((_module_name(p), WHOLE) for p in paths if p.suffix == ".py")


@cache
def needed_files(module: str, name: str) -> frozenset[Path]:
    """Every package file that running ``module.name`` can execute, and the package data those files read.

    Followed through the package with ``ast``: a module's top level runs when it is imported (and its packages'
    ``__init__``); a function or class runs what it imports, the definitions it names and what they run in turn.
    Function-local imports count; ``if TYPE_CHECKING:`` blocks do not. The files of NOT_DEPS are not followed.
    """
    files: set[Path] = set()
    seen: set[tuple[str, str]] = set()
    todo = [(module, name)]
    while todo:
        target = todo.pop()
        if target in seen:
            continue
        seen.add(target)
        mod = _module(target[0])
        parents = [".".join(mod.name.split(".")[:i]) for i in range(1, mod.name.count(".") + 1)]
        todo += [(parent, TOP) for parent in parents if module_file(parent)]
        if mod.name != module and _exempt(mod.name):
            continue  # what an exempt file runs for itself cannot change an output either
        if not mod.runs_nothing():
            files.add(mod.file)
        if target[1] == TOP:
            nodes = []
            for node in mod.top:
                todo += _opened(mod.data_paths(node), files)
                todo += sorted(mod.reached_from(node, top=True))
        elif target[1] == WHOLE:
            nodes = list(mod.defs.values())
        else:
            nodes = [mod.defs[target[1]]] if target[1] in mod.defs else []  # else a constant: the top level
            if target[1] in mod.bound:  # a name the module imported itself (a re-export)
                todo += mod.bound[target[1]]
        if target[1] != TOP:
            todo.append((mod.name, TOP))
        for node in nodes:
            todo += _opened(mod.data_paths(node), files)
            todo += sorted(mod.reached_from(node, top=False))
    return frozenset(f for f in files if f.relative_to(REPO).as_posix() not in NOT_DEPS)


# --- the stages ---------------------------------------------------------------------------------------------------


@cache
def stages() -> dict[str, tuple[str, list[Path]]]:
    """Every stage of every dvc.yaml (matrix cells expanded): its handler's name and its deps as absolute paths."""
    found = {}
    with Repo(str(REPO)) as repo:
        for stage in repo.index.stages:
            if stage.always_changed:  # runs every time whatever its deps (ingest looks at its source)
                continue
            commands = stage.cmd if isinstance(stage.cmd, list) else [stage.cmd]
            assert len(commands) == 1, f"{stage}: one `csfnet` command per stage, got {commands}"
            argv = shlex.split(commands[0])
            assert argv[0] == "csfnet", f"{stage}: {commands[0]!r} is not a `csfnet` command"
            handler = build_parser().parse_args(argv[1:]).func.__name__
            deps = [Path(dep.fs_path).resolve() for dep in stage.deps]
            found[f"{Path(stage.path).relative_to(REPO)}:{stage.name}"] = handler, deps
    return found


def _covered(file: Path, deps: list[Path]) -> bool:
    return any(file == dep or dep in file.parents for dep in deps)


def _code_deps(deps: list[Path]) -> list[Path]:
    return [dep for dep in deps if (REPO / PACKAGE) in dep.parents]


def _listing(found: dict[str, list[str]]) -> str:
    """``stage: files; ...`` with the cells of a matrix stage (``cell@a-0``, ``cell@b-1`` ...) as one ``cell@*``."""
    merged: dict[str, set[str]] = {}
    for stage, files in found.items():
        merged.setdefault(stage.split("@")[0] + ("@*" if "@" in stage else ""), set()).update(files)
    return "; ".join(f"{stage}: {', '.join(sorted(files))}" for stage, files in merged.items())


def test_every_file_a_stage_runs_is_a_dep():
    missing = {}
    for name, (handler, deps) in stages().items():
        uncovered = [f.relative_to(REPO).as_posix() for f in needed_files(CLI, handler) if not _covered(f, deps)]
        if uncovered:
            missing[name] = uncovered
    assert not missing, f"dvc.yaml deps miss files the stage's command runs: {_listing(missing)}"


def test_every_code_dep_is_run_by_its_stage():
    """A code dep no module of the stage needs re-runs it for nothing (serving code must not retrain), and one that
    was moved away makes `dvc repro` fail on a missing dependency."""
    idle = {}
    for name, (handler, deps) in stages().items():
        needed = needed_files(CLI, handler)
        unused = [d.relative_to(REPO).as_posix() for d in _code_deps(deps) if not any(_covered(f, [d]) for f in needed)]
        if unused:
            idle[name] = unused
    assert not idle, f"dvc.yaml deps no module of the stage runs: {_listing(idle)}"


FAKE = {  # a made-up package with each case the derivation must get right
    "__init__.py": '"""Docstring only: runs nothing."""',
    "cli.py": """
        from csfnet.settings import load  # exempt: not followed

        def cmd_x(args):
            from csfnet.a import f

            return _helper(f)

        def _helper(f):
            import csfnet.g

            return csfnet.g.run(f)

        def cmd_other(args):
            from csfnet.unused import u

        if __name__ == "__main__":
            cmd_other(None)
        """,
    "settings.py": "from csfnet.never import u",
    "a.py": """
        from typing import TYPE_CHECKING

        from csfnet.b import CONSTANT
        from csfnet.unused import never  # its top level runs: the file is needed

        if TYPE_CHECKING:
            from csfnet.never import hint

        def f():
            from .c import h

            return h()

        def not_called():
            from csfnet.never import u
        """,
    "b.py": "CONSTANT = 1",
    "c.py": """
        from pathlib import Path

        from csfnet.pkg import reexported

        def h():
            return Path(__file__).parent / "cfg" / "models", reexported()
        """,
    "pkg/__init__.py": "from csfnet.pkg.impl import reexported",
    "pkg/impl.py": "def reexported(): ...",
    "g.py": "def run(f): ...",
    "unused.py": "def u(): ...\ndef never(): ...",
    "never.py": "def u(): ...\nhint = 0",
    "cfg/models/m.yaml": "depth: 1",
}


def test_the_derivation_follows_what_runs_and_only_that(tmp_path, monkeypatch):
    """On a made-up package: function-local and relative imports, helpers the handler calls, re-exports, package
    data and ``import a.b`` count; unused definitions, ``TYPE_CHECKING`` and ``__main__`` blocks and what exempt files
    import do not."""
    for rel, text in FAKE.items():
        (tmp_path / PACKAGE / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / rel).write_text(textwrap.dedent(text))
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    for cached in (module_file, _module, needed_files):
        cached.cache_clear()
    try:
        found = {f.relative_to(tmp_path / PACKAGE).as_posix() for f in needed_files(CLI, "cmd_x")}
        assert found == {"a.py", "b.py", "c.py", "cfg/models", "pkg/__init__.py", "pkg/impl.py", "g.py", "unused.py"}
        other = {f.relative_to(tmp_path / PACKAGE).as_posix() for f in needed_files(CLI, "cmd_other")}
        assert other == {"unused.py"}
    finally:  # what was derived from the made-up package must not answer for the real one
        for cached in (module_file, _module, needed_files):
            cached.cache_clear()


def test_the_exemptions_exist():
    missing = [path for path in NOT_DEPS if not (REPO / path).is_file()]
    assert not missing, f"NOT_DEPS names files that no longer exist: {missing}"
