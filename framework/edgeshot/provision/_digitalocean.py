"""DigitalOcean (pulumi_digitalocean).

Per edgepoint: a VPC (the plan's private /22; DigitalOcean refuses overlapping VPC
ranges within an account), droplets in it, and cloud firewalls that select their
droplets by a tag, so a droplet is covered from its first boot. DigitalOcean
firewalls filter VPC traffic too, so the agent and slot ports are open to the
edge host's private address only. DigitalOcean assigns private addresses itself
and has no VPC routes: the inventory lists every server's private address and
slot subnet, and the configure step adds the host routes to the slot subnets.
The controller uses the region's default VPC.

Labels are droplet tags written `key:value` (DigitalOcean tags are plain names).
"""

from __future__ import annotations

import pulumi
import pulumi_digitalocean as do

from edgeshot.plan import ServerPlan

from ._adapter import Adapter, Machine, Site, Sources
from ._rules import Rule
from ._rules import labels as make_labels

ALL_OUT = ("0.0.0.0/0", "::/0")


def tag_names(labels: dict[str, str]) -> list[str]:
    return [f"{k}:{v}" for k, v in labels.items()]


class DigitalOceanAdapter(Adapter):
    provider = "digitalocean"
    ssh_user = "root"

    def _tag(self, name: str, parent: pulumi.Resource) -> pulumi.Output[str]:
        if name not in self.tags:
            resource = "tag-" + name.replace(":", "-")
            self.tags[name] = do.Tag(resource, name=name,
                                     opts=pulumi.ResourceOptions(parent=parent)).name
        return self.tags[name]

    def network(self, parent: pulumi.Resource) -> None:
        self.tags: dict[str, pulumi.Output[str]] = {}
        self.selectors: dict[pulumi.CustomResource, pulumi.Output[str]] = {}
        self.parent = parent
        keys: list[pulumi.Input[str]] = list(self.settings.ssh_keys)
        if self.settings.ssh_public_key:
            key = do.SshKey("ssh-key", name=self.cloud_name("operators"),
                            public_key=self.settings.ssh_public_key,
                            opts=pulumi.ResourceOptions(parent=parent))
            keys.append(key.fingerprint)
        self.ssh_keys = keys
        for name in tag_names(make_labels(self.plan, self.settings.owner)):
            self._tag(name, parent)
        for r in ("controller", "edge", "agent"):
            self._tag(f"edgeshot-role:{r}", parent)

    def site(self, name: str, location: str, cidr: str | None, labels: dict[str, str],
             parent: pulumi.Resource, *, controller: bool = False) -> Site:
        if controller:
            return Site(extra={"region": location})
        for tag in tag_names(labels):
            self._tag(tag, parent)
        vpc = do.Vpc(f"{name}-vpc", name=self.cloud_name(name), region=location, ip_range=cidr,
                     description=f"edgeshot {self.plan.network}: edgepoint {name}",
                     opts=pulumi.ResourceOptions(parent=parent))
        return Site(resources={"vpc": vpc}, extra={"region": location})

    def firewall(self, name: str, rules: tuple[Rule, ...], sources: Sources, site: Site,
                 labels: dict[str, str], parent: pulumi.Resource) -> pulumi.CustomResource:
        # The firewall applies to droplets tagged with its own selector tag.
        selector = self._tag(f"edgeshot-fw:{self.cloud_name(name)}", parent)
        inbound = []
        for rule in rules:
            addresses = sources.resolve(rule)
            if addresses:
                inbound.append(do.FirewallInboundRuleArgs(
                    protocol="tcp", port_range=str(rule.port), source_addresses=addresses))
        outbound = [
            do.FirewallOutboundRuleArgs(protocol=p, port_range="1-65535",
                                        destination_addresses=list(ALL_OUT))
            for p in ("tcp", "udp")
        ] + [do.FirewallOutboundRuleArgs(protocol="icmp", destination_addresses=list(ALL_OUT))]
        fw = do.Firewall(f"{name}-fw", name=self.cloud_name(name), tags=[selector],
                         inbound_rules=inbound, outbound_rules=outbound,
                         opts=pulumi.ResourceOptions(parent=parent))
        self.selectors[fw] = selector
        return fw

    def server(self, server: ServerPlan, site: Site, firewall: pulumi.CustomResource,
               user_data: str, labels: dict[str, str], parent: pulumi.Resource, *,
               protect: bool = False) -> Machine:
        tags = [self._tag(t, self.parent) for t in tag_names(labels)]
        tags.append(self.selectors[firewall])
        vpc = site.resources.get("vpc")
        droplet = do.Droplet(
            server.name,
            name=self.cloud_name(server.name),
            image=self.plan.image,
            region=server.location,
            size=server.server_type,
            vpc_uuid=vpc.id if vpc is not None else None,
            ssh_keys=self.ssh_keys,
            tags=tags,
            user_data=user_data,
            ipv6=True,
            monitoring=True,
            # Covered by its firewall from the first boot: the firewall exists before the droplet.
            opts=pulumi.ResourceOptions(parent=parent, depends_on=[firewall], protect=protect),
        )
        return Machine(resource=droplet, public_ipv4=droplet.ipv4_address,
                       public_ipv6=droplet.ipv6_address, private_ipv4=droplet.ipv4_address_private,
                       cloud_id=droplet.id)

    def routes(self, edgepoint: str, site: Site, servers: list[tuple[ServerPlan, Machine]],
               parent: pulumi.Resource) -> None:
        """DigitalOcean VPCs have no routes: the configure step installs host routes."""
