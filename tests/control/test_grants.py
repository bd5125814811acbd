"""The one rule for owner requests, as pure decisions: an app plan checked with the spec's
models (`check_app_plan`) and authorised against the operator's grants (`authorise`)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from _netkit import write_network_policy
from edgeshot.control._config import ControllerConfig
from edgeshot.control._grants import OwnerGrant, Taken, authorise, forbidden_host, parse_key, takes
from edgeshot.plan import AppPlan, check_app_plan, compile_plan
from edgeshot.spec import load

APPS = '''
bee = Application(
    name="bee", version="1.0", owner=Owner(id="bee"), vendor="bee-isv",
    routing=Routing(hosts=("bee.test",)), source=Source(path="bee-src"),
    tiers=(Tier(name="web", command="python3 app.py"),),
    cleave=Cleave(edge=("GET /api*",), origin=("POST /api/orders",),
                  origin_url="http://origin.bee.test/"),
    distribution=Distribution(max=2), sla=SLA(max_response_ms=200, users_per_instance=5),
    budget=Budget(monthly="10 EUR"),
    load_test=LoadTest(users=5, spawn_rate=5, duration_s=5, paths=(WeightedPath(path="/"),)),
)
shop = Application(
    name="shop", version="1.0", owner=Owner(id="shop"), routing=Routing(hosts=("shop.test",)),
    source=Source(path="shop-src"), tiers=(Tier(name="web", command="python3 app.py"),),
    distribution=Distribution(max=2), sla=SLA(max_response_ms=200, users_per_instance=5),
    budget=Budget(monthly="10 EUR"),
)
'''


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("grants")
    for s in ("bee-src", "shop-src"):
        (d / s).mkdir()
    return compile_plan(load(write_network_policy(
        d, APPS, name="g", subnets=(250, 4),
        pricing='Pricing(cpu_second="0.00001", memory_gb_second="0.000001", network_gb="0.01")')))


def changed(app: AppPlan, **fields) -> AppPlan:
    return AppPlan.model_validate({**app.model_dump(mode="json"), **fields})


def test_a_compiled_plan_passes_the_spec_checks(plan):
    assert [check_app_plan(a) for a in plan.apps] == [[], []]


BAD_PLANS = [  # (fields changed, start of the one problem expected)
    ({"version": "../../x"}, "version: must be letters"),
    ({"version": "<script>"}, "version: must be letters"),
    ({"name": "Bee!"}, "name: must be a DNS label"),
    ({"hosts": ["<script>"]}, "routing.hosts: '<script>' is not a lowercase host name"),
    ({"path_prefix": "/a*"}, "routing.path_prefix: a routing path prefix takes no wildcards"),
    ({"routes": [{"method": "GET", "path": "/x", "to": "edge", "transactional": False,
                  "regex": "^(/x"}]}, "routes.0.regex: '^(/x' is not what '/x' compiles to"),
    ({"routes": [{"method": "GET", "path": "x y", "to": "edge", "transactional": False,
                  "regex": "^x y"}]}, "cleave.edge.0.path: path pattern 'x y' must start"),
    ({"routes": [{"method": "GET", "path": "/x", "to": "edge", "transactional": True,
                  "regex": "^/x"}]}, "routes.0.transactional: only origin routes"),
    ({"routes": [{"method": "BREW", "path": "/x", "to": "edge", "transactional": False,
                  "regex": "^/x"}]}, "cleave.edge.0.method: unknown method 'BREW'"),
    ({"origin_url": "javascript:alert(1)"}, "cleave.origin_url: URL scheme should be"),
    ({"default_route": "elsewhere"}, "cleave.default: Input should be 'edge' or 'origin'"),
    ({"load_test": {"users": 0}}, "load_test.users: Input should be greater than or equal"),
]


@pytest.mark.parametrize("fields,expected", BAD_PLANS, ids=[str(f) for f, _ in BAD_PLANS])
def test_a_plan_that_validate_would_refuse_is_refused_naming_the_field(plan, fields, expected):
    problems = check_app_plan(changed(plan.app("bee"), **fields))
    assert problems and problems[0].startswith(expected), problems


def test_tier_problems_are_named_like_in_a_policy_file(plan):
    bee = plan.app("bee").model_dump(mode="json")
    tier = {**bee["tiers"][0], "env": {"PORT": "1"}}
    problems = check_app_plan(AppPlan.model_validate({**bee, "tiers": [tier, tier]}))
    assert any(p.startswith("tiers.0.env: PORT is set by edgeshot") for p in problems), problems


TAKEN = [Taken(("shop.test", "/"), "shop", "shop"), Taken(("*", "/static"), "cdn", "ops")]
NET = frozenset({"10.1.0.5", "ctl.example.net"})
GRANT = OwnerGrant(routing=("*.bee.test", "api.test/bee", "*/bee"),
                   origins=("https://orders.bee.example",), max_cpu=Decimal(1),
                   max_memory_mb=512, max_priority=60)

DECISIONS = [  # (fields changed, grant, expected reasons (starts), why)
    ({}, OwnerGrant(), [], "the plan as the operator placed it"),
    ({"version": "2.0", "tiers": None}, OwnerGrant(), [], "a new version, new command"),
    ({"hosts": ["shop.test"], "path_prefix": "/catalog"}, GRANT,
     ["routing: shop.test/catalog was not granted", "routing: shop.test/catalog overlaps"],
     "another owner's host"),
    ({"hosts": ["x.bee.test"]}, GRANT, [], "a granted wildcard"),
    ({"hosts": ["bee.test.evil"]}, GRANT, ["routing: bee.test.evil/ was not granted"],
     "not below the wildcard"),
    ({"hosts": ["api.test"], "path_prefix": "/bee/v2"}, GRANT, [], "below a granted prefix"),
    ({"hosts": ["api.test"], "path_prefix": "/b"}, GRANT, ["routing: api.test/b was not"],
     "above a granted prefix"),
    ({"hosts": [], "path_prefix": "/bee"}, GRANT, [], "any host, a granted prefix"),
    ({"hosts": [], "path_prefix": "/static/x"}, OwnerGrant(routing=("*/static",)),
     ["routing: */static/x overlaps */static of another owner's app 'cdn'"],
     "granted, but another owner's"),
    ({"origin_url": "http://127.0.0.1:8404/", "default_route": "origin"}, GRANT,
     ["origin_url: 127.0.0.1 is a loopback"], "the dispatcher's stats"),
    ({"origin_url": "http://169.254.169.254/latest/"}, GRANT,
     ["origin_url: 169.254.169.254 is the host itself or a metadata service"], "metadata"),
    ({"origin_url": "http://10.1.0.5:7703/"}, GRANT,
     ["origin_url: 10.1.0.5 is one of the network's own machines"], "the controller"),
    ({"origin_url": "http://[::1]/"}, GRANT, ["origin_url: ::1 is a loopback"], "IPv6"),
    ({"origin_url": "https://elsewhere.example/"}, GRANT,
     ["origin_url: https://elsewhere.example/ is not the network's origin"], "not allowed"),
    ({"origin_url": "https://orders.bee.example/v1"}, GRANT, [], "allow-listed"),
    ({"source": "/etc"}, GRANT, ["source: fixed by the network's operator"], "a server path"),
    ({"vendor": "acme"}, GRANT, ["vendor: fixed by the network's operator to 'bee-isv'"],
     "another vendor"),
    ({"owner": "shop"}, GRANT, ["owner: fixed"], "other owner"),
    ({"organisation": "acme"}, GRANT, ["organisation: fixed"], "an organisation"),
    ({"trusted": False, "edgepoints": ["eu"]}, OwnerGrant(), ["trusted: fixed", "edgepoints: fixed"],
     "placement fields"),
    ({"priority": 90}, GRANT, ["priority: 90 is above the owner's quota (60)"], "priority"),
    ({"priority": 51}, OwnerGrant(), ["priority: 51 is above the owner's quota (50)"],
     "no quota: the plan's priority"),
    ({"cpu": "1.5"}, GRANT, ["tiers.resources.cpu: 1.5 cores in all is above"], "cpu quota"),
    ({"memory_mb": 1024}, GRANT, ["tiers.resources.memory_mb: 1024 MiB"], "memory quota"),
    ({"memory_mb": 1024, "cpu": "8"}, OwnerGrant(), [], "no quota declared"),
]


@pytest.mark.parametrize("fields,grant,expected,why", DECISIONS, ids=[d[3] for d in DECISIONS])
def test_authorise(plan, fields, grant, expected, why):
    bee = plan.app("bee")
    data = bee.model_dump(mode="json")
    tier = dict(data["tiers"][0])
    if "tiers" in fields:
        fields.pop("tiers")
        tier["command"] = ["sh", "-c", "anything"]
    for k in ("cpu", "memory_mb"):
        if k in fields:
            tier[k] = fields.pop(k)
    app = AppPlan.model_validate({**data, **fields, "tiers": [tier]})
    reasons = authorise(app, bee, grant, TAKEN, NET)
    assert len(reasons) == len(expected), reasons
    for r, e in zip(reasons, expected, strict=True):
        assert r.startswith(e), (r, e)


@pytest.mark.parametrize("key,other,took", [
    (("shop.test", "/catalog"), ("shop.test", "/"), True),
    (("shop.test", "/"), ("shop.test", "/catalog"), True),
    (("shop.test", "/a"), ("shop.test", "/b"), False),
    (("x.shop.test", "/"), ("*.shop.test", "/"), True),
    (("*.shop.test", "/"), ("x.shop.test", "/"), False),  # the exact host is routed first
    (("shop.test", "/x"), ("*", "/"), False),
    (("*", "/x/y"), ("*", "/x"), True),
    (("*", "/x"), ("shop.test", "/"), False),
    (("a.test", "/"), ("b.test", "/"), False),
])
def test_a_routing_key_takes_another_s_requests(key, other, took):
    assert takes(key, other) is took


def test_grants_are_read_from_the_controller_configuration(tmp_path):
    (tmp_path / "c.toml").write_text(
        'state_dir = "s"\nplan = "p.json"\nbase_dir = "."\ntokens_file = "t"\n'
        'agent_token_file = "a"\nedge_token_file = "e"\n'
        '[owners.bee]\nrouting = ["*.bee.test", "api.test/bee"]\n'
        'origins = ["https://orders.bee.example"]\nmax_cpu = "2"\n')
    cfg = ControllerConfig.load(tmp_path / "c.toml")
    assert cfg.owners["bee"].routing == ("*.bee.test", "api.test/bee")
    assert cfg.owners["bee"].max_cpu == Decimal(2)
    (tmp_path / "d.toml").write_text(cfg.to_toml())  # written back, read the same
    assert ControllerConfig.load(tmp_path / "d.toml").owners == cfg.owners


@pytest.mark.parametrize("grant,error", [
    ({"origins": ["http://127.0.0.1:9/"]}, "127.0.0.1 is a loopback"),
    ({"origins": ["ftp://x.example"]}, "is not an http:// or https:// URL"),
    ({"routing": ["a b"]}, "must be 'host', '*.domain'"),
])
def test_a_grant_the_rule_would_refuse_anyway_is_a_configuration_error(grant, error):
    with pytest.raises(ValueError, match=error.replace("*", r"\*").replace(".", r"\.")):
        OwnerGrant.model_validate(grant)


def test_forbidden_hosts():
    assert forbidden_host("origin.example", NET) is None
    assert forbidden_host("LOCALHOST", NET) and forbidden_host("0.0.0.0", NET)
    assert forbidden_host("ctl.example.net", NET)
    assert parse_key("*/b") == ("*", "/b")


@pytest.mark.parametrize("fields,expected", [
    ({}, None),
    ({"version": "../../x"}, "version: must be letters"),
    ({"id": "other/eu"}, "id: 'other/eu' is not '<app>/<edgepoint>'"),
    ({"global_share": 10**26}, "scaling.global_share: 100000000000000000000000000 is not"),
    ({"priority": 101}, "priority: Input should be less than or equal to 100"),
])
def test_a_placement_is_checked_like_its_plan(plan, fields, expected):
    from edgeshot.plan import check_placement
    p = plan.placements[0]
    problems = check_placement(p.model_copy(update=fields))
    assert (problems[0][:len(expected)] if problems else None) == expected, problems
