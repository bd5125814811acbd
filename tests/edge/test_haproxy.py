"""The HAProxy driver against a real HAProxy on loopback: routing, cleave, never an open
proxy, dynamic servers, weights, affinity, drain and removal, reload, stop."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from helpers import Backend, free_port, request

from edgeshot.edge import _haproxy as H

pytestmark = pytest.mark.haproxy

SHOP_ROUTES = (
    H.Route("GET", "^/account/public", "edge"),
    H.Route("GET", "^/account/.*$", "origin"),
    H.Route("POST", "^/checkout", "origin"),
    H.Route("GET", "^/catalog", "edge"),
    H.Route("*", "^/", "edge"),
)


def conf(run_dir: Path, port: int, *apps: H.AppConf, **kw) -> H.HAProxyConf:
    return H.HAProxyConf(edgepoint="t", listen="127.0.0.1", http_port=port, run_dir=run_dir,
                         apps=apps, **kw)


def test_render_orders_routing_keys_most_specific_first(tmp_path):
    c = conf(tmp_path, 1,
             H.AppConf("root", hosts=("*",)),
             H.AppConf("api", hosts=("shop.example.com",), path_prefix="/api"),
             H.AppConf("shop", hosts=("shop.example.com",), routes=SHOP_ROUTES),
             H.AppConf("wild", hosts=("*.example.com",), path_prefix="/w"),
             H.AppConf("docs", path_prefix="/docs"))
    r = H.render(c)
    assert r.files["hosts.map"] == "shop.example.com shop\n"
    assert r.files["keys_exact.map"] == "^shop\\.example\\.com\\|/api(/|$) api\n"
    assert r.files["keys_wild.map"].splitlines() == [
        "^[^|]+\\.example\\.com\\|/w(/|$) wild", "^[^|]*\\|/docs(/|$) docs",
        "^[^|]*\\|/ root"]
    # the trailing edge routes are covered by the default route
    assert [f for f in r.files if f.startswith("shop.")] == ["shop.0.re", "shop.1.re",
                                                            "shop.2.re"]
    assert r.files["shop.1.re"] == "^/account/.*$\n"
    assert "use_backend shop.origin if { var(txn.app) -m str shop } { method POST }" in r.text


@pytest.mark.parametrize("bad, match", [
    (H.AppConf("Shop"), "cannot name"),
    (H.AppConf("a", hosts=("EVIL com",)), "host"),
    (H.AppConf("a", affinity=True, cookie_key="short"), "cookie key"),
    (H.AppConf("a", servers=(H.Server("x y", "1.2.3.4:5"),)), "bad server"),
    (H.AppConf("a", routes=(H.Route("GET", "^/x\n", "edge"),)), "spans lines"),
])
def test_render_refuses_what_haproxy_would_misread(tmp_path, bad, match):
    with pytest.raises(H.HAProxyError, match=match):
        H.render(conf(tmp_path, 1, bad))


@pytest.fixture
def run_dir():
    d = Path(tempfile.mkdtemp(prefix="es-hx-"))  # short: unix socket paths
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def backends():
    made: list[Backend] = []

    def make(name: str) -> Backend:
        b = Backend(name)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


class Running:
    def __init__(self, c: H.HAProxyConf) -> None:
        self.conf = c
        self.proc = H.HAProxyProcess(c, H.find_haproxy())
        self.rt = self.proc.admin

    def apply(self, c: H.HAProxyConf) -> None:
        self.conf = c
        self.proc.conf = c
        H.write_config(c, H.render(c))

    def get(self, path: str, host: str = "shop.example.com", **kw):
        hdrs = {"Host": host, **kw.pop("headers", {})}
        return request(self.conf.listen, self.conf.http_port, path, headers=hdrs, **kw)


@pytest.fixture
def haproxy(run_dir):
    """Start one HAProxy; stop it after the test and check nothing is left running."""
    started: list[Running] = []

    async def start(c: H.HAProxyConf) -> Running:
        r = Running(c)
        r.apply(c)
        await r.proc.start()
        started.append(r)
        return r
    yield start
    for r in started:
        pid = r.proc.pid
        asyncio.run(r.proc.stop())
        assert pid is None or not os.path.exists(f"/proc/{pid}/cmdline") or \
            H._alive(pid) is False, "HAProxy left running"


async def test_cleave_routing_and_never_an_open_proxy(run_dir, haproxy, backends):
    inst, origin = backends("instance"), backends("origin")
    port = free_port()
    shop = H.AppConf("shop", hosts=("shop.example.com",), routes=SHOP_ROUTES,
                     origin=H.origin_from_url(f"http://{origin.address}/"), health_path=None)
    hx = await haproxy(conf(run_dir, port, shop))
    await hx.rt.add_server("shop", H.Server("i1", inst.address), health=False)

    def who(path, method="GET", host="shop.example.com"):
        status, _, body = await_get(hx, path, method, host)
        return status, (json.loads(body)["name"] if status == 200 else None)

    assert who("/catalog") == (200, "instance")
    assert who("/account/42") == (200, "origin")
    assert who("/account/public/x") == (200, "instance")  # more specific edge route
    assert who("/checkout", "POST") == (200, "origin")
    assert who("/checkout", "GET") == (200, "instance")  # only POST is cleaved away
    assert who("/anything") == (200, "instance")  # default route
    assert who("/catalog", host="SHOP.Example.COM:8080") == (200, "instance")
    # unknown hosts go nowhere: no open proxy, not even with an absolute URI
    assert who("/catalog", host="evil.example.net") == (404, None)
    status, _, _ = hx.get("http://" + origin.address + "/x", host=origin.address)
    assert status == 404
    assert origin.seen == [("GET", "/account/42"), ("POST", "/checkout")]


def await_get(hx: Running, path: str, method: str, host: str):
    return hx.get(path, host=host, method=method)


async def test_weights_affinity_drain_remove_and_reload(run_dir, haproxy, backends):
    a, b = backends("a"), backends("b")
    port = free_port()
    app = H.AppConf("shop", hosts=("shop.example.com",), affinity=True,
                    cookie_key="k3y0fth1sb4ck3nd", health_path="/healthz")
    hx = await haproxy(conf(run_dir, port, app))
    await hx.rt.add_server("shop", H.Server("a", a.address, weight=90), affinity=True)
    await hx.rt.add_server("shop", H.Server("b", b.address, weight=10), affinity=True)
    names = Counter(json.loads(hx.get("/")[2])["name"] for _ in range(200))
    assert 170 <= names["a"] <= 190 and names["a"] + names["b"] == 200, names
    # affinity: the dynamic cookie pins a user to one instance
    status, headers, body = hx.get("/")
    cookie = headers["set-cookie"].split(";")[0]
    first = json.loads(body)["name"]
    assert cookie.startswith("ES_shop=")
    assert {json.loads(hx.get("/", headers={"Cookie": cookie})[2])["name"]
            for _ in range(30)} == {first}
    # weights change live (a canary promoted)
    await hx.rt.set_weight("shop", "a", 0)
    assert {json.loads(hx.get("/")[2])["name"] for _ in range(20)} == {"b"}
    await hx.rt.set_weight("shop", "a", 50)
    # drain: no new requests, even for users pinned to it
    await hx.rt.drain("shop", "a")
    pinned_a = None
    for _ in range(40):
        st, hd, bd = hx.get("/", headers={"Cookie": cookie})
        assert json.loads(bd)["name"] == "b"
        pinned_a = pinned_a or hd.get("set-cookie")
    await hx.rt.remove_server("shop", "a")
    assert {s["svname"] for s in await hx.rt.show_stat() if s["pxname"] == "shop"} == {
        "b", H.ACTIVATOR, "BACKEND"}
    # a reload renders the current servers statically: they survive it
    before = await hx.proc.current_worker()
    hx.apply(conf(run_dir, port, H.AppConf(
        "shop", hosts=("shop.example.com",), affinity=True, cookie_key="k3y0fth1sb4ck3nd",
        health_path="/healthz", servers=(H.Server("b", b.address, weight=10),))))
    after = await hx.proc.reload()
    assert after != before
    assert json.loads(hx.get("/")[2])["name"] == "b"
    # the dynamic cookie of a server is the same after the reload (same address:port)
    st, hd, bd = hx.get("/")
    assert hd["set-cookie"].split(";")[0] == pinned_a.split(";")[0] if pinned_a else True


async def test_no_instance_goes_to_the_activator_backup(run_dir, haproxy):
    port = free_port()
    hx = await haproxy(conf(run_dir, port, H.AppConf("shop", hosts=("shop.example.com",))))
    seen = []

    async def handle(reader, writer):
        data = await reader.readuntil(b"\r\n\r\n")
        seen.append(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nConnection: close\r\n\r\nactivator")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path=str(hx.conf.activator_socket))
    try:
        status, _, body = await asyncio.to_thread(hx.get, "/catalog")
    finally:
        server.close()
    assert (status, body) == (200, b"activator")
    # the activator finds the app by the same routing key HAProxy used
    assert b"host: shop.example.com" in seen[0].lower()


async def test_adopt_a_running_haproxy_and_invalid_config_is_refused(run_dir, haproxy):
    port = free_port()
    hx = await haproxy(conf(run_dir, port, H.AppConf("shop", hosts=("shop.example.com",))))
    pid = hx.proc.pid
    again = H.HAProxyProcess(hx.conf, H.find_haproxy())
    await again.start()
    assert again.adopted and again.pid == pid
    (run_dir / "bad.cfg").write_text("frontend x\n  bind :notaport\n")
    with pytest.raises(H.HAProxyError, match="refuses"):
        again.validate(run_dir / "bad.cfg")
