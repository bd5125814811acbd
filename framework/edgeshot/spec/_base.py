"""The base of every spec object: frozen, strict, and aware of where it was written.

Policy files are plain Python, so a reviewer's question is always "which line?".
Every object records the file and line of the call that built it. While
`load()` runs, a construction error does not stop the file: the object records
its problems and carries on half-built, so that *all* errors of a file can be
reported together (pydantic alone would stop at the first object).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError, model_validator


@dataclass(frozen=True)
class Origin:
    """Where a spec object was written: the policy file and the line of the call."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{display_path(self.file)}:{self.line}"


def display_path(path: str) -> str:
    """Relative to the working directory when below it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel


@dataclass
class Recorded:
    """A construction that failed while a load was collecting errors."""

    obj: SpecModel
    errors: list[dict[str, Any]]


@dataclass
class Collector:
    failed: list[Recorded] = field(default_factory=list)


_collecting: ContextVar[Collector | None] = ContextVar("edgeshot_spec_collecting", default=None)

# Frames inside these directories are never "where the object was written".
_SKIP = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,
    os.path.dirname(os.path.abspath(pydantic.__file__)) + os.sep,
)


def _caller_origin() -> Origin | None:
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_SKIP):
            return Origin(name, frame.f_lineno)
        frame = frame.f_back
    return None


class SpecModel(BaseModel):
    """Frozen, extra="forbid" pydantic model that remembers its origin."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    _origin: Origin | None = PrivateAttr(default=None)
    _invalid: bool = PrivateAttr(default=False)
    _failed: frozenset[str] = PrivateAttr(default=frozenset())

    def __init__(self, /, **data: Any) -> None:
        origin = _caller_origin()
        collector = _collecting.get()
        if collector is None:
            super().__init__(**data)
        else:
            try:
                super().__init__(**data)
            except ValidationError as exc:
                errors = exc.errors(include_url=False)
                self._become_partial(data, errors)
                collector.failed.append(Recorded(self, errors))
        self._origin = origin

    def _become_partial(self, data: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        """Keep the fields that were given, unvalidated, so the file can go on; remember
        which fields failed ("" for the object as a whole) so that checks can still use
        the others."""
        known = {k: v for k, v in data.items() if k in type(self).model_fields}
        partial = type(self).model_construct(**known)
        object.__setattr__(self, "__dict__", partial.__dict__)
        object.__setattr__(self, "__pydantic_fields_set__", partial.__pydantic_fields_set__)
        object.__setattr__(self, "__pydantic_extra__", None)
        failed = frozenset(str(e["loc"][0]) if e.get("loc") else "" for e in errors)
        object.__setattr__(self, "__pydantic_private__",
                           {"_origin": None, "_invalid": True, "_failed": failed})

    @property
    def written_at(self) -> Origin | None:
        """File and line where this object was written (None when built from JSON)."""
        return self._origin

    @property
    def is_valid(self) -> bool:
        return not self._invalid

    def field_failed(self, name: str) -> bool:
        """This object's own validation failed on field ``name``."""
        return self._invalid and name in self._failed

    def __eq__(self, other: object) -> bool:
        # Where an object was written does not change what it declares.
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]  # holds dicts; never hashed


def own_check(fn: Callable[[Any], None]) -> Any:
    """A model-level check (an after-validator) that raises ValueError when violated.

    pydantic re-runs after-validators whenever an instance is nested in another
    object; a half-built object has already reported its problems, so skip it.
    """

    @functools.wraps(fn)
    def run(self: SpecModel) -> SpecModel:
        if self.is_valid:
            fn(self)
        return self

    return model_validator(mode="after")(run)


def children(obj: SpecModel) -> Iterator[tuple[str, SpecModel]]:
    """Direct spec-object children with their path segment ("tiers[web]")."""
    for name in type(obj).model_fields:
        value = obj.__dict__.get(name)
        if isinstance(value, SpecModel):
            yield name, value
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                if isinstance(item, SpecModel):
                    label = getattr(item, "name", None) if item.is_valid else None
                    yield f"{name}[{label if isinstance(label, str) else i}]", item


def walk(obj: SpecModel, path: str) -> Iterator[tuple[str, SpecModel]]:
    """Every spec object below `obj` (itself included) with its field path."""
    yield path, obj
    for segment, child in children(obj):
        yield from walk(child, f"{path}.{segment}" if path else segment)


def subtree_valid(obj: SpecModel) -> bool:
    return all(o.is_valid for _, o in walk(obj, ""))
