"""The policy pack, called as the engine would: its rules on the resources the real program
makes (compliant) and on the same resources changed to break each rule (violating); its
pulumi_policy objects; and the pack served over gRPC by stacks/policy/__main__.py."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    StackValidationArgs,
)

from edgeshot.plan import compile_plan
from edgeshot.provision import PackSettings, policies
from edgeshot.provision._policy import (
    NOT_CONFIGURED,
    check_cost,
    check_firewall,
    check_labels,
    check_location,
    check_operator_access,
    check_spend,
    check_ssh_breadth,
)
from edgeshot.spec import load

from .conftest import POLICIES, ROOT
from .policies import write_policy

PROVIDERS = ("hetzner", "aws", "digitalocean")
MANDATORY = (check_location, check_cost, check_firewall, check_labels)
SERVER = {"hetzner": ("hcloud:index/server:Server", "fsn-2", "location", "serverType"),
          "aws": ("aws:ec2/instance:Instance", "fra-2", "region", "instanceType"),
          "digitalocean": ("digitalocean:index/droplet:Droplet", "fra-2", "region", "size")}
FIREWALL = {"hetzner": ("hcloud:index/firewall:Firewall", "fsn-agent-fw"),
            "aws": ("aws:ec2/securityGroup:SecurityGroup", "fra-agent-sg"),
            "digitalocean": ("digitalocean:index/firewall:Firewall", "fra-agent-fw")}


@pytest.fixture(scope="module")
def settings():
    return {p: PackSettings.from_plan(compile_plan(load(POLICIES[p]))) for p in PROVIDERS}


def violations(s, type_, props):
    return [m for check in MANDATORY for m in check(s, type_, props)]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_programs_own_resources_comply(provider, run_stack, settings):
    run = run_stack(provider)
    s = settings[provider]
    for r in run.resources:
        assert violations(s, r.type, r.inputs) == [], (r.type, r.name)
        assert check_ssh_breadth(s, r.type, r.inputs) == []
    resources = [(r.type, r.inputs) for r in run.resources]
    assert check_spend(s, resources) == []
    assert check_operator_access(s, resources) == []
    assert s.locations == {"hetzner": {"nbg1", "fsn1", "hel1", "ash"},
                           "aws": {"eu-central-1", "eu-north-1", "us-east-1"},
                           "digitalocean": {"fra1", "lon1", "nyc3"}}[provider]
    assert s.public_ports == {80, 443, 7703} and 22 in s.ports and 8000 in s.ports


def server_props(run, provider, **changes):
    type_, name, *_ = SERVER[provider]
    props = copy.deepcopy(run.one(type_, name).inputs)
    props.update(changes)
    return type_, props


@pytest.mark.parametrize("provider,location,kind,dear", [
    ("hetzner", "sin", "cx999", "ccx23"),
    ("aws", "ap-south-1", "m7.huge", "c6i.xlarge"),
    ("digitalocean", "blr1", "s-9vcpu", "s-4vcpu-8gb"),
])
def test_servers_elsewhere_or_dearer_are_refused(provider, location, kind, dear, run_stack,
                                                 settings):
    run, s = run_stack(provider), settings[provider]
    _, _, where, what = SERVER[provider]
    type_, props = server_props(run, provider, **{where: location})
    assert check_location(s, type_, props) == [
        f"{where} {location!r} is not one of the network's locations "
        f"({', '.join(sorted(s.locations))})"]
    type_, props = server_props(run, provider, **{what: kind})
    assert "has no known price" in check_cost(s, type_, props)[0]
    type_, props = server_props(run, provider, **{what: dear})
    assert check_cost(s, type_, props) == [
        f"{what} {dear!r} costs {s.prices[dear]} {s.currency}/month, above the ceiling of "
        f"{s.max_monthly} {s.currency}/month"]
    if provider == "aws":  # a region only on the provider still counts
        props.pop("region")
        assert check_location(s, type_, props, {"region": "us-east-1"}) == []
        assert "not set" in check_location(s, type_, props)[0]


def add_rule(provider, props, port, sources, protocol="tcp"):
    if provider == "hetzner":
        props["rules"].append({"direction": "in", "protocol": protocol, "port": port,
                               "sourceIps": sources})
    elif provider == "aws":
        lo, _, hi = str(port).partition("-")
        props["ingress"].append({"protocol": protocol, "fromPort": float(lo),
                                 "toPort": float(hi or lo), "cidrBlocks": sources})
    else:
        props["inboundRules"].append({"protocol": protocol, "portRange": str(port),
                                      "sourceAddresses": sources})


BAD_RULES = [  # port, sources, protocol, expected message part
    ("22", ["0.0.0.0/0"], "tcp", "tcp port 22 is open to the world (0.0.0.0/0)"),
    ("7701", ["::/0"], "tcp", "tcp port 7701 is open to the world"),
    ("5432", ["203.0.113.0/24"], "tcp", "tcp port 5432: not a port of the network"),
    ("1-65535", ["203.0.113.0/24"], "tcp", "ports 1-65535: a range"),
    ("53", ["203.0.113.0/24"], "udp", "inbound udp rule: edgeshot opens TCP ports only"),
    ("7701", ["100.64.0.0/10"], "tcp", "from 100.64.0.0/10: neither an operator network"),
    ("22", ["10.0.0.0/8"], "tcp", "tcp port 22 from 10.0.0.0/8: neither an operator network, "
                                  "nor a single host (controller, edge host)"),
]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("port,sources,protocol,message", BAD_RULES)
def test_firewall_rules_beyond_ports_and_sources(provider, port, sources, protocol, message,
                                                 run_stack, settings):
    run, s = run_stack(provider), settings[provider]
    type_, name = FIREWALL[provider]
    props = copy.deepcopy(run.one(type_, name).inputs)
    assert check_firewall(s, type_, props) == []
    add_rule(provider, props, port, sources, protocol)
    found = check_firewall(s, type_, props)
    assert len(found) == 1 and message in found[0], found


def test_firewall_sources_that_are_not_addresses(settings):
    s = settings["aws"]
    sg = {"ingress": [{"protocol": "tcp", "fromPort": 7701, "toPort": 7701,
                       "securityGroups": ["sg-123"]}]}
    assert "sources must be addresses" in check_firewall(
        s, "aws:ec2/securityGroup:SecurityGroup", sg)[0]
    assert "TCP ports only" in check_firewall(s, "aws:ec2/securityGroup:SecurityGroup", {
        "ingress": [{"protocol": "-1", "fromPort": 0, "toPort": 0, "cidrBlocks": ["1.2.3.4/32"]}]})[0]
    # stand-alone rule resources are checked as well
    assert "open to the world" in check_firewall(s, "aws:ec2/securityGroupRule:SecurityGroupRule", {
        "type": "ingress", "protocol": "tcp", "fromPort": 22, "toPort": 22,
        "cidrBlocks": ["0.0.0.0/0"]})[0]
    assert check_firewall(s, "aws:ec2/securityGroupRule:SecurityGroupRule", {
        "type": "egress", "protocol": "-1", "fromPort": 0, "toPort": 0,
        "cidrBlocks": ["0.0.0.0/0"]}) == []
    assert "open to the world" in check_firewall(
        s, "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
        {"ipProtocol": "tcp", "fromPort": 8404, "toPort": 8404, "cidrIpv4": "0.0.0.0/0"})[0]
    do = {"inboundRules": [{"protocol": "tcp", "portRange": "7701", "sourceTags": ["web"]}]}
    assert "sources must be addresses" in check_firewall(
        settings["digitalocean"], "digitalocean:index/firewall:Firewall", do)[0]
    # outbound rules are not this rule's business
    assert check_firewall(settings["hetzner"], "hcloud:index/firewall:Firewall", {"rules": [
        {"direction": "out", "protocol": "udp", "port": "any", "destinationIps": ["0.0.0.0/0"]}]}) == []


@pytest.mark.parametrize("provider", PROVIDERS)
def test_required_labels(provider, run_stack, settings):
    run, s = run_stack(provider), settings[provider]
    type_, props = server_props(run, provider)
    key = {"hetzner": "labels", "aws": "tags", "digitalocean": "tags"}[provider]
    if provider == "digitalocean":
        props[key] = [t for t in props[key] if not t.startswith(("edgeshot-owner:", "edgeshot-role:"))]
        assert check_labels(s, type_, props) == ["label 'edgeshot-owner' is missing",
                                                 "label 'edgeshot-role' is missing"]
        props[key] = ["edgeshot-network:other", "edgeshot-owner:x", "edgeshot-role:controller"]
    else:
        del props[key]["edgeshot-owner"]
        del props[key]["edgeshot-edgepoint"]
        assert check_labels(s, type_, props) == ["label 'edgeshot-owner' is missing",
                                                 "label 'edgeshot-edgepoint' is missing"]
        props[key] = {"edgeshot-network": "other", "edgeshot-owner": "x",
                      "edgeshot-role": "controller"}
    assert check_labels(s, type_, props) == [
        f"label 'edgeshot-network' is 'other', not this network's '{s.network}'"]


def test_advisories(run_stack, settings, tmp_path):
    s = settings["hetzner"]
    wide = {"rules": [{"direction": "in", "protocol": "tcp", "port": "22",
                       "sourceIps": ["10.0.0.0/8", "2001:db8::/32", "203.0.113.0/24"]}]}
    assert check_ssh_breadth(s, "hcloud:index/firewall:Firewall", wide) == [
        "SSH is open to 10.0.0.0/8 (16,777,216 addresses): is every one of them an operator's?",
        "SSH is open to 2001:db8::/32 (79,228,162,514,264,337,593,543,950,336 addresses): is "
        "every one of them an operator's?"]
    run = run_stack("hetzner")
    resources = [(r.type, r.inputs) for r in run.resources]
    extra = ("hcloud:index/server:Server", {"serverType": "cx42", "location": "fsn1"})
    assert s.planned_monthly == Decimal("28.73")
    assert check_spend(s, [*resources, extra]) == [
        "the stack's servers cost 45.13 EUR/month; the plan says 28.73 EUR/month"]
    lonely = run_stack("hetzner", policy=write_policy(tmp_path, operators=()))
    assert "no firewall lets an operator network in over SSH" in check_operator_access(
        s, [(r.type, r.inputs) for r in lonely.resources])[0]


# --- the pulumi_policy objects -------------------------------------------------------


@pytest.fixture
def pack(monkeypatch):
    monkeypatch.delenv("EDGESHOT_POLICY_FILE", raising=False)
    return {p.name: p for p in policies()}


def validate(policy, type_, props, config=None, provider=None):
    found: list[str] = []
    opts = PolicyResourceOptions(False, [], None, [], None, [], None)
    args = ResourceValidationArgs(type_, props, f"urn:{type_}", "x", opts, provider, config or {})
    policy.validate(args, lambda message, urn=None: found.append(message))
    return found


def test_pack_policies_and_enforcement(pack):
    levels = {name: p.enforcement_level for name, p in pack.items()}
    assert levels == {
        "edgeshot-server-location": EnforcementLevel.MANDATORY,
        "edgeshot-server-cost": EnforcementLevel.MANDATORY,
        "edgeshot-firewall-rules": EnforcementLevel.MANDATORY,
        "edgeshot-required-labels": EnforcementLevel.MANDATORY,
        "edgeshot-ssh-source-breadth": EnforcementLevel.ADVISORY,
        "edgeshot-monthly-spend": EnforcementLevel.ADVISORY,
        "edgeshot-operator-access": EnforcementLevel.ADVISORY,
    }


def test_pack_objects_validate_with_config_and_environment(pack, run_stack, monkeypatch):
    run = run_stack("hetzner")
    server = run.one("hcloud:index/server:Server", "hel-1")
    location = pack["edgeshot-server-location"]
    # not told which network: fail closed on the resources it guards, quiet on others
    assert validate(location, server.type, server.inputs) == [NOT_CONFIGURED]
    assert validate(location, "random:index/randomId:RandomId", {}) == []
    config = {"policyFile": str(POLICIES["hetzner"])}
    assert validate(location, server.type, server.inputs, config) == []
    # the config narrows the network's facts
    narrowed = {**config, "allowedLocations": ["fsn1", "nbg1"]}
    assert "'hel1' is not one of the network's locations (fsn1, nbg1)" in validate(
        location, server.type, server.inputs, narrowed)[0]
    cost = pack["edgeshot-server-cost"]
    assert "above the ceiling of 3 EUR/month" in validate(
        cost, server.type, server.inputs, {**config, "maxMonthly": 3})[0]
    monkeypatch.setenv("EDGESHOT_POLICY_FILE", str(POLICIES["hetzner"]))
    assert validate(location, server.type, server.inputs) == []
    fw = copy.deepcopy(run.one("hcloud:index/firewall:Firewall", "hel-edge-fw").inputs)
    fw["rules"].append({"direction": "in", "protocol": "tcp", "port": "22",
                        "sourceIps": ["0.0.0.0/0"]})
    assert len(validate(pack["edgeshot-firewall-rules"], "hcloud:index/firewall:Firewall", fw)) == 1
    monkeypatch.setenv("EDGESHOT_POLICY_FILE", "/nonexistent/policy.py")
    assert "no such policy file" in validate(location, server.type, server.inputs)[0]


def test_pack_stack_policies(pack, run_stack):
    run = run_stack("hetzner")
    opts = PolicyResourceOptions(False, [], None, [], None, [], None)
    resources = [PolicyResource(r.type, r.inputs, r.urn, r.name, opts, None, None, [], {})
                 for r in run.resources]
    config = {"policyFile": str(POLICIES["hetzner"])}

    def stack_check(name: str, cfg: dict) -> list[str]:
        found: list[str] = []
        pack[name].validate(StackValidationArgs(resources, cfg),
                            lambda m, urn=None: found.append(m))
        return found

    assert stack_check("edgeshot-monthly-spend", config) == []
    assert stack_check("edgeshot-operator-access", config) == []
    assert stack_check("edgeshot-monthly-spend", {**config, "warnAboveMonthly": 10}) == [
        "the stack's servers cost 28.73 EUR/month; the plan says 10 EUR/month"]


# --- the pack as the engine runs it ----------------------------------------------------


def test_pack_served_over_grpc(tmp_path):
    import grpc
    from google.protobuf import empty_pb2, json_format, struct_pb2
    from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

    pack_dir = ROOT / "stacks" / "policy"
    env = {**os.environ, "EDGESHOT_POLICY_FILE": str(POLICIES["hetzner"])}
    proc = subprocess.Popen([sys.executable, str(pack_dir / "__main__.py")], cwd=pack_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline().strip())  # the pack prints its port, as for the engine
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = analyzer_pb2_grpc.AnalyzerStub(channel)
            info = stub.GetAnalyzerInfo(empty_pb2.Empty())
            assert info.name == "edgeshot"
            assert {p.name for p in info.policies} >= {"edgeshot-firewall-rules",
                                                       "edgeshot-server-location"}

            def analyze(type_: str, props: dict) -> list[str]:
                st = struct_pb2.Struct()
                json_format.ParseDict(props, st)
                req = analyzer_pb2.AnalyzeRequest(type=type_, properties=st, urn=f"urn:{type_}",
                                                  name="x")
                return [d.message for d in stub.Analyze(req).diagnostics]

            firewall = {"name": "acme-edge-fsn-edge", "rules": [
                {"direction": "in", "protocol": "tcp", "port": "80",
                 "sourceIps": ["0.0.0.0/0", "::/0"]},
                {"direction": "in", "protocol": "tcp", "port": "7701", "sourceIps": ["0.0.0.0/0"]}],
                "labels": {"edgeshot-network": "acme-edge", "edgeshot-owner": "ops"}}
            assert analyze("hcloud:index/firewall:Firewall", firewall) == [
                "No inbound rule beyond the network's ports and sources.\n"
                "inbound tcp port 7701 is open to the world (0.0.0.0/0); only 80, 443, 7703 may be"]
            server = {"location": "sin", "serverType": "cx22", "labels": {
                "edgeshot-network": "acme-edge", "edgeshot-owner": "ops", "edgeshot-role": "agent",
                "edgeshot-edgepoint": "fsn"}}
            assert len(analyze("hcloud:index/server:Server", server)) == 1
            server["location"] = "fsn1"
            assert analyze("hcloud:index/server:Server", server) == []
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def test_pack_project_files():
    import yaml
    meta = yaml.safe_load((ROOT / "stacks/policy/PulumiPolicy.yaml").read_text())
    assert meta["runtime"]["name"] == "python" and meta["version"]
    venv = (ROOT / "stacks/policy" / meta["runtime"]["options"]["virtualenv"]).resolve()
    assert venv == (ROOT / ".venv").resolve()
    assert Path(ROOT / "stacks/policy/requirements.txt").read_text().count("[cloud]") == 1
