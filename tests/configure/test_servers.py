"""site.yml over real SSH on throwaway servers (booted with systemd-nspawn): it installs
everything, the services run and answer, a second run changes nothing (through the Pulumi
dynamic resource's provider), an unreachable server is reported and its edgepoint
excluded, and no secret reaches a log. The tests run in this order and build on the
session's first run (conftest.first_run)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest

# The first test brings the lab up and configures it (minutes on a busy machine).
pytestmark = [pytest.mark.root, pytest.mark.timeout(1200)]

AGENTS = ("north-1", "north-2", "south-1")
EDGES = ("north-1", "south-1")


def sh(lab, server: str, cmd: str) -> str:
    return lab.servers[server].ssh(cmd).stdout


def test_site_installs_everything(first_run):
    r = first_run.result
    assert r.ok, r.summary()
    assert r.status == "successful" and r.excluded_edgepoints == []
    for name, h in r.hosts.items():
        assert h.status == "changed" and h.changed > 5, (name, h)
    # what the roles reported
    rep = {n: h.reports for n, h in r.hosts.items()}
    for full in ("north-1", "south-1"):
        assert rep[full]["criu"]["usable"] is True and rep[full]["criu"]["version"] == "4.2.1"
    # north-2 keeps systemd-nspawn's confinement: `criu check` fails, the role says so
    assert rep["north-2"]["criu"]["usable"] is False
    assert "criu check" in rep["north-2"]["criu"]["reason"]
    for name in (*EDGES, "controller"):
        assert rep[name]["haproxy"]["promex"] is True
        assert rep[name]["haproxy"]["version"].startswith("2.")
    for name in AGENTS:
        (shot,) = rep[name]["appshot"]
        assert (shot["name"], shot["app"], shot["changed"]) == ("hello-1", "hello", True)
    assert rep["controller"]["controller"]["available"] is True
    assert rep["controller"]["controller_exclusions"] == {}  # every edgepoint routed
    # the progress view: a line for the unusable CRIU and the final table
    assert "CRIU unusable on north-2" in first_run.output
    for name in ("north-1", "north-2", "south-1", "controller"):
        assert name in first_run.output


def test_services_run_and_the_agents_answer(first_run, lab, stack_secrets):
    from edgeshot.agent.client import AgentClient
    for name in AGENTS:
        units = "edgeshot-agent edgeshot-edge" if name in EDGES else "edgeshot-agent"
        active = lab.servers[name].ssh(f"systemctl is-active {units}", check=False).stdout
        assert active.split() == ["active"] * len(units.split()), (name, active)
    assert sh(lab, "controller", "systemctl is-active edgeshot-controller").strip() == "active"

    async def ask(name):
        url = f"http://{lab.servers[name].address}:7701"
        async with AgentClient(url, stack_secrets["controllerAgentToken"], timeout=10) as a:
            return await a.health(), await a.list_appshots()
    for name in AGENTS:
        health, shots = asyncio.run(ask(name))
        assert (health.server, health.edgepoint) == (name, name.split("-")[0])
        assert [s.name for s in shots] == ["hello-1"]
        if name == "north-2":
            assert health.mode == "cold" and health.cold_reason
        else:
            assert health.mode == "restore", health.cold_reason

    async def edge_agent_token(name):  # the edge's token is accepted by its agents
        url = f"http://{lab.servers[name].address}:7701"
        async with AgentClient(url, stack_secrets["edgeAgentToken"], timeout=10) as a:
            return (await a.health()).status
    assert asyncio.run(edge_agent_token("north-2")) == "ok"


def test_packages_files_modes_units(first_run, lab):
    """testinfra-style assertions, over ssh."""
    for name in AGENTS:
        pkgs = lab.servers[name].ssh("dpkg-query -W -f='${Package} ${db:Status-Status}\\n' "
                                     "iptables libprotobuf-c1 libnl-3-200 libnet1 python3-venv",
                                     check=False).stdout
        got = dict(ln.split() for ln in pkgs.splitlines())
        assert got == {"iptables": "installed", "libprotobuf-c1": "installed",
                       "libnl-3-200": "installed", "libnet1": "installed",
                       # the wheelhouse brings pip: no ensurepip, no python3-venv
                       "python3-venv": "not-installed"}, got
        modes = sh(lab, name, "stat -c '%n %a %U' /usr/local/sbin/criu /etc/edgeshot/agent.toml "
                              "/etc/edgeshot/agent-tokens.toml /var/lib/edgeshot "
                              "/var/lib/edgeshot/appshots/hello-1 /opt/edgeshot/venv/bin/python")
        got = {ln.split()[0]: ln.split()[1:] for ln in modes.splitlines()}
        assert got["/usr/local/sbin/criu"] == ["755", "root"]
        assert got["/etc/edgeshot/agent.toml"] == ["644", "root"]
        assert got["/etc/edgeshot/agent-tokens.toml"] == ["600", "root"]
        assert got["/var/lib/edgeshot"] == ["700", "root"]
        assert got["/var/lib/edgeshot/appshots/hello-1"] == ["700", "root"]
        assert sh(lab, name, "systemctl is-enabled edgeshot-agent").strip() == "enabled"
        assert sh(lab, name, "/opt/edgeshot/venv/bin/python -c 'import edgeshot; "
                             "print(edgeshot.__version__)'").strip()
        config = sh(lab, name, "cat /etc/edgeshot/agent.toml")
        assert f'server = "{name}"' in config and 'slot_subnet = "10.' in config
    for name in (*EDGES, "controller"):
        st = sh(lab, name, "dpkg-query -W -f='${db:Status-Status}' haproxy")
        assert st == "installed", (name, st)
    for name in EDGES:
        assert sh(lab, name, "stat -c %a /etc/edgeshot/edge-agent.token").strip() == "600"
        assert sh(lab, name, "systemctl is-enabled edgeshot-edge").strip() == "enabled"
        # the packaged HAProxy service stays off: edgeshot runs its own
        st = lab.servers[name].ssh("systemctl is-enabled haproxy; systemctl is-active haproxy",
                                   check=False).stdout.split()
        assert st == ["disabled", "inactive"], st
        assert "haproxy" in sh(lab, name, "ps -eo comm")
    # the edgepoint's servers route each other's slot subnets
    routes = sh(lab, "north-1", "ip route")
    n2 = lab.servers["north-2"].address
    assert any(ln.startswith("10.") and f"via {n2}" in ln for ln in routes.splitlines()), routes
    assert sh(lab, "north-2", "cat /proc/sys/net/ipv4/ip_forward").strip() == "1"


def test_firewall_lets_only_callers_reach_the_apis(first_run, lab):
    def reach(src: str, dst: str, port: int) -> bool:
        addr = lab.servers[dst].address
        return lab.servers[src].ssh(f"timeout 3 bash -c 'exec 3<>/dev/tcp/{addr}/{port}'",
                                    check=False).returncode == 0
    assert reach("north-1", "north-2", 7701)  # the edge host reaches its agents
    assert reach("controller", "south-1", 7701)  # the controller reaches every agent
    assert reach("controller", "north-1", 7702)  # ... and every edge API
    assert not reach("north-2", "north-1", 7701)  # another agent does not
    assert not reach("north-2", "north-1", 7702)
    assert not reach("south-1", "north-2", 7701)  # nor another edgepoint's edge host
    assert reach("north-2", "north-1", 80)  # the data path stays open
    assert "edgeshot_api" in sh(lab, "north-1", "nft list tables")


def test_no_secret_in_any_log(first_run, lab, stack_secrets):
    tokens = [stack_secrets[k] for k in ("edgeAgentToken", "controllerAgentToken",
                                         "controllerEdgeToken")]
    assert not any(t in first_run.output for t in tokens)
    art = Path(first_run.result.private_data_dir)
    assert not (art / "env" / "extravars").exists()  # the secrets file is gone after the run
    for f in art.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(t.encode() in data for t in tokens), f
    for name in lab.servers:
        journal = lab.servers[name].ssh("journalctl --no-pager -o cat", check=False).stdout
        assert not any(t in journal for t in tokens), name
        # at rest, the agents hold hashes only
        if name in AGENTS:
            held = sh(lab, name, "cat /etc/edgeshot/agent-tokens.toml")
            assert "sha256" in held and not any(t in held for t in tokens)


def test_second_run_changes_nothing(first_run, inventory, configure_kwargs):
    """Through the Pulumi dynamic resource's provider: `pulumi up` with nothing changed
    after a partial failure retries; here the update finds every server as it left it."""
    from edgeshot.configure import playbooks_hash
    from edgeshot.configure.resource import ConfigurationProvider
    kw = configure_kwargs
    props = {
        "playbooks_hash": playbooks_hash(kw["playbooks_dir"]),
        "inventory": inventory.model_dump(mode="json"),
        "plan": kw["plan"].to_json(),
        "secrets": kw["secrets"],
        "signing_public_key": kw["signing_public_key"],
        "options": {"ssh_key": str(kw["ssh_key"]), "known_hosts": str(kw["known_hosts"]),
                    "playbooks_dir": str(kw["playbooks_dir"]), "wheelhouse": str(kw["wheelhouse"]),
                    "criu_binary": str(kw["criu_binary"]), "extra_vars": kw["extra_vars"],
                    "progress": False},
    }
    p = ConfigurationProvider()
    assert p.check({}, props).failures == []
    # the appshot placements are part of the configure call, not of the resource's inputs
    # (the deployment center distributes appshots in production): keep them out here
    outs = p.update("lab-configuration", {}, props).outs
    assert outs["failed_hosts"] == [] and outs["excluded_edgepoints"] == []
    assert outs["changed"] == 0, {n: h for n, h in outs["hosts"].items() if h["changed"]}
    assert {h["status"] for h in outs["hosts"].values()} == {"ok"}
    assert p.diff("lab-configuration", outs, props).changes is False


def test_check_mode_with_diff_changes_nothing(first_run, inventory, configure_kwargs,
                                              stack_secrets):
    """`edgeshot configure --check --diff`: every role runs in Ansible's check mode on the
    configured servers (its argument specs validated first), finds nothing to change, and
    no diff shows a secret."""
    from edgeshot.configure import configure
    events: list[dict] = []
    r = configure(inventory, check=True, diff=True, progress=False, on_event=events.append,
                  **configure_kwargs)
    assert r.ok and r.failed_hosts == [], r.summary()
    assert {h.status for h in r.hosts.values()} == {"ok"}, {
        n: (h.status, h.errors) for n, h in r.hosts.items() if h.status != "ok"}
    tasks = {(e.get("event_data") or {}).get("task", "") for e in events}
    assert any(t.startswith("Validating arguments against arg spec 'main'") for t in tasks)
    text = json.dumps(events, default=str)
    for name in ("edgeAgentToken", "controllerAgentToken", "controllerEdgeToken"):
        assert stack_secrets[name] not in text, name
    assert stack_secrets["signingKey"].splitlines()[1] not in text


def test_cli_configure_check_on_one_server(first_run, lab, lab_dir, inventory,
                                           configure_kwargs, stack_secrets):
    """`edgeshot configure --check --diff --limit north-2`, the command a user runs, on
    the configured lab: nothing would change there."""
    from typer.testing import CliRunner

    from edgeshot.cli import app
    kw = configure_kwargs
    inv_file = lab_dir / "inventory.json"
    inv_file.write_text(json.dumps(inventory.model_dump(mode="json")))
    secrets_file = lab_dir / "secrets.json"
    secrets_file.write_text(json.dumps(kw["secrets"]))
    secrets_file.chmod(0o600)
    extra = lab_dir / "extra.json"
    extra.write_text(json.dumps(kw["extra_vars"]))
    r = CliRunner().invoke(app, [
        "configure", str(Path(__file__).parent / "lab_policy.py"), "-i", str(inv_file),
        "--secrets", str(secrets_file), "--key", str(kw["ssh_key"]), "--known-hosts",
        str(kw["known_hosts"]), "--check", "--diff", "--limit", "north-2", "-e", f"@{extra}",
        "--wheelhouse", str(kw["wheelhouse"]), "--criu-binary", str(kw["criu_binary"])])
    text = " ".join(r.output.split())
    assert r.exit_code == 0, r.output[-3000:]
    assert "0 server(s) would change, 0 failed" in text
    assert stack_secrets["edgeAgentToken"] not in r.output


def test_unreachable_server_is_reported_and_excluded(first_run, lab, lab_dir, inventory,
                                                     configure_kwargs, stack_secrets):
    """South-1 loses its network; the run goes on for the others and keeps south out of
    routing. The secrets come from an Ansible Vault file this time, not injected."""
    import json
    import sys

    from edgeshot.configure import configure
    vault_pass = lab_dir / "vault-pass"
    vault_pass.write_text("correct horse battery staple\n")
    vault_pass.chmod(0o600)
    vaulted = lab_dir / "secrets.yml"
    vaulted.write_text(json.dumps({"edgeshot_secrets": configure_kwargs["secrets"]}))
    subprocess.run([str(Path(sys.executable).parent / "ansible-vault"), "encrypt",
                    "--vault-password-file", str(vault_pass), str(vaulted)],
                   check=True, capture_output=True)
    assert stack_secrets["controllerEdgeToken"] not in vaulted.read_text()
    kw = {**configure_kwargs, "secrets": None}
    south = lab.servers["south-1"]
    lab.set_link(south, up=False)
    try:
        r = configure(inventory, limit=["south-1", "controller"], progress=False,
                      vault_file=vaulted, vault_password_file=vault_pass, **kw)
    finally:
        lab.set_link(south, up=True)
    assert r.hosts["south-1"].status == "unreachable" and r.hosts["south-1"].unreachable
    assert any("unreachable" in e for e in r.hosts["south-1"].errors)
    assert r.excluded_edgepoints == ["south"]
    # the one change on the controller: south is kept out of routing
    assert r.hosts["controller"].status == "changed" and r.hosts["controller"].changed == 1, \
        r.hosts["controller"]
    assert r.failed_hosts == ["south-1"] and not r.ok
    from edgeshot.control.exclusions import NOT_CONFIGURED
    assert r.hosts["controller"].reports["controller_exclusions"] == {
        "south": f"south-1: {NOT_CONFIGURED}"}
    held = json.loads(sh(lab, "controller", "cat /etc/edgeshot/excluded-servers.json"))
    assert held["servers"] == {"south-1": {"edgepoint": "south", "reason": NOT_CONFIGURED}}
    # the running controller reads it at its next tick, without a restart
    deadline = time.monotonic() + 30
    while "edgepoints kept out of routing: south" not in (log := sh(
            lab, "controller", "journalctl -u edgeshot-controller --no-pager -o cat")):
        assert time.monotonic() < deadline, log[-2000:]
        time.sleep(1)
    # back on the network, it answers again
    assert south.ssh("true", check=False).returncode == 0
