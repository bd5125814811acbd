"""The activator: HAProxy's backup server for an app with no ready instance (as in Knative).

HAProxy sends a request here only when no instance of its app is up at this
edgepoint. The activator finds the app by the request's routing key, as HAProxy's
maps did (a header set by HAProxy would cost every request, not only these; one
sent by a client is ignored). It
tells the resource manager there is demand (``queued`` counts held requests: the
decision restores at once from zero), holds the request in a bounded queue, and as
soon as an instance is ready (``notify``) forwards it straight to the instance's slot
address. A request held longer than ``timeout_s``, or beyond ``queue_limit``, gets
503 with ``Retry-After``. Meanwhile HAProxy already routes new requests to the
instance: only the first ones pay the restore.

It listens on a unix socket only HAProxy (and root) can reach, and forwards only to
instances of the app named by HAProxy: it is not a proxy anyone can use.

Without HAProxy (not installed), ``Router`` gives the activator the edgepoint's
routing itself: routing keys, cleave routes, origin, versions by weight, affinity by
its own cookie. Every request then crosses Python: slower (docs/architecture.md), and the edge
says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from ._haproxy import AppConf, HAProxyConf

log = logging.getLogger("edgeshot.edge")

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade",
                        "content-length"})

__all__ = ["Target", "Activator", "Router"]


@dataclass(frozen=True)
class Target:
    """Where a held request goes: an instance's slot address (or an origin)."""

    instance: str
    version: str
    address: str  # "ip:port"
    cookie: str | None = None  # the affinity cookie (name, value) to set, when any
    cookie_name: str | None = None
    scheme: str = "http"
    path_prefix: str = ""
    host: str | None = None  # Host to send (origins over TLS)


class Router:
    """The edgepoint's routing in Python, for when HAProxy is missing."""

    def __init__(self, conf: HAProxyConf) -> None:
        self.exact: list[tuple[re.Pattern[str], str]] = [
            (re.compile(r), a) for r, a in conf.keys_exact]
        self.hosts = dict(conf.hosts_exact)
        self.wild = [(re.compile(r), a) for r, a in conf.keys_wild]
        self.apps = {a.name: a for a in conf.apps}
        self.routes = {a.name: [(r.method, re.compile(r.regex), r.to) for r in a.rules]
                       for a in conf.apps}

    def app_of(self, host: str, path: str) -> AppConf | None:
        host = host.split(":", 1)[0].lower()
        key = f"{host}|{path}"
        for rx, app in self.exact:
            if rx.search(key):
                return self.apps[app]
        if host in self.hosts:
            return self.apps[self.hosts[host]]
        for rx, app in self.wild:
            if rx.search(key):
                return self.apps[app]
        return None

    def side(self, app: AppConf, method: str, path: str) -> str:
        for m, rx, to in self.routes[app.name]:
            if (m == "*" or m == method) and rx.search(path):
                return to
        return app.default_route


class Activator:
    def __init__(self, *, pick: Callable[[str, str | None], Target | None],
                 demand: Callable[[str], None] | None = None,
                 served: Callable[[str, Target, float, int, int, int, str, bool], None]
                 | None = None,
                 known: Callable[[str], bool] = lambda app: True,
                 queue_limit: int = 1000, timeout_s: float = 30.0, retry_after_s: int = 2,
                 max_body: int = 16 << 20) -> None:
        self.pick = pick
        self.demand = demand or (lambda app: None)
        self.served = served or (lambda *a: None)
        self.known = known
        self.queue_limit = queue_limit
        self.timeout_s = timeout_s
        self.retry_after_s = retry_after_s
        self.max_body = max_body
        self.waiting: dict[str, int] = {}
        self.events: dict[str, asyncio.Event] = {}
        self.router: Router | None = None
        self.routes = False  # True without HAProxy: cleave routes and affinity here too
        # serving users directly (no HAProxy before it): the region and forwarding headers
        # are kept only with the dispatcher's hop token (its SHA-256 here)
        self.hop_sha256: str | None = None
        self.origins: dict[str, Target] = {}
        self.held_total = 0
        self.timeouts = 0
        self.rejected = 0
        self._session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []

    # -- wiring ----------------------------------------------------------------------------
    def app(self) -> web.Application:
        a = web.Application(client_max_size=self.max_body)
        a.router.add_route("*", "/{tail:.*}", self.handle)
        return a

    async def start_unix(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=2.0)
        await runner.setup()
        site = web.UnixSite(runner, str(path))
        await site.start()
        path.chmod(0o600)
        self._runners.append(runner)

    async def start_tcp(self, host: str, port: int, router: Router) -> None:
        """Serve the edgepoint's data path directly (no HAProxy)."""
        self.set_router(router, routes=True)
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                               shutdown_timeout=2.0)
        await runner.setup()
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        self._runners.append(runner)

    def set_router(self, router: Router, *, routes: bool = False) -> None:
        """The edgepoint's apps. ``routes``: this is the whole data path (no HAProxy),
        so cleave routes, origins and affinity are decided here too; behind HAProxy
        only the app is looked up (HAProxy chose the edge route already)."""
        self.router = router
        self.routes = routes
        self.origins = {}
        for app in router.apps.values():
            if app.origin is not None:
                o = app.origin
                self.origins[app.name] = Target("origin", "@origin", o.address,
                                                scheme="https" if o.tls else "http",
                                                path_prefix=o.path_prefix or "", host=o.host)

    async def stop(self) -> None:
        for r in self._runners:
            await r.cleanup()
        self._runners = []
        if self._session is not None:
            await self._session.close()
            self._session = None

    def notify(self, app: str) -> None:
        """An instance of ``app`` is ready: release what waits for it."""
        ev = self.events.pop(app, None)
        if ev is not None:
            ev.set()

    def queued(self, app: str) -> int:
        return self.waiting.get(app, 0)

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    # -- requests --------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        side = "edge"
        appc = self.router.app_of(request.host or "", request.path) if self.router else None
        if appc is None or not self.known(appc.name):
            return web.Response(status=404, text="no application here\n")
        app = appc.name
        if self.routes:
            side = self.router.side(appc, request.method, request.path)
        trusted = not self.routes or self._from_dispatcher(request)
        region = (request.headers.get("X-Edgeshot-Region", "-")[:48] or "-") if trusted else "-"
        if side == "origin":
            target = self.origins.get(app)
            if target is None:
                return web.Response(status=502, text="no origin for this route\n")
            return await self._forward(request, app, target, t0, region, False, trusted)
        cookie = None
        if self.routes:
            cookie = request.cookies.get(_cookie_name(app))
        target = self.pick(app, cookie)
        held = target is None
        if target is None:
            target = await self._hold(app, cookie)
            if target is None:
                return self._unavailable(app)
        return await self._forward(request, app, target, t0, region, held, trusted)

    def _from_dispatcher(self, request: web.Request) -> bool:
        hop = request.headers.get("X-Edgeshot-Hop")
        if not hop or self.hop_sha256 is None:
            return False
        digest = hashlib.sha256(hop.encode(errors="replace")).hexdigest()
        return hmac.compare_digest(digest, self.hop_sha256)

    async def _hold(self, app: str, cookie: str | None) -> Target | None:
        if self.waiting.get(app, 0) >= self.queue_limit:
            self.rejected += 1
            return None
        self.waiting[app] = self.waiting.get(app, 0) + 1
        self.held_total += 1
        try:
            self.demand(app)
            deadline = time.monotonic() + self.timeout_s
            while True:
                target = self.pick(app, cookie)
                if target is not None:
                    return target
                left = deadline - time.monotonic()
                if left <= 0:
                    self.timeouts += 1
                    return None
                ev = self.events.get(app)
                if ev is None:
                    ev = self.events[app] = asyncio.Event()
                try:
                    await asyncio.wait_for(ev.wait(), min(left, 1.0))
                except TimeoutError:
                    pass
        finally:
            self.waiting[app] -= 1
            if self.waiting[app] <= 0:
                del self.waiting[app]

    def _unavailable(self, app: str) -> web.Response:
        return web.Response(status=503, text=f"{app}: no instance ready yet, retry\n",
                            headers={"Retry-After": str(self.retry_after_s),
                                     "Cache-Control": "no-store"})

    async def _forward(self, request: web.Request, app: str, target: Target, t0: float,
                       region: str, held: bool, trusted: bool = True) -> web.StreamResponse:
        body = await request.read()
        dropped = HOP_BY_HOP | {"x-edgeshot-hop"} | (
            set() if trusted else {"x-edgeshot-region", "x-forwarded-for"})
        headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
        if not trusted and request.remote:
            headers["X-Forwarded-For"] = request.remote
        if target.host:
            headers["Host"] = target.host
        url = f"{target.scheme}://{target.address}{target.path_prefix}{request.path_qs}"
        bytes_in = _head_size(request.method, request.path_qs, request.raw_headers) + len(body)
        try:
            async with self._http().request(request.method, url, headers=headers, data=body,
                                            allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=60)) as resp:
                payload = await resp.read()
                out = web.Response(status=resp.status, body=payload)
                for k, v in resp.headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        out.headers.add(k, v)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("activator: %s via %s failed: %s", app, target.instance, exc)
            self.served(app, target, (time.monotonic() - t0) * 1000, 502, bytes_in, 0, region,
                        held)
            return web.Response(status=502, text="the instance did not answer\n")
        if target.cookie and target.cookie_name:
            out.set_cookie(target.cookie_name, target.cookie, httponly=True, path="/")
        bytes_out = _head_size_resp(resp.status, resp.raw_headers) + len(payload)
        self.served(app, target, (time.monotonic() - t0) * 1000, resp.status, bytes_in,
                    bytes_out, region, held)
        return out


def _cookie_name(app: str) -> str:
    return f"ES_{app.replace('-', '_')}"


def _head_size(method: str, path: str, raw: tuple[tuple[bytes, bytes], ...]) -> int:
    return len(method) + len(path) + 11 + sum(len(k) + len(v) + 4 for k, v in raw) + 2


def _head_size_resp(status: int, raw: tuple[tuple[bytes, bytes], ...]) -> int:
    return 17 + sum(len(k) + len(v) + 4 for k, v in raw) + 2


class WeightedPicker:
    """Versions by weight, instances round robin within a version; an affinity cookie
    naming a ready instance wins (standalone mode and held requests)."""

    def __init__(self) -> None:
        self._rr: dict[tuple[str, str], itertools.count] = {}

    def choose(self, app: str, ready: dict[str, list[Target]], weights: dict[str, int],
               cookie: str | None = None) -> Target | None:
        if cookie:
            for ts in ready.values():
                for t in ts:
                    if t.instance == cookie or t.cookie == cookie:
                        return t
        live = [(v, w) for v, w in weights.items() if w > 0 and ready.get(v)]
        if not live:
            live = [(v, 1) for v, ts in ready.items() if ts]
            if not live:
                return None
        total = sum(w for _, w in live)
        x = random.uniform(0, total)
        chosen = live[-1][0]
        for v, w in live:
            x -= w
            if x <= 0:
                chosen = v
                break
        ts = ready[chosen]
        n = next(self._rr.setdefault((app, chosen), itertools.count()))
        return ts[n % len(ts)]
