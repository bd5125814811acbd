"""A service's TOML configuration file (agent, edge, controller), read one way.

Relative paths in the file are relative to the file; every problem names the file, and
a validation problem the key path too, without a traceback.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import tomli_w
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "load_config", "toml_text"]

M = TypeVar("M", bound=BaseModel)


class ConfigError(Exception):
    """A configuration file cannot be used (message: file, key, problem)."""


def load_config(model: type[M], path: str | os.PathLike[str], *, table: str | None = None,
                paths: Iterable[str] = ()) -> M:
    """``model`` from the TOML file at ``path``. ``table``: the keys may also stand in one
    ``[table]``; ``paths``: the keys (dotted for a table's key, e.g. "dispatcher.geo_file")
    whose string values are file paths, made absolute against the file's directory."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if table is not None and isinstance(data.get(table), dict) and len(data) == 1:
        data = data[table]
    base = path.resolve().parent
    for key in paths:
        *parents, last = key.split(".")
        d: Any = data
        for p in parents:
            d = d.get(p) if isinstance(d, dict) else None
        if isinstance(d, dict) and isinstance(d.get(last), str):
            d[last] = str(base / Path(d[last]).expanduser())
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
                 for e in exc.errors(include_url=False)]
        raise ConfigError("\n".join(lines)) from None


def toml_text(data: Mapping[str, Any], header: str | None = None) -> str:
    """A configuration (or token) file's TOML text, written by tomli-w: every string is
    escaped as TOML wants it (a newline in a value stays valid TOML). None is left out
    (TOML has no null); paths, decimals, networks and enums are written as text; tuples
    as arrays; datetimes as TOML datetimes. ``header``: comment lines put first."""
    text = tomli_w.dumps(_plain(data))
    if header:
        text = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + \
            "\n" + text
    return text


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="python")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value if v is not None]
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, bool | int | float | str | datetime | date | time):
        return value
    return str(value)  # Path, Decimal, IPv4Network, ...
