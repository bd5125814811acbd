"""hello: the smallest useful edgeshot app (stdlib only, Python 3.11).

Run by hand:  PORT=8000 python3 app.py   then   curl localhost:8000/

Environment
    PORT  port to listen on, all interfaces (0.0.0.0); default 8000

Routes (all responses are ``Connection: close``, HTTP/1.0)
    GET /         200 "hello from edgeshot #N": N counts the ``GET /`` requests this process
                  has served, this one included. The counter lives in memory: a
                  snapshot/restore keeps it (a restored copy continues from N), a cold start
                  begins again at 1.
    GET /healthz  200 "ok" (does not count)

Every response carries ``X-Edgeshot-Served-By: <hostname>-<pid>-<8 random hex>``, the id of
this process, drawn from ``os.urandom`` at start-up and on every reseed.

Reseed after a restore: send **SIGUSR2**. It reseeds Python's ``random`` from ``os.urandom``
and draws a new instance id (logged as ``reseeded <old> -> <new>``); the counter is kept.
SIGTERM and SIGINT stop the server with exit status 0 (a restored PID 1 ignores SIGTERM
without a handler). One log line per request goes to stdout; failures to write are ignored.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

PORT = int(os.environ.get("PORT", "8000"))

_lock = threading.Lock()
_count = 0


def _new_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{os.urandom(4).hex()}"


INSTANCE_ID = _new_instance_id()


def log(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


def reseed(signum: int | None = None, frame: object = None) -> None:
    global INSTANCE_ID
    random.seed(os.urandom(32))
    old, INSTANCE_ID = INSTANCE_ID, _new_instance_id()
    log(f"reseeded {old} -> {INSTANCE_ID}")


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


class Handler(BaseHTTPRequestHandler):
    server_version = "edgeshot-hello/0.1"
    timeout = 30

    def send_text(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def end_headers(self) -> None:
        self.send_header("X-Edgeshot-Served-By", INSTANCE_ID)
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:
        log(
            f"{time.strftime('%Y-%m-%dT%H:%M:%S')} hello {INSTANCE_ID} "
            f"{self.client_address[0]} {format % args}"
        )

    def do_GET(self) -> None:
        global _count
        path = urlsplit(self.path).path
        if path == "/healthz":
            self.send_text(200, "ok\n")
        elif path == "/":
            with _lock:
                _count += 1
                n = _count
            self.send_text(200, f"hello from edgeshot #{n}\n")
        else:
            self.send_text(404, "not found\n")


def main() -> None:
    signal.signal(signal.SIGUSR2, reseed)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    log(f"hello {INSTANCE_ID} listening on 0.0.0.0:{PORT}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        log(f"hello {INSTANCE_ID} stopped")


if __name__ == "__main__":
    main()
