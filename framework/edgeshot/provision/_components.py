"""The components: EdgeNetwork ⊃ (controller EdgeServer, Edgepoint ⊃ EdgeServer…).

Built from a plan and the stack's settings; every cloud resource is a child of
one of them, so `pulumi stack --show-urns` reads as the network's structure.
"""

from __future__ import annotations

from typing import Any

import pulumi

from edgeshot.plan import EdgepointPlan, Plan, ServerPlan

from ._adapter import Adapter, Machine, Site, Sources
from ._cloudinit import user_data
from ._inventory import build_inventory
from ._rules import labels, role, server_rules
from ._settings import ProvisionError, Settings

TYPE = "edgeshot:provision:"


def _adapter(plan: Plan, settings: Settings) -> Adapter:
    if plan.provider == "hetzner":
        from ._hetzner import HetznerAdapter
        return HetznerAdapter(plan, settings)
    if plan.provider == "aws":
        from ._aws import AwsAdapter
        return AwsAdapter(plan, settings)
    if plan.provider == "digitalocean":
        from ._digitalocean import DigitalOceanAdapter
        return DigitalOceanAdapter(plan, settings)
    raise ProvisionError(f"network {plan.network!r} is on {plan.provider!r}: no cloud to provision "
                         "(the local network runs with `edgeshot up --local`)")


class EdgeServer(pulumi.ComponentResource):
    """One machine: an edge server of an edgepoint, or the controller (which brings its own
    site and firewall)."""

    machine: Machine

    def __init__(self, name: str, plan: Plan, server: ServerPlan, adapter: Adapter, *,
                 site: Site | None = None, firewall: pulumi.CustomResource | None = None,
                 sources: Sources | None = None,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE + "EdgeServer", name, None, opts)
        self.server = server
        tags = labels(plan, adapter.settings.owner, server=server)
        if site is None:
            site = adapter.site(name, server.location, plan.controller_subnet,
                                labels(plan, adapter.settings.owner), self, controller=True)
        if firewall is None:
            rules = adapter.effective_rules(server_rules(plan, server))
            firewall = adapter.firewall(name, rules, sources or Sources(), site,
                                        labels(plan, adapter.settings.owner), self)
        self.site = site
        self.firewall = firewall
        self.machine = adapter.server(server, site, firewall, user_data(plan, server), tags, self,
                                      protect="controller" in server.roles)
        self.address = self.machine.public_ipv4
        self.register_outputs({
            "name": server.name,
            "role": role(server),
            "edgepoint": server.edgepoint,
            "region": server.region,
            "address": self.machine.public_ipv4,
            "ipv6": self.machine.public_ipv6,
            "private_address": self.machine.private_ipv4,
            "cloud_id": self.machine.cloud_id,
        })


class Edgepoint(pulumi.ComponentResource):
    """An edgepoint: its private network, its firewalls, its servers and their slot routes."""

    def __init__(self, name: str, plan: Plan, edgepoint: EdgepointPlan, adapter: Adapter,
                 controller_address: pulumi.Output[str],
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE + "Edgepoint", name, None, opts)
        owner = adapter.settings.owner
        ep_labels = labels(plan, owner, edgepoint=edgepoint.name)
        by_name = {s.name: s for s in plan.servers if s.edgepoint == edgepoint.name}
        members = [by_name[n] for n in edgepoint.servers]
        edge_host = by_name[edgepoint.edge_host]
        self.site = adapter.site(name, edgepoint.location, edgepoint.private_subnet, ep_labels, self)
        child = pulumi.ResourceOptions(parent=self)

        edge_fw = adapter.firewall(
            f"{name}-edge", adapter.effective_rules(server_rules(plan, edge_host)),
            Sources(controller=controller_address), self.site, ep_labels, self)
        self.servers: dict[str, EdgeServer] = {
            edge_host.name: EdgeServer(edge_host.name, plan, edge_host, adapter, site=self.site,
                                       firewall=edge_fw, opts=child)
        }
        self.firewalls = {"edge": edge_fw}
        others = [s for s in members if s.name != edge_host.name]
        if others:
            edge_private = self.servers[edge_host.name].machine.private_ipv4
            agent_fw = adapter.firewall(
                f"{name}-agent", adapter.effective_rules(server_rules(plan, others[0])),
                Sources(controller=controller_address, edge_host=edge_private),
                self.site, ep_labels, self)
            self.firewalls["agent"] = agent_fw
            for s in others:
                self.servers[s.name] = EdgeServer(s.name, plan, s, adapter, site=self.site,
                                                  firewall=agent_fw, opts=child)
        adapter.routes(name, self.site,
                       [(s, self.servers[s.name].machine) for s in members], self)
        self.edge_address = self.servers[edge_host.name].address
        self.register_outputs({
            "name": edgepoint.name,
            "region": edgepoint.region,
            "private_subnet": edgepoint.private_subnet,
            "servers": list(edgepoint.servers),
            "edge_address": self.edge_address,
        })


class EdgeNetwork(pulumi.ComponentResource):
    """A whole edge network on one cloud, from its plan.

        plan = load_plan("policy.py")
        network = EdgeNetwork(plan.network, plan, settings_from_config(plan))
        export_outputs(network)
    """

    def __init__(self, name: str, plan: Plan, settings: Settings,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(TYPE + "EdgeNetwork", name, None, opts)
        self.plan = plan
        self.settings = settings
        adapter = _adapter(plan, settings)
        self.adapter = adapter
        if not plan.operators:
            pulumi.log.warn(f"network {plan.network} declares no operators: SSH reaches its "
                            "servers only from the controller (EdgeNetwork(operators=[...]))")
        adapter.network(self)
        child = pulumi.ResourceOptions(parent=self)
        self.controller = EdgeServer("controller", plan, plan.controller, adapter, opts=child)
        self.edgepoints = {
            ep.name: Edgepoint(ep.name, plan, ep, adapter, self.controller.address, opts=child)
            for ep in plan.edgepoints
        }
        machines: dict[str, Machine] = {"controller": self.controller.machine}
        for ep in self.edgepoints.values():
            machines.update({n: s.machine for n, s in ep.servers.items()})
        self.inventory: pulumi.Output[dict[str, Any]] = _inventory_output(
            plan, settings, adapter.ssh_user, machines)
        self.edge_addresses = pulumi.Output.all(
            **{n: ep.edge_address for n, ep in self.edgepoints.items()})
        self.secrets = pulumi.Output.secret(pulumi.Output.all(**settings.secrets))
        self.register_outputs({
            "inventory": self.inventory,
            "controller_address": self.controller.address,
            "edge_addresses": self.edge_addresses,
        })


def _inventory_output(plan: Plan, settings: Settings, ssh_user: str,
                      machines: dict[str, Machine]) -> pulumi.Output[dict[str, Any]]:
    facts = {
        name: pulumi.Output.all(
            address=m.public_ipv4,
            ipv6=m.public_ipv6,
            private_address=m.private_ipv4,
            cloud_id=m.cloud_id,
        )
        for name, m in machines.items()
    }
    return pulumi.Output.all(**facts).apply(
        lambda resolved: build_inventory(plan, settings.owner, ssh_user, resolved))


def export_outputs(network: EdgeNetwork) -> None:
    """The stack outputs: `inventory` (the configure step's input), addresses for DNS, the
    appshot signing public key, and `secrets` (tokens and the signing key: secret)."""
    pulumi.export("inventory", network.inventory)
    pulumi.export("controller_address", network.controller.address)
    pulumi.export("edge_addresses", network.edge_addresses)
    pulumi.export("signing_public_key", network.settings.signing_public_key)
    pulumi.export("secrets", network.secrets)
