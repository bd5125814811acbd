"""edgeshot.spec: what providers and operators declare, and loading policy files.

    from edgeshot.spec import load
    spec = load("examples/shop/policy_local.py")   # raises SpecError with every problem

A policy file is a plain Python module that builds one `EdgeNetwork` and any
number of `Application`s; `load()` finds them among the module's names.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from ._base import Origin, SpecModel
from ._catalog import CATALOGS, HOURS_PER_MONTH, REGIONS, SECONDS_PER_MONTH, RegionInfo, ServerType
from ._checks import EdgepointIndex, region_info, region_names, select_edgepoints
from ._command import CommandError, command_problems, expand_command, tier_environment
from ._cost import instance_month, money, round_money
from ._load import Problem, SpecError, load_declaration
from ._models import (
    AWS,
    SLA,
    Application,
    Budget,
    Cleave,
    Controller,
    DigitalOcean,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    HealthCheck,
    Hetzner,
    LoadTest,
    Local,
    Money,
    Owner,
    PassCriteria,
    PeakWindow,
    Ports,
    Pricing,
    Provider,
    Region,
    Resources,
    Route,
    Routing,
    Source,
    Tier,
    WarmupRequest,
    WeightedPath,
    check_backend,
    check_secrets_provider,
)


class Spec(SpecModel):
    """A whole, validated declaration: one network and the apps it runs."""

    network: EdgeNetwork
    applications: tuple[Application, ...] = ()
    base_dir: str = Field(
        default=".", description="directory of the policy file; sources are relative to it"
    )

    def source_dir(self, app: Application) -> Path:
        """Absolute path of an app's source (directory or archive)."""
        return (Path(self.base_dir) / app.source.path).resolve()

    def application(self, name: str) -> Application:
        for app in self.applications:
            if app.name == name:
                return app
        raise KeyError(
            f"no application {name!r}; have: {', '.join(a.name for a in self.applications)}"
        )

def load(path: str | os.PathLike[str]) -> Spec:
    """Import and validate a policy file; raise SpecError naming every problem with file:line."""
    network, apps, file = load_declaration(path)
    return Spec(network=network, applications=tuple(apps), base_dir=str(file.parent))


__all__ = [
    "AWS",
    "CATALOGS",
    "HOURS_PER_MONTH",
    "REGIONS",
    "SECONDS_PER_MONTH",
    "SLA",
    "Application",
    "Budget",
    "Cleave",
    "Controller",
    "DigitalOcean",
    "Distribution",
    "EdgeNetwork",
    "Edgepoint",
    "EdgepointIndex",
    "HealthCheck",
    "Hetzner",
    "LoadTest",
    "Local",
    "Money",
    "Origin",
    "Owner",
    "PassCriteria",
    "PeakWindow",
    "Ports",
    "Pricing",
    "Problem",
    "Provider",
    "Region",
    "RegionInfo",
    "Resources",
    "Route",
    "Routing",
    "ServerType",
    "CommandError",
    "Source",
    "Spec",
    "SpecError",
    "SpecModel",
    "Tier",
    "WarmupRequest",
    "WeightedPath",
    "check_backend",
    "check_secrets_provider",
    "command_problems",
    "expand_command",
    "instance_month",
    "load",
    "money",
    "region_info",
    "round_money",
    "region_names",
    "select_edgepoints",
    "tier_environment",
]
