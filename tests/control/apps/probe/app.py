"""probe: a test app whose behaviour the tests set through its environment (stdlib only).

    GET /healthz   200 "ok"
    GET /          200, body "<APP_VERSION> <instance id>"; header X-Probe-Version
    GET /slow      the same after SLOW_MS milliseconds (default 300)
    GET /headers   200, the request headers it got (JSON, names in lower case)
    POST /echo     200, the body back

FAIL_RATE (0..1): that share of the requests coming through the global dispatcher (they
carry X-Edgeshot-Region) answer 500 — a bug the warm-up and health checks do not see.
SIGTERM/SIGINT stop it (exit 0); SIGUSR2 reseeds (after a restore).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8000"))
VERSION = os.environ.get("APP_VERSION", "?")
FAIL_RATE = float(os.environ.get("FAIL_RATE", "0"))
SLOW_MS = int(os.environ.get("SLOW_MS", "300"))
ID = os.urandom(4).hex()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Probe-Version", VERSION)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/healthz":
            return self._send(200, b"ok")
        if self.path == "/headers":  # what reached the app, for the tests of the data path
            return self._send(200, json.dumps({k.lower(): v for k, v in
                                               self.headers.items()}).encode())
        if self.headers.get("X-Edgeshot-Region") and random.random() < FAIL_RATE:
            return self._send(500, b"broken build")
        if self.path.startswith("/slow"):
            time.sleep(SLOW_MS / 1000)
        self._send(200, f"{VERSION} {ID}".encode())

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length") or 0)
        self._send(200, self.rfile.read(n) if n else b"")

    def log_message(self, *args: object) -> None:
        pass


def _reseed(*_: object) -> None:
    global ID
    random.seed(os.urandom(16))
    ID = os.urandom(4).hex()


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    signal.signal(signal.SIGUSR2, _reseed)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
