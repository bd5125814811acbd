"""The Pulumi resources a plan implies, without an engine or a cloud: the real components
run against `pulumi.runtime.set_mocks` and every registration is recorded. For
`edgeshot plan FILE --resources` and for reviewers; the values the clouds would
assign (ids, addresses) are placeholders, the structure is exact.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor, Mocks

from edgeshot.plan import Plan

from ._settings import Settings

PLACEHOLDER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPLACEHOLDERFORPREVIEW preview"


@dataclass(frozen=True)
class ImpliedResource:
    type: str
    name: str
    parent_type: str  # '' for top level
    parent_name: str
    depth: int


class _Mocks(Mocks):
    def __init__(self) -> None:
        self.ids = itertools.count(1)

    def new_resource(self, args: Any) -> tuple[str, dict[str, Any]]:
        n = next(self.ids)
        addr = f"192.0.2.{n % 250 + 1}"
        outputs = {"ipv4Address": addr, "publicIp": addr, "ipv4AddressPrivate": f"10.0.0.{n % 250}",
                   "primaryNetworkInterfaceId": f"eni-{n}", "fingerprint": f"fp-{n}",
                   "privateIp": args.inputs.get("privateIp") or f"10.0.1.{n % 250}"}
        return str(n), {**args.inputs, **outputs}

    def call(self, args: Any) -> dict[str, Any]:
        return {"id": "ami-preview"} if args.token == "aws:ec2/getAmi:getAmi" else {}


class _Recorder(MockMonitor):
    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.seen: list[tuple[str, str, str]] = []  # type, name, parent urn

    def RegisterResource(self, request: Any) -> Any:  # noqa: N802 (gRPC name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.seen.append((request.type, request.name, request.parent))
        return response


def implied_resources(plan: Plan, owner: str = "owner") -> list[ImpliedResource]:
    """Every resource `EdgeNetwork(plan)` registers, parents before children, in tree order."""
    from ._components import EdgeNetwork

    mocks = _Mocks()
    monitor = _Recorder(mocks)
    pulumi.runtime.set_mocks(mocks, project=f"edgeshot-{plan.provider}", stack=plan.network,
                             preview=False, monitor=monitor)
    settings = Settings(owner=owner, ssh_public_key=PLACEHOLDER_KEY)

    @pulumi.runtime.test
    def build() -> None:
        EdgeNetwork(plan.network, plan, settings)

    build()
    urn_of = {item: monitor.make_urn(item[2], item[0], item[1]) for item in monitor.seen}
    children: dict[str, list[tuple[str, str, str]]] = {}
    for item in monitor.seen:
        children.setdefault(item[2], []).append(item)
    ordered: list[ImpliedResource] = []

    def walk(parent_urn: str, depth: int) -> None:
        for type_, name, parent in sorted(children.get(parent_urn, ()),
                                          key=lambda t: (not t[0].startswith("edgeshot:"), t[1], t[0])):
            p_type = parent.split("::")[2].split("$")[-1] if parent else ""
            p_name = parent.rsplit("::", 1)[-1] if parent else ""
            if p_type == "pulumi:pulumi:Stack":
                p_type, p_name = "", ""
            ordered.append(ImpliedResource(type_, name, p_type, p_name, depth))
            walk(urn_of[(type_, name, parent)], depth + 1)

    recorded = set(urn_of.values())
    for root in sorted(p for p in children if p not in recorded):
        walk(root, 0)
    return ordered
