"""AWS (pulumi_aws, one provider; every resource names its region from the plan).

Per edgepoint (and for the controller): a VPC and one subnet (the plan's private
/22), an internet gateway and a route table; a key pair (key pairs are regional);
security groups for the edge host and the other agents; per server an instance at
its planned private address with an Elastic IP, and a route sending the server's
slot subnet to its network interface (source/destination check off, so it may
forward to its pods). The instance metadata service requires tokens and answers
one hop only: pods, one hop further, never reach it.
"""

from __future__ import annotations

import re

import pulumi
import pulumi_aws as aws

from edgeshot.plan import ServerPlan

from ._adapter import Adapter, Machine, Site, Sources
from ._rules import Rule

DEBIAN_OWNER = "136693071363"  # Debian's official AWS account
_ARM = re.compile(r"^[a-z]+\d+[a-z]*g[a-z]*\.")  # t4g., c7g., m6gd., c7gn. …


def architecture(instance_type: str) -> str:
    return "arm64" if _ARM.match(instance_type) else "x86_64"


def _tags(labels: dict[str, str], name: str) -> dict[str, str]:
    return {"Name": name, **labels}


class AwsAdapter(Adapter):
    provider = "aws"
    ssh_user = "admin"  # Debian's AMIs

    def network(self, parent: pulumi.Resource) -> None:
        self._images: dict[tuple[str, str], pulumi.Output[str]] = {}

    def _image(self, region: str, instance_type: str) -> pulumi.Input[str]:
        image = self.plan.image or "debian-12"
        if image.startswith("ami-"):
            return image
        arch = architecture(instance_type)
        key = (region, arch)
        if key not in self._images:
            name = f"{image}-{'arm64' if arch == 'arm64' else 'amd64'}-*"
            self._images[key] = aws.ec2.get_ami_output(
                most_recent=True, owners=[DEBIAN_OWNER], region=region,
                filters=[aws.ec2.GetAmiFilterArgs(name="name", values=[name]),
                         aws.ec2.GetAmiFilterArgs(name="architecture", values=[arch])],
            ).id
        return self._images[key]

    def site(self, name: str, location: str, cidr: str | None, labels: dict[str, str],
             parent: pulumi.Resource, *, controller: bool = False) -> Site:
        region = location
        opts = pulumi.ResourceOptions(parent=parent)
        cloud = self.cloud_name(name)
        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=cidr, enable_dns_support=True,
                          enable_dns_hostnames=True, region=region, tags=_tags(labels, cloud),
                          opts=opts)
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, region=region,
                                          tags=_tags(labels, cloud), opts=opts)
        subnet = aws.ec2.Subnet(f"{name}-subnet", vpc_id=vpc.id, cidr_block=cidr,
                                map_public_ip_on_launch=False, region=region,
                                tags=_tags(labels, cloud), opts=opts)
        table = aws.ec2.RouteTable(f"{name}-routes", vpc_id=vpc.id, region=region,
                                   tags=_tags(labels, cloud), opts=opts)
        default = aws.ec2.Route(f"{name}-default-route", route_table_id=table.id,
                                destination_cidr_block="0.0.0.0/0", gateway_id=gateway.id,
                                region=region, opts=opts)
        association = aws.ec2.RouteTableAssociation(f"{name}-routes-subnet", subnet_id=subnet.id,
                                                    route_table_id=table.id, region=region,
                                                    opts=opts)
        key = aws.ec2.KeyPair(f"{name}-key", key_name=cloud,
                              public_key=self.settings.ssh_public_key, region=region,
                              tags=_tags(labels, cloud), opts=opts)
        return Site(resources={"vpc": vpc, "gateway": gateway, "subnet": subnet, "table": table,
                               "default_route": default, "association": association, "key": key},
                    extra={"region": region})

    def firewall(self, name: str, rules: tuple[Rule, ...], sources: Sources, site: Site,
                 labels: dict[str, str], parent: pulumi.Resource) -> pulumi.CustomResource:
        ingress = []
        for rule in rules:
            cidrs = sources.resolve(rule)
            v4 = [c for c in cidrs if not (isinstance(c, str) and ":" in c)]
            v6 = [c for c in cidrs if isinstance(c, str) and ":" in c]
            if cidrs:
                ingress.append(aws.ec2.SecurityGroupIngressArgs(
                    protocol="tcp", from_port=rule.port, to_port=rule.port,
                    cidr_blocks=v4 or None, ipv6_cidr_blocks=v6 or None,
                    description=rule.purpose))
        cloud = self.cloud_name(name)
        return aws.ec2.SecurityGroup(
            f"{name}-sg", name=cloud, description=f"edgeshot {cloud}",
            vpc_id=site.resources["vpc"].id, region=site.extra["region"], ingress=ingress,
            egress=[aws.ec2.SecurityGroupEgressArgs(protocol="-1", from_port=0, to_port=0,
                                                    cidr_blocks=["0.0.0.0/0"],
                                                    ipv6_cidr_blocks=["::/0"],
                                                    description="all outbound")],
            tags=_tags(labels, cloud), opts=pulumi.ResourceOptions(parent=parent))

    def server(self, server: ServerPlan, site: Site, firewall: pulumi.CustomResource,
               user_data: str, labels: dict[str, str], parent: pulumi.Resource, *,
               protect: bool = False) -> Machine:
        region = site.extra["region"]
        cloud = self.cloud_name(server.name)
        has_slots = server.slot_subnet is not None
        ami = self._image(region, server.server_type)
        # An AMI looked up as "most recent" changes whenever Debian publishes one: that must
        # not replace every server (a new server takes the new image; `pulumi up
        # --replace URN` renews one on purpose).
        looked_up = not (isinstance(ami, str) and ami.startswith("ami-"))
        instance = aws.ec2.Instance(
            server.name,
            ami=ami,
            instance_type=server.server_type,
            subnet_id=site.resources["subnet"].id,
            private_ip=server.private_address,
            # A public address from the first boot (cloud-init installs packages); the Elastic
            # IP replaces it moments later and stays.
            associate_public_ip_address=True,
            vpc_security_group_ids=[firewall.id],
            key_name=site.resources["key"].key_name,
            user_data=user_data,
            source_dest_check=not has_slots,
            metadata_options=aws.ec2.InstanceMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=1),
            root_block_device=aws.ec2.InstanceRootBlockDeviceArgs(
                volume_type="gp3", volume_size=20, encrypted=True,
                delete_on_termination=not protect),  # the controller's disk outlives it
            disable_api_termination=protect or None,
            region=region,
            tags=_tags(labels, cloud),
            opts=pulumi.ResourceOptions(parent=parent, protect=protect,
                                        ignore_changes=["ami"] if looked_up else None),
        )
        eip = aws.ec2.Eip(f"{server.name}-ip", domain="vpc", instance=instance.id, region=region,
                          tags=_tags(labels, cloud),
                          opts=pulumi.ResourceOptions(parent=parent, protect=protect,
                                                      depends_on=[site.resources["gateway"]]))
        return Machine(resource=instance, public_ipv4=eip.public_ip, public_ipv6=None,
                       private_ipv4=instance.private_ip, cloud_id=instance.id, extras=[eip])

    def routes(self, edgepoint: str, site: Site, servers: list[tuple[ServerPlan, Machine]],
               parent: pulumi.Resource) -> None:
        for server, machine in servers:
            instance = machine.resource
            assert isinstance(instance, aws.ec2.Instance)
            aws.ec2.Route(f"{server.name}-slots", route_table_id=site.resources["table"].id,
                          destination_cidr_block=server.slot_subnet,
                          network_interface_id=instance.primary_network_interface_id,
                          region=site.extra["region"], opts=pulumi.ResourceOptions(parent=parent))
