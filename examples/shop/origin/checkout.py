"""Shop, origin app: checkout and accounts (stdlib only, Python 3.11).

This part stays at the provider's origin site: the shop's cleave sends ``/checkout`` and
``/account/`` there; everything else of the shop runs at the edge (``../app``).

Run by hand:  PORT=9000 python3 checkout.py

Environment
    PORT         port to listen on, all interfaces (0.0.0.0); default 8000
    CHECKOUT_DB  SQLite database file for orders; default ":memory:" (orders live as long
                 as the process)

Routes (all responses are ``Connection: close``, HTTP/1.0)
    GET  /healthz          200 "ok" (after a trivial query on the database)
    POST /checkout         JSON body {"user": u, "items": [{"product": id, "qty": n}, ...]};
                           records the order in one SQLite transaction; 201
                           {"order": "ord_<16 hex>", "user", "items", "created"}.
                           Optional header ``Idempotency-Key`` (1-128 characters): the same
                           key for the same user returns the first order again (200) instead
                           of creating a second one, so a retried request is not charged twice.
    GET  /account/<user>   {"user": u, "orders": [...]}, oldest first (empty list if none)
    <user> is 1-64 characters of [A-Za-z0-9_.@-]; qty is an integer from 1 to 1000.

Order ids come from ``secrets`` (the OS random source), so they stay unique even in copies
restored from one snapshot. SIGTERM and SIGINT stop the server with exit status 0. One log
line per request goes to stdout; failures to write logs are ignored.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

PORT = int(os.environ.get("PORT", "8000"))
DB_PATH = os.environ.get("CHECKOUT_DB", ":memory:")
MAX_BODY = 64 * 1024
MAX_ITEMS = 100
MAX_QTY = 1000
USER_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
PRODUCT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    idempotency_key TEXT,
    created TEXT NOT NULL,
    UNIQUE (user, idempotency_key)
);
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL REFERENCES orders(id),
    line INTEGER NOT NULL,
    product TEXT NOT NULL,
    qty INTEGER NOT NULL,
    PRIMARY KEY (order_id, line)
);
"""

_db_lock = threading.Lock()
_db = sqlite3.connect(DB_PATH, check_same_thread=False, isolation_level=None)
_db.executescript(SCHEMA)


def log(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _order(order_id: str) -> dict:
    user, created = _db.execute(
        "SELECT user, created FROM orders WHERE id = ?", (order_id,)
    ).fetchone()
    items = [
        {"product": p, "qty": q}
        for p, q in _db.execute(
            "SELECT product, qty FROM order_items WHERE order_id = ? ORDER BY line", (order_id,)
        )
    ]
    return {"order": order_id, "user": user, "items": items, "created": created}


def place_order(user: str, items: list[dict], key: str | None) -> tuple[bool, dict]:
    """Record an order in one transaction. Returns (created, order)."""
    with _db_lock:
        _db.execute("BEGIN IMMEDIATE")
        try:
            row = None
            if key is not None:
                row = _db.execute(
                    "SELECT id FROM orders WHERE user = ? AND idempotency_key = ?", (user, key)
                ).fetchone()
            if row is not None:
                created, order = False, _order(row[0])
            else:
                order_id = "ord_" + secrets.token_hex(8)
                _db.execute(
                    "INSERT INTO orders (id, user, idempotency_key, created) VALUES (?, ?, ?, ?)",
                    (order_id, user, key, datetime.now(UTC).isoformat(timespec="milliseconds")),
                )
                _db.executemany(
                    "INSERT INTO order_items (order_id, line, product, qty) VALUES (?, ?, ?, ?)",
                    [(order_id, n, it["product"], it["qty"]) for n, it in enumerate(items)],
                )
                created, order = True, _order(order_id)
        except BaseException:
            _db.execute("ROLLBACK")
            raise
        _db.execute("COMMIT")
        return created, order


def account(user: str) -> dict:
    with _db_lock:
        ids = [
            r[0]
            for r in _db.execute(
                "SELECT id FROM orders WHERE user = ? ORDER BY created, rowid", (user,)
            )
        ]
        return {"user": user, "orders": [_order(i) for i in ids]}


def validate_checkout(body: object) -> tuple[str, list[dict]]:
    if not isinstance(body, dict):
        raise HTTPError(400, 'body must be {"user": u, "items": [{"product": id, "qty": n}]}')
    user, items = body.get("user"), body.get("items")
    if not isinstance(user, str) or not USER_RE.match(user):
        raise HTTPError(400, "user must be 1-64 characters of [A-Za-z0-9_.@-]")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_ITEMS:
        raise HTTPError(400, f"items must be a list of 1 to {MAX_ITEMS} items")
    clean = []
    for n, it in enumerate(items):
        if not isinstance(it, dict):
            raise HTTPError(400, f"items[{n}] must be an object")
        pid, qty = it.get("product"), it.get("qty")
        if not isinstance(pid, str) or not PRODUCT_RE.match(pid):
            raise HTTPError(400, f"items[{n}].product must be a product id")
        if isinstance(qty, bool) or not isinstance(qty, int) or not 1 <= qty <= MAX_QTY:
            raise HTTPError(400, f"items[{n}].qty must be an integer from 1 to {MAX_QTY}")
        clean.append({"product": pid, "qty": qty})
    return user, clean


class Handler(BaseHTTPRequestHandler):
    server_version = "edgeshot-shop-checkout/0.1"
    timeout = 30

    def send_body(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, obj: object, extra: dict | None = None) -> None:
        self.send_body(status, json.dumps(obj).encode(), "application/json", extra)

    def log_message(self, format: str, *args: object) -> None:
        log(
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} checkout {self.client_address[0]} "
            f"{format % args}"
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

    def handle_errors(self, fn) -> None:
        try:
            fn()
        except HTTPError as e:
            extra = {"Allow": "POST"} if e.status == 405 else None
            self.send_json(e.status, {"error": e.message}, extra)
        except sqlite3.Error as e:
            self.log_message("database error: %s", e)
            self.send_json(500, {"error": "database error"})

    def do_GET(self) -> None:
        self.handle_errors(self._get)

    def do_POST(self) -> None:
        self.handle_errors(self._post)

    def _get(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            with _db_lock:
                _db.execute("SELECT 1").fetchone()
            self.send_body(200, b"ok\n", "text/plain; charset=utf-8")
        elif path.startswith("/account/"):
            user = unquote(path[len("/account/") :])
            if not USER_RE.match(user):
                raise HTTPError(400, "user must be 1-64 characters of [A-Za-z0-9_.@-]")
            self.send_json(200, account(user))
        elif path == "/checkout":
            raise HTTPError(405, "use POST")
        else:
            raise HTTPError(404, "not found")

    def _post(self) -> None:
        if urlsplit(self.path).path != "/checkout":
            raise HTTPError(404, "not found")
        key = self.headers.get("Idempotency-Key")
        if key is not None and not 1 <= len(key) <= 128:
            raise HTTPError(400, "Idempotency-Key must be 1-128 characters")
        user, items = validate_checkout(self.read_json())
        created, order = place_order(user, items, key)
        self.send_json(201 if created else 200, order, {"Location": f"/account/{user}"})


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    log(f"checkout pid {os.getpid()} listening on 0.0.0.0:{PORT}, orders in {DB_PATH}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        with _db_lock:
            _db.close()
        log(f"checkout pid {os.getpid()} stopped")


if __name__ == "__main__":
    main()
