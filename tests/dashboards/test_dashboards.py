"""The three dashboards in a real headless browser (Debian's chromium), against a running
local network after traffic.

Two owners' apps on two edgepoints (eu, us): ``acme-web`` (owner acme) and
``globex-web`` (owner globex, idle after 4 s with a warm pool of one: an instance is
snapshotted during the test), one vendor (``webco``) for both. The test sends the traffic itself and keeps every
answer; the figures each page shows are checked against what the test computes
independently: its own requests and answers, the raw usage records (pulled from every
agent and edge process, billed with ``billing.bill``), and the agents' own state
(capacity, instances, restore and snapshot counters) — never from the API the pages use.
Owner A's session and token never show or fetch owner B's data; every page loads
nothing from beyond the controller; screenshots are saved under the test's tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from _netkit import as_dispatcher
from edgeshot.agent import auth
from edgeshot.control import billing
from edgeshot.control._localnet import LocalNetwork
from edgeshot.spec import Pricing

from .netkit import (
    AppDef,
    Browser,
    Sent,
    agents_state,
    bill_of,
    number,
    percentile,
    raw_usage,
    send,
    tune_controller,
    until_routable,
    write_policy,
)

pytestmark = [pytest.mark.browser, pytest.mark.haproxy, pytest.mark.timeout(900)]

ACME = AppDef("acme-web", "acme", "webco", idle_s=300, service_ms=30)
GLOBEX = AppDef("globex-web", "globex", "webco", idle_s=4, warm_pool=1, service_ms=30)
FAILS_EU = 6  # acme-web /fail at eu: 500s the dashboards must count as errors


def _http(url: str, token: str | None = None, *, data: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def _json(url: str, token: str, method: str = "GET") -> dict:
    status, body, _ = _http(url, token, data=b"" if method == "POST" else None)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def _wait(what: str, fn, timeout: float = 150.0, every: float = 1.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class World:
    def __init__(self, net: LocalNetwork, sent: Sent, tmp: Path) -> None:
        self.net = net
        self.sent = sent
        self.tmp = tmp
        self.base = net.manifest.controller_url
        self.op = net.token("operator")
        self.acme = net.token("owner-acme")
        self.globex = net.token("owner-globex")
        self.vendor = net.token("vendor-webco")
        self.pricing = Pricing.model_validate(net.plan().pricing)
        self._browser: Browser | None = None

    @property
    def browser(self) -> Browser:
        if self._browser is None:
            self._browser = Browser()
        return self._browser

    def api(self, page: str, token: str, **query: str) -> dict:
        q = urllib.parse.urlencode({"view": "live", **query})
        return _json(f"{self.base}/dash/api/{page}?{q}", token)

    def app_view(self, name: str, token: str | None = None) -> dict:
        m = self.api("customer", token or self.op)
        return next(a for a in m["apps"] if a["name"] == name)

    def shot(self, name: str) -> Path:
        return self.browser.screenshot(self.tmp / f"{name}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("dash")
    shots = tmp_path_factory.mktemp("screenshots")
    net = LocalNetwork.create(write_policy(d, [ACME, GLOBEX]), d / "state", tick_s=0.5,
                              edge_options={"usage_interval_s": 1.0, "stable_window_s": 10.0,
                                            "scale_down_delay_s": 2.0, "tick_s": 0.25})
    tune_controller(net.state_dir, interval_s=1.0, budget_interval_s=2.0)
    w = None
    try:
        net.start(timeout=90)
        w = World(net, Sent(headers=as_dispatcher(net)), shots)
        _wait("both apps serving", lambda: all(
            a["primary"] for a in _json(f"{w.base}/v1/status", w.op)["apps"]), timeout=240)
        _wait("every edge has its placements", lambda: all(
            len(e.get("apps", [])) == 2
            for e in w.api("noc", w.op)["edgepoints"]), timeout=60)
        edges = net.manifest.edges

        async def traffic() -> None:
            eu, us = edges["eu"]["public_url"], edges["us"]["public_url"]
            await asyncio.gather(
                until_routable(w.sent, eu, "eu", ACME, "eu-central"),
                until_routable(w.sent, us, "us", ACME, "us-east"),
                until_routable(w.sent, us, "us", GLOBEX, "us-east"))
            await asyncio.gather(
                send(w.sent, eu, "eu", ACME, "eu-central", 24),
                send(w.sent, us, "us", ACME, "us-east", 16),
                send(w.sent, us, "us", GLOBEX, "us-east", 20),
                send(w.sent, us, "us", GLOBEX, "us-west", 8))
            await send(w.sent, eu, "eu", ACME, "eu-central", FAILS_EU, path="/fail")

        asyncio.run(traffic())
        assert w.sent.status(5, "acme-web") == FAILS_EU
        assert w.sent.requests() == w.sent.status(2) + FAILS_EU, w.sent.counts
        # the edges flush each minute when it ends; the collector pulls them
        for app in (ACME, GLOBEX):
            _wait(f"{app.name}'s requests in its history", lambda app=app: (
                w.app_view(app.name)["latency"]["requests"] == w.sent.requests(app.name)),
                timeout=150)
        # globex-web idles: its instances are snapshotted
        _wait("globex-web snapshotted", lambda: sum(
            s["snapshotted"]["globex-web"] for s in asyncio.run(agents_state(net)).values()
        ) >= 1 and w.app_view("globex-web")["churn"]["snapshots"] >= 1, timeout=60)
        yield w
    finally:
        if w is not None and w._browser is not None:
            w._browser.quit()
        net.stop()
        left = net.leftovers()
        net.remove()
        assert left == []


def _settled(w: World, check, what: str, timeout: float = 60.0):
    """Agents' state and the pages agree once the collector has run after the last change:
    check until they do (the figures must then be exactly equal)."""
    return _wait(what, check, timeout=timeout, every=1.0)


# ------------------------------------------------------------------------------ login


def test_login_form_sets_a_strict_httponly_cookie_and_never_puts_the_token_in_a_url_or_log(world):
    w, b = world, world.browser
    b.fresh()
    url = b.login(w.base, w.acme)
    assert url.endswith("/dash/customer")
    assert w.acme not in url
    cookies = {c["name"]: c for c in b.driver.get_cookies()}
    c = cookies["edgeshot_dash"]
    assert c["httpOnly"] is True and c["sameSite"] == "Strict" and c["path"] == "/dash"
    assert w.acme not in c["value"]
    # scripts cannot read it
    assert "edgeshot_dash" not in b.driver.execute_script("return document.cookie")
    # the form posts (a GET with the token in the query is not how it logs in)
    assert b.driver.execute_script(
        "return document.location.search") in ("", "?view=live")
    # no token in any log of the network
    for log in (w.net.state_dir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        for tok in (w.acme, w.globex, w.vendor, w.op):
            assert tok not in text, f"a token in {log.name}"
    # a wrong token: refused, no cookie
    b.fresh()
    b.login(w.base, "est1_" + "x" * 43)
    assert "unknown token" in b.driver.page_source
    assert not b.driver.get_cookies()


# ------------------------------------------------------------------------------ customer


def test_customer_page_shows_the_owners_apps_as_the_raw_sources_have_them(world):
    w, b = world, world.browser
    b.fresh()
    b.login(w.base, w.acme)
    sent = w.sent
    f = b.figures()
    app = "acme-web"
    # requests and errors: what the test sent and got back
    assert number(f[f"{app}:requests"]) == sent.requests(app) == 48
    assert number(f[f"{app}:errors"]) == sent.status(5, app) == FAILS_EU
    # users by region: the test's own counts per region
    assert number(f[f"{app}:region:eu-central"]) == sent.requests(app, region="eu-central")
    assert number(f[f"{app}:region:us-east"]) == sent.requests(app, region="us-east")
    assert not any(k.startswith(f"{app}:region:us-west") for k in f)  # globex's region
    # response time: HAProxy's Ta of each request is within what the client measured of
    # it (most requests are GET / of 30 ms; the rest, /fail and a probe, are quicker)
    p50 = number(f[f"{app}:p50"])
    client = sent.all_ms[app]
    assert len(client) == sent.requests(app)
    assert ACME.service_ms - 1 <= p50 <= percentile(client, 50) + 1, (p50, sorted(client))
    p95 = number(f[f"{app}:p_sla"])
    assert ACME.service_ms - 1 <= p95 <= percentile(client, 95) * 1.01 + 1
    within = number(f[f"{app}:within_sla"]) / 100
    client_within = sum(ms <= ACME.sla_ms for ms in client) / len(client)
    assert within >= client_within - 0.0001  # the edge sees no more than the client does

    # instances now, per edgepoint: the agents' running instances of the app
    def instances_agree():
        st = asyncio.run(agents_state(w.net))
        b.driver.refresh()
        per_ep = {}
        for s in st.values():
            per_ep[s["edgepoint"]] = per_ep.get(s["edgepoint"], 0) + s["running"][app]
        shown = {ep: int(number(b.figure(f"{app}:ready:{ep}"))) for ep in ("eu", "us")}
        return shown == per_ep and sum(per_ep.values()) >= 2 and (shown, per_ep)
    _settled(w, instances_agree, "instances per edgepoint = the agents' running instances")

    # restores: the agents' own counters for the app
    def restores_agree():
        st = asyncio.run(agents_state(w.net))
        b.driver.refresh()
        agents = sum(s["restores"].get(app, 0) for s in st.values())
        shown = number(b.figure(f"{app}:restores"))
        return shown == agents and agents >= 2 and (shown, agents)
    _settled(w, restores_agree, "restores = the agents' restore counters")

    # spend: billing.bill over the raw records up to the cursors metering stored
    def spend_agrees():
        before = {s["source"]: s["cursor"] for s in
                  _json(f"{w.base}/v1/usage/sources", w.op)["sources"]}
        b.driver.refresh()
        shown = Decimal(b.figure(f"{app}:spent"))
        forecast = Decimal(b.figure(f"{app}:forecast"))
        after = {s["source"]: s["cursor"] for s in
                 _json(f"{w.base}/v1/usage/sources", w.op)["sources"]}
        if before != after:
            return False
        month = datetime.now(UTC).strftime("%Y-%m")
        raw = bill_of(asyncio.run(raw_usage(w.net)), w.pricing, month, cursors=before)
        expect = next((t.amount for t in raw.apps if t.key == f"acme/{app}"), Decimal(0))
        fc = billing.forecast(expect, datetime.now(UTC), month)
        ok = abs(shown - expect) <= Decimal("0.01") and abs(forecast - fc) <= Decimal("0.02")
        return ok and expect > Decimal("0.10") and (shown, expect, forecast, fc)
    _json(f"{w.base}/v1/usage/collect", w.op, method="POST")
    _settled(w, spend_agrees, "spend = the bill of the raw usage records")
    assert Decimal(b.figure(f"{app}:budget")) == Decimal("100.00")
    w.shot("customer-acme")


def test_owner_a_never_sees_nor_fetches_owner_b(world):
    w, b = world, world.browser
    b.fresh()
    b.login(w.base, w.acme)
    for view in ("live", "hour", "day", "month"):
        b.driver.get(f"{w.base}/dash/customer?view={view}")
        html = b.driver.page_source
        assert "acme-web" in html
        for secret in ("globex", "us-west"):
            assert secret not in html, (view, secret)
    # asking for B's page with A's session: not found; the other dashboards: not allowed
    b.driver.get(f"{w.base}/dash/customer?owner=globex")
    assert "globex-web" not in b.driver.page_source
    for path in ("/dash/noc", "/dash/isv"):
        b.driver.get(w.base + path)
        assert "Not allowed" in b.driver.page_source and "globex" not in b.driver.page_source
    # the page's own refresh fetch (cookie), for B: 404
    got = b.driver.execute_async_script(
        "const done = arguments[0];"
        "fetch('/dash/customer?owner=globex&fragment=1', {credentials: 'same-origin'})"
        ".then(r => r.text().then(t => done([r.status, t])));")
    assert got[0] == 404 and "globex-web" not in got[1]
    # every endpoint with A's token in the header
    for path in ("/dash/api/customer", "/dash/api/customer?owner=globex",
                 "/dash/api/customer?view=month", "/dash/api/noc", "/dash/api/isv",
                 "/dash/api/isv?vendor=webco", "/dash/customer?owner=globex&fragment=1",
                 "/dash/noc?fragment=1", "/dash/isv?fragment=1"):
        status, body, _ = _http(w.base + path, w.acme)
        assert b"globex" not in body, path
        if "owner=globex" in path:
            assert status == 404, path
        elif "/noc" in path or "/isv" in path:
            assert status == 403, path
    # and B sees B only
    m = w.api("customer", w.globex)
    assert [a["name"] for a in m["apps"]] == ["globex-web"]
    assert "acme" not in json.dumps(m)
    # a token of an owner with no app here sees none
    other = auth.issue_token(w.net.state_dir / "tokens" / "controller.toml", "owner-nobody",
                             ["owner:nobody"])
    time.sleep(1.1)  # the token file is re-read at most once a second
    assert w.api("customer", other)["apps"] == []
    # no session, no data
    status, body, _ = _http(w.base + "/dash/api/customer")
    assert status == 401 and b"acme" not in body
    status, body, _ = _http(w.base + "/dash/customer?fragment=1")
    assert status == 401


# ------------------------------------------------------------------------------ NOC


def test_noc_page_shows_every_edgepoint_and_agent_as_the_agents_have_them(world):
    w, b = world, world.browser
    b.fresh()
    b.login(w.base, w.op)
    assert b.driver.current_url.endswith("/dash/noc")
    sent = w.sent

    def agree():
        st = asyncio.run(agents_state(w.net))
        b.driver.refresh()
        f = b.figures()
        problems = []
        for ep in ("eu", "us"):
            servers = [s for s in st.values() if s["edgepoint"] == ep]
            used = sum(int(s["capacity"].slots.used) for s in servers)
            total = sum(int(s["capacity"].slots.total) for s in servers)
            if f[f"{ep}:slots"] != f"{used} / {total}":
                problems.append((ep, "slots", f[f"{ep}:slots"], used, total))
            running = sum(sum(s["running"].values()) for s in servers)
            if number(f[f"{ep}:ready"]) != running:
                problems.append((ep, "ready", f[f"{ep}:ready"], running))
            restores = sum(sum(s["restores"].values()) for s in servers)
            if number(f[f"{ep}:restores"]) != restores:
                problems.append((ep, "restores", f[f"{ep}:restores"], restores))
            snaps = sum(sum(s["snapshotted"].values()) for s in servers)
            if number(f[f"{ep}:snapshotted"]) != snaps:
                problems.append((ep, "snapshotted", f[f"{ep}:snapshotted"], snaps))
            for server, s in st.items():
                if s["edgepoint"] != ep:
                    continue
                cap = s["capacity"]
                if f[f"agent:{server}:slots"] != f"{int(cap.slots.used)} / {int(cap.slots.total)}":
                    problems.append((server, "agent slots", f[f"agent:{server}:slots"]))
                if f[f"agent:{server}:mode"] != ("CRIU" if cap.restores else "cold start"):
                    problems.append((server, "mode", f[f"agent:{server}:mode"]))
                if "up" not in f[f"agent:{server}:health"]:
                    problems.append((server, "health", f[f"agent:{server}:health"]))
        return not problems or (False, problems)
    got = _settled(w, lambda: agree() is True, "NOC = the agents' state")
    assert got
    f = b.figures()
    for ep in ("eu", "us"):
        assert "up" in f[f"{ep}:health"]
        # HAProxy's 5xx at each edgepoint: the 500s the test got from it
        assert number(f[f"{ep}:http-5xx"]) == sent.status(5, edgepoint=ep)
        # requests in the edge's request-log history: what the test sent there
        assert number(f[f"{ep}:logged"]) == sent.requests(edgepoint=ep)
    # snapshots per edgepoint: the agents' snapshot counters
    st = asyncio.run(agents_state(w.net))
    from .netkit import metric_sum
    for ep in ("eu", "us"):
        agents_snaps = sum(metric_sum(s["metrics"], "edgeshot_agent_snapshots_total",
                                      result="ok") for s in st.values() if s["edgepoint"] == ep)
        assert number(f[f"{ep}:snapshots"]) == agents_snaps
    assert f["agents-healthy"] == "2 / 2" and f["edgepoints-healthy"] == "2 / 2"
    w.shot("noc")


# ------------------------------------------------------------------------------ ISV


def test_isv_page_shows_usage_per_application_across_owners(world):
    w, b = world, world.browser
    b.fresh()
    b.login(w.base, w.vendor)
    assert b.driver.current_url.endswith("/dash/isv")
    f = b.figures()
    assert f["isv:acme-web:owner"] == "acme" and f["isv:globex-web:owner"] == "globex"
    for app in ("acme-web", "globex-web"):
        assert number(f[f"isv:{app}:requests"]) == w.sent.requests(app)

    # the month: usage records' requests and the bill per app, from the raw records
    def month_agrees():
        before = {s["source"]: s["cursor"] for s in
                  _json(f"{w.base}/v1/usage/sources", w.op)["sources"]}
        b.driver.refresh()
        f = b.figures()
        after = {s["source"]: s["cursor"] for s in
                 _json(f"{w.base}/v1/usage/sources", w.op)["sources"]}
        if before != after:
            return False
        records = [r for r in asyncio.run(raw_usage(w.net))
                   if r.seq <= before.get(r.source, 0)]
        month = datetime.now(UTC).strftime("%Y-%m")
        raw = bill_of(records, w.pricing, month)
        for app, owner in (("acme-web", "acme"), ("globex-web", "globex")):
            reqs = sum(r.requests for r in records if r.app == app)
            if number(f[f"isv:{app}:month_requests"]) != reqs or reqs != w.sent.requests(app):
                return False
            amount = next(t.amount for t in raw.apps if t.key == f"{owner}/{app}")
            if abs(Decimal(f[f"isv:{app}:amount"].split()[0]) - amount) > Decimal("0.01"):
                return False
        return True
    _json(f"{w.base}/v1/usage/collect", w.op, method="POST")
    _settled(w, month_agrees, "the ISV month = the raw usage records")
    w.shot("isv")
    # a vendor of nothing here sees nothing
    other = auth.issue_token(w.net.state_dir / "tokens" / "controller.toml", "vendor-nobody",
                             ["vendor:nobody"])
    time.sleep(1.1)
    m = w.api("isv", other)
    assert m["by_vendor"] == [] and "acme" not in json.dumps(m)


# ------------------------------------------------------------------------------ views


def test_live_view_refreshes_itself_and_aggregated_views_add_up(world):
    from selenium.webdriver.common.by import By
    w, b = world, world.browser
    b.fresh()
    b.login(w.base, w.acme)
    d = b.driver
    first = b.figure("generated")
    _wait("the live view refreshed in place", lambda: d.execute_script(
        "return document.getElementById('content').dataset.refreshed") is not None
        and b.figure("generated") != first, timeout=30)
    assert d.current_url.endswith("/dash/customer")  # no navigation: the content was swapped
    total = w.sent.requests("acme-web")
    for view in ("hour", "day", "month"):
        d.find_element(By.CSS_SELECTOR, f'a[data-view="{view}"]').click()
        _wait(f"{view} view", lambda view=view: f"view={view}" in d.current_url)
        assert number(b.figure("acme-web:requests")) == total, view
        assert number(b.figure("acme-web:errors")) == FAILS_EU, view
        assert d.find_elements(By.CSS_SELECTOR, "svg.chart polyline, svg.chart circle")
    w.shot("customer-acme-months")  # the last view clicked


def test_pages_load_nothing_beyond_the_controller(world):
    w, b = world, world.browser
    for token, path in ((w.acme, "/dash/customer"), (w.op, "/dash/noc"),
                        (w.vendor, "/dash/isv")):
        b.fresh()
        b.login(w.base, token)
        b.driver.get_log("browser")  # what earlier pages (refusals on purpose) logged
        b.driver.get(w.base + path)
        urls = b.resources()
        assert urls and all(u.startswith(w.base + "/") for u in urls), urls
        assert any(u.endswith("/dash/static/dash.css") for u in urls)
        status, body, headers = _http(w.base + path, token)
        assert status == 200
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert b"http://" not in body and b"https://" not in body
        errors = [e for e in b.driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
