"""The edge API's data: what goes over the wire between an edge process and the controller.

Shared by the edge process (``edge/service.py``) and its client (``edge/client.py``).
Placements come in (the plan's ``Placement`` and ``AppPlan`` plus what the controller
decides at run time: this edgepoint's share of the app's global maximum, the cost
ceiling, traffic weights per version); load, capacity, per-version figures and the
dashboards' history go out. Usage records are the agent's ``UsageRecord`` (one model
for every source).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgeshot.agent.models import Name, UsagePage, UsageRecord
from edgeshot.plan import AppPlan, Placement

__all__ = [
    "InstanceLoad", "VersionWeight", "StageServer", "StageRoute", "PlacementAssignment", "PlacementSet", "PlacementUpdate", "VersionLoad",
    "PlacementLoad", "ServerLoad", "EdgeLoad", "EdgeHealth", "LatencyMinute", "LatencyHistory",
    "RegionMinute", "RegionHistory", "UsagePage", "UsageRecord", "PlacementList",
]


MAX_INSTANCES = 1_000_000  # of one app: far above any network's, far below an overflow
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"  # the spec's `Version`


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class VersionWeight(_Wire):
    """A version of the app and its share of the traffic (relative weight, canaries:
    e.g. 90 and 10). ``appshot``: its appshot's name at the agents (default
    ``<app>-<version>``, the agent's capture default)."""

    version: str = Field(pattern=VERSION_PATTERN)
    weight: int = Field(ge=0, le=1000)
    appshot: Name | None = None


class StageServer(_Wire):
    """One instance of a staged version (the controller runs it): its id and address."""

    name: Name
    address: str = Field(pattern=r"^[0-9.]+:[0-9]+$|^\[[0-9a-f:]+\]:[0-9]+$")


class StageRoute(_Wire):
    """A staged version: reachable only by requests carrying one of these tokens in
    ``X-Edgeshot-Stage`` (SHA-256 hashes here, never the tokens), never through public
    routing. The controller runs its instances (``control/_staging.py``)."""

    version: str = Field(pattern=VERSION_PATTERN)
    token_sha256: tuple[str, ...] = Field(min_length=1, max_length=64)
    servers: tuple[StageServer, ...] = ()

    @model_validator(mode="after")
    def _hashes(self) -> StageRoute:
        import re
        if not all(re.fullmatch(r"[0-9a-f]{64}", h) for h in self.token_sha256):
            raise ValueError("token_sha256 holds lowercase hex SHA-256 digests")
        return self


class PlacementAssignment(_Wire):
    """One app this edgepoint serves: the plan's placement and app, and the run-time
    inputs the controller owns. ``global_share`` / ``cost_ceiling`` override the plan's
    (the controller divides the global maximum; billing lowers the ceiling as the
    budget runs out). ``versions`` default to the placement's version alone."""

    placement: Placement
    app: AppPlan
    versions: tuple[VersionWeight, ...] = ()
    global_share: int | None = Field(None, ge=0, le=MAX_INSTANCES)
    cost_ceiling: int | None = Field(None, ge=0, le=MAX_INSTANCES)
    stage: StageRoute | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PlacementAssignment:
        if self.app.name != self.placement.app:
            raise ValueError(f"app {self.app.name!r} is not the placement's ({self.placement.app!r})")
        names = [v.version for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError("a version appears twice in versions")
        return self

    @property
    def id(self) -> str:
        return self.placement.id

    @property
    def weights(self) -> tuple[VersionWeight, ...]:
        return self.versions or (VersionWeight(version=self.placement.version, weight=100),)

    @property
    def share(self) -> int:
        return self.placement.global_share if self.global_share is None else self.global_share

    @property
    def ceiling(self) -> int:
        return self.placement.cost_ceiling if self.cost_ceiling is None else self.cost_ceiling

    def appshot(self, version: str) -> str:
        for v in self.weights:
            if v.version == version and v.appshot:
                return v.appshot
        return f"{self.app.name}-{version}"


class PlacementSet(_Wire):
    """Every placement this edgepoint is to serve (PUT replaces the whole set)."""

    placements: tuple[PlacementAssignment, ...]


class PlacementUpdate(_Wire):
    """A change to one placement: weights (canary, promotion, rollback), share, ceiling."""

    versions: tuple[VersionWeight, ...] | None = None
    global_share: int | None = Field(None, ge=0, le=MAX_INSTANCES)
    cost_ceiling: int | None = Field(None, ge=0, le=MAX_INSTANCES)


class VersionLoad(_Out):
    version: str
    weight: int
    ready: int
    starting: int
    snapshotted: int
    requests: int = Field(description="requests in the window (logged x sample rate)")
    errors: int = Field(description="5xx answers and failed requests in the window")
    rps: float
    error_rate: float
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    window_s: float


class InstanceLoad(_Out):
    """One instance this edge routes to (or is starting, or draining)."""

    id: str
    version: str
    server: str
    state: Literal["starting", "ready", "draining", "unhealthy"]
    address: str | None = None
    routed: bool = Field(description="a server in HAProxy (or the activator's target)")
    inflight: float = Field(description="requests in flight at it now")
    requests: int = Field(description="requests it answered since this edge process took it")


class PlacementLoad(_Out):
    id: str
    app: str
    owner: str
    priority: int
    ready: int
    starting: int
    draining: int
    snapshotted: int
    concurrency: float = Field(description="in-flight requests, mean over the stable window")
    panic_concurrency: float = Field(description="mean over the panic window")
    queued: int = Field(description="requests held by the activator now")
    latency_ms: float | None = Field(None, description="at the SLA percentile, stable window")
    idle_s: float | None = None
    desired: int
    target: int
    limit: int
    limited_by: str | None = None
    panic: bool = False
    at_capacity: bool = False
    unmet: int = 0
    versions: list[VersionLoad] = []
    instances: list[InstanceLoad] = []


class ServerLoad(_Out):
    name: str
    healthy: bool
    restores: bool | None = None
    slots_total: int | None = None
    slots_free: int | None = None
    cpu_free: float | None = None
    memory_free: int | None = None
    instances: int = 0


class EdgeLoad(_Out):
    """What the resource manager sees and decided, for the global dispatcher."""

    edgepoint: str
    at: datetime
    mode: Literal["haproxy", "activator"]
    placements: list[PlacementLoad]
    servers: list[ServerLoad]
    at_capacity: list[str] = Field(description="placements wanting instances no server has")
    slots_free: int = 0


class PlacementList(_Out):
    placements: list[PlacementAssignment]


class EdgeHealth(_Out):
    status: Literal["ok"]
    edgepoint: str
    version: str
    mode: Literal["haproxy", "activator"]
    mode_reason: str | None = None
    haproxy_version: str | None = None
    uptime_s: float
    placements: int
    instances: int
    agents_up: int
    agents_total: int
    source: str = Field(description="the usage records' source")
    quarantined: dict[str, str] = Field(default_factory=dict, description="stored placements "
                                        "this edge refused to serve at start, with why")


class LatencyMinute(_Out):
    minute: str = Field(description="UTC, YYYY-MM-DDTHH:MMZ")
    app: str
    version: str = Field(description="an edge version, or '@origin' for origin routes")
    count: int
    p50: float
    p95: float
    p99: float
    max: float
    errors: int
    histogram: str = Field(description="HDR histogram (ms), standard base64 encoding")


class LatencyHistory(_Out):
    edgepoint: str
    minutes: list[LatencyMinute]


class RegionMinute(_Out):
    minute: str
    app: str
    region: str
    requests: int


class RegionHistory(_Out):
    edgepoint: str
    minutes: list[RegionMinute]
