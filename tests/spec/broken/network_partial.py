"""A network with one wrong nested field (the peak window's multiplier) still has its
other problems reported in the same load: the unknown location, the unknown server type,
and the apps' findings that read only the valid parts (the budget waits for the prices)."""

from datetime import time

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
    Owner,
    PeakWindow,
    Pricing,
    Routing,
    Source,
    Tier,
)

network = EdgeNetwork(
    name="hetz",
    provider=Hetzner(),
    edgepoints=[
        Edgepoint(name="fra", region="eu-central", location="fsn1", server_type="cx22"),
        Edgepoint(name="hel", region="eu-north", location="hel9", server_type="cx22"),  # expect: network.edgepoints[hel].location | not a hetzner location | 'hel9'
        Edgepoint(name="ash", region="us-east", location="ash", server_type="m5"),  # expect: network.edgepoints[ash].server_type | not a hetzner server type | 'm5'
    ],
    controller=Controller(location="nbg9", server_type="cx22"),  # expect: network.controller.location | not a hetzner location
    pricing=Pricing(
        currency="EUR",
        cpu_second="0.00002",
        memory_gb_second="0.000002",
        network_gb="0.01",
        peak=PeakWindow(start=time(18), end=time(22), multiplier="0.5"),  # expect: network.pricing.peak.multiplier | greater than or equal to 1
    ),
)

app = Application(
    name="app",
    version="1.0",
    owner=Owner(id="acme"),
    routing=Routing(hosts=["app.example.com"]),
    source=Source(path="."),
    tiers=[Tier(name="web", command="python app.py")],
    cleave=Cleave(edge=["GET /a*"], origin=["GET /a?"], origin_url="https://o.example.com"),  # expect: applications[app].cleave.origin[0] | overlaps edge/origin route GET /a*
    distribution=Distribution(edgepoints=["fra", "paris"], max=2),  # expect: applications[app].distribution.edgepoints[1] | the network has no such edgepoint
    sla=SLA(max_response_ms=200, users_per_instance=10),
    budget=Budget(monthly="1 USD"),
)
