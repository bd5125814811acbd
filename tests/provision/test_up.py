"""`edgeshot up FILE` for a cloud network: what it checks before starting (the Pulumi CLI
first of all), the stack configuration it keeps, and the resources `plan --resources` lists."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from edgeshot.cli.up import (
    INSTALL,
    cloud_destroy,
    cloud_up,
    preflight,
    print_resources,
    pulumi_path,
    stack_settings,
)
from edgeshot.plan import compile_plan
from edgeshot.provision import implied_resources, public_key_of
from edgeshot.spec import load

from .conftest import POLICIES, SHOP
from .test_components import EXPECTED_TYPES


def cli() -> typer.Typer:
    app = typer.Typer()
    app.command("up")(cloud_up)
    app.command("destroy")(cloud_destroy)
    return app


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A machine without the Pulumi CLI, cloud credentials, passphrase or SSH key."""
    empty = tmp_path / "bin"
    empty.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("HOME", str(home))
    for var in ("HCLOUD_TOKEN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN",
                "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_missing_pulumi_cli_says_how_to_install_it(bare):
    result = CliRunner().invoke(cli(), ["up", str(POLICIES["hetzner"]), "--yes"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "edgeshot up cannot start (4 problems)" in text
    assert "the Pulumi CLI is not installed" in text
    assert "curl -fsSL https://get.pulumi.com | sh" in text
    assert "https://www.pulumi.com/docs/install/" in text
    assert "edgeshot plan FILE --resources" in text
    # everything else found at once, not one run at a time
    assert "export PULUMI_CONFIG_PASSPHRASE" in text
    assert "export HCLOUD_TOKEN" in text
    assert "no SSH public key" in text
    assert "Traceback" not in result.output
    assert not (SHOP / ".edgeshot").exists()  # nothing made before the checks pass

    result = CliRunner().invoke(cli(), ["destroy", str(POLICIES["digitalocean"]), "--yes"])
    assert result.exit_code == 1 and "the Pulumi CLI is not installed" in result.output


def test_only_the_cli_missing(bare, monkeypatch):
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "correct horse battery staple")
    monkeypatch.setenv("DIGITALOCEAN_ACCESS_TOKEN", "dop_v1_x")
    (bare / ".ssh").mkdir()
    (bare / ".ssh" / "id_ed25519.pub").write_text("ssh-ed25519 AAAA ops@example.com\n")
    plan = compile_plan(load(POLICIES["digitalocean"]))
    assert preflight(plan) == [INSTALL]
    # AWS credentials come from its own chain: nothing to demand
    assert preflight(compile_plan(load(POLICIES["aws"]))) == [INSTALL]
    assert "--ssh-key /nope.pub: no such file" in preflight(plan, ssh_key=Path("/nope.pub"))


def test_pulumi_found_where_its_installer_puts_it(bare):
    assert pulumi_path() is None
    binary = bare / ".pulumi" / "bin" / "pulumi"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    assert pulumi_path() is None  # not executable: not a CLI
    binary.chmod(0o755)
    assert pulumi_path() == binary
    on_path = Path(os.environ["PATH"]) / "pulumi"
    on_path.write_text("")
    on_path.chmod(0o755)
    assert pulumi_path() == on_path


def test_local_networks_are_not_cloud_stacks(bare):
    result = CliRunner().invoke(cli(), ["up", str(SHOP / "policy_local.py")])
    assert result.exit_code == 1
    assert "is local: run it on this machine with `edgeshot up --local" in " ".join(
        result.output.split())


def test_stack_settings_made_once_and_kept(tmp_path):
    plan = compile_plan(load(POLICIES["aws"]))
    values, problems = stack_settings(plan, POLICIES["aws"], {}, None, "ssh-ed25519 AAAA ops\n")
    assert problems and "--owner" in problems[0]
    values, problems = stack_settings(plan, POLICIES["aws"], {}, "acme-platform",
                                      "ssh-ed25519 AAAA ops\n")
    assert problems == []
    assert values["edgeshot:policyFile"] == (str(POLICIES["aws"].resolve()), False)
    assert values["edgeshot:owner"] == ("acme-platform", False)
    assert values["edgeshot:sshPublicKey"] == ("ssh-ed25519 AAAA ops", False)
    assert values["aws:region"] == ("eu-central-1", False)
    tokens = [values[f"edgeshot:{k}"] for k in ("edgeAgentToken", "controllerAgentToken",
                                                "controllerEdgeToken")]
    assert all(secret and len(v) >= 32 for v, secret in tokens)
    assert len({v for v, _ in tokens}) == 3
    key, secret = values["edgeshot:signingKey"]
    assert secret and public_key_of(key).startswith("-----BEGIN PUBLIC KEY-----")
    # the next run keeps what the stack has: no new tokens, key, owner or region
    existing = dict.fromkeys(values, object())
    again, problems = stack_settings(plan, POLICIES["aws"], existing, None, None)
    assert problems == [] and set(again) == {"edgeshot:policyFile"}


@pytest.mark.parametrize("provider", ["hetzner", "aws", "digitalocean"])
def test_resources_the_plan_implies(provider):
    plan = compile_plan(load(POLICIES[provider]))
    found = implied_resources(plan)
    assert Counter(r.type for r in found) == EXPECTED_TYPES[provider]
    top = found[0]
    assert (top.type, top.name, top.depth) == ("edgeshot:provision:EdgeNetwork", plan.network, 0)
    by_name = {(r.type, r.name): r for r in found}
    for s in plan.servers:
        server = by_name[("edgeshot:provision:EdgeServer", s.name)]
        assert (server.parent_name, server.depth) == (s.edgepoint, 2)
    if provider == "hetzner":
        console = Console(record=True, width=200)
        print_resources(plan, console)
        text = console.export_text()
        assert "21 cloud resources in 9 components" in text
        for s in plan.servers:
            assert s.name in text
