"""A step's one typed config (a frozen dataclass) as CLI flags, so defaults live only in the dataclass.

TFX's ComponentSpec is the model: the KFP component, the CLI and the function all take the same
parameter object. The CLI flags are generated from the dataclass fields (`--floors` from `floors`),
their defaults read from it; the KFP components take every field without a default and the pipeline
signature reads its defaults from the same dataclass (`config_default`).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _field_type(hint: Any) -> type:
    for candidate in (bool, int, float, str):
        if hint is candidate or candidate in typing.get_args(hint):
            return candidate
    return str


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = (),
                         help_text: dict[str, str] | None = None) -> None:
    """One `--flag` per field of `cls` (underscores become dashes); required where the field has no default."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        typ = _field_type(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else (f.default if f.default is not dataclasses.MISSING else f.default_factory())
        helps = (help_text or {}).get(f.name, "")
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helps)
        else:
            parser.add_argument(flag, type=typ, required=required, default=default,
                                help=f"{helps} (default: {default!r})" if not required else helps)


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    return cls(**values)


def config_default(cls: type, name: str) -> Any:
    """The default of field `name` (for a pipeline signature: the one place it is written is the dataclass)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()
