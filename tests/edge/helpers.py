"""Small real things for the edge tests: HTTP backends on loopback, a client, waiting."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Backend:
    """An HTTP server on loopback answering JSON {name, method, path, headers it saw};
    ``/slow`` waits ``slow_s``; ``/healthz`` answers ok. Counts requests."""

    def __init__(self, name: str, host: str = "127.0.0.1", slow_s: float = 0.3) -> None:
        self.name = name
        self.requests = 0
        self.seen: list[tuple[str, str]] = []
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body_in = self.rfile.read(n) if n else b""
                if self.path != "/healthz":
                    outer.requests += 1
                    outer.seen.append((self.command, self.path))
                if self.path.startswith("/slow"):
                    time.sleep(slow_s)
                body = json.dumps({"name": outer.name, "method": self.command,
                                   "path": self.path, "len": len(body_in),
                                   "host": self.headers.get("Host"),
                                   "app": self.headers.get("X-Edgeshot-App"),
                                   "region": self.headers.get("X-Edgeshot-Region"),
                                   "forwarded_for": self.headers.get("X-Forwarded-For")
                                   }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

            def log_message(self, *a: object) -> None:
                pass

        class S(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass

        self.server = S((host, 0), H)
        self.port = self.server.server_address[1]
        self.address = f"{host}:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def request(host: str, port: int, path: str = "/", *, method: str = "GET",
            headers: dict[str, str] | None = None, body: bytes | None = None,
            timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def wait_for(pred, timeout: float = 10, every: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Hammer:
    """``n`` threads sending ``path`` to an edgepoint in a loop until stopped; counts answers
    by status (connection errors as 0)."""

    def __init__(self, host: str, port: int, path: str, n: int, headers: dict[str, str],
                 method: str = "GET") -> None:
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    st, _, _ = request(host, port, path, method=method, headers=headers,
                                       timeout=30)
                except (OSError, http.client.HTTPException):  # refused, reset, cut short
                    st = 0
                with self._lock:
                    self.statuses[st] = self.statuses.get(st, 0) + 1

        self.threads = [threading.Thread(target=loop, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def stop(self) -> dict[int, int]:
        self._stop.set()
        for t in self.threads:
            t.join(timeout=60)
        return dict(self.statuses)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())
