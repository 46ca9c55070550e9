"""Job configs: a dataclass per job, filled from a YAML recipe and then command-line flags.

Each field's ``metadata["help"]`` becomes its ``--help`` line, so the dataclass *is* the
documentation of the job's options. Precedence: defaults < YAML recipe < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from qwen_kit.errors import UserError

T = TypeVar("T")


def _base_type(tp: Any) -> Any:
    """``int | None`` -> ``int``; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per field of ``cls`` (defaults are left unset so YAML can fill them)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if tp is bool and f.name.startswith("no_"):  # already a negation: a plain switch, no --no-no-...
            parser.add_argument(flag, action="store_const", const=True, default=None, help=help_text)
        elif tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(tp) is list:
            parser.add_argument(flag, nargs="+", default=None, help=help_text)
        else:
            parser.add_argument(flag, type=tp if tp in (int, float) else str, default=None,
                                choices=f.metadata.get("choices"), help=help_text)


def load_config(cls: type[T], recipe: str | None = None, overrides: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from a YAML recipe plus overrides; unknown keys are a :class:`UserError`."""
    values: dict[str, Any] = {}
    if recipe:
        path = Path(recipe)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; recipes live in configs/")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of option: value")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}{' in ' + recipe if recipe else ''}; "
                        f"see --help for the valid ones")
    return cls(**values)


def save_config(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True), encoding="utf-8")
