"""What the command modules share: how a command fails, and where the local network is."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

# Errors and warnings go to stderr unwrapped: a message must read the same whatever the
# terminal's width or a path's length (scripts and tests grep it).
err = Console(stderr=True, soft_wrap=True)

StateOpt = Annotated[Path | None, typer.Option(
    "--state", help="the network's state directory (default: $EDGESHOT_NETWORK, or the only "
    "one under ./.state)", envvar="EDGESHOT_NETWORK", file_okay=False)]


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
