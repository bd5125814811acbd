"""edgeshot.control.dashboards: the customer, NOC and ISV dashboards the controller serves.

    from edgeshot.control.dashboards import mount_dashboards
    mount_dashboards(app, controller)      # routes under /dash, the history collector

* ``views`` — pure view models over plain data (table-tested), ``svg`` — the charts;
* ``_collect`` — the history the pages show over time (edges' latency histograms and
  region counts, instance samples, churn, HAProxy errors) kept in the controller's store;
* ``_data`` — store rows into the view models' inputs, filtered by who asks;
* ``_auth`` — header tokens and the login form's session cookie;
* ``_web`` — the routes, jinja2 templates, the stylesheet and the refresh script
  (``templates/``: nothing from a CDN; the pages work offline).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ._collect import Collector

__all__ = ["mount_dashboards", "COLLECTOR_KEY", "Collector"]

COLLECTOR_KEY = web.AppKey("dashboards_collector", Collector)


def mount_dashboards(app: web.Application, controller: Any, *,
                     interval_s: float | None = None) -> Collector:
    """Add the dashboards' routes to the controller's application and run the collector
    with it (started and stopped with the application)."""
    from ._web import Dashboards

    controller.store.migrate(["dashboards"])
    every = interval_s if interval_s is not None else float(
        getattr(controller.config, "dashboards_interval_s", 0) or
        min(5.0, max(1.0, controller.config.tick_s * 5)))
    collector = Collector(controller, interval_s=every)
    dash = Dashboards(controller, collector)
    app.router.add_routes(dash.routes())
    app[COLLECTOR_KEY] = collector

    async def start(_app: web.Application) -> None:
        collector.start()

    async def stop(_app: web.Application) -> None:
        await collector.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return collector
