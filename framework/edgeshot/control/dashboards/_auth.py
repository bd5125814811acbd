"""Who is looking: a bearer token in a header (the JSON API, scripts), or a session cookie
set by the login form (the pages, and the pages' own refreshes).

The login form posts the token (never in a URL); the controller answers with a random
session id in an ``HttpOnly; SameSite=Strict`` cookie scoped to ``/dash``, and keeps
only the id's SHA-256 and the *hash* of the token that logged in. Each request maps the
session back to that token's current record in the controller's token file: a token
removed from the file ends its sessions at once, and a token's scopes are always the
file's. Nothing here logs a token or a session id.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Any

from aiohttp import web

from edgeshot.agent import auth
from edgeshot.agent.auth import Principal

log = logging.getLogger("edgeshot.dashboards")

COOKIE = "edgeshot_dash"
SESSION_S = 12 * 3600
DASHBOARD_SCOPES = ("operator", "owner:*", "vendor:*")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def may_use_dashboards(p: Principal) -> bool:
    return p.has(*DASHBOARD_SCOPES)


def _tokens(c: Any) -> auth.TokenStore:
    store = c.tokens
    reload = getattr(store, "_maybe_reload", None)
    if callable(reload):
        reload()
    return store


def _by_hash(c: Any, digest: str) -> Principal | None:
    for rec in _tokens(c).records:
        if rec.sha256 == digest:
            return Principal(rec.name, frozenset(rec.scopes))
    return None


def from_cookie(c: Any, request: web.Request) -> Principal | None:
    sid = request.cookies.get(COOKIE)
    if not sid or len(sid) > 128:
        return None
    rows = c.store.query("SELECT token_sha256, expires FROM dash_sessions WHERE sid = ?",
                         (_sha(sid),))
    if not rows or rows[0][1] < time.time():
        return None
    return _by_hash(c, rows[0][0])


def principal(c: Any, request: web.Request) -> Principal | None:
    """The caller: a valid bearer header first, else the session cookie."""
    header = request.headers.get("Authorization")
    if header:
        return _tokens(c).authorization(header)
    return from_cookie(c, request)


def login(c: Any, token: str) -> tuple[str, Principal] | None:
    """A new session for a valid dashboard token: (cookie value, principal)."""
    p = _tokens(c).authenticate(token.strip())
    if p is None or not may_use_dashboards(p):
        return None
    sid = secrets.token_urlsafe(32)
    now = time.time()
    with c.store.tx() as db:
        db.execute("INSERT INTO dash_sessions (sid, token_sha256, name, created, expires) "
                   "VALUES (?, ?, ?, ?, ?)", (_sha(sid), _sha(token.strip()), p.name, now,
                                              now + SESSION_S))
        db.execute("DELETE FROM dash_sessions WHERE expires < ?", (now,))
    log.info("dashboard login: token %r", p.name)
    return sid, p


def logout(c: Any, request: web.Request) -> None:
    sid = request.cookies.get(COOKIE)
    if sid:
        with c.store.tx() as db:
            db.execute("DELETE FROM dash_sessions WHERE sid = ?", (_sha(sid),))


def set_cookie(request: web.Request, resp: web.StreamResponse, sid: str) -> None:
    resp.set_cookie(COOKIE, sid, max_age=SESSION_S, path="/dash", httponly=True,
                    samesite="Strict", secure=request.secure)


def clear_cookie(resp: web.StreamResponse) -> None:
    resp.del_cookie(COOKIE, path="/dash")
    # del_cookie writes a bare cookie; say the same attributes as when it was set
    morsel = resp.cookies.get(COOKIE)
    if morsel is not None:
        morsel["httponly"] = True
        morsel["samesite"] = "Strict"


def same_origin(request: web.Request) -> bool:
    """A state-changing form post came from our own pages (SameSite=Strict already keeps
    the cookie off cross-site posts; this refuses them outright)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return origin is None
    return origin.split("://", 1)[-1] == request.host
