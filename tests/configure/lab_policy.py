"""The network the configuration tests build on throwaway servers: two edgepoints
(north with two servers, south with one) and a controller, as a cloud network
(addresses come from the inventory, as Pulumi would report them)."""

from edgeshot.spec import (
    SLA,
    Application,
    Budget,
    Controller,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    Hetzner,
    Owner,
    Pricing,
    Routing,
    Source,
    Tier,
)

network = EdgeNetwork(
    name="lab",
    provider=Hetzner(),
    edgepoints=(
        Edgepoint(name="north", region="eu-north", location="hel1", server_type="cx22",
                  servers=2),
        Edgepoint(name="south", region="eu-central", location="fsn1", server_type="cx22"),
    ),
    controller=Controller(location="nbg1", server_type="cx22"),
    pricing=Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01"),
)

hello = Application(
    name="hello",
    version="1",
    owner=Owner(id="lab"),
    routing=Routing(path_prefix="/"),
    source=Source(path="."),
    tiers=(Tier(name="web", command="python3 -m http.server"),),
    distribution=Distribution(min=0, max=2),
    sla=SLA(max_response_ms=100, users_per_instance=10),
    budget=Budget(monthly="30 EUR"),
)
