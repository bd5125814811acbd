"""Shop, web tier: the entry tier of the shop's edge part (stdlib only, Python 3.11).

Run by hand:  STORE_PORT=7001 python3 store.py &  PORT=8000 STORE_PORT=7001 python3 web.py

Environment
    PORT        port to listen on, all interfaces (0.0.0.0); default 8000
    STORE_PORT  port of the store tier on 127.0.0.1; default 7001

Routes (all responses are ``Connection: close``, HTTP/1.0)
    GET  /                  tiny HTML page listing the catalog
    GET  /healthz           200 "ok" only when the store tier answers its own /healthz; else 503
    GET  /catalog           JSON list of products (from the store tier)
    GET  /catalog/<id>      one product, 404 if unknown
    GET  /cart/<session>    JSON cart: items with name, price, line total, and the total
    POST /cart/<session>    JSON body {"product": id, "qty": n}: adds n (1..1000) of the
                            product to the cart (quantities add up); returns the cart.
                            The cart is kept in the store tier under key ``cart:<session>``.
    <session> is 1-64 characters of [A-Za-z0-9_-]. Store down: 502 {"error": ...}.

Every response carries ``X-Edgeshot-Served-By: <hostname>-<pid>-<8 random hex>``: the id of this
process, drawn from ``os.urandom`` at start-up and again on every reseed; and
``X-Edgeshot-Request: N``: the number of requests this process has served, this one included
(a per-process counter: it survives a snapshot/restore, it does not survive a cold start).

Reseed after a restore: send **SIGUSR2** to the process. The handler reseeds Python's ``random``
from ``os.urandom``, recomputes the instance id (hostname included, since the copy may run on
another server) and logs ``reseeded <old> -> <new>``. Per-process state (the request counter) is
kept. Copies restored from one appshot share the same id and random state until reseeded; to
check that the reseed happened, compare ``X-Edgeshot-Served-By`` of ``/healthz`` with the id
captured before the dump. SIGUSR2 is not reachable over HTTP, so users cannot trigger it. The
store tier handles SIGUSR2 the same way: signal every process of the pod.

SIGTERM and SIGINT stop the server with exit status 0 (a handler is installed on purpose: a
restored PID 1 ignores SIGTERM without one). No connection is kept open between requests
(neither to clients nor to the store tier), so a drained instance holds no TCP connection
when it is dumped. One log line per request goes to stdout; failures to write logs are ignored.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import random
import re
import signal
import socket
import sys
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, urlsplit

PORT = int(os.environ.get("PORT", "8000"))
STORE_PORT = int(os.environ.get("STORE_PORT", "7001"))
STORE_HOST = "127.0.0.1"
STORE_TIMEOUT = 2.0
MAX_BODY = 64 * 1024
MAX_QTY = 1000
SESSION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_cart_lock = threading.Lock()  # serialises read-modify-write of carts in this process
_counter_lock = threading.Lock()
_requests_served = 0


def _new_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"


INSTANCE_ID = _new_instance_id()


def log(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # a log sink that went away must not take the app down


def reseed(signum: int | None = None, frame: object = None) -> None:
    """SIGUSR2: fresh randomness and a fresh instance id for a restored copy."""
    global INSTANCE_ID
    random.seed(os.urandom(32))
    old, INSTANCE_ID = INSTANCE_ID, _new_instance_id()
    log(f"reseeded {old} -> {INSTANCE_ID}")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


# --- the store tier -------------------------------------------------------------------------


class StoreUnavailable(Exception):
    pass


def store_call(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(STORE_HOST, STORE_PORT, timeout=STORE_TIMEOUT)
    try:
        headers = {"Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise StoreUnavailable(f"store tier at {STORE_HOST}:{STORE_PORT}: {exc}") from exc
    finally:
        conn.close()


def products() -> list[dict]:
    status, data = store_call("GET", "/products")
    if status != 200:
        raise StoreUnavailable(f"store tier answered {status} to GET /products")
    return json.loads(data)


def cart_key(session: str) -> str:
    return "/kv/" + quote(f"cart:{session}", safe="")


def load_cart(session: str) -> dict[str, int]:
    status, data = store_call("GET", cart_key(session))
    if status == 404:
        return {}
    if status != 200:
        raise StoreUnavailable(f"store tier answered {status} to GET {cart_key(session)}")
    return json.loads(data)["items"]


def save_cart(session: str, items: dict[str, int]) -> None:
    status, _ = store_call("PUT", cart_key(session), json.dumps({"items": items}).encode())
    if status not in (200, 204):
        raise StoreUnavailable(f"store tier answered {status} to PUT {cart_key(session)}")


def render_cart(session: str, items: dict[str, int], catalog: list[dict]) -> dict:
    by_id = {p["id"]: p for p in catalog}
    lines, total, currency = [], Decimal("0"), None
    for pid, qty in items.items():
        p = by_id.get(pid)
        if p is None:  # product withdrawn since it was added
            continue
        line_total = Decimal(p["price"]) * qty
        total += line_total
        currency = currency or p["currency"]
        lines.append(
            {
                "product": pid,
                "name": p["name"],
                "qty": qty,
                "price": p["price"],
                "line_total": str(line_total),
            }
        )
    currency = currency or (catalog[0]["currency"] if catalog else None)
    return {"session": session, "items": lines, "total": str(total), "currency": currency}


# --- HTTP -----------------------------------------------------------------------------------


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Handler(BaseHTTPRequestHandler):
    server_version = "edgeshot-shop-web/0.1"
    timeout = 30  # seconds a client may take to send its request

    # routes: (pattern, {method: handler name})
    ROUTES = [
        (re.compile(r"^/$"), {"GET": "page"}),
        (re.compile(r"^/healthz$"), {"GET": "healthz"}),
        (re.compile(r"^/catalog$"), {"GET": "catalog"}),
        (re.compile(r"^/catalog/(?P<pid>[^/]+)$"), {"GET": "product"}),
        (re.compile(r"^/cart/(?P<session>[^/]+)$"), {"GET": "get_cart", "POST": "post_cart"}),
    ]

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def do_PUT(self) -> None:
        self.dispatch("PUT")

    def do_DELETE(self) -> None:
        self.dispatch("DELETE")

    def dispatch(self, method: str) -> None:
        global _requests_served
        with _counter_lock:
            _requests_served += 1
            self.seq = _requests_served
        path = urlsplit(self.path).path
        try:
            for pattern, methods in self.ROUTES:
                m = pattern.match(path)
                if m is None:
                    continue
                name = methods.get(method)
                if name is None:
                    raise HTTPError(405, "method not allowed", {"Allow": ", ".join(methods)})
                getattr(self, name)(**m.groupdict())
                return
            raise HTTPError(404, "not found")
        except HTTPError as e:
            self.send_json(e.status, {"error": e.message}, e.headers)
        except StoreUnavailable as e:
            self.log_message("store unavailable: %s", e)
            self.send_json(502, {"error": "store unavailable"})

    # --- responses

    def end_headers(self) -> None:
        self.send_header("X-Edgeshot-Served-By", INSTANCE_ID)
        if getattr(self, "seq", None) is not None:
            self.send_header("X-Edgeshot-Request", str(self.seq))
        super().end_headers()

    def send_body(
        self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: object, headers: dict[str, str] | None = None) -> None:
        self.send_body(status, json.dumps(obj).encode(), "application/json", headers)

    def send_text(self, status: int, text: str) -> None:
        self.send_body(status, text.encode(), "text/plain; charset=utf-8")

    def log_message(self, format: str, *args: object) -> None:
        log(
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} web {INSTANCE_ID} "
            f"{self.client_address[0]} {format % args}"
        )

    def read_json(self) -> object:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raise HTTPError(411, "send a Content-Length, not a chunked body")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            raise HTTPError(411, "Content-Length required") from None
        if length < 0 or length > MAX_BODY:
            raise HTTPError(413, f"body larger than {MAX_BODY} bytes")
        try:
            return json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError):
            raise HTTPError(400, "body is not JSON") from None

    # --- routes

    def page(self) -> None:
        rows = "".join(
            f"<li><code>{html.escape(p['id'])}</code> {html.escape(p['name'])}: "
            f"{html.escape(p['price'])} {html.escape(p['currency'])}</li>"
            for p in products()
        )
        body = (
            "<!doctype html><html><head><meta charset='utf-8'><title>edgeshot shop</title>"
            "</head><body><h1>edgeshot shop</h1>"
            f"<ul>{rows}</ul>"
            "<p>Cart: <code>POST /cart/&lt;session&gt;</code> "
            'with <code>{"product": id, "qty": n}</code>. '
            "Checkout: <code>POST /checkout</code> (served by the origin).</p>"
            f"<p><small>served by {html.escape(INSTANCE_ID)}</small></p>"
            "</body></html>"
        )
        self.send_body(200, body.encode(), "text/html; charset=utf-8")

    def healthz(self) -> None:
        try:
            status, body = store_call("GET", "/healthz")
        except StoreUnavailable as e:
            self.log_message("health: %s", e)
            self.send_text(503, "store unavailable\n")
            return
        if status == 200 and body.strip() == b"ok":
            self.send_text(200, "ok\n")
        else:
            self.send_text(503, f"store answered {status}\n")

    def catalog(self) -> None:
        self.send_json(200, products())

    def product(self, pid: str) -> None:
        for p in products():
            if p["id"] == pid:
                self.send_json(200, p)
                return
        raise HTTPError(404, f"no product {pid!r}")

    def _session(self, session: str) -> str:
        if not SESSION_RE.match(session):
            raise HTTPError(400, "session must be 1-64 characters of [A-Za-z0-9_-]")
        return session

    def get_cart(self, session: str) -> None:
        session = self._session(session)
        self.send_json(200, render_cart(session, load_cart(session), products()))

    def post_cart(self, session: str) -> None:
        session = self._session(session)
        body = self.read_json()
        if not isinstance(body, dict):
            raise HTTPError(400, 'body must be {"product": id, "qty": n}')
        pid, qty = body.get("product"), body.get("qty", 1)
        if not isinstance(pid, str):
            raise HTTPError(400, "product must be a product id (string)")
        if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
            raise HTTPError(400, f"qty must be an integer from 1 to {MAX_QTY}")
        catalog = products()
        if pid not in {p["id"] for p in catalog}:
            raise HTTPError(404, f"no product {pid!r}")
        with _cart_lock:
            items = load_cart(session)
            items[pid] = min(items.get(pid, 0) + qty, MAX_QTY)
            save_cart(session, items)
        self.send_json(200, render_cart(session, items, catalog))


def main() -> None:
    signal.signal(signal.SIGUSR2, reseed)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    log(f"web {INSTANCE_ID} listening on 0.0.0.0:{PORT}, store at {STORE_HOST}:{STORE_PORT}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        log(f"web {INSTANCE_ID} stopped")


if __name__ == "__main__":
    main()
