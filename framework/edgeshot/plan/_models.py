"""The plan: everything provisioning and the runtime need, nothing they must re-derive.

Plain, JSON-serialisable and deterministic (same spec -> byte-identical JSON),
so that it can be committed, diffed and reviewed in a pull request.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import cache
from typing import Self

from pydantic import BaseModel, ConfigDict


class PlanModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def __eq__(self, other: object) -> bool:
        # Plans are compared resource by resource in `diff`; fields decide, nothing else.
        if type(other) is not type(self):
            return NotImplemented
        return self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def from_trusted(cls, **fields: object) -> Self:
        """Build from values the compiler has already validated, every field given.

        A plan of 100,000 placements is built in well under a second this way;
        `model_construct` re-resolves defaults per object and costs ~10x more.
        """
        obj = cls.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(obj, "__dict__", fields)
        # Every field is given, so all share one "fields set" (frozen: never changed).
        setattr_(obj, "__pydantic_fields_set__", _all_fields(cls))
        setattr_(obj, "__pydantic_extra__", None)
        setattr_(obj, "__pydantic_private__", None)
        return obj


@cache
def _all_fields(cls: type[BaseModel]) -> set[str]:
    return set(cls.model_fields)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Building or comparing hundreds of thousands of acyclic objects: the cyclic
    garbage collector would only rescan them over and over meanwhile."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class Money(PlanModel):
    amount: Decimal
    currency: str

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


class ServerPlan(PlanModel):
    """One machine: an edge server (agent, and the edge process on the first) or the controller."""

    name: str
    edgepoint: str | None
    roles: tuple[str, ...]
    provider: str
    location: str
    server_type: str
    region: str
    address: str | None  # known only for the local network (loopback); clouds assign it
    ports: dict[str, int]
    slot_subnet: str | None
    slots: int
    monthly_cost: Money
    # Provisioning: the server's fixed address on its edgepoint's private network, where the
    # cloud lets us choose it (Hetzner, AWS); None on DigitalOcean (the VPC assigns it) and locally.
    private_address: str | None = None


class EdgepointPlan(PlanModel):
    name: str
    region: str
    latitude: float
    longitude: float
    location: str
    servers: tuple[str, ...]
    edge_host: str  # the server that runs the edge process (HAProxy, activator, resource manager)
    slots: int
    # Provisioning: the edgepoint's private subnet (its own network/VPC) on a cloud; None locally
    # or when `Plan.private_network` has no room left.
    private_subnet: str | None = None


class ScalingPolicy(PlanModel):
    """What the resource manager of one edgepoint applies to one placement."""

    min: int
    max: int
    users_per_instance: int
    max_response_ms: int
    percentile: float
    scale_down_below: float
    idle_s: int
    warm_pool: int
    panic_factor: float


class RoutePlan(PlanModel):
    """A cleave route, most specific first; `regex` is what HAProxy's path_reg matches."""

    method: str
    path: str
    to: str  # "edge" | "origin"
    transactional: bool
    regex: str


class TierPlan(PlanModel):
    name: str
    command: tuple[str, ...]
    port: int
    env: dict[str, str]
    secrets: tuple[str, ...]  # names only; values come from the secret store at run time
    entry: bool
    reseed_signal: str | None
    health_path: str | None
    health_timeout_s: float
    start_timeout_s: float
    cpu: Decimal
    memory_mb: int


class AppPlan(PlanModel):
    """An app version: how to build and run it, how requests reach it, what it may cost."""

    name: str
    version: str
    owner: str
    organisation: str | None
    vendor: str
    priority: int
    hosts: tuple[str, ...]
    path_prefix: str | None
    source: str  # relative to the policy file
    install: str | None
    trusted: bool
    tiers: tuple[TierPlan, ...]
    warmup: tuple[dict[str, object], ...]
    routes: tuple[RoutePlan, ...]  # shared by all the app's placements
    default_route: str
    origin_url: str | None
    affinity: bool
    edgepoints: tuple[str, ...]
    budget: Money
    estimate_low: Money  # the minimum instances, idle, all month
    estimate_high: Money  # every instance the global maximum allows, busy, all month
    cost_ceiling: int  # instances the budget pays for, busy, all month
    within_budget: bool
    # the app's LoadTest (spec JSON): a version is rolled out only after it passed it staged
    load_test: dict[str, object] | None = None


class Placement(PlanModel):
    """An app version on one edgepoint: its policy and its share of the app's global limits."""

    id: str  # "<app>/<edgepoint>": stable across versions, so a version bump is a change
    app: str
    version: str
    owner: str
    vendor: str
    edgepoint: str
    region: str
    priority: int
    scaling: ScalingPolicy
    global_share: int  # of the app's global maximum; the controller divides, never an edgepoint
    cost_ceiling: int  # of the app's cost ceiling, in instances
    affinity: bool


class Plan(PlanModel):
    format: int = 1
    network: str
    provider: str
    pricing: dict[str, object]
    servers: tuple[ServerPlan, ...]
    controller: ServerPlan
    edgepoints: tuple[EdgepointPlan, ...]
    apps: tuple[AppPlan, ...]
    placements: tuple[Placement, ...]
    infrastructure_monthly: Money
    # Provisioning (cloud providers; empty/None on the local network):
    image: str | None = None  # the provider's OS image for every server
    operators: tuple[str, ...] = ()  # CIDRs that may reach the servers over SSH
    # The RFC 1918 block holding the slot network and every edgepoint's private subnet (a cloud
    # network must span its subnet and the slot subnets it routes); None if the slot network is
    # not inside one.
    private_network: str | None = None
    controller_subnet: str | None = None  # the controller's own private subnet (AWS needs a VPC)

    def app(self, name: str) -> AppPlan:
        for app in self.apps:
            if app.name == name:
                return app
        raise KeyError(name)

    def to_json(self) -> str:
        """Canonical JSON: byte-identical for the same spec."""
        return self.model_dump_json(indent=1) + "\n"
