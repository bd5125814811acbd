"""The policy pack's rules, as plain functions over resource properties (what the engine
sends a pack: camelCase names), and the `pulumi_policy` objects that call them.

Mandatory: servers only in the network's locations; server types priced within a
ceiling; no inbound firewall rule beyond the network's ports and sources; the
edgeshot labels on every labelled resource. Advisory (a human decides): SSH from
wide operator networks; servers costing more than the plan says; no operator
SSH access at all.

The facts come from the network's policy file (`PackSettings.from_plan`), named by
the environment variable EDGESHOT_POLICY_FILE or the policy config `policyFile`;
per-policy config narrows them (`allowedLocations`, `maxMonthly`, `warnAboveMonthly`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from edgeshot.plan import Plan, compile_plan
from edgeshot.spec import CATALOGS, SpecError, load

from ._rules import LABEL_EDGEPOINT, LABEL_NETWORK, LABEL_OWNER, LABEL_ROLE, SSH_PORT
from ._rules import allowed_ports as plan_ports
from ._rules import public_ports as plan_public_ports

Network = IPv4Network | IPv6Network

SERVERS = {
    "hcloud:index/server:Server": ("location", "serverType"),
    "aws:ec2/instance:Instance": ("region", "instanceType"),
    "digitalocean:index/droplet:Droplet": ("region", "size"),
}
LABELLED = {
    "hcloud:index/server:Server", "hcloud:index/firewall:Firewall", "hcloud:index/network:Network",
    "hcloud:index/sshKey:SshKey",
    "aws:ec2/instance:Instance", "aws:ec2/vpc:Vpc", "aws:ec2/subnet:Subnet",
    "aws:ec2/securityGroup:SecurityGroup", "aws:ec2/eip:Eip",
    "aws:ec2/internetGateway:InternetGateway", "aws:ec2/routeTable:RouteTable",
    "aws:ec2/keyPair:KeyPair",
    "digitalocean:index/droplet:Droplet",
}
FIREWALLS = {
    "hcloud:index/firewall:Firewall",
    "aws:ec2/securityGroup:SecurityGroup",
    "aws:ec2/securityGroupRule:SecurityGroupRule",
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
    "digitalocean:index/firewall:Firewall",
}
PROVIDER_OF = {"hcloud": "hetzner", "aws": "aws", "digitalocean": "digitalocean"}
WIDE_V4, WIDE_V6 = 24, 56  # SSH from a wider operator network: advisory


@dataclass(frozen=True)
class PackSettings:
    network: str
    provider: str
    locations: frozenset[str]
    prices: Mapping[str, Decimal]
    max_monthly: Decimal
    currency: str
    public_ports: frozenset[int]
    ports: frozenset[int]
    operators: tuple[Network, ...]
    private: tuple[Network, ...]
    planned_monthly: Decimal

    @classmethod
    def from_plan(cls, plan: Plan) -> PackSettings:
        catalog = CATALOGS[plan.provider]
        servers = (plan.controller, *plan.servers)
        private = [ip_network(c) for c in (plan.private_network,) if c]
        return cls(
            network=plan.network,
            provider=plan.provider,
            locations=frozenset(s.location for s in servers),
            prices={t: st.monthly for t, st in catalog.server_types.items()},
            max_monthly=max(s.monthly_cost.amount for s in servers),
            currency=catalog.currency,
            public_ports=plan_public_ports(plan),
            ports=plan_ports(plan),
            operators=tuple(ip_network(o) for o in plan.operators),
            private=tuple(private),
            planned_monthly=plan.infrastructure_monthly.amount,
        )

    def configured(self, config: Mapping[str, Any]) -> PackSettings:
        """These settings narrowed by a policy's config."""
        out = self
        if config.get("allowedLocations") is not None:
            out = replace(out, locations=frozenset(config["allowedLocations"]))
        if config.get("maxMonthly") is not None:
            out = replace(out, max_monthly=Decimal(str(config["maxMonthly"])))
        if config.get("warnAboveMonthly") is not None:
            out = replace(out, planned_monthly=Decimal(str(config["warnAboveMonthly"])))
        return out


# --- reading properties ----------------------------------------------------------


def _get(props: Mapping[str, Any], key: str) -> Any:
    try:
        return props[key]
    except KeyError:
        return None


def server_labels(type_: str, props: Mapping[str, Any]) -> dict[str, str] | None:
    """A resource's labels/tags as a dict, or None if it carries none."""
    if type_.startswith("digitalocean:"):
        tags = _get(props, "tags")
        if tags is None:
            return None
        return dict(t.split(":", 1) for t in tags if ":" in t)
    found = _get(props, "labels" if type_.startswith("hcloud:") else "tags")
    return None if found is None else dict(found)


@dataclass(frozen=True)
class Inbound:
    protocol: str
    low: int | None  # None: every port
    high: int | None
    cidrs: tuple[str, ...]
    other_sources: tuple[str, ...]  # security groups, tags, droplets…: not addresses


def _ports(spec: Any) -> tuple[int | None, int | None]:
    if spec is None or str(spec).lower() in ("any", "all", ""):
        return None, None
    text = str(spec)
    if "-" in text:
        lo, hi = text.split("-", 1)
        return int(float(lo)), int(float(hi))
    return int(float(text)), int(float(text))


def _aws_protocol(value: Any) -> str:
    text = str(value).lower()
    return {"6": "tcp", "17": "udp", "1": "icmp", "-1": "all"}.get(text, text)


def inbound_rules(type_: str, props: Mapping[str, Any]) -> list[Inbound]:
    """Every inbound rule of a firewall-like resource, normalised."""
    out: list[Inbound] = []
    if type_ == "hcloud:index/firewall:Firewall":
        for r in _get(props, "rules") or ():
            if _get(r, "direction") != "in":
                continue
            lo, hi = _ports(_get(r, "port"))
            out.append(Inbound(str(_get(r, "protocol")), lo, hi,
                               tuple(_get(r, "sourceIps") or ()), ()))
    elif type_ == "aws:ec2/securityGroup:SecurityGroup":
        for r in _get(props, "ingress") or ():
            out.append(_aws_rule(_get(r, "protocol"), _get(r, "fromPort"), _get(r, "toPort"),
                                 [*(_get(r, "cidrBlocks") or ()), *(_get(r, "ipv6CidrBlocks") or ())],
                                 [*(_get(r, "securityGroups") or ()), *(_get(r, "prefixListIds") or ()),
                                  *(["self"] if _get(r, "self") else [])]))
    elif type_ == "aws:ec2/securityGroupRule:SecurityGroupRule":
        if _get(props, "type") == "ingress":
            out.append(_aws_rule(_get(props, "protocol"), _get(props, "fromPort"),
                                 _get(props, "toPort"),
                                 [*(_get(props, "cidrBlocks") or ()),
                                  *(_get(props, "ipv6CidrBlocks") or ())],
                                 [s for s in (_get(props, "sourceSecurityGroupId"),
                                              "self" if _get(props, "self") else None) if s]
                                 + list(_get(props, "prefixListIds") or ())))
    elif type_ == "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule":
        out.append(_aws_rule(_get(props, "ipProtocol"), _get(props, "fromPort"),
                             _get(props, "toPort"),
                             [c for c in (_get(props, "cidrIpv4"), _get(props, "cidrIpv6")) if c],
                             [s for s in (_get(props, "referencedSecurityGroupId"),
                                          _get(props, "prefixListId")) if s]))
    elif type_ == "digitalocean:index/firewall:Firewall":
        for r in _get(props, "inboundRules") or ():
            lo, hi = _ports(_get(r, "portRange"))
            others = [*(_get(r, "sourceTags") or ()),
                      *(str(d) for d in _get(r, "sourceDropletIds") or ()),
                      *(_get(r, "sourceLoadBalancerUids") or ()),
                      *(_get(r, "sourceKubernetesIds") or ())]
            out.append(Inbound(str(_get(r, "protocol")), lo, hi,
                               tuple(_get(r, "sourceAddresses") or ()), tuple(others)))
    return out


def _aws_rule(protocol: Any, low: Any, high: Any, cidrs: Iterable[str],
              others: Iterable[str]) -> Inbound:
    proto = _aws_protocol(protocol)
    if proto == "all":
        return Inbound("all", None, None, tuple(cidrs), tuple(others))
    lo = None if low is None else int(float(low))
    hi = None if high is None else int(float(high))
    return Inbound(proto, lo, hi, tuple(cidrs), tuple(others))


# --- the checks (each returns the violations it finds) ---------------------------


def check_location(s: PackSettings, type_: str, props: Mapping[str, Any],
                   provider_props: Mapping[str, Any] | None = None) -> list[str]:
    if type_ not in SERVERS:
        return []
    key = SERVERS[type_][0]
    where = _get(props, key)
    if where is None and provider_props is not None:
        where = _get(provider_props, "region")
    if where is None:
        return [f"{key} is not set: edgeshot servers name their location explicitly"]
    if where not in s.locations:
        return [f"{key} {where!r} is not one of the network's locations "
                f"({', '.join(sorted(s.locations))})"]
    return []


def check_cost(s: PackSettings, type_: str, props: Mapping[str, Any]) -> list[str]:
    if type_ not in SERVERS:
        return []
    key = SERVERS[type_][1]
    kind = _get(props, key)
    provider = PROVIDER_OF[type_.split(":")[0]]
    prices = s.prices if provider == s.provider else {
        t: st.monthly for t, st in CATALOGS[provider].server_types.items()}
    if kind not in prices:
        return [f"{key} {kind!r} has no known price, so its cost cannot be held to the "
                f"ceiling of {s.max_monthly} {s.currency}/month"]
    if prices[kind] > s.max_monthly:
        return [f"{key} {kind!r} costs {prices[kind]} {s.currency}/month, above the ceiling "
                f"of {s.max_monthly} {s.currency}/month"]
    return []


def _is_host(net: Network) -> bool:
    return net.prefixlen == net.max_prefixlen


def _within(net: Network, nets: Iterable[Network]) -> bool:
    return any(net.version == n.version and net.subnet_of(n) for n in nets)  # type: ignore[arg-type]


def check_firewall(s: PackSettings, type_: str, props: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    for rule in inbound_rules(type_, props):
        what = (f"{rule.protocol} port {rule.low}" if rule.low == rule.high
                else f"{rule.protocol} ports {rule.low}-{rule.high}")
        if rule.protocol.lower() not in ("tcp", "6"):
            problems.append(f"inbound {rule.protocol} rule: edgeshot opens TCP ports only")
            continue
        if rule.low is None or rule.low != rule.high:
            problems.append(f"inbound {what}: a range; edgeshot opens single ports only")
            continue
        port = rule.low
        if port not in s.ports:
            problems.append(f"inbound {what}: not a port of the network "
                            f"({', '.join(str(p) for p in sorted(s.ports))})")
            continue
        if rule.other_sources:
            problems.append(f"inbound {what} from {', '.join(rule.other_sources)}: sources "
                            "must be addresses (operators, the controller, the edge host)")
        for cidr in rule.cidrs:
            try:
                net = ip_network(cidr, strict=False)
            except ValueError:
                problems.append(f"inbound {what} from {cidr!r}: not an address or network")
                continue
            if port in s.public_ports:
                continue  # the dispatchers and the controller's API: anyone
            if net.prefixlen == 0:
                problems.append(f"inbound {what} is open to the world ({cidr}); only "
                                f"{', '.join(str(p) for p in sorted(s.public_ports))} may be")
            elif not (_is_host(net) or _within(net, s.operators)
                      or (port != SSH_PORT and _within(net, s.private))):
                problems.append(f"inbound {what} from {cidr}: neither an operator network, nor "
                                "a single host (controller, edge host)"
                                + ("" if port == SSH_PORT else ", nor the private network"))
    return problems


def check_labels(s: PackSettings, type_: str, props: Mapping[str, Any]) -> list[str]:
    if type_ not in LABELLED:
        return []
    got = server_labels(type_, props) or {}
    required = [LABEL_NETWORK, LABEL_OWNER]
    if type_ in SERVERS:
        required.append(LABEL_ROLE)
        if got.get(LABEL_ROLE) != "controller":
            required.append(LABEL_EDGEPOINT)
    problems = [f"label {k!r} is missing" for k in required if not got.get(k)]
    if got.get(LABEL_NETWORK) and got[LABEL_NETWORK] != s.network:
        problems.append(f"label {LABEL_NETWORK!r} is {got[LABEL_NETWORK]!r}, not this "
                        f"network's {s.network!r}")
    return problems


def check_ssh_breadth(s: PackSettings, type_: str, props: Mapping[str, Any]) -> list[str]:
    """Advisory: SSH from a wide network is allowed when it is an operator's; say so."""
    out = []
    for rule in inbound_rules(type_, props):
        if rule.low != SSH_PORT or rule.high != SSH_PORT:
            continue
        for cidr in rule.cidrs:
            try:
                net = ip_network(cidr, strict=False)
            except ValueError:
                continue
            if net.prefixlen and net.prefixlen < (WIDE_V4 if net.version == 4 else WIDE_V6):
                out.append(f"SSH is open to {cidr} ({net.num_addresses:,} addresses): is every "
                           "one of them an operator's?")
    return out


def check_spend(s: PackSettings, resources: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Advisory: the stack's servers cost more a month than the plan says."""
    total = Decimal(0)
    for type_, props in resources:
        if type_ in SERVERS:
            provider = PROVIDER_OF[type_.split(":")[0]]
            price = CATALOGS[provider].server_types.get(_get(props, SERVERS[type_][1]))
            total += price.monthly if price else Decimal(0)
    if total > s.planned_monthly:
        return [f"the stack's servers cost {total} {s.currency}/month; the plan says "
                f"{s.planned_monthly} {s.currency}/month"]
    return []


def check_operator_access(s: PackSettings,
                          resources: Iterable[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Advisory: no firewall lets an operator in over SSH (only the controller can)."""
    for type_, props in resources:
        for rule in inbound_rules(type_, props):
            if rule.low == SSH_PORT == rule.high:
                for cidr in rule.cidrs:
                    try:
                        net = ip_network(cidr, strict=False)
                    except ValueError:
                        continue
                    if not _is_host(net):
                        return []
    return ["no firewall lets an operator network in over SSH: servers are reachable only "
            "through the controller (declare EdgeNetwork(operators=[...]))"]


# --- the pack ---------------------------------------------------------------------


@lru_cache(maxsize=8)
def settings_for(policy_file: str) -> PackSettings:
    try:
        plan = compile_plan(load(policy_file))
    except SpecError as exc:
        raise ValueError(f"{policy_file}: {len(exc.problems)} problems: "
                         + "; ".join(str(p) for p in exc.problems)) from None
    except FileNotFoundError:
        raise ValueError(f"{policy_file}: no such policy file") from None
    return PackSettings.from_plan(plan)


NOT_CONFIGURED = ("the edgeshot policy pack does not know the network: set EDGESHOT_POLICY_FILE "
                  "to its policy file (or the policy config 'policyFile')")


def resolve_settings(config: Mapping[str, Any],
                     env: Mapping[str, str] | None = None) -> PackSettings | str:
    """Settings for one policy evaluation, or the reason there are none."""
    env = os.environ if env is None else env
    path = config.get("policyFile") or env.get("EDGESHOT_POLICY_FILE")
    if not path:
        return NOT_CONFIGURED
    try:
        return settings_for(str(path)).configured(config)
    except ValueError as exc:
        return f"the edgeshot policy pack cannot read the network: {exc}"


_SCHEMA = {"policyFile": {"type": "string"}}
RESOURCE_CHECKS: dict[str, tuple[str, Callable[..., list[str]], bool, dict[str, Any]]] = {
    "edgeshot-server-location": (
        "Servers only in the locations the network declares.", check_location, True,
        {"allowedLocations": {"type": "array", "items": {"type": "string"}}}),
    "edgeshot-server-cost": (
        "Server types with a known price within the monthly ceiling.", check_cost, True,
        {"maxMonthly": {"type": "number"}}),
    "edgeshot-firewall-rules": (
        "No inbound rule beyond the network's ports and sources.", check_firewall, True, {}),
    "edgeshot-required-labels": (
        "Network, owner (and edgepoint, role on servers) labels on every labelled resource.",
        check_labels, True, {}),
    "edgeshot-ssh-source-breadth": (
        "SSH from wide networks deserves a second look.", check_ssh_breadth, False, {}),
}
STACK_CHECKS: dict[str, tuple[str, Callable[..., list[str]], dict[str, Any]]] = {
    "edgeshot-monthly-spend": (
        "The stack's servers should cost what the plan says.", check_spend,
        {"warnAboveMonthly": {"type": "number"}}),
    "edgeshot-operator-access": (
        "Operators should be able to reach the servers over SSH.", check_operator_access, {}),
}


def policies() -> list[Any]:
    """The pack's policies (pulumi_policy objects); stacks/policy/__main__.py serves them."""
    from pulumi_policy import (
        EnforcementLevel,
        PolicyConfigSchema,
        ResourceValidationPolicy,
        StackValidationPolicy,
    )

    def resource_validator(check: Callable[..., list[str]]) -> Callable[..., None]:
        def validate(args: Any, report: Callable[..., None]) -> None:
            s = resolve_settings(args.get_config())
            if isinstance(s, str):
                if args.resource_type in SERVERS or args.resource_type in FIREWALLS \
                        or args.resource_type in LABELLED:
                    report(s)
                return
            if check is check_location:
                provider = args.provider.props if args.provider is not None else None
                found = check(s, args.resource_type, args.props, provider)
            else:
                found = check(s, args.resource_type, args.props)
            for message in found:
                report(message)
        return validate

    def stack_validator(check: Callable[..., list[str]]) -> Callable[..., None]:
        def validate(args: Any, report: Callable[..., None]) -> None:
            s = resolve_settings(args.get_config())
            if isinstance(s, str):
                report(s)
                return
            for message in check(s, [(r.resource_type, r.props) for r in args.resources]):
                report(message)
        return validate

    out: list[Any] = []
    for name, (description, check, mandatory, schema) in RESOURCE_CHECKS.items():
        out.append(ResourceValidationPolicy(
            name=name, description=description, validate=resource_validator(check),
            enforcement_level=EnforcementLevel.MANDATORY if mandatory else EnforcementLevel.ADVISORY,
            config_schema=PolicyConfigSchema(properties={**_SCHEMA, **schema})))
    for name, (description, check, schema) in STACK_CHECKS.items():
        out.append(StackValidationPolicy(
            name=name, description=description, validate=stack_validator(check),
            enforcement_level=EnforcementLevel.ADVISORY,
            config_schema=PolicyConfigSchema(properties={**_SCHEMA, **schema})))
    return out
