"""The shop, as its owner declares it: shared by every policy_*.py of this directory.

The edge part (catalog, cart) is a two-tier pod: `web` on $PORT talks to
`store` over 127.0.0.1 inside the pod. Checkout and accounts stay at the
origin, where the orders database lives.
"""

from edgeshot.spec import (
    SLA,
    Application,
    Budget,
    Cleave,
    Distribution,
    EdgeNetwork,
    LoadTest,
    Owner,
    PassCriteria,
    Resources,
    Routing,
    Source,
    Tier,
    WarmupRequest,
    WeightedPath,
)

acme_shop = Owner(id="acme-shop", name="ACME web shop team", organisation="acme")

STORE = {"STORE_PORT": "7001"}


def shop(regions: list[str], budget: str, origin_url: str) -> Application:
    """The shop for a network with these regions, budget and origin."""
    return Application(
        name="shop",
        version="1.0.0",
        owner=acme_shop,
        vendor="acme",
        priority=70,
        routing=Routing(hosts=("shop.example.com",)),
        source=Source(path="app"),
        tiers=(
            Tier(
                name="web",
                command="python3 web.py",
                port=8000,
                env=STORE,
                entry=True,
                reseed_signal="SIGUSR2",
                resources=Resources(cpu="0.5", memory_mb=128),
            ),
            Tier(
                name="store",
                command="python3 store.py",
                port=7001,
                env=STORE,
                reseed_signal="SIGUSR2",
                resources=Resources(cpu="0.25", memory_mb=64),
            ),
        ),
        warmup=(
            WarmupRequest(path="/catalog", count=20),
            WarmupRequest(path="/", count=5),
        ),
        cleave=Cleave(
            edge=("GET /catalog", "GET /cart/*", "POST /cart/*", "GET /"),
            origin=(
                "POST /checkout",
                "GET /account/*",
            ),
            origin_url=origin_url,
            affinity=True,
        ),
        distribution=Distribution(regions=regions, min=0, max=4, global_max=10),
        sla=SLA(max_response_ms=150, percentile=95, users_per_instance=20, idle_s=120, warm_pool=1),
        budget=Budget(monthly=budget),
        load_test=LoadTest(
            users=100,
            spawn_rate=20,
            duration_s=30,
            regions=regions[:2],
            paths=(
                WeightedPath(path="/catalog", weight=6),
                WeightedPath(path="/cart/s1", weight=3),
                WeightedPath(method="POST", path="/cart/s1", weight=1),
            ),
            criteria=PassCriteria(max_error_rate=0.01),
        ),
    )


def shop_on(network: EdgeNetwork, budget: str) -> Application:
    """The shop in every region of ``network``, cleaved to the network's origin."""
    if network.origin is None:
        raise ValueError(f"network {network.name}: the shop needs an origin")
    regions = list(dict.fromkeys(ep.region for ep in network.edgepoints))
    return shop(regions, budget, str(network.origin))
