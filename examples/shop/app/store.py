"""Shop, store tier: in-memory key/value and product store (stdlib only, Python 3.11).

Run by hand:  STORE_PORT=7001 python3 store.py

Listens on 127.0.0.1 only: inside a pod the tiers talk over the pod's own loopback, so the
store is never reachable from outside the instance.

Environment
    STORE_PORT  port to listen on, 127.0.0.1 only; default 7001. ``$PORT`` is ignored on
                purpose (it is the entry tier's port): give both tiers the same STORE_PORT.

Routes (all responses are ``Connection: close``, HTTP/1.0)
    GET /healthz      200 "ok"
    GET /products     JSON list of the seeded products:
                      [{"id", "name", "price" (decimal string), "currency"}, ...]
    GET /kv/<key>     the stored bytes (Content-Type as stored, default
                      application/octet-stream), 404 if absent
    PUT /kv/<key>     store the body (Content-Length required, at most 1 MiB), 204
    <key> is URL-decoded, at most 256 characters.

All state lives in this process's memory: two copies (two pods, or two processes on
different ports) have independent state; a snapshot/restore keeps it; a cold start loses it.

Reseed after a restore: SIGUSR2 reseeds Python's ``random`` from ``os.urandom`` and logs
``reseeded``; the data is kept. SIGTERM and SIGINT stop the server with exit status 0.
One log line per request goes to stdout; failures to write logs are ignored.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

STORE_PORT = int(os.environ.get("STORE_PORT", "7001"))
HOST = "127.0.0.1"
MAX_VALUE = 1024 * 1024
MAX_KEY = 256

PRODUCTS = [
    {"id": "mug", "name": "Edgeshot mug", "price": "12.00", "currency": "EUR"},
    {"id": "tee", "name": "Snapshot T-shirt", "price": "24.50", "currency": "EUR"},
    {"id": "cap", "name": "Edgepoint cap", "price": "18.00", "currency": "EUR"},
    {"id": "sticker", "name": "Appshot sticker pack", "price": "3.90", "currency": "EUR"},
    {"id": "tote", "name": "Origin tote bag", "price": "9.99", "currency": "EUR"},
]

_lock = threading.Lock()
_kv: dict[str, tuple[str, bytes]] = {}  # key -> (content type, value)


def log(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def reseed(signum: int | None = None, frame: object = None) -> None:
    random.seed(os.urandom(32))
    log(f"store pid {os.getpid()} reseeded")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


class Handler(BaseHTTPRequestHandler):
    server_version = "edgeshot-shop-store/0.1"
    timeout = 30

    def send_body(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        if status != 204:  # a 204 carries neither a body nor its headers
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, status: int, message: str) -> None:
        self.send_body(status, json.dumps({"error": message}).encode())

    def log_message(self, format: str, *args: object) -> None:
        log(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} store {self.client_address[0]} {format % args}")

    def _kv_key(self) -> str | None:
        """The key of a /kv/<key> request; None (with the response sent) otherwise."""
        path = urlsplit(self.path).path
        if not path.startswith("/kv/"):
            if path in ("/healthz", "/products"):
                self.send_error_json(405, "method not allowed")
            else:
                self.send_error_json(404, "not found")
            return None
        key = unquote(path[len("/kv/") :])
        if not key or len(key) > MAX_KEY:
            self.send_error_json(400, f"key must be 1-{MAX_KEY} characters")
            return None
        return key

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self.send_body(200, b"ok\n", "text/plain; charset=utf-8")
            return
        if path == "/products":
            self.send_body(200, json.dumps(PRODUCTS).encode())
            return
        key = self._kv_key()
        if key is None:
            return
        with _lock:
            item = _kv.get(key)
        if item is None:
            self.send_error_json(404, "no such key")
        else:
            self.send_body(200, item[1], item[0])

    def do_PUT(self) -> None:
        key = self._kv_key()
        if key is None:
            return
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error_json(411, "send a Content-Length, not a chunked body")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.send_error_json(411, "Content-Length required")
            return
        if length < 0 or length > MAX_VALUE:
            self.send_error_json(413, f"value larger than {MAX_VALUE} bytes")
            return
        value = self.rfile.read(length)
        ctype = self.headers.get("Content-Type", "application/octet-stream")
        with _lock:
            _kv[key] = (ctype, value)
        self.send_body(204, b"")


def main() -> None:
    signal.signal(signal.SIGUSR2, reseed)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = ThreadingHTTPServer((HOST, STORE_PORT), Handler)
    log(f"store pid {os.getpid()} listening on {HOST}:{STORE_PORT}, {len(PRODUCTS)} products")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        log(f"store pid {os.getpid()} stopped")


if __name__ == "__main__":
    main()
