"""A network whose own fields are wrong. The checks that need the network wait
until it is right; the apps' own problems are reported now."""

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
    Local,
    Owner,
    PeakWindow,
    Pricing,
    Routing,
    Source,
    Tier,
)

network = EdgeNetwork(  # expect: network.origin | valid URL # expect: network.operators[0] | not a valid IPv4 network # expect: network.operators[0] | not a valid IPv6 network # expect: network.slot_network | valid IPv4 network
    name="lab",
    provider=Local(http_port=0),  # expect: network.provider.http_port | greater than or equal to 1
    edgepoints=[
        Edgepoint(name="ep1", region="eu-central", location="local", server_type="local", servers=0),  # expect: network.edgepoints[0].servers | greater than or equal to 1
        Edgepoint(name="ep2", region="eu-central", location="local"),  # expect: network.edgepoints[1].server_type | required field is missing
    ],
    controller=Controller(location="local", server_type="local"),
    pricing=Pricing(  # expect: network.pricing.currency | ISO 4217 code # expect: network.pricing.cpu_second | greater than or equal to 0
        currency="euro",
        cpu_second="-0.1",
        memory_gb_second="0.000002",
        network_gb="0.01",
        peak=PeakWindow(start=time(18), end=time(18), multiplier=2),  # expect: network.pricing.peak | start and end are equal
    ),
    origin="origin.example.com",
    operators=["10.0.0.300/8"],
    slot_network="10.64.0.0/33",
)

peaky = PeakWindow(start="08:00", end="20:00", multiplier="0.5", timezone="Mars/Olympus")  # expect: PeakWindow.multiplier | greater than or equal to 1 # expect: PeakWindow.timezone | IANA time zone

app = Application(
    name="app",
    version="1.0",
    owner=Owner(id="acme"),
    routing=Routing(hosts=["*.example.com"], path_prefix="/app*"),  # expect: applications[app].routing.path_prefix | takes no wildcards
    source=Source(path="."),
    tiers=[Tier(name="web", command="python app.py", env={"2FA": "on"})],  # expect: applications[app].tiers[0].env | '2FA' is not an environment variable name
    cleave=Cleave(edge=["GET /v?/*"], origin=["GET /v1*", "GET /v*/x"]),  # expect: applications[app].cleave.origin[1] | overlaps edge/origin route GET /v?/* | 'GET /v*/x'
    distribution=Distribution(min=1, max=4, regions=["nowhere"]),
    sla=SLA(max_response_ms=0, users_per_instance=10),  # expect: applications[app].sla.max_response_ms | greater than or equal to 1
    budget=Budget(monthly=dict(amount="-5", currency="EUR")),  # expect: applications[app].budget.monthly.amount | greater than or equal to 0
)
