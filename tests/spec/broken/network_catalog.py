"""A Hetzner network that a reviewer would send back: places and types Hetzner lacks,
regions nobody defined, and apps that ask for what the network does not have."""

from edgeshot.spec import (
    SLA,
    Application,
    Budget,
    Controller,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    Hetzner,
    LoadTest,
    Owner,
    Pricing,
    Region,
    Routing,
    Source,
    Tier,
    WeightedPath,
)

network = EdgeNetwork(  # expect: network.slot_network | too small: every server needs its own /24
    name="hetz",
    provider=Hetzner(),
    edgepoints=[
        Edgepoint(name="fra", region="eu-central", location="fsn1", server_type="cx22"),
        Edgepoint(name="hel", region="eu-north", location="fsn9", server_type="cx22"),  # expect: network.edgepoints[hel].location | not a hetzner location
        Edgepoint(name="ash", region="us-east", location="ash", server_type="m5.large"),  # expect: network.edgepoints[ash].server_type | not a hetzner server type
        Edgepoint(name="moon", region="mare-tranquillitatis", location="hil", server_type="cx32"),  # expect: network.edgepoints[moon].region | unknown region
        Edgepoint(name="fra", region="eu-central", location="nbg1", server_type="cx22"),  # expect: network.edgepoints[fra].name | 'fra' is declared 2 times
    ],
    controller=Controller(location="falkenstein", server_type="cx22"),  # expect: network.controller.location | not a hetzner location
    pricing=Pricing(
        currency="USD", cpu_second="0.00002", memory_gb_second="0.000002", network_gb="0.01"
    ),
    regions=[
        Region(name="eu-central", latitude=50.1, longitude=8.7),  # expect: network.regions[eu-central].name | is a built-in region
        Region(name="lab", latitude=48.1, longitude=11.6),
    ],
    slot_network="10.64.0.0/23",  # 5 servers need a /21 (a finding about the network itself)
)

lost = Application(
    name="lost",
    version="2.1",
    owner=Owner(id="acme"),
    routing=Routing(hosts=["lost.example.com"]),
    source=Source(path="."),
    tiers=[Tier(name="web", command="python app.py")],
    distribution=Distribution(regions=["atlantis", "lab"], max=2),  # expect: applications[lost].distribution.regions[0] | unknown region # expect: applications[lost].distribution.regions[1] | no edgepoint of the network is in this region
    sla=SLA(max_response_ms=200, users_per_instance=10),
    budget=Budget(monthly="20 EUR"),  # expect: applications[lost].budget.monthly | the network prices in USD
    load_test=LoadTest(  # expect: applications[lost].load_test.regions[0] | unknown region
        users=10, spawn_rate=1, duration_s=60, regions=["narnia"], paths=[WeightedPath(path="/")]
    ),
)

pinned = Application(
    name="pinned",
    version="1.0",
    owner=Owner(id="acme"),
    routing=Routing(hosts=["pinned.example.com"]),
    source=Source(path="."),
    tiers=[Tier(name="web", command="python app.py")],
    distribution=Distribution(edgepoints=["fra", "paris"], max=2),  # expect: applications[pinned].distribution.edgepoints[1] | the network has no such edgepoint
    sla=SLA(max_response_ms=200, users_per_instance=10),
    budget=Budget(monthly="20 USD"),
)
