"""A stand-in for an edgepoint's HTTP entry, run as its own process so tests can kill it.

    python fake_edge.py NAME ADDRESS PORT

Answers every request with 200 and a JSON body naming itself, the region header
the dispatcher set and the request's method and path; ``/slow`` waits 300 ms
first. HTTP/1.1 with keep-alive, like an edgepoint's HAProxy.
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    name, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path.startswith("/slow"):
                time.sleep(0.3)
            body = json.dumps({"edgepoint": name, "region": self.headers.get("X-Edgeshot-Region"),
                               "method": self.command, "path": self.path}).encode()
            # Status, headers and body in one write: a kill lands before or after the
            # response, never inside it (an edgepoint's HAProxy answers small bodies so too).
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n").encode()
            self.wfile.write(head + body)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # clients (HAProxy's checks, killed peers) hang up: nothing to report

    Server((address, port), Handler).serve_forever()


if __name__ == "__main__":
    main()
