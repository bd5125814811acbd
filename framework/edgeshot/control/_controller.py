"""The controller: registration and health of edgepoints and agents, the global
dispatcher's tick, the deployment center's canary checks.

Every `tick_s`: read every edge process's report (concurrently, with a timeout:
an edge that does not answer is unhealthy), store it, compute the routing
table (`dispatch.decide`) and push what changed into the dispatcher's HAProxy.
Every `agent_poll_s`: the agents' health and capacity. Every canary interval:
one analysis step per canary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeshot.agent import auth
from edgeshot.agent.client import AgentClient, AgentError
from edgeshot.plan import Plan, read_plan
from edgeshot.spec import REGIONS

from ._canary import CanaryPolicy
from ._config import ConfigError, ControllerConfig
from ._decide import DispatchPolicy, Geometry, Placed, RoutingTable, Site, UserRegion, decide
from ._deploy import DeployError, DeploymentCenter
from ._dispatcher import (
    DispatchApp,
    DispatchEdgepoint,
    DispatcherConfig,
    DispatcherError,
    GlobalDispatcher,
    find_haproxy,
)
from ._edges import EdgeLink, EdgeStatus
from ._store import Store
from .exclusions import ExclusionsError, Watched
from .metering import Metering

log = logging.getLogger("edgeshot.controller")


def user_regions(plan: Plan) -> list[UserRegion]:
    """Every region users may come from: the built-in table and the plan's edgepoints'."""
    out = {n: UserRegion(n, r.latitude, r.longitude) for n, r in REGIONS.items()}
    for ep in plan.edgepoints:
        out.setdefault(ep.region, UserRegion(ep.region, ep.latitude, ep.longitude))
    return list(out.values())


def edge_url(plan: Plan, edgepoint: str) -> str:
    ep = next(e for e in plan.edgepoints if e.name == edgepoint)
    host = next(s for s in plan.servers if s.name == ep.edge_host)
    return f"http://{host.address}:{host.ports['edge']}"


def edge_public(plan: Plan, edgepoint: str) -> str:
    ep = next(e for e in plan.edgepoints if e.name == edgepoint)
    host = next(s for s in plan.servers if s.name == ep.edge_host)
    return f"{host.address}:{host.ports['http']}"


def _capacity_of(cap: dict[str, Any], mine: Any) -> dict[str, Any]:
    """An edgepoint's capacity as an owner may see it: totals, and its own placements'
    instances (never another owner's apps, nor the servers' instance counts)."""
    out = {k: v for k, v in cap.items() if k in ("slots_total", "slots_free", "mode")}
    out["at_capacity"] = [p for p in cap.get("at_capacity", ()) if mine(p)]
    out["instances"] = {p: v for p, v in (cap.get("instances") or {}).items() if mine(p)}
    return out


def agent_url(plan: Plan, server: str) -> str:
    s = next(s for s in plan.servers if s.name == server)
    return f"http://{s.address}:{s.ports['agent']}"


class Controller:
    def __init__(self, config: ControllerConfig, *, edges: dict[str, EdgeLink] | None = None,
                 agents: dict[str, AgentClient] | None = None) -> None:
        self.config = config
        self.plan = read_plan(config.plan)
        self.state_dir = Path(config.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.state_dir / "controller.db")
        self.tokens = auth.TokenStore.from_file(config.tokens_file)
        # failed authentications per source, for the API's bearer tokens and the dashboards'
        # login alike
        self.auth_throttle = auth.Throttle()
        self.regions = user_regions(self.plan)
        self.geometry = Geometry()
        self.policy = DispatchPolicy()
        self.table: RoutingTable | None = None
        self.started = time.time()
        self.tasks: list[asyncio.Task[Any]] = []
        self.ticks = 0
        self.last_tick_ms = 0.0
        self.dispatcher_note: str | None = None
        try:  # edgepoints whose servers the configuration could not set up: not routed
            self.exclusions = Watched(config.excluded_file)
        except ExclusionsError as exc:
            raise ConfigError(str(exc)) from None
        if agents is None:
            token = auth.read_secret(config.agent_token_file)
            agents = {s.name: AgentClient(config.agents.get(s.name) or agent_url(self.plan, s.name),
                                          token, timeout=30.0)
                      for s in self.plan.servers}
        if edges is None:
            edges = self._edge_links()
        self.agents = agents
        self.edges = edges
        c = config.canary
        self.canary_policy = CanaryPolicy(max_error_rate=c.max_error_rate, threshold=c.threshold,
                                          iterations=c.iterations, step_weight=c.step_weight,
                                          max_weight=c.max_weight, min_requests=c.min_requests)
        self.deploy = DeploymentCenter(self.store, self.plan, config.base_dir,
                                       self.state_dir / "appshots", agents, edges,
                                       self.canary_policy, c.interval_s)
        # metering: usage collected from every agent and edge process, budgets whose cost
        # ceilings the deployment center sends to the edges with each placement
        self.metering = Metering(self)
        self.deploy.ceiling = self.metering.ceiling
        self.dispatcher = self._dispatcher()
        # what this run says and does: events before it are history (an earlier run's
        # failure is not this one's), and how each app is started (deploy.start_decision)
        self.events_from = self.store.last_event_id()
        self.starts: dict[str, dict[str, Any]] = {}
        self._register()

    # ------------------------------------------------------------------ set-up

    def _edge_links(self) -> dict[str, EdgeLink]:
        from ._edge_http import HttpEdgeLink
        token = auth.read_secret(self.config.edge_token_file)
        return {ep.name: HttpEdgeLink(ep.name, self.config.edges.get(ep.name)
                                      or edge_url(self.plan, ep.name), token,
                                      timeout=self.config.edge_timeout_s)
                for ep in self.plan.edgepoints}

    def _dispatcher(self) -> GlobalDispatcher | None:
        d = self.config.dispatcher
        if not d.enabled:
            self.dispatcher_note = "disabled in the configuration"
            return None
        if find_haproxy(d.haproxy) is None:
            self.dispatcher_note = ("HAProxy is not installed (`make system` as root): no "
                                    "global dispatcher; use the edgepoints' URLs directly")
            log.warning("global dispatcher: %s", self.dispatcher_note)
            return None
        ctl = self.plan.controller
        address = d.address or ctl.address or "127.0.0.1"
        port = d.http_port or ctl.ports["http"]
        geo: dict[str, str] = {}
        if d.geo_file:
            for line in Path(d.geo_file).read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and not line.startswith("#"):
                    geo[parts[0]] = parts[1]
        return GlobalDispatcher(DispatcherConfig(
            state_dir=self.state_dir / "dispatcher", bind=f"{address}:{port}",
            stats=d.stats_port != 0, redirect=d.mode == "redirect",
            simulate_latency=d.simulate_latency, regions=tuple(self.regions), geo=geo,
            haproxy=d.haproxy, check_inter_ms=d.check_inter_ms,
            hop_token=auth.read_secret(d.hop_token_file) if d.hop_token_file else None))

    def _register(self) -> None:
        for ep in self.plan.edgepoints:
            self.store.upsert_edgepoint(ep.name, ep.region, ep.latitude, ep.longitude,
                                        self.config.edges.get(ep.name) or edge_url(self.plan, ep.name),
                                        "http://" + edge_public(self.plan, ep.name))
        for s in self.plan.servers:
            self.store.upsert_agent(s.name, s.edgepoint or "",
                                    self.config.agents.get(s.name) or agent_url(self.plan, s.name))
        self.decisions = self.deploy.register_plan()

    def dispatch_apps(self) -> list[DispatchApp]:
        out = []
        for app in self.plan.apps:
            eps = tuple(p.edgepoint for p in self.plan.placements if p.app == app.name)
            out.append(DispatchApp(app.name, hosts=app.hosts, path_prefix=app.path_prefix,
                                   affinity=app.affinity, edgepoints=eps))
        return out

    def dispatch_edgepoints(self) -> list[DispatchEdgepoint]:
        return [DispatchEdgepoint(ep.name, ep.region, ep.latitude, ep.longitude,
                                  edge_public(self.plan, ep.name),
                                  "http://" + edge_public(self.plan, ep.name))
                for ep in self.plan.edgepoints]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.configure(self.dispatch_apps(), self.dispatch_edgepoints())
            try:
                await self.dispatcher.start()
            except DispatcherError as exc:
                self.dispatcher_note = str(exc)
                log.error("global dispatcher did not start: %s", exc)
                self.dispatcher = None
        self.tasks = [asyncio.create_task(self._loop(self.tick, self.config.tick_s), name="tick"),
                      asyncio.create_task(self._loop(self.poll_agents, self.config.agent_poll_s),
                                          name="agents"),
                      asyncio.create_task(self._loop(self.deploy.check_canaries,
                                                     min(1.0, self.config.canary.interval_s)),
                                          name="canaries")]
        self.tasks += self.metering.start()
        if self.config.deploy_on_start:
            self.tasks.append(asyncio.create_task(self.start_apps(), name="start-apps"))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self.tasks = []
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        for a in self.agents.values():
            await a.close()
        for e in self.edges.values():
            await e.close()
        self.store.close()

    async def _loop(self, fn: Any, every: float) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed", getattr(fn, "__name__", fn))
            await asyncio.sleep(max(0.0, every - (time.monotonic() - t0)))

    async def start_apps(self, wait_s: float = 120.0) -> None:
        """Capture, distribute and start every planned app that has no version serving
        (once the agents answer: they may be starting with the controller)."""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            await self.poll_agents()
            if all(a["healthy"] for a in self.store.agents()):
                break
            await asyncio.sleep(0.2)
        for app in self.plan.apps:
            decision = self.decisions.get(app.name)
            said = {"action": decision.action if decision else "capture",
                    "message": decision.message if decision else None}
            if said["message"]:
                self.store.event("start", said["message"], app=app.name,
                                 data={"action": said["action"]})
            row = self.store.app(app.name)
            if row and row["primary_version"]:
                self.starts[app.name] = {"version": row["primary_version"], "state": "serving",
                                         **said}
                continue
            start = self.starts[app.name] = {"version": app.version, "state": "starting", **said}
            try:
                await self.deploy.start_app(app)
                start["state"] = "serving"
            except Exception as exc:  # noqa: BLE001 - said to the user, never a dead task
                if isinstance(exc, (DeployError, AgentError)):
                    log.error("starting %s failed: %s", app.name, exc)
                else:
                    log.exception("starting %s failed", app.name)
                start.update(state="failed", message=f"{app.name} {app.version}: {exc}")
                self.store.event("start-failed", start["message"], app=app.name)
        # edges that came up after the first push learn their placements now, and the
        # dispatcher routes to the new apps at once rather than at the next tick
        await self.deploy.push()
        await self.tick()

    # ------------------------------------------------------------------ the tick

    async def poll_edges(self) -> dict[str, EdgeStatus]:
        async def one(name: str, link: EdgeLink) -> EdgeStatus:
            try:
                return await asyncio.wait_for(link.status(), self.config.edge_timeout_s)
            except Exception as exc:
                return EdgeStatus(name, healthy=False, error=str(exc) or type(exc).__name__)

        results = await asyncio.gather(*(one(n, link) for n, link in self.edges.items()))
        self.exclusions.refresh()
        excluded = self.exclusions.current.edgepoints()
        statuses = {}
        back = []
        for st in results:
            if st.edgepoint in excluded:  # down for routing and shares, whatever it reports
                st = replace(st, healthy=False,
                             error=f"kept out of routing: {excluded[st.edgepoint]}")
            prev = self.deploy.status.get(st.edgepoint)
            statuses[st.edgepoint] = st
            if prev is not None and prev.healthy != st.healthy:
                self.store.event("edgepoint-up" if st.healthy else "edgepoint-down",
                                 f"{st.edgepoint} {'healthy' if st.healthy else 'down'}"
                                 + (f": {st.error}" if st.error else ""), edgepoint=st.edgepoint)
            if st.healthy and (prev is None or not prev.healthy):
                back.append(st.edgepoint)
            self.store.report_edgepoint(st.edgepoint, st.healthy, st.load, st.to_json())
        self.deploy.status = statuses
        for ep in back:  # first seen, or back: a (re)started edge process starts empty; its
            await self.deploy.push_edgepoint(ep)  # share counts it as healthy already
        return statuses

    def routing_inputs(self, health: dict[str, bool] | None = None
                       ) -> tuple[list[Site], list[Placed]]:
        status = self.deploy.status
        sites = []
        for ep in self.plan.edgepoints:
            st = status.get(ep.name)
            healthy = st.healthy if st is not None else True
            if health is not None and ep.name in health and not health[ep.name]:
                healthy = False
            sites.append(Site(ep.name, ep.latitude, ep.longitude, healthy,
                              st.load if st is not None else 0.0))
        serving = {a["name"] for a in self.store.apps() if a["primary_version"]}
        placed = []
        for p in self.plan.placements:
            if p.app not in serving:
                continue
            st = status.get(p.edgepoint)
            ps = st.placements.get(p.id) if st is not None else None
            if ps is None:
                continue  # the edge does not serve it (yet): send no user there
            placed.append(Placed(p.app, p.edgepoint, not ps.at_capacity))
        return sites, placed

    async def tick(self) -> None:
        t0 = time.perf_counter()
        await self.poll_edges()
        health = None
        if self.dispatcher is not None and self.dispatcher.running:
            with contextlib.suppress(Exception):
                health = await self.dispatcher.health()
        sites, placed = self.routing_inputs(health)
        table = decide(sites, placed, self.regions, self.policy, previous=self.table,
                       geometry=self.geometry)
        if self.dispatcher is not None and self.dispatcher.running:
            await self.dispatcher.apply(table)
        self.table = table
        self.ticks += 1
        self.last_tick_ms = (time.perf_counter() - t0) * 1000

    async def poll_agents(self) -> None:
        async def one(server: str, agent: AgentClient) -> None:
            try:
                h = await agent.health()
                cap = await agent.capacity()
                self.store.report_agent(server, True, {"health": h.model_dump(mode="json"),
                                                       "capacity": cap.model_dump(mode="json")})
            except AgentError as exc:
                self.store.report_agent(server, False, {"error": str(exc)})

        await asyncio.gather(*(one(s, a) for s, a in self.agents.items()))

    # ------------------------------------------------------------------ status

    def routing(self) -> dict[str, Any]:
        t = self.table
        if t is None:
            return {}
        return {app: {r: list(c) for r, c in zip(t.regions, per, strict=True)}
                for app, per in t.chains.items()}

    def status(self, may_see: Any = None) -> dict[str, Any]:
        """The network as `edgeshot status` shows it (apps filtered by `may_see(owner, vendor)`)."""
        apps = []
        for a in self.store.apps():
            if may_see is not None and not may_see(a["owner"], a["vendor"]):
                continue
            figs = self.deploy.figures(a["name"])
            instances: dict[str, dict[str, int]] = {}
            for ep, st in self.deploy.status.items():
                for p in st.placements.values():
                    if p.app == a["name"]:
                        instances[ep] = {v: f.ready for v, f in p.versions.items()}
            dep = self.store.deployments(a["name"], limit=1)
            apps.append({
                "name": a["name"], "owner": a["owner"], "vendor": a["vendor"],
                "routed": bool(self.table and any(self.table.chains.get(a["name"], ()))
                               and bool(self.dispatcher and self.dispatcher.running)),
                "primary": a["primary_version"], "previous": a["previous_version"],
                "canary": a["canary_version"], "canary_weight": a["canary_weight"],
                "versions": [{"version": v["version"], "state": v["state"],
                              "appshot": v["appshot"]} for v in self.store.versions(a["name"])],
                "instances": instances,
                "figures": {v: vars(f) for v, f in figs.items()},
                "deployment": dep[0] if dep else None,
                "budget": self.metering.app_status(a["name"]),
                "start": self.starts.get(a["name"]),  # this run's start (None: not begun)
            })
        seen = {f"{a['name']}/" for a in apps}
        eps = []
        for e in self.store.edgepoints():
            st = self.deploy.status.get(e["name"])
            cap = st.capacity if st else {}
            if may_see is not None:  # an owner's or vendor's view: its own placements only
                cap = _capacity_of(cap, lambda pid: pid.rsplit("/", 1)[0] + "/" in seen)
            eps.append({"name": e["name"], "region": e["region"], "healthy": bool(e["healthy"]),
                        "load": e["load"], "last_seen": e["last_seen"],
                        "error": st.error if st and may_see is None else None,
                        "capacity": cap})
        agents = [{"server": a["server"], "edgepoint": a["edgepoint"],
                   "healthy": bool(a["healthy"]), "last_seen": a["last_seen"]}
                  for a in self.store.agents()]
        return {
            "network": self.plan.network, "provider": self.plan.provider,
            "uptime_s": time.time() - self.started, "events_from": self.events_from,
            "dispatcher": {"running": bool(self.dispatcher and self.dispatcher.running),
                           "bind": self.dispatcher.config.bind if self.dispatcher else None,
                           "note": self.dispatcher_note, "ticks": self.ticks,
                           "last_tick_ms": round(self.last_tick_ms, 2)},
            "edgepoints": eps, "agents": agents if may_see is None else [], "apps": apps,
        }
