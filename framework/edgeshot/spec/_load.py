"""Loading a policy file: import it, collect every problem, report them together."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._base import Collector, SpecModel, _collecting, display_path, walk
from ._checks import Finding, check
from ._models import Application, EdgeNetwork, Source


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with a policy file, located for a human."""

    file: str
    line: int
    path: str
    message: str
    value: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f"{self.path} = {self.value}" if self.value is not None else self.path
        return f"{where}: {what}: {self.message}" if what else f"{where}: {self.message}"


class SpecError(Exception):
    """A policy file is wrong; `problems` holds every problem found, in file order."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(
            ("function-", "lax-", "json-")
        ):
            continue
        else:
            out += f".{part}" if out else str(part)
    return out


def _message(err: dict[str, Any], owner: SpecModel) -> str:
    kind = err.get("type")
    if kind == "extra_forbidden":
        allowed = ", ".join(_fields_at(type(owner), err["loc"][:-1]))
        return f"unknown field; allowed: {allowed}"
    if kind == "missing":
        return "required field is missing"
    msg = str(err.get("msg", "invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def _fields_at(cls: type, loc: tuple[Any, ...]) -> list[str]:
    """Field names of the model reached by following `loc` from `cls` (best effort)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            break
        nested = _model_in(field.annotation)
        if nested is None:
            break
        cls = nested
    return sorted(getattr(cls, "model_fields", {}))


def _model_in(annotation: Any) -> type | None:
    if isinstance(annotation, type) and issubclass(annotation, SpecModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _gather(value: Any, found: dict[int, SpecModel], depth: int = 0) -> None:
    """Networks and applications bound in the module, also inside lists and dicts."""
    if depth > 3:
        return
    if isinstance(value, (EdgeNetwork, Application)):
        found.setdefault(id(value), value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _gather(item, found, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _gather(item, found, depth + 1)


def _exec(path: Path, collector: Collector) -> tuple[dict[str, Any] | None, list[Problem]]:
    name = "edgeshot_policy_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    directory = str(path.parent)
    before = set(sys.modules)
    saved_path = list(sys.path)
    sys.path.insert(0, directory)
    token = _collecting.set(collector)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            return None, [
                Problem(display_path(str(path)), 0, "", "cannot be imported as a Python module")
            ]
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return vars(module), []
    except SyntaxError as exc:
        where = display_path(exc.filename or str(path))
        return None, [Problem(where, exc.lineno or 0, "", f"syntax error: {exc.msg}")]
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a policy file may raise anything
        frames = [
            f
            for f in traceback.extract_tb(exc.__traceback__)
            if os.path.abspath(f.filename).startswith(directory + os.sep)
        ]
        frame = frames[-1] if frames else None
        where = display_path(frame.filename) if frame else display_path(str(path))
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return None, [
            Problem(
                where,
                frame.lineno if frame and frame.lineno else 0,
                "",
                f"the policy file raised {text}",
            )
        ]
    finally:
        _collecting.reset(token)
        sys.path[:] = saved_path  # the file may have changed sys.path, even emptied it
        for mod in set(sys.modules) - before:
            del sys.modules[mod]


def _locate(obj: SpecModel, paths: dict[int, str], below: tuple[Any, ...] = ()
            ) -> tuple[str, int, str]:
    """File, line and field path of a problem about `obj` at field path `below`: the line
    is where the innermost object on that path was written (a `Cleave(...)` inside an
    `Application(...)` has its own line), the path starts at the declaration's top."""
    origin = _innermost(obj, below).written_at or obj.written_at
    file = display_path(origin.file) if origin else "?"
    return file, origin.line if origin else 0, paths.get(id(obj), type(obj).__name__)


def _innermost(obj: SpecModel, below: tuple[Any, ...]) -> SpecModel:
    """The last spec object with a known origin on the way down `below` (field names
    and list indexes) from `obj`."""
    found, here = obj, obj
    for part in below:
        if isinstance(part, int) and isinstance(here, (tuple, list)) and part < len(here):
            here = here[part]
        elif isinstance(part, str) and isinstance(here, SpecModel):
            here = here.__dict__.get(part)
        else:
            break
        if isinstance(here, SpecModel) and here.written_at is not None:
            found = here
    return found


_SEGMENT = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _parts(field: str) -> tuple[Any, ...]:
    """"cleave.origin[1]" -> ("cleave", "origin", 1)."""
    return tuple(int(i) if i else name for name, i in _SEGMENT.findall(field))


def load_declaration(path: str | os.PathLike[str]) -> tuple[EdgeNetwork, list[Application], Path]:
    """Import a policy file; return its network and apps, or raise SpecError with all problems."""
    file = Path(path).resolve()
    if not file.is_file():
        raise SpecError([Problem(display_path(str(path)), 0, "", "no such policy file")])
    if file.suffix != ".py":
        raise SpecError(
            [Problem(display_path(str(path)), 0, "", "a policy file is a Python module (*.py)")]
        )
    collector = Collector()
    namespace, problems = _exec(file, collector)
    found: dict[int, SpecModel] = {}
    if namespace is not None:
        for key, value in namespace.items():
            if not key.startswith("__"):
                _gather(value, found)
    networks = [o for o in found.values() if isinstance(o, EdgeNetwork)]
    apps = [o for o in found.values() if isinstance(o, Application)]
    apps.sort(key=lambda a: a.written_at.line if a.written_at else 0)

    paths: dict[int, str] = {}
    for net in networks:
        for p, obj in walk(net, "network"):
            paths.setdefault(id(obj), p)
    for i, app in enumerate(apps):
        label = app.__dict__.get("name")
        top = f"applications[{label if isinstance(label, str) else i}]"
        for p, obj in walk(app, top):
            paths.setdefault(id(obj), p)

    for rec in collector.failed:
        for err in _without_echoes(rec.errors):
            file_, line, base = _locate(rec.obj, paths, tuple(err.get("loc", ())))
            loc = _loc(tuple(err.get("loc", ())))
            value = None if not loc or err.get("type") == "missing" else _short(err.get("input"))
            problems.append(
                Problem(
                    file_, line, f"{base}.{loc}" if loc else base, _message(err, rec.obj), value
                )
            )

    if namespace is not None and not networks:
        problems.append(
            Problem(
                display_path(str(file)),
                0,
                "",
                "declares no EdgeNetwork: a policy file needs the network its apps run on",
            )
        )
    for extra in networks[1:]:
        file_, line, base = _locate(extra, paths)
        problems.append(
            Problem(file_, line, base, "a policy file declares one EdgeNetwork; this is a second")
        )

    if namespace is not None:
        try:
            findings = check(networks[0] if networks else None, apps)
        except Exception as exc:  # noqa: BLE001 - never a traceback for a user
            findings = []
            problems.append(Problem(display_path(str(file)), 0, "", f"could not be checked: {exc!r}"))
        problems += [_problem(f, paths) for f in findings]
        problems += [_problem(f, paths) for f in _sources(apps, file.parent)]

    if problems:
        raise SpecError(problems)
    return networks[0], apps, file


def _without_echoes(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop "at least N items after validation, not 0" for a list whose items failed:
    pydantic counts only the items that passed, so it merely echoes the item errors."""
    locs = [tuple(e.get("loc", ())) for e in errors]
    return [
        e
        for e, loc in zip(errors, locs, strict=True)
        if not (
            e.get("type") == "too_short"
            and any(len(o) > len(loc) and o[: len(loc)] == loc for o in locs)
        )
    ]


def _sources(apps: list[Application], base: Path) -> list[Finding]:
    """Sources are relative to the policy file, so a clone anywhere finds them."""
    out = []
    for app in apps:
        source = app.__dict__.get("source")
        # os.path.exists, not Path.exists: False (not an exception) for a name too long,
        # a NUL byte, or a directory we may not enter
        if isinstance(source, Source) and source.is_valid and not os.path.exists(base / source.path):
            out.append(
                Finding(
                    app,
                    "source.path",
                    source.path,
                    f"no such file or directory next to the policy file ({base / source.path})",
                )
            )
    return out


def _problem(finding: Finding, paths: dict[int, str]) -> Problem:
    file_, line, base = _locate(finding.obj, paths, _parts(finding.field))
    path = f"{base}.{finding.field}" if finding.field else base
    value = None if finding.value is None else _short(finding.value)
    return Problem(file_, line, path, finding.message, value)
