"""Each stack template (stacks/<cloud>/) is `pulumi new`-ready: a `template:` block asking
for every value the program needs (secrets as secrets), its own virtualenv and
requirements, a starting policy.py, no path into an edgeshot checkout. Copied as `pulumi
new` copies it and run under mocks, it builds what `program()` builds."""

from __future__ import annotations

import re
import runpy
import shutil

import pytest
import yaml

from edgeshot.provision import SECRETS

from .conftest import CLOUD_TOKENS, ROOT, SSH_KEY, TOKENS, no_cloud_env
from .harness import run

PROVIDERS = ("hetzner", "aws", "digitalocean")
# asked for by `pulumi new`; the signing key (a multi-line PEM) is set afterwards
PROMPTED = ("edgeshot:policyFile", "edgeshot:owner", "edgeshot:sshPublicKey",
            "edgeshot:edgeAgentToken", "edgeshot:controllerAgentToken",
            "edgeshot:controllerEdgeToken")


def project(provider: str) -> dict:
    return yaml.safe_load((ROOT / "stacks" / provider / "Pulumi.yaml").read_text())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_templates_are_pulumi_new_ready(provider):
    directory = ROOT / "stacks" / provider
    meta = project(provider)
    assert meta["name"] == f"edgeshot-{provider}"
    assert meta["runtime"]["name"] == "python"
    assert meta["runtime"]["options"]["virtualenv"] == "venv"  # made by Pulumi, inside
    assert "main" not in meta  # __main__.py in the project directory
    template = meta["template"]
    assert template["description"] and template["displayName"]
    config = template["config"]
    expected = set(PROMPTED) | ({CLOUD_TOKENS[provider][0]} if provider in CLOUD_TOKENS
                                else {"aws:region"})
    assert set(config) == expected
    for key, entry in config.items():
        assert entry["description"], key
        secret = key.split(":")[1] in SECRETS or key in ("hcloud:token", "digitalocean:token")
        assert entry.get("secret", False) is secret, key
        assert "default" not in entry or not secret, key
    assert config["edgeshot:policyFile"]["default"] == "policy.py"
    assert (directory / "policy.py").is_file()
    assert not list(directory.glob("Pulumi.*.yaml"))  # no stack file pointing anywhere
    requirements = [line for line in (directory / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert requirements == ["edgeshot[cloud]>=0.1"]
    for f in ("Pulumi.yaml", "requirements.txt", "__main__.py", "policy.py"):
        text = (directory / f).read_text()
        assert not re.search(r"(^|[\s'\"=])\.\./", text, re.M), f  # nothing outside the copy
    readme = (directory / "README.md").read_text()
    for key in [*(f"edgeshot:{k}" for k in SECRETS), "pulumi new", "pulumi up", "--policy-pack",
                "EDGESHOT_POLICY_FILE", "--secrets-provider", "protect"]:
        assert key in readme, key
    assert "https://" not in readme  # the docs link to nothing outside the repository


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_copied_template_runs_with_its_own_policy(provider, run_stack, signing_key,
                                                    monkeypatch, tmp_path):
    """What `pulumi new` makes: the directory copied elsewhere, the prompted values (the
    defaults kept), then `pulumi up` from there."""
    copy = tmp_path / "my-edge"
    shutil.copytree(ROOT / "stacks" / provider, copy,
                    ignore=shutil.ignore_patterns("__pycache__", "venv"))
    config = {k: v["default"] for k, v in project(provider)["template"]["config"].items()
              if "default" in v}
    config |= {"edgeshot:owner": "acme-platform", "edgeshot:sshPublicKey": SSH_KEY}
    secrets = {**TOKENS, "edgeshot:signingKey": signing_key}
    if provider in CLOUD_TOKENS:
        key, value = CLOUD_TOKENS[provider]
        secrets[key] = value
    monkeypatch.chdir(copy)  # Pulumi runs the program from the project directory
    with no_cloud_env():
        got = run(lambda: runpy.run_path("__main__.py", run_name="__main__"),
                  {**config, **secrets}, tuple(secrets), project=project(provider)["name"],
                  stack="shop")
    same = run_stack(provider, copy / "policy.py")  # the Automation API's program
    assert config["edgeshot:policyFile"] == "policy.py"
    assert {r.urn: r.inputs for r in got.resources} == {
        r.urn: r.inputs for r in same.resources}
    assert len(got.resources) > 10
    assert got.outputs["inventory"]["network"] == "my-edge"
    assert got.secret_outputs == {"secrets"}
    assert got.outputs["inventory"]["owner"] == "acme-platform"
    controller = next(r for r in got.resources if r.name == "controller" and r.custom)
    assert controller.protect
