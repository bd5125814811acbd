"""The dashboards' pure parts, table-tested: periods, merged latency, the view models'
filtering by owner and vendor, spend against billing, SVG charts, counter deltas; and
sessions (login, revocation) against a real store and token file."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from decimal import Decimal
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import make_mocked_request
from hdrh.histogram import HdrHistogram

from edgeshot.agent import auth
from edgeshot.control import billing
from edgeshot.control._store import Store
from edgeshot.control.dashboards import _auth, svg
from edgeshot.control.dashboards import views as V
from edgeshot.control.dashboards._collect import counters_from_metrics, deltas
from edgeshot.spec import Pricing

NOW = datetime(2026, 11, 27, 10, 42, 30, tzinfo=UTC).timestamp()


def hist(*values: int) -> str:
    h = HdrHistogram(1, 3_600_000, 2)
    for v in values:
        h.record_value(v)
    return h.encode().decode()


APPS = [V.AppInfo("shop", "acme", "webco", primary="1.0", sla_ms=100, percentile=95,
                  budget=Decimal("50"), currency="EUR"),
        V.AppInfo("blog", "globex", "webco", primary="2.0", sla_ms=300, budget=Decimal("20"))]


@pytest.mark.parametrize("view,n,step,label", [
    ("live", 30, 60, "10:13"), ("hour", 48, 3600, "25 11h"), ("day", 31, 86400, "Oct 28"),
    ("month", 12, None, "2025-12")])
def test_periods_cover_now_in_whole_buckets(view, n, step, label):
    p = V.period(view, NOW)
    assert len(p.buckets) == n
    assert p.start <= NOW < p.end
    assert p.bucket(NOW) == p.buckets[-1]
    assert p.bucket(p.start - 1) is None and p.bucket(p.end) is None
    assert p.label(p.buckets[0]) == label
    if step:
        assert all(b - a == step for a, b in zip(p.buckets, p.buckets[1:], strict=False))


def test_unknown_view_is_refused():
    with pytest.raises(ValueError):
        V.period("week", NOW)


def test_latency_merges_histograms_across_edgepoints_and_versions_not_origin():
    p = V.period("live", NOW)
    m0, m1 = p.buckets[-3], p.buckets[-2]
    rows = [V.LatencyRow("eu", m0, "shop", "1.0", 4, 1, hist(10, 20, 30, 40)),
            V.LatencyRow("us", m0, "shop", "1.1", 1, 0, hist(500)),
            V.LatencyRow("us", m1, "shop", "1.0", 2, 0, hist(60, 70)),
            V.LatencyRow("eu", m1, "shop", V.ORIGIN, 9, 9, hist(*[900] * 9))]
    ls = V.latency_series(rows, p, 95, sla_ms=100)
    assert ls["requests"] == 7 and ls["errors"] == 1
    # HDR histograms keep 2 significant digits: 500 reads back within 1 %
    assert ls["p50"] == 40 and ls["p_sla"] == pytest.approx(500, rel=0.01)
    assert ls["max"] == pytest.approx(500, rel=0.01)
    assert ls["within_sla"] == pytest.approx(6 / 7)
    assert ls["breached_buckets"] == 1
    by_t = {s["t"]: s for s in ls["series"]}
    assert by_t[m0]["requests"] == 5 and by_t[m0]["p_sla"] == pytest.approx(500, rel=0.01)
    assert by_t[m1]["requests"] == 2 and by_t[m1]["p50"] == 60
    assert by_t[p.buckets[0]]["p50"] is None


def test_customer_view_holds_only_the_owners_apps_whatever_it_is_given():
    p = V.period("live", NOW)
    m = p.buckets[-2]
    m_ = V.customer_view(
        owners={"acme"}, apps=APPS, p=p,
        latency=[V.LatencyRow("eu", m, "shop", "1.0", 3, 0, hist(5, 6, 7)),
                 V.LatencyRow("eu", m, "blog", "2.0", 8, 8, hist(1))],
        regions=[V.RegionRow("eu", m, "shop", "eu-central", 3),
                 V.RegionRow("eu", m, "blog", "ap-south", 8)],
        samples=[V.InstanceSample(m + 1, "eu", "shop", "*", 2),
                 V.InstanceSample(m + 2, "eu", "blog", "*", 5)],
        churn=[V.ChurnRow(m, "eu", "shop", "1.0", "restore", 2),
               V.ChurnRow(m, "eu", "blog", "2.0", "restore", 7)],
        edges=[V.EdgeNow("eu", "eu-central", True, apps={
            "shop": {"1.0": {"ready": 2, "requests": 3}},
            "blog": {"2.0": {"ready": 5, "requests": 8}}})],
        events=[{"at": m, "kind": "x", "app": "blog", "message": "globex secret"},
                {"at": m, "kind": "y", "app": "shop", "message": "ours"}])
    text = repr(m_)
    assert [a["name"] for a in m_["apps"]] == ["shop"]
    for other in ("blog", "globex", "ap-south"):
        assert other not in text
    (a,) = m_["apps"]
    assert a["latency"]["requests"] == 3
    assert a["regions"]["rows"] == [{"region": "eu-central", "requests": 3, "share": 1.0}]
    assert a["churn"]["restores"] == 2
    assert a["now"]["instances"] == {"eu": {"ready": 2, "starting": 0, "snapshotted": 0}}
    assert [e["message"] for e in m_["events"]] == ["ours"]


def test_spend_is_the_bill_of_the_usage_and_its_forecast():
    pricing = Pricing(cpu_second="0.001", memory_gb_second="0", network_gb="10")
    now = datetime(2026, 11, 16, 0, 0, tzinfo=UTC)  # half of November gone

    def u(day: int, app: str, cpu: str, owner: str = "acme") -> billing.Usage:
        t = datetime(2026, 11, day, 3, tzinfo=UTC)
        return billing.Usage(owner=owner, vendor="webco", app=app, start=t,
                             end=t.replace(hour=4), cpu_seconds=Decimal(cpu))

    daily = tuple((datetime(2026, 11, d, tzinfo=UTC).timestamp(),
                   tuple(x for x in (u(d, "shop", "1000"), u(d, "blog", "5000", "globex"))))
                  for d in range(1, 16))
    sp = V.SpendInput("2026-11", "UTC", pricing, daily, now)
    view = V.spend_view(APPS[0], sp)
    assert view["spent"] == "15.00" and view["forecast"] == "30.00"
    assert view["budget"] == "50.00" and view["state"] == "ok"
    assert view["daily"][0]["cumulative"] == pytest.approx(1.0)
    assert view["daily"][-1]["cumulative"] == pytest.approx(15.0)
    tight = V.AppInfo("shop", "acme", "webco", budget=Decimal("16"))
    assert V.spend_view(tight, sp)["state"] == "warning"
    assert V.spend_view(APPS[0], None) is None


def test_noc_view_totals_and_errors_per_edgepoint():
    p = V.period("live", NOW)
    m = p.buckets[-2]
    v = V.noc_view(
        p=p, edges=[V.EdgeNow("eu", "eu-central", True, load=0.5, slots_total=4, slots_free=2,
                              apps={"shop": {"1.0": {"ready": 2, "snapshotted": 1}}}),
                    V.EdgeNow("us", "us-east", False, error="unreachable")],
        agents=[V.AgentNow("eu-1", "eu", True, slots_total=4, slots_free=2),
                V.AgentNow("us-1", "us", False)],
        errors=[V.ErrorRow(m, "eu", "http-5xx", 3), V.ErrorRow(m, "eu", "connection", 1),
                V.ErrorRow(m, "eu", "stage-connection", 40),
                V.ErrorRow(p.start - 10, "eu", "http-5xx", 100)],
        latency=[V.LatencyRow("eu", m, "shop", "1.0", 10, 3, hist(1))],
        churn=[V.ChurnRow(m, "eu", "shop", "1.0", "snapshot", 1)])
    eu, us = v["edgepoints"]
    assert eu["haproxy_errors"] == {"connection": 1, "http-5xx": 3}
    assert eu["staging_errors"] == 40
    assert eu["logged"] == {"requests": 10, "errors": 3}
    assert eu["slots_used"] == 2 and eu["instances"]["snapshotted"] == 1
    assert eu["churn"]["snapshots"] == 1
    assert us["healthy"] is False and us["error"] == "unreachable"
    assert v["totals"] == {"edgepoints": 2, "healthy": 1, "agents": 2, "agents_healthy": 1,
                           "instances": 2, "slots_total": 4, "slots_used": 2}
    assert v["agents"][0]["slots_used"] == 2 and v["agents"][1]["slots_used"] is None


def test_isv_view_groups_apps_across_owners_of_the_vendor_only():
    p = V.period("live", NOW)
    m = p.buckets[-2]
    apps = [*APPS, V.AppInfo("solo", "acme", "other-isv")]
    v = V.isv_view(vendors={"webco"}, apps=apps, p=p,
                   regions=[V.RegionRow("eu", m, "shop", "eu-central", 4),
                            V.RegionRow("us", m, "blog", "us-east", 6),
                            V.RegionRow("us", m, "solo", "us-east", 99)])
    (vendor,) = v["by_vendor"]
    assert vendor["owners"] == ["acme", "globex"]
    assert {r["app"]: r["requests"] for r in vendor["apps"]} == {"blog": 6, "shop": 4}
    assert "solo" not in repr(v) and "other-isv" not in repr(v)
    assert V.isv_view(vendors={"nobody"}, apps=apps, p=p)["by_vendor"] == []


def test_strip_svg_leaves_the_figures():
    assert V.strip_svg({"a": 1, "svg": {"x": "<svg/>"}, "l": [{"svg": 1, "b": 2}]}) == \
        {"a": 1, "l": [{"b": 2}]}


def test_charts_escape_text_and_say_when_empty():
    out = svg.line_chart([svg.Series("<b>x</b>", [(0, 1.0), (1, None), (2, 3.0)])],
                         title='a "quote"', threshold=(2.0, "SLA"))
    assert "<b>" not in out and "&lt;b&gt;" in out and "&quot;quote&quot;" in out
    assert out.count("<circle") == 2  # two runs of one point (the gap splits them)
    assert 'class="limit"' in out
    assert "no data" in svg.line_chart([svg.Series("x", [(0, None)])])
    assert "nothing" in svg.bar_chart([], empty="nothing")
    assert "<script" not in out and "style=" not in out
    assert svg.nice_max(0.7) == 1 and svg.nice_max(130) == 200 and svg.nice_max(2.4) == 2.5


METRICS = """\
# TYPE edgeshot_edge_restores_total counter
edgeshot_edge_restores_total{app="shop",version="1.0",edgepoint="eu",owner="acme",result="ok",source="appshot"} 3.0
edgeshot_edge_restores_total{app="shop",version="1.0",edgepoint="eu",owner="acme",result="ok",source="snapshot"} 2.0
edgeshot_edge_restores_total{app="shop",version="1.0",edgepoint="eu",owner="acme",result="failed",source="appshot"} 1.0
# TYPE edgeshot_edge_suspends_total counter
edgeshot_edge_suspends_total{app="shop",version="1.0",edgepoint="eu",owner="acme",reason="idle",kept="true"} 4.0
edgeshot_edge_suspends_total{app="shop",version="1.0",edgepoint="eu",owner="acme",reason="idle",kept="false"} 1.0
# TYPE haproxy_frontend_http_responses_total counter
haproxy_frontend_http_responses_total{proxy="edgeshot.http",code="5xx"} 99
# TYPE haproxy_backend_http_responses_total counter
haproxy_backend_http_responses_total{proxy="shop",code="5xx"} 4
haproxy_backend_http_responses_total{proxy="blog",code="5xx"} 3
haproxy_backend_http_responses_total{proxy="shop",code="2xx"} 70
haproxy_backend_http_responses_total{proxy="shop.origin",code="5xx"} 50
haproxy_backend_http_responses_total{proxy="shop.stage",code="5xx"} 8
haproxy_backend_http_responses_total{proxy="edgeshot.unknown",code="5xx"} 9
# TYPE haproxy_backend_connection_errors_total counter
haproxy_backend_connection_errors_total{proxy="shop"} 2
haproxy_backend_connection_errors_total{proxy="blog"} 1
haproxy_backend_connection_errors_total{proxy="shop.stage"} 5
"""


def test_counters_from_an_edges_metrics_and_their_deltas():
    c = counters_from_metrics(METRICS)
    assert c == {"churn|shop|1.0|restore": 5.0, "churn|shop|1.0|restore-failed": 1.0,
                 "churn|shop|1.0|snapshot": 4.0, "churn|shop|1.0|stop": 1.0,
                 "error|http-5xx": 7.0, "error|connection": 3.0,
                 "error|stage-http-5xx": 8.0, "error|stage-connection": 5.0}
    assert deltas({}, c) == c  # first sight: everything since the edge started
    later = {**c, "churn|shop|1.0|restore": 6.0, "error|http-5xx": 2.0}
    # a counter that went down started again (an HAProxy reload): counted from zero
    assert deltas(c, later) == {"churn|shop|1.0|restore": 1.0, "error|http-5xx": 2.0}
    assert counters_from_metrics("not metrics {") == {}


# ------------------------------------------------------------------------------ sessions


@pytest.fixture
def fake_controller(tmp_path):
    from edgeshot.control.dashboards import _collect  # noqa: F401  (registers migrations)
    store = Store(tmp_path / "c.db")
    tokens_file = tmp_path / "tokens.toml"
    tok = {"acme": auth.issue_token(tokens_file, "owner-acme", ["owner:acme"]),
           "edge": auth.issue_token(tokens_file, "edge", [auth.CONTROLLER_EDGE])}
    c = SimpleNamespace(store=store, tokens=auth.TokenStore.from_file(tokens_file))
    yield c, tok, tokens_file
    store.close()


def _req(cookie: str | None = None, header: str | None = None):
    headers = {}
    if cookie:
        headers["Cookie"] = f"{_auth.COOKIE}={cookie}"
    if header:
        headers["Authorization"] = f"Bearer {header}"
    return make_mocked_request("GET", "/dash/customer", headers=headers)


def test_a_session_maps_to_its_token_and_dies_with_it(fake_controller):
    c, tok, tokens_file = fake_controller
    assert _auth.login(c, tok["edge"]) is None  # no dashboard scope
    assert _auth.login(c, "est1_nope") is None
    sid, p = _auth.login(c, tok["acme"])
    assert p.owners == {"acme"}
    # only hashes at rest: neither the cookie nor the token is in the store
    dump = "\n".join(str(tuple(r)) for r in c.store.query("SELECT * FROM dash_sessions"))
    assert sid not in dump and tok["acme"] not in dump
    assert _auth.principal(c, _req(cookie=sid)).name == "owner-acme"
    assert _auth.principal(c, _req(header=tok["acme"])).name == "owner-acme"
    assert _auth.principal(c, _req(cookie="forged")) is None
    # a header token wins over a cookie; a bad header is not rescued by a cookie
    assert _auth.principal(c, _req(cookie=sid, header="est1_bad")) is None
    # the token removed from the file: its sessions end
    records = [r for r in auth.read_token_file(tokens_file)[0] if r.name != "owner-acme"]
    tokens_file.write_text(auth.render_token_file(records))
    tokens_file.chmod(0o600)
    time.sleep(1.1)
    assert _auth.principal(c, _req(cookie=sid)) is None
    # expired sessions are not honoured either
    with c.store.tx() as db:
        db.execute("UPDATE dash_sessions SET expires = 0")
    assert _auth.from_cookie(c, _req(cookie=sid)) is None
