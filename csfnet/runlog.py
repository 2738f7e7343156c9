"""What a stage records about its run, independent of where it goes: the :class:`StageLogger` interface.

Stages receive a logger and never name the tracking backend. :class:`NullLogger` (tracking off) records nothing;
:class:`csfnet.mlflow_tracking.MlflowLogger` records to MLflow. Loggers are built by the callers (the command
line, tests), which is the only place that chooses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

RunStatus = Literal["FINISHED", "FAILED", "KILLED"]


@dataclass(frozen=True)
class ParentRun:
    """The run a stage nests under, when not the pipeline's: the running one tagged ``tag = value``, created as
    ``<prefix>-<value[:8]>`` on first use (a comparison's cells and report share one this way)."""

    tag: str
    value: str
    prefix: str


class StageLogger(Protocol):
    """Parameters, metrics, tags and artifacts of one run; stage runs and nested runs opened as context managers.

    A logger outside any run (as callers build it) only opens stage runs; the logger a ``stage`` or ``nested``
    block yields records to that run.
    """

    @property
    def active(self) -> bool:
        """Whether anything is recorded (lets a stage skip work done only to be logged, such as plots)."""
        ...

    @property
    def parent(self) -> StageLogger:
        """The logger of the run this one nests under."""
        ...

    def stage(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        *,
        final: bool = False,
        parent: ParentRun | None = None,
        fail_parent: bool = True,
    ) -> contextlib.AbstractContextManager[StageLogger]:
        """The run of pipeline stage ``name`` under the pipeline's parent run (or ``parent``).

        ``final`` closes the parent when the stage ends; ``fail_parent`` marks the parent failed when the stage
        fails (off for steps running side by side, whose siblings still need it running).
        """
        ...

    def nested(
        self,
        name: str,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        status: RunStatus = "FINISHED",
    ) -> contextlib.AbstractContextManager[StageLogger]:
        """A child run of this one; it ends with ``status`` when the block completes, FAILED when it raises."""
        ...

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Parameters (lists and dicts as JSON text)."""
        ...

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        """Every numeric leaf of a nested mapping, as ``prefix.key.subkey``; other values are skipped."""
        ...

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Tags (values as text)."""
        ...

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        """One file, under ``folder`` of the run's artifacts."""
        ...

    def log_artifacts(self, directory: str | Path, folder: str | None = None) -> None:
        """Every file of ``directory``, under ``folder``."""
        ...

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """A mapping as a JSON (or YAML, by ``name``'s suffix) artifact."""
        ...

    def log_figure(self, figure: Any, name: str) -> None:
        """A matplotlib figure as an image artifact."""
        ...

    def log_dataset(self, data_yaml: str | Path, source: str, digest: str, context: str = "training") -> None:
        """The data version a run used: where the raw data came from, its content hash, counts per split."""
        ...


class NullLogger:
    """Tracking off: every call does nothing; stage and nested blocks yield this logger again."""

    active = False

    @property
    def parent(self) -> NullLogger:
        return self

    @contextlib.contextmanager
    def stage(self, name: str, params: Any = None, tags: Any = None, **_: Any) -> Iterator[NullLogger]:
        yield self

    @contextlib.contextmanager
    def nested(self, name: str, params: Any = None, tags: Any = None, status: str = "FINISHED") -> Iterator[NullLogger]:
        yield self

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def log_artifacts(self, directory: str | Path, folder: str | None = None) -> None:
        pass

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        pass

    def log_figure(self, figure: Any, name: str) -> None:
        pass

    def log_dataset(self, data_yaml: str | Path, source: str, digest: str, context: str = "training") -> None:
        pass


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every numeric leaf (not bool) of a nested mapping as ``{"prefix.key.subkey": value}``."""
    flat: dict[str, float] = {}

    def walk(d: Mapping[str, Any], path: str) -> None:
        for key, value in d.items():
            name = f"{path}.{key}" if path else str(key)
            if isinstance(value, Mapping):
                walk(value, name)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                flat[name] = float(value)

    walk(metrics, prefix)
    return flat
