"""edgeshot.control.metering: usage collected exactly once, bills, budgets that cap scaling.

In the controller (`Controller.metering`):

    m = Metering(controller)           # registers nothing: the store's "metering"
                                       # migrations register when this module is imported
    tasks = m.start()                  # the collector (one task per agent and edge
                                       # process) and the budget loop
    m.ceiling(placement)               # the cost ceiling the edges get for a placement
    m.bill("2026-11", owner="acme")    # billing.Bill from the stored hourly aggregates

Standalone (tests, tools), against any `usage(after, limit)` clients:

    store = Store(path)                # the controller's store, or one of its own
    c = Collector(store, [Endpoint("agent/eu-1", "agent", AgentClient(url, token))],
                  peak=pricing.peak)
    await c.collect_now()

API (added to the controller's, see `add_routes`):

=======  =================================  ==================  =================================
method   path                               scopes              answer
=======  =================================  ==================  =================================
GET      /v1/bill?month=&owner=&by=         op, owner, vendor   a bill (by=vendor: the ISV
                                                                report; by=organisation:
                                                                transfer pricing); owners see
                                                                their own, vendors their apps'
GET      /v1/budgets                        op, owner           per app: spent, forecast,
                                                                state, cost ceilings
GET      /v1/usage/sources                  op                  per source: cursor, head, lag
POST     /v1/usage/collect                  op                  pull every source now
=======  =================================  ==================  =================================
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from edgeshot.agent import auth
from edgeshot.agent.auth import OPERATOR, requires
from edgeshot.plan import Placement
from edgeshot.spec import Pricing

from . import _budgets, billing
from . import _metering_store as ms
from ._budgets import AppBudget, assess, current_month
from ._metering import Collector, Endpoint, MeteringSection, PageError, SourceReset
from ._store import Store

if TYPE_CHECKING:
    from ._controller import Controller

__all__ = ["AppBudget", "Collector", "Endpoint", "Metering", "MeteringSection", "PageError",
           "SourceReset", "add_routes", "bill_json", "metrics_collector", "organisations"]

log = logging.getLogger("edgeshot.metering")


def pricing_of(plan: Any) -> Pricing:
    return Pricing.model_validate(plan.pricing)


def organisations(plan: Any) -> dict[str, str | None]:
    """owner -> organisation, from the plan's apps (departments of one organisation)."""
    return {a.owner: a.organisation for a in plan.apps}


class Metering:
    """The controller's metering: collector, budgets, ceilings, bills."""

    def __init__(self, controller: Controller, section: MeteringSection | None = None,
                 clock: Callable[[], datetime] = _budgets.now_utc) -> None:
        self.c = controller
        self.store: Store = controller.store
        self.section = section or getattr(controller.config, "metering", None) or MeteringSection()
        self.pricing = pricing_of(controller.plan)
        self.zone = self.pricing.peak.timezone if self.pricing.peak else "UTC"
        self.clock = clock
        endpoints = [Endpoint(f"agent/{name}", "agent", client)
                     for name, client in controller.agents.items()]
        for name, link in controller.edges.items():
            client = getattr(link, "client", None)  # HttpEdgeLink: the edge API's client
            if client is not None and hasattr(client, "usage"):
                endpoints.append(Endpoint(f"edge/{name}", "edge", client))
        s = self.section
        self.collector = Collector(self.store, endpoints, peak=self.pricing.peak,
                                   interval_s=s.interval_s, page_limit=s.page_limit,
                                   max_backoff_s=s.max_backoff_s, on_event=self._event)
        self.totals = ms.MonthTotals()  # this month's sums, for budgets and spend
        self.collector.on_ingest = self.totals.add
        self.budgets: dict[str, AppBudget] = {}
        self.spend: dict[str, Decimal] = {}  # owner -> this month, from the last assessment
        self.assessed_at: float | None = None
        self.tasks: list[asyncio.Task[Any]] = []
        try:
            self.assess()  # the first placements pushed carry the budget's ceilings already
        except Exception:
            log.exception("budget assessment failed")

    # ------------------------------------------------------------------ running

    def start(self) -> list[asyncio.Task[Any]]:
        if not self.section.enabled:
            return []
        self.tasks = [*self.collector.start(),
                      asyncio.create_task(self._budget_loop(), name="budgets")]
        return self.tasks

    async def stop(self) -> None:
        await self.collector.stop()
        for t in self.tasks:
            t.cancel()

    async def _budget_loop(self) -> None:
        while True:
            await asyncio.sleep(self.section.budget_interval_s)
            try:
                await self.update_budgets()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("budget assessment failed")

    def _event(self, kind: str, message: str, data: dict[str, Any]) -> None:
        try:
            self.store.event(kind, message, data=data)
        except Exception:
            log.exception("event %s not stored", kind)

    # ------------------------------------------------------------------ bills

    def _reader(self) -> sqlite3.Connection:
        """A connection of its own for reading (WAL: readers do not wait for the
        collector's writes, nor hold up the controller's store while a month is summed)."""
        return sqlite3.connect(f"file:{self.store.path}?mode=ro", uri=True, timeout=30)

    def bill(self, month: str, owner: str | None = None,
             vendor: str | None = None) -> billing.Bill:
        db = self._reader()
        try:
            return ms.bill_month(db, self.pricing, month, owner=owner, vendor=vendor)
        finally:
            db.close()

    def vendor_report(self, month: str, vendor: str | None = None
                      ) -> tuple[billing.VendorLine, ...]:
        db = self._reader()
        try:
            usage = ms.month_usage(db, month, self.zone, vendor=vendor)
        finally:
            db.close()
        return billing.by_vendor(billing.bill(usage, self.pricing, month), usage)

    # ------------------------------------------------------------------ budgets

    def assess(self) -> dict[str, AppBudget]:
        """Spend, forecast, state and ceilings of every app, now (reads the store)."""
        now = self.clock()
        month = current_month(now, self.zone)
        the_bill = billing.bill(self.month_usage(month), self.pricing, month)
        budgets = assess(list(self.c.plan.apps), list(self.c.plan.placements),
                         _budgets.spent_by_app(the_bill), self.pricing, now)
        self.spend = {t.key: t.amount for t in the_bill.owners}
        self.budgets = budgets
        self.assessed_at = time.time()
        return budgets

    def month_usage(self, month: str) -> list[billing.Usage]:
        """This month's usage from the totals kept in memory (loaded from the store once a
        month, under the collector's ingest lock so that no page is counted twice)."""
        key = ms.month_key(month)
        if self.totals.month != key:
            with self.collector.ingest_lock:
                db = self._reader()
                try:
                    self.totals.load(db, key)
                finally:
                    db.close()
        return self.totals.usage(month, self.zone)

    async def update_budgets(self) -> list[str]:
        """Re-assess; push the placements of apps whose ceilings changed; an event when an
        app's budget state changes. Returns the apps pushed."""
        before = {a: b.ceilings for a, b in self.budgets.items()}
        budgets = await asyncio.to_thread(self.assess)
        for b in budgets.values():
            self._state_change(b)
        changed = [a for a, b in budgets.items() if before.get(a) != b.ceilings]
        serving = {a["name"] for a in self.store.apps() if a["primary_version"]}
        for app in changed:
            if app in serving:
                await self.c.deploy.push(app)
        return changed

    def _state_change(self, b: AppBudget) -> None:
        rows = self.store.query("SELECT state FROM budget_states WHERE app = ? AND month = ?",
                                (b.app, b.month))
        old = rows[0][0] if rows else "ok"
        if old == b.state:
            return
        with self.store.tx() as db:
            db.execute("INSERT INTO budget_states (app, month, state, at) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(app, month) DO UPDATE SET state = excluded.state, "
                       "at = excluded.at", (b.app, b.month, b.state, time.time()))
        pct = f"{b.used:.0%}"
        if b.state == "warning":
            msg = (f"{b.app}: {pct} of its {b.month} budget spent ({b.spent} of {b.limit} "
                   f"{b.currency}); forecast {b.forecast} {b.currency}")
        elif b.state == "exhausted":
            msg = (f"{b.app}: its {b.month} budget is spent ({b.spent} of {b.limit} "
                   f"{b.currency}); scale-up stopped at {b.ceiling} instance(s)")
        else:
            msg = f"{b.app}: back within its {b.month} budget ({pct})"
        self.store.event(f"budget-{b.state}", msg, app=b.app, data=b.to_json())

    def ceiling(self, placement: Placement) -> int:
        """The cost ceiling to send for `placement`: the budget's, or the plan's before the
        first assessment."""
        b = self.budgets.get(placement.app)
        if b is None or placement.id not in b.ceilings:
            return placement.cost_ceiling
        return b.ceilings[placement.id]

    def app_status(self, app: str) -> dict[str, Any] | None:
        b = self.budgets.get(app)
        return b.to_json() if b is not None else None

    # ------------------------------------------------------------------ status

    def sources(self) -> list[dict[str, Any]]:
        return self.collector.sources()


# ---------------------------------------------------------------------- JSON


def bill_json(the_bill: billing.Bill) -> dict[str, Any]:
    return the_bill.model_dump(mode="json")


# ---------------------------------------------------------------------- API

METERING_KEY = web.AppKey("metering", Metering)


def _m(request: web.Request) -> Metering:
    return request.app[METERING_KEY]


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


@requires(OPERATOR, "owner:*", "vendor:*")
async def get_bill(request: web.Request) -> web.Response:
    m = _m(request)
    p: auth.Principal = request["principal"]
    month = request.query.get("month") or current_month(m.clock(), m.zone)
    by = request.query.get("by", "owner")
    owner = request.query.get("owner") or None
    try:
        billing.month_bounds(month)
    except ValueError as exc:
        return _error(400, "invalid", str(exc))
    if by not in ("owner", "vendor", "organisation"):
        return _error(400, "invalid", "by must be owner, vendor or organisation")
    vendor = None
    if not p.is_operator:
        if by == "vendor":
            # the ISV report: a vendor's own applications, across their owners
            if len(p.vendors) != 1:
                return _error(403, "forbidden", f"token {p.name!r} may not see usage per "
                              "application (a vendor's token sees its own applications)")
            vendor = next(iter(p.vendors))
        elif p.owners:
            if owner is None and len(p.owners) == 1:
                owner = next(iter(p.owners))
            if owner not in p.owners:
                return _error(403, "forbidden", f"token {p.name!r} may not see that bill")
        else:
            return _error(403, "forbidden", f"token {p.name!r} may not see bills")
    try:
        if by == "vendor":
            lines = await asyncio.to_thread(m.vendor_report, month, vendor)
            return web.json_response({"month": month, "currency": m.pricing.currency,
                                      "vendors": [v.model_dump(mode="json") for v in lines]})
        the_bill = await asyncio.to_thread(m.bill, month, owner)
        if by == "organisation":
            orgs = billing.by_organisation(the_bill, organisations(m.c.plan))
            return web.json_response({"month": month, "currency": m.pricing.currency,
                                      "organisations": [o.model_dump(mode="json") for o in orgs]})
        return web.json_response(bill_json(the_bill))
    except ValueError as exc:
        return _error(400, "invalid", str(exc))


@requires(OPERATOR, "owner:*")
async def get_budgets(request: web.Request) -> web.Response:
    m = _m(request)
    p: auth.Principal = request["principal"]
    rows = [b.to_json() for b in m.budgets.values()
            if p.is_operator or b.owner in p.owners]
    return web.json_response({"assessed_at": m.assessed_at, "budgets": rows})


@requires(OPERATOR)
async def get_sources(request: web.Request) -> web.Response:
    return web.json_response({"sources": _m(request).sources()})


@requires(OPERATOR)
async def post_collect(request: web.Request) -> web.Response:
    m = _m(request)
    res = await m.collector.collect_now()
    await m.update_budgets()
    return web.json_response({"collected": res, "sources": m.sources()})


def add_routes(app: web.Application, metering: Metering) -> None:
    app[METERING_KEY] = metering
    app.router.add_get("/v1/bill", get_bill)
    app.router.add_get("/v1/budgets", get_budgets)
    app.router.add_get("/v1/usage/sources", get_sources)
    app.router.add_post("/v1/usage/collect", post_collect)


# ---------------------------------------------------------------------- metrics


class _Collector:
    def __init__(self, m: Metering) -> None:
        self.m = m

    def collect(self):  # noqa: ANN201 (prometheus_client's protocol)
        m = self.m
        records = CounterMetricFamily("edgeshot_controller_usage_records",
                                      "usage records stored, per source",
                                      labels=["source", "kind", "edgepoint"])
        lag = GaugeMetricFamily("edgeshot_controller_usage_lag_records",
                                "records a source has that are not stored yet",
                                labels=["source", "kind", "edgepoint"])
        lag_s = GaugeMetricFamily("edgeshot_controller_usage_lag_seconds",
                                  "time since the source was last pulled successfully",
                                  labels=["source", "kind", "edgepoint"])
        failing = GaugeMetricFamily("edgeshot_controller_usage_failed_pulls",
                                    "failed pulls in a row", labels=["source", "kind", "edgepoint"])
        for s in m.sources():
            source = s["source"] or s["endpoint"]  # an endpoint never reached: its name
            ep = _edgepoint_of(source)
            labels = [source, s["kind"], ep]
            records.add_metric(labels, s["records"])
            lag.add_metric(labels, s["lag_records"])
            if s["lag_s"] is not None:
                lag_s.add_metric(labels, s["lag_s"])
            failing.add_metric(labels, s["errors"])
        yield records
        yield lag
        yield lag_s
        yield failing
        # the currency is a label, not a name: one series name whatever the network prices in
        spend = GaugeMetricFamily("edgeshot_controller_spend",
                                  "spend this month per owner, in the network's currency",
                                  labels=["owner", "currency"])
        for owner, amount in sorted(m.spend.items()):
            spend.add_metric([owner, m.pricing.currency], float(amount))
        yield spend
        used = GaugeMetricFamily("edgeshot_controller_budget_used_ratio",
                                 "share of the app's monthly budget spent", labels=["app", "owner"])
        ceil = GaugeMetricFamily("edgeshot_controller_cost_ceiling_instances",
                                 "cost ceiling sent to the edge", labels=["app", "edgepoint",
                                                                          "owner"])
        for b in m.budgets.values():
            used.add_metric([b.app, b.owner], b.used)
            for pid, c in b.ceilings.items():
                ceil.add_metric([b.app, pid.split("/", 1)[-1], b.owner], c)
        yield used
        yield ceil


def _edgepoint_of(source: str) -> str:
    """agent:<edgepoint>:<server> and edge:<edgepoint> (the producers' default names)."""
    parts = source.split(":")
    return parts[1] if len(parts) >= 2 else ""


def metrics_collector(m: Metering) -> _Collector:
    return _Collector(m)


# ---------------------------------------------------------------------- a stopped local network


class _AgentStore:
    """An agent's usage, read from its own store (the agent is not running)."""

    def __init__(self, path: Any, edgepoint: str) -> None:
        from edgeshot.agent._usage import Meter
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT v FROM meta WHERE k = 'source'").fetchone()
        finally:
            db.close()
        self.source = row[0] if row else None
        self.meter = Meter(path, source=self.source, edgepoint=edgepoint) if row else None

    async def usage(self, after: int = 0, limit: int = 1000) -> Any:
        from edgeshot.agent.models import UsagePage
        assert self.meter is not None and self.source is not None
        records, head = self.meter.page(after, limit)
        return UsagePage(source=self.source, records=records,
                         last_seq=records[-1].seq if records else after, head_seq=head)

    def close(self) -> None:
        if self.meter is not None:
            self.meter.close()


class _EdgeStore:
    """An edge process's data-path usage, read from its own store."""

    def __init__(self, path: Any, edgepoint: str) -> None:
        from edgeshot.edge._store import Store as EdgeStore
        from edgeshot.edge._usage import UsageMeter
        self.store = EdgeStore(path)
        self.meter = UsageMeter(self.store, f"edge:{edgepoint}", edgepoint)

    async def usage(self, after: int = 0, limit: int = 1000) -> Any:
        from edgeshot.agent.models import UsagePage
        return UsagePage.model_validate(self.meter.page(after, limit))

    def close(self) -> None:
        close = getattr(self.store, "close", None)
        if close is not None:
            close()


def collect_stopped(db_path: Any, pricing: Pricing, agents: dict[str, tuple[Any, str]],
                    edges: dict[str, Any]) -> dict[str, int | str]:
    """Catch the controller's store up with the sources' own stores, on this machine, while
    the network is stopped (what they recorded after the controller's last pull: the edges'
    and agents' final records at shutdown). `agents`: server -> (usage.db, edgepoint);
    `edges`: edgepoint -> edge.db. The same cursors as the controller's: exactly once."""
    from pathlib import Path as _P
    sources: list[Any] = []
    endpoints = []
    try:
        for server, (path, edgepoint) in agents.items():
            if _P(path).exists():
                src = _AgentStore(path, edgepoint)
                sources.append(src)
                if src.meter is not None:
                    endpoints.append(Endpoint(f"agent/{server}", "agent", src))
        for edgepoint, path in edges.items():
            if _P(path).exists():
                src = _EdgeStore(path, edgepoint)
                sources.append(src)
                endpoints.append(Endpoint(f"edge/{edgepoint}", "edge", src))
        store = Store(db_path)
        try:
            collector = Collector(store, endpoints, peak=pricing.peak)
            return asyncio.run(collector.collect_now())
        finally:
            store.close()
    finally:
        for s in sources:
            s.close()
