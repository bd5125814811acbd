"""What the command modules share: how a command fails, and where the local network is."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

# Errors and warnings go to stderr unwrapped: a message must read the same whatever the
# terminal's width or a path's length (scripts and tests grep it).
err = Console(stderr=True, soft_wrap=True)

StateOpt = Annotated[Path | None, typer.Option(
    "--state", help="the network's state directory (default: $EDGESHOT_NETWORK, or the only "
    "one under ./.state)", envvar="EDGESHOT_NETWORK", file_okay=False)]


class OutputFormat(StrEnum):
    """`--format` of the commands that print a result: text for people, json for scripts
    (one JSON document on stdout; progress and errors go to stderr)."""

    text = "text"
    json = "json"


FormatOpt = Annotated[OutputFormat, typer.Option(
    "--format", help="text, or json (one document on stdout, for scripts)")]


def print_json(doc: object) -> None:
    """A result for scripts: plain JSON on stdout (no colour, no wrapping)."""
    print(json.dumps(doc, indent=1, default=str))


def load_spec(file: Path) -> Any:
    """Load a policy file, or print every problem (file:line, field, what is allowed; no
    traceback) and exit 1."""
    from edgeshot.spec import SpecError, load
    try:
        return load(file)
    except SpecError as exc:
        n = len(exc.problems)
        err.print(f"[bold red]{escape(str(file))}: {n} problem{'s' if n != 1 else ''}[/]",
                   highlight=False, soft_wrap=True)
        for problem in exc.problems:
            err.print(f"  {problem}", highlight=False, soft_wrap=True, markup=False)
        raise typer.Exit(1) from None


class LogFormat(StrEnum):
    text = "text"
    json = "json"


LogFormatOpt = Annotated[LogFormat | None, typer.Option(
    "--log-format", envvar="EDGESHOT_LOG_FORMAT",
    help="text, or json (one object a line, for log shippers); overrides the file's "
    "log_format")]


def fail(message: str) -> typer.Exit:
    """Print `message` (plain text, never markup: it holds paths) and return exit 1 (for
    the caller to raise)."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(1)


def find_state(state: Path | None) -> Path:
    """The running local network's state directory: ``state`` when given (``--state`` or
    $EDGESHOT_NETWORK), else the only one under ./.state."""
    if state is not None:
        return state
    root = Path(".state")
    found = sorted(p.parent for p in root.glob("*/network.json")) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise fail("no local network here: run `edgeshot up FILE` (or give --state DIR)")
    raise fail("several networks under ./.state: give --state " + " | ".join(map(str, found)))
