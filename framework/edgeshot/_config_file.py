"""A service's TOML configuration file (agent, edge, controller), read one way.

Relative paths in the file are relative to the file; every problem names the file, and
a validation problem the key path too, without a traceback.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

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


def toml_text(data: dict[str, Any]) -> str:
    """Flat ``key = value`` lines (None: left out) of a configuration file to write."""
    lines = []
    for k, v in data.items():
        if v is None:
            continue
        if isinstance(v, bool):
            lines.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int | float):
            lines.append(f"{k} = {v!r}")
        else:
            lines.append(f"{k} = {json.dumps(str(v))}")
    return "\n".join(lines) + "\n"
