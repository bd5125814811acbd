"""A test app whose capacity is known by construction (stdlib only).

It serves at most ``CAP_N`` requests at once, each taking ``SERVICE_MS`` milliseconds:
one instance sustains ``CAP_N`` concurrent users at a response time of ``SERVICE_MS``;
one user more and some requests wait a whole service time more.

    GET /          200 $BODY ("ok") after SERVICE_MS (at most CAP_N at once)
    GET /version   200 $BODY at once
    GET /headers   200, the names of the X-Edgeshot-* headers the app received
    GET /fail      500 (at once; the dashboards' error figures)
    GET /healthz   200 (at once)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8000"))
CAP_N = int(os.environ.get("CAP_N", "64"))
SERVICE_S = float(os.environ.get("SERVICE_MS", "20")) / 1000
BODY = os.environ.get("BODY", "ok")
slots = threading.BoundedSemaphore(CAP_N)


class Handler(BaseHTTPRequestHandler):
    # one request per connection (as hello): nothing established for CRIU to refuse
    protocol_version = "HTTP/1.0"

    def reply(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self.reply(200, "ok\n")
        elif path == "/version":  # $BODY at once (which version answered)
            self.reply(200, BODY + "\n")
        elif path == "/headers":  # which edgeshot headers reached the app
            self.reply(200, "\n".join(sorted(k.lower() for k in self.headers
                                              if k.lower().startswith("x-edgeshot"))))
        elif path == "/fail":
            self.reply(500, "failing on purpose\n")
        elif path == "/":
            with slots:
                time.sleep(SERVICE_S)
            self.reply(200, BODY + "\n")
        else:
            self.reply(404, "not found\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that went away (a load test stopping): nothing to report


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGUSR2, lambda *_: None)
    Server(("0.0.0.0", PORT), Handler).serve_forever()


if __name__ == "__main__":
    main()
