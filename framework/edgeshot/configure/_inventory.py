"""The inventory: which servers exist and how to reach them.

Its source is the Pulumi stack's ``inventory`` output (format 1, built by
``edgeshot.provision``; ``pulumi stack output inventory --json``) or, for a
network whose addresses are known in advance, `inventory_from_plan`. From it
and the plan this module builds the Ansible inventory that ``site.yml``
expects (groups ``edgeshot_agents``, ``edgeshot_edges``,
``edgeshot_controller``, ``edgepoint_<name>``; host variables
``edgeshot_server`` and ``edgeshot_edgepoint``) and, for Fabric, the hosts a
target names (a server, an edgepoint, ``controller`` or everything).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeshot.plan import Plan, ServerPlan

INVENTORY_FORMAT = 1


class InventoryError(ValueError):
    """The inventory cannot be used (the message says which server and field)."""


class InventoryHost(BaseModel):
    """One server as the stack reports it (the fields of provision's inventory output)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    name: str
    address: str | None = None
    ipv6: str | None = None
    private_address: str | None = None
    ssh_user: str = "root"
    ssh_port: int = 22
    role: str | None = None
    roles: tuple[str, ...] = ()
    edgepoint: str | None = None
    region: str | None = None
    location: str | None = None
    server_type: str | None = None
    ports: dict[str, int] = Field(default_factory=dict)
    slot_subnet: str | None = None
    slots: int = 0
    cloud_id: str | None = None

    @property
    def is_controller(self) -> bool:
        return "controller" in self.roles or self.role == "controller"

    @property
    def is_agent(self) -> bool:
        return "agent" in self.roles

    @property
    def is_edge(self) -> bool:
        return "edge" in self.roles


class InventoryEdgepoint(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    name: str
    region: str | None = None
    location: str | None = None
    edge_host: str | None = None
    servers: tuple[str, ...] = ()
    private_subnet: str | None = None
    slot_ports: tuple[int, ...] = ()


class Inventory(BaseModel):
    """The whole network: its servers (the controller among them) and edgepoints."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    format: int = INVENTORY_FORMAT
    network: str
    provider: str | None = None
    owner: str | None = None
    controller: InventoryHost | None = None
    edgepoints: dict[str, InventoryEdgepoint] = Field(default_factory=dict)
    servers: dict[str, InventoryHost] = Field(default_factory=dict)

    @classmethod
    def parse(cls, data: Mapping[str, Any] | str | os.PathLike[str]) -> Inventory:
        """From the stack output (a mapping, its JSON text, or a file holding it)."""
        where = "inventory"
        if isinstance(data, os.PathLike) or (isinstance(data, str)
                                             and not data.lstrip().startswith("{")):
            where = str(data)
            try:
                data = json.loads(Path(data).read_text())
            except FileNotFoundError:
                raise InventoryError(f"{where}: no such file (write it with `pulumi stack "
                                     "output inventory --json > FILE`)") from None
            except json.JSONDecodeError as exc:
                raise InventoryError(f"{where}: not JSON: {exc}") from None
        elif isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise InventoryError(f"{where}: not JSON: {exc}") from None
        if not isinstance(data, Mapping):
            raise InventoryError(f"{where}: expected an object, got {type(data).__name__}")
        fmt = data.get("format", INVENTORY_FORMAT)
        if fmt != INVENTORY_FORMAT:
            raise InventoryError(f"{where}: inventory format {fmt}; this edgeshot reads "
                                 f"format {INVENTORY_FORMAT}")
        raw = dict(data)
        servers = {n: {**(s or {}), "name": n} for n, s in (raw.get("servers") or {}).items()}
        ctl = raw.get("controller")
        eps = {n: {**(e or {}), "name": n} for n, e in (raw.get("edgepoints") or {}).items()}
        try:
            return cls.model_validate({
                **raw, "servers": servers, "edgepoints": eps,
                "controller": {"name": "controller", **ctl} if ctl else None,
            })
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            path = ".".join(str(p) for p in first.get("loc", ()))
            raise InventoryError(f"{where}: {path}: {first.get('msg')}") from None

    def hosts(self) -> list[InventoryHost]:
        """Every server, the controller last."""
        return [*self.servers.values(), *([self.controller] if self.controller else [])]

    def host(self, name: str) -> InventoryHost:
        for h in self.hosts():
            if h.name == name:
                return h
        raise InventoryError(f"no server {name!r} in network {self.network} "
                             f"(servers: {', '.join(h.name for h in self.hosts())})")

    def select(self, target: str | None = None) -> list[InventoryHost]:
        """The servers a target names: a server, an edgepoint, ``controller``, ``all``/None.

        Several targets may be given separated by commas.
        """
        if target in (None, "", "all", "*"):
            return self.hosts()
        chosen: dict[str, InventoryHost] = {}
        for t in str(target).split(","):
            t = t.strip()
            if t in ("all", "*"):
                chosen |= {h.name: h for h in self.hosts()}
            elif t == "controller" and self.controller is not None:
                chosen[self.controller.name] = self.controller
            elif t in self.servers:
                chosen[t] = self.servers[t]
            elif t in self.edgepoints or any(h.edgepoint == t for h in self.servers.values()):
                chosen |= {h.name: h for h in self.servers.values() if h.edgepoint == t}
            else:
                raise InventoryError(
                    f"{t!r} is neither a server, an edgepoint nor 'controller' of network "
                    f"{self.network} (edgepoints: {', '.join(sorted(self.edgepoints)) or '-'}; "
                    f"servers: {', '.join(sorted(self.servers)) or '-'})")
        return list(chosen.values())


def _host_entry(s: ServerPlan, address: str | None, ssh_user: str,
                private_address: str | None = None) -> dict[str, Any]:
    return {
        "address": address,
        "private_address": private_address,
        "ssh_user": ssh_user,
        "role": "controller" if "controller" in s.roles else (
            "edge" if "edge" in s.roles else "agent"),
        "roles": list(s.roles),
        "edgepoint": s.edgepoint,
        "region": s.region,
        "location": s.location,
        "server_type": s.server_type,
        "ports": dict(sorted(s.ports.items())),
        "slot_subnet": s.slot_subnet,
        "slots": s.slots,
    }


def inventory_from_plan(plan: Plan, addresses: Mapping[str, str] | None = None, *,
                        private_addresses: Mapping[str, str] | None = None,
                        ssh_user: str = "root") -> Inventory:
    """An inventory for servers whose addresses are known: ``addresses`` by server name
    (``controller`` included), else the plan's own (local networks). The stack output's
    shape, format 1. Servers given an address but no private one have one network only
    (the plan's planned private addresses are then not used)."""
    addresses = dict(addresses or {})
    private = dict(private_addresses or {})

    def private_of(s: ServerPlan) -> str | None:
        if s.name in private:
            return private[s.name]
        return None if s.name in addresses else getattr(s, "private_address", None)

    servers = {s.name: _host_entry(s, addresses.get(s.name, s.address), ssh_user,
                                   private_of(s))
               for s in plan.servers}
    ctl = plan.controller
    return Inventory.parse({
        "format": INVENTORY_FORMAT,
        "network": plan.network,
        "provider": plan.provider,
        "controller": _host_entry(ctl, addresses.get(ctl.name, ctl.address), ssh_user,
                                  private.get(ctl.name)),
        "edgepoints": {ep.name: {"region": ep.region, "location": ep.location,
                                 "edge_host": ep.edge_host, "servers": list(ep.servers)}
                       for ep in plan.edgepoints},
        "servers": servers,
    })


_GROUP_CHARS = re.compile(r"[^A-Za-z0-9_]")


def group_name(edgepoint: str) -> str:
    """Ansible group of an edgepoint (Ansible allows letters, digits and _ only)."""
    return "edgepoint_" + _GROUP_CHARS.sub("_", edgepoint)


def _server_var(h: InventoryHost) -> dict[str, Any]:
    return {
        "name": h.name,
        "address": h.address,
        "private_address": h.private_address,
        "edgepoint": h.edgepoint,
        "region": h.region,
        "roles": list(h.roles),
        "ports": dict(h.ports),
        "slot_subnet": h.slot_subnet,
        "slots": h.slots,
    }


def _reach(h: InventoryHost) -> str | None:
    """The address an edgepoint's servers reach each other on (private when there is one)."""
    return h.private_address or h.address


def ansible_inventory(inv: Inventory, hosts: list[InventoryHost], *,
                      host_vars: Mapping[str, Mapping[str, Any]] | None = None,
                      all_vars: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The YAML/JSON inventory structure site.yml expects, for ``hosts`` (those with an
    address); ``host_vars`` adds per-host variables (by server name)."""
    host_vars = host_vars or {}
    edgepoints: dict[str, dict[str, Any]] = {}
    for name, ep in inv.edgepoints.items():
        members = [inv.servers[s] for s in ep.servers if s in inv.servers] or [
            h for h in inv.servers.values() if h.edgepoint == name]
        edge_host = inv.servers.get(ep.edge_host or "") or next(
            (h for h in members if h.is_edge), None)
        edgepoints[name] = {
            "name": name,
            "region": ep.region,
            "edge_host": edge_host.name if edge_host else None,
            "edge_address": _reach(edge_host) if edge_host else None,
            "edge_public_address": edge_host.address if edge_host else None,
            "edge_port": edge_host.ports.get("edge") if edge_host else None,
            "http_port": edge_host.ports.get("http") if edge_host else None,
            "servers": [{
                "name": m.name,
                "address": _reach(m),
                "public_address": m.address,
                "agent_port": m.ports.get("agent"),
                "agent_url": f"http://{_reach(m)}:{m.ports.get('agent')}",
                "slot_subnet": m.slot_subnet,
            } for m in members if m.address],  # a server without an address is not there yet
        }
    groups: dict[str, dict[str, Any]] = {
        "edgeshot_agents": {"hosts": {}},
        "edgeshot_edges": {"hosts": {}},
        "edgeshot_controller": {"hosts": {}},
    }
    for h in hosts:
        hv: dict[str, Any] = {
            "ansible_host": h.address,
            "ansible_user": h.ssh_user,
            "ansible_port": h.ssh_port,
            "edgeshot_server": _server_var(h),
            **dict(host_vars.get(h.name, {})),
        }
        if h.edgepoint in edgepoints:
            hv["edgeshot_edgepoint"] = edgepoints[h.edgepoint]
        if h.is_controller:
            groups["edgeshot_controller"]["hosts"][h.name] = hv
            continue
        if h.is_agent:
            groups["edgeshot_agents"]["hosts"][h.name] = hv
        if h.is_edge:
            groups["edgeshot_edges"]["hosts"][h.name] = {}
        if h.edgepoint:
            groups.setdefault(group_name(h.edgepoint), {"hosts": {}})["hosts"][h.name] = {}
    return {"all": {
        "vars": {
            "edgeshot_network": inv.network,
            "edgeshot_controller_address": inv.controller.address if inv.controller else None,
            "edgeshot_edgepoints": list(edgepoints.values()),
            **dict(all_vars or {}),
        },
        "children": groups,
    }}


def plan_with_addresses(plan: Plan, inv: Inventory) -> Plan:
    """The plan as the runtime needs it: every server's address filled in from the
    inventory (clouds assign addresses only when they create the servers)."""
    def fill(s: ServerPlan) -> ServerPlan:
        h = inv.servers.get(s.name) if s.name != "controller" else inv.controller
        if h is None or not h.address or s.address == h.address:
            return s
        return s.model_copy(update={"address": h.address})
    return plan.model_copy(update={"servers": tuple(fill(s) for s in plan.servers),
                                   "controller": fill(plan.controller)})
