"""Monitoring a network with the Prometheus and Grafana a platform team already runs.

`monitoring_files(inventory, settings)` returns every file `edgeshot monitoring` writes,
as plain data (pure: tested without a disk), and `write_files` writes them:

- ``prometheus/edgeshot-<network>.yml``: scrape jobs (agents, edges, controller) to
  paste or ``include`` into prometheus.yml; targets come from file_sd files, each job
  with its TLS settings and bearer token (a token of the read-only ``metrics`` scope:
  it reads /metrics and nothing else), and the rule file;
- ``prometheus/targets/<network>-<job>.json``: the file_sd targets, from the inventory
  (rewrite them when servers change; Prometheus re-reads them without a reload);
- ``prometheus/rules/edgeshot-<network>.rules.yml``: alerts (a service down, an
  edgepoint down, an SLA breach, 80 % and 100 % of a budget, restore failures, usage
  collection lagging), checked by ``promtool check rules`` in the tests;
- ``grafana/dashboards/edgeshot-<network>-{network,edgepoint,app}.json`` and
  ``grafana/provisioning/{datasources,dashboards}/edgeshot-<network>.yml``: provisioned
  dashboards over the metrics the services export (tests check every name).

Metric names follow ``edgeshot_<component>_<name>_<unit>`` with labels ``app``,
``version``, ``edgepoint``, ``owner``; whether a target answers is Prometheus's own
``up``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ._inventory import Inventory, InventoryError, InventoryHost

JOBS = ("agent", "edge", "controller")


@dataclass(frozen=True)
class ScrapeSettings:
    """How the Prometheus server reaches the services (paths as that server sees them)."""

    token_file: str  # holds a token of the `metrics` scope
    ca_file: str | None = None  # the network's CA: scrape over HTTPS, verifying
    private: bool = False  # scrape the servers' private addresses (Prometheus inside)
    interval_s: int = 15
    targets_dir: str = "targets"  # relative: to the Prometheus configuration file
    rules_dir: str = "rules"
    datasource: str = "Prometheus"  # Grafana's name of the Prometheus data source


def job_name(network: str, job: str) -> str:
    return f"edgeshot-{network}-{job}"


# ------------------------------------------------------------------------------ targets


def _address(h: InventoryHost, private: bool) -> str:
    address = (h.private_address or h.address) if private else (h.address or h.private_address)
    if not address:
        raise InventoryError(f"server {h.name} has no address yet: write the inventory after "
                             "`edgeshot up` (`pulumi stack output inventory --json`)")
    return f"[{address}]" if ":" in address else address


def _port(h: InventoryHost, service: str) -> int:
    port = h.ports.get(service)
    if not port:
        raise InventoryError(f"server {h.name}: no {service} port in the inventory")
    return port


def scrape_targets(inv: Inventory, private: bool = False) -> dict[str, list[dict[str, Any]]]:
    """file_sd groups per job: one group per server, labelled with the network, the
    server, its edgepoint and region."""
    out: dict[str, list[dict[str, Any]]] = {job: [] for job in JOBS}

    def group(h: InventoryHost, service: str) -> dict[str, Any]:
        labels = {"network": inv.network, "server": h.name}
        if h.edgepoint:
            labels["edgepoint"] = h.edgepoint
        if h.region:
            labels["region"] = h.region
        return {"targets": [f"{_address(h, private)}:{_port(h, service)}"], "labels": labels}

    for h in sorted(inv.servers.values(), key=lambda s: s.name):
        if h.is_agent:
            out["agent"].append(group(h, "agent"))
        if h.is_edge:
            out["edge"].append(group(h, "edge"))
    if inv.controller is not None:
        out["controller"].append(group(inv.controller, "controller"))
    return out


def prometheus_config(network: str, s: ScrapeSettings) -> dict[str, Any]:
    """The scrape jobs and rule file of one network (a fragment of prometheus.yml)."""
    jobs = []
    for job in JOBS:
        cfg: dict[str, Any] = {
            "job_name": job_name(network, job),
            "scrape_interval": f"{s.interval_s}s",
            "metrics_path": "/metrics",
            "scheme": "https" if s.ca_file else "http",
            # the services' own labels (edgepoint, app…) win over the target's
            "honor_labels": True,
            "authorization": {"type": "Bearer", "credentials_file": s.token_file},
            "file_sd_configs": [{"files": [f"{s.targets_dir}/{network}-{job}.json"],
                                 "refresh_interval": "1m"}],
        }
        if s.ca_file:
            cfg["tls_config"] = {"ca_file": s.ca_file, "insecure_skip_verify": False}
        jobs.append(cfg)
    return {"rule_files": [f"{s.rules_dir}/edgeshot-{network}.rules.yml"], "scrape_configs": jobs}


# ------------------------------------------------------------------------------ alerts


def alert_rules(network: str) -> dict[str, Any]:
    """Alerting rules of one network (every expression selects this network's series)."""
    n = f'network="{network}"'

    def rule(name: str, expr: str, for_: str, severity: str, summary: str) -> dict[str, Any]:
        return {"alert": name, "expr": expr, "for": for_,
                "labels": {"severity": severity, "network": network},
                "annotations": {"summary": summary}}

    return {"groups": [{"name": f"edgeshot-{network}", "rules": [
        rule("EdgeshotServiceDown", f'up{{job=~"edgeshot-{network}-.*"}} == 0', "2m",
             "critical", "{{ $labels.job }} on {{ $labels.server }} does not answer /metrics"),
        rule("EdgeshotEdgepointDown", f"edgeshot_controller_edgepoint_healthy{{{n}}} == 0",
             "2m", "critical", "edgepoint {{ $labels.edgepoint }} is unreachable: the global "
             "dispatcher routes around it"),
        rule("EdgeshotSLABreach",
             f"edgeshot_edge_response_latency_seconds{{{n}}}"
             f" > edgeshot_edge_sla_max_response_seconds{{{n}}}", "5m", "warning",
             "{{ $labels.app }} at {{ $labels.edgepoint }}: p{{ $labels.percentile }} "
             "{{ $value | humanizeDuration }}, above its SLA"),
        rule("EdgeshotBudget80",
             f"edgeshot_controller_budget_used_ratio{{{n}}} >= 0.8"
             f" and edgeshot_controller_budget_used_ratio{{{n}}} < 1", "0m", "warning",
             "{{ $labels.app }} of {{ $labels.owner }} has spent {{ $value | humanizePercentage }}"
             " of its monthly budget"),
        rule("EdgeshotBudget100", f"edgeshot_controller_budget_used_ratio{{{n}}} >= 1", "0m",
             "critical", "{{ $labels.app }} of {{ $labels.owner }} has spent its monthly "
             "budget: the cost ceiling holds its instances down"),
        rule("EdgeshotRestoreFailures",
             f'sum by (app, edgepoint) (increase(edgeshot_edge_restores_total{{{n},result!="ok"}}'
             "[10m])) > 0", "0m", "warning",
             "{{ $labels.app }} at {{ $labels.edgepoint }}: {{ $value }} failed restore(s) in "
             "10 minutes"),
        rule("EdgeshotUsageCollectionLag",
             f"edgeshot_controller_usage_lag_seconds{{{n}}} > 600"
             f" or edgeshot_controller_usage_failed_pulls{{{n}}} >= 3", "5m", "warning",
             "usage from {{ $labels.source }} is not being collected: bills and budgets "
             "fall behind"),
    ]}]}


# ------------------------------------------------------------------------------ dashboards


def _panel(pid: int, title: str, exprs: Mapping[str, str], x: int, y: int, *, unit: str = "short",
           kind: str = "timeseries", w: int = 12, h: int = 8) -> dict[str, Any]:
    return {
        "id": pid, "type": kind, "title": title,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (legend, expr) in enumerate(exprs.items())],
    }


def _dashboard(network: str, key: str, title: str, panels: list[dict[str, Any]],
               variables: list[dict[str, Any]]) -> dict[str, Any]:
    ds = {"name": "datasource", "type": "datasource", "query": "prometheus",
          "label": "Data source", "current": {}, "hide": 0}
    return {
        "uid": f"edgeshot-{network}-{key}"[:40], "title": f"edgeshot {network}: {title}",
        "tags": ["edgeshot", network], "timezone": "utc", "schemaVersion": 39, "version": 1,
        "editable": False, "refresh": "30s", "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [ds, *variables]}, "panels": panels,
    }


def _variable(name: str, query: str, label: str) -> dict[str, Any]:
    return {"name": name, "label": label, "type": "query",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "definition": query,
            "refresh": 2, "includeAll": False, "multi": False, "sort": 1, "hide": 0}


def dashboards(network: str) -> dict[str, dict[str, Any]]:
    """Grafana dashboards by key: the network (NOC), one edgepoint, one app."""
    n = f'network="{network}"'
    ep = f'{n}, edgepoint="$edgepoint"'
    app = f'{n}, app="$app"'
    net_panels = [
        _panel(1, "Edgepoints healthy", {"{{edgepoint}}":
               f"edgeshot_controller_edgepoint_healthy{{{n}}}"}, 0, 0, kind="stat"),
        _panel(2, "Edgepoint load", {"{{edgepoint}}":
               f"edgeshot_controller_edgepoint_load_ratio{{{n}}}"}, 12, 0, unit="percentunit"),
        _panel(3, "Services answering", {"{{job}} {{server}}":
               f'up{{job=~"edgeshot-{network}-.*"}}'}, 0, 8, kind="stat"),
        _panel(4, "Free slots per edgepoint", {"{{edgepoint}}":
               f'sum by (edgepoint) (edgeshot_agent_slots{{{n}, state="free"}})'}, 12, 8),
        _panel(5, "Routing tick", {"last tick": f"edgeshot_controller_tick_seconds{{{n}}}"},
               0, 16, unit="s"),
        _panel(6, "Usage collection lag", {"{{source}}":
               f"edgeshot_controller_usage_lag_seconds{{{n}}}"}, 12, 16, unit="s"),
        _panel(7, "Spend this month per owner", {"{{owner}} ({{currency}})":
               f"edgeshot_controller_spend{{{n}}}"}, 0, 24),
        _panel(8, "Instances wanted that no server can take", {"{{app}} at {{edgepoint}}":
               f"edgeshot_edge_at_capacity_instances{{{n}}}"}, 12, 24),
    ]
    ep_panels = [
        _panel(1, "Instances by state", {"{{app}} {{version}} {{state}}":
               f"sum by (app, version, state) (edgeshot_edge_instances{{{ep}}})"}, 0, 0),
        _panel(2, "Restores per second", {"{{app}} {{result}} ({{source}})":
               f"sum by (app, result, source) (rate(edgeshot_edge_restores_total{{{ep}}}[5m]))"},
               12, 0, unit="ops"),
        _panel(3, "Restore → routed, p95", {"{{app}}":
               "histogram_quantile(0.95, sum by (app, le) "
               f"(rate(edgeshot_edge_restore_seconds_bucket{{{ep}}}[5m])))"}, 0, 8, unit="s"),
        _panel(4, "Agents: restore → healthy, p95", {"{{server}} {{origin}}":
               "histogram_quantile(0.95, sum by (server, origin, le) "
               f"(rate(edgeshot_agent_restore_latency_seconds_bucket{{{ep}}}[5m])))"},
               12, 8, unit="s"),
        _panel(5, "Requests held by the activator", {"{{app}}":
               f"edgeshot_edge_activator_queued_requests{{{ep}}}"}, 0, 16),
        _panel(6, "Slots", {"{{server}} {{state}}": f"edgeshot_agent_slots{{{ep}}}"}, 12, 16),
        _panel(7, "Appshot store", {"{{server}} {{kind}}":
               f"sum by (server, kind) (edgeshot_agent_appshot_store_bytes{{{ep}}})"},
               0, 24, unit="bytes"),
        _panel(8, "Scaling decision time, p99", {"decision":
               "histogram_quantile(0.99, sum by (le) "
               f"(rate(edgeshot_edge_decision_seconds_bucket{{{ep}}}[5m])))"}, 12, 24, unit="s"),
        # the data path: HAProxy's own exporter, served on the edge's /metrics
        _panel(9, "Requests per second (HAProxy)", {"{{proxy}}":
               f"sum by (proxy) (rate(haproxy_backend_http_requests_total{{{ep}}}[5m]))"},
               0, 32, unit="reqps"),
        _panel(10, "5xx responses per second (HAProxy)", {"{{proxy}}":
               "sum by (proxy) (rate(haproxy_backend_http_responses_total"
               f'{{{ep}, code="5xx"}}[5m]))'}, 12, 32, unit="reqps"),
    ]
    app_panels = [
        _panel(1, "Response time against the SLA", {
            "p{{percentile}} at {{edgepoint}}": f"edgeshot_edge_response_latency_seconds{{{app}}}",
            "SLA at {{edgepoint}}": f"edgeshot_edge_sla_max_response_seconds{{{app}}}"},
            0, 0, unit="s"),
        _panel(2, "Instances by version", {"{{version}} {{state}}":
               f"sum by (version, state) (edgeshot_edge_instances{{{app}}})"}, 12, 0),
        _panel(3, "Traffic share per version", {"{{version}}":
               f"edgeshot_controller_version_weight_ratio{{{app}}}"}, 0, 8, unit="percentunit"),
        _panel(4, "Budget used this month", {"{{owner}}":
               f"edgeshot_controller_budget_used_ratio{{{app}}}"}, 12, 8, unit="percentunit"),
        _panel(5, "Cost ceiling (instances) per edgepoint", {"{{edgepoint}}":
               f"edgeshot_controller_cost_ceiling_instances{{{app}}}"}, 0, 16),
        _panel(6, "Failed restores", {"{{edgepoint}}":
               'sum by (edgepoint) (increase(edgeshot_edge_restores_total'
               f'{{{app}, result!="ok"}}[10m]))'}, 12, 16),
    ]
    return {
        "network": _dashboard(network, "network", "network", net_panels, []),
        "edgepoint": _dashboard(network, "edgepoint", "edgepoint $edgepoint", ep_panels, [
            _variable("edgepoint", f"label_values(edgeshot_edge_instances{{{n}}}, edgepoint)",
                      "Edgepoint")]),
        "app": _dashboard(network, "app", "app $app", app_panels, [
            _variable("app", f"label_values(edgeshot_edge_sla_max_response_seconds{{{n}}}, app)",
                      "App")]),
    }


def grafana_provisioning(network: str, dashboards_dir: str, prometheus_url: str,
                         datasource: str) -> dict[str, dict[str, Any]]:
    """Grafana's provisioning files: the Prometheus data source and the dashboards folder."""
    return {
        "datasources": {"apiVersion": 1, "datasources": [{
            "name": datasource, "type": "prometheus", "access": "proxy",
            "url": prometheus_url, "isDefault": False, "editable": False}]},
        "dashboards": {"apiVersion": 1, "providers": [{
            "name": f"edgeshot-{network}", "folder": "edgeshot", "type": "file",
            "disableDeletion": True, "allowUiUpdates": False,
            "options": {"path": dashboards_dir}}]},
    }


# ------------------------------------------------------------------------------ files


def monitoring_files(inv: Inventory, s: ScrapeSettings, *, prometheus_url: str =
                     "http://localhost:9090", grafana_dashboards_dir: str | None = None
                     ) -> dict[str, str]:
    """Every file, by path relative to the output directory, with its text."""
    net = inv.network
    dump = _yaml
    files: dict[str, str] = {
        f"prometheus/edgeshot-{net}.yml": dump(prometheus_config(net, s)),
        f"prometheus/{s.rules_dir}/edgeshot-{net}.rules.yml": dump(alert_rules(net)),
    }
    for job, groups in scrape_targets(inv, s.private).items():
        files[f"prometheus/{s.targets_dir}/{net}-{job}.json"] = json.dumps(groups, indent=1) + "\n"
    for key, board in dashboards(net).items():
        files[f"grafana/dashboards/edgeshot-{net}-{key}.json"] = json.dumps(board, indent=1) + "\n"
    prov = grafana_provisioning(net, grafana_dashboards_dir or
                                "/var/lib/grafana/dashboards/edgeshot", prometheus_url,
                                s.datasource)
    for kind, doc in prov.items():
        files[f"grafana/provisioning/{kind}/edgeshot-{net}.yml"] = dump(doc)
    return files


def _yaml(doc: Any) -> str:
    return "# written by `edgeshot monitoring`: rewrite it rather than edit it\n" + \
        yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=100)


def write_files(out: Path, files: Mapping[str, str]) -> list[Path]:
    """Write each file atomically (a temporary file renamed over it): a Prometheus
    re-reading its file_sd targets never sees half a file."""
    written = []
    for rel, text in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written
