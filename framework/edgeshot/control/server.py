"""edgeshot.control.server: the controller process (`edgeshot controller --config FILE`).

    cfg = ControllerConfig.load("controller.toml")
    run(cfg)                      # serves until SIGTERM/SIGINT
    app = build_app(Controller(cfg))   # an aiohttp application, for tests

The controller is the conduit: its API (see `_api.py`) takes deployments and
rollbacks and reports status; behind it run the global dispatcher's tick, the
agents' health polling and the deployment center's canary checks.
"""

from __future__ import annotations

import logging

from aiohttp import web

from .._logging import FORMATS, configure_logging
from ._api import build_app
from ._config import CanarySection, ConfigError, ControllerConfig, DispatcherSection
from ._controller import Controller

__all__ = ["CanarySection", "ConfigError", "Controller", "ControllerConfig", "DispatcherSection",
           "build_app", "run"]


def run(config: ControllerConfig) -> None:
    """Serve until SIGTERM/SIGINT; stops the dispatcher's HAProxy on the way out."""
    configure_logging(config.log_level, config.log_format, service="controller",
                      access_level=logging.WARNING)
    controller = Controller(config)
    port = config.port or controller.plan.controller.ports["controller"]
    web.run_app(build_app(controller), host=config.listen, port=port, print=None,
                shutdown_timeout=5, handle_signals=True)


if __name__ == "__main__":  # python -m edgeshot.control.server --config FILE
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="edgeshot controller")
    ap.add_argument("--config", "-c", required=True)
    ap.add_argument("--log-format", choices=FORMATS, help="overrides the file's log_format")
    args = ap.parse_args()
    try:
        cfg = ControllerConfig.load(args.config)
        if args.log_format:
            cfg = cfg.model_copy(update={"log_format": args.log_format})
        run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
