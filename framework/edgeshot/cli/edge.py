"""`edgeshot edge --config FILE`: run one edgepoint's edge process.

Register in the main CLI with::

    from edgeshot.cli.edge import edge
    app.command()(edge)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ._common import LogFormatOpt, err


def edge(
    config: Annotated[Path, typer.Option("--config", "-c", help="edge configuration (TOML)",
                                         envvar="EDGESHOT_EDGE_CONFIG", readable=False,
                                         dir_okay=False)],
    log_format: LogFormatOpt = None,
) -> None:
    """Run an edgepoint: HAProxy driven live, the activator, the resource manager, data-path
    usage and the edge API.

    SIGTERM stops it gracefully (every counter stored, HAProxy stopped unless
    keep_haproxy); after a crash HAProxy keeps serving and the next edge process adopts it.
    """
    from edgeshot.edge._haproxy import HAProxyError
    from edgeshot.edge.service import ConfigError, EdgeConfig, run
    try:
        cfg = EdgeConfig.load(config)
        run(cfg.model_copy(update={"log_format": log_format.value}) if log_format else cfg)
    except (ConfigError, HAProxyError, OSError) as exc:
        err.print(f"[bold red]error:[/] {escape(str(exc) or type(exc).__name__)}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


if __name__ == "__main__":  # python -m edgeshot.cli.edge --config FILE (tests, debugging)
    typer.run(edge)
