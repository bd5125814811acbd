"""The edge process of one edgepoint (``edgeshot edge --config FILE``).

One asyncio process runs, around one HAProxy (``_haproxy``):

* the **local dispatcher**: HAProxy's configuration rendered from the placements the
  controller assigned (routing keys, cleave, origin, affinity, version weights), and
  instances added, drained and removed live through the runtime API;
* the **activator** (``_activator``): HAProxy's backup server for apps without a ready
  instance;
* the **resource manager**: every ``tick_s`` it reads HAProxy's counters (in-flight
  requests per instance, queues, health), the latency percentiles from the request
  logs (``_logs``), the agents' capacity and snapshots, builds the plain view the pure
  decision function (``decide``) takes, and executes its actions through the agents
  (``AgentClient``) and HAProxy;
* **data-path usage** (``_usage``): counters into usage records, stored before HAProxy
  can forget them;
* the **edge API** (bearer tokens, ``edgeshot.agent.auth``): placements in; load,
  capacity, per-version figures, latency and region history, usage, health and
  ``/metrics`` (its own and HAProxy's Prometheus exporter) out.

Without HAProxy the activator serves the data path itself (slower) and the health
answer says so. HAProxy outlives a crashed edge process; the next one adopts it and its
counters, and takes the agents' instances back.

Configuration (TOML; relative paths are relative to the file)::

    edgepoint = "eu"
    listen = "127.0.1.1"          # the data path (HAProxy's frontend)
    http_port = 8080
    api_port = 7702               # the edge API (api_listen defaults to listen)
    state_dir = "state/edge-eu"
    tokens_file = "edge-tokens.toml"        # who may call the edge API (hashes)
    agent_token_file = "edge-agent.token"   # this edge's token for its agents (0600)
    plan = "plan.json"            # optional: placements and agents from a plan
    [[agents]]
    name = "eu-1"
    url = "http://127.0.1.1:7701"
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import signal
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import __version__
from .._config_file import ConfigError, load_config, toml_text
from .._logging import LogFormat, configure_logging
from .._tasks import cancel_and_wait
from ..agent import auth
from ..agent.auth import CONTROLLER_EDGE, METRICS, OPERATOR, requires
from ..agent.client import AgentClient, AgentError
from ..agent.models import InstanceInfo
from . import _haproxy as H
from ._activator import Activator, Router, Target, WeightedPicker
from ._logs import ORIGIN, LatencyBook, LogReceiver, parse_line, percentile
from ._store import InstanceMeta, Store
from ._usage import ACTIVATOR_WORKER, UsageMeter
from .decide import (
    Decision,
    Discard,
    EdgeView,
    Inst,
    Memory,
    PlacementView,
    Policy,
    Restore,
    ServerView,
    Snapshotted,
    Suspend,
    Tuning,
    decide,
)
from .models import (
    EdgeHealth,
    EdgeLoad,
    InstanceLoad,
    LatencyHistory,
    PlacementAssignment,
    PlacementList,
    PlacementLoad,
    PlacementSet,
    PlacementUpdate,
    RegionHistory,
    ServerLoad,
    VersionLoad,
)

log = logging.getLogger("edgeshot.edge")

__all__ = ["EdgeConfig", "AgentRef", "Edge", "ConfigError", "run", "build_api"]

READ = (CONTROLLER_EDGE, OPERATOR)
WRITE = (CONTROLLER_EDGE,)


class AgentRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
                      description="the server's name (the plan's), as decisions name it")
    url: str = Field(pattern=r"^https?://")


class EdgeConfig(BaseModel):
    """The edge process's configuration (TOML, flat keys plus ``[[agents]]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    edgepoint: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    listen: str = Field("127.0.0.1", description="address of the data path")
    http_port: int = Field(8080, ge=1, le=65535)
    api_listen: str | None = Field(None, description="address of the edge API (default listen)")
    api_port: int = Field(7702, ge=1, le=65535)
    state_dir: Path
    tokens_file: Path = Field(description="token hashes the edge API accepts (auth.py format)")
    agent_token_file: Path = Field(description="this edge's edge-agent token (mode 0600)")
    agents: tuple[AgentRef, ...] = ()
    plan: Path | None = Field(None, description="a plan (JSON): initial placements and agents")
    haproxy: Path | None = Field(None, description="HAProxy binary (default: from PATH)")
    use_haproxy: Literal["auto", "off"] = "auto"
    log_max_per_s: int = Field(200, ge=0, description="request log lines read per second "
                               "at most: above, HAProxy logs 1 request in N (0: every one); "
                               "200 a second still gives 12,000 samples a minute")
    nbthread: int | None = Field(None, ge=1, le=64)
    tick_s: float = Field(0.1, ge=0.02, le=60, description="observe and decide this often")
    stable_window_s: float = Field(60.0, gt=0, description="Knative's default")
    panic_window_s: float = Field(1.0, gt=0, description="Knative uses 6 s with cold starts "
                                  "of seconds; restores take ~0.1 s here, so bursts are "
                                  "answered within one second")
    scale_down_delay_s: float = Field(30.0, ge=0)
    report_window_s: float = Field(60.0, gt=0, description="per-version requests, errors and "
                                   "percentiles in the load report cover this window")
    usage_interval_s: float = Field(10.0, ge=0.05, le=3600)
    capacity_interval_s: float = Field(2.0, ge=0.05, le=600)
    activator_timeout_s: float = Field(30.0, gt=0)
    activator_queue: int = Field(1000, ge=1)
    retry_after_s: int = Field(2, ge=1)
    drain_timeout_s: float = Field(10.0, ge=0)
    restore_backoff_s: float = Field(5.0, ge=0, description="after a failed restore on a server")
    unhealthy_after_s: float = Field(10.0, ge=0, description="down in HAProxy this long: "
                                     "the instance is replaced (at once when its agent says "
                                     "it failed or is gone)")
    keep_haproxy: bool = Field(False, description="leave HAProxy running when the edge stops")
    dispatcher_hop_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the token the network's "
        "dispatcher sends in X-Edgeshot-Hop: only requests carrying it keep their "
        "X-Edgeshot-Region and X-Forwarded-For (others lose the first, get the second "
        "overwritten with their own address)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: LogFormat = Field("text", description="text, or json: one object a line")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EdgeConfig:
        return load_config(cls, path, table="edge", paths=(
            "state_dir", "tokens_file", "agent_token_file", "plan", "haproxy"))

    def render(self) -> str:
        """This configuration as TOML (for tests and templates)."""
        return toml_text(self.model_dump(mode="json", exclude_none=True))


# -- the process's picture of its edgepoint --------------------------------------------------
class Window:
    """Mean of samples over the last ``span`` seconds."""

    __slots__ = ("span", "q", "sum")

    def __init__(self, span: float) -> None:
        self.span = span
        self.q: deque[tuple[float, float]] = deque()
        self.sum = 0.0

    def add(self, t: float, v: float) -> None:
        self.q.append((t, v))
        self.sum += v
        while self.q and self.q[0][0] <= t - self.span:
            self.sum -= self.q.popleft()[1]

    def mean(self) -> float:
        return max(0.0, self.sum / len(self.q)) if self.q else 0.0


@dataclass
class Live:
    """An instance this edge routes to (or is about to)."""

    id: str
    placement: str
    app: str
    version: str
    server: str
    state: Literal["starting", "ready", "draining", "unhealthy"]
    address: str | None = None
    owner: str = ""
    vendor: str = ""
    weight: int = 0
    cookie: str | None = None
    scur: float = 0.0
    since: float = field(default_factory=time.monotonic)
    down_since: float | None = None  # down in HAProxy since
    sick_since: float | None = None  # unhealthy by its agent's probe since
    routed: bool = False  # a server in HAProxy (held requests may reach it before)
    requests: int = 0  # answered since this edge process took it


@dataclass
class Snap:
    id: str
    placement: str
    version: str
    server: str
    since: float


class PlacementRuntime:
    def __init__(self, a: PlacementAssignment, cfg: EdgeConfig, cookie_key: str) -> None:
        self.a = a
        self.stable = Window(cfg.stable_window_s)
        self.panic = Window(cfg.panic_window_s)
        self.last_request = -math.inf
        self.req_seen: tuple[int, int] | None = None  # (worker, backend req_tot)
        self.cookie_key = cookie_key
        self.update(a)

    def update(self, a: PlacementAssignment) -> None:
        self.a = a
        s = a.placement.scaling
        self.policy = Policy(min=s.min, max=s.max, users_per_instance=s.users_per_instance,
                             max_response_ms=s.max_response_ms, percentile=s.percentile,
                             scale_down_below=s.scale_down_below, idle_s=s.idle_s,
                             warm_pool=s.warm_pool, panic_factor=s.panic_factor)
        self.weights = tuple((v.version, v.weight) for v in a.weights)
        self.cpu = float(sum(t.cpu for t in a.app.tiers))
        self.memory = sum(t.memory_mb for t in a.app.tiers) << 20

    @property
    def app(self) -> str:
        return self.a.app.name

    def conf(self, servers: tuple[H.Server, ...]) -> H.AppConf:
        app = self.a.app
        entry = next((t for t in app.tiers if t.entry), None)
        return H.AppConf(
            name=app.name, hosts=tuple(app.hosts), path_prefix=app.path_prefix,
            routes=tuple(H.Route(r.method, r.regex, r.to) for r in app.routes),
            default_route=app.default_route,
            origin=H.origin_from_url(app.origin_url) if app.origin_url else None,
            affinity=self.a.placement.affinity or app.affinity, cookie_key=self.cookie_key,
            health_path=entry.health_path if entry else None, servers=servers,
            **self.stage_conf())

    def stage_conf(self) -> dict[str, Any]:
        """A staged version's route (the controller runs its instances: control/_staging)."""
        st = self.a.stage
        if st is None:
            return {}
        return {"stage_hashes": st.token_sha256,
                "stage_servers": tuple(H.Server(s.name, s.address) for s in st.servers)}


def _run_dir(state_dir: Path, edgepoint: str) -> Path:
    """Where the unix sockets live: under the state dir when its path is short enough
    for a socket address (108 bytes), else a private directory under /tmp."""
    d = state_dir / "run"
    if len(str(d / "activator.sock")) < 100:
        return d
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    return Path("/tmp") / f"edgeshot-{edgepoint[:20]}-{tag}"


# -- the edge ---------------------------------------------------------------------------
class _SlaCollector:
    """Each placement's response time at its SLA's percentile (over the stable window)
    beside the SLA's bound: the alert "SLA breach" compares the two series."""

    LABELS = ("app", "edgepoint", "owner", "percentile")

    def __init__(self, edge: Edge) -> None:
        self.edge = edge

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("edgeshot_edge_response_latency_seconds",
                                  "response time at the SLA's percentile, stable window",
                                  labels=self.LABELS),
                GaugeMetricFamily("edgeshot_edge_sla_max_response_seconds",
                                  "the SLA's bound on that response time", labels=self.LABELS))

    def describe(self):  # noqa: ANN201 (prometheus_client's protocol)
        yield from self._families()

    def collect(self):  # noqa: ANN201
        e = self.edge
        observed, bound = self._families()
        for pr in list(e.placements.values()):
            pol = pr.policy
            labels = [pr.app, e.cfg.edgepoint, pr.a.placement.owner, f"{pol.percentile:g}"]
            bound.add_metric(labels, pol.max_response_ms / 1000)
            ms = e.book.latency(pr.app, pol.percentile, e.cfg.stable_window_s)
            if ms is not None:
                observed.add_metric(labels, ms / 1000)
        yield observed
        yield bound


class Edge:
    def __init__(self, cfg: EdgeConfig, *, tokens: auth.TokenStore | None = None,
                 agent_token: str | None = None) -> None:
        self.cfg = cfg
        self.source = f"edge:{cfg.edgepoint}"
        cfg.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.store = Store(cfg.state_dir / "edge.db")
        self.meter = UsageMeter(self.store, self.source, cfg.edgepoint)
        self.book = LatencyBook(window_s=max(cfg.stable_window_s, cfg.report_window_s))
        self.tokens = tokens
        self.agent_token = agent_token
        self.run_dir = _run_dir(cfg.state_dir, cfg.edgepoint)
        self.placements: dict[str, PlacementRuntime] = {}
        self.quarantined: dict[str, str] = {}  # stored placements refused at start: why
        self.by_app: dict[str, str] = {}  # app -> placement id
        self.live: dict[str, Live] = {}
        self.snaps: dict[str, Snap] = {}
        self.agents: dict[str, AgentClient] = {}
        self.capacity: dict[str, Any] = {}
        self.agent_ok: dict[str, bool] = {}
        self.restore_failed: dict[str, float] = {}
        self.memory = Memory()
        self.tuning = Tuning(stable_window_s=cfg.stable_window_s,
                             panic_window_s=cfg.panic_window_s,
                             scale_down_delay_s=cfg.scale_down_delay_s)
        self.last: Decision | None = None
        self.busy: set[str] = set()
        self.gone: dict[str, float] = {}  # instances taken out lately (stale agent lists)
        self.retiring: set[str] = set()  # placements taken away, instances still going
        self.leftover_servers: set[tuple[str, str]] = set()  # del server refused: retry
        self._versions: dict[str, str] = {}
        self.wake = asyncio.Event()
        self.tick_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loops: list[asyncio.Task[Any]] = []
        self.worker: int = 0
        self.old_workers: set[int] = set()  # told to stop, read through the master
        self.holds: dict[int, asyncio.Task[None]] = {}  # told to stop, read to the end
        self.mode: Literal["haproxy", "activator"] = "haproxy"
        self.mode_reason: str | None = None
        self.haproxy: H.HAProxyProcess | None = None
        self.hconf: H.HAProxyConf | None = None
        self.picker = WeightedPicker()
        self.activator = Activator(pick=self._pick, demand=self._demand, served=self._served,
                                   known=lambda app: app in self.by_app,
                                   queue_limit=cfg.activator_queue,
                                   timeout_s=cfg.activator_timeout_s,
                                   retry_after_s=cfg.retry_after_s)
        self.activator.hop_sha256 = cfg.dispatcher_hop_sha256
        self.logs: LogReceiver | None = None
        self.log_every = 1  # HAProxy logs 1 request in this many (adapted to the rate)
        self.log_port = self._saved_log_port()
        self._fe_seen: tuple[int, int, float] | None = None  # (worker, req_tot, time)
        self._fe_rate = 0.0
        self._gauges_at = -math.inf
        self._observed_at = -math.inf  # monotonic time of the last _observe
        self._srv_seen: dict[tuple[int, str, str], tuple[int, int]] = {}
        self.started = time.monotonic()
        self.reload_lock = asyncio.Lock()
        self._api_runner: web.AppRunner | None = None
        self._stopping = False
        self._init_metrics()

    # -- metrics -----------------------------------------------------------------------
    def _init_metrics(self) -> None:
        r = self.registry = CollectorRegistry()
        self.auth_throttle = auth.Throttle()  # failed authentications per source address
        r.register(auth.ThrottleCollector(self.auth_throttle, "edge"))
        lab = ("app", "version", "edgepoint", "owner")
        self.m_instances = Gauge("edgeshot_edge_instances", "instances by state", (*lab, "state"),
                                 registry=r)
        self.m_restores = Counter("edgeshot_edge_restores_total", "restores asked of agents",
                                  (*lab, "result", "source"), registry=r)
        self.m_restore_s = Histogram("edgeshot_edge_restore_seconds",
                                     "agent create_instance -> instance in HAProxy", lab,
                                     registry=r, buckets=(.025, .05, .1, .2, .35, .5, 1, 2, 5, 10))
        self.m_suspends = Counter("edgeshot_edge_suspends_total", "instances taken out",
                                  (*lab, "reason", "kept"), registry=r)
        self.m_queued = Gauge("edgeshot_edge_activator_queued_requests",
                              "requests held by the activator", ("app", "edgepoint"), registry=r)
        self.m_activator = Counter("edgeshot_edge_activator_requests_total",
                                   "requests the activator answered",
                                   ("app", "edgepoint", "status"), registry=r)
        self.m_decide_s = Histogram("edgeshot_edge_decision_seconds", "one decision",
                                    ("edgepoint",), registry=r,
                                    buckets=(.0005, .001, .002, .005, .01, .02, .05, .1))
        self.m_capacity = Gauge("edgeshot_edge_at_capacity_instances",
                                "instances wanted that no server can take",
                                ("app", "edgepoint", "owner"), registry=r)
        self.m_log_lines = Counter("edgeshot_edge_log_lines_total", "HAProxy log lines read",
                                   ("edgepoint",), registry=r)
        self._log_lines = self.m_log_lines.labels(self.cfg.edgepoint)
        r.register(_SlaCollector(self))

    # -- life cycle ------------------------------------------------------------------------
    async def start(self) -> None:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.agent_token is None:
            try:
                self.agent_token = auth.read_secret(cfg.agent_token_file)
            except (OSError, auth.AuthError) as exc:
                raise ConfigError(f"agent_token_file: {exc}") from None
        for ref in self._agent_refs():
            self.agents[ref.name] = AgentClient(ref.url, self.agent_token, timeout=30,
                                                retries=2, create_timeout=120)
        self.meter.reset_activator()
        self._load_placements()
        binary = H.find_haproxy(cfg.haproxy) if cfg.use_haproxy == "auto" else None
        if binary is None:
            self.mode = "activator"
            self.mode_reason = ("use_haproxy = off" if cfg.use_haproxy == "off" else
                                "HAProxy is not installed (make system installs it as root)")
            log.warning("edge %s: %s: the activator serves the data path itself, slower",
                        cfg.edgepoint, self.mode_reason)
        await self._adopt_instances()
        if self.mode == "haproxy":
            self.logs = LogReceiver(self.log_port, self._on_log)
            self.log_port = self.logs.start()
            (self.cfg.state_dir / "log.port").write_text(f"{self.log_port}\n")
            await self.activator.start_unix(self.run_dir / "activator.sock")
            self.haproxy = H.HAProxyProcess(self._hconf(), binary)  # type: ignore[arg-type]
            self.activator.set_router(Router(self.hconf))  # it finds apps as HAProxy does
            await self._start_haproxy()
        else:
            await self.activator.start_tcp(cfg.listen, cfg.http_port, Router(self._hconf()))
        await self._start_api()
        self.loops.append(asyncio.create_task(self._tick_loop()))
        for fn, every in ((self._flush_usage, cfg.usage_interval_s),
                          (self._poll_agents, cfg.capacity_interval_s),
                          (self._flush_history, 5.0)):
            self.loops.append(asyncio.create_task(self._every(fn, every)))
        log.info("edge %s serving %d placement(s) on %s:%d (%s), API on %s:%d", cfg.edgepoint,
                 len(self.placements), cfg.listen, cfg.http_port, self.mode,
                 cfg.api_listen or cfg.listen, cfg.api_port)

    async def stop(self) -> None:
        """Graceful: stop deciding, let running actions end, store every counter and
        minute, then stop HAProxy (unless ``keep_haproxy``)."""
        self._stopping = True
        t_stop = time.monotonic()
        await cancel_and_wait(self.loops)
        self.loops = []
        if self.tasks:
            # actions under way get a few seconds; then they are cancelled (the agents
            # finish what they started; the next edge process takes the instances back)
            log.info("waiting for %d action(s) under way", len(self.tasks))
            _, pending = await asyncio.wait(self.tasks, timeout=min(5.0, self.cfg.drain_timeout_s))
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        if self._api_runner is not None:
            await self._api_runner.cleanup()
            self._api_runner = None
        log.info("stopping: actions and API done after %.1f s", time.monotonic() - t_stop)
        if self.haproxy is not None and self.haproxy.running():
            try:
                await self._observe_usage()
                self._flush_now()
                if not self.cfg.keep_haproxy:
                    await self._stop_haproxy()
            except Exception:
                log.exception("edge %s: stopping HAProxy cleanly failed", self.cfg.edgepoint)
            finally:
                if not self.cfg.keep_haproxy:
                    await self.haproxy.stop(timeout=3)
        for t in list(self.holds.values()):  # keep_haproxy: its old workers are let go
            t.cancel()
        await asyncio.gather(*self.holds.values(), return_exceptions=True)
        log.info("stopping: HAProxy done after %.1f s", time.monotonic() - t_stop)
        with contextlib.suppress(Exception):
            self._flush_now()
            self.book.flush(self.store, everything=True)
        await self.activator.stop()
        if self.logs is not None:
            self.logs.stop()
        for a in self.agents.values():
            await a.close()
        self.store.close()
        log.info("edge %s stopped in %.1f s", self.cfg.edgepoint, time.monotonic() - t_stop)

    async def _stop_haproxy(self) -> None:
        """Soft stop; every worker's counters are read until they are final (the current
        one and those of reloads through their held sessions, others through the master
        until they are gone), then the process is waited for."""
        assert self.haproxy is not None
        pid = self.haproxy.pid
        held = await self._hold_current() if pid else None
        try:
            workers = {w.pid for w in await self.haproxy.workers()} if pid else set()
        except (OSError, asyncio.IncompleteReadError):
            workers = {self.worker} if self.worker else set()
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        if held is not None:
            self._read_to_the_end(held, deadline)
        workers = (workers | self.old_workers) - set(self.holds)
        if pid is not None:
            os.kill(pid, signal.SIGUSR1)
        while workers and time.monotonic() < deadline:
            for w in list(workers):
                rows = await self.haproxy.worker_stats(w)
                if rows is None or not _alive(w):
                    workers.discard(w)
                    continue
                self.meter.observe_stat(w, rows)
            self._flush_now()
            await asyncio.sleep(0.05)
        if self.holds:
            _, late = await asyncio.wait(list(self.holds.values()),
                                         timeout=max(0.0, deadline - time.monotonic()))
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self.haproxy.stop(timeout=5)

    async def _tick_loop(self) -> None:
        """Decide every tick_s, or at once when the activator reports demand."""
        while not self._stopping:
            t0 = time.monotonic()
            urgent = self.wake.is_set()
            self.wake.clear()  # before the tick: demand during the tick wakes the next one
            try:
                async with self.tick_lock:
                    await self._tick(observe=observe_due(
                        urgent, time.monotonic() - self._observed_at, self.cfg.tick_s))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("edge %s: tick failed", self.cfg.edgepoint)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(),
                                       max(0.0, self.cfg.tick_s - (time.monotonic() - t0)))

    async def _every(self, fn, every: float) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("edge %s: %s failed", self.cfg.edgepoint, fn.__name__)
            await asyncio.sleep(max(0.0, every - (time.monotonic() - t0)))

    def _agent_refs(self) -> list[Any]:
        refs = {r.name: r for r in self.cfg.agents}
        if self.cfg.plan is not None and self.cfg.plan.exists():
            from edgeshot.plan import read_plan
            plan = read_plan(self.cfg.plan)
            for s in plan.servers:
                if s.edgepoint == self.cfg.edgepoint and "agent" in s.roles and s.address \
                        and s.name not in refs and "agent" in s.ports:
                    refs[s.name] = AgentRef(name=s.name, url=f"http://{s.address}:{s.ports['agent']}")
        return list(refs.values())

    # -- placements ------------------------------------------------------------------------
    def _cookie_key(self, app: str) -> str:
        path = self.cfg.state_dir / "cookie.key"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        secret = path.read_text().strip().encode()
        return hmac.new(secret, app.encode(), hashlib.sha256).hexdigest()[:32]

    def _load_placements(self) -> None:
        saved = self.store.load_placements()
        assignments: list[PlacementAssignment] = []
        if saved:
            for pid, body in saved.items():
                try:
                    assignments.append(PlacementAssignment.model_validate(body))
                except ValidationError as exc:
                    self._quarantine(pid, f"unreadable: {exc.errors(include_url=False)[0]}")
        elif self.cfg.plan is not None and self.cfg.plan.exists():
            from edgeshot.plan import read_plan
            plan = read_plan(self.cfg.plan)
            for p in plan.placements:
                if p.edgepoint == self.cfg.edgepoint:
                    assignments.append(PlacementAssignment(placement=p, app=plan.app(p.app)))
        for a in assignments:
            if (why := self._refusal(a)) is not None:
                self._quarantine(a.id, why)  # never served, never blocks the others
                continue
            self.placements[a.id] = PlacementRuntime(a, self.cfg, self._cookie_key(a.app.name))
            self.by_app[a.app.name] = a.id

    def _quarantine(self, pid: str, why: str) -> None:
        self.quarantined[pid] = why
        log.error("stored placement %s quarantined (not served): %s", pid, why)

    def _refusal(self, a: PlacementAssignment) -> str | None:
        """Why this edge must not serve ``a`` (None: it may): its app plan fails the spec's
        checks (a plan the controller did not compile), or HAProxy could not route it."""
        from edgeshot.plan import check_app_plan, check_placement
        if a.placement.edgepoint != self.cfg.edgepoint:
            return (f"placement {a.id} is for edgepoint {a.placement.edgepoint!r}, this is "
                    f"{self.cfg.edgepoint!r}")
        if problems := check_placement(a.placement):
            return f"placement {a.id[:80]} (app {a.app.name[:64]}): placement.{problems[0]}"
        if problems := check_app_plan(a.app):
            return f"placement {a.id} (app {a.app.name}): app.{problems[0]}"
        try:
            H.render(H.HAProxyConf(edgepoint="x", listen="127.0.0.1", http_port=1,
                                   run_dir=self.run_dir, apps=(
                                       PlacementRuntime(a, self.cfg, "0" * 32).conf(()),)))
        except H.HAProxyError as exc:
            return f"placement {a.id} (app {a.app.name}): {exc}"
        return None

    def _check_assignments(self, items: tuple[PlacementAssignment, ...]
                           ) -> dict[str, str]:
        """The placements of ``items`` this edge refuses, with why; a request it cannot
        take at all (another edgepoint's placements, an app twice) raises."""
        apps = set()
        for a in items:
            if a.placement.edgepoint != self.cfg.edgepoint:
                raise ApiError(422, "wrong_edgepoint", f"placement {a.id} is for edgepoint "
                               f"{a.placement.edgepoint!r}, this is {self.cfg.edgepoint!r}")
            if a.app.name in apps:
                raise ApiError(422, "duplicate", f"app {a.app.name} placed twice")
            apps.add(a.app.name)
        return {a.id: why for a in items if (why := self._refusal(a)) is not None}

    async def set_placements(self, items: tuple[PlacementAssignment, ...]) -> None:
        """Serve exactly these placements. HAProxy routes a new app before any decision
        sees it (the decision loop waits meanwhile); a removed app's instances go first,
        then its routes. A placement this edge refuses is left as it was (its previous
        assignment keeps serving, a new one is not added), the others are applied, and the
        refusal is raised afterwards (422 naming the placements and why)."""
        refused = self._check_assignments(items)
        new = {a.id: a for a in items if a.id not in refused}
        for pid in refused:
            if pid in self.placements and pid not in self.retiring:
                new[pid] = self.placements[pid].a
        async with self.tick_lock:
            before = self._routing()
            removed = [pid for pid in self.placements if pid not in new]
            self.retiring.update(removed)
            for pid, a in new.items():
                self.retiring.discard(pid)
                if pid in self.placements:
                    self.placements[pid].update(a)
                else:
                    self.placements[pid] = PlacementRuntime(a, self.cfg,
                                                            self._cookie_key(a.app.name))
            self.store.save_placements({pid: json.loads(a.model_dump_json())
                                        for pid, a in new.items()})
            for a in new.values():  # staged instances' traffic is billed to their owner too
                for s in a.stage.servers if a.stage else ():
                    self.store.remember(InstanceMeta(s.name, a.app.name, a.stage.version,
                                                     a.placement.owner, a.placement.vendor, "",
                                                     s.address), datetime.now(UTC))
            self.by_app = {pr.app: pid for pid, pr in self.placements.items()}
            if self._routing() != before:
                await self._reconfigure()
            for pid in new:
                await self._reweigh(self.placements[pid].app)
        if removed:
            await asyncio.gather(*(self._retire(pid) for pid in removed),
                                 return_exceptions=True)
            async with self.tick_lock:
                for pid in removed:
                    if pid in self.retiring:  # not placed again meanwhile
                        self.placements.pop(pid, None)
                        self.retiring.discard(pid)
                self.by_app = {pr.app: pid for pid, pr in self.placements.items()}
                await self._reconfigure()
        if refused:
            raise ApiError(422, "refused", "; ".join(refused.values())[:2000],
                           detail=list(refused.values()))

    def _routing(self) -> dict[str, H.AppConf]:
        return {pid: pr.conf(()) for pid, pr in self.placements.items()}

    async def update_placement(self, pid: str, u: PlacementUpdate) -> PlacementAssignment:
        pr = self.placements.get(pid)
        if pr is None:
            raise ApiError(404, "not_found", f"no placement {pid} here")
        changes: dict[str, Any] = {}
        if u.versions is not None:
            changes["versions"] = u.versions
        if u.global_share is not None:
            changes["global_share"] = u.global_share
        if u.cost_ceiling is not None:
            changes["cost_ceiling"] = u.cost_ceiling
        a = PlacementAssignment.model_validate({**pr.a.model_dump(), **changes})
        pr.update(a)
        self.store.save_placements({p: json.loads(x.a.model_dump_json())
                                    for p, x in self.placements.items()})
        await self._reweigh(pr.app)
        return a

    async def _retire(self, pid: str) -> None:
        """A placement taken away (marked retiring: no decisions for it): its instances
        stop, its warm pool goes."""
        tasks = []
        for live in list(self.live.values()):
            if live.placement == pid and live.state != "starting" and live.id not in self.busy:
                tasks.append(self._suspend(Suspend(pid, live.id, live.server, keep=False,
                                                   reason="placement-removed")))
        for snap in list(self.snaps.values()):
            if snap.placement == pid:
                tasks.append(self._discard(Discard(pid, snap.id, snap.server,
                                                   "placement-removed")))
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- HAProxy ---------------------------------------------------------------------------
    def _hconf(self) -> H.HAProxyConf:
        apps = []
        for pr in sorted(self.placements.values(), key=lambda p: p.app):
            servers = tuple(H.Server(lv.id, lv.address, weight=lv.weight or 1,
                                     draining=lv.state == "draining")
                            for lv in sorted(self.live.values(), key=lambda x: x.id)
                            if lv.app == pr.app and lv.address and lv.state != "starting")
            apps.append(pr.conf(servers))
        self.hconf = H.HAProxyConf(edgepoint=self.cfg.edgepoint, listen=self.cfg.listen,
                                   http_port=self.cfg.http_port, run_dir=self.run_dir,
                                   apps=tuple(apps), log_port=self.log_port,
                                   log_every=self.log_every, nbthread=self.cfg.nbthread,
                                   hop_sha256=self.cfg.dispatcher_hop_sha256)
        return self.hconf

    async def _start_haproxy(self) -> None:
        assert self.haproxy is not None
        conf = self._hconf()
        rendered = H.render(conf)
        on_disk = conf.config_path.read_text() if conf.config_path.exists() else None
        self.haproxy.conf = conf
        if self.haproxy.running():
            # adopt: same configuration -> sync servers live; else reload into it
            if on_disk == rendered.text:
                await self.haproxy.start()
                self.worker = await self.haproxy.current_worker()
                await self._take_over_workers()
                await self._sync_servers()
                await self.haproxy.admin.set_log_every(self.log_every)
                log.info("adopted the running HAProxy (worker %d)", self.worker)
                return
            await self.haproxy.start()  # adopts
            self.worker = await self.haproxy.current_worker()
            await self._take_over_workers()
            await self._reload()  # writes the configuration, then reloads into it
            log.info("adopted the running HAProxy and reloaded it into the current "
                     "configuration (worker %d)", self.worker)
            return
        H.write_config(conf, rendered)
        await self.haproxy.start()
        self.worker = await self.haproxy.current_worker()
        await self._take_over_workers()
        for lv in self.live.values():
            if lv.state == "ready":
                lv.routed = True
                self._srv_seen[(self.worker, lv.app, lv.id)] = (0, 0)
                lv.cookie = await self._cookie_of(lv.app, lv.id)

    async def _take_over_workers(self) -> None:
        """At start: old workers a crashed edge process was still reading are read on
        (through the master, until they exit); baselines of workers that are gone are
        dropped (their counters went with them, and a new worker may get their pid)."""
        assert self.haproxy is not None
        alive = {w.pid for w in await self.haproxy.workers()}
        self.old_workers |= alive - {self.worker}
        for w in self.meter.workers() - alive - {ACTIVATOR_WORKER}:
            self.meter.forget_worker(w)

    async def _sync_servers(self) -> None:
        """After adoption: HAProxy's dynamic servers match the instances the agents run."""
        assert self.haproxy is not None
        rt = self.haproxy.admin
        state = await rt.servers_state()
        have = {(s["be_name"], s["srv_name"]) for s in state if s.get("srv_name") != H.ACTIVATOR}
        want = {(lv.app, lv.id): lv for lv in self.live.values()
                if lv.address and lv.state == "ready"}
        await self._observe_usage()
        for be, sv in have - set(want):
            if be in self.by_app:
                self._flush_now(only=lambda k, be=be, sv=sv: k[1] == be and k[2] == sv)
                with contextlib.suppress(H.HAProxyError):
                    await rt.remove_server(be, sv)
                self.meter.forget_server(be, sv, keep_workers=self._stopping_workers())
        for (be, sv), lv in want.items():
            if (be, sv) not in have:
                await rt.add_server(be, H.Server(sv, lv.address, weight=lv.weight or 1),
                                    affinity=self.placements[lv.placement].conf(()).affinity)
            lv.routed = True
            lv.cookie = await self._cookie_of(be, sv)
        for app in {lv.app for lv in self.live.values()}:
            await self._reweigh(app, force=True)

    async def _reconfigure(self) -> None:
        self.activator.set_router(Router(self._hconf()), routes=self.mode == "activator")
        if self.mode == "haproxy":
            await self._reload()

    async def _reload(self) -> None:
        """Write the configuration with the current instances and reload seamlessly; the
        old worker is held until its counters are final (``WorkerSession``)."""
        assert self.haproxy is not None
        async with self.reload_lock:
            conf = self._hconf()
            self.haproxy.conf = conf
            H.write_config(conf, H.render(conf))
            held = await self._hold_current()
            old = self.worker
            try:
                self.worker = await self.haproxy.reload()
            except BaseException:
                if held is not None:
                    await held.close()
                raise
            if held is not None and held.pid != self.worker:
                self._read_to_the_end(held)
            elif held is not None:
                await held.close()
            elif old and old != self.worker:
                self.old_workers.add(old)  # no session on it: read while it answers
            for lv in self.live.values():
                if lv.state == "ready":
                    lv.routed = True
                    self._srv_seen[(self.worker, lv.app, lv.id)] = (0, 0)
                    lv.cookie = await self._cookie_of(lv.app, lv.id)
            log.info("HAProxy reloaded (worker %d -> %d)", old, self.worker)

    async def reload(self) -> None:
        """A reload on demand (tests, operators)."""
        if self.mode == "haproxy":
            await self._reload()

    async def _cookie_of(self, app: str, server: str) -> str | None:
        if self.haproxy is None:
            return None
        pr = self.placements.get(self.by_app.get(app, ""))
        if pr is None or not pr.conf(()).affinity:
            return None
        for r in await self.haproxy.admin.show_stat():
            if r.get("pxname") == app and r.get("svname") == server:
                return r.get("cookie") or None
        return None

    async def _reweigh(self, app: str, force: bool = False) -> None:
        """Server weights from version weights: each version's share split evenly over
        its ready instances (HAProxy weights 0-256)."""
        pid = self.by_app.get(app)
        if pid is None:
            return
        pr = self.placements[pid]
        ready: dict[str, list[Live]] = {}
        for lv in self.live.values():
            if lv.app == app and lv.state == "ready":
                ready.setdefault(lv.version, []).append(lv)
        wanted = {v: w for v, w in pr.weights}
        total = sum(w for v, w in wanted.items() if ready.get(v)) or 1
        raw: dict[str, float] = {}
        for v, lvs in ready.items():
            share = wanted.get(v, 0) / total
            for lv in lvs:
                raw[lv.id] = share / len(lvs)
        top = max(raw.values(), default=0) or 1
        for lvs in ready.values():
            for lv in lvs:
                w = 0 if raw[lv.id] <= 0 else max(1, round(256 * raw[lv.id] / top))
                if w != lv.weight or force:
                    lv.weight = w
                    if self.mode == "haproxy" and self.haproxy is not None:
                        with contextlib.suppress(H.HAProxyError, OSError):
                            await self.haproxy.admin.set_weight(app, lv.id, w)

    # -- agents ----------------------------------------------------------------------------
    async def _adopt_instances(self) -> None:
        """At start: the instances the agents run or keep snapshotted for our apps."""
        await self._poll_agents(adopt=True)

    async def _poll_agents(self, adopt: bool = False) -> None:
        async def one(name: str, agent: AgentClient):
            try:
                cap, insts = await asyncio.gather(agent.capacity(), agent.list_instances())
            except (AgentError, aiohttp.ClientError, OSError, TimeoutError) as exc:
                if self.agent_ok.get(name, True):
                    log.warning("agent %s unreachable: %s", name, exc)
                self.agent_ok[name] = False
                return
            self.agent_ok[name] = True
            self.capacity[name] = (cap, time.monotonic())
            self._merge_instances(name, insts, adopt)

        await asyncio.gather(*(one(n, a) for n, a in self.agents.items()))

    def _merge_instances(self, server: str, insts: list[InstanceInfo], adopt: bool) -> None:
        now = time.monotonic()
        seen = set()
        staged = {s.name for pr in self.placements.values() if pr.a.stage
                  for s in pr.a.stage.servers}  # the controller's, never public
        for info in insts:
            pid = self.by_app.get(info.app)
            if pid is None or info.id in staged:
                continue
            seen.add(info.id)
            if info.state == "snapshotted":
                if info.id not in self.snaps and info.id not in self.busy \
                        and info.id not in self.live:
                    self.snaps[info.id] = Snap(info.id, pid, info.version, server,
                                               now - info.age_s)
                continue
            if info.state == "running":
                self.snaps.pop(info.id, None)
            lv = self.live.get(info.id)
            if lv is None:
                if info.state == "running" and info.address and info.id not in self.busy \
                        and info.id not in self.gone:
                    if not adopt and info.age_s < 10:
                        continue  # probably ours, mid-restore: the restore task adds it
                    self.live[info.id] = Live(info.id, pid, info.app, info.version, server,
                                              "ready", info.address, info.owner, info.vendor)
                    self.store.remember(InstanceMeta(info.id, info.app, info.version,
                                                     info.owner, info.vendor, server,
                                                     info.address), datetime.now(UTC))
                    if not adopt and self.mode == "haproxy":
                        self._spawn(self._add_to_haproxy(self.live[info.id]))
                continue
            if lv.state != "ready":
                continue
            if info.state in ("failed", "stopped"):
                lv.state = "unhealthy"  # dead: replaced at once
            elif info.health == "unhealthy":
                # one failed probe of a busy instance is not death: replaced only when
                # HAProxy finds it down too, or after unhealthy_after_s
                lv.sick_since = lv.sick_since or now
                if lv.down_since is not None or \
                        now - lv.sick_since >= self.cfg.unhealthy_after_s:
                    lv.state = "unhealthy"
            else:
                lv.sick_since = None
        for lv in self.live.values():
            if lv.server == server and lv.state == "ready" and lv.id not in seen \
                    and now - lv.since > 5:
                lv.state = "unhealthy"  # the agent no longer has it
        for sid in [s for s, sn in self.snaps.items() if sn.server == server
                    and s not in seen and s not in self.busy]:
            self.snaps.pop(sid)

    async def _route_again(self, lv: Live) -> None:
        try:
            await self._add_to_haproxy(lv)
            log.info("instance %s added to HAProxy", lv.id)
        except (H.HAProxyError, OSError, TimeoutError) as exc:
            log.warning("instance %s still not in HAProxy: %s", lv.id, exc)
            lv.since = time.monotonic()  # try again in a second
        finally:
            self.busy.discard(lv.id)

    async def _add_to_haproxy(self, lv: Live) -> None:
        assert self.haproxy is not None
        pr = self.placements.get(lv.placement)
        if pr is None or lv.address is None:
            return
        if (pr.app, lv.id) in self.leftover_servers:  # the same instance, back
            await self._remove_server(pr.app, lv.id, attempts=10)
            self.leftover_servers.discard((pr.app, lv.id))
        try:
            await self.haproxy.admin.add_server(pr.app, H.Server(lv.id, lv.address,
                                                                 weight=lv.weight or 1),
                                                affinity=pr.conf(()).affinity)
        except H.HAProxyError as exc:
            if "already" not in str(exc).lower():  # a reload rendered it meanwhile: fine
                raise
        self._srv_seen[(self.worker, pr.app, lv.id)] = (0, 0)  # counters start at zero
        lv.routed = True
        lv.cookie = await self._cookie_of(pr.app, lv.id)
        await self._reweigh(pr.app)
        self.activator.notify(pr.app)

    # -- observe, decide, act --------------------------------------------------------------
    async def _observe_usage(self) -> list[dict[str, str]]:
        """``show stat`` of the current worker, into the meter. While a reload hands the
        admin socket over, the old worker may still answer it: ``show info`` on the same
        connection says who answered, and only the current worker's counters are taken
        under its name (the old one's are read through its own session)."""
        assert self.haproxy is not None
        rows: list[dict[str, str]] = []
        for _ in range(3):
            info, stat = await self.haproxy.admin.run("show info", "show stat")
            rows = H.parse_stat(stat)
            if _info_value(info, "Pid") == str(self.worker):
                self.meter.observe_stat(self.worker, rows)
                break
        return rows

    async def _hold_current(self) -> WorkerSession | None:
        """A session on the current worker, opened before it is told to stop."""
        assert self.haproxy is not None
        for _ in range(3):
            try:
                s = await WorkerSession.open(self.haproxy.admin.socket_path)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
                log.warning("no session on HAProxy worker %d (%s): its last counters are "
                            "read while it answers", self.worker, exc)
                return None
            if s.pid == self.worker:
                return s
            await s.close()  # the old worker of a reload still answering: again
        return None

    def _read_to_the_end(self, s: WorkerSession, deadline: float | None = None) -> None:
        """Read a held worker that was told to stop until its counters are final, store
        them, then let it exit (a task; ``stop`` waits for it until ``deadline``)."""
        async def go() -> None:
            done = False  # final, or gone: nothing more to read of it
            pause = 0.02  # requests still in flight are usually short; long ones, rarer
            try:
                while not done and (deadline is None or time.monotonic() < deadline):
                    done, rows = await s.read()
                    self.meter.observe_stat(s.pid, rows)
                    if not done:
                        await asyncio.sleep(pause)
                        pause = min(2 * pause, 0.5)
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                done = True
                log.warning("HAProxy worker %d went away before its counters were final "
                            "(%s): what it answered after the last read is not billed",
                            s.pid, exc)
            finally:
                self._flush_now()
                if done:  # else it runs on: its baselines stay for whoever reads it next
                    self.meter.forget_worker(s.pid)
                await s.close()

        t = self.holds[s.pid] = asyncio.create_task(go())
        t.add_done_callback(lambda _: self.holds.pop(s.pid, None))

    def _stopping_workers(self) -> set[int]:
        """Old workers still running (a deleted server lives on in them until they exit)."""
        return self.old_workers | set(self.holds)

    async def _tick(self, observe: bool = True) -> None:
        if self._stopping:
            return
        now = time.monotonic()
        if observe:
            await self._observe(now)
        view = self._view(now)
        t0 = time.perf_counter()
        d = decide(view, self.memory, now, self.tuning)
        self.m_decide_s.labels(self.cfg.edgepoint).observe(time.perf_counter() - t0)
        self.memory = d.memory
        self.last = d
        for a in d.actions:
            self._act(a)
        if now - self._gauges_at >= 1.0:
            self._gauges_at = now
            self._update_gauges(d)

    async def _observe(self, now: float) -> None:
        """HAProxy's counters and states, the activator's queues: into the windows."""
        self._observed_at = now
        rows = await self._observe_usage() if self.mode == "haproxy" else []
        conc: dict[str, float] = {}
        for r in rows:
            px, sv = r.get("pxname", ""), r.get("svname", "")
            if px == "edgeshot.http" and sv == "FRONTEND":
                await self._adapt_logging(int(_f(r.get("req_tot"))), now)
                continue
            pid = self.by_app.get(px)
            if pid is None:
                continue
            if sv == "BACKEND":
                conc[px] = conc.get(px, 0.0) + _f(r.get("qcur"))
                req = int(_f(r.get("req_tot")))
                pr = self.placements[pid]
                if pr.req_seen is not None and pr.req_seen[0] == self.worker \
                        and req > pr.req_seen[1]:
                    pr.last_request = now
                pr.req_seen = (self.worker, req)
                continue
            if sv == H.ACTIVATOR:
                continue
            lv = self.live.get(sv)
            if lv is None:
                continue
            lv.scur = _f(r.get("scur"))
            conc[px] = conc.get(px, 0.0) + lv.scur
            key = (self.worker, px, sv)
            req, err = int(_f(r.get("req_tot"))), int(_f(r.get("hrsp_5xx")))
            seen = self._srv_seen.get(key)
            if seen is not None and req >= seen[0]:
                self.book.count(px, lv.version, req - seen[0], max(0, err - seen[1]), now=None)
                lv.requests += req - seen[0]
            self._srv_seen[key] = (req, err)
            status = r.get("status", "")
            if lv.state != "ready":
                continue
            if status.startswith("DOWN"):
                lv.down_since = lv.down_since or now
                if now - lv.down_since >= self.cfg.unhealthy_after_s:
                    lv.state = "unhealthy"
                    log.warning("instance %s of %s is down in HAProxy (%s): replacing it",
                                lv.id, px, r.get("check_status") or status)
            else:
                lv.down_since = None
        for app, pid in self.by_app.items():
            pr = self.placements[pid]
            q = self.activator.queued(app)
            if q:
                pr.last_request = now
            if self.mode == "activator":
                c = sum(lv.scur for lv in self.live.values() if lv.app == app)
                conc[app] = c
            c = conc.get(app, 0.0) + q
            pr.stable.add(now, c)
            pr.panic.add(now, c)
            self.m_queued.labels(app, self.cfg.edgepoint).set(q)
        if self.mode == "haproxy":
            for lv in list(self.live.values()):
                if lv.state == "ready" and not lv.routed and lv.id not in self.busy \
                        and now - lv.since > 1.0 and lv.placement in self.placements:
                    self.busy.add(lv.id)
                    self._spawn(self._route_again(lv))

    async def _adapt_logging(self, req_tot: int, now: float) -> None:
        """Keep the request logs the edge reads under ``log_max_per_s`` lines a second:
        HAProxy logs 1 request in N, N following the frontend's request rate (at once when
        it rises, smoothed over ~2 s when it falls), changed only when it moves by a
        factor of two."""
        seen = self._fe_seen
        self._fe_seen = (self.worker, req_tot, now)
        if seen is None or seen[0] != self.worker or req_tot < seen[1] or now <= seen[2]:
            return
        rate = (req_tot - seen[1]) / (now - seen[2])
        if rate > self._fe_rate:
            self._fe_rate = rate  # a burst: sample less at once
        else:
            self._fe_rate += min(1.0, (now - seen[2]) / 2.0) * (rate - self._fe_rate)
        cap = self.cfg.log_max_per_s
        want = 1 if cap <= 0 else max(1, math.ceil(self._fe_rate / cap))
        if want == self.log_every or (want > 1 and self.log_every / 2 < want < self.log_every * 2):
            return
        if self.haproxy is not None:
            try:
                await self.haproxy.admin.set_log_every(want)
            except (H.HAProxyError, OSError) as exc:
                log.warning("cannot set the log sampling: %s", exc)
                return
            log.info("request logs: 1 in %d (%.0f requests/s)", want, self._fe_rate)
            self.log_every = want

    def _saved_log_port(self) -> int:
        try:
            return int((self.cfg.state_dir / "log.port").read_text().strip())
        except (FileNotFoundError, ValueError):
            return 0

    def _view(self, now: float) -> EdgeView:
        by_p: dict[str, list[Inst]] = {}
        for lv in self.live.values():
            by_p.setdefault(lv.placement, []).append(
                Inst(lv.id, lv.version, lv.server, lv.state, lv.scur))
        snaps: dict[str, list[Snapshotted]] = {}
        for sn in self.snaps.values():
            if sn.id not in self.busy:
                snaps.setdefault(sn.placement, []).append(
                    Snapshotted(sn.id, sn.version, sn.server, sn.since))
        ps = []
        for pid, pr in self.placements.items():
            if pid in self.retiring:
                continue
            pol = pr.policy
            ps.append(PlacementView(
                pid, pol, priority=pr.a.placement.priority, global_share=pr.a.share,
                cost_ceiling=pr.a.ceiling, weights=pr.weights, cpu=pr.cpu, memory=pr.memory,
                stable_concurrency=pr.stable.mean(), panic_concurrency=pr.panic.mean(),
                latency_ms=self.book.latency(pr.app, pol.percentile, self.cfg.stable_window_s),
                panic_latency_ms=self.book.latency(pr.app, pol.percentile,
                                                   self.cfg.panic_window_s),
                queued=self.activator.queued(pr.app),
                idle_s=now - pr.last_request if pr.last_request > -math.inf else math.inf,
                instances=tuple(by_p.get(pid, ())), snapshotted=tuple(snaps.get(pid, ()))))
        return EdgeView(tuple(ps), tuple(self._servers(now)))

    def _servers(self, now: float) -> list[ServerView]:
        out = []
        for name in self.agents:
            got = self.capacity.get(name)
            healthy = self.agent_ok.get(name, False) and \
                now - self.restore_failed.get(name, -math.inf) > self.cfg.restore_backoff_s
            if got is None:
                out.append(ServerView(name, 0, 0, 0, healthy=False))
                continue
            cap, at = got
            pending = [lv for lv in self.live.values()
                       if lv.server == name and lv.state == "starting" and lv.since >= at]
            cpu = sum(self.placements[lv.placement].cpu for lv in pending
                      if lv.placement in self.placements)
            mem = sum(self.placements[lv.placement].memory for lv in pending
                      if lv.placement in self.placements)
            out.append(ServerView(name, int(cap.slots.free) - len(pending),
                                  cap.cpu.free - cpu, cap.memory.free - mem, healthy=healthy))
        return out

    def _update_gauges(self, d: Decision) -> None:
        counts: dict[tuple[str, str, str], int] = {}
        for lv in self.live.values():
            counts[(lv.placement, lv.version, lv.state)] = \
                counts.get((lv.placement, lv.version, lv.state), 0) + 1
        for sn in self.snaps.values():
            counts[(sn.placement, sn.version, "snapshotted")] = \
                counts.get((sn.placement, sn.version, "snapshotted"), 0) + 1
        self.m_instances.clear()
        for (pid, v, st), n in counts.items():
            pr = self.placements.get(pid)
            if pr is not None:
                self.m_instances.labels(pr.app, v, self.cfg.edgepoint, pr.a.placement.owner,
                                        st).set(n)
        self.m_capacity.clear()
        for pid, rep in d.reports.items():
            pr = self.placements.get(pid)
            if pr is not None and rep.unmet:
                self.m_capacity.labels(pr.app, self.cfg.edgepoint,
                                       pr.a.placement.owner).set(rep.unmet)

    def _spawn(self, coro) -> asyncio.Task[Any]:
        t = asyncio.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def _act(self, a: Restore | Suspend | Discard) -> None:
        if isinstance(a, Restore):
            pr = self.placements.get(a.placement)
            if pr is None or (a.from_snapshot and a.from_snapshot in self.busy):
                return
            hold = Live(f"pending-{uuid.uuid4().hex[:12]}", a.placement, pr.app, a.version,
                        a.server, "starting", owner=pr.a.placement.owner,
                        vendor=pr.a.placement.vendor)
            self.live[hold.id] = hold
            if a.from_snapshot:
                self.busy.add(a.from_snapshot)
            self._spawn(self._restore(a, hold))
        elif isinstance(a, Suspend):
            lv = self.live.get(a.instance)
            if lv is None or a.instance in self.busy or lv.state == "starting":
                return
            self.busy.add(a.instance)
            lv.state = "draining"
            self._spawn(self._suspend(a))
        elif isinstance(a, Discard):
            if a.instance in self.busy:
                return
            self.busy.add(a.instance)
            self._spawn(self._discard(a))

    async def _restore(self, a: Restore, hold: Live) -> None:
        pr = self.placements.get(a.placement)
        agent = self.agents.get(a.server)
        t0 = time.monotonic()
        labels = (hold.app, a.version, self.cfg.edgepoint, hold.owner)
        try:
            if pr is None or agent is None:
                return
            if a.from_snapshot:
                info = await agent.create_instance(from_snapshot=a.from_snapshot)
                self.snaps.pop(a.from_snapshot, None)
            else:
                info = await agent.create_instance(pr.a.appshot(a.version), owner=hold.owner,
                                                   vendor=hold.vendor)
            if info.state != "running" or not info.address:
                raise AgentError(f"instance {info.id} is {info.state} without an address")
            lv = Live(info.id, a.placement, pr.app, info.version, a.server, "ready",
                      info.address, info.owner, info.vendor)
            # whose it is, durably, before a request reaches it: a successor edge process
            # must be able to attribute every count
            self.store.remember(InstanceMeta(info.id, info.app, info.version, info.owner,
                                             info.vendor, a.server, info.address),
                                datetime.now(UTC))
            self.live[lv.id] = lv
            self.live.pop(hold.id, None)
            if a.placement not in self.placements:  # taken away meanwhile
                await self._suspend(Suspend(a.placement, lv.id, lv.server, keep=False,
                                            reason="placement-removed"))
                return
            # the requests the activator holds go to the instance at once (at its slot
            # address); HAProxy routes the next ones as soon as the server is added
            self.activator.notify(pr.app)
            if self.mode == "haproxy":
                try:
                    await self._add_to_haproxy(lv)
                except (H.HAProxyError, OSError, TimeoutError) as exc:
                    # it runs: the tick adds it to HAProxy again (e.g. after a reload)
                    log.warning("instance %s is ready but not yet in HAProxy: %s", lv.id, exc)
            else:
                await self._reweigh(pr.app)
            self.m_restores.labels(*labels, "ok",
                                   "snapshot" if a.from_snapshot else "appshot").inc()
            self.m_restore_s.labels(*labels).observe(time.monotonic() - t0)
            log.info("restored %s of %s on %s (%s, %s) in %.0f ms", lv.id, pr.app, a.server,
                     "snapshot" if a.from_snapshot else "appshot", a.reason,
                     (time.monotonic() - t0) * 1000)
        except (AgentError, H.HAProxyError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.restore_failed[a.server] = time.monotonic()
            self.m_restores.labels(*labels, "failed",
                                   "snapshot" if a.from_snapshot else "appshot").inc()
            log.error("restore of %s %s on %s failed: %s", hold.app, a.version, a.server, exc)
        finally:
            self.live.pop(hold.id, None)
            if a.from_snapshot:
                self.busy.discard(a.from_snapshot)

    async def _suspend(self, a: Suspend) -> None:
        lv = self.live.get(a.instance)
        try:
            if lv is None:
                return
            self.busy.add(lv.id)
            lv.state = "draining"
            if self.mode == "haproxy" and self.haproxy is not None:
                await self._drain_from_haproxy(lv)
            else:
                await self._reweigh(lv.app)
                deadline = time.monotonic() + self.cfg.drain_timeout_s
                while lv.scur > 0 and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                self._flush_now(only=lambda k: k[2] == lv.id)
                self.meter.forget_server(lv.app, lv.id, keep_workers=self._stopping_workers())
            agent = self.agents.get(lv.server)
            kept = False
            if agent is not None and lv.state != "unhealthy" and a.keep:
                try:
                    info = await agent.snapshot_instance(lv.id)
                    self.snaps[lv.id] = Snap(lv.id, lv.placement, lv.version, lv.server,
                                             time.monotonic())
                    kept = info.state == "snapshotted"
                except AgentError as exc:
                    log.warning("snapshot of %s failed (%s): stopping it", lv.id, exc)
            if agent is not None and not kept:
                with contextlib.suppress(AgentError):
                    await agent.stop_instance(lv.id)
            self.m_suspends.labels(lv.app, lv.version, self.cfg.edgepoint, lv.owner, a.reason,
                                   str(kept).lower()).inc()
            log.info("%s %s of %s (%s)", "snapshotted" if kept else "stopped", lv.id, lv.app,
                     a.reason)
        except (AgentError, H.HAProxyError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.error("taking %s out failed: %s", a.instance, exc)
        finally:
            self.live.pop(a.instance, None)
            self.gone[a.instance] = time.monotonic()
            self.busy.discard(a.instance)
            if lv is not None:
                await self._reweigh(lv.app)

    async def _drain_from_haproxy(self, lv: Live) -> None:
        """No new requests, in-flight ones finish; counters stored; then deleted."""
        assert self.haproxy is not None
        rt = self.haproxy.admin
        with contextlib.suppress(H.HAProxyError):
            await rt.drain(lv.app, lv.id)
        deadline = time.monotonic() + self.cfg.drain_timeout_s
        while True:
            rows = await self._observe_usage()
            row = next((r for r in rows if r.get("pxname") == lv.app
                        and r.get("svname") == lv.id), None)
            if row is None or _f(row.get("scur")) <= 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.02)
        self._flush_now(only=lambda k: k[1] == lv.app and k[2] == lv.id)
        if not await self._remove_server(lv.app, lv.id, attempts=25):
            self.leftover_servers.add((lv.app, lv.id))  # retried later; counters are stored
        self.meter.forget_server(lv.app, lv.id, keep_workers=self._stopping_workers())

    async def _remove_server(self, app: str, server: str, attempts: int = 1) -> bool:
        """``del server`` (HAProxy refuses while a connection is still attached: a request
        whose client left, a connection closing): retried a few times."""
        assert self.haproxy is not None
        for k in range(attempts):
            try:
                await self.haproxy.admin.remove_server(app, server)
                return True
            except H.HAProxyError as exc:
                if k == attempts - 1:
                    log.warning("removing %s from HAProxy: %s (will retry)", server, exc)
                    return False
                await asyncio.sleep(0.2)
        return False

    async def _discard(self, a: Discard) -> None:
        try:
            agent = self.agents.get(a.server)
            if agent is not None:
                await agent.stop_instance(a.instance)
            self.snaps.pop(a.instance, None)
            log.info("discarded the snapshot of %s (%s)", a.instance, a.reason)
        except (AgentError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("discarding %s failed: %s", a.instance, exc)
        finally:
            self.busy.discard(a.instance)

    # -- activator hooks ------------------------------------------------------------------
    def _targets(self, app: str) -> dict[str, list[Target]]:
        ready: dict[str, list[Target]] = {}
        pr = self.placements.get(self.by_app.get(app, ""))
        affinity = pr is not None and pr.conf(()).affinity
        for lv in self.live.values():
            if lv.app == app and lv.state == "ready" and lv.address:
                cookie = lv.cookie if self.mode == "haproxy" else lv.id
                ready.setdefault(lv.version, []).append(Target(
                    lv.id, lv.version, lv.address, cookie=cookie if affinity else None,
                    cookie_name=f"ES_{app.replace('-', '_')}" if affinity else None))
        return ready

    def _pick(self, app: str, cookie: str | None) -> Target | None:
        pr = self.placements.get(self.by_app.get(app, ""))
        if pr is None:
            return None
        t = self.picker.choose(app, self._targets(app), dict(pr.weights), cookie)
        if t is not None and self.mode == "activator":
            lv = self.live.get(t.instance)
            if lv is not None:
                lv.scur += 1
        return t

    def _demand(self, app: str) -> None:
        pid = self.by_app.get(app)
        if pid is not None:
            self.placements[pid].last_request = time.monotonic()
            self.wake.set()  # decide now rather than at the next tick: a user waits

    def _served(self, app: str, t: Target, ms: float, status: int, b_in: int, b_out: int,
                region: str, held: bool) -> None:
        self.m_activator.labels(app, self.cfg.edgepoint, str(status)).inc()
        if t.instance == "origin":
            self.book.record(app, ORIGIN, int(ms), status, region)
            return
        self.book.record(app, t.version, int(ms), status, region, held=held)
        self.book.count(app, t.version, 1, 1 if status >= 500 else 0)
        if (lv := self.live.get(t.instance)) is not None:
            lv.requests += 1
        self.meter.count_activator(app, t.instance, b_in, b_out)
        lv = self.live.get(t.instance)
        if self.mode == "activator" and lv is not None:
            lv.scur = max(0.0, lv.scur - 1)
        pid = self.by_app.get(app)
        if pid is not None:
            self.placements[pid].last_request = time.monotonic()

    def _on_log(self, data: bytes) -> None:
        self._log_lines.inc()
        p = parse_line(data)
        if p is None:
            return
        backend, server, status, ms, region = p
        if server == H.ACTIVATOR or backend.startswith("edgeshot."):
            return  # the activator records its own; unknown apps are not history
        if backend.endswith(".origin"):
            app, version = backend[: -len(".origin")], ORIGIN
        else:
            lv = self.live.get(server)
            app = backend
            if lv is not None:
                version = lv.version
            else:
                version = self._version_of(server)
        if app not in self.by_app:
            return
        self.book.record(app, version, ms, status, region, n=self.log_every)

    def _version_of(self, instance: str) -> str:
        """The version of an instance this edge no longer routes to (late log lines)."""
        v = self._versions.get(instance)
        if v is None:
            meta = self.store.instance(instance)
            v = meta.version if meta else "?"
            if len(self._versions) > 10_000:
                self._versions.clear()
            self._versions[instance] = v
        return v

    # -- usage and history ---------------------------------------------------------------
    def _resolve(self, instance: str) -> InstanceMeta | None:
        lv = self.live.get(instance)
        if lv is not None:
            return InstanceMeta(lv.id, lv.app, lv.version, lv.owner, lv.vendor, lv.server,
                                lv.address)
        return self.store.instance(instance)

    def _flush_now(self, only=None) -> int:
        return self.meter.flush(self._resolve, only=only)

    async def _flush_usage(self) -> None:
        if self.mode == "haproxy" and self.haproxy is not None:
            await self._observe_usage()
            for w in list(self.old_workers):
                rows = await self.haproxy.worker_stats(w)
                if rows is not None:
                    self.meter.observe_stat(w, rows)
                elif not _alive(w) or w not in {x.pid for x in await self.haproxy.workers()}:
                    self._flush_now()
                    self.meter.forget_worker(w)
                    self.old_workers.discard(w)
        self._flush_now()

    async def _flush_history(self) -> None:
        self.book.flush(self.store)
        self._srv_seen = {k: v for k, v in self._srv_seen.items()
                          if k[0] == self.worker and k[2] in self.live}
        for app, server in list(self.leftover_servers):
            if server in self.live:
                self.leftover_servers.discard((app, server))  # back under the same name
            elif self.haproxy is None or await self._remove_server(app, server):
                self.leftover_servers.discard((app, server))
        cutoff = time.monotonic() - 60
        for k in [k for k, t in self.gone.items() if t < cutoff]:
            del self.gone[k]

    # -- reports -----------------------------------------------------------------------------
    def load(self) -> EdgeLoad:
        now = time.monotonic()
        d = self.last
        places = []
        for pid, pr in self.placements.items():
            rep = d.reports.get(pid) if d else None
            lvs = [lv for lv in self.live.values() if lv.placement == pid]
            snaps = [sn for sn in self.snaps.values() if sn.placement == pid]
            ready = sum(self._serving(lv) for lv in lvs)
            starting = sum(lv.state == "starting" for lv in lvs)
            versions = []
            window = self.cfg.report_window_s
            for v, w in pr.weights:
                counts, _ = self.book.window(pr.app, window, version=v)
                n, errors = self.book.counted(pr.app, v, window)
                versions.append(VersionLoad(
                    version=v, weight=w,
                    ready=sum(self._serving(lv) and lv.version == v for lv in lvs),
                    starting=sum(lv.state == "starting" and lv.version == v for lv in lvs),
                    snapshotted=sum(sn.version == v for sn in snaps), requests=n, errors=errors,
                    rps=n / window, error_rate=errors / n if n else 0.0,
                    p50_ms=percentile(counts, 50), p95_ms=percentile(counts, 95),
                    p99_ms=percentile(counts, 99), window_s=window))
            current = ready + starting
            places.append(PlacementLoad(
                id=pid, app=pr.app, owner=pr.a.placement.owner, priority=pr.a.placement.priority,
                ready=ready, starting=starting,
                draining=sum(lv.state == "draining" for lv in lvs), snapshotted=len(snaps),
                concurrency=pr.stable.mean(), panic_concurrency=pr.panic.mean(),
                queued=self.activator.queued(pr.app),
                latency_ms=self.book.latency(pr.app, pr.policy.percentile,
                                             self.cfg.stable_window_s),
                idle_s=now - pr.last_request if pr.last_request > -math.inf else None,
                desired=rep.desired if rep else current, target=rep.target if rep else current,
                limit=rep.limit if rep else min(pr.policy.max, pr.a.share, pr.a.ceiling),
                limited_by=rep.limited_by if rep else None, panic=rep.panic if rep else False,
                at_capacity=bool(rep and rep.unmet), unmet=rep.unmet if rep else 0,
                versions=versions,
                instances=[InstanceLoad(id=lv.id, version=lv.version, server=lv.server,
                                        state=lv.state, address=lv.address,
                                        routed=self._serving(lv), inflight=lv.scur,
                                        requests=lv.requests)
                           for lv in sorted(lvs, key=lambda x: x.id)]))
        servers = []
        for name in self.agents:
            got = self.capacity.get(name)
            cap = got[0] if got else None
            servers.append(ServerLoad(
                name=name, healthy=self.agent_ok.get(name, False),
                restores=cap.restores if cap else None,
                slots_total=int(cap.slots.total) if cap else None,
                slots_free=int(cap.slots.free) if cap else None,
                cpu_free=cap.cpu.free if cap else None,
                memory_free=int(cap.memory.free) if cap else None,
                instances=sum(lv.server == name for lv in self.live.values())))
        return EdgeLoad(edgepoint=self.cfg.edgepoint, at=datetime.now(UTC), mode=self.mode,
                        placements=places, servers=servers,
                        at_capacity=[p.id for p in places if p.at_capacity],
                        slots_free=sum(s.slots_free or 0 for s in servers if s.healthy))

    def _serving(self, lv: Live) -> bool:
        """Ready and routed to (by HAProxy, or by the activator when it is the data path)."""
        return lv.state == "ready" and (lv.routed or self.mode == "activator")

    def health(self) -> EdgeHealth:
        return EdgeHealth(status="ok", edgepoint=self.cfg.edgepoint, version=__version__,
                          mode=self.mode, mode_reason=self.mode_reason,
                          haproxy_version=self.haproxy.version() if self.haproxy else None,
                          uptime_s=time.monotonic() - self.started,
                          placements=len(self.placements),
                          instances=sum(self._serving(lv) for lv in self.live.values()),
                          agents_up=sum(self.agent_ok.get(n, False) for n in self.agents),
                          agents_total=len(self.agents), source=self.source,
                          quarantined=dict(self.quarantined))

    async def metrics(self) -> str:
        own = generate_latest(self.registry).decode()
        if self.mode != "haproxy" or self.haproxy is None:
            return own
        try:
            conn = aiohttp.UnixConnector(path=str(self.run_dir / "promex.sock"))
            async with aiohttp.ClientSession(connector=conn) as s, \
                    s.get("http://haproxy/metrics",
                          timeout=aiohttp.ClientTimeout(total=5)) as resp:
                theirs = await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            theirs = "# HAProxy's exporter did not answer\n"
        return own + theirs

    # -- API ---------------------------------------------------------------------------------
    async def _start_api(self) -> None:
        app = build_api(self)
        self._api_runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                         shutdown_timeout=3.0)
        await self._api_runner.setup()
        await web.TCPSite(self._api_runner, self.cfg.api_listen or self.cfg.listen,
                          self.cfg.api_port, reuse_address=True).start()


class WorkerSession:
    """A CLI session (prompt mode) on one HAProxy worker's admin socket, kept open while
    that worker stops.

    HAProxy keeps no counters across reloads: a worker told to stop (a reload, a stop)
    finishes its requests and exits as soon as its last connection ends, and its
    counters go with it, so reading it from time to time misses what it answered after
    the last read. An open CLI session is one of its connections: the worker waits for
    it. Once the worker stops accepting (``Stopping: 1``) and no frontend has a session
    left, its ``show stat`` cannot change any more: final."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.pid = 0

    @classmethod
    async def open(cls, socket_path: str, timeout: float = 5.0) -> WorkerSession:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(socket_path, limit=1 << 24), timeout)
        s = cls(reader, writer, timeout)
        try:
            writer.write(b"prompt\n")
            await writer.drain()
            await asyncio.wait_for(reader.readuntil(b"> "), timeout)
            s.pid = int(_info_value(await s.ask("show info"), "Pid") or "")
        except BaseException:
            await s.close()
            raise
        return s

    async def ask(self, command: str) -> str:
        self.writer.write(command.encode() + b"\n")
        await self.writer.drain()
        raw = await asyncio.wait_for(self.reader.readuntil(b"\n> "), self.timeout)
        return raw[:-3].decode(errors="replace").strip("\n")

    async def read(self) -> tuple[bool, list[dict[str, str]]]:
        """(final, ``show stat``): final when it was read after the worker had stopped
        accepting and while no frontend had a session."""
        stopping = _info_value(await self.ask("show info"), "Stopping") == "1"
        rows = H.parse_stat(await self.ask("show stat"))
        idle = all(_f(r.get("scur")) == 0 for r in rows if r.get("svname") == "FRONTEND")
        return stopping and idle, rows

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def _info_value(show_info: str, key: str) -> str | None:
    m = re.search(rf"^{re.escape(key)}: *(.*)$", show_info, re.M)
    return m.group(1).strip() if m else None


def observe_due(urgent: bool, since_observed_s: float, tick_s: float) -> bool:
    """Whether a tick reads HAProxy's counters before deciding. A tick woken by a user
    waiting at the activator decides on the last observation (the wait is shorter by
    one ``show stat``) unless that one is a tick old: demand that keeps waking the loop
    must not starve what observation does (windows, health, routing again)."""
    return not urgent or since_observed_s >= tick_s


def _f(v: str | None) -> float:
    try:
        return float(v) if v else 0.0
    except ValueError:
        return 0.0


def _alive(pid: int) -> bool:
    return H._alive(pid)


# -- the edge API -----------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str,
                 detail: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail


def _json(model: BaseModel | dict, status: int = 200) -> web.Response:
    text = model.model_dump_json() if isinstance(model, BaseModel) else json.dumps(model)
    return web.Response(status=status, text=text, content_type="application/json")


def _error(status: int, code: str, message: str, detail: list[str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message, "code": code}
    if detail:
        body["detail"] = detail
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


@web.middleware
async def _errors(request: web.Request, handler):
    try:
        return await handler(request)
    except ApiError as exc:
        return _error(exc.status, exc.code, exc.message, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return _error(500, "internal", "internal error (logged by the edge)")


async def _body(request: web.Request, model: type[BaseModel]) -> Any:
    raw = await request.read()
    if not raw:
        raise ApiError(400, "no_body", f"this endpoint needs a JSON body ({model.__name__})")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        detail = [f"{'.'.join(str(p) for p in e['loc']) or '(body)'}: {e['msg']}"
                  for e in exc.errors(include_url=False)][:20]
        raise ApiError(422, "invalid", f"invalid {model.__name__}: " + "; ".join(detail[:3]),
                       detail=detail) from None


def _int_query(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ApiError(400, "bad_query", f"{name} must be an integer") from None
    if not lo <= v <= hi:
        raise ApiError(400, "bad_query", f"{name} must be between {lo} and {hi}")
    return v


def _time_query(request: web.Request, name: str, default: datetime) -> str:
    raw = request.query.get(name)
    if raw is None:
        t = default
    else:
        try:
            t = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, "bad_query", f"{name} must be an ISO 8601 time") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")


def build_api(edge: Edge) -> web.Application:
    """The edge API (tests may run it in-process with ``edge.tokens``)."""
    tokens = edge.tokens or auth.TokenStore.from_file(edge.cfg.tokens_file)

    @requires(*READ)
    async def health(request: web.Request) -> web.Response:
        return _json(edge.health())

    @requires(*READ)
    async def get_placements(request: web.Request) -> web.Response:
        return _json(PlacementList(placements=[pr.a for pr in edge.placements.values()]))

    @requires(*WRITE)
    async def put_placements(request: web.Request) -> web.Response:
        body = await _body(request, PlacementSet)
        try:
            await edge.set_placements(body.placements)
        except H.HAProxyError as exc:
            raise ApiError(422, "refused", str(exc)) from None
        return _json(PlacementList(placements=[pr.a for pr in edge.placements.values()]))

    @requires(*WRITE)
    async def patch_placement(request: web.Request) -> web.Response:
        body = await _body(request, PlacementUpdate)
        pid = f"{request.match_info['app']}/{request.match_info['edgepoint']}"
        return _json(await edge.update_placement(pid, body))

    @requires(*READ)
    async def load(request: web.Request) -> web.Response:
        return _json(edge.load())

    def _owner_apps(request: web.Request) -> set[str] | None:
        p: auth.Principal = request["principal"]
        if p.has(CONTROLLER_EDGE, OPERATOR):
            return None
        return {pr.app for pr in edge.placements.values() if pr.a.placement.owner in p.owners}

    def _window(request: web.Request) -> tuple[str, str, str | None]:
        now = datetime.now(UTC)
        since = _time_query(request, "since", now - timedelta(hours=1))
        until = _time_query(request, "until", now + timedelta(minutes=1))
        return since, until, request.query.get("app")

    @requires(*READ, "owner:*")
    async def latency(request: web.Request) -> web.Response:
        since, until, app = _window(request)
        rows = edge.store.latency_history(since, until, app, _owner_apps(request))
        return _json(LatencyHistory(edgepoint=edge.cfg.edgepoint, minutes=rows))

    @requires(*READ, "owner:*")
    async def regions(request: web.Request) -> web.Response:
        since, until, app = _window(request)
        rows = edge.store.region_history(since, until, app, _owner_apps(request))
        return _json(RegionHistory(edgepoint=edge.cfg.edgepoint, minutes=rows))

    @requires(*READ)
    async def usage(request: web.Request) -> web.Response:
        after = _int_query(request, "after", 0, 0, 2**62)
        limit = _int_query(request, "limit", 1000, 1, 10000)
        return _json(edge.meter.page(after, limit))

    @requires(*READ, METRICS)
    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text=await edge.metrics(),
                            content_type="text/plain", charset="utf-8")

    @requires(*WRITE)
    async def reload(request: web.Request) -> web.Response:
        await edge.reload()
        return _json({"worker": edge.worker})

    app = web.Application(middlewares=[_errors, auth.middleware(tokens, edge.auth_throttle)],
                          client_max_size=64 << 20)
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/placements", get_placements)
    app.router.add_put("/v1/placements", put_placements)
    app.router.add_patch("/v1/placements/{app}/{edgepoint}", patch_placement)
    app.router.add_get("/v1/load", load)
    app.router.add_get("/v1/history/latency", latency)
    app.router.add_get("/v1/history/regions", regions)
    app.router.add_get("/v1/usage", usage)
    app.router.add_post("/v1/reload", reload)
    app.router.add_get("/metrics", metrics)
    return app


# -- running ---------------------------------------------------------------------------------
async def serve(cfg: EdgeConfig) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully."""
    try:
        tokens = auth.TokenStore.from_file(cfg.tokens_file)
    except auth.AuthError as exc:
        raise ConfigError(str(exc)) from None
    edge = Edge(cfg, tokens=tokens)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await edge.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await edge.stop()
        raise
    await stop.wait()
    log.info("edge %s stopping", cfg.edgepoint)
    await edge.stop()


def run(cfg: EdgeConfig) -> None:
    configure_logging(cfg.log_level, cfg.log_format, service="edge")
    asyncio.run(serve(cfg))
