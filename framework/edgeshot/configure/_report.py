"""What a configuration run means for the network, from its plain-data summary.

    verdict = outcome(result.summary())   # or the Configuration resource's outputs
    verdict.excluded                      # edgepoints kept out of routing, and why
    verdict.unusable                      # why nothing usable was configured, or None

Pure functions over the summary (`ConfigureResult.summary()`: no secrets), shared by
`edgeshot up` (its report and exit code), the progress view's final table and the
Pulumi resource, so that all three judge a run the same way: a failed server keeps
its edgepoint out of routing, and only a run that leaves nothing to route to (the
controller or every edgepoint not configured) is a failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

SUCCEEDED = ("ok", "changed")
STYLE = {"ok": "green", "changed": "yellow", "failed": "bold red", "unreachable": "bold red",
         "missing": "red", "running": "cyan", "waiting": "dim"}

Hosts = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class Exclusion:
    """An edgepoint kept out of routing: its servers that were not configured, and why."""

    edgepoint: str
    servers: tuple[tuple[str, str], ...]  # (server, why)

    @property
    def why(self) -> str:
        return "; ".join(f"{name} {why}" for name, why in self.servers)


@dataclass(frozen=True)
class Outcome:
    configured: tuple[str, ...]
    not_configured: tuple[str, ...]
    excluded: tuple[Exclusion, ...]
    unusable: str | None  # why the network cannot serve; None when it can

    @property
    def exit_code(self) -> int:
        """Non-zero only when nothing usable was configured: a partial run is not an error."""
        return 0 if self.unusable is None else 1


def succeeded(host: Mapping[str, Any]) -> bool:
    return host.get("status") in SUCCEEDED


def why(host: Mapping[str, Any]) -> str:
    """A host's status and its first error: "unreachable: ssh: connect to host … timed out"."""
    errors = host.get("errors") or ()
    first = str(errors[0]).removeprefix("unreachable: ") if errors else ""
    return f"{host.get('status', '?')}: {first}" if first else str(host.get("status", "?"))


def exclusions(hosts: Hosts) -> list[Exclusion]:
    """Edgepoints with a server that was not configured, by name."""
    bad: dict[str, list[tuple[str, str]]] = {}
    for name, h in hosts.items():
        if h.get("edgepoint") and not succeeded(h):
            bad.setdefault(h["edgepoint"], []).append((name, why(h)))
    return [Exclusion(ep, tuple(servers)) for ep, servers in sorted(bad.items())]


def outcome(summary: Mapping[str, Any]) -> Outcome:
    hosts: Hosts = summary.get("hosts") or {}
    excluded = exclusions(hosts)
    edgepoints = {h["edgepoint"] for h in hosts.values() if h.get("edgepoint")}
    controller = {n: h for n, h in hosts.items() if "controller" in (h.get("roles") or ())}
    bad_ctl = [f"{n} {why(h)}" for n, h in controller.items() if not succeeded(h)]
    unusable = None
    if not hosts:
        unusable = "the inventory has no servers"
    elif not any(succeeded(h) for h in hosts.values()):
        unusable = "no server was configured"
    elif bad_ctl:
        unusable = f"the controller was not configured ({'; '.join(bad_ctl)}): nothing is routed"
    elif edgepoints and len(excluded) == len(edgepoints):
        unusable = "every edgepoint has a server that was not configured: nothing is routed"
    return Outcome(
        configured=tuple(n for n, h in hosts.items() if succeeded(h)),
        not_configured=tuple(n for n, h in hosts.items() if not succeeded(h)),
        excluded=tuple(excluded), unusable=unusable)


def _notes(host: Mapping[str, Any]) -> str:
    notes = [str(e) for e in (host.get("errors") or ())[:2]]
    criu = (host.get("reports") or {}).get("criu")
    if criu and not criu.get("usable"):
        notes.append(f"cold-starts: {criu.get('reason')}")
    return "; ".join(notes)


def render(summary: Mapping[str, Any], title: str) -> Group:
    """One row per server (result, task counts, notes), then the edgepoints kept out of
    routing and why."""
    t = Table(title=escape(title), title_justify="left")
    for col in ("server", "edgepoint", "result", "ok", "changed", "failed", "notes"):
        t.add_column(col)
    for name, h in (summary.get("hosts") or {}).items():
        status = str(h.get("status", "?"))
        t.add_row(escape(name), escape(h.get("edgepoint") or "—"),
                  f"[{STYLE.get(status, '')}]{escape(status)}[/]", str(h.get("ok", 0)),
                  str(h.get("changed", 0)), str(h.get("failed", 0)), escape(_notes(h)[:120]))
    lines: list[Any] = [t]
    for ex in exclusions(summary.get("hosts") or {}):
        lines.append(Text.from_markup(f"[bold red]kept out of routing:[/] {escape(ex.edgepoint)} "
                                      f"({escape(ex.why)})"))
    return Group(*lines)
