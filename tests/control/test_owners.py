"""Issue 22 on a real local network with two owners: every owner request is held to what
the owner could write in a policy file for its own app, and the operator decides the rest.

Two edgepoints (eu, us); ``hello`` of owner ``acme`` (host hello.test) and ``bee`` of owner
``bee`` (the probe app, host bee.test, with a declared LoadTest); the operator grants bee the
hosts ``*.bee.test`` in the controller's configuration. One network for the whole module;
the tests that roll out a version come last.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from _netkit import running
from edgeshot.control._config import ControllerConfig
from edgeshot.control._grants import OwnerGrant
from edgeshot.control._localnet import LocalNetwork

from .netfix import write_policy

pytestmark = [pytest.mark.haproxy, pytest.mark.root, pytest.mark.timeout(900)]

BEE = f'''
bee = Application(
    name="bee", version="1.0", owner=Owner(id="bee"), vendor="bee-isv",
    routing=Routing(hosts=("bee.test",)),
    source=Source(path="{Path(__file__).parent / 'apps' / 'probe'}"),
    tiers=(Tier(name="web", command="python3 app.py", env={{"APP_VERSION": "1.0"}},
                resources=Resources(cpu="0.1", memory_mb=48)),),
    distribution=Distribution(regions=("eu-central", "us-east"), max=2, global_max=4),
    sla=SLA(max_response_ms=1000, users_per_instance=5, idle_s=600),
    budget=Budget(monthly="100 EUR"),
    load_test=LoadTest(users=2, spawn_rate=2, duration_s=3, paths=(WeightedPath(path="/"),)),
)
'''


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("owners")
    n = LocalNetwork.create(write_policy(d, extra_apps=BEE), d / "state", tick_s=0.5)
    toml = n.state_dir / "controller.toml"  # the operator's grant, in its configuration
    cfg = ControllerConfig.load(toml)
    toml.write_text(cfg.model_copy(update={"owners": {
        "bee": OwnerGrant(routing=("*.bee.test",))}}).to_toml())
    with running(n, apps=2):
        yield n



async def call(net: LocalNetwork, method: str, path: str, token: str = "owner-bee",
               body: Any = None, data: bytes | None = None) -> tuple[int, Any]:
    """(status, JSON answer) of a controller API request with the named token."""
    headers = {"Authorization": f"Bearer {net.token(token)}"}
    if data is not None:
        headers["Content-Type"] = "application/json"
    async with aiohttp.ClientSession() as s, s.request(
            method, net.manifest.controller_url + path, json=body, data=data,
            headers=headers, timeout=aiohttp.ClientTimeout(total=300)) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


def plan_of(net: LocalNetwork, app: str, **fields: Any) -> dict[str, Any]:
    """The app's plan as its owner compiles it from its policy file, with ``fields`` changed."""
    return {**net.plan().app(app).model_dump(mode="json"), **fields}


async def versions(net: LocalNetwork, app: str) -> list[str]:
    _, st = await call(net, "GET", "/v1/status", token="operator")
    return [v["version"] for a in st["apps"] if a["name"] == app for v in a["versions"]]


async def edge_routes(net: LocalNetwork) -> dict[str, tuple[list[str], str | None]]:
    """app -> (hosts, path prefix) as the eu edge serves them."""
    e = net.manifest.edges["eu"]
    async with aiohttp.ClientSession() as s, s.get(
            e["url"] + "/v1/placements",
            headers={"Authorization": f"Bearer {net.token()}"}) as r:
        body = await r.json()
    return {p["app"]["name"]: (p["app"]["hosts"], p["app"]["path_prefix"])
            for p in body["placements"]}


ROWS = [  # (what owner bee sends, status, the reason starts with)
    ({"hosts": ["hello.test"], "path_prefix": "/catalog", "version": "2.0"}, 403,
     "bee 2.0: routing: hello.test/catalog was not granted to owner 'bee'"),
    ({"origin_url": "http://127.0.0.1:8404/", "default_route": "origin", "version": "2.1"},
     403, "bee 2.1: origin_url: 127.0.0.1 is a loopback"),
    ({"origin_url": "http://169.254.169.254/latest/", "version": "2.2"}, 403,
     "bee 2.2: origin_url: 169.254.169.254 is the host itself or a metadata service"),
    ({"routes": [{"method": "GET", "path": "/x", "to": "edge", "transactional": False,
                  "regex": "^(/x"}], "version": "2.3"}, 422,
     "bee '2.3': plan.routes.0.regex: '^(/x' is not what '/x' compiles to"),
    ({"source": "/etc", "version": "2.4"}, 403,
     "bee 2.4: source: fixed by the network's operator"),
    ({"vendor": "acme-isv", "version": "2.5"}, 403,
     "bee 2.5: vendor: fixed by the network's operator to 'bee-isv', not 'acme-isv'"),
    ({"version": "../../x"}, 422, "bee '../../x': plan.version: must be letters"),
    ({"version": "<script>"}, 422, "bee '<script>': plan.version: must be letters"),
    ({"hosts": ["<b>"], "version": "2.6"}, 422, "bee '2.6': plan.routing.hosts: '<b>' is not"),
]


@pytest.mark.parametrize("fields,status,reason", ROWS, ids=[r[2][:40] for r in ROWS])
async def test_an_owner_request_is_held_to_the_rule(net, fields, status, reason):
    before = await edge_routes(net)
    for verb in ("deploy", "stage"):
        got, body = await call(net, "POST", f"/v1/apps/bee/{verb}",
                               body={"plan": plan_of(net, "bee", **fields)})
        assert (got, body["error"][:len(reason)]) == (status, reason), (verb, body)
    assert await edge_routes(net) == before  # nothing reached an edge
    assert fields["version"] not in await versions(net, "bee")  # nor the store


async def test_another_owners_app_does_not_exist_for_an_owner(net):
    got, _ = await call(net, "POST", "/v1/apps/hello/deploy",
                        body={"plan": plan_of(net, "hello", version="9")})
    assert got == 404


async def test_malformed_input_is_a_400_or_422_with_a_reason_never_a_500(net):
    for path in ("/v1/deployments/" + "9" * 26, "/v1/events?after=" + "9" * 29,
                 "/v1/events?limit=-1", "/v1/deployments/-1"):
        got, body = await call(net, "GET", path)
        assert got == 400 and body["error"], (path, body)
    deep = b'{"plan": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    for verb in ("deploy", "stage"):
        got, body = await call(net, "POST", f"/v1/apps/bee/{verb}", data=deep)
        assert got in (400, 422) and "recursion" in body["error"], body
        got, body = await call(net, "POST", f"/v1/apps/bee/{verb}", data=b"{nope")
        assert got == 400 and body["error"].startswith("the body must be JSON"), body
    got, body = await call(net, "POST", "/v1/apps/bee/deploy", body={"version": "../../x"})
    assert got == 404, body
    got, body = await call(net, "POST", "/v1/apps/bee/deploy",
                           body={"version": "1.0", "policy": {"max_error_rate": "lots"}})
    assert got == 422 and body["error"].startswith("policy.max_error_rate"), body
    got, body = await call(net, "POST", "/v1/apps/bee/deploy",
                           body={"version": "1.0", "policy": {"nope": 1}})
    assert got == 422 and "nope" in body["error"], body


BIG, DEEP = "9" * 26, b"[" * 200_000 + b"]" * 200_000
MALFORMED = [  # (service, method, path, body) sent with the token of its caller
    ("edge", "GET", f"/v1/usage?after={BIG}", None),
    ("edge", "GET", f"/v1/usage?after={'9' * 5000}", None),
    ("edge", "GET", "/v1/history/latency?since=yesterday", None),
    ("edge", "GET", f"/v1/history/regions?since={BIG}", None),
    ("edge", "PUT", "/v1/placements", DEEP),
    ("edge", "PUT", "/v1/placements", b'{"placements": ' + DEEP + b"}"),
    ("edge", "PATCH", "/v1/placements/..%2F..%2Fx/eu", b'{"versions": []}'),
    ("edge", "PATCH", "/v1/placements/hello/eu", b'{"global_share": ' + BIG.encode() + b"}"),
    ("agent", "GET", f"/v1/usage?after={BIG}", None),
    ("agent", "GET", "/v1/instances/..%2F..%2Fetc", None),
    ("agent", "GET", "/v1/appshots/<script>", None),
    ("agent", "POST", "/v1/instances", DEEP),
    ("agent", "POST", "/v1/capture", b'{"spec": ' + DEEP + b"}"),
    ("controller", "GET", "/v1/bill?month=99999-99", None),
    ("controller", "GET", f"/v1/bill?month={BIG}", None),
    ("controller", "GET", "/v1/apps/%3Cscript%3E/deployments", None),
]


@pytest.mark.parametrize("service,method,path,body", MALFORMED,
                         ids=[f"{m[0]} {m[1]} {m[2][:40]}" for m in MALFORMED])
async def test_every_api_answers_malformed_input_with_a_reason(net, service, method, path,
                                                                body):
    base = {"edge": lambda: net.manifest.edges["eu"]["url"],
            "agent": lambda: net.manifest.agents["eu-1"]["url"],
            "controller": lambda: net.manifest.controller_url}[service]()
    token = {"edge": "controller-edge", "agent": "controller-agent"}.get(service, "operator")
    headers = {"Authorization": f"Bearer {net.token(token)}",
               "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s, s.request(
            method, base + path, data=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=60)) as r:
        text = await r.text()
    assert r.status in (400, 404, 413, 422), (r.status, text[:300])
    assert json.loads(text)["error"] and "\n" not in json.loads(text)["error"]


async def _headers_seen(url: str, headers: dict[str, str]) -> dict[str, str]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        for _ in range(60):  # the first request may wait for a restore
            async with s.get(url + "/headers", headers={"Host": "bee.test", **headers},
                             timeout=aiohttp.ClientTimeout(total=30)) as r:
                if r.status == 200:
                    return json.loads(await r.text())
            await asyncio.sleep(0.5)
    raise AssertionError(f"{url}: no answer from bee")


async def test_edges_keep_the_region_and_address_only_from_the_dispatcher(net):
    forged = {"X-Edgeshot-Region": "forged-region", "X-Forwarded-For": "6.6.6.6",
              "X-Edgeshot-Hop": "est1_" + "A" * 43}
    direct = await _headers_seen(net.manifest.edges["eu"]["public_url"], forged)
    assert "x-edgeshot-region" not in direct and "x-edgeshot-hop" not in direct, direct
    assert direct["x-forwarded-for"] == "127.0.0.1", direct
    via = await _headers_seen(net.manifest.entry_url, {**forged,
                                                        "X-Edgeshot-Region": "eu-central"})
    assert via["x-edgeshot-region"] == "eu-central" and "x-edgeshot-hop" not in via, via
    assert via["x-forwarded-for"] == "127.0.0.1", via  # the dispatcher's word: its client
    e = net.manifest.edges["eu"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the edge's durable region history
        async with aiohttp.ClientSession() as s, s.get(
                e["url"] + "/v1/history/regions?app=bee",
                headers={"Authorization": f"Bearer {net.token()}"}) as r:
            regions = {m["region"] for m in (await r.json())["minutes"]}
        if "eu-central" in regions:
            break
        await asyncio.sleep(1)
    assert "eu-central" in regions and "forged-region" not in regions, regions


async def test_an_owners_status_lists_its_own_apps_only(net):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # both apps placed and reported by the edges
        _, st = await call(net, "GET", "/v1/status", token="operator")
        seen = {p for e in st["edgepoints"] for p in e["capacity"].get("instances", {})}
        if {"hello/eu", "bee/eu"} <= seen:
            break
        await asyncio.sleep(0.3)
    assert {"hello/eu", "bee/eu"} <= seen
    for token, mine in (("owner-acme", "hello"), ("owner-bee", "bee")):
        got, st = await call(net, "GET", "/v1/status", token=token)
        assert got == 200
        assert [a["name"] for a in st["apps"]] == [mine]
        for e in st["edgepoints"]:
            assert {p.split("/")[0] for p in e["capacity"]["instances"]} <= {mine}, e
            assert "servers" not in e["capacity"]
        assert mine in json.dumps(st) and ({"hello", "bee"} - {mine}).pop() not in json.dumps(
            [a for e in st["edgepoints"] for a in e["capacity"]["instances"]])


async def test_a_granted_host_passes_the_rule_and_the_capacity_gate_holds_it(net):
    plan = plan_of(net, "bee", hosts=["api.bee.test"], version="3.0")
    got, body = await call(net, "POST", "/v1/apps/bee/deploy", body={"plan": plan})
    assert got == 409 and "has not passed its capacity test" in body["error"], body
    got, body = await call(net, "POST", "/v1/apps/bee/deploy",
                           body={"plan": plan, "override_gate": "owners may not"})
    assert got == 403 and "only operators" in body["error"], body
    got, body = await call(net, "POST", "/v1/apps/bee/deploy", token="operator",
                           body={"plan": plan, "override_gate": "hotfix, tested by hand"})
    assert got == 202, body
    _, ev = await call(net, "GET", "/v1/events?app=bee&limit=1000", token="operator")
    (over,) = [e for e in ev["events"] if e["kind"] == "gate-overridden"]
    assert "hotfix, tested by hand (by operator)" in over["message"]
    assert (await edge_routes(net))["bee"] == (["api.bee.test"], None)


async def test_a_deploy_with_its_own_canary_policy(net):
    got, body = await call(net, "POST", "/v1/apps/hello/deploy", token="owner-acme",
                           body={"plan": plan_of(net, "hello", version="1.1"), "canary": 10,
                                 "policy": {"max_error_rate": 0.5, "min_requests": 5}})
    assert got == 202, body
    dep = body["deployment"]
    assert dep["kind"] == "canary" and dep["policy"]["max_error_rate"] == 0.5


def test_the_state_is_its_users_only(net):
    """Tokens, databases, configurations and logs of the network, the controller and the
    edges: 0600 files in 0700 directories (the agents' pods' files are issue 13's)."""
    loose = []
    for d in (net.state_dir, *(p for p in net.state_dir.iterdir()
                               if p.is_dir() and p.name != "agents")):
        for p in [d] if d == net.state_dir else [d, *d.rglob("*")]:
            if p.is_symlink() or p.is_socket():
                continue
            if p.stat().st_mode & 0o077:
                loose.append(f"{p.relative_to(net.state_dir)} {p.stat().st_mode & 0o777:o}")
    for p in net.state_dir.iterdir():
        if p.is_file() and p.stat().st_mode & 0o077:
            loose.append(f"{p.name} {p.stat().st_mode & 0o777:o}")
    assert loose == []


async def test_an_edges_token_reaches_its_own_edgepoints_agents_only(net):
    async with aiohttp.ClientSession() as s:
        for ep, server, status in (("eu", "eu-1", 200), ("eu", "us-1", 401),
                                   ("us", "us-1", 200), ("us", "eu-1", 401)):
            async with s.get(net.manifest.agents[server]["url"] + "/v1/instances", headers={
                    "Authorization": f"Bearer {net.token(f'edge-agent-{ep}')}"}) as r:
                assert r.status == status, (ep, server, await r.text())


async def test_the_dispatchers_stats_are_on_a_private_unix_socket_only(net):
    ctl = net.plan().controller
    with pytest.raises(OSError):  # the plan's stats port: nothing listens
        _, w = await asyncio.open_connection(ctl.address, ctl.ports["stats"])
        w.close()
    sock = net.state_dir / "controller" / "dispatcher" / "stats.sock"
    assert sock.stat().st_mode & 0o777 == 0o600
    conn = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=conn) as s, s.get("http://x/metrics") as r:
        assert r.status == 200 and "haproxy_frontend_" in await r.text()


async def test_failed_authentications_are_throttled_per_source_with_a_metric(net):
    """Its guesser (127.0.0.3, an address no other test uses) is locked out a minute."""
    url = net.manifest.controller_url
    guesser = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    statuses = []
    async with aiohttp.ClientSession(connector=guesser) as s:
        for i in range(60):  # a burst of 20 failures, draining one per 3 s meanwhile
            async with s.get(url + "/v1/status", headers={
                    "Authorization": f"Bearer est1_{i:043d}"}) as r:
                statuses.append(r.status)
                retry = r.headers.get("Retry-After")
            if r.status == 429:
                break
        assert statuses[:20] == [401] * 20 and statuses[-1] == 429, statuses
        assert set(statuses) == {401, 429} and retry and int(retry) >= 1
        # locked out for guesses, at the API and the login form alike
        async with s.get(url + "/v1/status", headers={"Authorization": "Bearer est1_x"}) as r:
            assert r.status == 429
        async with s.post(url + "/dash/login", data={"token": "est1_y"},
                          headers={"Origin": url}, allow_redirects=False) as r:
            assert r.status == 429 and "too many failed logins" in await r.text()
        # a valid token from the same address is served: sharing an address with a guesser
        # (a NAT, the services of one host) locks nobody out
        async with s.get(url + "/v1/status",
                         headers={"Authorization": f"Bearer {net.token()}"}) as r:
            assert r.status == 200
        async with s.post(url + "/dash/login", data={"token": net.token()},
                          headers={"Origin": url}, allow_redirects=False) as r:
            assert r.status in (302, 303), r.status
    # everyone else is not: the operator reads the counts
    got, text = await call(net, "GET", "/metrics", token="operator")
    assert got == 200
    fails = next(float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("edgeshot_controller_auth_failures_total"))
    throttled = next(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith("edgeshot_controller_auth_throttled_total"))
    assert fails >= 20 and throttled >= 3


async def test_edges_and_agents_count_failed_authentications_too(net):
    targets = (("edge", net.manifest.edges["eu"]["url"]),
               ("agent", net.manifest.agents["eu-1"]["url"]))
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(local_addr=("127.0.0.4", 0))) as s:
        for _, base in targets:
            for i in range(3):
                async with s.get(base + "/v1/health",
                                 headers={"Authorization": f"Bearer est1_{i:043d}"}) as r:
                    assert r.status == 401
    async with aiohttp.ClientSession() as s:
        for component, base in targets:
            async with s.get(base + "/metrics",
                             headers={"Authorization": f"Bearer {net.token()}"}) as r:
                text = await r.text()
            count = next(float(line.split()[-1]) for line in text.splitlines()
                         if line.startswith(f"edgeshot_{component}_auth_failures_total"))
            assert count >= 3, (component, count)
