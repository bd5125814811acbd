"""`edgeshot agent --config FILE`: run this server's agent daemon (and `token`: make tokens).

Register in the main CLI with::

    from edgeshot.cli.agent import agent, token
    app.command()(agent)
    app.command()(token)      # optional: `edgeshot token FILE NAME --scope …`
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ._common import LogFormatOpt, err


def agent(
    config: Annotated[Path, typer.Option("--config", "-c", help="agent configuration (TOML)",
                                         envvar="EDGESHOT_AGENT_CONFIG", readable=False,
                                         dir_okay=False)],
    log_format: LogFormatOpt = None,
) -> None:
    """Run the agent: the API of this server (instances, appshots, usage, metrics).

    Stopping it leaves the instances running; the next agent adopts them.
    """
    import os
    import sys

    from edgeshot.agent.server import AgentConfig, ConfigError
    try:
        AgentConfig.load(config)  # problems are reported here, nicely
        # The daemon runs for months on every server: exec a lean interpreter (same pid)
        # without the CLI's imports (typer, rich, spec, plan…).
        os.execv(sys.executable, [sys.executable, "-m", "edgeshot.agent.server",
                                  "--config", str(config),
                                  *(["--log-format", log_format.value] if log_format else [])])
    except ConfigError as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except OSError as exc:  # address in use, state dir not writable…
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def token(
    tokens_file: Annotated[Path, typer.Argument(help="token file (hashes) the service reads")],
    name: Annotated[str, typer.Argument(help="the token's name (in logs, instead of it)")],
    scope: Annotated[list[str], typer.Option(
        "--scope", "-s", help="controller-edge, edge-agent, controller-agent, operator, metrics, "
        "owner:<id> or vendor:<name>; repeat for several")],
    out: Annotated[Path | None, typer.Option(
        "--out", help="write the token here (0600) instead of printing it")] = None,
) -> None:
    """Make a bearer token: its hash goes into TOKENS_FILE, the token itself is shown once."""
    from edgeshot.agent import auth
    try:
        text = auth.issue_token(tokens_file, name, scope, secret_file=out)
    except (ValueError, auth.AuthError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    if out is None:
        print(text)
    else:
        err.print(f"token {name!r} written to {out}", soft_wrap=True, markup=False)


if __name__ == "__main__":  # python -m edgeshot.cli.agent --config FILE (tests, debugging)
    typer.run(agent)
