"""Small, valid specs built in Python (no policy file), for plan, diff and markdown tests.

Every builder takes keyword overrides, so a test states only what it is about:

    spec(network(edgepoints=HETZNER_EDGEPOINTS[:2]), app("shop", version="2"))
"""

from __future__ import annotations

from typing import Any

from edgeshot.spec import (
    SLA,
    Application,
    Budget,
    Cleave,
    Controller,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    Hetzner,
    Local,
    Owner,
    Pricing,
    Resources,
    Routing,
    Source,
    Spec,
    Tier,
)

PRICING = {"cpu_second": "0.00001", "memory_gb_second": "0.000001", "network_gb": "0.01"}

# Hetzner edgepoints in network order: fsn (2 servers), hel, ash.
FSN = Edgepoint(name="fsn", region="eu-central", location="fsn1", server_type="cx32", servers=2)
HEL = Edgepoint(name="hel", region="eu-north", location="hel1", server_type="cx22")
ASH = Edgepoint(name="ash", region="us-east", location="ash", server_type="cpx21")
NBG = Edgepoint(name="nbg", region="eu-central", location="nbg1", server_type="cx22")


def network(**overrides: Any) -> EdgeNetwork:
    """A Hetzner network (fsn, hel, ash; controller cx22 in nbg1) unless told otherwise."""
    fields: dict[str, Any] = {
        "name": "demo",
        "provider": Hetzner(),
        "edgepoints": (FSN, HEL, ASH),
        "controller": Controller(location="nbg1", server_type="cx22"),
        "pricing": Pricing(**PRICING),
        "origin": "https://origin.example.com",
    }
    fields.update(overrides)
    return EdgeNetwork(**fields)


def local_network(n: int = 3, **overrides: Any) -> EdgeNetwork:
    regions = ("eu-central", "us-east", "ap-southeast", "eu-north")
    fields: dict[str, Any] = {
        "name": "loc",
        "provider": Local(http_port=8080),
        "edgepoints": tuple(
            Edgepoint(name=f"ep{i + 1}", region=regions[i % len(regions)], location="local",
                      server_type="local")
            for i in range(n)
        ),
        "controller": Controller(location="local", server_type="local"),
        "pricing": Pricing(**PRICING),
    }
    fields.update(overrides)
    return EdgeNetwork(**fields)


def tier(name: str = "web", **overrides: Any) -> Tier:
    """One core and 1 GiB: at PRICING an instance costs 28.908 a month busy, 3.942 idle."""
    fields: dict[str, Any] = {
        "name": name,
        "command": "python3 app.py",
        "resources": Resources(cpu="1", memory_mb=1024),
    }
    fields.update(overrides)
    return Tier(**fields)


def app(name: str = "shop", *, distribution: dict[str, Any] | None = None,
        **overrides: Any) -> Application:
    dist = {"min": 0, "max": 2} | (distribution or {})
    fields: dict[str, Any] = {
        "name": name,
        "version": "1.0.0",
        "owner": Owner(id="acme", organisation="acme-corp"),
        "routing": Routing(hosts=(f"{name}.example.com",)),
        "source": Source(path="."),
        "tiers": (tier(),),
        "cleave": Cleave(
            edge=("GET /catalog", "GET /cart/*", "POST /cart/*"),
            origin=("POST /checkout",),
        ),
        "distribution": Distribution(**dist),
        "sla": SLA(max_response_ms=150, users_per_instance=20),
        "budget": Budget(monthly="100 EUR"),
    }
    fields.update(overrides)
    return Application(**fields)


def spec(net: EdgeNetwork | None = None, *apps: Application) -> Spec:
    return Spec(network=net if net is not None else network(), applications=apps)
