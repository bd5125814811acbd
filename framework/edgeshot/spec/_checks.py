"""Checks that need the whole declaration: what a reviewer would catch.

Pure functions over already-built spec objects; each finding names the object
it is about and the field path below it, so `load()` can print file:line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, get_args, get_origin

from ._base import SpecModel, subtree_valid
from ._catalog import CATALOGS, REGIONS, RegionInfo
from ._command import command_problems
from ._cost import instance_month, money
from ._models import Application, Controller, EdgeNetwork, Edgepoint
from ._routes import is_glob, methods_meet, patterns_meet, specificity

M = TypeVar("M", bound=SpecModel)


@dataclass(frozen=True)
class Finding:
    obj: SpecModel
    field: str  # path below obj, "" for the object itself
    value: Any
    message: str


def region_names(network: EdgeNetwork) -> set[str]:
    return set(REGIONS) | {r.name for r in network.regions}


def region_info(network: EdgeNetwork, name: str) -> RegionInfo:
    """Coordinates of a region: the network's own regions first, then the built-in table."""
    for r in network.regions:
        if r.name == name:
            return RegionInfo(r.latitude, r.longitude, r.label)
    return REGIONS[name]


class EdgepointIndex:
    """The network's edgepoints by name and by region, built once for many apps."""

    def __init__(self, network: EdgeNetwork) -> None:
        self.all = list(network.edgepoints)
        self.by_name = {e.name: e for e in self.all}
        self.by_region: dict[str, list[Edgepoint]] = {}
        for e in self.all:
            self.by_region.setdefault(e.region, []).append(e)
        self.order = {e.name: i for i, e in enumerate(self.all)}


def select_edgepoints(
    app: Application, network: EdgeNetwork, index: EdgepointIndex | None = None
) -> list[Edgepoint]:
    """The edgepoints an app's distribution policy places it on, in a stable order.

    Named edgepoints in the order given; otherwise the network's edgepoints in
    the selected regions (all regions when none are named), in network order;
    at most `max_edgepoints` of them.
    """
    idx = index or EdgepointIndex(network)
    dist = app.distribution
    if dist.edgepoints:
        chosen = [idx.by_name[n] for n in dist.edgepoints if n in idx.by_name]
    elif dist.regions:
        chosen = [e for r in set(dist.regions) for e in idx.by_region.get(r, ())]
        chosen.sort(key=lambda e: idx.order[e.name])
    else:
        chosen = idx.all
    if dist.max_edgepoints is not None:
        chosen = chosen[: dist.max_edgepoints]
    return list(chosen)


def check(network: EdgeNetwork | None, apps: list[Application]) -> list[Finding]:
    """Every cross-object finding.

    A check runs when the parts it reads are valid on their own; parts that
    failed have reported their own problems already, and the rest of the
    declaration is still checked, so one load shows everything (a wrong peak
    window in the network's pricing does not hide an unknown location).
    """
    findings: list[Finding] = []
    net = network
    if net is not None:
        findings += _network(net)
    # what the apps' checks read of the network, each when valid
    places = net is not None and _ok(net, "edgepoints", "regions")
    prices = places and _ok(net, "pricing")  # type: ignore[arg-type]
    origin = net is not None and _ok(net, "origin")
    named = [a for a in apps if _ok(a, "name", "routing", "owner")]
    findings += _unique_apps(named)
    for app in apps:
        if _ok(app, "tiers"):
            findings += _commands(app)
        if _ok(app, "cleave"):
            findings += _cleave(app, net if origin else None)
        if _ok(app, "sla", "distribution", "load_test"):
            findings += _sla(app)
        if places and _ok(app, "distribution", "load_test"):
            findings += _against_network(app, net)  # type: ignore[arg-type]
        if prices and _ok(app, "distribution", "budget", "tiers"):
            findings += _budget(app, net)  # type: ignore[arg-type]
    return findings


def _ok(obj: SpecModel, *fields: str) -> bool:
    """The named fields of `obj` hold valid values (a half-built object may hold raw input:
    None, text, a list or an object of another kind where an object belongs). A plain
    field counts when the object validated, or when it is text its validation accepted."""
    for name in fields:
        if name not in obj.__dict__:
            return False
        value = obj.__dict__[name]
        annotation = type(obj).model_fields[name].annotation
        if value is None:
            if type(None) not in get_args(annotation) or obj.field_failed(name):
                return False
            continue
        models = _models_in(annotation)
        if not models:
            if not (obj.is_valid or (isinstance(value, str) and not obj.field_failed(name))):
                return False
            continue
        many = get_origin(annotation) in (tuple, list)
        if many != isinstance(value, (tuple, list)):
            return False
        for item in value if many else (value,):
            if not (isinstance(item, models) and subtree_valid(item)):
                return False
    return True


def _models_in(annotation: Any) -> tuple[type[SpecModel], ...]:
    """The spec models a field's type names (Budget; Tier in tuple[Tier, ...]; ...)."""
    if isinstance(annotation, type) and issubclass(annotation, SpecModel):
        return (annotation,)
    return tuple(m for arg in get_args(annotation) for m in _models_in(arg))


def _network(net: EdgeNetwork) -> Iterator[Finding]:
    """The network's own findings; each runs on the parts it reads that are valid."""
    for region in _valid(net, "regions"):
        if region.name in REGIONS:
            yield Finding(
                region, "name", region.name, "is a built-in region; give your region another name"
            )
    edgepoints = _items(net, "edgepoints", Edgepoint)  # valid or not: each field on its own
    named = [e for e in edgepoints if _ok(e, "name")]
    for name, n in Counter(e.name for e in named).items():
        if n > 1:
            dup = [e for e in named if e.name == name][1]
            yield Finding(
                dup, "name", name, f"edgepoint names must be unique; {name!r} is declared {n} times"
            )
    kind = net.provider.kind if _ok(net, "provider") else None
    if kind == "local":
        for ep in edgepoints:
            if _ok(ep, "servers") and ep.servers > 254:
                yield Finding(ep, "servers", ep.servers,
                              "a local edgepoint's servers share its 127.x.y.0/24: at most 254")
    known_regions = region_names(net) if _ok(net, "regions") else None
    controller = _items(net, "controller", Controller)
    for site in [*edgepoints, *controller]:
        if (isinstance(site, Edgepoint) and known_regions is not None and _ok(site, "region")
                and site.region not in known_regions):
            yield Finding(
                site,
                "region",
                site.region,
                f"unknown region; allowed: {', '.join(sorted(known_regions))} "
                "(or add a Region to the network)",
            )
        if kind is not None and kind != "local":
            catalog = CATALOGS[kind]
            if _ok(site, "location") and site.location not in catalog.locations:
                yield Finding(
                    site,
                    "location",
                    site.location,
                    f"not a {kind} location; allowed: {', '.join(sorted(catalog.locations))}",
                )
            if _ok(site, "server_type") and site.server_type not in catalog.server_types:
                yield Finding(
                    site,
                    "server_type",
                    site.server_type,
                    f"not a {kind} server type; allowed: "
                    f"{', '.join(sorted(catalog.server_types))}",
                )
    if _ok(net, "slot_network", "edgepoints") and (
            net.slot_network.prefixlen > 24 - _bits(sum(e.servers for e in net.edgepoints))):
        yield Finding(
            net,
            "slot_network",
            str(net.slot_network),
            "too small: every server needs its own /24 of slot addresses",
        )


def _items(obj: SpecModel, name: str, cls: type[M]) -> list[M]:
    """The `cls` objects of a field holding one or a list of them, valid or half-built."""
    value = obj.__dict__.get(name)
    values = value if isinstance(value, (tuple, list)) else (value,)
    return [v for v in values if isinstance(v, cls)]


def _valid(obj: SpecModel, name: str) -> list[Any]:
    """The valid spec objects of a list field (a half-built parent may hold anything)."""
    value = obj.__dict__.get(name)
    if not isinstance(value, (tuple, list)):
        return []
    return [v for v in value if isinstance(v, SpecModel) and subtree_valid(v)]


def _bits(n: int) -> int:
    return max(0, (n - 1).bit_length())


def _unique_apps(apps: list[Application]) -> Iterator[Finding]:
    seen: dict[str, Application] = {}
    for app in apps:
        if app.name in seen:
            yield Finding(
                app,
                "name",
                app.name,
                f"app {app.name!r} is declared twice (also at {seen[app.name].written_at}); "
                "one version per app in a policy file — roll out versions with `edgeshot deploy`",
            )
        else:
            seen[app.name] = app
    keys: dict[tuple[str, str], Application] = {}
    for app in apps:
        for key in app.routing.keys():
            other = keys.setdefault(key, app)
            if other is not app:
                yield Finding(
                    app,
                    "routing",
                    f"{key[0]}{key[1]}",
                    f"routing key already used by app {other.name!r}: requests could not "
                    "tell the two apps apart",
                )
    owners: dict[str, Any] = {}
    for app in apps:
        other = owners.setdefault(app.owner.id, app.owner)
        if other != app.owner:
            yield Finding(
                app,
                "owner",
                app.owner.id,
                f"owner {app.owner.id!r} is declared twice with different details",
            )


def _cleave(app: Application, net: EdgeNetwork | None) -> Iterator[Finding]:
    cleave = app.cleave
    both = [("edge", i, r) for i, r in enumerate(cleave.edge)] + [
        ("origin", i, r) for i, r in enumerate(cleave.origin)
    ]
    repeats: set[int] = set()  # later copies of a route: reported once, compared no further
    for a in range(len(both)):
        if a in repeats:
            continue
        for b in range(a + 1, len(both)):
            side_a, _, ra = both[a]
            side_b, ib, rb = both[b]
            if b in repeats or not methods_meet(ra.method, rb.method):
                continue
            if (ra.method, ra.path) == (rb.method, rb.path):
                repeats.add(b)
                yield Finding(
                    app,
                    f"cleave.{side_b}[{ib}]",
                    str(rb),
                    f"route repeated (also in cleave.{side_a}); each route goes one way",
                )
            elif (
                side_a != side_b
                and specificity(ra.path) == specificity(rb.path)
                and (is_glob(ra.path) or is_glob(rb.path))
                and patterns_meet(ra.path, rb.path)
            ):
                yield Finding(
                    app,
                    f"cleave.{side_b}[{ib}]",
                    str(rb),
                    f"overlaps edge/origin route {ra} with equal specificity: some paths "
                    "would match both; make one more specific",
                )
    needs_origin = bool(cleave.origin) or cleave.default == "origin"
    has_origin = cleave.origin_url is not None or (net is not None and net.origin is not None)
    if needs_origin and not has_origin and (net is not None):
        yield Finding(
            app,
            "cleave.origin_url",
            None,
            "origin routes need an origin: set cleave.origin_url or the network's origin",
        )


def _commands(app: Application) -> Iterator[Finding]:
    """Variables in tier commands: only what the agent will expand (spec/_command.py)."""
    for tier in app.tiers:
        names = {*tier.env, "PORT"}
        for i, message in command_problems(tier.command, names, tier.secrets):
            yield Finding(tier, f"command[{i}]", tier.command[i], message)


def _sla(app: Application) -> Iterator[Finding]:
    sla, dist = app.sla, app.distribution
    if sla.warm_pool > dist.max:
        yield Finding(
            app,
            "sla.warm_pool",
            sla.warm_pool,
            f"more than distribution.max ({dist.max}) instances per edgepoint",
        )
    crit = app.load_test.criteria if app.load_test else None
    if crit and crit.max_response_ms and crit.max_response_ms > sla.max_response_ms:
        yield Finding(
            app,
            "load_test.criteria.max_response_ms",
            crit.max_response_ms,
            f"looser than the SLA's max_response_ms ({sla.max_response_ms}): "
            "a version could pass its test and break its SLA",
        )


def _against_network(app: Application, net: EdgeNetwork) -> Iterator[Finding]:
    dist = app.distribution
    known_regions = region_names(net)
    in_network = {e.region for e in net.edgepoints}
    for i, region in enumerate(dist.regions):
        if region not in in_network:
            allowed = ", ".join(sorted(in_network))
            what = (
                "unknown region"
                if region not in known_regions
                else "no edgepoint of the network is in this region"
            )
            yield Finding(app, f"distribution.regions[{i}]", region, f"{what}; allowed: {allowed}")
    names = {e.name for e in net.edgepoints}
    for i, name in enumerate(dist.edgepoints):
        if name not in names:
            yield Finding(
                app,
                f"distribution.edgepoints[{i}]",
                name,
                f"the network has no such edgepoint; allowed: {', '.join(sorted(names))}",
            )
    if app.load_test:
        for i, region in enumerate(app.load_test.regions):
            if region not in known_regions:
                yield Finding(
                    app,
                    f"load_test.regions[{i}]",
                    region,
                    f"unknown region; allowed: {', '.join(sorted(known_regions))}",
                )
    chosen = select_edgepoints(app, net)
    if not chosen:
        return
    if dist.global_max is not None and dist.global_max < dist.min * len(chosen):
        yield Finding(
            app,
            "distribution.global_max",
            dist.global_max,
            f"less than min ({dist.min}) x {len(chosen)} edgepoints = {dist.min * len(chosen)}",
        )
    slots = min(e.servers * e.slots_per_server for e in chosen)
    if dist.min > slots:
        yield Finding(
            app,
            "distribution.min",
            dist.min,
            f"more instances than the smallest chosen edgepoint has slots ({slots})",
        )


def _budget(app: Application, net: EdgeNetwork) -> Iterator[Finding]:
    dist, chosen = app.distribution, select_edgepoints(app, net)
    pricing, budget = net.pricing, app.budget.monthly
    if budget.currency != pricing.currency:
        yield Finding(
            app,
            "budget.monthly",
            str(budget),
            f"the network prices in {pricing.currency}; write the budget in {pricing.currency}",
        )
        return
    try:
        floor = instance_month(app, pricing, busy=False) * dist.min * len(chosen)
        floor_text = str(money(floor, pricing.currency))
        # the plan's estimates go up to max instances, busy, at peak prices
        money(instance_month(app, pricing, busy=True) * dist.max * len(chosen), pricing.currency)
    except ArithmeticError:  # decimal overflow or more digits than cents can hold
        yield Finding(
            app,
            "budget.monthly",
            str(budget),
            "the app's monthly cost is too large to compute: check the network's prices "
            "and distribution.min/max",
        )
        return
    if floor > budget.amount:
        yield Finding(
            app,
            "budget.monthly",
            str(budget),
            f"cannot pay for the minimum: {dist.min} instance(s) x {len(chosen)} edgepoint(s) "
            f"cost at least {floor_text} a month at the network's prices",
        )
