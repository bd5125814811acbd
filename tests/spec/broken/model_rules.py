"""Objects that are wrong on their own: each model's rules, several per app.

The network is valid, so the checks across objects still run for the apps
that are valid.
"""

from edgeshot.spec import (
    SLA,
    Application,
    Budget,
    Cleave,
    Controller,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    HealthCheck,
    Local,
    Owner,
    Pricing,
    Resources,
    Routing,
    Source,
    Tier,
    WarmupRequest,
)

network = EdgeNetwork(
    name="lab",
    provider=Local(),
    edgepoints=[Edgepoint(name="ep1", region="eu-central", location="local", server_type="local")],
    controller=Controller(location="local", server_type="local"),
    pricing=Pricing(cpu_second="0.00002", memory_gb_second="0.000002", network_gb="0.01"),
)

shop = Application(  # expect: applications[Shop_App].name | must be a DNS label # expect: applications[Shop_App].version | must be letters, digits
    name="Shop_App",
    version=" 1.0",
    owner=Owner(id="acme"),
    routing=Routing(hosts=["shop.example.com"]),
    source=Source(path="."),
    tiers=[
        Tier(name="web", command="python web.py", ports=8001),  # expect: .ports | unknown field; allowed: command, entry
        Tier(name="store", command="python store.py", env={"PORT": "9000"}),  # expect: .env | PORT is set by edgeshot
        Tier(name="cache", command=[], resources=Resources(cpu=0)),  # expect: tiers[2].command | at least 1 item # expect: tiers[2].resources.cpu | greater than 0
    ],
    distribution=Distribution(min=3, max=2),  # expect: distribution | min (3) is more than max (2)
    sla=SLA(max_response_ms=200, users_per_instance=10, scale_down_below=1.2),  # expect: sla | scale_down_below (1.2) must be below 1
    budget=Budget(monthly="50EUR"),  # expect: budget.monthly | must be written 'AMOUNT CUR'
)

cart = Application(  # expect: applications[cart] | exactly one tier must be the entry (entry=True); found 2: web, api
    name="cart",
    version="1.0",
    owner=Owner(id="acme"),
    routing=Routing(),  # expect: applications[cart].routing | give hosts, a path_prefix, or both
    source=Source(path="."),
    tiers=[
        Tier(name="web", command="python web.py", entry=True),
        Tier(name="api", command="python api.py", entry=True, health=HealthCheck(timeout_s=0)),  # expect: health.timeout_s | greater than 0
    ],
    warmup=[WarmupRequest(method="FETCH", path="/"), WarmupRequest(path="items")],  # expect: warmup[0].method | unknown method 'FETCH' # expect: warmup[1].path | must start with '/'
    cleave=Cleave(edge=["GET /cart", "POST /cart/** x"], origin=["DELETE /cart**"]),  # expect: cleave | route 'POST /cart/** x' must be 'METHOD /path' # expect: cleave.origin[0].path | '**' is the same as '*'
    distribution=Distribution(regions=["eu-central"], edgepoints=["ep1"]),  # expect: applications[cart].distribution | give regions or edgepoints, not both
    sla=SLA(max_response_ms=200, users_per_instance=10, panic_factor=1),  # expect: sla | panic_factor (1.0) must be above 1
    budget=Budget(monthly="50 EUR", warn_at=1.5),  # expect: budget.warn_at | less than 1
)

half = Application(  # expect: applications[half].sla | required field is missing # expect: applications[half].budget | required field is missing # expect: applications[half].colour | unknown field
    name="half",
    version="1.0",
    owner=Owner(id="acme", organization="Acme Inc"),  # expect: owner.organization | unknown field; allowed: id, name, organisation
    routing=Routing(hosts=["Half.Example.com"]),  # expect: routing.hosts | 'Half.Example.com' is not a lowercase host name
    source=Source(path="."),
    tiers=[Tier(name="web", command="python app.py", port=70000)],  # expect: tiers[0].port | less than or equal to 65535
    distribution=Distribution(max=0),  # expect: distribution.max | greater than or equal to 1
    colour="blue",
)
