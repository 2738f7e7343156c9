"""Settings on the command line: repeatable ``--set KEY=VALUE``, a small table of everyday aliases, and one-line
errors naming an unknown option (with the settings keys of that name, when there are some).

``--set`` takes a dotted params.yaml key (``args.KEY``: the active preset's ultralytics argument) and a YAML value
(``3``, ``true``, ``[a, b]``), applied through :meth:`csfnet.settings.Settings.override`, which validates it and
names an unknown key's closest match; :func:`command_settings` is the one merge of params.yaml with them.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

import yaml

from csfnet.errors import SettingsError
from csfnet.settings import Settings, load_settings

# Everyday flags, each a documented alias of one settings key (``--epochs 3`` is ``--set args.epochs=3``); every
# other setting is reached with ``--set KEY=VALUE``. Keys: the command's prog after ``csfnet``.
ALIASES: dict[str, dict[str, str]] = {
    "data ingest": {"--source": "data.source"},
    "train": {
        "--model": "train.model",
        "--preset": "train.preset",
        "--epochs": "args.epochs",
        "--imgsz": "args.imgsz",
        "--device": "train.device",
    },
    "tune": {
        "--model": "train.model",
        "--trials": "tune.trials",
        "--epochs": "tune.epochs",
        "--device": "train.device",
    },
    "compare": {"--device": "train.device"},
    "compare cell": {"--device": "train.device"},
    "compare rescore": {"--device": "train.device"},
    "eval": {"--device": "train.device"},
    "robustness": {"--device": "train.device"},
    "detect": {
        "--conf": "detect.conf",
        "--slice": "detect.slice",
        "--track": "detect.track",
        "--device": "detect.device",
    },
}
SET_HELP = "override a params.yaml key: dotted KEY (args.KEY: the active preset's ultralytics argument), YAML VALUE"
NUMBER = re.compile(r"^-\d|^-\.\d")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``csfnet <command>: error: ...``, exit 2) and no abbreviated options."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str) -> Any:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """``--set`` and the aliases :data:`ALIASES` gives the command (by its prog after ``csfnet``)."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=f"{SET_HELP} (repeatable)")
    for flag, key in ALIASES.get(parser.prog.split(" ", 1)[-1], {}).items():
        parser.add_argument(flag, dest=key, metavar="VALUE", help=f"= --set {key}=VALUE")


def command_settings(args: argparse.Namespace) -> Settings:
    """params.yaml (or ``$CSFNET_PARAMS``) with the command line's settings (:func:`overrides`): the one merge.

    Raises:
        SettingsError: an unknown key (the closest one suggested) or a value the schema refuses.
    """
    return load_settings().override(overrides(args), keep_none=True)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gives: aliases (:data:`ALIASES`), then every ``--set KEY=VALUE`` in order.

    Raises:
        SettingsError: a ``--set`` without ``=`` or without a key.
    """
    values = {key: parse_value(value) for key, value in vars(args).items() if "." in key and value is not None}
    for pair in getattr(args, "set", None) or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set train.model=yolov8n")
        values[key.strip()] = parse_value(value)
    return values


def parse_value(text: str) -> Any:
    """A command-line value read as YAML, as params.yaml is (``3``, ``true``, ``[a, b]``); ``""`` stays ``""``."""
    if not text.strip():
        return text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Exit 2 with one line naming an option the command does not have (argparse would blame a stray value)."""
    current, skip = parser, False
    for token in argv:
        if token == "--":
            return
        if skip:
            skip = False
            continue
        if token.startswith("-") and not NUMBER.match(token):
            name = token.split("=", 1)[0]
            action = current._option_string_actions.get(name)
            if action is None:
                current.exit(2, f"{current.prog}: error: unknown option {name}{_option_hint(current, name)}\n")
            skip = action.nargs is None and "=" not in token  # its value follows
        else:
            current = subcommands(current).get(token, current)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-commands of ``parser`` by name (none for a leaf command)."""
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _option_hint(parser: argparse.ArgumentParser, name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(parser._option_string_actions), n=1, cutoff=0.75)
    if close:
        return f" (did you mean {close[0]}?)"
    leaf = name.lstrip("-").replace("-", "_")
    keys = [k for k in setting_keys() if k.rsplit(".", 1)[-1] == leaf]
    if keys:
        return f"; settings take --set KEY=VALUE, e.g. --set {keys[0]}=... (keys named {leaf}: {', '.join(keys)})"
    return "; settings take --set KEY=VALUE"


def setting_keys() -> list[str]:
    """Every dotted key ``--set`` accepts: the schema's leaves and ``args.<key>`` of the default active preset."""
    settings = Settings()

    def leaves(value: Any, prefix: str) -> list[str]:
        if isinstance(value, dict) and value:
            return [k for name, child in value.items() for k in leaves(child, f"{prefix}{name}.")]
        return [prefix.rstrip(".")]

    schema = leaves({k: v for k, v in settings.model_dump().items() if k != "presets"}, "")
    return [*(f"args.{key}" for key in settings.train_args()), *schema]
