"""Test networks: policy files with ports, addresses and slot subnets no other test uses,
and an in-process stand-in for edge processes."""

from __future__ import annotations

import os
import socket
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from edgeshot.control._edges import (
    EdgeStatus,
    PlacementOrder,
    PlacementStatus,
    VersionFigures,
)

REPO = Path(__file__).resolve().parents[2]
_N = [0]


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def write_policy(dir: Path, *, edgepoints: tuple[tuple, ...] = (
        ("eu", "eu-central"), ("us", "us-east")), app: str = "hello",
        extra_apps: str = "", servers: int = 1, slots: int = 4, users_per_instance: int = 10,
        max_per_edgepoint: int = 2) -> Path:
    """A local network of `edgepoints` with the hello app (or the shop, or the probe) on all
    of them."""
    _N[0] += 1
    http, agent, edge, ctl, stats = free_ports(5)
    slot_net = f"10.{150 + (os.getpid() + _N[0]) % 50}.0.0/16"
    eps = ",\n        ".join(
        f'Edgepoint(name="{e[0]}", region="{e[1]}", location="local", server_type="local", '
        f"servers={servers}, slots_per_server={e[2] if len(e) > 2 else slots})"
        for e in edgepoints)
    regions = [e[1] for e in edgepoints]
    if app == "hello":
        apps = textwrap.dedent(f'''
            hello = Application(
                name="hello", version="1.0", owner=Owner(id="acme"), vendor="acme-isv",
                routing=Routing(hosts=("hello.test",)),
                source=Source(path="{REPO / 'examples' / 'hello'}"),
                tiers=(Tier(name="web", command="python3 app.py", reseed_signal="SIGUSR2",
                            resources=Resources(cpu="0.25", memory_mb=64)),),
                warmup=(WarmupRequest(path="/", count=2),),
                cleave=Cleave(affinity=True),
                distribution=Distribution(regions={tuple(regions)!r}, min=0, max=2, global_max=3),
                sla=SLA(max_response_ms=200, users_per_instance=10, idle_s=5),
                budget=Budget(monthly="100 EUR"),
            )
        ''')
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
            shop_app = shop({regions!r}, budget="60 EUR", origin_url="http://127.0.0.1:9")
            shop_app = shop_app.model_copy(update={{"source": Source(path="{REPO / 'examples' / 'shop' / 'app'}")}})
        ''')
    text = textwrap.dedent(f'''
        from edgeshot.spec import (SLA, Application, Budget, Cleave, Controller, Distribution,
            EdgeNetwork, Edgepoint, Local, Owner, Ports, Pricing, Resources, Routing, Source,
            Tier, WarmupRequest)

        network = EdgeNetwork(
            name="t{os.getpid() % 10000}x{_N[0]}",
            provider=Local(http_port={http}),
            edgepoints=(
                {eps},
            ),
            controller=Controller(location="local", server_type="local"),
            pricing=Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01"),
            ports=Ports(agent={agent}, edge={edge}, controller={ctl}, stats={stats}),
            slot_network="{slot_net}",
        )
    ''') + apps + extra_apps
    path = dir / "policy.py"
    path.write_text(text)
    return path


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
        self.orders = list(orders)
        self.pushes += 1

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
