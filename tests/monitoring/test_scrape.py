"""A real Prometheus scrapes a real local network with what `edgeshot monitoring` wrote.

One local network (agents, edge processes with HAProxy, the controller; the hello app),
every service logging JSON lines; Debian's Prometheus server started on loopback with the
generated configuration (file_sd targets, the bearer token file, the alert rules). Then:
every target is up with the read-only `metrics` token, which opens nothing else; every
series the dashboards and alerts name is one the services export; every dashboard query
evaluates; the rules load; and the services' logs are JSON, one object a line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from _netkit import free_ports, running
from control.netfix import write_policy
from edgeshot.cli import app
from edgeshot.configure.monitoring import alert_rules, dashboards
from edgeshot.control._config import ControllerConfig
from edgeshot.control._localnet import LocalNetwork

pytestmark = [pytest.mark.haproxy, pytest.mark.root, pytest.mark.promtool,
              pytest.mark.timeout(600)]

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count",
                                                             "_created"),
            "summary": ("_sum", "_count", "_created"), "info": ("_info",), "gauge": ("",),
            "unknown": ("",)}
NAME = re.compile(r"\b((?:edgeshot|haproxy)_[a-z0-9_]+)")
TEXT_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING|ERROR) ")


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("scrape")
    policy = write_policy(d)
    json_logs = {"log_format": "json"}
    n = LocalNetwork.create(policy, d / "state", agent_options=json_logs,
                            edge_options=json_logs)
    ctl = n.state_dir / "controller.toml"
    ctl.write_text(ControllerConfig.load(ctl).model_copy(update=json_logs).to_toml())
    with running(n):
        yield n



def _get(url: str, token: str | None = None, timeout: float = 10) -> tuple[int, str]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token
                                 else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _urls(n: LocalNetwork) -> dict[str, list[str]]:
    m = n.manifest
    return {"agent": [a["url"] for a in m.agents.values()],
            "edge": [e["url"] for e in m.edges.values()],
            "controller": [m.controller_url]}


def test_the_metrics_token_reads_metrics_and_nothing_else(net: LocalNetwork) -> None:
    token = net.token("metrics")
    for kind, urls in _urls(net).items():
        for url in urls:
            assert _get(url + "/metrics", token)[0] == 200, (kind, url)
            assert _get(url + "/metrics")[0] == 401, (kind, url)
            other = "/v1/status" if kind == "controller" else "/v1/health"
            assert _get(url + other, token)[0] == 403, (kind, url, other)
            assert _get(url + other, net.token())[0] == 200, (kind, url, other)


def _exported(net: LocalNetwork) -> dict[str, str]:
    """Every sample name the services export, with its family's type."""
    names: dict[str, str] = {}
    for urls in _urls(net).values():
        for url in urls:
            status, text = _get(url + "/metrics", net.token("metrics"))
            assert status == 200
            for fam in text_string_to_metric_families(text):
                for suffix in SUFFIXES.get(fam.type, ("",)):
                    names[fam.name + suffix] = fam.type
    return names


def test_dashboards_and_alerts_name_only_series_the_services_export(net: LocalNetwork) -> None:
    exported = _exported(net)
    plan = net.plan()
    exprs = [t["expr"] for b in dashboards(plan.network).values() for p in b["panels"]
             for t in p["targets"]]
    exprs += [r["expr"] for g in alert_rules(plan.network)["groups"] for r in g["rules"]]
    named = {m for e in exprs for m in NAME.findall(e)}
    assert len(named) >= 15
    assert named <= set(exported), sorted(named - set(exported))
    # the naming convention: no custom *_up, no currency in a name
    ours = [n for n in exported if n.startswith("edgeshot_")]
    assert not [n for n in ours if n.endswith("_up")]
    assert not [n for n in ours if re.search(r"_(eur|usd|gbp)$", n)]


def test_a_real_prometheus_scrapes_the_network_with_the_generated_files(
        net: LocalNetwork, tmp_path: Path) -> None:
    plan = net.plan()
    out = tmp_path / "mon"
    token_file = net.manifest.tokens["metrics"]
    res = CliRunner().invoke(app, ["monitoring", net.manifest.policy, "--out", str(out),
                                   "--token-file", token_file, "--interval", "1",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    # a prometheus.yml as a user would have it: its own global section, our jobs merged in
    fragment = yaml.safe_load((out / "prometheus" / f"edgeshot-{plan.network}.yml").read_text())
    config = out / "prometheus" / "prometheus.yml"
    config.write_text(yaml.safe_dump({"global": {"evaluation_interval": "1s"}, **fragment}))
    port = free_ports(1)[0]
    prom = subprocess.Popen(
        [shutil.which("prometheus") or "prometheus", f"--config.file={config}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prom.log", "w"))
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(expr: str) -> dict:
        status, body = _get(f"{api}/query?" + urllib.parse.urlencode({"query": expr}))
        assert status == 200, (expr, body)
        return json.loads(body)["data"]

    try:
        want = sum(len(u) for u in _urls(net).values())
        deadline = time.monotonic() + 60
        targets: list = []
        while time.monotonic() < deadline:
            assert prom.poll() is None, (tmp_path / "prom.log").read_text()
            try:
                status, body = _get(f"{api}/targets", timeout=5)
            except urllib.error.URLError:  # not listening yet
                status, body = 0, ""
            if status == 200:
                targets = json.loads(body)["data"]["activeTargets"]
                if len(targets) == want and all(t["health"] == "up" for t in targets):
                    break
            time.sleep(0.5)
        assert len(targets) == want and all(t["health"] == "up" for t in targets), targets
        scraped = {t["labels"]["job"].rsplit("-", 1)[-1] + " " + t["scrapeUrl"]
                   for t in targets}
        assert scraped == {f"{kind} {u}/metrics" for kind, urls in _urls(net).items()
                           for u in urls}
        # the rules loaded, and evaluate without error
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status, body = _get(f"{api}/rules")
            rules = [r for g in json.loads(body)["data"]["groups"] for r in g["rules"]]
            if rules and all(r["health"] != "unknown" for r in rules):
                break
            time.sleep(0.5)
        assert len(rules) == 7 and all(r["health"] == "ok" for r in rules), rules
        assert not [r["name"] for r in rules if r["state"] != "inactive"]  # all is well
        # users come to the first edgepoint: an instance is restored there and serves
        app_name, ep = plan.apps[0].name, plan.edgepoints[0]
        for _ in range(5):
            req = urllib.request.Request(net.manifest.entry_url + "/", headers={
                "Host": "hello.test", "X-Edgeshot-Region": ep.region})
            with urllib.request.urlopen(req, timeout=60) as r:
                assert r.status == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not query(
                f'edgeshot_edge_response_latency_seconds{{network="{plan.network}"}}')["result"]:
            time.sleep(0.5)
        time.sleep(3)  # a few more scrapes: rates need two samples
        # every dashboard query evaluates on the real series; those about what just
        # happened have data (spend waits for the metering's hourly pass, failures for
        # failures, capacity for a shortage)
        empty = set()
        for board in dashboards(plan.network).values():
            for panel in board["panels"]:
                for t in panel["targets"]:
                    expr = t["expr"].replace("$app", app_name).replace("$edgepoint", ep.name)
                    if not query(expr)["result"]:
                        empty.add(panel["title"])
        assert empty <= {"Spend this month per owner", "Instances wanted that no server can take",
                         "Failed restores"}, empty
        # the series carry the target's labels and the services' own
        result = query(f'edgeshot_edge_sla_max_response_seconds{{network="{plan.network}"}}')
        assert {r["metric"]["edgepoint"] for r in result["result"]} == {
            e.name for e in plan.edgepoints}
        assert all(r["metric"]["app"] == app_name and float(r["value"][1]) == 0.2
                   for r in result["result"])
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()


def test_every_service_logs_json_lines(net: LocalNetwork) -> None:
    seen: dict[str, int] = {}
    for proc in net.manifest.processes:
        if proc.kind not in ("agent", "edge", "controller") or not proc.log:
            continue
        for line in Path(proc.log).read_text(errors="replace").splitlines():
            assert not TEXT_LOG.match(line), (proc.name, line)
            if line.startswith("{"):
                doc = json.loads(line)
                assert {"time", "level", "logger", "message"} <= set(doc), line
                assert doc["service"] == proc.kind
                seen[proc.kind] = seen.get(proc.kind, 0) + 1
    assert set(seen) == {"agent", "edge", "controller"}, seen


def test_status_and_deploy_print_json_for_scripts(net: LocalNetwork) -> None:
    """On the same network: `status` and `deploy` with --format json (progress on stderr,
    one document on stdout); the deploy follows the capture and the uploads as they happen."""
    runner = CliRunner()
    state = str(net.state_dir)
    res = runner.invoke(app, ["status", "--state", state, "--format", "json"])
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout)
    assert st["network"] == net.plan().network and [a["name"] for a in st["apps"]] == ["hello"]
    res = runner.invoke(app, ["deploy", net.manifest.policy, "--version", "2.0", "--canary",
                              "50%", "--no-wait", "--state", state, "--format", "json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["app"] == "hello" and doc["deployment"]["to_version"] == "2.0"
    assert doc["deployment"]["kind"] == "canary"
    kinds = [e["kind"] for e in doc["events"]]
    assert "distributed" in kinds, kinds  # the capture and uploads, followed while running
    assert all(e["app"] == "hello" for e in doc["events"])
