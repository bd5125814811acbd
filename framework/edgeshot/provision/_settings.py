"""What a stack needs beyond the plan: owner, SSH keys, tokens and the signing key.

All of it comes from the stack's Pulumi configuration (namespace `edgeshot`);
tokens and the signing key must be stored as secrets and are read with
`require_secret`, so they stay secret Outputs from the config system on. Every missing or wrong
value is reported at once, each with the command that sets it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pulumi.runtime.config import is_config_secret

from edgeshot.plan import Plan, compile_plan
from edgeshot.spec import SpecError, load

from ._rules import LABEL_VALUE

NAMESPACE = "edgeshot"
MIN_TOKEN = 32

# name -> what it is (who presents it to whom); all are bearer tokens but the signing key.
SECRETS = {
    "edgeAgentToken": "bearer token the edge process presents to its edgepoint's agents",
    "controllerAgentToken": "bearer token the controller presents to every agent",
    "controllerEdgeToken": "bearer token the controller presents to every edge process",
    "signingKey": "Ed25519 private key (PEM) the deployment center signs appshots with",
}

# Cloud credentials: provider config key (secret) or environment variables.
CREDENTIALS = {
    "hetzner": ("hcloud:token", ("HCLOUD_TOKEN",)),
    "digitalocean": ("digitalocean:token", ("DIGITALOCEAN_TOKEN", "DIGITALOCEAN_ACCESS_TOKEN")),
}
AWS_REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")

TOKEN_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
KEY_HINT = (
    "python3 -c 'from cryptography.hazmat.primitives.asymmetric.ed25519 import "
    "Ed25519PrivateKey as K; from cryptography.hazmat.primitives import serialization as s; "
    "print(K.generate().private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, "
    "s.NoEncryption()).decode())'"
)


class ProvisionError(pulumi.RunError):
    """A stack cannot be built; `problems` says every reason and how to fix it.

    A `pulumi.RunError`: the CLI shows the message without a Python traceback.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        n = len(self.problems)
        head = "cannot build the edgeshot stack" + (f" ({n} problems)" if n > 1 else "")
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class Settings:
    """Everything a network needs besides its plan. Secret values are `pulumi.Output`s
    marked secret; only `signing_public_key` (public by nature) is plain text."""

    owner: str
    ssh_public_key: str | None = None
    ssh_keys: tuple[str, ...] = ()  # existing keys in the cloud account (Hetzner, DigitalOcean)
    secrets: dict[str, pulumi.Output[str]] = field(default_factory=dict)
    signing_public_key: str = ""


def load_plan(policy_file: str | os.PathLike[str], provider: str | None = None) -> Plan:
    """Load and compile a policy file for a stack; `provider` refuses a network of another cloud."""
    path = Path(policy_file)
    if not path.is_file():
        raise ProvisionError(
            f"edgeshot:policyFile is {str(policy_file)!r}: no such file (relative paths start "
            f"at {Path.cwd()}); set it with `pulumi config set edgeshot:policyFile PATH`"
        )
    try:
        plan = compile_plan(load(path))
    except SpecError as exc:
        raise ProvisionError([str(p) for p in exc.problems]) from None
    if plan.provider == "local":
        raise ProvisionError(
            f"{path}: network {plan.network!r} is local; it runs on this machine with "
            f"`edgeshot up --local {path}`, not through a cloud stack"
        )
    if provider is not None and plan.provider != provider:
        raise ProvisionError(
            f"{path}: network {plan.network!r} is on {plan.provider}, but this stack template "
            f"provisions {provider}: use stacks/{plan.provider}/ instead"
        )
    return plan


def public_key_of(pem: str) -> str:
    """The PEM public key of an Ed25519 private key (PEM, PKCS8); ValueError if it is not one."""
    key = serialization.load_pem_private_key(pem.encode(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"a {type(key).__name__}, not an Ed25519 key")
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def check_credentials(provider: str, env: dict[str, str] | None = None) -> list[str]:
    """What is missing for the provider's own SDK to reach the cloud (cannot check AWS keys:
    profiles, SSO and instance roles all work)."""
    env = dict(os.environ) if env is None else env
    if provider in CREDENTIALS:
        key, names = CREDENTIALS[provider]
        ns, name = key.split(":")
        value = pulumi.Config(ns).get(name)
        if value is not None:
            return [] if is_config_secret(key) else [
                f"{key} is stored in plain text: `pulumi config rm {key}`, then "
                f"`pulumi config set --secret {key} TOKEN`"
            ]
        if not any(env.get(n) for n in names):
            return [
                f"no {provider} API token: `pulumi config set --secret {key} TOKEN` "
                f"(or export {' or '.join(names)})"
            ]
    if provider == "aws" and not pulumi.Config("aws").get("region") and not any(
        env.get(n) for n in AWS_REGION_ENV
    ):
        return [
            "no default AWS region: `pulumi config set aws:region eu-central-1` (any region; "
            "every resource names its own region from the plan)"
        ]
    return []


def settings_from_config(plan: Plan, env: dict[str, str] | None = None) -> Settings:
    """Read and check the stack's configuration; raise ProvisionError naming every problem."""
    cfg = pulumi.Config(NAMESPACE)
    problems = check_credentials(plan.provider, env)

    owner = cfg.get("owner")
    if not owner:
        problems.append(
            "edgeshot:owner is not set: who owns these servers (a team or cost centre), "
            "written on every resource's labels: `pulumi config set edgeshot:owner NAME`"
        )
    elif not LABEL_VALUE.match(owner):
        problems.append(
            f"edgeshot:owner {owner!r} must be lowercase letters, digits, '-' and '_' "
            "(at most 63, starting and ending with a letter or digit): it becomes a label"
        )

    ssh_public_key = cfg.get("sshPublicKey")
    ssh_keys = tuple(cfg.get_object("sshKeys") or ())
    if ssh_keys and plan.provider == "aws":
        problems.append("edgeshot:sshKeys is for Hetzner and DigitalOcean; on AWS set "
                        "edgeshot:sshPublicKey (a key pair is made per region)")
    if not ssh_public_key and not ssh_keys:
        problems.append(
            "edgeshot:sshPublicKey is not set: the operators' SSH public key, e.g. "
            "`pulumi config set edgeshot:sshPublicKey \"$(cat ~/.ssh/id_ed25519.pub)\"`"
            + ("" if plan.provider == "aws" else
               " (or name keys already in the account: `pulumi config set --path "
               "'edgeshot:sshKeys[0]' NAME`)")
        )
    elif ssh_public_key and not ssh_public_key.startswith(("ssh-", "ecdsa-")):
        problems.append("edgeshot:sshPublicKey does not look like an OpenSSH public key "
                        "(it starts 'ssh-ed25519 …' or 'ssh-rsa …')")

    secrets: dict[str, pulumi.Output[str]] = {}
    signing_public_key = ""
    for name, what in SECRETS.items():
        key = f"{NAMESPACE}:{name}"
        value = cfg.get(name)
        hint = KEY_HINT if name == "signingKey" else TOKEN_HINT
        if value is None:
            problems.append(f"{key} is not set ({what}): `pulumi config set --secret {key} "
                            f"\"$({hint})\"`")
            continue
        if not is_config_secret(key):
            problems.append(f"{key} is stored in plain text: `pulumi config rm {key}`, then set "
                            f"it with `pulumi config set --secret {key} …`")
            continue
        if name == "signingKey":
            try:
                signing_public_key = public_key_of(value)
            except (ValueError, TypeError) as exc:
                problems.append(f"{key} is not an unencrypted Ed25519 private key in PEM "
                                f"({exc}); make one with `{hint}`")
                continue
        elif len(value) < MIN_TOKEN:
            problems.append(f"{key} is {len(value)} characters; a token needs at least "
                            f"{MIN_TOKEN} random ones: `{hint}`")
            continue
        # checked above in plain text (nothing is created before every problem is known);
        # passed on as the secret Output the config system hands out, never the plain value
        secrets[name] = cfg.require_secret(name)

    if (plan.private_network is None or any(e.private_subnet is None for e in plan.edgepoints)
            or (plan.provider == "aws" and plan.controller_subnet is None)):
        problems.append(
            "the network's slot_network leaves no room in its RFC 1918 block for the edgepoints' "
            "private networks: choose a smaller slot_network (the default 10.64.0.0/12 works)"
        )
    if problems:
        raise ProvisionError(problems)
    return Settings(owner=owner or "", ssh_public_key=ssh_public_key, ssh_keys=ssh_keys,
                    secrets=secrets, signing_public_key=signing_public_key)
