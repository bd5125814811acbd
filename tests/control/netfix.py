"""Test networks: policy files with ports, addresses and slot subnets no other test uses,
and an in-process stand-in for edge processes."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from _netkit import REPO, TWO_EDGEPOINTS, hello_app, regions_of, write_network_policy
from edgeshot.control._edges import (
    EdgeStatus,
    PlacementOrder,
    PlacementRefused,
    PlacementStatus,
    VersionFigures,
)


def write_policy(dir: Path, *, edgepoints: tuple[tuple, ...] = TWO_EDGEPOINTS,
                 app: str = "hello", extra_apps: str = "", servers: int = 1, slots: int = 4,
                 users_per_instance: int = 10, max_per_edgepoint: int = 2) -> Path:
    """A local network of `edgepoints` with the hello app (or the shop, or the probe) on all
    of them."""
    regions = regions_of(edgepoints)
    if app == "hello":
        apps = hello_app(regions, affinity=True, global_max=3, sla_ms=200, idle_s=5)
    elif app == "probe":
        apps = textwrap.dedent(f'''
            probe = Application(
                name="probe", version="1.0", owner=Owner(id="acme"), vendor="acme-isv",
                routing=Routing(hosts=("probe.test",)),
                source=Source(path="{Path(__file__).parent / 'apps' / 'probe'}"),
                tiers=(Tier(name="web", command="python3 app.py", reseed_signal="SIGUSR2",
                            env={{"APP_VERSION": "1.0"}},
                            resources=Resources(cpu="0.1", memory_mb=48)),),
                warmup=(WarmupRequest(path="/", count=2),),
                cleave=Cleave(affinity=True),
                distribution=Distribution(regions={tuple(regions)!r}, min=0,
                                          max={max_per_edgepoint}, global_max=6),
                sla=SLA(max_response_ms=1000, users_per_instance={users_per_instance}, idle_s=5,
                        panic_factor=1.5),
                budget=Budget(monthly="1000 EUR"),
            )
        ''')
    else:
        apps = textwrap.dedent(f'''
            import sys
            sys.path.insert(0, "{REPO / 'examples' / 'shop'}")
            from apps import shop
            shop_app = shop({list(regions)!r}, budget="60 EUR", origin_url="http://127.0.0.1:9")
            shop_app = shop_app.model_copy(update={{"source": Source(path="{REPO / 'examples' / 'shop' / 'app'}")}})
        ''')
    return write_network_policy(
        dir, apps + extra_apps, name="t", subnets=(150, 50), edgepoints=edgepoints,
        servers=servers, slots=slots,
        pricing='Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01")')


@dataclass
class FakeEdge:
    """An edge process as the controller sees it, in memory: records the orders it got,
    reports the figures a test sets."""

    name: str
    healthy: bool = True
    load: float = 0.0
    orders: list[PlacementOrder] = field(default_factory=list)
    pushes: int = 0
    figures: dict[str, dict[str, VersionFigures]] = field(default_factory=dict)  # app -> v -> f
    at_capacity: set[str] = field(default_factory=set)
    refuse: set[str] = field(default_factory=set)  # "app version": refused like a real edge

    async def status(self) -> EdgeStatus:
        if not self.healthy:
            raise ConnectionError(f"{self.name} unreachable")
        placements = {}
        for o in self.orders:
            vs = self.figures.get(o.app, {})
            placements[o.id] = PlacementStatus(o.id, o.app, o.id in self.at_capacity,
                                               {v.version: vs.get(v.version, VersionFigures())
                                                for v in o.versions})
        return EdgeStatus(self.name, True, self.load, {"slots": 4}, placements)

    async def set_placements(self, orders: list[PlacementOrder]) -> None:
        if not self.healthy:
            raise ConnectionError(f"{self.name} unreachable")
        self.pushes += 1
        bad = {o.id for o in orders if any(f"{o.app} {v.version}" in self.refuse
                                            for v in o.versions)}
        kept = {o.id: o for o in self.orders if o.id in bad}
        self.orders = [kept[o.id] if o.id in bad else o for o in orders
                       if o.id not in bad or o.id in kept]
        if bad:
            raise PlacementRefused(f"placements {sorted(bad)} refused", frozenset(bad))

    async def close(self) -> None:
        pass

    def weights(self, app: str) -> dict[str, int]:
        for o in self.orders:
            if o.app == app:
                return o.weights()
        return {}

    def add(self, app: str, version: str, requests: int, errors: int = 0,
            latency_ms: float | None = 20.0) -> None:
        """The traffic of a version over the recent window (as an edge reports it)."""
        self.figures.setdefault(app, {})[version] = VersionFigures(requests, errors, latency_ms, 1)
