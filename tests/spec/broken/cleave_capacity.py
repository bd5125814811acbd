"""Valid objects that do not fit together: cleave routes that overlap or go
nowhere, SLAs and load tests at odds, more instances than slots or budget."""

from edgeshot.spec import (
    SLA,
    Application,
    Budget,
    Cleave,
    Controller,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    LoadTest,
    Local,
    Owner,
    PassCriteria,
    Pricing,
    Route,
    Routing,
    Source,
    Tier,
    WeightedPath,
)

network = EdgeNetwork(
    name="lab",
    provider=Local(),
    edgepoints=[
        Edgepoint(name="ep1", region="eu-central", location="local", server_type="local"),
        Edgepoint(
            name="ep2", region="eu-central", location="local", server_type="local", slots_per_server=4
        ),
    ],
    controller=Controller(location="local", server_type="local"),
    pricing=Pricing(cpu_second="0.00002", memory_gb_second="0.000002", network_gb="0.01"),
)


def app(name: str, **fields):
    """The parts these apps share; each app line below is where the app is written."""
    base = dict(
        name=name,
        version="1.0",
        owner=Owner(id="acme"),
        routing=Routing(hosts=[f"{name}.example.com"]),
        source=Source(path="."),
        tiers=[Tier(name="web", command="python app.py")],
        distribution=Distribution(max=2),
        sla=SLA(max_response_ms=200, users_per_instance=10),
        budget=Budget(monthly="100 EUR"),
    )
    return base | fields


shop = Application(
    **app(
        "shop",
        cleave=Cleave(  # expect: applications[shop].cleave.origin[0] | overlaps edge/origin route GET /catalog* | 'GET /catalog?' # expect: applications[shop].cleave.origin[1] | overlaps edge/origin route * /cart with equal specificity # expect: applications[shop].cleave.origin_url | origin routes need an origin
            edge=["GET /catalog*", "/cart", "GET /a/*/b", "GET /img/*"],
            # no finding: other method, other literal tail, more specific
            origin=["GET /catalog?", "/cart*", "GET /a/*/c", "POST /img/*", "GET /img/x*"],
        ),
    )
)

media = Application(
    **app(
        "media",
        cleave=Cleave(  # expect: applications[media].cleave.edge[1] | route repeated (also in cleave.edge) # expect: applications[media].cleave.origin[0] | route repeated (also in cleave.edge) | 'GET /img/*.png' # expect: applications[media].cleave.origin[1] | overlaps edge/origin route * /p* | 'GET /p?q'
            edge=["GET /img/*.png", "get /img/*.png", "/p*"],
            origin=["GET /img/*.png", "GET /p?q"],
            origin_url="https://origin.example.com",
        ),
    )
)

paying = Application(
    **app(
        "paying",
        cleave=Cleave(edge=[Route(path="/pay", transactional=True)]),  # expect: applications[paying].cleave.edge | * /pay is marked transactional
    )
)

burst = Application(
    **app(
        "burst",
        distribution=Distribution(min=1, max=2, global_max=1),  # expect: applications[burst].distribution.global_max | less than min (1) x 2 edgepoints = 2
        sla=SLA(max_response_ms=200, users_per_instance=10, warm_pool=5),  # expect: applications[burst].sla.warm_pool | more than distribution.max (2)
        load_test=LoadTest(
            users=100,
            spawn_rate=10,
            duration_s=60,
            paths=[WeightedPath(path="/")],
            criteria=PassCriteria(max_response_ms=500),  # expect: applications[burst].load_test.criteria.max_response_ms | looser than the SLA's max_response_ms (200)
        ),
    )
)

big = Application(
    **app(
        "big",
        distribution=Distribution(min=6, max=10),  # expect: applications[big].distribution.min | more instances than the smallest chosen edgepoint has slots (4)
        budget=Budget(monthly="1 EUR"),  # expect: applications[big].budget.monthly | cannot pay for the minimum: 6 instance(s) x 2 edgepoint(s) cost at least 31.54 EUR
    )
)
