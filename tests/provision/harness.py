"""Run a Pulumi program in-process against the real provider SDK classes, with
`pulumi.runtime.set_mocks` standing in for the engine and the clouds.

A monitor records every registration as the engine would see it: type token,
logical name, parent URN and inputs (engine property names, camelCase), so tests
assert on exactly what `pulumi up` would send to the providers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor, Mocks
from pulumi.runtime.settings import ROOT, get_root_resource
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await


@dataclass
class Res:
    type: str
    name: str
    urn: str
    parent: str  # parent URN ('' for none; the stack's URN for top-level)
    inputs: dict[str, Any]
    id: str
    custom: bool
    state: dict[str, Any] = field(default_factory=dict)  # inputs and outputs, as the mock cloud answered
    protect: bool = False            # resource options, as the engine receives them
    ignore_changes: tuple[str, ...] = ()

    @property
    def parent_name(self) -> str:
        return self.parent.rsplit("::", 1)[-1] if self.parent else ""

    @property
    def parent_type(self) -> str:
        return self.parent.split("::")[2].split("$")[-1] if self.parent else ""


@dataclass
class Run:
    resources: list[Res]
    outputs: dict[str, Any]
    secret_outputs: set[str]
    warnings: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    component_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # by URN

    def of(self, type_: str) -> list[Res]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str) -> Res:
        found = [r for r in self.resources if r.type == type_ and r.name == name]
        assert len(found) == 1, f"{type_} {name}: {len(found)} found"
        return found[0]

    def named(self, name: str) -> Res:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"{name}: {[r.type for r in found]}"
        return found[0]

    def by_urn(self, urn: str) -> Res:
        return next(r for r in self.resources if r.urn == urn)

    def children(self, parent: Res) -> list[Res]:
        return [r for r in self.resources if r.parent == parent.urn]

    def all_text(self) -> str:
        """Every input of every resource, as the engine would store it (for leak checks)."""
        return json.dumps([r.inputs for r in self.resources], default=str)


class _Monitor(MockMonitor):
    def __init__(self, mocks: Mocks) -> None:
        super().__init__(mocks)
        self.registered: list[Res] = []
        self.component_outputs: dict[str, dict[str, Any]] = {}

    def RegisterResource(self, request):  # noqa: N802 (gRPC name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            rec = self.resources[response.urn]
            inputs = pulumi.runtime.rpc.deserialize_properties(request.object)
            self.registered.append(Res(request.type, request.name, response.urn, request.parent,
                                       inputs, rec.id, request.custom, dict(rec.state or {}),
                                       bool(request.protect), tuple(request.ignoreChanges)))
        return response

    def RegisterResourceOutputs(self, request):  # noqa: N802 (gRPC name)
        self.component_outputs[request.urn] = pulumi.runtime.rpc.deserialize_properties(
            request.outputs)
        return super().RegisterResourceOutputs(request)


def _number(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("/".join(parts).encode()).digest()[:4], "big")


class CloudMocks(Mocks):
    """What the clouds would answer: numeric ids (Hetzner wants ints), addresses from the
    documentation ranges, and each resource's computed outputs. Derived from the resource's
    type and name, so the same resource gets the same answers in two runs (diffs compare)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args):
        n = _number(args.typ, args.name)
        out = dict(args.inputs)
        ip = f"198.51.100.{n % 250 + 1}" if n % 2 else f"192.0.2.{n % 250 + 1}"
        t = args.typ
        if t == "hcloud:index/server:Server":
            out |= {"ipv4Address": ip, "ipv6Address": f"2001:db8::{n:x}", "status": "running"}
        elif t == "aws:ec2/instance:Instance":
            out |= {"primaryNetworkInterfaceId": f"eni-{n}",
                    "privateIp": args.inputs.get("privateIp") or f"10.1.0.{n % 250}",
                    "publicIp": ""}
        elif t == "aws:ec2/eip:Eip":
            out |= {"publicIp": ip, "allocationId": f"eipalloc-{n}"}
        elif t == "aws:ec2/keyPair:KeyPair":
            out |= {"keyName": args.inputs.get("keyName")}
        elif t == "digitalocean:index/droplet:Droplet":
            out |= {"ipv4Address": ip, "ipv4AddressPrivate": f"10.200.0.{n % 250}",
                    "ipv6Address": f"2001:db8::{n:x}", "urn": f"do:droplet:{n}"}
        elif t == "digitalocean:index/sshKey:SshKey":
            out |= {"fingerprint": f"aa:bb:{n}"}
        return str(n), out

    def call(self, args):
        self.calls.append((args.token, dict(args.args)))
        if args.token == "aws:ec2/getAmi:getAmi":
            region = str(args.args.get("region"))
            return {"id": f"ami-{_number(region, json.dumps(args.args['filters'])):08x}"}
        return {}


def run(program: Callable[[], Any], config: dict[str, Any], secret_keys: tuple[str, ...] = (),
        project: str = "edgeshot", stack: str = "dev") -> Run:
    """Run `program` under mocks with this stack config; everything resolved."""
    mocks = CloudMocks()
    monitor = _Monitor(mocks)
    ROOT.set(None)  # a fresh stack per run
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
        list(secret_keys))
    warnings: list[str] = []
    original = pulumi.log.warn

    def warn(msg: str, *args: Any, **kwargs: Any) -> None:
        warnings.append(msg)

    pulumi.log.warn = warn
    try:
        _sync_await(run_pulumi_func(lambda: program()))
        root = get_root_resource()
        outputs: dict[str, Any] = {}
        secret: set[str] = set()
        for name, value in root.outputs.items():  # type: ignore[union-attr]
            out = pulumi.Output.from_input(value)
            outputs[name] = _sync_await(out.future())
            if _sync_await(out.is_secret()):
                secret.add(name)
    finally:
        pulumi.log.warn = original
        pulumi.runtime.set_all_config({}, [])
    return Run(monitor.registered, outputs, secret, warnings, mocks.calls,
               monitor.component_outputs)
