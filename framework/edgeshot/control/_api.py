"""The controller's HTTP API: the conduit (bearer tokens of `edgeshot.agent.auth`).

=======  ===============================  ======================  ==========================
method   path                             scopes                  answer
=======  ===============================  ======================  ==========================
GET      /v1/health                       (public)                {status, network, uptime_s}
GET      /v1/status                       op, owner, vendor       the network; owners/vendors
                                                                  see their apps only
GET      /v1/routing                      op                      chains per app and region
GET      /v1/events?after=&app=&limit=    op, owner               events (owners: their apps)
POST     /v1/apps/{app}/deploy            op, owner (its apps)    202 {deployment}; the plan
                                                                  held to `_grants` (403/422)
POST     /v1/apps/{app}/rollback          op, owner (its apps)    {from, to, seconds, edges}
GET      /v1/apps/{app}/deployments       op, owner (its apps)    {deployments}
GET      /v1/deployments/{id}             op, owner (its apps)    a deployment
GET      /metrics                         op                      Prometheus text
=======  ===============================  ======================  ==========================

Every route needing a token answers 429 (Retry-After) to an address past its burst of
failed authentications (`auth.Throttle`, shared with the dashboards' login).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field

from edgeshot import __version__
from edgeshot.agent import auth
from edgeshot.agent.auth import METRICS, OPERATOR, public, requires

from ._controller import Controller
from ._deploy import DeployError
from ._http import body_of, int_param, owned, requested_plan
from ._http import error as _error
from ._staging import mount_staging
from .dashboards import mount_dashboards
from .metering import add_routes as add_metering_routes
from .metering import metrics_collector

log = logging.getLogger("edgeshot.controller.api")

OWNER = "owner:*"
VENDOR = "vendor:*"
CONTROLLER_KEY = web.AppKey("controller", Controller)
REGISTRY_KEY = web.AppKey("registry", CollectorRegistry)


class PolicyRequest(BaseModel):
    """A deployment's own canary analysis (`CanaryPolicy`); what is not given is the
    controller's."""

    model_config = ConfigDict(extra="forbid")
    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_response_ms: float | None = Field(None, gt=0, le=600_000)
    threshold: int | None = Field(None, ge=1, le=100)
    iterations: int | None = Field(None, ge=1, le=100)
    step_weight: int | None = Field(None, ge=0, le=100)
    max_weight: int | None = Field(None, ge=1, le=100)
    min_requests: int | None = Field(None, ge=1, le=1_000_000)
    baseline_margin: float | None = Field(None, ge=0, le=100)


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str | None = Field(None, max_length=64)
    plan: dict[str, Any] | None = Field(None, description="the version's AppPlan (JSON)")
    source_dir: str | None = Field(None, max_length=4096)
    canary: int | None = Field(None, ge=1, le=99, description="percent of traffic")
    policy: PolicyRequest | None = None
    override_gate: str | None = Field(None, min_length=3, max_length=500, description=(
        "operators only: why this version is rolled out without a passed capacity test "
        "(logged as a gate-overridden event)"))


def _ctl(request: web.Request) -> Controller:
    return request.app[CONTROLLER_KEY]


def _principal(request: web.Request) -> auth.Principal:
    return request["principal"]


def _may_see(p: auth.Principal):
    return lambda owner, vendor: p.may_see(owner=owner, vendor=vendor)


def _own_app(request: web.Request, app: str) -> web.Response | None:
    """None when the caller may act on `app`; else the error to answer."""
    return owned(_ctl(request).store, _principal(request), app)


@public
async def health(request: web.Request) -> web.Response:
    c = _ctl(request)
    return web.json_response({"status": "ok", "network": c.plan.network,
                              "version": __version__, "uptime_s": round(c.status()["uptime_s"], 1)})


@requires(OPERATOR, OWNER, "vendor:*")
async def status(request: web.Request) -> web.Response:
    p = _principal(request)
    c = _ctl(request)
    return web.json_response(c.status(None if p.is_operator else _may_see(p)))


@requires(OPERATOR)
async def routing(request: web.Request) -> web.Response:
    return web.json_response(_ctl(request).routing())


@requires(OPERATOR, OWNER)
async def events(request: web.Request) -> web.Response:
    c = _ctl(request)
    p = _principal(request)
    after = int_param(request.query.get("after"), "after", 0)
    limit = int_param(request.query.get("limit"), "limit", 100, 1)
    if isinstance(after, web.Response):
        return after
    if isinstance(limit, web.Response):
        return limit
    limit = min(1000, limit)
    app = request.query.get("app")
    rows = c.store.events(after=after, limit=limit, app=app)
    if not p.is_operator:
        mine = {a["name"] for a in c.store.apps() if a["owner"] in p.owners}
        rows = [r for r in rows if r["app"] in mine]
    return web.json_response({"events": rows})


@requires(OPERATOR, OWNER)
async def deploy(request: web.Request) -> web.Response:
    c = _ctl(request)
    p = _principal(request)
    name = request.match_info["app"]
    body = await body_of(request, DeployRequest)
    if isinstance(body, web.Response):
        return body
    app_plan = requested_plan(c, p, name, body.plan, body.version, "deploy")
    if isinstance(app_plan, web.Response):
        return app_plan
    policy = (replace(c.canary_policy, **body.policy.model_dump(exclude_none=True))
              if body.policy else None)
    src = Path(body.source_dir) if body.source_dir else None
    if src is not None and not p.is_operator:
        return _error(403, "forbidden", "only operators may name a source directory")
    if body.override_gate is not None and not p.is_operator:
        return _error(403, "forbidden", "only operators may override the capacity gate")
    override = f"{body.override_gate} (by {p.name})" if body.override_gate else None
    try:
        dep = await c.deploy.deploy(app_plan, body.canary, source_dir=src, policy=policy,
                                    override=override)
    except DeployError as exc:
        return _error(409, "deploy_failed", str(exc))
    return web.json_response({"deployment": c.store.deployment(dep)}, status=202)


@requires(OPERATOR, OWNER)
async def rollback(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    if (err := _own_app(request, name)) is not None:
        return err
    try:
        return web.json_response(await _ctl(request).deploy.rollback(name))
    except DeployError as exc:
        return _error(409, "rollback_failed", str(exc))


@requires(OPERATOR, OWNER)
async def app_deployments(request: web.Request) -> web.Response:
    name = request.match_info["app"]
    if (err := _own_app(request, name)) is not None:
        return err
    return web.json_response({"deployments": _ctl(request).store.deployments(name)})


@requires(OPERATOR, OWNER)
async def deployment(request: web.Request) -> web.Response:
    dep_id = int_param(request.match_info["id"], "a deployment id", 0, 1)
    if isinstance(dep_id, web.Response):
        return dep_id
    dep = _ctl(request).store.deployment(dep_id)
    if dep is None or _own_app(request, dep["app"]) is not None:
        return _error(404, "not_found", f"no deployment {dep_id}")
    return web.json_response(dep)


class _Collector:
    def __init__(self, c: Controller) -> None:
        self.c = c

    def collect(self):
        c = self.c
        yield from auth.ThrottleCollector(c.auth_throttle, "controller").collect()
        ticks = CounterMetricFamily("edgeshot_controller_ticks", "routing ticks done")
        ticks.add_metric([], c.ticks)
        yield ticks
        tick_ms = GaugeMetricFamily("edgeshot_controller_tick_seconds", "duration of the last tick")
        tick_ms.add_metric([], c.last_tick_ms / 1000)
        yield tick_ms
        up = GaugeMetricFamily("edgeshot_controller_edgepoint_healthy", "edgepoint reachable",
                               labels=["edgepoint"])
        load = GaugeMetricFamily("edgeshot_controller_edgepoint_load_ratio",
                                 "edgepoint load (share of capacity)", labels=["edgepoint"])
        for e in c.store.edgepoints():
            up.add_metric([e["name"]], float(e["healthy"]))
            load.add_metric([e["name"]], float(e["load"] or 0))
        yield up
        yield load
        w = GaugeMetricFamily("edgeshot_controller_version_weight_ratio",
                              "traffic share per app version", labels=["app", "version", "owner"])
        for a in c.store.apps():
            if a["primary_version"]:
                cw = a["canary_weight"] if a["canary_version"] else 0
                w.add_metric([a["name"], a["primary_version"], a["owner"]], (100 - cw) / 100)
                if a["canary_version"]:
                    w.add_metric([a["name"], a["canary_version"], a["owner"]], cw / 100)
        yield w


@requires(OPERATOR, METRICS)
async def metrics(request: web.Request) -> web.Response:
    reg = request.app[REGISTRY_KEY]
    return web.Response(body=generate_latest(reg), content_type="text/plain", charset="utf-8")


@public
async def index(request: web.Request) -> web.Response:
    c = _ctl(request)
    html = (f"<!doctype html><title>edgeshot — {c.plan.network}</title>"
            f"<h1>edgeshot network {c.plan.network}</h1>"
            "<p>The dashboards are served here. API: <code>/v1/status</code> with a bearer "
            "token (<code>edgeshot status</code>).</p>")
    return web.Response(text=html, content_type="text/html")


def build_app(controller: Controller) -> web.Application:
    app = web.Application(middlewares=[auth.middleware(controller.tokens,
                                                       controller.auth_throttle)],
                          client_max_size=16 << 20)
    app[CONTROLLER_KEY] = controller
    reg = CollectorRegistry()
    reg.register(_Collector(controller))
    reg.register(metrics_collector(controller.metering))
    # no custom *_up: Prometheus's own `up` says whether the controller answers
    Info("edgeshot_controller_build", "this controller's edgeshot version",
         registry=reg).info({"version": __version__})
    app[REGISTRY_KEY] = reg
    app.router.add_get("/", index)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/routing", routing)
    app.router.add_get("/v1/events", events)
    app.router.add_post("/v1/apps/{app}/deploy", deploy)
    app.router.add_post("/v1/apps/{app}/rollback", rollback)
    app.router.add_get("/v1/apps/{app}/deployments", app_deployments)
    app.router.add_get("/v1/deployments/{id}", deployment)
    app.router.add_get("/metrics", metrics)
    add_metering_routes(app, controller.metering)  # /v1/bill, /v1/budgets, /v1/usage/…
    mount_staging(app, controller)  # /v1/apps/{app}/stage: token-only versions, capacity tests
    mount_dashboards(app, controller)  # /dash: customer, NOC and ISV dashboards

    async def on_startup(_app: web.Application) -> None:
        await controller.start()

    async def on_cleanup(_app: web.Application) -> None:
        await controller.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app
