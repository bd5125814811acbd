"""Cloud-init user data: valid cloud-config, the host prepared, nothing secret, and stable
across plan changes that must not replace a server."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from edgeshot.plan import compile_plan
from edgeshot.provision._cloudinit import GUARD_NFT, GUARD_UNIT, user_data
from edgeshot.spec import load

from .conftest import POLICIES
from .policies import write_policy


def files(doc: dict) -> dict[str, str]:
    return {f["path"]: f["content"] for f in doc["write_files"]}


def test_edge_servers_forward_and_guard_the_metadata_service():
    plan = compile_plan(load(POLICIES["hetzner"]))
    for server in plan.servers:
        text = user_data(plan, server)
        assert text.startswith("#cloud-config\n")
        doc = yaml.safe_load(text)
        got = files(doc)
        assert got["/etc/sysctl.d/90-edgeshot.conf"] == "net.ipv4.ip_forward = 1\n"
        assert got["/etc/edgeshot/guard.nft"] == GUARD_NFT
        assert got["/etc/systemd/system/edgeshot-guard.service"] == GUARD_UNIT
        assert "PasswordAuthentication no" in got["/etc/ssh/sshd_config.d/90-edgeshot.conf"]
        assert {"python3", "nftables", "iproute2"} <= set(doc["packages"])
        cmds = doc["runcmd"]
        # the guard is up before forwarding is switched on
        assert cmds.index(["systemctl", "enable", "--now", "edgeshot-guard.service"]) < \
            cmds.index(["sysctl", "--system"])
    controller = yaml.safe_load(user_data(plan, plan.controller))
    assert "/etc/edgeshot/guard.nft" not in files(controller)
    assert "/etc/sysctl.d/90-edgeshot.conf" not in files(controller)


def test_guard_ruleset_is_valid_nftables(tmp_path):
    nft = shutil.which("nft") or (shutil.which("nft", path="/usr/sbin:/sbin"))
    if nft is None:
        pytest.skip("nft (Debian package nftables) is not installed: cannot check the ruleset")
    path = tmp_path / "guard.nft"
    path.write_text(GUARD_NFT)
    check = subprocess.run([nft, "-c", "-f", str(path)], capture_output=True, text=True)
    if "Operation not permitted" in check.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN")
    assert check.returncode == 0, check.stderr  # -c: checked, never applied
    path.write_text(GUARD_NFT.replace("ip daddr", "ip dadr"))
    assert subprocess.run([nft, "-c", "-f", str(path)], capture_output=True).returncode != 0


def test_user_data_holds_only_what_never_changes_for_a_server(tmp_path):
    """A change of user data replaces a server on Hetzner and DigitalOcean: ports, slot
    subnets and the apps' ports must not be in it."""
    a = compile_plan(load(write_policy(tmp_path, "hetzner", {"fsn": 2, "hel": 1}, name="a.py")))
    b_file = write_policy(tmp_path, "hetzner", {"ash": 1, "fsn": 2, "hel": 1}, port=9000,
                          slot_network="10.96.0.0/12", name="b.py")
    b_file.write_text(b_file.read_text().replace(
        "operators=", "ports=__import__('edgeshot.spec').spec.Ports(agent=7801, http=8080),\n"
        "    operators="))
    b = compile_plan(load(b_file))
    before = {s.name: s for s in a.servers}
    after = {s.name: s for s in b.servers}
    assert before["fsn-1"].ports != after["fsn-1"].ports
    assert before["fsn-1"].slot_subnet != after["fsn-1"].slot_subnet
    for name in ("fsn-1", "fsn-2", "hel-1"):
        assert user_data(a, before[name]) == user_data(b, after[name])
