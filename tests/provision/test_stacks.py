"""Each stack template (stacks/<cloud>/) runs under mocks with its own Pulumi.shop.yaml, as
`pulumi up` would run it from that directory, and builds what `program()` builds."""

from __future__ import annotations

import runpy

import pytest
import yaml

from edgeshot.provision import SECRETS

from .conftest import CLOUD_TOKENS, ROOT, SSH_KEY, TOKENS, no_cloud_env
from .harness import run

PROVIDERS = ("hetzner", "aws", "digitalocean")


def project(provider: str) -> dict:
    return yaml.safe_load((ROOT / "stacks" / provider / "Pulumi.yaml").read_text())


@pytest.mark.parametrize("provider", PROVIDERS)
def test_project_files(provider):
    meta = project(provider)
    assert meta["name"] == f"edgeshot-{provider}"
    assert meta["runtime"]["name"] == "python"
    venv = (ROOT / "stacks" / provider / meta["runtime"]["options"]["virtualenv"]).resolve()
    assert venv == (ROOT / ".venv").resolve()
    assert "main" not in meta  # __main__.py in the project directory
    stack = yaml.safe_load((ROOT / "stacks" / provider / "Pulumi.shop.yaml").read_text())
    config = stack["config"]
    # no secret is written in the example in plain text
    secret_keys = {f"edgeshot:{k}" for k in SECRETS} | {"hcloud:token", "digitalocean:token"}
    assert not set(config) & secret_keys
    assert (ROOT / "stacks" / provider / config["edgeshot:policyFile"]).resolve().is_file()
    readme = (ROOT / "stacks" / provider / "README.md").read_text()
    for key in [*(f"edgeshot:{k}" for k in SECRETS), "pulumi stack init shop", "pulumi up",
                "--policy-pack", "EDGESHOT_POLICY_FILE"]:
        assert key in readme, key
    if provider in CLOUD_TOKENS:
        assert CLOUD_TOKENS[provider][0] in readme


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stack_main_runs_with_its_stack_file(provider, run_stack, signing_key, monkeypatch):
    directory = ROOT / "stacks" / provider
    config = dict(yaml.safe_load((directory / "Pulumi.shop.yaml").read_text())["config"])
    secrets = {**TOKENS, "edgeshot:signingKey": signing_key}
    if provider in CLOUD_TOKENS:
        key, value = CLOUD_TOKENS[provider]
        secrets[key] = value
    monkeypatch.chdir(directory)  # Pulumi runs the program from the project directory
    with no_cloud_env():
        got = run(lambda: runpy.run_path("__main__.py", run_name="__main__"),
                  {**config, **secrets}, tuple(secrets), project=project(provider)["name"],
                  stack="shop")
    same = run_stack(provider)  # edgeshot.provision.program(): the Automation API's program
    assert config["edgeshot:sshPublicKey"] == SSH_KEY
    assert {r.urn: r.inputs for r in got.resources} == {r.urn: r.inputs for r in same.resources}
    assert len(got.resources) > 20
    assert got.outputs["inventory"]["network"] == same.outputs["inventory"]["network"]
    assert got.secret_outputs == {"secrets"}
    assert got.outputs["inventory"]["owner"] == "acme-platform"
