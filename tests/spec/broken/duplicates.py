"""Names and keys that clash, a source that is not there, a second network,
and objects written as plain dicts and text where objects belong."""

from edgeshot.spec import (
    SLA,
    Application,
    Budget,
    Controller,
    Distribution,
    EdgeNetwork,
    Local,
    Owner,
    Pricing,
    Routing,
    Source,
    Tier,
)

network = EdgeNetwork(  # expect: network.edgepoints[ep2].region | unknown region | 'eu-centre'
    name="lab",
    provider=Local(),
    edgepoints=[
        {"name": "ep1", "region": "eu-central", "location": "local", "server_type": "local"},
        {"name": "ep2", "region": "eu-centre", "location": "local", "server_type": "local"},
    ],
    controller={"location": "local", "server_type": "local"},
    pricing=Pricing(cpu_second="0.00002", memory_gb_second="0.000002", network_gb="0.01"),
    origin="https://origin.example.com",
)

spare = EdgeNetwork(  # expect: network | a policy file declares one EdgeNetwork; this is a second
    name="spare",
    provider=Local(),
    edgepoints=[{"name": "ep1", "region": "eu-central", "location": "local", "server_type": "local"}],
    controller=Controller(location="local", server_type="local"),
    pricing=Pricing(cpu_second="0", memory_gb_second="0", network_gb="0"),
)

ACME = Owner(id="acme", organisation="Acme")
COMMON = dict(
    version="1.0",
    tiers=[Tier(name="web", command="python app.py")],
    distribution=Distribution(max=2),
    sla=SLA(max_response_ms=200, users_per_instance=10),
    budget=Budget(monthly="10 EUR"),
)

api = Application(
    name="api",
    owner=ACME,
    routing=Routing(hosts=["shop.example.com", "api.example.com"], path_prefix="/api"),
    source=Source(path="."),
    **COMMON,
)

api_again = Application(  # expect: applications[api].name | app 'api' is declared twice (also at
    name="api",
    owner=ACME,
    routing=Routing(hosts=["api.example.com"], path_prefix="/api"),  # expect: applications[api].routing | routing key already used by app 'api' | 'api.example.com/api'
    source=Source(path="api-src"),  # a missing source is reported on its Source line # expect: applications[api].source.path | no such file or directory next to the policy file | 'api-src'
    **COMMON,
)

shop = Application(
    name="shop",
    owner=Owner(id="acme", organisation="Acme Ltd"),  # expect: applications[shop].owner | owner 'acme' is declared twice with different details
    routing=Routing(hosts=["shop.example.com"], path_prefix="/api"),  # expect: applications[shop].routing | routing key already used by app 'api' | 'shop.example.com/api'
    source=Source(path="shop-src"),  # expect: applications[shop].source.path | no such file or directory next to the policy file
    **COMMON,
)

anywhere = Application(
    name="anywhere",
    owner=ACME,
    routing=Routing(path_prefix="/"),
    source=Source(path="."),
    **COMMON,
)

anywhere_too = Application(  # expect: applications[everywhere].budget | valid dictionary or instance of Budget | '20 EUR'
    name="everywhere",
    owner=ACME,
    routing=Routing(path_prefix="/"),  # expect: applications[everywhere].routing | routing key already used by app 'anywhere' | '*/'
    source=Source(path="."),
    tiers=[Tier(name="web", command="python app.py")],
    distribution=Distribution(max=2),
    sla=SLA(max_response_ms=200, users_per_instance=10),
    budget="20 EUR",
    version="1.0",
)
