"""What an owner may deploy on this network: the operator's grants, and the one rule every
owner request is held to.

What an owner may send is what the owner could write in a policy file for its own app; the
network's operator decides the rest. The operator decides in two places:

* the **network's plan** (compiled from the operator's policy file): each app placed there
  grants its owner that app's routing keys and origin, and fixes its owner, organisation,
  vendor, source, trust and edgepoints;
* the controller configuration's ``[owners.<id>]`` tables (`OwnerGrant`): more routing keys
  (``"b.example.com"``, ``"*.b.example.com"``, ``"shop.example.com/b"``, ``"*/b"``), origins
  the owner may point at, and a quota (CPU and memory over the tiers, priority).

Verifying a *new* host as the owner's (a DNS TXT or HTTP token challenge) is not done: a host
is the owner's when the operator granted it.

`authorise` is a pure function over plain data: the controller gathers the inputs (its
plan, its configuration, the other owners' current versions), the table-driven tests feed
it directly.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from decimal import Decimal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgeshot.plan import AppPlan

# Never an origin an owner names: the host itself, the cloud's metadata service, the
# network's own machines (their control APIs and data ports).
_METADATA = {"169.254.169.254", "fd00:ec2::254", "metadata.google.internal", "metadata"}


class OwnerGrant(BaseModel):
    """``[owners.<id>]`` of the controller's configuration: what the operator grants one
    owner beyond its apps in the network's plan."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    routing: tuple[str, ...] = Field((), description="routing keys the owner may use: "
                                     "'host', '*.domain', 'host/prefix', '*/prefix'")
    origins: tuple[str, ...] = Field((), description="origin URLs (scheme://host[:port]) "
                                     "the owner's apps may send origin routes to")
    max_cpu: Decimal | None = Field(None, gt=0, description="CPU cores over an app's tiers")
    max_memory_mb: int | None = Field(None, ge=16, description="MiB over an app's tiers")
    max_priority: int | None = Field(None, ge=0, le=100)

    @field_validator("routing")
    @classmethod
    def _keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for k in keys:
            parse_key(k)
        return keys

    @field_validator("origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for o in origins:
            u = urlsplit(o)
            if u.scheme not in ("http", "https") or not u.hostname:
                raise ValueError(f"{o!r} is not an http:// or https:// URL")
            if (why := forbidden_host(u.hostname, frozenset())) is not None:
                raise ValueError(f"{o!r}: {why}")
        return origins


Key = tuple[str, str]  # (host or '*', path prefix or '/'): `Routing.keys()`


def parse_key(text: str) -> Key:
    """'host' -> (host, '/'); 'host/p' -> (host, '/p'); '*/p' -> ('*', '/p')."""
    host, sep, rest = text.partition("/")
    prefix = "/" + rest if sep else "/"
    if not host or any(c in host for c in " \t") or "//" in prefix:
        raise ValueError(f"routing key {text!r} must be 'host', '*.domain', 'host/prefix' "
                         "or '*/prefix'")
    return host.lower(), prefix


def keys_of(app: AppPlan) -> list[Key]:
    return [(h, app.path_prefix or "/") for h in (app.hosts or ("*",))]


def _host_covers(granted: str, host: str) -> bool:
    if granted == host:
        return True
    if granted.startswith("*."):
        return host.endswith(granted[1:]) and host != granted[2:]
    return False


def covers(granted: Key, key: Key) -> bool:
    """A granted key covers ``key``: its host (or a wildcard of it) and a path prefix below."""
    return _host_covers(granted[0], key[0]) and key[1].startswith(granted[1])


def takes(key: Key, other: Key) -> bool:
    """Routing ``key`` would take requests ``other`` gets: its host is ``other``'s or one
    ``other``'s wildcard covers (the edges route the most specific host first; a key of
    any host, '*', gets only what no host claims) and their path prefixes meet."""
    return _host_covers(other[0], key[0]) and (key[1].startswith(other[1]) or other[1].startswith(key[1]))


def forbidden_host(host: str, network: frozenset[str]) -> str | None:
    """Why an origin host is never allowed (None: it may be, if granted)."""
    h = host.strip("[]").lower().rstrip(".")
    if h == "localhost" or h.endswith(".localhost") or h in _METADATA:
        return f"{host} is the host itself or a metadata service"
    try:
        ip = ipaddress.ip_address(h)
    except ValueError:
        ip = None
    if ip is not None and (ip.is_loopback or ip.is_link_local or ip.is_unspecified
                           or ip.is_multicast):
        return f"{host} is a loopback, link-local or unspecified address"
    if h in network:
        return f"{host} is one of the network's own machines"
    return None


@dataclass(frozen=True)
class Taken:
    """A routing key another owner's app uses."""

    key: Key
    app: str
    owner: str


def authorise(app: AppPlan, base: AppPlan, grant: OwnerGrant, taken: list[Taken],
              network: frozenset[str]) -> list[str]:
    """Why the owner of ``base`` (the app as the network's plan places it) may not deploy
    ``app`` (empty: it may). ``taken``: every other owner's routing keys; ``network``: the
    network's own addresses and host names."""
    out: list[str] = []
    for field in ("owner", "organisation", "vendor", "source", "trusted", "edgepoints"):
        mine, fixed = getattr(app, field), getattr(base, field)
        if mine != fixed:
            out.append(f"{field}: fixed by the network's operator to {fixed!r}, not {mine!r}"
                       + (" (a new source arrives by upload, not as a server path)"
                          if field == "source" else ""))
    placed = keys_of(base)  # the operator's plan decided these (and `validate` checked it)
    granted = [*placed, *(parse_key(k) for k in grant.routing)]
    for key in keys_of(app):
        shown = f"{key[0]}{key[1]}"
        if key in placed:
            continue
        if not any(covers(g, key) for g in granted):
            out.append(f"routing: {shown} was not granted to owner {base.owner!r} "
                       "(the operator grants hosts and path prefixes)")
        for t in taken:
            if t.owner != base.owner and takes(key, t.key):
                out.append(f"routing: {shown} overlaps {t.key[0]}{t.key[1]} of another "
                           f"owner's app {t.app!r}")
                break
    if app.origin_url and app.origin_url != base.origin_url:
        u = urlsplit(app.origin_url)
        allowed = any(app.origin_url.rstrip("/").startswith(o.rstrip("/"))
                      for o in grant.origins)
        why = forbidden_host(u.hostname or "", network)
        if why is not None:
            out.append(f"origin_url: {why}")
        elif not allowed:
            out.append(f"origin_url: {app.origin_url} is not the network's origin for "
                       f"{app.name} nor one the operator allowed owner {base.owner!r}")
    max_priority = grant.max_priority if grant.max_priority is not None else base.priority
    if app.priority > max_priority:
        out.append(f"priority: {app.priority} is above the owner's quota ({max_priority})")
    cpu = sum((t.cpu for t in app.tiers), Decimal(0))
    if grant.max_cpu is not None and cpu > grant.max_cpu:
        out.append(f"tiers.resources.cpu: {cpu} cores in all is above the owner's quota "
                   f"({grant.max_cpu})")
    mem = sum(t.memory_mb for t in app.tiers)
    if grant.max_memory_mb is not None and mem > grant.max_memory_mb:
        out.append(f"tiers.resources.memory_mb: {mem} MiB in all is above the owner's quota "
                   f"({grant.max_memory_mb})")
    return out
