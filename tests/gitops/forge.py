"""A stand-in for GitHub's and GitLab's REST endpoints of pull-request comments, served
over real HTTP on loopback (a thread), keeping comments in memory.

Only what the plan comment uses: list (paginated by per_page/page), create, edit. It
checks the token as each platform does (GitHub: `Authorization: Bearer`; GitLab:
`PRIVATE-TOKEN`) and refuses bodies above the platform's limit as the real ones do.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LIMIT = {"github": 65_536, "gitlab": 1_000_000}


@dataclass
class Forge:
    platform: str
    token: str
    project: str            # owner/name (GitHub) or a project id or path (GitLab)
    number: int
    comments: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    next_id: int = 1000
    url: str = ""

    def add(self, body: str, **extra: Any) -> dict[str, Any]:
        self.next_id += 1
        c = {"id": self.next_id, "body": body, **extra}
        c["html_url" if self.platform == "github" else "url"] = f"{self.url}/c/{self.next_id}"
        self.comments.append(c)
        return c


def _routes(forge: Forge) -> tuple[re.Pattern[str], re.Pattern[str]]:
    if forge.platform == "github":
        return (re.compile(rf"^/repos/{re.escape(forge.project)}/issues/{forge.number}/comments$"),
                re.compile(rf"^/repos/{re.escape(forge.project)}/issues/comments/(\d+)$"))
    notes = rf"^/projects/{re.escape(forge.project)}/merge_requests/{forge.number}/notes"
    return re.compile(notes + "$"), re.compile(notes + r"/(\d+)$")


class _Handler(BaseHTTPRequestHandler):
    forge: Forge

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, data: Any) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _authorized(self) -> bool:
        f = self.forge
        if f.platform == "github":
            return self.headers.get("Authorization") == f"Bearer {f.token}"
        return self.headers.get("PRIVATE-TOKEN") == f.token

    def _handle(self, method: str) -> None:
        f = self.forge
        parts = urlsplit(self.path)
        path = unquote(parts.path)  # GitLab's project path arrives %-encoded
        f.requests.append((method, self.path, dict(self.headers)))
        if not self._authorized():
            return self._send(401, {"message": "Bad credentials"})
        listing, one = _routes(f)
        body = None
        if method in ("POST", "PATCH", "PUT"):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["body"]
            if len(body) > LIMIT[f.platform]:
                return self._send(422, {"message": "Validation Failed: body is too long"})
        if listing.match(path):
            if method == "GET":
                q = parse_qs(parts.query)
                per, page = int(q.get("per_page", ["30"])[0]), int(q.get("page", ["1"])[0])
                return self._send(200, f.comments[(page - 1) * per:page * per])
            if method == "POST":
                return self._send(201, f.add(body))
        m = one.match(path)
        edit = "PATCH" if f.platform == "github" else "PUT"
        if m and method == edit:
            for c in f.comments:
                if c["id"] == int(m.group(1)):
                    c["body"] = body
                    return self._send(200, c)
        return self._send(404, {"message": "Not Found"})

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PATCH(self) -> None:  # noqa: N802
        self._handle("PATCH")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")


class ForgeServer:
    """``with ForgeServer(forge) as url:`` serves ``forge`` at ``url`` until the block ends."""

    def __init__(self, forge: Forge) -> None:
        handler = type("Handler", (_Handler,), {"forge": forge})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.forge = forge
        forge.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return self.forge.url

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
