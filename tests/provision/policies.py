"""Small policy files written by tests: one app, edgepoints and network options as asked."""

from __future__ import annotations

from pathlib import Path

PROVIDER = {"hetzner": "Hetzner()", "aws": "AWS()", "digitalocean": "DigitalOcean()"}
CONTROLLER = {"hetzner": ("nbg1", "cx22"), "aws": ("eu-central-1", "t3.small"),
              "digitalocean": ("fra1", "s-1vcpu-1gb")}
SITES = {  # name -> region, location, server type per provider
    "hetzner": {"fsn": ("eu-central", "fsn1", "cx22"), "hel": ("eu-north", "hel1", "cx22"),
                "ash": ("us-east", "ash", "cpx21"), "sin": ("ap-southeast", "sin", "cpx11")},
    "aws": {"fsn": ("eu-central", "eu-central-1", "t3.small"),
            "hel": ("eu-north", "eu-north-1", "t3.small"),
            "ash": ("us-east", "us-east-1", "t3.small"),
            "sin": ("ap-southeast", "ap-southeast-1", "t3.small")},
    "digitalocean": {"fsn": ("eu-central", "fra1", "s-1vcpu-1gb"),
                     "hel": ("eu-west", "lon1", "s-1vcpu-1gb"),
                     "ash": ("us-east", "nyc3", "s-1vcpu-1gb"),
                     "sin": ("ap-southeast", "sgp1", "s-1vcpu-1gb")},
}


def write_policy(directory: Path, provider: str = "hetzner",
                 edgepoints: dict[str, int] | None = None, *, operators: tuple[str, ...] = (
                     "203.0.113.0/24",), slot_network: str | None = None, port: int = 8000,
                 name: str = "policy.py") -> Path:
    """A policy with `edgepoints` {name: servers} (from SITES) and one app on all of them."""
    edgepoints = edgepoints or {"fsn": 2, "hel": 1}
    eps = []
    for ep, servers in edgepoints.items():
        region, location, kind = SITES[provider][ep]
        eps.append(f"Edgepoint(name={ep!r}, region={region!r}, location={location!r}, "
                   f"server_type={kind!r}, servers={servers})")
    loc, kind = CONTROLLER[provider]
    currency = "EUR" if provider == "hetzner" else "USD"
    regions = sorted({SITES[provider][ep][0] for ep in edgepoints})
    extra = f"    slot_network={slot_network!r},\n" if slot_network else ""
    text = f'''\
from edgeshot.spec import (AWS, SLA, Application, Budget, Controller, DigitalOcean, Distribution,
                           EdgeNetwork, Edgepoint, Hetzner, Owner, Pricing, Routing, Source, Tier)

network = EdgeNetwork(
    name="testnet",
    provider={PROVIDER[provider]},
    edgepoints=[{", ".join(eps)}],
    controller=Controller(location={loc!r}, server_type={kind!r}),
    pricing=Pricing(currency={currency!r}, cpu_second="0.00001", memory_gb_second="0.000001",
                    network_gb="0.01"),
    operators={tuple(operators)!r},
{extra})

app = Application(
    name="web", version="1", owner=Owner(id="acme"), routing=Routing(hosts=("web.example.com",)),
    source=Source(path="."), tiers=(Tier(name="web", command="python3 app.py", port={port}),),
    distribution=Distribution(regions={regions!r}, max=2),
    sla=SLA(max_response_ms=200, users_per_instance=10),
    budget=Budget(monthly="1000 {currency}"),
)
'''
    path = directory / name
    path.write_text(text)
    return path
