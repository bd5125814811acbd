"""Compile a validated spec into a plan: a pure function over plain data."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from ipaddress import IPv4Address, IPv4Network

from edgeshot.spec import (
    CATALOGS,
    Application,
    EdgeNetwork,
    EdgepointIndex,
    Spec,
    instance_month,
    region_info,
    round_money,
    select_edgepoints,
)
from edgeshot.spec._routes import specificity, to_regex

from ._models import (
    AppPlan,
    EdgepointPlan,
    Money,
    Placement,
    Plan,
    RoutePlan,
    ScalingPolicy,
    ServerPlan,
    TierPlan,
    gc_paused,
)
from ._share import divide


def compile_plan(spec: Spec) -> Plan:
    """Servers, edgepoints, apps and placements for `spec`; same spec, same plan."""
    with gc_paused():
        return _compile(spec)


def _compile(spec: Spec) -> Plan:
    net = spec.network
    private = _PrivateNetworks(net)
    servers, edgepoints = _servers(net, private)
    controller = _controller(net)
    index = EdgepointIndex(net)
    regions = {e.name: e.region for e in net.edgepoints}
    apps: list[AppPlan] = []
    placements: list[Placement] = []
    for app in sorted(spec.applications, key=lambda a: a.name):
        chosen = [e.name for e in select_edgepoints(app, net, index)]
        app_plan, app_placements = _app(app, net, chosen, regions)
        apps.append(app_plan)
        placements.extend(app_placements)
    infra = sum((s.monthly_cost.amount for s in (*servers, controller)), Decimal(0))
    currency = CATALOGS[net.provider.kind].currency
    return Plan.from_trusted(
        format=1,
        network=net.name,
        provider=net.provider.kind,
        pricing=net.pricing.model_dump(mode="json"),
        servers=tuple(servers),
        controller=controller,
        edgepoints=tuple(edgepoints),
        apps=tuple(apps),
        placements=tuple(placements),
        infrastructure_monthly=Money(amount=infra, currency=currency),
        image=None if net.provider.kind == "local" else net.provider.image,
        operators=tuple(str(o) for o in net.operators),
        private_network=private.block,
        controller_subnet=private.subnet("controller"),
    )


def _local_address(edgepoint_number: int, server_number: int) -> str:
    """Edgepoint N's servers on 127.<N/256>.<N%256>.<k>; the first (k=1) is its edge host."""
    return f"127.{edgepoint_number >> 8}.{edgepoint_number & 255}.{server_number}"


def _servers(
    net: EdgeNetwork, private: _PrivateNetworks
) -> tuple[list[ServerPlan], list[EdgepointPlan]]:
    catalog = CATALOGS[net.provider.kind]
    local = net.provider.kind == "local"
    http = net.provider.http_port if local else net.ports.http
    slot_subnets = _HashedSubnets.of(net.slot_network, 24, net.name)
    servers: list[ServerPlan] = []
    edgepoints: list[EdgepointPlan] = []
    for number, ep in enumerate(net.edgepoints, start=1):
        price = catalog.server_types.get(ep.server_type)
        private_subnet = private.subnet(f"edgepoint/{ep.name}")
        names = []
        for k in range(1, ep.servers + 1):
            edge_host = k == 1
            ports = {"agent": net.ports.agent}
            if edge_host:
                ports |= {"http": http, "edge": net.ports.edge, "stats": net.ports.stats}
            name = f"{ep.name}-{k}"
            names.append(name)
            servers.append(
                ServerPlan.from_trusted(
                    name=name,
                    edgepoint=ep.name,
                    roles=("agent", "edge") if edge_host else ("agent",),
                    provider=net.provider.kind,
                    location=ep.location,
                    server_type=ep.server_type,
                    region=ep.region,
                    address=_local_address(number, k) if local else None,
                    ports=ports,
                    slot_subnet=slot_subnets.take(name),
                    slots=ep.slots_per_server,
                    monthly_cost=Money(amount=price.monthly if price else Decimal(0),
                                       currency=catalog.currency),
                    private_address=private.address(private_subnet, k),
                )
            )
        region = region_info(net, ep.region)
        edgepoints.append(
            EdgepointPlan.from_trusted(
                name=ep.name, region=ep.region, latitude=region.latitude, longitude=region.longitude,
                location=ep.location, servers=tuple(names), edge_host=names[0],
                slots=ep.servers * ep.slots_per_server, private_subnet=private_subnet,
            )
        )
    return servers, edgepoints


def _controller(net: EdgeNetwork) -> ServerPlan:
    catalog = CATALOGS[net.provider.kind]
    local = net.provider.kind == "local"
    price = catalog.server_types.get(net.controller.server_type)
    region = catalog.locations.get(net.controller.location, "local" if local else "")
    return ServerPlan.from_trusted(
        name="controller",
        edgepoint=None,
        roles=("controller", "dispatcher"),
        provider=net.provider.kind,
        location=net.controller.location,
        server_type=net.controller.server_type,
        region=region,
        address="127.0.0.1" if local else None,
        ports={
            "http": net.provider.http_port if local else net.ports.http,
            "https": net.ports.https,
            "controller": net.ports.controller,
            "stats": net.ports.stats,
        },
        slot_subnet=None,
        slots=0,
        monthly_cost=Money(amount=price.monthly if price else Decimal(0), currency=catalog.currency),
        private_address=None,
    )


# --- private networks (cloud providers) ------------------------------------------
# Provisioning gives every edgepoint (and the controller) a network of its own: a
# Hetzner network, an AWS VPC, a DigitalOcean VPC. Their subnets are chosen here so
# that a reviewer sees them in the plan and the stacks never re-derive them.

_RFC1918 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
PRIVATE_PREFIX = 22  # room for an edgepoint's 1,000 servers plus what the clouds reserve
PRIVATE_OFFSET = 10  # a subnet's first server address: above what Hetzner, AWS and DO reserve
_ASSIGNS_OWN_ADDRESSES = {"local", "digitalocean"}  # no fixed private address to plan


class _HashedSubnets:
    """Subnets of one size carved from a block, each at a place chosen by a hash of a
    salt and its key (linear probing on a collision): adding or removing a key leaves
    the others' subnets as they are, so a plan diff shows only what really changed."""

    def __init__(self, base: int, count: int, prefix: int, salt: str) -> None:
        self._base, self._count, self._prefix, self._salt = base, count, prefix, salt
        self._used: set[int] = set()

    @classmethod
    def of(cls, block: IPv4Network, prefix: int, salt: str) -> _HashedSubnets:
        count = block.num_addresses >> (32 - prefix) if block.prefixlen <= prefix else 0
        return cls(int(block.network_address), count, prefix, salt)

    def take(self, key: str) -> str | None:
        if len(self._used) >= self._count:
            return None
        digest = hashlib.sha256(f"{self._salt}/{key}".encode()).digest()
        slot = int.from_bytes(digest[:8], "big") % self._count
        while slot in self._used:
            slot = (slot + 1) % self._count
        self._used.add(slot)
        return f"{IPv4Address(self._base + (slot << (32 - self._prefix)))}/{self._prefix}"


class _PrivateNetworks:
    """Each edgepoint's /22, from the largest free piece of the RFC 1918 block that holds
    the slot network, placed by `_HashedSubnets` keyed by the network's and the
    edgepoint's names. DigitalOcean also refuses VPC ranges that overlap within an
    account; the network's name in the hash keeps two edgeshot networks of one account
    apart (barring a hash collision).
    """

    def __init__(self, net: EdgeNetwork) -> None:
        self.block: str | None = None
        self._subnets = _HashedSubnets(0, 0, PRIVATE_PREFIX, net.name)
        self._pinned = net.provider.kind not in _ASSIGNS_OWN_ADDRESSES
        if net.provider.kind == "local":
            return
        block = next((b for b in _RFC1918 if net.slot_network.subnet_of(b)), None)
        if block is None:
            return
        self.block = str(block)
        free = sorted(block.address_exclude(net.slot_network),
                      key=lambda n: (-n.num_addresses, int(n.network_address)))
        if free:
            self._subnets = _HashedSubnets.of(free[0], PRIVATE_PREFIX, net.name)

    def subnet(self, key: str) -> str | None:
        return self._subnets.take(key)

    def address(self, subnet: str | None, number: int) -> str | None:
        """Server `number` (1-based) of an edgepoint: its fixed private address."""
        if subnet is None or not self._pinned:
            return None
        return str(IPv4Network(subnet).network_address + PRIVATE_OFFSET + number - 1)


def _routes(app: Application) -> tuple[RoutePlan, ...]:
    routes = [(r, "edge") for r in app.cleave.edge] + [(r, "origin") for r in app.cleave.origin]
    # Most specific first; at equal specificity a named method beats '*'; then text order.
    routes.sort(key=lambda rt: (-specificity(rt[0].path), rt[0].method == "*", rt[0].path, rt[0].method))
    return tuple(
        RoutePlan.from_trusted(method=r.method, path=r.path, to=to, transactional=r.transactional,
                                  regex=to_regex(r.path))
        for r, to in routes
    )


def _tiers(app: Application) -> tuple[TierPlan, ...]:
    entry = app.entry_tier.name
    return tuple(
        TierPlan.from_trusted(
            name=t.name, command=t.command, port=t.port, env=dict(sorted(t.env.items())),
            secrets=t.secrets, entry=t.name == entry, reseed_signal=t.reseed_signal,
            health_path=t.health.path if t.health else None,
            health_timeout_s=t.health.timeout_s if t.health else 0.0,
            start_timeout_s=t.health.start_timeout_s if t.health else 0.0,
            cpu=t.resources.cpu, memory_mb=t.resources.memory_mb,
        )
        for t in app.tiers
    )


def _app(
    app: Application, net: EdgeNetwork, chosen: list[str], regions: dict[str, str]
) -> tuple[AppPlan, list[Placement]]:
    dist, sla, pricing = app.distribution, app.sla, net.pricing
    n = len(chosen)
    shares = divide(dist.global_max, [dist.min] * n, [dist.max] * n)
    busy = instance_month(app, pricing, busy=True)
    idle = instance_month(app, pricing, busy=False)
    budget = app.budget.monthly.amount
    affordable = int(budget // busy) if busy > 0 else sum(shares)
    # Never below the minimum, nor below one per edgepoint: an app must be able
    # to serve its first user; the month's spend is held by the budget (billing).
    ceiling = min(max(affordable, dist.min * n, n), sum(shares))
    ceilings = divide(ceiling, [dist.min] * n, shares)
    high = busy * sum(shares)
    cleave = app.cleave
    origin = cleave.origin_url or net.origin
    scaling = ScalingPolicy.from_trusted(
        min=dist.min, max=dist.max, users_per_instance=sla.users_per_instance,
        max_response_ms=sla.max_response_ms, percentile=sla.percentile,
        scale_down_below=sla.scale_down_below, idle_s=sla.idle_s, warm_pool=sla.warm_pool,
        panic_factor=sla.panic_factor,
    )
    cur = pricing.currency
    plan = AppPlan.from_trusted(
        name=app.name, version=app.version, owner=app.owner.id,
        organisation=app.owner.organisation, vendor=app.vendor_name, priority=app.priority,
        hosts=app.routing.hosts, path_prefix=app.routing.path_prefix,
        source=app.source.path, install=app.source.install, trusted=app.source.trusted,
        tiers=_tiers(app),
        warmup=tuple(w.model_dump(mode="json") for w in app.warmup),
        routes=_routes(app), default_route=cleave.default,
        origin_url=str(origin) if origin else None, affinity=cleave.affinity,
        edgepoints=tuple(chosen),
        budget=Money.from_trusted(amount=budget, currency=cur),
        # The warm pool is kept restored like the minimum.
        estimate_low=Money.from_trusted(
            amount=round_money(idle * max(dist.min, sla.warm_pool) * n), currency=cur),
        estimate_high=Money.from_trusted(amount=round_money(high), currency=cur),
        cost_ceiling=ceiling,
        within_budget=high <= budget,
        load_test=app.load_test.model_dump(mode="json") if app.load_test else None,
    )
    placements = [
        Placement.from_trusted(
            id=f"{app.name}/{ep}", app=app.name, version=app.version, owner=app.owner.id,
            vendor=plan.vendor, edgepoint=ep, region=regions[ep], priority=app.priority,
            scaling=scaling, global_share=share, cost_ceiling=cost, affinity=cleave.affinity,
        )
        for ep, share, cost in zip(chosen, shares, ceilings, strict=True)
    ]
    return plan, placements

