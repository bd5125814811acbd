"""A plan that adds an edgepoint adds exactly that edgepoint's resources, on every cloud,
and changes nothing else; and the plan's private subnets stay put meanwhile."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from edgeshot.plan import compile_plan, diff
from edgeshot.spec import load

from .conftest import SHOP
from .harness import Run
from .policies import write_policy


def ancestors(run: Run, urn: str) -> list[str]:
    by_urn = {r.urn: r for r in run.resources}
    chain = []
    while urn in by_urn:
        urn = by_urn[urn].parent
        chain.append(urn)
    return chain


@pytest.mark.parametrize("provider", ["hetzner", "aws", "digitalocean"])
def test_adding_an_edgepoint_adds_exactly_its_resources(provider, run_stack, tmp_path):
    before_file = write_policy(tmp_path, provider, {"fsn": 2, "hel": 1}, name="before.py")
    # inserted first: the plan places subnets by hash, not by position
    after_file = write_policy(tmp_path, provider, {"ash": 1, "fsn": 2, "hel": 1}, name="after.py")

    changes = diff(compile_plan(load(before_file)), compile_plan(load(after_file)))
    added = {(c.kind, c.id) for c in changes.changes if c.action == "add"}
    assert {("edgepoint", "ash"), ("server", "ash-1")} <= added
    assert not [c for c in changes.changes if c.kind in ("server", "edgepoint", "controller")
                and c.action != "add"]

    before = run_stack(provider, policy=before_file)
    after = run_stack(provider, policy=after_file)
    old = {r.urn: r for r in before.resources}
    new = {r.urn: r for r in after.resources}
    assert set(old) <= set(new), "nothing is removed or renamed"
    for urn, r in old.items():
        assert new[urn].inputs == r.inputs, f"{r.type} {r.name} changed"

    edgepoint = after.one("edgeshot:provision:Edgepoint", "ash")
    extra = [new[u] for u in set(new) - set(old)]
    assert edgepoint in extra
    for r in extra:
        assert r is edgepoint or edgepoint.urn in ancestors(after, r.urn), (r.type, r.name)
    servers = {"hetzner": "hcloud:index/server:Server", "aws": "aws:ec2/instance:Instance",
               "digitalocean": "digitalocean:index/droplet:Droplet"}[provider]
    assert [r.name for r in extra if r.type == servers] == ["ash-1"]
    per_edgepoint = {"hetzner": 7, "aws": 13, "digitalocean": 7}[provider]
    # hetzner: component, network, subnet, edge firewall, EdgeServer, server, slot route;
    # aws: component, vpc, gateway, subnet, route table, default route, association, key pair,
    #      security group, EdgeServer, instance, elastic ip, slot route;
    # digitalocean: component, edgepoint tag, firewall tag, vpc, firewall, EdgeServer, droplet
    assert len(extra) == per_edgepoint


def test_private_subnets_are_stable_disjoint_and_apart_from_the_slots(tmp_path):
    a = compile_plan(load(write_policy(tmp_path, "hetzner", {"fsn": 2, "hel": 1, "ash": 3},
                                       name="a.py")))
    b = compile_plan(load(write_policy(tmp_path, "hetzner", {"ash": 3, "sin": 1, "fsn": 2},
                                       name="b.py")))
    sub_a = {e.name: e.private_subnet for e in a.edgepoints}
    sub_b = {e.name: e.private_subnet for e in b.edgepoints}
    # removing hel, adding sin and reordering leave the others' subnets as they were
    assert sub_a["fsn"] == sub_b["fsn"] and sub_a["ash"] == sub_b["ash"]
    for plan in (a, b):
        nets = [ip_network(e.private_subnet) for e in plan.edgepoints]
        nets.append(ip_network(plan.controller_subnet))
        block, slots = ip_network(plan.private_network), ip_network("10.64.0.0/12")
        for i, n in enumerate(nets):
            assert n.prefixlen == 22 and n.subnet_of(block) and not n.overlaps(slots)
            assert not any(n.overlaps(m) for m in nets[i + 1:])
        for s in plan.servers:
            ep = next(e for e in plan.edgepoints if e.name == s.edgepoint)
            k = int(s.name.rsplit("-", 1)[1])
            assert ip_address(s.private_address) == \
                ip_network(ep.private_subnet).network_address + 10 + k - 1
            assert ip_network(s.slot_subnet).subnet_of(block)
        assert plan.image == "debian-12" and plan.operators == ("203.0.113.0/24",)


def test_private_addresses_only_where_the_cloud_lets_us_choose(tmp_path):
    do = compile_plan(load(write_policy(tmp_path, "digitalocean", name="do.py")))
    assert all(s.private_address is None for s in do.servers)
    assert all(e.private_subnet for e in do.edgepoints)
    local = compile_plan(load(SHOP / "policy_local.py"))
    assert local.private_network is None and local.image is None
    assert all(e.private_subnet is None for e in local.edgepoints)
    assert all(s.private_address is None for s in local.servers)
