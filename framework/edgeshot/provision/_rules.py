"""Who may reach what, and the labels every resource carries: pure functions over the plan.

The provider adapters turn these rules into Hetzner firewalls, AWS security groups
and DigitalOcean firewalls; the policy pack checks those against the same facts.

Sources are CIDRs, or one of two symbols each adapter resolves to an address:
`CONTROLLER` (the controller's public IPv4) and `EDGE_HOST` (the edgepoint's edge
host on the edgepoint's private network).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edgeshot.plan import Plan, ServerPlan

SSH_PORT = 22
WORLD = ("0.0.0.0/0", "::/0")
CONTROLLER = "@controller"
EDGE_HOST = "@edge-host"
# Ports anyone may reach: the dispatchers' and the conduit's API (bearer tokens guard it).
PUBLIC_PORTS = ("http", "https", "controller")

LABEL_NETWORK = "edgeshot-network"
LABEL_EDGEPOINT = "edgeshot-edgepoint"
LABEL_OWNER = "edgeshot-owner"
LABEL_ROLE = "edgeshot-role"
REQUIRED_LABELS = (LABEL_NETWORK, LABEL_OWNER)
# Hetzner's label values are the strictest of the three clouds; DigitalOcean tags allow no '.'.
LABEL_VALUE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class Rule:
    """Inbound TCP to `port` from `sources`; `private` rules travel the edgepoint's private network."""

    port: int
    sources: tuple[str, ...]
    purpose: str
    private: bool = False


def role(server: ServerPlan) -> str:
    """'controller', 'edge' (the edgepoint's edge host, also an agent) or 'agent'."""
    if "controller" in server.roles:
        return "controller"
    return "edge" if "edge" in server.roles else "agent"


def slot_ports(plan: Plan, edgepoint: str) -> tuple[int, ...]:
    """Ports the edge host reaches pods on (entry tiers of the apps placed at `edgepoint`)."""
    entry = {a.name: next((t.port for t in a.tiers if t.entry), a.tiers[0].port) for a in plan.apps}
    return tuple(sorted({entry[p.app] for p in plan.placements if p.edgepoint == edgepoint}))


def controller_rules(plan: Plan) -> tuple[Rule, ...]:
    ports = plan.controller.ports
    rules = [Rule(ports[name], WORLD, f"{name} (public)") for name in PUBLIC_PORTS if name in ports]
    ops = plan.operators
    if ops:
        rules.append(Rule(SSH_PORT, ops, "ssh from operators"))
        if "stats" in ports:
            rules.append(Rule(ports["stats"], ops, "haproxy stats, operators"))
    return tuple(rules)


def server_rules(plan: Plan, server: ServerPlan) -> tuple[Rule, ...]:
    """An edge server's inbound rules: the edge host's, or any other agent's of its edgepoint."""
    if role(server) == "controller":
        return controller_rules(plan)
    ports = server.ports
    rules: list[Rule] = []
    if role(server) == "edge":
        rules.append(Rule(ports["http"], WORLD, "http dispatcher (public)"))
    rules.append(Rule(SSH_PORT, (*plan.operators, CONTROLLER), "ssh from operators and controller"))
    if role(server) == "edge":
        rules.append(Rule(ports["agent"], (CONTROLLER,), "agent api, controller"))
        rules.append(Rule(ports["edge"], (CONTROLLER,), "edge api, controller"))
        if "stats" in ports:
            rules.append(Rule(ports["stats"], (CONTROLLER,), "haproxy stats, controller"))
        return tuple(rules)
    rules.append(Rule(ports["agent"], (CONTROLLER,), "agent api, controller"))
    rules.append(Rule(ports["agent"], (EDGE_HOST,), "agent api, edge host", private=True))
    for port in slot_ports(plan, server.edgepoint or ""):
        if port != ports["agent"]:
            rules.append(Rule(port, (EDGE_HOST,), "pod slots, edge host", private=True))
    return tuple(rules)


def public_ports(plan: Plan) -> frozenset[int]:
    """Every port some rule opens to the world: the dispatchers' and the controller's API."""
    ports = plan.controller.ports
    found = {ports[name] for name in PUBLIC_PORTS if name in ports}
    found |= {s.ports["http"] for s in plan.servers if role(s) == "edge"}
    return frozenset(found)


def allowed_ports(plan: Plan) -> frozenset[int]:
    """Every port some rule of this plan opens, to anyone."""
    ports = {SSH_PORT, *plan.controller.ports.values()}
    for server in plan.servers:
        ports.update(server.ports.values())
    for ep in plan.edgepoints:
        ports.update(slot_ports(plan, ep.name))
    return frozenset(ports)


def labels(
    plan: Plan, owner: str, *, edgepoint: str | None = None, server: ServerPlan | None = None
) -> dict[str, str]:
    """Labels (Hetzner), tags (AWS) and, as 'key:value', tags (DigitalOcean) of a resource."""
    out = {LABEL_NETWORK: plan.network, LABEL_OWNER: owner}
    if server is not None:
        edgepoint = server.edgepoint
        out[LABEL_ROLE] = role(server)
    if edgepoint is not None:
        out[LABEL_EDGEPOINT] = edgepoint
    return out
