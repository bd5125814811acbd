"""`edgeshot monitoring`: scrape jobs, alert rules and dashboards, checked by Prometheus's
own promtool (syntax, and the rules' behaviour on series fed to them)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from edgeshot.cli import app
from edgeshot.configure import InventoryError, inventory_from_plan
from edgeshot.configure.monitoring import (
    ScrapeSettings,
    alert_rules,
    dashboards,
    monitoring_files,
    prometheus_config,
    scrape_targets,
)
from edgeshot.plan import compile_plan
from edgeshot.spec import load

ROOT = Path(__file__).resolve().parents[2]
SHOP_LOCAL = ROOT / "examples/shop/policy_local.py"
SHOP_HETZNER = ROOT / "examples/shop/policy_hetzner.py"
runner = CliRunner()


def _plan(path: Path = SHOP_LOCAL):
    return compile_plan(load(path))


def test_targets_come_from_the_inventory_one_group_per_server() -> None:
    plan = _plan()
    inv = inventory_from_plan(plan)
    t = scrape_targets(inv)
    assert sorted(t) == ["agent", "controller", "edge"]
    agents = {g["labels"]["server"]: g for g in t["agent"]}
    assert set(agents) == {s.name for s in plan.servers if "agent" in s.roles}
    for s in plan.servers:
        g = agents[s.name]
        assert g["targets"] == [f"{s.address}:{s.ports['agent']}"]
        assert g["labels"] == {"network": plan.network, "server": s.name,
                               "edgepoint": s.edgepoint, "region": s.region}
    assert [g["targets"] for g in t["controller"]] == [
        [f"{plan.controller.address}:{plan.controller.ports['controller']}"]]
    assert {g["labels"]["edgepoint"] for g in t["edge"]} == {e.name for e in plan.edgepoints}


def test_private_addresses_ipv6_brackets_and_a_server_without_an_address() -> None:
    plan = _plan(SHOP_HETZNER)
    names = [s.name for s in (plan.controller, *plan.servers)]
    public = {n: f"2001:db8::{i + 1}" for i, n in enumerate(names)}
    private = {n: f"10.0.0.{i + 1}" for i, n in enumerate(names)}
    inv = inventory_from_plan(plan, public, private_addresses=private)
    assert scrape_targets(inv)["controller"][0]["targets"][0].startswith("[2001:db8::1]:")
    assert scrape_targets(inv, private=True)["controller"][0]["targets"][0].startswith(
        "10.0.0.1:")
    with pytest.raises(InventoryError, match="has no address yet"):
        scrape_targets(inventory_from_plan(plan))  # a cloud plan knows no addresses


@pytest.mark.parametrize(("ca", "scheme"), [(None, "http"), ("/etc/edgeshot/ca.pem", "https")])
def test_every_job_has_its_token_and_tls(ca: str | None, scheme: str) -> None:
    cfg = prometheus_config("net", ScrapeSettings(token_file="/t", ca_file=ca))
    assert [j["job_name"] for j in cfg["scrape_configs"]] == [
        "edgeshot-net-agent", "edgeshot-net-edge", "edgeshot-net-controller"]
    for job in cfg["scrape_configs"]:
        assert job["scheme"] == scheme
        assert job["authorization"] == {"type": "Bearer", "credentials_file": "/t"}
        assert ("tls_config" in job) == (ca is not None)
        if ca:
            assert job["tls_config"] == {"ca_file": ca, "insecure_skip_verify": False}


def test_no_secret_in_any_file(tmp_path: Path) -> None:
    """The token is named by its file; no file holds a token's text."""
    files = monitoring_files(inventory_from_plan(_plan()), ScrapeSettings(token_file="/t"))
    assert not any("est1_" in text for text in files.values())


def _written(tmp_path: Path, token: Path) -> dict:
    token.write_text("est1_" + "x" * 43 + "\n")
    res = runner.invoke(app, ["monitoring", str(SHOP_LOCAL), "--out", str(tmp_path / "mon"),
                              "--token-file", str(token), "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_the_command_writes_every_file_and_says_what_in_json(tmp_path: Path) -> None:
    doc = _written(tmp_path, tmp_path / "token")
    assert doc["network"] == "local" and doc["targets"] == {"agent": 3, "edge": 3,
                                                           "controller": 1}
    names = sorted(Path(p).relative_to(tmp_path / "mon").as_posix() for p in doc["files"])
    assert names == [
        "grafana/dashboards/edgeshot-local-app.json",
        "grafana/dashboards/edgeshot-local-edgepoint.json",
        "grafana/dashboards/edgeshot-local-network.json",
        "grafana/provisioning/dashboards/edgeshot-local.yml",
        "grafana/provisioning/datasources/edgeshot-local.yml",
        "prometheus/edgeshot-local.yml",
        "prometheus/rules/edgeshot-local.rules.yml",
        "prometheus/targets/local-agent.json",
        "prometheus/targets/local-controller.json",
        "prometheus/targets/local-edge.json",
    ]
    prov = yaml.safe_load((tmp_path / "mon/grafana/provisioning/dashboards/edgeshot-local.yml")
                          .read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/edgeshot"


def test_a_cloud_network_needs_its_inventory(tmp_path: Path) -> None:
    res = runner.invoke(app, ["monitoring", str(SHOP_HETZNER), "--out", str(tmp_path)])
    assert res.exit_code == 1
    text = " ".join(res.output.split())
    assert "has no address yet" in text and "give --inventory" in text
    assert not list(tmp_path.iterdir())  # nothing half-written
    other = tmp_path / "inv.json"
    other.write_text(json.dumps({"format": 1, "network": "elsewhere"}))
    res = runner.invoke(app, ["monitoring", str(SHOP_HETZNER), "-i", str(other)])
    assert res.exit_code == 1
    assert "the inventory of network elsewhere, not " in " ".join(res.output.split())


@pytest.mark.promtool
def test_promtool_accepts_the_configuration_and_the_rules(tmp_path: Path) -> None:
    _written(tmp_path, tmp_path / "token")
    prom = tmp_path / "mon" / "prometheus"
    for argv in (["promtool", "check", "config", str(prom / "edgeshot-local.yml")],
                 ["promtool", "check", "rules", str(prom / "rules/edgeshot-local.rules.yml")]):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
    rules = yaml.safe_load((prom / "rules/edgeshot-local.rules.yml").read_text())
    assert {r["alert"] for r in rules["groups"][0]["rules"]} == {
        "EdgeshotServiceDown", "EdgeshotEdgepointDown", "EdgeshotSLABreach",
        "EdgeshotBudget80", "EdgeshotBudget100", "EdgeshotRestoreFailures",
        "EdgeshotUsageCollectionLag"}


# Series fed to the rules and the alerts expected, as `promtool test rules` reads them.
N = 'network="lab"'
SERIES = [
    (f'up{{job="edgeshot-lab-agent", server="ep1-1", {N}}}', "1 1 0 0 0 0 0 0"),
    (f'up{{job="edgeshot-lab-edge", server="ep1-1", {N}}}', "1 1 1 1 1 1 1 1"),
    ('up{job="other", server="x"}', "0 0 0 0 0 0 0 0"),
    (f'edgeshot_controller_edgepoint_healthy{{edgepoint="ep1", {N}}}', "1 0 0 0 0 0 0 0"),
    (f'edgeshot_controller_edgepoint_healthy{{edgepoint="ep2", {N}}}', "1 1 1 1 1 1 1 1"),
    (f'edgeshot_edge_response_latency_seconds{{app="shop", edgepoint="ep1", owner="acme", '
     f'percentile="95", {N}}}', "0.1 0.3 0.3 0.3 0.3 0.3 0.3 0.3"),
    (f'edgeshot_edge_sla_max_response_seconds{{app="shop", edgepoint="ep1", owner="acme", '
     f'percentile="95", {N}}}', "0.2 0.2 0.2 0.2 0.2 0.2 0.2 0.2"),
    (f'edgeshot_edge_response_latency_seconds{{app="blog", edgepoint="ep1", owner="acme", '
     f'percentile="95", {N}}}', "0.1 0.1 0.1 0.1 0.1 0.1 0.1 0.1"),
    (f'edgeshot_edge_sla_max_response_seconds{{app="blog", edgepoint="ep1", owner="acme", '
     f'percentile="95", {N}}}', "0.2 0.2 0.2 0.2 0.2 0.2 0.2 0.2"),
    (f'edgeshot_controller_budget_used_ratio{{app="shop", owner="acme", {N}}}',
     "0.5 0.85 0.85 0.85 1.2 1.2 1.2 1.2"),
    (f'edgeshot_edge_restores_total{{app="shop", version="1", edgepoint="ep1", owner="acme", '
     f'result="failed", source="appshot", {N}}}', "0 0 0 0 0 0 1 1"),
    (f'edgeshot_edge_restores_total{{app="shop", version="1", edgepoint="ep1", owner="acme", '
     f'result="ok", source="appshot", {N}}}', "0 5 10 15 20 25 30 35"),
    (f'edgeshot_controller_usage_lag_seconds{{source="agent:ep1:ep1-1", kind="agent", '
     f'edgepoint="ep1", {N}}}', "10 700 700 700 700 700 700 700"),
    (f'edgeshot_controller_usage_failed_pulls{{source="agent:ep1:ep1-1", kind="agent", '
     f'edgepoint="ep1", {N}}}', "0 0 0 0 0 0 0 0"),
]
# (time, alert, the labels and summary of each alert expected firing then)
SHOP = {"app": "shop", "owner": "acme", "network": "lab"}
EXPECT = [
    ("1m", "EdgeshotServiceDown", []),  # down, but not for 2 minutes yet
    ("5m", "EdgeshotServiceDown", [(
        {"job": "edgeshot-lab-agent", "server": "ep1-1", "network": "lab",
         "severity": "critical"}, "edgeshot-lab-agent on ep1-1 does not answer /metrics")]),
    ("2m", "EdgeshotEdgepointDown", []),
    ("4m", "EdgeshotEdgepointDown", [(
        {"edgepoint": "ep1", "network": "lab", "severity": "critical"},
        "edgepoint ep1 is unreachable: the global dispatcher routes around it")]),
    ("3m", "EdgeshotSLABreach", []),  # above the SLA, but not for 5 minutes yet
    ("7m", "EdgeshotSLABreach", [(
        {**SHOP, "edgepoint": "ep1", "percentile": "95", "severity": "warning"},
        "shop at ep1: p95 300ms, above its SLA")]),
    ("0m", "EdgeshotBudget80", []),
    ("2m", "EdgeshotBudget80", [({**SHOP, "severity": "warning"},
                                 "shop of acme has spent 85% of its monthly budget")]),
    ("2m", "EdgeshotBudget100", []),
    ("5m", "EdgeshotBudget80", []),  # past 100 %: the critical one instead
    ("5m", "EdgeshotBudget100", [(
        {**SHOP, "severity": "critical"},
        "shop of acme has spent its monthly budget: the cost ceiling holds its instances down")]),
    ("5m", "EdgeshotRestoreFailures", []),
    ("7m", "EdgeshotRestoreFailures", [(
        {"app": "shop", "edgepoint": "ep1", "network": "lab", "severity": "warning"},
        "shop at ep1: 1 failed restore(s) in 10 minutes")]),
    ("4m", "EdgeshotUsageCollectionLag", []),
    ("7m", "EdgeshotUsageCollectionLag", [(
        {"source": "agent:ep1:ep1-1", "kind": "agent", "edgepoint": "ep1", "network": "lab",
         "severity": "warning"},
        "usage from agent:ep1:ep1-1 is not being collected: bills and budgets fall behind")]),
]


@pytest.mark.promtool
def test_the_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(alert_rules("lab"), sort_keys=False))
    cases = [{"eval_time": t, "alertname": name,
              "exp_alerts": [{"exp_labels": labels, "exp_annotations": {"summary": summary}}
                             for labels, summary in fired]}
             for t, name, fired in EXPECT]
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in SERIES],
        "alert_rule_test": cases}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    res = subprocess.run(["promtool", "test", "rules", "tests.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    # and the test can fail: an alert expected where none fires is reported
    cases[0]["exp_alerts"] = [{"exp_labels": {"job": "nope"}, "exp_annotations": {}}]
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    res = subprocess.run(["promtool", "test", "rules", "tests.yml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0


def test_every_dashboard_panel_queries_this_network_only() -> None:
    for key, board in dashboards("lab").items():
        assert board["uid"] == f"edgeshot-lab-{key}"
        exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
        assert exprs and all('network="lab"' in e or 'job=~"edgeshot-lab-' in e for e in exprs)
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
