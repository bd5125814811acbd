"""The example apps, run as real processes on loopback and exercised over real HTTP.

Each app is started as its own subprocess (its own session, so it and anything it spawns can
be killed as a group), on a free port, and waited for on /healthz. Every process is stopped
at the end of its test, passed or failed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOP_WEB = ROOT / "examples/shop/app/web.py"
SHOP_STORE = ROOT / "examples/shop/app/store.py"
CHECKOUT = ROOT / "examples/shop/origin/checkout.py"
HELLO = ROOT / "examples/hello/app.py"

START_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


def http(method: str, url: str, body: object = None, headers: dict | None = None) -> Resp:
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        hdrs["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return Resp(r.status, dict(r.headers), r.read())
    except urllib.error.HTTPError as e:
        with e:
            return Resp(e.code, dict(e.headers), e.read())


@dataclass
class App:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> Resp:
        return http("GET", self.url + path)

    def post(self, path: str, body: object, headers: dict | None = None) -> Resp:
        return http("POST", self.url + path, body, headers)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: anything it left behind
    except ProcessLookupError:
        pass
    proc.wait(timeout=5)


@pytest.fixture
def spawn(tmp_path):
    """spawn(script, env, health=True) -> App; every process is killed at teardown."""
    started: list[subprocess.Popen] = []

    def _spawn(script: Path, env: dict[str, str], port: int, health: str | None = "/healthz"):
        log = tmp_path / f"{script.stem}-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(script)],
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=script.parent,
            )
        started.append(proc)
        app = App(proc, port, log)
        if health is not None:
            wait_healthy(app, health)
        return app

    try:
        yield _spawn
    finally:
        for proc in reversed(started):
            _stop(proc)


def wait_healthy(app: App, path: str = "/healthz") -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if app.proc.poll() is not None:
            pytest.fail(f"process exited with {app.proc.returncode}:\n{app.output()}")
        try:
            r = app.get(path)
            if r.status == 200:
                return
            last = f"{r.status} {r.text!r}"
        except OSError as e:
            last = repr(e)
        time.sleep(0.02)
    pytest.fail(f"{app.url}{path} not healthy after {START_TIMEOUT}s ({last}):\n{app.output()}")


def wait_for(predicate, timeout: float = 3.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def shop(spawn):
    """start_shop() -> (web, store): a store, then a web tier pointed at it."""

    def start_shop() -> tuple[App, App]:
        store_port = free_port()
        store = spawn(SHOP_STORE, {"STORE_PORT": str(store_port)}, store_port)
        web_port = free_port()
        web = spawn(SHOP_WEB, {"PORT": str(web_port), "STORE_PORT": str(store_port)}, web_port)
        return web, store

    return start_shop


# --- shop: web + store ----------------------------------------------------------------------


def test_shop_catalog_lists_products_from_the_store(shop):
    web, _ = shop()
    r = web.get("/catalog")
    assert r.status == 200
    assert r.headers["Content-Type"] == "application/json"
    catalog = r.json()
    assert len(catalog) >= 5
    for p in catalog:
        assert set(p) >= {"id", "name", "price", "currency"}
    mug = web.get("/catalog/mug")
    assert mug.status == 200 and mug.json()["name"] == "Edgeshot mug"
    assert web.get("/catalog/nope").status == 404
    page = web.get("/")
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Edgeshot mug" in page.text
    assert r.headers["X-Edgeshot-Served-By"]
    assert r.headers["Connection"] == "close"


def test_shop_cart_post_then_get_returns_the_items(shop):
    web, store = shop()
    assert web.get("/cart/s1").json()["items"] == []
    r = web.post("/cart/s1", {"product": "mug", "qty": 2})
    assert r.status == 200, r.text
    assert web.post("/cart/s1", {"product": "tee", "qty": 1}).status == 200
    assert web.post("/cart/s1", {"product": "mug", "qty": 1}).status == 200
    cart = web.get("/cart/s1").json()
    assert [(i["product"], i["qty"]) for i in cart["items"]] == [("mug", 3), ("tee", 1)]
    assert cart["total"] == "60.50" and cart["currency"] == "EUR"  # 3 x 12.00 + 24.50
    # kept in the store tier, not in the web process
    stored = store.get("/kv/cart%3As1")
    assert stored.status == 200 and stored.json() == {"items": {"mug": 3, "tee": 1}}
    # bad input is refused, not stored
    assert web.post("/cart/s1", {"product": "nope", "qty": 1}).status == 404
    assert web.post("/cart/s1", {"product": "mug", "qty": 0}).status == 400
    assert web.post("/cart/s1", ["mug"]).status == 400
    assert web.post("/cart/bad%20session", {"product": "mug", "qty": 1}).status == 400
    assert web.get("/cart/s1").json()["items"][0]["qty"] == 3
    assert web.post("/catalog", {}).status == 405


def test_two_shop_instances_have_independent_carts(shop):
    web_a, _ = shop()
    web_b, _ = shop()
    assert web_a.post("/cart/same", {"product": "cap", "qty": 1}).status == 200
    assert web_b.post("/cart/same", {"product": "tote", "qty": 4}).status == 200
    a, b = web_a.get("/cart/same").json(), web_b.get("/cart/same").json()
    assert [(i["product"], i["qty"]) for i in a["items"]] == [("cap", 1)]
    assert [(i["product"], i["qty"]) for i in b["items"]] == [("tote", 4)]
    assert (
        web_a.get("/healthz").headers["X-Edgeshot-Served-By"]
        != web_b.get("/healthz").headers["X-Edgeshot-Served-By"]
    )


def test_shop_health_follows_the_store_tier(shop):
    web, store = shop()
    assert web.get("/healthz").status == 200
    _stop(store.proc)
    assert store.proc.returncode == 0  # SIGTERM is handled: a clean exit
    assert web.get("/healthz").status == 503
    assert web.get("/catalog").status == 502
    assert web.proc.poll() is None


def test_sigusr2_reseeds_the_instance_id_and_keeps_state(shop):
    web, store = shop()
    assert web.post("/cart/keep", {"product": "sticker", "qty": 5}).status == 200
    before = web.get("/healthz").headers["X-Edgeshot-Served-By"]
    web.proc.send_signal(signal.SIGUSR2)
    store.proc.send_signal(signal.SIGUSR2)
    wait_for(
        lambda: web.get("/healthz").headers["X-Edgeshot-Served-By"] != before,
        what="a new instance id after SIGUSR2",
    )
    assert web.get("/cart/keep").json()["items"][0]["qty"] == 5
    assert web.proc.poll() is None and store.proc.poll() is None
    assert "reseeded" in web.output()
    wait_for(lambda: "reseeded" in store.output(), what="the store's reseed log line")


# --- hello ----------------------------------------------------------------------------------


def test_hello_counts_the_requests_it_served(spawn):
    port = free_port()
    hello = spawn(HELLO, {"PORT": str(port)}, port)
    assert [hello.get("/").text for _ in range(3)] == [
        "hello from edgeshot #1\n",
        "hello from edgeshot #2\n",
        "hello from edgeshot #3\n",
    ]
    assert hello.get("/healthz").text == "ok\n"  # health checks do not count
    before = hello.get("/healthz").headers["X-Edgeshot-Served-By"]
    hello.proc.send_signal(signal.SIGUSR2)
    wait_for(
        lambda: hello.get("/healthz").headers["X-Edgeshot-Served-By"] != before,
        what="a new instance id after SIGUSR2",
    )
    assert hello.get("/").text == "hello from edgeshot #4\n"  # state kept across a reseed
    assert hello.get("/nope").status == 404
    # each process has its own counter
    port2 = free_port()
    other = spawn(HELLO, {"PORT": str(port2)}, port2)
    assert other.get("/").text == "hello from edgeshot #1\n"
    _stop(hello.proc)
    assert hello.proc.returncode == 0


# --- origin: checkout -----------------------------------------------------------------------


def test_checkout_returns_distinct_order_ids_and_records_them(spawn):
    port = free_port()
    origin = spawn(CHECKOUT, {"PORT": str(port)}, port)
    cart = {"user": "alice", "items": [{"product": "mug", "qty": 2}]}
    first, second = origin.post("/checkout", cart), origin.post("/checkout", cart)
    assert first.status == 201 and second.status == 201
    ids = {first.json()["order"], second.json()["order"]}
    assert len(ids) == 2 and all(i.startswith("ord_") for i in ids)
    # a retried request with the same Idempotency-Key does not order twice
    key = {"Idempotency-Key": "retry-1"}
    third, retry = origin.post("/checkout", cart, key), origin.post("/checkout", cart, key)
    assert third.status == 201 and retry.status == 200
    assert retry.json()["order"] == third.json()["order"]
    account = origin.get("/account/alice").json()
    assert [o["order"] for o in account["orders"]] == [
        first.json()["order"],
        second.json()["order"],
        third.json()["order"],
    ]
    assert account["orders"][0]["items"] == [{"product": "mug", "qty": 2}]
    assert origin.get("/account/bob").json() == {"user": "bob", "orders": []}
    assert origin.post("/checkout", {"user": "alice", "items": []}).status == 400
    assert origin.post("/checkout", {"user": "alice"}).status == 400
    bad_qty = {"user": "alice", "items": [{"product": "mug", "qty": "2"}]}
    assert origin.post("/checkout", bad_qty).status == 400
    assert origin.get("/checkout").status == 405
    assert len(origin.get("/account/alice").json()["orders"]) == 3
