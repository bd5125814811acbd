"""Hetzner Cloud (pulumi_hcloud).

Per edgepoint: a network (ip_range = the plan's private block, so it spans the
edgepoint's subnet and its servers' slot subnets), one cloud subnet, a network
route per server for its slot subnet, and firewalls for the edge host and the
other agents. Servers join the network at their planned address and carry their
firewall from the first boot.

Hetzner Cloud firewalls filter public interfaces only: private-network rules
(agent and slot ports from the edge host) are not expressible here; the bearer
tokens guard the agent API and the configure step's host firewall narrows it.
"""

from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud

from edgeshot.plan import ServerPlan

from ._adapter import Adapter, Machine, Site, Sources
from ._rules import Rule
from ._rules import labels as make_labels
from ._settings import ProvisionError

# Location -> network zone (a network's subnets live in one zone).
NETWORK_ZONES = {
    "fsn1": "eu-central",
    "nbg1": "eu-central",
    "hel1": "eu-central",
    "ash": "us-east",
    "hil": "us-west",
    "sin": "ap-southeast",
}


def _int(output: pulumi.Output[str]) -> pulumi.Output[int]:
    return output.apply(int)


class HetznerAdapter(Adapter):
    provider = "hetzner"
    ssh_user = "root"
    filters_private = False

    def network(self, parent: pulumi.Resource) -> None:
        keys: list[pulumi.Input[str]] = list(self.settings.ssh_keys)
        if self.settings.ssh_public_key:
            key = hcloud.SshKey(
                "ssh-key", name=self.cloud_name("operators"),
                public_key=self.settings.ssh_public_key,
                labels=make_labels(self.plan, self.settings.owner),
                opts=pulumi.ResourceOptions(parent=parent))
            keys.append(key.id)
        self.ssh_keys = keys

    def site(self, name: str, location: str, cidr: str | None, labels: dict[str, str],
             parent: pulumi.Resource, *, controller: bool = False) -> Site:
        if controller:
            return Site()  # the controller talks over the public network only
        zone = NETWORK_ZONES.get(location)
        if zone is None:
            raise ProvisionError(f"no Hetzner network zone known for location {location!r}; "
                                 f"known: {', '.join(sorted(NETWORK_ZONES))}")
        opts = pulumi.ResourceOptions(parent=parent)
        network = hcloud.Network(f"{name}-network", name=self.cloud_name(name),
                                 ip_range=self.plan.private_network, labels=labels, opts=opts)
        subnet = hcloud.NetworkSubnet(f"{name}-subnet", network_id=_int(network.id), type="cloud",
                                      network_zone=zone, ip_range=cidr, opts=opts)
        return Site(resources={"network": network, "subnet": subnet})

    def firewall(self, name: str, rules: tuple[Rule, ...], sources: Sources, site: Site,
                 labels: dict[str, str], parent: pulumi.Resource) -> pulumi.CustomResource:
        args = []
        for rule in rules:
            ips = sources.resolve(rule)
            if ips:
                args.append(hcloud.FirewallRuleArgs(direction="in", protocol="tcp",
                                                    port=str(rule.port), source_ips=ips,
                                                    description=rule.purpose))
        return hcloud.Firewall(f"{name}-fw", name=self.cloud_name(name), rules=args,
                               labels=labels, opts=pulumi.ResourceOptions(parent=parent))

    def server(self, server: ServerPlan, site: Site, firewall: pulumi.CustomResource,
               user_data: str, labels: dict[str, str], parent: pulumi.Resource, *,
               protect: bool = False) -> Machine:
        network = site.resources.get("network")
        networks = None
        depends: list[pulumi.Resource] = []
        if network is not None:
            networks = [hcloud.ServerNetworkArgs(network_id=_int(network.id),
                                                 ip=server.private_address, alias_ips=[])]
            depends.append(site.resources["subnet"])  # a server joins a network via its subnet
        machine = hcloud.Server(
            server.name,
            name=self.cloud_name(server.name),
            server_type=server.server_type,
            image=self.plan.image,
            location=server.location,
            ssh_keys=self.ssh_keys,
            labels=labels,
            user_data=user_data,
            firewall_ids=[_int(firewall.id)],
            networks=networks,
            public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
            delete_protection=protect or None,  # Hetzner's own lock too (both or neither)
            rebuild_protection=protect or None,
            opts=pulumi.ResourceOptions(parent=parent, depends_on=depends, protect=protect),
        )
        return Machine(resource=machine, public_ipv4=machine.ipv4_address,
                       public_ipv6=machine.ipv6_address, private_ipv4=server.private_address,
                       cloud_id=machine.id)

    def routes(self, edgepoint: str, site: Site, servers: list[tuple[ServerPlan, Machine]],
               parent: pulumi.Resource) -> None:
        network = site.resources["network"]
        for server, machine in servers:
            hcloud.NetworkRoute(
                f"{server.name}-slots", network_id=_int(network.id),
                destination=server.slot_subnet, gateway=server.private_address,
                opts=pulumi.ResourceOptions(parent=parent, depends_on=[machine.resource]))
