"""edgeshot.provision: an edge network's servers on Hetzner, AWS or DigitalOcean, as Pulumi
components built from a plan.

A stack template's whole program (stacks/<cloud>/__main__.py):

    config = pulumi.Config("edgeshot")
    plan = load_plan(config.require("policyFile"), provider="hetzner")
    network = EdgeNetwork(plan.network, plan, settings_from_config(plan))
    export_outputs(network)

`program(provider)` is the same, for the Automation API (`edgeshot up FILE`).
Components: `EdgeNetwork` ⊃ controller `EdgeServer`, `Edgepoint` ⊃ `EdgeServer`s
(type tokens `edgeshot:provision:<Type>`). Outputs: `inventory` (for the configure
step; schema in stacks/README.md), `controller_address`, `edge_addresses`,
`signing_public_key`, and `secrets` (tokens and signing key, secret).
"""

from __future__ import annotations

import pulumi

from ._components import TYPE, EdgeNetwork, Edgepoint, EdgeServer, export_outputs
from ._inventory import INVENTORY_FORMAT, build_inventory
from ._policy import PackSettings, policies
from ._preview import ImpliedResource, implied_resources
from ._rules import (
    CONTROLLER,
    EDGE_HOST,
    LABEL_EDGEPOINT,
    LABEL_NETWORK,
    LABEL_OWNER,
    LABEL_ROLE,
    WORLD,
    Rule,
    allowed_ports,
    controller_rules,
    labels,
    public_ports,
    server_rules,
    slot_ports,
)
from ._settings import (
    SECRETS,
    ProvisionError,
    Settings,
    check_credentials,
    load_plan,
    public_key_of,
    settings_from_config,
)

PROVIDERS = ("hetzner", "aws", "digitalocean")


def program(provider: str | None = None) -> EdgeNetwork:
    """The stack templates' program: read `edgeshot:policyFile`, build, export."""
    config = pulumi.Config("edgeshot")
    plan = load_plan(config.require("policyFile"), provider=provider)
    network = EdgeNetwork(plan.network, plan, settings_from_config(plan))
    export_outputs(network)
    return network


__all__ = [
    "CONTROLLER", "EDGE_HOST", "INVENTORY_FORMAT", "LABEL_EDGEPOINT", "LABEL_NETWORK",
    "LABEL_OWNER", "LABEL_ROLE", "PROVIDERS", "SECRETS", "TYPE", "WORLD", "EdgeNetwork",
    "EdgeServer", "Edgepoint", "ImpliedResource", "PackSettings", "ProvisionError", "Rule", "Settings", "allowed_ports",
    "build_inventory", "check_credentials", "controller_rules", "export_outputs",
    "implied_resources", "labels",
    "load_plan", "policies", "program", "public_key_of", "public_ports", "server_rules",
    "settings_from_config", "slot_ports",
]
