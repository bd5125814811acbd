from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edgeshot.provision import program

with warnings.catch_warnings():  # their imports warn about deprecated resources we never use
    warnings.simplefilter("ignore", DeprecationWarning)
    import pulumi_aws.ec2  # noqa: F401
    import pulumi_digitalocean  # noqa: F401

from .harness import Run, run

ROOT = Path(__file__).resolve().parents[2]
SHOP = ROOT / "examples" / "shop"
POLICIES = {p: SHOP / f"policy_{p}.py" for p in ("hetzner", "aws", "digitalocean")}

TOKENS = {
    "edgeshot:edgeAgentToken": "edge-agent-token-0123456789abcdefghijklmnopq",
    "edgeshot:controllerAgentToken": "controller-agent-token-0123456789abcdefghijk",
    "edgeshot:controllerEdgeToken": "controller-edge-token-0123456789abcdefghijkl",
}
CLOUD_TOKENS = {"hetzner": ("hcloud:token", "hcloud-api-token-" + "h" * 48),
                "digitalocean": ("digitalocean:token", "dop_v1_" + "d" * 56)}
# An example operators key (the runs of the stack templates and of program() use the same).
SSH_KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOPERATORKEYEXAMPLEONLYREPLACEWITHYOURS "
           "ops@example.com")


@pytest.fixture(scope="session")
def signing_key() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def stack_config(provider: str, policy: Path | str, signing_key: str,
                 **overrides: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A complete, valid stack configuration and its secret keys; overrides by config key
    (None removes a key)."""
    config: dict[str, Any] = {
        "edgeshot:policyFile": str(policy),
        "edgeshot:owner": "acme-platform",
        "edgeshot:sshPublicKey": SSH_KEY,
        **TOKENS,
        "edgeshot:signingKey": signing_key,
    }
    secret = [*TOKENS, "edgeshot:signingKey"]
    if provider in CLOUD_TOKENS:
        key, value = CLOUD_TOKENS[provider]
        config[key] = value
        secret.append(key)
    if provider == "aws":
        config["aws:region"] = "eu-central-1"
    for key, value in overrides.items():
        key = key if ":" in key else f"edgeshot:{key}"
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config, tuple(k for k in secret if k in config)


CLOUD_ENV = ("HCLOUD_TOKEN", "DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN", "AWS_REGION",
             "AWS_DEFAULT_REGION")


@contextmanager
def no_cloud_env() -> Iterator[None]:
    """Credentials only from the stack config the test gives, never from this machine."""
    with pytest.MonkeyPatch.context() as mp:
        for var in CLOUD_ENV:
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="session")
def run_stack(signing_key: str) -> Callable[..., Run]:
    """Run the stack templates' program for `provider` on a policy file (the shop's by default);
    config overrides by key (None removes one). The plain shop runs are made once a session."""
    cache: dict[str, Run] = {}

    def _run(provider: str, policy: Path | str | None = None,
             secret_keys: tuple[str, ...] | None = None, **overrides: Any) -> Run:
        plain = policy is None and secret_keys is None and not overrides
        if plain and provider in cache:
            return cache[provider]
        config, secret = stack_config(provider, policy or POLICIES[provider], signing_key,
                                      **overrides)
        with no_cloud_env():
            result = run(lambda: program(provider), config,
                         secret if secret_keys is None else secret_keys,
                         project=f"edgeshot-{provider}", stack="shop")
        if plain:
            cache[provider] = result
        return result

    return _run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The cloud SDKs warn, on first use, about deprecated resources edgeshot never uses."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            for sdk in ("pulumi_aws", "pulumi_digitalocean", "pulumi_hcloud"):
                item.add_marker(pytest.mark.filterwarnings(f"ignore::DeprecationWarning:{sdk}.*"))


@pytest.fixture(autouse=True)
def _current_event_loop():
    """pulumi's mocks run on the thread's current event loop; async tests elsewhere in
    the run (pytest-asyncio, asyncio.run) leave none behind, or a closed one."""
    try:
        loop = asyncio.get_event_loop_policy().get_event_loop()
        usable = not loop.is_closed()
    except RuntimeError:
        usable = False
    if not usable:
        asyncio.set_event_loop(asyncio.new_event_loop())
    yield
