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

from ._api import build_app
from ._config import CanarySection, ConfigError, ControllerConfig, DispatcherSection
from ._controller import Controller

__all__ = ["CanarySection", "ConfigError", "Controller", "ControllerConfig", "DispatcherSection",
           "build_app", "run"]


def run(config: ControllerConfig) -> None:
    """Serve until SIGTERM/SIGINT; stops the dispatcher's HAProxy on the way out."""
    logging.basicConfig(level=getattr(logging, config.log_level),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    controller = Controller(config)
    port = config.port or controller.plan.controller.ports["controller"]
    web.run_app(build_app(controller), host=config.listen, port=port, print=None,
                shutdown_timeout=5, handle_signals=True)


if __name__ == "__main__":  # python -m edgeshot.control.server --config FILE
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="edgeshot controller")
    ap.add_argument("--config", "-c", required=True)
    args = ap.parse_args()
    try:
        run(ControllerConfig.load(args.config))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
