"""The dashboards' routes (served by the controller, under ``/dash``).

=======  ==========================  =====================================================
GET      /dash/                      your dashboard (or the login form)
GET      /dash/login                 the login form (a token, posted; never in a URL)
POST     /dash/login                 sets the session cookie (HttpOnly, SameSite=Strict)
POST     /dash/logout                ends the session
GET      /dash/customer?view=        the provider's apps (operators: ``&owner=``)
GET      /dash/noc?view=             the network (operators)
GET      /dash/isv?view=             usage per application (vendors; operators: all)
GET      /dash/api/{page}?view=      the same figures as JSON (header token or cookie)
GET      /dash/static/{file}         the stylesheet and the refresh script (no CDN)
=======  ==========================  =====================================================

``view`` is ``live`` (refreshes every few seconds), ``hour``, ``day`` or ``month``;
``&fragment=1`` answers the page's content alone (what the refresh script swaps in).
Every handler is ``@public`` for the API's bearer middleware and authenticates itself
(`_auth.principal`): a header token or the session cookie.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup

from edgeshot.agent.auth import Principal, public

from . import _auth, _data
from . import views as V

log = logging.getLogger("edgeshot.dashboards")

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
STATIC = {"dash.css": "text/css", "dash.js": "text/javascript", "favicon.svg": "image/svg+xml"}


def _fmt_ms(v: Any) -> str:
    return "—" if v is None else f"{v:.0f} ms"


def _fmt_pct(v: Any, digits: int = 1) -> str:
    return "—" if v is None else f"{v * 100:.{digits}f} %"


def _fmt_num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.2f}"
    return f"{int(v):,}"


def _fmt_time(v: Any) -> str:
    if not v:
        return "—"
    return datetime.fromtimestamp(float(v), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_ago(v: Any) -> str:
    if not v:
        return "never"
    s = max(0.0, time.time() - float(v))
    return f"{s:.0f} s ago" if s < 120 else f"{s / 60:.0f} min ago" if s < 7200 \
        else f"{s / 3600:.0f} h ago"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("edgeshot.control.dashboards",
                                                        "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ms=_fmt_ms, pct=_fmt_pct, num=_fmt_num, time=_fmt_time, ago=_fmt_ago,
                       svg=lambda s: Markup(s or ""))
    return env


class Dashboards:
    def __init__(self, controller: Any, collector: Any = None) -> None:
        self.c = controller
        self.collector = collector
        self.env = environment()
        self.static = {name: (resources.files("edgeshot.control.dashboards")
                              .joinpath("templates", name).read_bytes(), ctype)
                       for name, ctype in STATIC.items()}

    # -- helpers -----------------------------------------------------------------------------
    def _headers(self, resp: web.StreamResponse) -> web.StreamResponse:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["Cache-Control"] = "no-store"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"  # (no-referrer makes form posts say Origin: null)
        resp.headers["X-Frame-Options"] = "DENY"
        return resp

    def _html(self, template: str, status: int = 200, **ctx: Any) -> web.Response:
        text = self.env.get_template(template).render(network=self.c.plan.network, **ctx)
        return self._headers(web.Response(text=text, content_type="text/html",
                                          status=status))  # type: ignore[return-value]

    def _json(self, data: Any, status: int = 200) -> web.Response:
        return self._headers(web.Response(text=json.dumps(data, default=str),
                                          content_type="application/json",
                                          status=status))  # type: ignore[return-value]

    @staticmethod
    def landing(p: Principal) -> str:
        if p.is_operator:
            return "/dash/noc"
        if p.owners:
            return "/dash/customer"
        return "/dash/isv"

    def _view(self, request: web.Request) -> V.Period:
        view = request.query.get("view", "live")
        if view not in V.VIEWS:
            raise web.HTTPBadRequest(text=f"view must be one of {', '.join(V.VIEWS)}")
        return V.period(view, time.time())

    def _page_auth(self, request: web.Request, json_api: bool) -> Principal | web.Response:
        p = _auth.principal(self.c, request)
        if p is None:
            if json_api or request.query.get("fragment"):
                return self._json({"error": "log in, or send 'Authorization: Bearer <token>'",
                                   "code": "unauthorized"}, 401)
            raise web.HTTPSeeOther("/dash/login")
        if not _auth.may_use_dashboards(p):
            return self._deny(request, p, json_api, "no dashboard scope")
        return p

    def _deny(self, request: web.Request, p: Principal, json_api: bool, why: str
              ) -> web.Response:
        log.info("dashboards: 403 %s for token %r: %s", request.path, p.name, why)
        if json_api or request.query.get("fragment"):
            return self._json({"error": f"token {p.name!r}: {why}", "code": "forbidden"}, 403)
        return self._html("denied.html.j2", status=403, who=p.name, why=why,
                          nav=self._nav(p), page="")

    @staticmethod
    def _nav(p: Principal) -> list[tuple[str, str]]:
        out = []
        if p.is_operator or p.owners:
            out.append(("customer", "Customer"))
        if p.is_operator:
            out.append(("noc", "Network operations"))
        if p.is_operator or p.vendors:
            out.append(("isv", "Vendor usage"))
        return out

    # -- view models ------------------------------------------------------------------------
    def customer_model(self, p: Principal, period: V.Period, owner: str | None
                       ) -> dict[str, Any] | None:
        apps = _data.apps_info(self.c)
        if p.is_operator:
            owners = {owner} if owner else {a.owner for a in apps}
        else:
            if owner is not None and owner not in p.owners:
                return None
            owners = {owner} if owner else set(p.owners)
        mine = [a for a in apps if a.owner in owners]
        names = [a.name for a in mine]
        return V.customer_view(
            owners=owners, apps=mine, p=period, latency=_data.latency(self.c, period, names),
            regions=_data.regions(self.c, period, names),
            samples=_data.instance_samples(self.c, period, names),
            churn=_data.churn(self.c, period, names), edges=_data.edges_now(self.c, names),
            spend=_data.spend(self.c, names), capacity=_data.capacity(self.c, names),
            events=_data.events(self.c, names))

    def noc_model(self, period: V.Period) -> dict[str, Any]:
        st = self.c.status()
        return V.noc_view(
            p=period, edges=_data.edges_now(self.c, None), agents=_data.agents_now(self.c),
            edge_samples=_data.edge_samples(self.c, period),
            samples=_data.instance_samples(self.c, period, [a["name"] for a in
                                                            self.c.store.apps()]),
            churn=_data.churn(self.c, period), errors=_data.errors(self.c, period),
            latency=_data.latency(self.c, period, [a["name"] for a in self.c.store.apps()]),
            dispatcher=st.get("dispatcher"), events=_data.events(self.c, None))

    def isv_model(self, p: Principal, period: V.Period, vendor: str | None
                  ) -> dict[str, Any] | None:
        apps = _data.apps_info(self.c)
        if p.is_operator:
            vendors = {vendor} if vendor else None
        else:
            if vendor is not None and vendor not in p.vendors:
                return None
            vendors = {vendor} if vendor else set(p.vendors)
        mine = [a for a in apps if vendors is None or a.vendor in vendors]
        names = [a.name for a in mine]
        usage, month = _data.month_usage(self.c, names)
        return V.isv_view(vendors=vendors, apps=mine, p=period,
                          regions=_data.regions(self.c, period, names),
                          samples=_data.instance_samples(self.c, period, names), usage=usage,
                          pricing=_data.pricing(self.c), month=month)

    async def model(self, page: str, p: Principal, request: web.Request
                    ) -> dict[str, Any] | web.Response:
        period = self._view(request)
        if page == "customer":
            if not (p.is_operator or p.owners):
                return self._deny(request, p, False, "no owner scope")
            m = await asyncio.to_thread(self.customer_model, p, period,
                                        request.query.get("owner") or None)
        elif page == "noc":
            if not p.is_operator:
                return self._deny(request, p, False, "the network view needs the operator "
                                  "scope")
            m = await asyncio.to_thread(self.noc_model, period)
        elif page == "isv":
            if not (p.is_operator or p.vendors):
                return self._deny(request, p, False, "no vendor scope")
            m = await asyncio.to_thread(self.isv_model, p, period,
                                        request.query.get("vendor") or None)
        else:
            raise web.HTTPNotFound()
        if m is None:
            raise web.HTTPNotFound(text="no such owner or vendor")
        m["generated"] = time.time()
        return m

    # -- handlers ----------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        @public
        async def home(request: web.Request) -> web.Response:
            p = _auth.principal(self.c, request)
            if p is None or not _auth.may_use_dashboards(p):
                raise web.HTTPSeeOther("/dash/login")
            raise web.HTTPSeeOther(self.landing(p))

        @public
        async def login_form(request: web.Request) -> web.Response:
            return self._html("login.html.j2", error=None, nav=[], page="login", who=None)

        @public
        async def login(request: web.Request) -> web.Response:
            if not _auth.same_origin(request):
                return self._html("login.html.j2", status=403, nav=[], page="login", who=None,
                                  error="this form must be posted from the controller's page")
            throttle = self.c.auth_throttle  # shared with the API's bearer tokens
            form = await request.post()
            token = str(form.get("token", ""))
            got = await asyncio.to_thread(_auth.login, self.c, token) if token else None
            if got is None:  # a valid token logs in whatever its address did (auth.Throttle)
                if (wait := throttle.retry_after(request.remote or "-")) is not None:
                    return self._html("login.html.j2", status=429, nav=[], page="login",
                                      who=None, error=f"too many failed logins from this "
                                                      f"address: try again in {wait} s")
                throttle.failed(request.remote or "-")
                log.info("dashboard login refused from %s", request.remote)
                return self._html("login.html.j2", status=401, nav=[], page="login", who=None,
                                  error="unknown token, or a token without a dashboard scope "
                                        "(operator, owner or vendor)")
            sid, p = got
            resp = web.HTTPSeeOther(self.landing(p))
            _auth.set_cookie(request, resp, sid)
            raise resp

        @public
        async def logout(request: web.Request) -> web.Response:
            if not _auth.same_origin(request):
                raise web.HTTPForbidden(text="cross-site logout refused")
            await asyncio.to_thread(_auth.logout, self.c, request)
            resp = web.HTTPSeeOther("/dash/login")
            _auth.clear_cookie(resp)
            raise resp

        def page(name: str):
            @public
            async def handler(request: web.Request) -> web.Response:
                p = self._page_auth(request, json_api=False)
                if isinstance(p, web.Response):
                    return p
                m = await self.model(name, p, request)
                if isinstance(m, web.Response):
                    return m
                fragment = bool(request.query.get("fragment"))
                q = {k: v for k, v in request.query.items() if k in ("owner", "vendor")}
                return self._html(f"{name}.html.j2", m=m, page=name, who=p.name,
                                  nav=self._nav(p), fragment=fragment, query=q,
                                  views=V.VIEWS)
            return handler

        @public
        async def api(request: web.Request) -> web.Response:
            p = self._page_auth(request, json_api=True)
            if isinstance(p, web.Response):
                return p
            name = request.match_info["page"]
            if name not in ("customer", "noc", "isv"):
                return self._json({"error": "no such dashboard", "code": "not_found"}, 404)
            try:
                m = await self.model(name, p, request)
            except web.HTTPNotFound:
                return self._json({"error": "no such owner or vendor", "code": "not_found"},
                                  404)
            except web.HTTPBadRequest as exc:
                return self._json({"error": exc.text, "code": "invalid"}, 400)
            if isinstance(m, web.Response):
                if m.status == 403:
                    return self._json({"error": f"token {p.name!r} may not see this "
                                       "dashboard", "code": "forbidden"}, 403)
                return m
            return self._json(V.strip_svg(m))

        @public
        async def static(request: web.Request) -> web.Response:
            got = self.static.get(request.match_info["name"])
            if got is None:
                raise web.HTTPNotFound()
            body, ctype = got
            resp = web.Response(body=body, content_type=ctype)
            resp.headers["Cache-Control"] = "max-age=300"
            resp.headers["X-Content-Type-Options"] = "nosniff"
            return resp

        return [
            web.get("/dash", home), web.get("/dash/", home),
            web.get("/dash/login", login_form), web.post("/dash/login", login),
            web.post("/dash/logout", logout),
            web.get("/dash/customer", page("customer")), web.get("/dash/noc", page("noc")),
            web.get("/dash/isv", page("isv")), web.get("/dash/api/{page}", api),
            web.get("/dash/static/{name}", static),
        ]
