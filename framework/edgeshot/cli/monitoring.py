"""`edgeshot monitoring FILE`: the Prometheus scrape jobs, alert rules and Grafana
dashboards of a network (`edgeshot.configure.monitoring` builds them)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ._common import OutputFormat, fail, load_spec

out = Console()


def monitoring(
    file: Annotated[Path, typer.Argument(help="Policy file declaring the network.")],
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", "-i", envvar="EDGESHOT_INVENTORY",
        help="The servers' addresses (`pulumi stack output inventory --json`); a local "
        "network's come from its plan.")] = None,
    out_dir: Annotated[Path | None, typer.Option(
        "--out", help="Directory to write (default ./monitoring/<network>).",
        file_okay=False)] = None,
    token_file: Annotated[str | None, typer.Option(
        "--token-file", help="Where Prometheus reads a token of the `metrics` scope "
        "(default: a running local network's, else /etc/prometheus/edgeshot-<network>.token)."
    )] = None,
    ca_file: Annotated[str | None, typer.Option(
        "--ca-file", help="The network's CA as Prometheus sees it: scrape over HTTPS, "
        "verifying each service's certificate.")] = None,
    private: Annotated[bool, typer.Option(
        "--private", help="Scrape the servers' private addresses (Prometheus inside the "
        "network).")] = False,
    interval: Annotated[int, typer.Option(help="Scrape interval, seconds.", min=1)] = 15,
    prometheus_url: Annotated[str, typer.Option(
        help="Prometheus as Grafana reaches it (the provisioned data source).")]
    = "http://localhost:9090",
    dashboards_dir: Annotated[str, typer.Option(
        help="Where Grafana finds the dashboards' JSON (the provisioned folder).")]
    = "/var/lib/grafana/dashboards/edgeshot",
    fmt: Annotated[OutputFormat, typer.Option("--format", help="How to print.")]
    = OutputFormat.text,
) -> None:
    """Write the Prometheus scrape jobs (file_sd targets from the inventory, a bearer token
    and TLS per job), alert rules and Grafana dashboards of a network."""
    from edgeshot.configure import Inventory, InventoryError, inventory_from_plan
    from edgeshot.configure.monitoring import ScrapeSettings, monitoring_files, write_files
    from edgeshot.plan import compile_plan

    plan = compile_plan(load_spec(file))
    try:
        inv = Inventory.parse(inventory) if inventory else inventory_from_plan(plan)
        if inv.network != plan.network:
            raise InventoryError(f"{inventory}: the inventory of network {inv.network}, "
                                 f"not {plan.network}")
        local = Path(".state") / plan.network / "secrets" / "metrics.token"
        default_token = (str(local.resolve()) if plan.provider == "local" and local.is_file()
                         else f"/etc/prometheus/edgeshot-{plan.network}.token")
        settings = ScrapeSettings(
            token_file=token_file or default_token,
            ca_file=ca_file, private=private, interval_s=interval)
        files = monitoring_files(inv, settings, prometheus_url=prometheus_url,
                                 grafana_dashboards_dir=dashboards_dir)
    except InventoryError as exc:
        hint = "" if inventory else " (a cloud network: give --inventory)"
        raise fail(f"{exc}{hint}") from None
    target = out_dir or Path("monitoring") / plan.network
    try:
        written = write_files(target, files)
    except OSError as exc:
        raise fail(f"{target}: cannot write ({exc.strerror or exc})") from None
    targets = {job: sum(len(g["targets"]) for g in json.loads(text))
               for job in ("agent", "edge", "controller")
               for rel, text in files.items() if rel.endswith(f"{plan.network}-{job}.json")}
    if fmt is OutputFormat.json:
        print(json.dumps({"network": plan.network, "out": str(target),
                          "files": [str(p) for p in written], "targets": targets,
                          "token_file": settings.token_file}, indent=1))
        return
    for p in written:
        out.print(f"  wrote {escape(str(p))}", highlight=False, soft_wrap=True)
    out.print(f"[green]✓[/] monitoring of network {escape(plan.network)}: "
              + ", ".join(f"{n} {job} target(s)" for job, n in targets.items()), highlight=False,
              soft_wrap=True)
    out.print("  next: include the scrape jobs in prometheus.yml, put a token of the metrics "
              f"scope in {escape(settings.token_file)} (`edgeshot token TOKENS_FILE prometheus "
              "--scope metrics --out FILE` on each service's tokens file), and copy grafana/ "
              "into Grafana's provisioning", highlight=False, soft_wrap=True)
