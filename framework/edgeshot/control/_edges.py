"""What the controller tells each edge process and reads back (docs/architecture.md, "Edge API").

In: the placements to serve at that edgepoint, each with its share of the app's
global maximum (the controller divides it) and its versions, each with the appshot
to restore and its traffic weight (canaries). Out: load, capacity, per placement
whether it is at capacity and, per version, requests, errors and latency at the
SLA percentile over the edge's recent window.

`EdgeLink` is the controller's view of one edge process; `HttpEdgeLink` speaks
the edge API through `edgeshot.edge.client`. Tests and simulations use their own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class VersionOrder:
    version: str
    appshot: str
    weight: int  # percent of the placement's traffic
    plan: dict[str, Any] = field(default_factory=dict, compare=False)  # AppPlan, JSON form


@dataclass(frozen=True)
class PlacementOrder:
    id: str  # "<app>/<edgepoint>"
    app: str
    edgepoint: str
    global_share: int
    cost_ceiling: int
    versions: tuple[VersionOrder, ...]
    placement: dict[str, Any] = field(default_factory=dict, compare=False)  # the plan's, JSON
    # a staged version reachable only with a token (edge.models.StageRoute, JSON), or None
    stage: dict[str, Any] | None = field(default=None, compare=False)

    def weights(self) -> dict[str, int]:
        return {v.version: v.weight for v in self.versions}


@dataclass(frozen=True)
class VersionFigures:
    requests: int = 0  # over the edge's recent window
    errors: int = 0  # 5xx over the window
    latency_ms: float | None = None  # at the SLA percentile over the window
    ready: int = 0  # instances serving this version now


@dataclass(frozen=True)
class PlacementStatus:
    id: str
    app: str
    at_capacity: bool = False  # takes no more users: no room, or held by a limit below demand
    versions: dict[str, VersionFigures] = field(default_factory=dict)

    @property
    def ready(self) -> int:
        return sum(v.ready for v in self.versions.values())


@dataclass(frozen=True)
class EdgeStatus:
    edgepoint: str
    healthy: bool
    load: float = 0.0  # share of the edgepoint's capacity in use
    capacity: dict[str, Any] = field(default_factory=dict)
    placements: dict[str, PlacementStatus] = field(default_factory=dict)
    started: float | None = None  # the edge process's start time: counters restart with it
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy, "load": self.load, "capacity": self.capacity,
            "started": self.started, "error": self.error,
            "placements": {
                pid: {"app": p.app, "at_capacity": p.at_capacity,
                      "versions": {v: vars(f) for v, f in p.versions.items()}}
                for pid, p in self.placements.items()},
        }


class EdgeLink(Protocol):
    name: str

    async def status(self) -> EdgeStatus: ...

    async def set_placements(self, orders: list[PlacementOrder]) -> None: ...

    async def close(self) -> None: ...


class PlacementRefused(Exception):
    """An edge process refused some placements of a push (the others it applied): ``ids``,
    with its reasons in the message."""

    def __init__(self, message: str, ids: frozenset[str]) -> None:
        super().__init__(message)
        self.ids = ids
