"""compile_plan: servers, placements, shares, costs and routes, deterministically."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeshot.plan import Plan, compile_plan
from edgeshot.spec import (
    CATALOGS,
    REGIONS,
    SLA,
    Application,
    Budget,
    Cleave,
    Controller,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    Hetzner,
    Local,
    Owner,
    PeakWindow,
    Pricing,
    Region,
    Resources,
    Route,
    Routing,
    Source,
    Spec,
    Tier,
    WarmupRequest,
    load,
)
from edgeshot.spec._routes import specificity

from .builders import ASH, FSN, HEL, NBG, PRICING, app, local_network, network, spec, tier

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = {
    "shop-local": ROOT / "examples/shop/policy_local.py",
    "shop-hetzner": ROOT / "examples/shop/policy_hetzner.py",
    "hello": ROOT / "examples/hello/policy.py",
}


@pytest.fixture(scope="module")
def plans() -> dict[str, Plan]:
    return {name: compile_plan(load(path)) for name, path in EXAMPLES.items()}


# --- determinism ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_same_file_twice_gives_byte_identical_json(name, plans):
    again = compile_plan(load(EXAMPLES[name])).to_json()
    assert again == plans[name].to_json()
    assert again.endswith("\n")


POLICY = '''\
from edgeshot.spec import (SLA, Application, Budget, Controller, Distribution, EdgeNetwork,
                           Edgepoint, Hetzner, Owner, Pricing, Routing, Source, Tier)

network = EdgeNetwork(
    name="order", provider=Hetzner(),
    edgepoints=[
        Edgepoint(name="fsn", region="eu-central", location="fsn1", server_type="cx22"),
        Edgepoint(name="hel", region="eu-north", location="hel1", server_type="cx22"),
        Edgepoint(name="ash", region="us-east", location="ash", server_type="cpx21"),
    ],
    controller=Controller(location="nbg1", server_type="cx22"),
    pricing=Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01"),
)
owner = Owner(id="acme")


def make(name, regions, env):
    return Application(
        name=name, version="1", owner=owner, routing=Routing(hosts=[name + ".example.com"]),
        source=Source(path="."), tiers=[Tier(name="web", command="python3 app.py", env=env)],
        distribution=Distribution(regions=regions, min=1, max=3, global_max=5),
        sla=SLA(max_response_ms=100, users_per_instance=10), budget=Budget(monthly="500 EUR"),
    )


'''


def test_declaration_order_does_not_matter(tmp_path):
    """Apps declared in another order, regions listed in another order, env keys in another
    order: the same declaration, so the same bytes."""
    first = tmp_path / "first.py"
    first.write_text(POLICY + textwrap.dedent('''\
        alpha = make("alpha", ["eu-central", "us-east"], {"A": "1", "B": "2"})
        beta = make("beta", ["eu-north", "eu-central", "us-east"], {"X": "1"})
        gamma = make("gamma", ["us-east"], {})
    '''))
    second = tmp_path / "second.py"
    second.write_text(POLICY + textwrap.dedent('''\
        gamma = make("gamma", ["us-east"], {})
        apps = [make("beta", ["us-east", "eu-central", "eu-north"], {"X": "1"})]
        alpha = make("alpha", ["us-east", "eu-central"], {"B": "2", "A": "1"})
    '''))
    a, b = (compile_plan(load(p)).to_json() for p in (first, second))
    assert a == b
    assert [x["name"] for x in json.loads(a)["apps"]] == ["alpha", "beta", "gamma"]


def test_spec_objects_in_another_order_compile_to_the_same_plan():
    apps = [app("shop"), app("blog", distribution={"regions": ("us-east", "eu-central")})]
    reordered = [app("blog", distribution={"regions": ("eu-central", "us-east")}), app("shop")]
    assert compile_plan(spec(network(), *apps)).to_json() == \
        compile_plan(spec(network(), *reordered)).to_json()


# --- servers -------------------------------------------------------------------


def _assert_slot_subnets(p):
    """Every server has its own /24 of the network's slot network."""
    slot_network = ipaddress.IPv4Network("10.64.0.0/12")
    subnets = [ipaddress.IPv4Network(s.slot_subnet) for s in p.servers]
    assert all(n.prefixlen == 24 and n.subnet_of(slot_network) for n in subnets)
    assert len(set(subnets)) == len(subnets)


def test_slot_subnets_stay_when_an_edgepoint_is_inserted(plans, tmp_path):
    """Inserting an edgepoint before the others must not move their slots (a PR diff
    would otherwise show every server changing)."""
    before = {s.name: s.slot_subnet for s in plans["shop-local"].servers}
    shop = tmp_path / "shop"
    shutil.copytree(EXAMPLES["shop-local"].parent, shop)
    text = (shop / "policy_local.py").read_text()
    assert "edgepoints=(\n" in text
    (shop / "policy_local.py").write_text(text.replace(
        "edgepoints=(\n",
        'edgepoints=(\n        Edgepoint(name="sa", region="sa-east", location="local", server_type="local"),\n',
        1))
    after = {s.name: s.slot_subnet for s in compile_plan(load(shop / "policy_local.py")).servers}
    assert set(after) == set(before) | {"sa-1"}
    assert {k: after[k] for k in before} == before


def test_local_network_servers(plans):
    p = plans["shop-local"]
    assert [s.name for s in p.servers] == ["eu-1", "us-1", "ap-1"]
    assert [s.address for s in p.servers] == ["127.0.1.1", "127.0.2.1", "127.0.3.1"]
    _assert_slot_subnets(p)
    assert [s.region for s in p.servers] == ["eu-central", "us-east", "ap-southeast"]
    for s in p.servers:
        assert s.roles == ("agent", "edge")
        assert s.ports == {"agent": 7701, "http": 8080, "edge": 7702, "stats": 8404}
        assert (s.provider, s.location, s.server_type, s.slots) == ("local", "local", "local", 8)
        assert s.monthly_cost.amount == 0
    c = p.controller
    assert (c.name, c.address, c.roles, c.edgepoint, c.slot_subnet, c.slots) == (
        "controller", "127.0.0.1", ("controller", "dispatcher"), None, None, 0)
    assert c.ports == {"http": 8080, "https": 443, "controller": 7703, "stats": 8404}
    assert [(e.name, e.edge_host, e.servers) for e in p.edgepoints] == [
        ("eu", "eu-1", ("eu-1",)), ("us", "us-1", ("us-1",)), ("ap", "ap-1", ("ap-1",))]
    assert p.infrastructure_monthly.amount == 0


def test_hetzner_network_servers(plans):
    p = plans["shop-hetzner"]
    table = [(s.name, s.edgepoint, s.roles, s.location, s.server_type, s.region,
              str(s.monthly_cost)) for s in p.servers]
    assert table == [
        ("fsn-1", "fsn", ("agent", "edge"), "fsn1", "cx32", "eu-central", "6.80 EUR"),
        ("fsn-2", "fsn", ("agent",), "fsn1", "cx32", "eu-central", "6.80 EUR"),
        ("hel-1", "hel", ("agent", "edge"), "hel1", "cx22", "eu-north", "3.79 EUR"),
        ("ash-1", "ash", ("agent", "edge"), "ash", "cpx21", "us-east", "7.55 EUR"),
    ]
    _assert_slot_subnets(p)
    # Clouds assign addresses; only the edge host listens for requests and for the controller.
    assert all(s.address is None and s.provider == "hetzner" for s in p.servers)
    by_name = {s.name: s for s in p.servers}
    assert by_name["fsn-1"].ports == {"agent": 7701, "http": 80, "edge": 7702, "stats": 8404}
    assert by_name["fsn-2"].ports == {"agent": 7701}
    fsn = p.edgepoints[0]
    assert (fsn.name, fsn.servers, fsn.edge_host, fsn.slots) == ("fsn", ("fsn-1", "fsn-2"), "fsn-1", 16)
    c = p.controller
    assert (c.location, c.server_type, c.region, c.address, str(c.monthly_cost)) == (
        "nbg1", "cx22", "eu-central", None, "3.79 EUR")
    assert c.ports["http"] == 80
    assert str(p.infrastructure_monthly) == "28.73 EUR"  # 3.79 + 2 x 6.80 + 3.79 + 7.55
    assert (p.network, p.provider) == ("acme-edge", "hetzner")


def test_slot_subnets_are_disjoint_and_inside_the_slot_network():
    net = network(edgepoints=(FSN.model_copy(update={"servers": 5}), HEL, ASH),
                  slot_network="10.128.0.0/16")
    p = compile_plan(spec(net, app()))
    subnets = [ipaddress.ip_network(s.slot_subnet) for s in p.servers]
    assert len(subnets) == 7
    assert all(n.prefixlen == 24 and n.subnet_of(ipaddress.ip_network("10.128.0.0/16"))
               for n in subnets)
    assert len(set(subnets)) == len(subnets)


def test_local_addresses_past_255_edgepoints():
    p = compile_plan(spec(local_network(300), app()))
    addresses = [s.address for s in p.servers]
    assert addresses[0] == "127.0.1.1"
    assert addresses[254] == "127.0.255.1"
    assert addresses[255] == "127.1.0.1"
    assert addresses[299] == "127.1.44.1"
    assert len(set(addresses)) == 300
    assert all(ipaddress.ip_address(a).is_loopback for a in addresses)
    assert "127.0.0.1" not in addresses  # the controller's


def test_local_edgepoint_with_several_servers():
    net = local_network(2, edgepoints=(
        Edgepoint(name="a", region="eu-central", location="local", server_type="local", servers=3,
                  slots_per_server=4),
        Edgepoint(name="b", region="us-east", location="local", server_type="local"),
    ))
    p = compile_plan(spec(net, app()))
    assert [(s.name, s.address, s.roles) for s in p.servers] == [
        ("a-1", "127.0.1.1", ("agent", "edge")),
        ("a-2", "127.0.1.2", ("agent",)),
        ("a-3", "127.0.1.3", ("agent",)),
        ("b-1", "127.0.2.1", ("agent", "edge")),
    ]
    assert p.edgepoints[0].slots == 12
    assert p.edgepoints[0].edge_host == "a-1"


# --- placements ------------------------------------------------------------------


def _placed(distribution, net=None):
    p = compile_plan(spec(net or network(edgepoints=(FSN, HEL, ASH, NBG)),
                          app(distribution=distribution)))
    return p, [pl.edgepoint for pl in p.placements]


@pytest.mark.parametrize(("distribution", "expected"), [
    ({}, ["fsn", "hel", "ash", "nbg"]),  # no policy: everywhere, in network order
    ({"regions": ("eu-central",)}, ["fsn", "nbg"]),
    ({"regions": ("us-east", "eu-central")}, ["fsn", "ash", "nbg"]),  # network order
    ({"regions": ("eu-central", "us-east"), "max_edgepoints": 2}, ["fsn", "ash"]),
    ({"max_edgepoints": 1}, ["fsn"]),
    ({"edgepoints": ("ash", "fsn")}, ["ash", "fsn"]),  # named: in the order given
    ({"edgepoints": ("nbg", "hel", "fsn"), "max_edgepoints": 2}, ["nbg", "hel"]),
], ids=["all", "one-region", "two-regions", "regions-capped", "all-capped", "named",
        "named-capped"])
def test_placements_follow_the_distribution_policy(distribution, expected):
    p, placed = _placed(distribution)
    assert placed == expected
    assert p.app("shop").edgepoints == tuple(expected)
    regions = {e.name: e.region for e in p.edgepoints}
    for pl in p.placements:
        assert pl.id == f"shop/{pl.edgepoint}"
        assert (pl.app, pl.version, pl.owner, pl.vendor) == ("shop", "1.0.0", "acme", "acme-corp")
        assert pl.region == regions[pl.edgepoint]


def test_placement_scaling_policy_copies_the_sla():
    a = app(distribution={"min": 1, "max": 3},
            sla=SLA(max_response_ms=120, percentile=99, users_per_instance=7,
                    scale_down_below=0.25, idle_s=60, warm_pool=2, panic_factor=3),
            priority=90, cleave=Cleave(affinity=True))
    p = compile_plan(spec(network(), a))
    for pl in p.placements:
        s = pl.scaling
        assert (s.min, s.max, s.users_per_instance, s.max_response_ms, s.percentile,
                s.scale_down_below, s.idle_s, s.warm_pool, s.panic_factor) == (
            1, 3, 7, 120, 99.0, 0.25, 60, 2, 3.0)
        assert (pl.priority, pl.affinity) == (90, True)


def test_placements_of_several_apps_by_app_name_then_policy_order():
    p = compile_plan(spec(network(), app("zeta", distribution={"edgepoints": ("ash", "fsn")}),
                          app("alpha", distribution={"regions": ("eu-north",)})))
    assert [pl.id for pl in p.placements] == ["alpha/hel", "zeta/ash", "zeta/fsn"]


@pytest.mark.parametrize(("dist", "shares"), [
    ({"min": 0, "max": 4, "global_max": 10}, [4, 3, 3]),
    ({"min": 1, "max": 4, "global_max": 5}, [2, 2, 1]),
    ({"min": 2, "max": 2, "global_max": 6}, [2, 2, 2]),
    ({"min": 0, "max": 4, "global_max": 100}, [4, 4, 4]),  # more than all maxima: the maxima
    ({"min": 0, "max": 3}, [3, 3, 3]),  # no global max
    ({"min": 0, "max": 4, "global_max": 2}, [1, 1, 0]),
])
def test_global_shares(dist, shares):
    p = compile_plan(spec(network(), app(distribution=dist, budget=Budget(monthly="10000 EUR"))))
    got = [pl.global_share for pl in p.placements]
    assert got == shares
    everything = 3 * dist["max"]
    assert sum(got) == min(dist.get("global_max") or everything, everything)
    assert all(dist["min"] <= s <= dist["max"] for s in got)


def test_shares_sum_to_global_max_on_the_shop(plans):
    for name in ("shop-local", "shop-hetzner"):
        p = plans[name]
        assert sum(pl.global_share for pl in p.placements) == 10  # shop: global_max=10
        assert [pl.global_share for pl in p.placements] == [4, 3, 3]


# --- costs -----------------------------------------------------------------------

# tier(): 1 core, 1 GiB. At PRICING, per instance-month (730 h = 2,628,000 s):
#   busy: (1 x 0.00001 + 1 x 0.000001) x 2,628,000 = 28.908
#   idle: (0.05 x 0.00001 + 1 x 0.000001) x 2,628,000 = 3.942
COST_CASES = [
    # (why, dist, budget, pricing overrides, ceiling, ceilings, low, high, within)
    ("budget pays for one busy instance: the ceiling is still one per edgepoint",
     {"min": 0, "max": 2, "global_max": 5}, "50 EUR", {}, 3, [1, 1, 1], "0.00", "144.54", False),
    ("never below the minimum",
     {"min": 1, "max": 2, "global_max": 5}, "50 EUR", {}, 3, [1, 1, 1], "11.83", "144.54", False),
    ("budget for four of five",
     {"min": 0, "max": 2, "global_max": 5}, "120 EUR", {}, 4, [2, 1, 1], "0.00", "144.54", False),
    ("budget for everything: the ceiling is the global maximum",
     {"min": 0, "max": 2, "global_max": 5}, "1000 EUR", {}, 5, [2, 2, 1], "0.00", "144.54", True),
    ("exactly the upper estimate is within budget",
     {"min": 0, "max": 1}, "86.724 EUR", {}, 3, [1, 1, 1], "0.00", "86.72", True),
    ("a cent less is not (the ceiling stays one per edgepoint)",
     {"min": 0, "max": 1}, "86.72 EUR", {}, 3, [1, 1, 1], "0.00", "86.72", False),
    ("budget for two of four: never more than what the budget buys, but one per edgepoint",
     {"min": 0, "max": 2, "global_max": 4}, "60 EUR", {}, 3, [1, 1, 1], "0.00", "115.63", False),
    ("the peak multiplier raises the upper estimate only",
     {"min": 1, "max": 1}, "100 EUR",
     {"peak": PeakWindow(start="08:00", end="20:00", multiplier="1.5")},
     3, [1, 1, 1], "11.83", "130.09", False),
    ("storage: an appshot of the memory limit, kept all month",
     {"min": 1, "max": 1}, "1000 EUR", {"storage_gb_hour": "0.01"},
     3, [1, 1, 1], "33.73", "108.62", True),
]


@pytest.mark.parametrize(
    ("dist", "budget", "pricing", "ceiling", "ceilings", "low", "high", "within"),
    [c[1:] for c in COST_CASES], ids=[c[0] for c in COST_CASES])
def test_costs(dist, budget, pricing, ceiling, ceilings, low, high, within):
    net = network(pricing=Pricing(**(PRICING | pricing)))
    p = compile_plan(spec(net, app(distribution=dist, budget=Budget(monthly=budget))))
    a = p.app("shop")
    assert a.cost_ceiling == ceiling
    assert [pl.cost_ceiling for pl in p.placements] == ceilings
    assert sum(ceilings) == ceiling
    assert all(pl.cost_ceiling <= pl.global_share for pl in p.placements)
    assert (str(a.estimate_low), str(a.estimate_high)) == (f"{low} EUR", f"{high} EUR")
    assert a.within_budget is within
    assert a.budget.amount == Decimal(budget.split()[0])


def test_shop_costs(plans):
    a = plans["shop-hetzner"].app("shop")
    # web 0.5 + store 0.25 cores, 192 MiB; busy x 1.5 (peak) x 10 instances
    assert (str(a.estimate_low), str(a.estimate_high), str(a.budget)) == (
        "5.81 EUR", "366.07 EUR", "120 EUR")  # low: the warm pool (1) on 3 edgepoints, idle
    assert (a.cost_ceiling, a.within_budget) == (3, False)
    # hello: 0.5 core, 256 MiB at 0.00001/0.000001: 13.797 a month busy; max 2 on one edgepoint;
    # its 30 EUR budget pays for both busy all month.
    hello = plans["hello"].app("hello")
    assert (str(hello.estimate_high), hello.cost_ceiling, hello.within_budget) == (
        "27.59 EUR", 2, True)


# --- routes ----------------------------------------------------------------------


def test_shop_routes_most_specific_first(plans):
    routes = plans["shop-local"].app("shop").routes
    assert [(r.method, r.path, r.to, r.regex) for r in routes] == [
        ("GET", "/account/*", "origin", "^/account/.*$"),
        ("POST", "/checkout", "origin", "^/checkout"),
        ("GET", "/catalog", "edge", "^/catalog"),
        ("GET", "/cart/*", "edge", "^/cart/.*$"),
        ("POST", "/cart/*", "edge", "^/cart/.*$"),
        ("GET", "/", "edge", "^/"),
    ]


def _route_for(routes, method, path):
    """What HAProxy does: the first route (in plan order) whose method and regex match."""
    for r in routes:
        if r.method in ("*", method) and re.search(r.regex, path):
            return r
    return None


@pytest.mark.parametrize(("method", "path", "expected"), [
    ("GET", "/catalog", "GET /catalog"),
    ("GET", "/catalog/shoes?size=9", "GET /catalog"),  # a prefix
    ("GET", "/cart/s1", "GET /cart/*"),
    ("POST", "/cart/s1/items", "POST /cart/*"),  # '*' crosses '/'
    ("DELETE", "/cart/s1", None),
    ("POST", "/checkout", "POST /checkout"),
    ("GET", "/checkout", "GET /"),
    ("GET", "/account/me", "GET /account/*"),
    ("GET", "/account", "GET /"),  # the glob needs the '/'
    ("GET", "/", "GET /"),
])
def test_shop_route_regexes_decide_like_haproxy(plans, method, path, expected):
    found = _route_for(plans["shop-local"].app("shop").routes, method, path)
    assert (f"{found.method} {found.path}" if found else None) == expected


def test_route_ordering_and_regexes():
    cleave = Cleave(
        edge=("/api", "GET /api", "/v1.0/items/?", "/static/*.css", Route(path="/a")),
        origin=(Route(method="POST", path="/api/orders", transactional=True),),
        origin_url="https://origin.example.com",
    )
    routes = compile_plan(spec(network(), app(cleave=cleave))).app("shop").routes
    assert [(r.method, r.path, r.to, r.transactional, r.regex) for r in routes] == [
        ("*", "/v1.0/items/?", "edge", False, r"^/v1\.0/items/.$"),
        ("POST", "/api/orders", "origin", True, "^/api/orders"),
        ("*", "/static/*.css", "edge", False, r"^/static/.*\.css$"),
        ("GET", "/api", "edge", False, "^/api"),  # a named method before '*' at equal length
        ("*", "/api", "edge", False, "^/api"),
        ("*", "/a", "edge", False, "^/a"),
    ]
    lengths = [specificity(r.path) for r in routes]
    assert lengths == sorted(lengths, reverse=True)
    assert re.search(routes[0].regex, "/v1.0/items/7")
    assert not re.search(routes[0].regex, "/v1x0/items/7")
    assert not re.search(routes[0].regex, "/v1.0/items/77")
    assert re.search(routes[2].regex, "/static/css/site.css")
    assert not re.search(routes[2].regex, "/static/site.css.map")


def test_app_plan_carries_what_the_runtime_needs():
    a = app(
        "api", version="2.1", vendor="widgets-inc", priority=80,
        routing=Routing(hosts=("api.example.com", "*.api.example.com"), path_prefix="/v2"),
        source=Source(path="src", install="pip install -r requirements.txt", trusted=False),
        tiers=(tier("web", entry=True, port=8001, env={"Z": "1", "A": "2"}),
               tier("cache", command=["redis-server", "--port", "7000"], port=7000, health=None,
                    resources=Resources(cpu="0.25", memory_mb=64))),
        warmup=(WarmupRequest(path="/v2/items", count=3, headers={"Accept": "text/html"}),),
        cleave=Cleave(default="origin", origin_url="https://api-origin.example.com/base",
                      edge=("GET /v2/items",)),
    )
    plan = compile_plan(spec(network(), a)).app("api")
    assert (plan.version, plan.owner, plan.organisation, plan.vendor, plan.priority) == (
        "2.1", "acme", "acme-corp", "widgets-inc", 80)
    assert (plan.hosts, plan.path_prefix) == (("api.example.com", "*.api.example.com"), "/v2")
    assert (plan.source, plan.install, plan.trusted) == (
        "src", "pip install -r requirements.txt", False)
    web, cache = plan.tiers
    assert (web.name, web.entry, web.port, web.command) == ("web", True, 8001, ("python3", "app.py"))
    assert list(web.env) == ["A", "Z"]  # sorted: the same bytes whatever the order written
    assert (web.health_path, web.health_timeout_s, web.start_timeout_s) == ("/healthz", 2.0, 30.0)
    assert (cache.entry, cache.command, cache.health_path, cache.cpu, cache.memory_mb) == (
        False, ("redis-server", "--port", "7000"), None, Decimal("0.25"), 64)
    assert plan.warmup == ({"method": "GET", "path": "/v2/items", "count": 3, "body": None,
                            "headers": {"Accept": "text/html"}},)
    assert (plan.default_route, plan.origin_url) == ("origin", "https://api-origin.example.com/base")


def test_origin_falls_back_to_the_network_origin():
    p = compile_plan(spec(network(), app(cleave=Cleave(origin=("POST /checkout",)))))
    assert p.app("shop").origin_url == "https://origin.example.com/"
    p = compile_plan(spec(network(origin=None), app(cleave=Cleave())))
    assert p.app("shop").origin_url is None


# --- secrets ---------------------------------------------------------------------


def test_secret_names_are_in_the_plan_but_never_their_values(monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "hunter2-value-from-the-store")
    monkeypatch.setenv("API_TOKEN", "tok-0123456789")
    a = app(tiers=(tier(env={"MODE": "prod"}, secrets=("DB_PASSWORD", "API_TOKEN")),))
    p = compile_plan(spec(network(), a))
    web = p.app("shop").tiers[0]
    assert web.secrets == ("DB_PASSWORD", "API_TOKEN")
    assert web.env == {"MODE": "prod"}
    text = p.to_json()
    assert '"DB_PASSWORD"' in text and '"API_TOKEN"' in text
    assert "hunter2" not in text and "tok-0123456789" not in text


# --- JSON round trip -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_examples_round_trip(name, plans):
    p = plans[name]
    back = Plan.model_validate_json(p.to_json())
    assert back == p
    assert back.to_json() == p.to_json()


NAMES = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
TEXT = st.text(max_size=12)
HETZNER = CATALOGS["hetzner"]


@st.composite
def specs(draw) -> Spec:
    """Valid declarations: any provider's catalog, custom regions, odd strings and numbers."""
    hetzner = draw(st.booleans())
    custom = draw(st.lists(st.builds(
        Region, name=st.sampled_from(["mars-north", "moon-base", "lab"]),
        latitude=st.floats(-90, 90), longitude=st.floats(-180, 180), label=TEXT),
        max_size=2, unique_by=lambda r: r.name))
    regions = sorted(REGIONS)[:5] + [r.name for r in custom]
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    edgepoints = []
    for name in names:
        if hetzner:
            location = draw(st.sampled_from(sorted(HETZNER.locations)))
            server_type = draw(st.sampled_from(sorted(HETZNER.server_types)))
        else:
            location, server_type = "local", "local"
        edgepoints.append(Edgepoint(
            name=name, region=draw(st.sampled_from(regions)), location=location,
            server_type=server_type, servers=draw(st.integers(1, 3)),
            slots_per_server=draw(st.integers(1, 16))))
    money = st.decimals(min_value=0, max_value=1, places=7)
    peak = st.none() | st.builds(PeakWindow, start=st.sampled_from(["07:00", "18:30"]),
                                 end=st.sampled_from(["09:00", "23:15"]),
                                 multiplier=st.decimals(1, 3, places=2))
    pricing = Pricing(cpu_second=draw(money), memory_gb_second=draw(money),
                      network_gb=draw(money), storage_gb_hour=draw(money), peak=draw(peak))
    net = EdgeNetwork(
        name="net", provider=Hetzner() if hetzner else Local(http_port=draw(st.integers(1, 65535))),
        edgepoints=tuple(edgepoints),
        controller=(Controller(location="nbg1", server_type="cx22") if hetzner
                    else Controller(location="local", server_type="local")),
        pricing=pricing, regions=tuple(custom),
        origin=draw(st.none() | st.just("https://origin.example.com/x")),
    )
    apps = []
    for i in range(draw(st.integers(0, 3))):
        lo = draw(st.integers(0, 2))
        hi = lo + draw(st.integers(0, 3)) or 1
        how = draw(st.sampled_from(["all", "regions", "edgepoints"]))
        dist = {"min": lo, "max": hi,
                "global_max": draw(st.none() | st.integers(lo * len(names) or 1, 40)),
                "max_edgepoints": draw(st.none() | st.integers(1, 4))}
        if how == "regions":
            dist["regions"] = tuple(draw(st.lists(
                st.sampled_from([e.region for e in edgepoints]), min_size=1, unique=True)))
            dist["global_max"] = None
        elif how == "edgepoints":
            dist["edgepoints"] = tuple(draw(st.lists(st.sampled_from(names), min_size=1,
                                                     unique=True)))
            dist["global_max"] = None
        tiers = [Tier(name="web", command=draw(st.lists(TEXT.filter(str.strip), min_size=1,
                                                        max_size=3)),
                      env=draw(st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,5}", fullmatch=True)
                                               .filter(lambda k: k != "PORT"), TEXT, max_size=3)),
                      secrets=tuple(draw(st.lists(st.sampled_from(["DB_URL", "TOKEN"]),
                                                  unique=True))),
                      resources=Resources(cpu=draw(st.decimals("0.01", 4, places=2)),
                                          memory_mb=draw(st.integers(16, 4096))),
                      entry=True)]
        if draw(st.booleans()):
            tiers.append(Tier(name="side", command="sleep 1", port=7000, health=None))
        apps.append(Application(
            name=f"app{i}", version=draw(st.from_regex(r"[0-9][0-9a-z.+-]{0,8}", fullmatch=True)),
            owner=Owner(id="o", organisation=draw(st.none() | TEXT)),
            vendor=draw(TEXT), priority=draw(st.integers(0, 100)),
            routing=Routing(hosts=(f"app{i}.example.com",)), source=Source(path="."),
            tiers=tuple(tiers),
            warmup=tuple(draw(st.lists(st.builds(WarmupRequest, path=st.just("/w"),
                                                 body=st.none() | TEXT,
                                                 headers=st.dictionaries(NAMES, TEXT, max_size=2)),
                                       max_size=2))),
            cleave=Cleave(edge=("GET /a/*",), origin=("POST /b",), affinity=draw(st.booleans()),
                          origin_url="https://o.example.com"),
            distribution=Distribution(**dist),
            sla=SLA(max_response_ms=draw(st.integers(1, 10_000)),
                    percentile=draw(st.floats(50, 99.99)),
                    users_per_instance=draw(st.integers(1, 500)),
                    scale_down_below=draw(st.floats(0, 0.99)),
                    panic_factor=draw(st.floats(1.01, 10))),
            budget=Budget(monthly=f"{draw(st.decimals(0, 100_000, places=2))} EUR"),
        ))
    return Spec(network=net, applications=tuple(apps))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_plan_json_round_trip(s):
    p = compile_plan(s)
    text = p.to_json()
    back = Plan.model_validate_json(text)
    assert back == p
    assert back.to_json() == text
    assert compile_plan(s).to_json() == text  # and deterministic
    for a in p.apps:
        mine = [pl for pl in p.placements if pl.app == a.name]
        assert [pl.edgepoint for pl in mine] == list(a.edgepoints)
        assert sum(pl.cost_ceiling for pl in mine) == a.cost_ceiling
        assert all(pl.cost_ceiling <= pl.global_share <= pl.scaling.max for pl in mine)
        dist = s.application(a.name).distribution
        if dist.global_max is not None:
            assert sum(pl.global_share for pl in mine) == min(dist.global_max,
                                                               dist.max * len(mine))
