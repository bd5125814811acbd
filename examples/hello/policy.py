"""The smallest useful declaration: one app, one tier, one local edgepoint.

    edgeshot validate examples/hello/policy.py
"""

from edgeshot.spec import (
    SLA,
    Application,
    Budget,
    Controller,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    Local,
    Owner,
    Pricing,
    Routing,
    Source,
    Tier,
)

network = EdgeNetwork(
    name="hello-net",
    provider=Local(),
    edgepoints=(Edgepoint(name="here", region="eu-central", location="local", server_type="local"),),
    controller=Controller(location="local", server_type="local"),
    pricing=Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01"),
)

hello = Application(
    name="hello",
    version="1",
    owner=Owner(id="me"),
    routing=Routing(path_prefix="/"),
    source=Source(path="."),
    tiers=(Tier(name="web", command="python3 app.py", reseed_signal="SIGUSR2"),),
    distribution=Distribution(min=0, max=2),
    sla=SLA(max_response_ms=100, users_per_instance=10),
    budget=Budget(monthly="30 EUR"),
)
