"""What every cloud adapter provides to the components: sites, firewalls, servers, routes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import pulumi

from edgeshot.plan import Plan, ServerPlan

from ._rules import CONTROLLER, EDGE_HOST, Rule
from ._settings import Settings


@dataclass
class Site:
    """An edgepoint's (or the controller's) own network: whatever the cloud needs for it."""

    resources: dict[str, pulumi.Resource] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Machine:
    """A server as the rest of the program sees it."""

    resource: pulumi.CustomResource
    public_ipv4: pulumi.Output[str]
    public_ipv6: pulumi.Output[str] | None
    private_ipv4: pulumi.Input[str] | None
    cloud_id: pulumi.Output[str]
    extras: list[pulumi.Resource] = field(default_factory=list)


@dataclass(frozen=True)
class Sources:
    """How the symbolic sources of a rule resolve in one place of the network."""

    controller: pulumi.Output[str] | None = None  # controller's public IPv4
    edge_host: pulumi.Input[str] | None = None  # the edgepoint edge host's private IPv4

    def resolve(self, rule: Rule) -> list[pulumi.Input[str]]:
        out: list[pulumi.Input[str]] = []
        for src in rule.sources:
            if src == CONTROLLER:
                if self.controller is not None:
                    out.append(self.controller.apply(lambda ip: f"{ip}/32"))
            elif src == EDGE_HOST:
                if self.edge_host is not None:
                    out.append(pulumi.Output.from_input(self.edge_host).apply(lambda ip: f"{ip}/32"))
            else:
                out.append(src)
        return out


class Adapter(ABC):
    """One cloud. Resource names are unique in the stack; cloud names start with the network's."""

    provider: str
    ssh_user: str
    # Whether the cloud's firewall sees traffic on the private network (Hetzner's does not).
    filters_private: bool = True

    def __init__(self, plan: Plan, settings: Settings) -> None:
        self.plan = plan
        self.settings = settings

    def cloud_name(self, *parts: str) -> str:
        return "-".join((self.plan.network, *parts))

    def effective_rules(self, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        """The rules this cloud's firewall can enforce (the others are the host's business)."""
        return tuple(r for r in rules if self.filters_private or not r.private)

    @abstractmethod
    def network(self, parent: pulumi.Resource) -> None:
        """Resources shared by the whole network (SSH keys, tags)."""

    @abstractmethod
    def site(self, name: str, location: str, cidr: str | None, labels: dict[str, str],
             parent: pulumi.Resource, *, controller: bool = False) -> Site:
        """The private network of an edgepoint, or what the controller needs to stand alone."""

    @abstractmethod
    def firewall(self, name: str, rules: tuple[Rule, ...], sources: Sources, site: Site,
                 labels: dict[str, str], parent: pulumi.Resource) -> pulumi.CustomResource:
        """A firewall holding exactly `rules` (already filtered by `effective_rules`)."""

    @abstractmethod
    def server(self, server: ServerPlan, site: Site, firewall: pulumi.CustomResource,
               user_data: str, labels: dict[str, str], parent: pulumi.Resource, *,
               protect: bool = False) -> Machine:
        """The machine itself, attached to its site and firewall from its first boot.
        ``protect``: the controller (its disk holds the usage ledger): Pulumi refuses to
        delete or replace it, and so does the cloud where it can."""

    @abstractmethod
    def routes(self, edgepoint: str, site: Site, servers: list[tuple[ServerPlan, Machine]],
               parent: pulumi.Resource) -> None:
        """Route each server's slot subnet to the server over the edgepoint's network."""
