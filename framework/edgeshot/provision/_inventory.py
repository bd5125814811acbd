"""The `inventory` stack output: what the configure step (Ansible) needs to reach and set up
every server. Plain data, no secrets (those are in the `secrets` output). Schema
(format 1) in stacks/README.md; `INVENTORY_FORMAT` changes when it does.
"""

from __future__ import annotations

from typing import Any

from edgeshot.plan import Plan, ServerPlan

from ._rules import role, slot_ports

INVENTORY_FORMAT = 1


def _server(plan: Plan, server: ServerPlan, ssh_user: str, facts: dict[str, Any]) -> dict[str, Any]:
    return {
        "address": facts.get("address"),
        "ipv6": facts.get("ipv6"),
        "private_address": facts.get("private_address"),
        "ssh_user": ssh_user,
        "role": role(server),
        "roles": list(server.roles),
        "edgepoint": server.edgepoint,
        "region": server.region,
        "location": server.location,
        "server_type": server.server_type,
        "ports": dict(sorted(server.ports.items())),
        "slot_subnet": server.slot_subnet,
        "slots": server.slots,
        "cloud_id": facts.get("cloud_id"),
    }


def build_inventory(plan: Plan, owner: str, ssh_user: str,
                    facts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`facts`: per server name (and 'controller'), its resolved address, ipv6,
    private_address and cloud_id."""
    return {
        "format": INVENTORY_FORMAT,
        "network": plan.network,
        "provider": plan.provider,
        "owner": owner,
        "controller": _server(plan, plan.controller, ssh_user, facts.get("controller", {})),
        "edgepoints": {
            ep.name: {
                "region": ep.region,
                "location": ep.location,
                "edge_host": ep.edge_host,
                "servers": list(ep.servers),
                "private_subnet": ep.private_subnet,
                "slot_ports": list(slot_ports(plan, ep.name)),
            }
            for ep in plan.edgepoints
        },
        "servers": {s.name: _server(plan, s, ssh_user, facts.get(s.name, {})) for s in plan.servers},
    }
