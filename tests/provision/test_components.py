"""The shop's network on each cloud, resource by resource, as `pulumi up` would send it.

Real provider SDK classes (pulumi_hcloud, pulumi_aws, pulumi_digitalocean) under
`pulumi.runtime.set_mocks`: counts and types, names, inputs, firewall rules exactly,
parents, labels, secrets and the inventory output.
"""

from __future__ import annotations

import json
from collections import Counter
from ipaddress import ip_address, ip_network

import pytest
import yaml

from edgeshot.plan import compile_plan
from edgeshot.spec import load

from .conftest import POLICIES, SSH_KEY, TOKENS

EXPECTED_TYPES = {
    "hetzner": {
        "edgeshot:provision:EdgeNetwork": 1, "edgeshot:provision:Edgepoint": 3,
        "edgeshot:provision:EdgeServer": 5,
        "hcloud:index/sshKey:SshKey": 1, "hcloud:index/network:Network": 3,
        "hcloud:index/networkSubnet:NetworkSubnet": 3, "hcloud:index/firewall:Firewall": 5,
        "hcloud:index/server:Server": 5, "hcloud:index/networkRoute:NetworkRoute": 4,
    },
    "aws": {
        "edgeshot:provision:EdgeNetwork": 1, "edgeshot:provision:Edgepoint": 3,
        "edgeshot:provision:EdgeServer": 5,
        # a site each for the controller and the 3 edgepoints
        "aws:ec2/vpc:Vpc": 4, "aws:ec2/internetGateway:InternetGateway": 4,
        "aws:ec2/subnet:Subnet": 4, "aws:ec2/routeTable:RouteTable": 4,
        "aws:ec2/routeTableAssociation:RouteTableAssociation": 4, "aws:ec2/keyPair:KeyPair": 4,
        "aws:ec2/route:Route": 4 + 4,  # default routes + one slot route per edge server
        "aws:ec2/securityGroup:SecurityGroup": 5, "aws:ec2/instance:Instance": 5,
        "aws:ec2/eip:Eip": 5,
    },
    "digitalocean": {
        "edgeshot:provision:EdgeNetwork": 1, "edgeshot:provision:Edgepoint": 3,
        "edgeshot:provision:EdgeServer": 5,
        "digitalocean:index/sshKey:SshKey": 1,
        # network, owner, 3 roles; 3 edgepoints; firewall selectors: controller, 3 edge, 1 agent
        "digitalocean:index/tag:Tag": 5 + 3 + 5,
        "digitalocean:index/vpc:Vpc": 3, "digitalocean:index/firewall:Firewall": 5,
        "digitalocean:index/droplet:Droplet": 5,
    },
}
SERVER_TYPE = {"hetzner": "hcloud:index/server:Server", "aws": "aws:ec2/instance:Instance",
               "digitalocean": "digitalocean:index/droplet:Droplet"}
FIREWALL_TYPE = {"hetzner": "hcloud:index/firewall:Firewall",
                 "aws": "aws:ec2/securityGroup:SecurityGroup",
                 "digitalocean": "digitalocean:index/firewall:Firewall"}
FW_SUFFIX = {"hetzner": "-fw", "aws": "-sg", "digitalocean": "-fw"}
PROVIDERS = sorted(EXPECTED_TYPES)
OPERATORS = "203.0.113.0/24"
WORLD = ("0.0.0.0/0", "::/0")


@pytest.fixture(scope="module")
def plans():
    return {p: compile_plan(load(POLICIES[p])) for p in PROVIDERS}


@pytest.fixture(params=PROVIDERS)
def shop(request, run_stack, plans):
    provider = request.param
    return provider, run_stack(provider), plans[provider]


def public_ip(provider, run, server):
    if provider == "aws":
        return run.one("aws:ec2/eip:Eip", f"{server}-ip").state["publicIp"]
    return run.one(SERVER_TYPE[provider], server).state["ipv4Address"]


def private_ip(provider, run, plan, server):
    if provider == "digitalocean":
        return run.one(SERVER_TYPE[provider], server).state["ipv4AddressPrivate"]
    return next(s.private_address for s in plan.servers if s.name == server)


def rules_of(provider, fw) -> set[tuple[int, tuple[str, ...]]]:
    """(port, sorted sources) of every inbound rule; each rule TCP, single port."""
    out = set()
    if provider == "hetzner":
        for r in fw.inputs["rules"]:
            assert (r["direction"], r["protocol"]) == ("in", "tcp")
            out.add((int(r["port"]), tuple(sorted(r["sourceIps"]))))
    elif provider == "aws":
        for r in fw.inputs["ingress"]:
            assert r["protocol"] == "tcp" and r["fromPort"] == r["toPort"]
            srcs = [*r.get("cidrBlocks", ()), *r.get("ipv6CidrBlocks", ())]
            out.add((int(r["fromPort"]), tuple(sorted(srcs))))
    else:
        for r in fw.inputs["inboundRules"]:
            assert r["protocol"] == "tcp" and "-" not in r["portRange"]
            out.add((int(r["portRange"]), tuple(sorted(r["sourceAddresses"]))))
    return out


def test_resource_counts_and_types(shop):
    provider, run, _ = shop
    assert Counter(r.type for r in run.resources) == EXPECTED_TYPES[provider]
    assert len({r.urn for r in run.resources}) == len(run.resources)


def test_components_and_parents(shop):
    provider, run, plan = shop
    network = run.one("edgeshot:provision:EdgeNetwork", "acme-edge" + {
        "hetzner": "", "aws": "-aws", "digitalocean": "-do"}[provider])
    assert network.parent_type == "pulumi:pulumi:Stack"
    for ep in plan.edgepoints:
        comp = run.one("edgeshot:provision:Edgepoint", ep.name)
        assert comp.parent == network.urn
        for name in ep.servers:
            server = run.one("edgeshot:provision:EdgeServer", name)
            assert server.parent == comp.urn
            machine = run.one(SERVER_TYPE[provider], name)
            assert machine.parent == server.urn
    controller = run.one("edgeshot:provision:EdgeServer", "controller")
    assert controller.parent == network.urn
    assert run.one(SERVER_TYPE[provider], "controller").parent == controller.urn
    # every cloud resource sits under one of the components: nothing floats at the top
    for r in run.resources:
        if r.custom:
            assert r.parent_type.startswith("edgeshot:provision:"), (r.type, r.name)


def test_servers_where_what_and_how(shop):
    provider, run, plan = shop
    image = {"hetzner": "debian-12", "digitalocean": "debian-12-x64"}
    for s in (plan.controller, *plan.servers):
        r = run.one(SERVER_TYPE[provider], s.name)
        i = r.inputs
        if provider == "hetzner":
            assert (i["location"], i["serverType"], i["image"]) == (s.location, s.server_type,
                                                                     image[provider])
            assert i["name"] == f"{plan.network}-{s.name}"
            assert i["publicNets"] == [{"ipv4Enabled": True, "ipv6Enabled": True}]
        elif provider == "aws":
            assert (i["region"], i["instanceType"]) == (s.location, s.server_type)
            assert i["ami"].startswith("ami-")
            assert i["metadataOptions"]["httpTokens"] == "required"
            assert i["metadataOptions"]["httpPutResponseHopLimit"] == 1
            assert i["rootBlockDevice"]["encrypted"] is True
            assert i["sourceDestCheck"] is (s.name == "controller")  # edge servers forward to pods
            assert i["tags"]["Name"] == f"{plan.network}-{s.name}"
        else:
            assert (i["region"], i["size"], i["image"]) == (s.location, s.server_type,
                                                             image[provider])
            assert i["ipv6"] is True
        doc = yaml.safe_load(i["userData"])
        assert i["userData"].startswith("#cloud-config\n")
        assert doc["hostname"] == s.name
        facts = json.loads(next(f["content"] for f in doc["write_files"]
                                if f["path"] == "/etc/edgeshot/server.json"))
        assert facts == {"network": plan.network, "server": s.name, "edgepoint": s.edgepoint,
                         "roles": list(s.roles), "provider": provider}
        forwards = any(f["path"] == "/etc/sysctl.d/90-edgeshot.conf" for f in doc["write_files"])
        assert forwards is (s.name != "controller")


def test_amis_are_debian_for_each_region(run_stack, plans):
    run = run_stack("aws")
    regions = {s.location for s in (plans["aws"].controller, *plans["aws"].servers)}
    calls = [a for t, a in run.calls if t == "aws:ec2/getAmi:getAmi"]
    assert {c["region"] for c in calls} == regions  # one lookup per region and architecture
    for c in calls:
        assert c["owners"] == ["136693071363"] and c["mostRecent"] is True
        assert {f["name"]: f["values"] for f in c["filters"]} == {
            "name": ["debian-12-amd64-*"], "architecture": ["x86_64"]}


def test_ssh_keys(shop):
    provider, run, plan = shop
    if provider == "aws":
        for r in run.of("aws:ec2/keyPair:KeyPair"):
            assert r.inputs["publicKey"] == SSH_KEY
        for s in (plan.controller, *plan.servers):
            site = "controller" if s.name == "controller" else s.edgepoint
            key = run.one("aws:ec2/keyPair:KeyPair", f"{site}-key")
            assert run.one(SERVER_TYPE[provider], s.name).inputs["keyName"] == key.inputs["keyName"]
            assert key.inputs["region"] == s.location
        return
    key = run.one(f"{'hcloud:index' if provider == 'hetzner' else 'digitalocean:index'}"
                  "/sshKey:SshKey", "ssh-key")
    assert key.inputs["publicKey"] == SSH_KEY
    ref = key.id if provider == "hetzner" else key.state["fingerprint"]
    for r in run.of(SERVER_TYPE[provider]):
        assert r.inputs["sshKeys"] == [ref]


def test_existing_ssh_keys_instead_of_a_new_one(run_stack):
    run = run_stack("hetzner", sshPublicKey=None, sshKeys=["ops-laptop", "ops-ci"])
    assert not run.of("hcloud:index/sshKey:SshKey")
    for r in run.of("hcloud:index/server:Server"):
        assert r.inputs["sshKeys"] == ["ops-laptop", "ops-ci"]


def test_firewall_rules_are_exactly_the_allowed_ports_and_sources(shop):
    provider, run, plan = shop
    ctrl = f"{public_ip(provider, run, 'controller')}/32"
    sfx = FW_SUFFIX[provider]
    assert rules_of(provider, run.one(FIREWALL_TYPE[provider], f"controller{sfx}")) == {
        (80, tuple(sorted(WORLD))), (443, tuple(sorted(WORLD))), (7703, tuple(sorted(WORLD))),
        (22, (OPERATORS,)), (8404, (OPERATORS,)),
    }
    for ep in plan.edgepoints:
        assert rules_of(provider, run.one(FIREWALL_TYPE[provider], f"{ep.name}-edge{sfx}")) == {
            (80, tuple(sorted(WORLD))),
            (22, tuple(sorted((OPERATORS, ctrl)))),
            (7701, (ctrl,)), (7702, (ctrl,)), (8404, (ctrl,)),
        }
    edge_private = f"{private_ip(provider, run, plan, 'fsn-1' if provider == 'hetzner' else 'fra-1')}/32"
    agent = run.one(FIREWALL_TYPE[provider], f"{'fsn' if provider == 'hetzner' else 'fra'}-agent{sfx}")
    expected = {(22, tuple(sorted((OPERATORS, ctrl)))), (7701, (ctrl,))}
    if provider != "hetzner":  # Hetzner firewalls do not see the private network
        expected |= {(7701, (edge_private,)), (8000, (edge_private,))}
    assert rules_of(provider, agent) == expected
    # single-server edgepoints have no agent firewall
    assert len(run.of(FIREWALL_TYPE[provider])) == 1 + len(plan.edgepoints) + 1


def test_each_server_carries_its_firewall_from_the_first_boot(shop):
    provider, run, plan = shop
    sfx = FW_SUFFIX[provider]
    for s in (plan.controller, *plan.servers):
        fw_name = ("controller" if s.name == "controller"
                   else f"{s.edgepoint}-{'edge' if 'edge' in s.roles else 'agent'}") + sfx
        fw = run.one(FIREWALL_TYPE[provider], fw_name)
        i = run.one(SERVER_TYPE[provider], s.name).inputs
        if provider == "hetzner":
            assert i["firewallIds"] == [int(fw.id)]
        elif provider == "aws":
            assert i["vpcSecurityGroupIds"] == [fw.id]
        else:  # the firewall selects droplets by a tag the droplet has at creation
            assert len(fw.inputs["tags"]) == 1 and fw.inputs["tags"][0] in i["tags"]
            others = [f for f in run.of(FIREWALL_TYPE[provider]) if f is not fw]
            assert not any(t in i["tags"] for f in others for t in f.inputs["tags"])
            assert {o["protocol"] for o in fw.inputs["outboundRules"]} == {"tcp", "udp", "icmp"}


def test_private_networks_and_slot_routes(shop):
    provider, run, plan = shop
    for ep in plan.edgepoints:
        members = [s for s in plan.servers if s.edgepoint == ep.name]
        if provider == "hetzner":
            net = run.one("hcloud:index/network:Network", f"{ep.name}-network")
            assert net.inputs["ipRange"] == plan.private_network == "10.0.0.0/8"
            sub = run.one("hcloud:index/networkSubnet:NetworkSubnet", f"{ep.name}-subnet")
            assert sub.inputs["ipRange"] == ep.private_subnet
            assert sub.inputs["networkZone"] == {"fsn": "eu-central", "hel": "eu-central",
                                                 "ash": "us-east"}[ep.name]
            assert int(sub.inputs["networkId"]) == int(net.id)
            for s in members:
                server = run.one("hcloud:index/server:Server", s.name)
                assert server.inputs["networks"] == [
                    {"networkId": int(net.id), "ip": s.private_address, "aliasIps": []}]
                route = run.one("hcloud:index/networkRoute:NetworkRoute", f"{s.name}-slots")
                assert (route.inputs["destination"], route.inputs["gateway"]) == (
                    s.slot_subnet, s.private_address)
                assert ip_network(s.slot_subnet).subnet_of(ip_network(net.inputs["ipRange"]))
        elif provider == "aws":
            vpc = run.one("aws:ec2/vpc:Vpc", f"{ep.name}-vpc")
            assert vpc.inputs["cidrBlock"] == ep.private_subnet
            assert vpc.inputs["region"] == ep.location
            table = run.one("aws:ec2/routeTable:RouteTable", f"{ep.name}-routes")
            default = run.one("aws:ec2/route:Route", f"{ep.name}-default-route")
            assert default.inputs["destinationCidrBlock"] == "0.0.0.0/0"
            assert default.inputs["gatewayId"] == run.one(
                "aws:ec2/internetGateway:InternetGateway", f"{ep.name}-igw").id
            for s in members:
                inst = run.one("aws:ec2/instance:Instance", s.name)
                assert inst.inputs["privateIp"] == s.private_address
                assert inst.inputs["subnetId"] == run.one("aws:ec2/subnet:Subnet",
                                                          f"{ep.name}-subnet").id
                route = run.one("aws:ec2/route:Route", f"{s.name}-slots")
                assert route.inputs["routeTableId"] == table.id
                assert route.inputs["destinationCidrBlock"] == s.slot_subnet
                assert route.inputs["networkInterfaceId"] == inst.state["primaryNetworkInterfaceId"]
        else:
            vpc = run.one("digitalocean:index/vpc:Vpc", f"{ep.name}-vpc")
            assert (vpc.inputs["ipRange"], vpc.inputs["region"]) == (ep.private_subnet, ep.location)
            for s in members:
                assert run.one(SERVER_TYPE[provider], s.name).inputs["vpcUuid"] == vpc.id
    if provider == "digitalocean":  # the controller stays in the region's default VPC
        assert "vpcUuid" not in run.one(SERVER_TYPE[provider], "controller").inputs


def test_labels_name_network_edgepoint_owner_and_role(shop):
    provider, run, plan = shop
    for s in (plan.controller, *plan.servers):
        i = run.one(SERVER_TYPE[provider], s.name).inputs
        want = {"edgeshot-network": plan.network, "edgeshot-owner": "acme-platform",
                "edgeshot-role": ("controller" if s.name == "controller"
                                  else "edge" if "edge" in s.roles else "agent")}
        if s.edgepoint:
            want["edgeshot-edgepoint"] = s.edgepoint
        if provider == "digitalocean":
            got = dict(t.split(":", 1) for t in i["tags"] if not t.startswith("edgeshot-fw:"))
            assert got == want
            continue
        got = i["labels" if provider == "hetzner" else "tags"]
        assert {k: v for k, v in got.items() if k != "Name"} == want
    tagged = [r for r in run.resources if r.custom and ("labels" in r.inputs or (
        "tags" in r.inputs and isinstance(r.inputs["tags"], dict)))]
    assert len(tagged) == {"hetzner": 14, "aws": 35, "digitalocean": 0}[provider]
    for r in tagged:
        got = r.inputs.get("labels") or r.inputs["tags"]
        assert got["edgeshot-network"] == plan.network and got["edgeshot-owner"] == "acme-platform"


def test_inventory_output(shop):
    provider, run, plan = shop
    inv = run.outputs["inventory"]
    assert "inventory" not in run.secret_outputs
    assert inv["format"] == 1 and inv["network"] == plan.network and inv["provider"] == provider
    assert inv["owner"] == "acme-platform"
    assert set(inv["servers"]) == {s.name for s in plan.servers}
    user = {"hetzner": "root", "aws": "admin", "digitalocean": "root"}[provider]
    for s in (plan.controller, *plan.servers):
        got = inv["controller"] if s.name == "controller" else inv["servers"][s.name]
        assert got["address"] == public_ip(provider, run, s.name)
        ip_address(got["address"])
        assert got["edgepoint"] == s.edgepoint and got["region"] == s.region
        assert got["roles"] == list(s.roles) and got["ssh_user"] == user
        assert got["ports"] == s.ports and got["slot_subnet"] == s.slot_subnet
        if s.name != "controller":
            assert got["private_address"] == private_ip(provider, run, plan, s.name)
        assert got["cloud_id"] == run.one(SERVER_TYPE[provider], s.name).id
    for ep in plan.edgepoints:
        e = inv["edgepoints"][ep.name]
        assert (e["edge_host"], e["servers"], e["private_subnet"]) == (
            ep.edge_host, list(ep.servers), ep.private_subnet)
        assert e["slot_ports"] == [8000]
    assert run.outputs["edge_addresses"] == {
        ep.name: public_ip(provider, run, ep.edge_host) for ep in plan.edgepoints}
    assert run.outputs["controller_address"] == public_ip(provider, run, "controller")


def test_secrets_are_secret_and_nowhere_else(shop, signing_key):
    provider, run, _ = shop
    assert run.secret_outputs == {"secrets"}
    secrets = run.outputs["secrets"]
    assert secrets == {"edgeAgentToken": TOKENS["edgeshot:edgeAgentToken"],
                       "controllerAgentToken": TOKENS["edgeshot:controllerAgentToken"],
                       "controllerEdgeToken": TOKENS["edgeshot:controllerEdgeToken"],
                       "signingKey": signing_key}
    plain = run.all_text() + json.dumps({k: v for k, v in run.outputs.items() if k != "secrets"})
    private_key_body = signing_key.splitlines()[1]
    for value in [*TOKENS.values(), private_key_body]:
        assert value not in plain
    assert run.outputs["signing_public_key"].startswith("-----BEGIN PUBLIC KEY-----")


def test_no_warning_when_operators_are_declared(shop):
    assert shop[1].warnings == []


def test_components_register_their_outputs(shop):
    provider, run, plan = shop
    outs = {r.name: run.component_outputs[r.urn] for r in run.resources
            if r.type.startswith("edgeshot:provision:")}
    network = outs[plan.network]
    # (the engine's wire format: numbers are floats, nulls are left out)
    assert {n: v["address"] for n, v in network["inventory"]["servers"].items()} == {
        n: v["address"] for n, v in run.outputs["inventory"]["servers"].items()}
    assert network["controller_address"] == public_ip(provider, run, "controller")
    for ep in plan.edgepoints:
        assert outs[ep.name] == {"name": ep.name, "region": ep.region,
                                 "private_subnet": ep.private_subnet,
                                 "servers": list(ep.servers),
                                 "edge_address": public_ip(provider, run, ep.edge_host)}
    for s in (plan.controller, *plan.servers):
        got = outs[s.name]
        assert got["address"] == public_ip(provider, run, s.name)
        assert (got["name"], got.get("edgepoint"), got["region"]) == (s.name, s.edgepoint, s.region)
        assert got["cloud_id"] == run.one(SERVER_TYPE[provider], s.name).id


def test_aws_site_wiring(run_stack, plans):
    run, plan = run_stack("aws"), plans["aws"]
    sites = {"controller": (plan.controller.location, plan.controller_subnet),
             **{ep.name: (ep.location, ep.private_subnet) for ep in plan.edgepoints}}
    for site, (region, cidr) in sites.items():
        vpc = run.one("aws:ec2/vpc:Vpc", f"{site}-vpc")
        igw = run.one("aws:ec2/internetGateway:InternetGateway", f"{site}-igw")
        subnet = run.one("aws:ec2/subnet:Subnet", f"{site}-subnet")
        table = run.one("aws:ec2/routeTable:RouteTable", f"{site}-routes")
        assoc = run.one("aws:ec2/routeTableAssociation:RouteTableAssociation",
                        f"{site}-routes-subnet")
        assert vpc.inputs["cidrBlock"] == subnet.inputs["cidrBlock"] == cidr
        assert igw.inputs["vpcId"] == subnet.inputs["vpcId"] == table.inputs["vpcId"] == vpc.id
        assert (assoc.inputs["subnetId"], assoc.inputs["routeTableId"]) == (subnet.id, table.id)
        assert subnet.inputs["mapPublicIpOnLaunch"] is False
        for r in (vpc, igw, subnet, table, assoc):
            assert r.inputs["region"] == region
        groups = ["controller-sg"] if site == "controller" else [
            g.name for g in run.of("aws:ec2/securityGroup:SecurityGroup")
            if g.name in (f"{site}-edge-sg", f"{site}-agent-sg")]
        assert groups
        for name in groups:
            sg = run.one("aws:ec2/securityGroup:SecurityGroup", name)
            assert sg.inputs["vpcId"] == vpc.id and sg.inputs["region"] == region
            assert sg.inputs["egress"] == [{"protocol": "-1", "fromPort": 0, "toPort": 0,
                                            "cidrBlocks": ["0.0.0.0/0"],
                                            "ipv6CidrBlocks": ["::/0"],
                                            "description": "all outbound"}]
    assert plan.controller_subnet not in {ep.private_subnet for ep in plan.edgepoints}
    for s in (plan.controller, *plan.servers):
        inst = run.one("aws:ec2/instance:Instance", s.name)
        eip = run.one("aws:ec2/eip:Eip", f"{s.name}-ip")
        assert (eip.inputs["domain"], eip.inputs["instance"]) == ("vpc", inst.id)
        assert eip.inputs["region"] == inst.inputs["region"] == s.location
        assert inst.inputs["associatePublicIpAddress"] is True  # packages at first boot


def test_digitalocean_tags_exist_before_use(run_stack):
    run = run_stack("digitalocean")
    made = {r.inputs["name"] for r in run.of("digitalocean:index/tag:Tag")}
    used = {t for r in run.of("digitalocean:index/droplet:Droplet") for t in r.inputs["tags"]}
    used |= {t for r in run.of("digitalocean:index/firewall:Firewall") for t in r.inputs["tags"]}
    assert used == made
    assert "edgeshot-network:acme-edge-do" in made and "edgeshot-fw:acme-edge-do-fra-agent" in made
