"""Missing or wrong configuration: one error naming every problem and the command that fixes it."""

from __future__ import annotations

import pytest

from edgeshot.provision import ProvisionError

from .conftest import POLICIES, SHOP, TOKENS, no_cloud_env
from .policies import write_policy

ALL_SECRETS = (*TOKENS, "edgeshot:signingKey")


def problems(exc: pytest.ExceptionInfo[ProvisionError]) -> str:
    return "\n".join(exc.value.problems)


def test_everything_missing_is_reported_at_once(run_stack):
    with pytest.raises(ProvisionError) as exc:
        run_stack("hetzner", owner=None, sshPublicKey=None, signingKey=None,
                  **{k: None for k in [*TOKENS, "hcloud:token"]})
    text = problems(exc)
    assert len(exc.value.problems) == 7
    for key in ("edgeshot:owner", "edgeshot:sshPublicKey", "edgeshot:edgeAgentToken",
                "edgeshot:controllerAgentToken", "edgeshot:controllerEdgeToken",
                "edgeshot:signingKey", "hcloud:token"):
        assert key in text
    assert "pulumi config set --secret edgeshot:edgeAgentToken" in text
    assert "HCLOUD_TOKEN" in text
    # the message the CLI prints lists them all, without a traceback (a pulumi.RunError)
    assert str(exc.value).count("\n  - ") == 7


def test_secrets_in_plain_text_are_refused(run_stack):
    with pytest.raises(ProvisionError) as exc:
        run_stack("hetzner", secret_keys=("hcloud:token",))
    text = problems(exc)
    for key in ALL_SECRETS:
        assert f"{key} is stored in plain text" in text
    with pytest.raises(ProvisionError) as exc:
        run_stack("hetzner", secret_keys=ALL_SECRETS)
    assert problems(exc).startswith("hcloud:token is stored in plain text")


def test_weak_tokens_and_bad_keys(run_stack):
    with pytest.raises(ProvisionError) as exc:
        run_stack("digitalocean", edgeAgentToken="changeme", signingKey="-----BEGIN nonsense")
    text = problems(exc)
    assert "edgeshot:edgeAgentToken is 8 characters; a token needs at least 32" in text
    assert "edgeshot:signingKey is not an unencrypted Ed25519 private key" in text
    assert len(exc.value.problems) == 2


def test_owner_must_be_a_label_value(run_stack):
    with pytest.raises(ProvisionError) as exc:
        run_stack("hetzner", owner="ACME Platform!")
    assert "edgeshot:owner 'ACME Platform!' must be lowercase" in problems(exc)


def test_ssh_key_names_are_not_for_aws(run_stack):
    with pytest.raises(ProvisionError) as exc:
        run_stack("aws", sshKeys=["mine"])
    assert "edgeshot:sshKeys is for Hetzner and DigitalOcean" in problems(exc)


def test_cloud_token_from_the_environment(run_stack, monkeypatch):
    with pytest.raises(ProvisionError) as exc:
        run_stack("digitalocean", **{"digitalocean:token": None})
    assert "no digitalocean API token" in problems(exc)
    assert "DIGITALOCEAN_TOKEN or DIGITALOCEAN_ACCESS_TOKEN" in problems(exc)
    from edgeshot.provision import check_credentials
    assert check_credentials("digitalocean", {"DIGITALOCEAN_ACCESS_TOKEN": "x"}) == []
    assert check_credentials("hetzner", {"HCLOUD_TOKEN": "x"}) == []


def test_aws_needs_a_default_region(run_stack):
    with pytest.raises(ProvisionError) as exc:
        run_stack("aws", **{"aws:region": None})
    assert "pulumi config set aws:region" in problems(exc)
    from edgeshot.provision import check_credentials
    with no_cloud_env():
        assert check_credentials("aws", {"AWS_REGION": "us-east-1"}) == []


def test_policy_file_problems(run_stack, tmp_path):
    with pytest.raises(ProvisionError) as exc:
        run_stack("hetzner", policy=tmp_path / "nope.py")
    assert "no such file" in problems(exc) and "edgeshot:policyFile" in problems(exc)

    with pytest.raises(ProvisionError) as exc:  # a stack template for another cloud
        run_stack("hetzner", policy=POLICIES["aws"])
    assert "is on aws, but this stack template provisions hetzner: use stacks/aws/" in problems(exc)

    with pytest.raises(ProvisionError) as exc:  # the local network is not a cloud stack
        run_stack("hetzner", policy=SHOP / "policy_local.py")
    assert "is local" in problems(exc) and "edgeshot up --local" in problems(exc)

    broken = write_policy(tmp_path)
    broken.write_text(broken.read_text().replace("server_type='cx22'", "server_type='cx999'", 1))
    with pytest.raises(ProvisionError) as exc:
        run_stack("hetzner", policy=broken)
    assert "cx999" in problems(exc) and "not a hetzner server type" in problems(exc)


def test_slot_network_leaving_no_room_for_private_networks(run_stack, tmp_path):
    policy = write_policy(tmp_path, slot_network="10.0.0.0/8")
    with pytest.raises(ProvisionError) as exc:
        run_stack("hetzner", policy=policy)
    assert "choose a smaller slot_network" in problems(exc)


def test_no_operators_warns_and_opens_ssh_to_the_controller_only(run_stack, tmp_path):
    run = run_stack("hetzner", policy=write_policy(tmp_path, operators=()))
    assert any("declares no operators" in w for w in run.warnings)
    controller = run.one("hcloud:index/firewall:Firewall", "controller-fw")
    assert {r["port"] for r in controller.inputs["rules"]} == {"80", "443", "7703"}
    ctrl = run.one("hcloud:index/server:Server", "controller").state["ipv4Address"]
    edge = run.one("hcloud:index/firewall:Firewall", "fsn-edge-fw")
    ssh = [r for r in edge.inputs["rules"] if r["port"] == "22"]
    assert ssh == [{"direction": "in", "protocol": "tcp", "port": "22",
                    "sourceIps": [f"{ctrl}/32"], "description": "ssh from operators and controller"}]


def test_policy_file_must_be_configured(run_stack):
    from pulumi.config import ConfigMissingError
    with pytest.raises(ConfigMissingError) as exc:
        run_stack("aws", policyFile=None)
    assert "edgeshot:policyFile" in str(exc.value)
    assert "pulumi config set edgeshot:policyFile" in str(exc.value)
