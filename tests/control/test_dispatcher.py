"""The global dispatcher's HAProxy, driven by the controller's tables, in front of fake edgepoints.

Real HAProxy, real HTTP on loopback; the edgepoints are tiny HTTP servers run as
processes (tests kill them). Three edgepoints: eu (Frankfurt), us (Ashburn),
ap (Singapore), each on its own 127.0.20N.1 address.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from edgeshot.control._dispatcher import (
    COOKIE,
    DispatchApp,
    DispatchEdgepoint,
    DispatcherConfig,
    GlobalDispatcher,
)
from edgeshot.control.dispatch import DispatchPolicy, Placed, Site, UserRegion, decide
from edgeshot.spec import REGIONS

pytestmark = pytest.mark.haproxy

HERE = Path(__file__).parent
EDGES = {"eu": ("eu-central", "127.0.201.1"), "us": ("us-east", "127.0.202.1"),
         "ap": ("ap-southeast", "127.0.203.1")}
USER_REGIONS = tuple(UserRegion(n, r.latitude, r.longitude) for n, r in REGIONS.items())


def free_port(*addresses: str) -> int:
    """A port free on every one of `addresses`."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind((addresses[0], 0))
            port = s.getsockname()[1]
        ok = True
        for a in addresses[1:]:
            with socket.socket() as s:
                try:
                    s.bind((a, port))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no common free port")


class FakeEdges:
    def __init__(self, port: int) -> None:
        self.port = port
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        _, address = EDGES[name]
        self.procs[name] = subprocess.Popen(
            [sys.executable, str(HERE / "fake_edge.py"), name, address, str(self.port)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((address, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"fake edge {name} did not start")

    def kill(self, name: str) -> None:
        p = self.procs.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture
def edges():
    port = free_port(*(a for _, a in EDGES.values()))
    fe = FakeEdges(port)
    for name in EDGES:
        fe.start(name)
    yield fe
    fe.stop_all()


def edgepoints(port: int) -> list[DispatchEdgepoint]:
    out = []
    for name, (region, address) in EDGES.items():
        r = REGIONS[region]
        out.append(DispatchEdgepoint(name, region, r.latitude, r.longitude,
                                     f"{address}:{port}", f"http://{address}:{port}"))
    return out


def sites(**overrides: dict) -> list[Site]:
    out = []
    for name, (region, _) in EDGES.items():
        r = REGIONS[region]
        out.append(Site(name, r.latitude, r.longitude, **overrides.get(name, {})))
    return out


SHOP = DispatchApp("shop", hosts=("shop.example.com",), affinity=True,
                   edgepoints=("eu", "us", "ap"))
API = DispatchApp("api", path_prefix="/api", edgepoints=("us", "ap"))


@pytest.fixture
async def dispatcher(tmp_path, edges, request):
    opts = getattr(request, "param", {})
    port = free_port("127.0.0.1")
    cfg = DispatcherConfig(state_dir=tmp_path / "dispatcher", bind=f"127.0.0.1:{port}",
                           regions=USER_REGIONS, check_inter_ms=200, **opts)
    d = GlobalDispatcher(cfg)
    d.configure([SHOP, API], edgepoints(edges.port))
    await d.start()
    table = decide(sites(), [Placed("shop", e) for e in SHOP.edgepoints]
                   + [Placed("api", e) for e in API.edgepoints], USER_REGIONS)
    await d.apply(table)
    d.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield d
    await d.stop()
    assert not d.socket.exists()


async def get(session, url, region=None, host="shop.example.com", method="GET", path="/",
              cookies=None, headers_extra=None, **kw):
    headers = {"Host": host, **(headers_extra or {})}
    if region:
        headers["X-Edgeshot-Region"] = region
    async with session.request(method, url + path, headers=headers, cookies=cookies,
                               allow_redirects=False, **kw) as r:
        body = await r.json() if r.content_type == "application/json" else await r.text()
        return r.status, body, r


async def test_users_land_on_their_nearest_edgepoint(dispatcher):
    async with aiohttp.ClientSession() as s:
        for region, expected in (("eu-central", "eu"), ("eu-west", "eu"), ("us-east", "us"),
                                 ("us-west", "us"), ("ap-southeast", "ap"), ("oceania", "ap")):
            status, body, _ = await get(s, dispatcher.url, region)
            assert status == 200 and body["edgepoint"] == expected, region
            assert body["region"] == region  # the edge learns the user's region
        # path-routed app placed on us and ap only: European users go to the nearer of those
        status, body, _ = await get(s, dispatcher.url, "eu-central", host="x.test", path="/api/v1")
        assert body["edgepoint"] == "us"
        # unknown region header: the load-only chain
        status, body, _ = await get(s, dispatcher.url, "mars")
        assert status == 200 and body["region"] == "*"


async def test_never_an_open_proxy(dispatcher):
    async with aiohttp.ClientSession() as s:
        status, body, _ = await get(s, dispatcher.url, host="evil.example.org")
        assert status == 404 and "no application" in body
        status, _, _ = await get(s, dispatcher.url, host="evil.example.org", path="/apix")
        assert status == 404


async def test_an_edgepoint_at_capacity_sheds_new_users_but_keeps_its_own(dispatcher):
    placed = [Placed("shop", "eu", accepting=False), Placed("shop", "us"), Placed("shop", "ap")]
    await dispatcher.apply(decide(sites(), placed, USER_REGIONS))
    async with aiohttp.ClientSession() as s:
        status, body, r = await get(s, dispatcher.url, "eu-central")
        assert body["edgepoint"] == "us"  # a new user: shed to the next
        assert r.cookies[COOKIE].value == "us"
        # an existing user of eu (affinity cookie) stays there
        status, body, r = await get(s, dispatcher.url, "eu-central", cookies={COOKIE: "eu"})
        assert body["edgepoint"] == "eu"
        assert COOKIE not in r.cookies  # no new cookie when it stays
        # a cookie for an edgepoint the app is not placed on is ignored
        await dispatcher.apply(decide(sites(), placed[1:], USER_REGIONS))
        status, body, _ = await get(s, dispatcher.url, "eu-central", cookies={COOKIE: "eu"})
        assert body["edgepoint"] == "us"


async def test_affinity_cookie_keeps_a_user_where_they_are(dispatcher):
    async with aiohttp.ClientSession() as s:
        _, body, r = await get(s, dispatcher.url, "us-east")
        assert body["edgepoint"] == "us" and r.cookies[COOKIE].value == "us"
        # the user travels: still served where their session is
        _, body, _ = await get(s, dispatcher.url, "ap-southeast", cookies={COOKIE: "us"})
        assert body["edgepoint"] == "us"
        # apps without affinity get no cookie and ignore one
        status, body, r = await get(s, dispatcher.url, "ap-southeast", host="x", path="/api",
                                    cookies={COOKIE: "us"})
        assert status == 200, body
        assert body["edgepoint"] == "ap" and COOKIE not in r.cookies


async def test_killing_an_edgepoint_under_traffic_loses_no_idempotent_request(dispatcher, edges):
    results: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def user(session: aiohttp.ClientSession, n: int) -> None:
        while not stop.is_set():
            path = "/slow" if n % 2 else "/"
            try:
                status, body, _ = await get(session, dispatcher.url, "eu-central", path=path)
                results.append((status, body["edgepoint"] if status == 200 else str(body)))
            except (aiohttp.ClientError, ValueError) as exc:
                results.append((0, repr(exc)))

    async with aiohttp.ClientSession() as s:
        tasks = [asyncio.create_task(user(s, n)) for n in range(8)]
        await asyncio.sleep(0.8)
        before = len(results)
        edges.kill("eu")
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*tasks)
    failed = [r for r in results if r[0] != 200]
    assert not failed, failed[:5]
    assert {ep for _, ep in results[:before]} == {"eu"}
    assert results[-1][1] != "eu"
    assert (await dispatcher.health())["eu"] is False


async def test_a_failed_edgepoint_is_routed_around_before_the_controller_knows(dispatcher, edges):
    edges.kill("us")
    await asyncio.sleep(0.7)  # two failed checks at 200 ms
    async with aiohttp.ClientSession() as s:
        for _ in range(5):
            status, body, _ = await get(s, dispatcher.url, "us-east")
            assert status == 200 and body["edgepoint"] == "eu"  # next in the chain
    # and once the controller knows, the table says so too
    table = decide(sites(us={"healthy": False}), [Placed("shop", e) for e in SHOP.edgepoints],
                   USER_REGIONS)
    assert table.chain("shop", "us-east") == ("eu", "ap")


async def test_a_post_is_not_replayed_but_an_idempotency_key_makes_it_safe(dispatcher, edges):
    async def post_while_killing(extra: dict[str, str]) -> tuple[int, object]:
        async with aiohttp.ClientSession() as s:
            req = asyncio.create_task(get(s, dispatcher.url, "ap-southeast", method="POST",
                                          path="/slow", data=b"{}", headers_extra=extra))
            await asyncio.sleep(0.1)
            edges.kill("ap")
            status, body, _ = await req
            return status, body

    status, body = await post_while_killing({})
    assert status >= 500  # sent once, lost with the edgepoint: never replayed elsewhere
    edges.start("ap")
    await asyncio.sleep(0.7)  # back up for HAProxy's checks
    status, body = await post_while_killing({"Idempotency-Key": "k1"})
    assert status == 200 and body["edgepoint"] != "ap" and body["method"] == "POST"


@pytest.mark.parametrize("dispatcher", [{"simulate_latency": True}], indirect=True)
async def test_simulated_latency_follows_the_distance(dispatcher):
    async with aiohttp.ClientSession() as s:
        await get(s, dispatcher.url, "us-east")  # warm the connection

        async def timed(region, cookies=None):
            t0 = time.perf_counter()
            _, body, _ = await get(s, dispatcher.url, region, cookies=cookies)
            return body["edgepoint"], (time.perf_counter() - t0) * 1000

        ep, near = await timed("us-east")
        assert ep == "us"
        ep, far = await timed("us-east", cookies={COOKIE: "ap"})  # a US user kept in Singapore
        assert ep == "ap" and far > near + 150  # Ashburn-Singapore: ~230 ms simulated RTT
        delays = (dispatcher.maps / "delay.map").read_text()
        assert "us-east@us 2\n" in delays and "eu-central@eu 2\n" in delays


@pytest.mark.parametrize("dispatcher", [{"redirect": True}], indirect=True)
async def test_redirect_mode_sends_a_307_to_the_chosen_edgepoint(dispatcher, edges):
    async with aiohttp.ClientSession() as s:
        status, _, r = await get(s, dispatcher.url, "ap-southeast", path="/catalog?x=1")
        assert status == 307
        assert r.headers["Location"] == f"http://127.0.203.1:{edges.port}/catalog?x=1"


async def test_big_tables_are_swapped_atomically_and_survive_a_reload(dispatcher):
    many = [DispatchApp(f"app{i}", hosts=(f"app{i}.test",), edgepoints=("eu", "us"))
            for i in range(40)]
    assert dispatcher.configure([SHOP, API, *many], list(dispatcher.edgepoints.values()))
    await dispatcher.reload()
    placed = [Placed(a.name, e) for a in (SHOP, API, *many) for e in a.edgepoints]
    table = decide(sites(), placed, USER_REGIONS)
    n = await dispatcher.apply(table)
    assert n > 400  # replaced with prepare/commit
    async with aiohttp.ClientSession() as s:
        _, body, _ = await get(s, dispatcher.url, "us-west", host="app17.test")
        assert body["edgepoint"] == "us"
        await dispatcher.reload()  # a new worker starts from the map files
        _, body, _ = await get(s, dispatcher.url, "us-west", host="app17.test")
        assert body["edgepoint"] == "us"
    shown = await dispatcher.runtime.show_map(dispatcher.maps / "routes.map")
    assert shown["app17@us-west"] == "us|eu"
    # an unchanged table writes nothing
    assert await dispatcher.apply(table) == 0
    # a small change writes only the changed entries, one by one
    placed2 = [p if p != Placed("app3", "eu") else Placed("app3", "eu", accepting=False)
               for p in placed]
    table2 = decide(sites(), placed2, USER_REGIONS, DispatchPolicy(hysteresis_ms=0))
    assert 0 < await dispatcher.apply(table2) < 30
    shown = await dispatcher.runtime.show_map(dispatcher.maps / "routes.map")
    assert shown["app3@eu-central"] == "us|eu"
    assert (dispatcher.maps / "routes.map").read_text().count("\n") == len(shown)
