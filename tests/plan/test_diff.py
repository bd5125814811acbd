"""diff(old, new): added, changed and removed resources, field by field, with cost deltas."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from edgeshot.plan import Money, PlanDiff, compile_plan, diff
from edgeshot.spec import Budget, Cleave, Controller, Pricing, Resources, Tier, WarmupRequest, load

from .builders import ASH, FSN, HEL, NBG, PRICING, app, network, spec, tier


def base(**net):
    """demo network (fsn x2, hel, ash); shop everywhere, blog in eu-central."""
    return spec(network(**net), app("shop", distribution={"max": 2, "global_max": 5}),
                app("blog", distribution={"regions": ("eu-central",)}))


def _summary(changes: PlanDiff) -> list[tuple[str, str, str]]:
    return [(c.action, c.kind, c.id) for c in changes.changes]


def _fields(changes: PlanDiff, kind: str, id_: str) -> dict[str, tuple]:
    [change] = [c for c in changes.changes if (c.kind, c.id) == (kind, id_)]
    return {f.path: (f.old, f.new) for f in change.fields}


CASES = [
    # (why, new spec, expected (action, kind, id) in review order, summary line)
    ("no change", base(), [], "Plan: 0 to add, 0 to change, 0 to destroy"),
    (
        "add an edgepoint: its server, the edgepoint and the placements on it",
        base(edgepoints=(FSN, HEL, ASH, NBG)),
        [("add", "server", "nbg-1"), ("add", "edgepoint", "nbg"),
         ("change", "app", "blog"), ("change", "app", "shop"),
         ("add", "placement", "blog/nbg"), ("change", "placement", "shop/hel"),
         ("add", "placement", "shop/nbg")],
        "Plan: 4 to add, 3 to change, 0 to destroy; cost +3.79 EUR/month servers, "
        "+57.81 EUR/month apps (upper estimate)",
    ),
    (
        "remove an app: the app and its placements",
        spec(network(), app("shop", distribution={"max": 2, "global_max": 5})),
        [("remove", "app", "blog"), ("remove", "placement", "blog/fsn")],
        "Plan: 0 to add, 0 to change, 2 to destroy; cost -57.82 EUR/month apps (upper estimate)",
    ),
    (
        "bump a version: changes in place, never destroy and create",
        spec(network(), app("shop", version="1.1.0", distribution={"max": 2, "global_max": 5}),
             app("blog", distribution={"regions": ("eu-central",)})),
        [("change", "app", "shop"), ("change", "placement", "shop/ash"),
         ("change", "placement", "shop/fsn"), ("change", "placement", "shop/hel")],
        "Plan: 0 to add, 4 to change, 0 to destroy",
    ),
    (
        "change pricing: a network change, and the apps' estimates follow",
        base(pricing=Pricing(**(PRICING | {"cpu_second": "0.00002"}))),
        [("change", "network", "demo"), ("change", "app", "blog"), ("change", "app", "shop"),
         ("change", "placement", "blog/fsn")],
        "Plan: 0 to add, 4 to change, 0 to destroy; cost +183.96 EUR/month apps (upper estimate)",
    ),
    (
        "resize a server type: a server change with its price",
        base(edgepoints=(FSN, HEL.model_copy(update={"server_type": "cx42"}), ASH)),
        [("change", "server", "hel-1")],
        "Plan: 0 to add, 1 to change, 0 to destroy; cost +12.61 EUR/month servers",
    ),
    (
        "remove a route: the app changes, and the route is named",
        spec(network(), app("shop", distribution={"max": 2, "global_max": 5},
                            cleave=Cleave(edge=("GET /catalog", "POST /cart/*"),
                                          origin=("POST /checkout",))),
             app("blog", distribution={"regions": ("eu-central",)})),
        [("change", "app", "shop")],
        "Plan: 0 to add, 1 to change, 0 to destroy",
    ),
]


@pytest.mark.parametrize(("new", "expected", "summary"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_diff(new, expected, summary):
    old_plan, new_plan = compile_plan(base()), compile_plan(new)
    changes = diff(old_plan, new_plan)
    assert _summary(changes) == expected
    assert changes.summary() == summary
    assert changes.empty is (not expected)
    for c in changes.changes:
        if c.action == "change":
            assert c.fields, f"{c.kind} {c.id} changed but names no field"


def test_add_an_edgepoint_field_by_field():
    changes = diff(compile_plan(base()), compile_plan(base(edgepoints=(FSN, HEL, ASH, NBG))))
    server = _fields(changes, "server", "nbg-1")
    assert server["name"] == (None, "nbg-1")
    assert server["roles"] == (None, ["agent", "edge"])
    assert server["slot_subnet"][0] is None and server["slot_subnet"][1].endswith("/24")
    # The other servers keep their slot subnets: only the new edgepoint's things change.
    assert not [c for c in changes.changes if c.kind == "server" and c.action != "add"]
    assert server["monthly_cost.amount"] == (None, "3.79")
    # shop: its global max (5) is shared anew, 2+1+1+1 (was 2+2+1): no dearer at most, but its
    # cost ceiling rises to one instance per edgepoint.
    assert _fields(changes, "app", "shop") == {
        "edgepoints": (["fsn", "hel", "ash"], ["fsn", "hel", "ash", "nbg"]),
        "cost_ceiling": (3, 4),
    }
    assert _fields(changes, "placement", "shop/hel") == {"global_share": (2, 1)}
    assert _fields(changes, "placement", "shop/nbg")["global_share"] == (None, 1)
    # blog (eu-central, max 2, no global max) now also runs in nbg: twice the upper estimate
    blog = _fields(changes, "app", "blog")
    assert blog["estimate_high.amount"] == ("57.82", "115.63")
    [blog_change] = [c for c in changes.changes if c.id == "blog"]
    assert blog_change.monthly_delta == Money(amount=Decimal("57.81"), currency="EUR")
    [added] = [c for c in changes.changes if c.id == "nbg-1"]
    assert added.monthly_delta == Money(amount=Decimal("3.79"), currency="EUR")
    assert changes.infrastructure_delta == Money(amount=Decimal("3.79"), currency="EUR")
    assert changes.apps_delta == Money(amount=Decimal("57.81"), currency="EUR")


def test_bump_a_version_field_by_field():
    new = spec(network(), app("shop", version="1.1.0", distribution={"max": 2, "global_max": 5}),
               app("blog", distribution={"regions": ("eu-central",)}))
    changes = diff(compile_plan(base()), compile_plan(new))
    assert _fields(changes, "app", "shop") == {"version": ("1.0.0", "1.1.0")}
    assert _fields(changes, "placement", "shop/fsn") == {"version": ("1.0.0", "1.1.0")}
    assert all(c.monthly_delta is None for c in changes.changes)
    assert changes.infrastructure_delta.amount == 0 and changes.apps_delta.amount == 0


def test_change_pricing_field_by_field():
    new = base(pricing=Pricing(**(PRICING | {"cpu_second": "0.00002", "currency": "EUR"})))
    changes = diff(compile_plan(base()), compile_plan(new))
    assert _fields(changes, "network", "demo") == {"pricing.cpu_second": ("0.00001", "0.00002")}
    # busy instance-month: 28.908 -> 55.188. shop: 5 instances; blog: 2, and its budget
    # (100) now buys one busy instance, so its ceiling falls from 2 to 1.
    assert _fields(changes, "app", "shop") == {"estimate_high.amount": ("144.54", "275.94")}
    assert _fields(changes, "app", "blog") == {"estimate_high.amount": ("57.82", "110.38"),
                                                "cost_ceiling": (2, 1),
                                                "within_budget": (True, False)}
    assert _fields(changes, "placement", "blog/fsn") == {"cost_ceiling": (2, 1)}
    deltas = {c.id: c.monthly_delta for c in changes.changes}
    assert deltas["shop"] == Money(amount=Decimal("131.40"), currency="EUR")
    assert deltas["blog"] == Money(amount=Decimal("52.56"), currency="EUR")
    assert deltas["demo"] is None
    assert changes.apps_delta.amount == Decimal("183.96")
    assert changes.infrastructure_delta.amount == 0


def test_remove_a_route_names_the_route():
    """GET and POST /cart/* share a path: each must still be told apart in a diff."""
    new = spec(network(), app("shop", distribution={"max": 2, "global_max": 5},
                              cleave=Cleave(edge=("GET /catalog", "POST /cart/*"),
                                            origin=("POST /checkout",))),
               app("blog", distribution={"regions": ("eu-central",)}))
    changes = diff(compile_plan(base()), compile_plan(new))
    assert _fields(changes, "app", "shop") == {
        "routes[GET /cart/*].method": ("GET", None),
        "routes[GET /cart/*].path": ("/cart/*", None),
        "routes[GET /cart/*].regex": ("^/cart/.*$", None),
        "routes[GET /cart/*].to": ("edge", None),
        "routes[GET /cart/*].transactional": (False, None),
    }


def test_tier_changes_are_named_by_tier():
    two = (tier("web", entry=True, env={"MODE": "a"}),
           tier("cache", port=7000, resources=Resources(cpu="0.25", memory_mb=64)))
    changed = (tier("web", entry=True, env={"MODE": "b", "NEW": "1"}),
               Tier(name="cache", command="python3 app.py", port=7000,
                    resources=Resources(cpu="0.5", memory_mb=64)))
    old = compile_plan(spec(network(), app(tiers=two)))
    new = compile_plan(spec(network(), app(tiers=changed)))
    fields = _fields(diff(old, new), "app", "shop")
    assert fields["tiers[web].env.MODE"] == ("a", "b")
    assert fields["tiers[web].env.NEW"] == (None, "1")
    assert fields["tiers[cache].cpu"] == ("0.25", "0.5")


def test_repeated_list_items_fall_back_to_positions():
    old = compile_plan(spec(network(), app(warmup=(WarmupRequest(path="/", count=1),
                                                   WarmupRequest(path="/", count=2)))))
    new = compile_plan(spec(network(), app(warmup=(WarmupRequest(path="/", count=1),
                                                   WarmupRequest(path="/", count=3)))))
    assert _fields(diff(old, new), "app", "shop") == {"warmup[1].count": (2, 3)}


def test_remove_an_edgepoint_and_budget_cost_deltas():
    old = compile_plan(base())
    new = compile_plan(spec(network(edgepoints=(FSN, HEL)),
                            app("shop", distribution={"max": 2, "global_max": 5},
                                budget=Budget(monthly="200 EUR")),
                            app("blog", distribution={"regions": ("eu-central",)})))
    changes = diff(old, new)
    assert ("remove", "server", "ash-1") in _summary(changes)
    assert ("remove", "edgepoint", "ash") in _summary(changes)
    assert ("remove", "placement", "shop/ash") in _summary(changes)
    [server] = [c for c in changes.changes if c.id == "ash-1"]
    assert server.monthly_delta == Money(amount=Decimal("-7.55"), currency="EUR")
    assert _fields(changes, "app", "shop")["budget.amount"] == ("100", "200")
    # shop on fsn and hel: 2 + 2 instances instead of 2 + 2 + 1
    assert changes.summary() == (
        "Plan: 0 to add, 3 to change, 3 to destroy; "
        "cost -7.55 EUR/month servers, -28.91 EUR/month apps (upper estimate)")


def test_diff_is_symmetric_in_counts():
    a, b = compile_plan(base()), compile_plan(base(edgepoints=(FSN, HEL, ASH, NBG)))
    forth, back = diff(a, b), diff(b, a)
    assert (forth.count("add"), forth.count("change"), forth.count("remove")) == (
        back.count("remove"), back.count("change"), back.count("add"))
    assert forth.infrastructure_delta.amount == -back.infrastructure_delta.amount


def test_diff_against_itself_is_empty_for_every_example():
    root = Path(__file__).resolve().parents[2]
    for path in ("examples/shop/policy_local.py", "examples/shop/policy_hetzner.py",
                 "examples/hello/policy.py"):
        p = compile_plan(load(root / path))
        changes = diff(p, compile_plan(load(root / path)))
        assert changes.empty and changes.summary() == "Plan: 0 to add, 0 to change, 0 to destroy"


def test_controller_change():
    old = compile_plan(base())
    new = compile_plan(base(controller=Controller(location="fsn1", server_type="cx32")))
    changes = diff(old, new)
    assert _summary(changes) == [("change", "controller", "controller")]
    assert _fields(changes, "controller", "controller") == {
        "location": ("nbg1", "fsn1"), "server_type": ("cx22", "cx32"),
        "monthly_cost.amount": ("3.79", "6.80")}
    assert changes.summary() == (
        "Plan: 0 to add, 1 to change, 0 to destroy; cost +3.01 EUR/month servers")
