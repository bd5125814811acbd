"""`edgeshot up FILE` for a cloud network configures the servers once the stack is up: what
it hands to the configuration (from the stack's outputs), what it prints and its exit
status. The Pulumi CLI and the cloud do not exist here: the stack is a stand-in with the
Automation API's shape, and the configuration returns prepared per-host results."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

import edgeshot.configure as C
from edgeshot.configure import ConfigureResult, HostResult, inventory_from_plan, outcome
from edgeshot.plan import compile_plan
from edgeshot.spec import load

from .conftest import POLICIES

UP = importlib.import_module("edgeshot.cli.up")  # `edgeshot.cli.up` is also a command
POLICY = POLICIES["hetzner"]


def test_private_key_beside_the_public_one_else_the_agent(tmp_path):
    pub = tmp_path / "id_ed25519.pub"
    pub.write_text("ssh-ed25519 AAAA ops\n")
    key, problem = UP.private_key_of(pub, {})
    assert key is None and "no private key for" in problem and str(tmp_path / "id_ed25519") \
        in problem and "ssh-agent" in problem
    assert UP.private_key_of(pub, {"SSH_AUTH_SOCK": "/run/agent"}) == (None, None)
    (tmp_path / "id_ed25519").write_text("PRIVATE")
    assert UP.private_key_of(pub, {}) == (tmp_path / "id_ed25519", None)


def test_criu_for_the_agents_is_the_newest_local_build_else_the_package(tmp_path):
    home = tmp_path / "home"
    assert UP.cache_dir({}, home) == home / ".cache" / "edgeshot"
    assert UP.cache_dir({"XDG_CACHE_HOME": "/x"}, home) == Path("/x/edgeshot")
    assert UP.cache_dir({"EDGESHOT_CACHE": "/c", "XDG_CACHE_HOME": "/x"}, home) == Path("/c")
    cache = tmp_path / "cache"
    assert UP.criu_source(cache) == {"extra_vars": {"criu_install": "package"}}
    for v in ("4.2.1", "4.10.0", "4.9.2"):
        b = cache / "criu" / v / "criu"
        b.parent.mkdir(parents=True)
        b.write_text("#!/bin/sh\n")
        b.chmod(0o755)
    assert UP.criu_source(cache) == {"criu_binary": cache / "criu" / "4.10.0" / "criu"}


def _summary(**statuses: str) -> dict:
    return {"hosts": {n: {"status": st, "edgepoint": ep, "roles": ["agent"] if ep else
                          ["controller"], "errors": []}
                      for n, (st, ep) in {"a-1": (statuses.get("a", "ok"), "a"),
                                          "b-1": (statuses.get("b", "ok"), "b"),
                                          "controller": (statuses.get("c", "ok"), None)}.items()}}


@pytest.mark.parametrize("statuses, line", [
    ({}, "network n is up: 3 of 3 servers configured; every edgepoint is routed"),
    ({"b": "unreachable"}, "network n is up without b: 2 of 3 servers configured; kept out of "
                           "routing until `edgeshot up` configures their servers"),
    ({"c": "failed"}, "network n is not usable: the controller was not configured "
                      "(controller failed): nothing is routed"),
])
def test_verdict_line(statuses, line):
    from rich.text import Text
    assert Text.from_markup(UP.verdict_line("n", outcome(_summary(**statuses)))).plain == line


# -- the whole command, with a stand-in stack and configuration --------------------------------


class Stack:
    """The Automation API stack as `cloud_up` uses it."""

    name = "shop"

    def __init__(self, outputs: dict) -> None:
        self._outputs = outputs
        self.config: dict = {}
        self.workspace = SimpleNamespace(install_plugin=lambda *a: None)
        self.calls: list[str] = []

    def get_all_config(self) -> dict:
        return {}

    def set_all_config(self, values: dict) -> None:
        self.config = values

    def preview(self, **_kw) -> None:
        self.calls.append("preview")

    def up(self, **kw) -> None:
        assert kw["show_secrets"] is False
        self.calls.append("up")

    def outputs(self) -> dict:
        return {k: SimpleNamespace(value=v) for k, v in self._outputs.items()}


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A machine ready for `up`: a Pulumi CLI on PATH, credentials, an SSH key pair."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAA ops@example.com\n")
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "pulumi").write_text("#!/bin/sh\n")
    (bindir / "pulumi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("EDGESHOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "correct horse battery staple")
    monkeypatch.setenv("HCLOUD_TOKEN", "h" * 64)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    plan = compile_plan(load(POLICY))
    inv = inventory_from_plan(plan, {s: f"192.0.2.{i + 10}" for i, s in
                                     enumerate([x.name for x in plan.servers] + ["controller"])})
    secrets = {"edgeAgentToken": "t" * 40, "controllerAgentToken": "u" * 40,
               "controllerEdgeToken": "v" * 40, "signingKey": "PEM"}
    stack = Stack({"inventory": inv.model_dump(mode="json"), "secrets": secrets,
                   "signing_public_key": "PUBLIC PEM"})
    (tmp_path / "state").mkdir()  # _stack makes it
    monkeypatch.setattr(UP, "_stack", lambda *a: stack)
    monkeypatch.setattr(C, "build_wheelhouse", lambda dest, project: Path(dest))
    return SimpleNamespace(home=home, stack=stack, inv=inv, secrets=secrets, plan=plan,
                           state=tmp_path / "state", calls=[])


def fake_configure(machine, failing: dict[str, str]):
    def configure(inventory, plan, **kw):
        machine.calls.append((inventory, plan, kw))
        inv = C.Inventory.parse(inventory)
        hosts = {h.name: HostResult(name=h.name, edgepoint=h.edgepoint, roles=h.roles,
                                    status=failing.get(h.name, "changed"), changed=3,
                                    errors=["unreachable: ssh: No route to host"]
                                    if h.name in failing else [])
                 for h in inv.hosts()}
        return ConfigureResult(network=inv.network, hosts=hosts, status="failed", rc=4,
                               duration_s=1.0, playbooks_hash="h")
    return configure


def run_up(machine, *extra: str):
    app = typer.Typer()
    app.command("up")(UP.cloud_up)
    app.command("other")(lambda: None)
    return CliRunner().invoke(app, ["up", str(POLICY), "--yes", "--owner", "acme",
                                    "--state-dir", str(machine.state), *extra])


def test_up_configures_from_the_stack_outputs_and_goes_on_without_a_failed_edgepoint(
        machine, monkeypatch):
    servers = [s.name for s in machine.plan.servers]
    lost = servers[-1]
    lost_ep = machine.inv.servers[lost].edgepoint
    monkeypatch.setattr(C, "configure", fake_configure(machine, {lost: "unreachable"}))
    res = run_up(machine)
    assert res.exit_code == 0, res.output
    assert machine.stack.calls == ["preview", "up"]
    ((inventory, plan, kw),) = machine.calls
    assert inventory == machine.inv.model_dump(mode="json") and plan == machine.plan
    assert kw["secrets"] == machine.secrets and kw["signing_public_key"] == "PUBLIC PEM"
    assert kw["ssh_key"] == machine.home / ".ssh" / "id_ed25519"
    assert kw["known_hosts"] == machine.state / "shop.known_hosts"
    assert kw["extra_vars"] == {"criu_install": "package"}  # no CRIU built here
    assert Path(kw["wheelhouse"]).name.startswith("wheelhouse-py")  # this edgeshot, as wheels
    text = " ".join(res.output.split())
    assert (f"network acme-edge is up without {lost_ep}: {len(servers)} of {len(servers) + 1} "
            "servers configured") in text
    assert "t" * 40 not in res.output  # no secret printed


def test_up_fails_only_when_nothing_usable_was_configured(machine, monkeypatch):
    monkeypatch.setattr(C, "configure", fake_configure(machine, {"controller": "failed"}))
    res = run_up(machine)
    assert res.exit_code == 1
    assert "network acme-edge is not usable: the controller was not configured" in " ".join(
        res.output.split())


def test_up_says_what_is_missing_to_log_in_before_anything_starts(machine, monkeypatch):
    (machine.home / ".ssh" / "id_ed25519").unlink()
    monkeypatch.setattr(C, "configure", fake_configure(machine, {}))
    res = run_up(machine)
    assert res.exit_code == 1 and machine.stack.calls == [] and machine.calls == []
    assert "no private key for" in " ".join(res.output.split())
    res = run_up(machine, "--preview")  # a preview logs in nowhere
    assert res.exit_code == 0 and machine.stack.calls == ["preview"] and machine.calls == []


def test_up_says_when_the_configuration_cannot_run(machine, monkeypatch):
    def no_ansible(*_a, **_kw):
        raise ImportError("No module named 'ansible_runner'")
    monkeypatch.setattr(C, "configure", no_ansible)
    res = run_up(machine)
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "configuring the servers failed: No module named 'ansible_runner'; it needs " \
           "edgeshot[configure]" in text and "run `edgeshot up` again" in text
