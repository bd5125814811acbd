"""Pulumi conventions: the controller cannot be deleted by accident, a new "most recent"
image replaces no server, secrets stay secret Outputs, the state backend and secrets
provider come from the policy or the environment, and pyproject asks for the provider SDK
the code needs."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pulumi_aws as aws
import pytest
from packaging.requirements import Requirement

from edgeshot.cli.up import StateChoice, preflight, resolve_state, state_problems
from edgeshot.plan import compile_plan
from edgeshot.spec import SpecError, load

from .conftest import POLICIES, ROOT
from .policies import write_policy

SERVERS = {"hetzner": "hcloud:index/server:Server", "aws": "aws:ec2/instance:Instance",
           "digitalocean": "digitalocean:index/droplet:Droplet"}


@pytest.mark.parametrize("provider", ["hetzner", "aws", "digitalocean"])
def test_only_the_controller_is_protected(provider, run_stack):
    got = run_stack(provider)
    servers = {r.name: r for r in got.of(SERVERS[provider])}
    assert servers["controller"].protect
    edges = [r for n, r in servers.items() if n != "controller"]
    assert edges and not any(r.protect for r in edges)
    unprotected = [r for r in got.resources if r.protect and r.name != "controller"]
    if provider == "aws":  # its Elastic IP: the address every DNS record points at
        assert [r.name for r in unprotected] == ["controller-ip"]
    else:
        assert unprotected == []


def test_the_controllers_disk_and_the_clouds_own_locks(run_stack):
    aws_run = run_stack("aws")
    for r in aws_run.of(SERVERS["aws"]):
        controller = r.name == "controller"
        assert r.inputs["rootBlockDevice"]["deleteOnTermination"] is (not controller), r.name
        assert r.inputs.get("disableApiTermination") is (True if controller else None), r.name
    for r in run_stack("hetzner").of(SERVERS["hetzner"]):
        want = True if r.name == "controller" else None
        assert (r.inputs.get("deleteProtection"), r.inputs.get("rebuildProtection")) == (
            want, want), r.name


def test_looked_up_amis_are_ignored_after_creation(run_stack, tmp_path):
    looked_up = run_stack("aws")
    instances = looked_up.of(SERVERS["aws"])
    assert instances and all(r.ignore_changes == ("ami",) for r in instances)
    assert any(c[0] == "aws:ec2/getAmi:getAmi" and c[1]["mostRecent"] for c in looked_up.calls)
    policy = write_policy(tmp_path, "aws")
    policy.write_text(policy.read_text().replace("AWS()", 'AWS(image="ami-0123456789abcdef0")'))
    pinned = run_stack("aws", policy)
    for r in pinned.of(SERVERS["aws"]):
        assert r.inputs["ami"] == "ami-0123456789abcdef0"
        assert r.ignore_changes == ()  # a pinned image is a decision: changing it replaces


@pytest.mark.parametrize("provider", ["hetzner", "aws", "digitalocean"])
def test_secrets_are_secret_outputs_and_never_plain(provider, run_stack, signing_key):
    got = run_stack(provider)
    assert got.secret_outputs == {"secrets"}
    text = got.all_text()
    assert signing_key.splitlines()[1] not in text
    assert "edge-agent-token-0123456789" not in text


def test_settings_read_secrets_with_require_secret():
    source = inspect.getsource(__import__("edgeshot.provision._settings", fromlist=["x"]))
    assert "cfg.require_secret(name)" in source
    assert "Output.secret(value)" not in source


def test_pulumi_aws_lower_bound_matches_the_code():
    """The AWS adapter passes `region=` to every resource: a v7 feature."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    req = next(Requirement(r) for r in data["project"]["optional-dependencies"]["cloud"]
               if Requirement(r).name == "pulumi-aws")
    assert not req.specifier.contains("6.99.0") and req.specifier.contains("7.0.0")
    assert req.specifier.contains(metadata.version("pulumi-aws"))
    source = (ROOT / "framework" / "edgeshot" / "provision" / "_aws.py").read_text()
    assert source.count("region=region") >= 8
    for cls in (aws.ec2.Vpc, aws.ec2.Instance, aws.ec2.SecurityGroup, aws.ec2.Eip):
        assert "region" in inspect.signature(cls._internal_init).parameters, cls


# --- state backend and secrets provider ------------------------------------------------


def _provider(tmp_path: Path, **fields: str):
    policy = write_policy(tmp_path, "hetzner")
    args = ", ".join(f"{k}={v!r}" for k, v in fields.items())
    policy.write_text(policy.read_text().replace("Hetzner()", f"Hetzner({args})"))
    return policy, load(policy).network.provider


@pytest.mark.parametrize("fields, state_dir, env, backend, secrets, source", [
    ({}, None, {}, "file://{default}", "passphrase", "default"),
    ({}, "st", {}, "file://{st}", "passphrase", "--state-dir"),
    ({"backend": "s3://acme-state/edge", "secrets_provider": "awskms://alias/edgeshot"}, None,
     {}, "s3://acme-state/edge", "awskms://alias/edgeshot", "policy"),
    ({"backend": "s3://acme-state/edge"}, None, {"PULUMI_BACKEND_URL": "gs://other"},
     "gs://other", "passphrase", "PULUMI_BACKEND_URL"),
    ({"backend": "s3://acme-state/edge"}, "st", {"PULUMI_BACKEND_URL": "gs://other"},
     "file://{st}", "passphrase", "--state-dir"),
    ({}, None, {"PULUMI_BACKEND_URL": "https://api.pulumi.com"}, "https://api.pulumi.com",
     "default", "PULUMI_BACKEND_URL"),
    ({"secrets_provider": "hashivault://edgeshot"}, None,
     {"PULUMI_SECRETS_PROVIDER": "awskms://alias/ci", "PULUMI_BACKEND_URL": "azblob://state"},
     "azblob://state", "awskms://alias/ci", "PULUMI_BACKEND_URL"),
])
def test_resolve_state(tmp_path, fields, state_dir, env, backend, secrets, source):
    policy, provider = _provider(tmp_path, **fields)
    sd = tmp_path / state_dir if state_dir else None
    choice, problems = resolve_state(policy, provider, sd, env)
    assert problems == []
    default = (tmp_path / ".edgeshot" / "pulumi").resolve()
    assert choice.backend == backend.format(default=default, st=sd.resolve() if sd else "")
    assert (choice.secrets_provider, choice.source) == (secrets, source)
    assert choice.workdir == (sd.resolve() if sd else default)  # always local


@pytest.mark.parametrize("env, message", [
    ({"PULUMI_BACKEND_URL": "ftp://x"}, "PULUMI_BACKEND_URL='ftp://x': must be a Pulumi backend"),
    ({"PULUMI_SECRETS_PROVIDER": "rot13"}, "PULUMI_SECRETS_PROVIDER='rot13': must be"),
])
def test_resolve_state_refuses_bad_environment(tmp_path, env, message):
    policy, provider = _provider(tmp_path)
    choice, problems = resolve_state(policy, provider, None, env)
    assert choice is None and len(problems) == 1 and problems[0].startswith(message)


@pytest.mark.parametrize("field, value, allowed", [
    ("backend", "ftp://bucket", "s3://BUCKET"),
    ("backend", "s3://", "s3://BUCKET"),
    ("secrets_provider", "vault://x", "hashivault://KEY"),
])
def test_policy_backend_errors_name_the_field(tmp_path, field, value, allowed):
    policy = write_policy(tmp_path, "hetzner")
    policy.write_text(policy.read_text().replace("Hetzner()", f"Hetzner({field}={value!r})"))
    with pytest.raises(SpecError) as caught:
        load(policy)
    text = " ".join(str(p) for p in caught.value.problems)
    assert field in text and allowed in text and "policy.py:" in text


PASS = {"PULUMI_CONFIG_PASSPHRASE": "x"}


@pytest.mark.parametrize("backend, secrets, env, creds, expected", [
    ("file:///s", "passphrase", PASS, False, []),
    ("file:///s", "passphrase", {}, False, ["no passphrase"]),
    ("s3://b", "awskms://alias/k", {}, False, []),
    ("s3://b", "hashivault://k", {"VAULT_SERVER_URL": "u"}, False,
     ["export VAULT_SERVER_TOKEN"]),
    ("https://api.pulumi.com", "default", {}, False, ["no Pulumi Cloud login"]),
    ("https://api.pulumi.com", "default", {"PULUMI_ACCESS_TOKEN": "t"}, False, []),
    ("https://api.pulumi.com", "default", {}, True, []),
    ("gs://b", "default", {}, False, ["'default' is Pulumi Cloud's own"]),
])
def test_state_problems(tmp_path, backend, secrets, env, creds, expected):
    if creds:
        (tmp_path / ".pulumi").mkdir()
        (tmp_path / ".pulumi" / "credentials.json").write_text("{}")
    got = state_problems(StateChoice(backend, secrets, tmp_path, "policy"), env, tmp_path)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert e in g


def test_preflight_with_a_kms_needs_no_passphrase(tmp_path):
    plan = compile_plan(load(POLICIES["hetzner"]))
    env = {"PATH": "", "HOME": str(tmp_path), "HCLOUD_TOKEN": "t"}
    kms = StateChoice("s3://b", "awskms://alias/k", tmp_path, "policy")
    assert not [p for p in preflight(plan, env, home=tmp_path, state=kms) if "passphrase" in p]
    assert [p for p in preflight(plan, env, home=tmp_path) if "no passphrase" in p]


def test_up_uses_the_chosen_backend(tmp_path, monkeypatch):
    """`edgeshot up` hands the Automation API the chosen backend and secrets provider (and
    PULUMI_BACKEND_URL, which the CLI would otherwise prefer to the project's)."""
    from pulumi import automation as auto

    up = importlib.import_module("edgeshot.cli.up")  # (the CLI package has an `up` command)

    seen = {}

    def fake_create_or_select(name, project_name, program, opts):
        seen.update(name=name, backend=opts.project_settings.backend.url,
                    secrets=opts.secrets_provider, env=opts.env_vars, work=opts.work_dir)
        raise RuntimeError("stop here")

    monkeypatch.setattr(auto, "create_or_select_stack", fake_create_or_select)
    monkeypatch.setattr(up, "pulumi_path", lambda *a, **k: tmp_path / "pulumi")
    monkeypatch.setattr(auto, "PulumiCommand", lambda root=None: object())
    policy, provider = _provider(tmp_path, backend="s3://acme/edge",
                                 secrets_provider="awskms://alias/e")
    choice, _ = resolve_state(policy, provider, None, {})
    plan = compile_plan(load(policy))
    with pytest.raises(RuntimeError, match="stop here"):
        up._stack(plan, policy, "testnet", choice)
    assert seen["backend"] == "s3://acme/edge" and seen["secrets"] == "awskms://alias/e"
    assert seen["env"]["PULUMI_BACKEND_URL"] == "s3://acme/edge"
    assert Path(seen["work"]).is_relative_to(tmp_path) and re.search(r"edgeshot-hetzner$",
                                                                     seen["work"])
