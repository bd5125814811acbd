"""The dashboards' view models: PURE functions from plain data to what a page shows.

Inputs are plain records (dataclasses below) that the data layer (`_data.py`) reads
from the controller's store: the edges' per-minute latency histograms and per-region
request counts (pulled by the collector, `_collect.py`), instance samples, churn and
HAProxy error deltas, metering's usage, capacity-test results, and the network's state
now. Outputs are JSON-ready dicts; charts (SVG, `svg.py`) sit under ``svg`` keys, which
the JSON API leaves out.

Periods (``period(view, now)``): ``live`` — the last 30 minutes per minute, plus the
state now, refreshed every few seconds; ``hour`` — the last 48 hours per hour; ``day``
— the last 31 days per day; ``month`` — the last 12 calendar months (UTC).

Every function filters by what the caller may see *again* (the data layer already
did): an owner's view is built from the owner's apps only, whatever it is given.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from . import svg

__all__ = [
    "VIEWS", "Period", "period", "AppInfo", "LatencyRow", "RegionRow", "InstanceSample",
    "ChurnRow", "EdgeSample", "ErrorRow", "EdgeNow", "AgentNow", "CapacityView",
    "SpendInput", "merge_histograms", "latency_series", "customer_view", "noc_view",
    "isv_view", "strip_svg", "ORIGIN",
]

ORIGIN = "@origin"  # the edge's version label for origin routes (not the app's SLA)

VIEWS = ("live", "hour", "day", "month")
_SPEC = {  # bucket seconds (None: calendar month), span, refresh seconds
    "live": (60, 30 * 60, 5),
    "hour": (3600, 48 * 3600, 60),
    "day": (86400, 31 * 86400, 300),
    "month": (None, 0, 3600),
}


# ---------------------------------------------------------------------------- periods


@dataclass(frozen=True)
class Period:
    view: str
    start: float  # epoch seconds, the first bucket's start
    end: float  # epoch seconds, the last bucket's end
    buckets: tuple[float, ...]  # bucket starts
    refresh_s: int
    now: float

    def bucket(self, t: float) -> float | None:
        """The start of the bucket holding `t` (None: outside the period)."""
        if t < self.start or t >= self.end:
            return None
        i = bisect.bisect_right(self.buckets, t) - 1
        return self.buckets[i] if i >= 0 else None

    def label(self, t: float) -> str:
        fmt = {"live": "%H:%M", "hour": "%d %Hh", "day": "%b %d", "month": "%Y-%m"}
        return datetime.fromtimestamp(t, UTC).strftime(fmt[self.view])

    def x_labels(self) -> list[tuple[float, str]]:
        n = len(self.buckets)
        every = max(1, n // 6)
        return [(t, self.label(t)) for i, t in enumerate(self.buckets) if i % every == 0]

    @property
    def title(self) -> str:
        return {"live": "last 30 minutes, per minute", "hour": "last 48 hours, per hour",
                "day": "last 31 days, per day", "month": "last 12 months, per month"}[self.view]


def period(view: str, now: float) -> Period:
    if view not in _SPEC:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}")
    step, span, refresh = _SPEC[view]
    if step is None:
        d = datetime.fromtimestamp(now, UTC)
        months = []
        y, m = d.year, d.month
        for _ in range(12):
            months.append(datetime(y, m, 1, tzinfo=UTC).timestamp())
            y, m = (y, m - 1) if m > 1 else (y - 1, 12)
        months.reverse()
        ny, nm = (d.year, d.month + 1) if d.month < 12 else (d.year + 1, 1)
        end = datetime(ny, nm, 1, tzinfo=UTC).timestamp()
        return Period(view, months[0], end, tuple(months), refresh, now)
    end = (math.floor(now / step) + 1) * step
    start = end - span
    return Period(view, start, end, tuple(float(t) for t in range(int(start), int(end), step)),
                  refresh, now)


# ---------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class AppInfo:
    name: str
    owner: str
    vendor: str
    primary: str | None = None
    canary: str | None = None
    canary_weight: int = 0
    sla_ms: int = 0
    percentile: float = 95.0
    users_per_instance: int = 0
    budget: Decimal = Decimal(0)
    currency: str = "EUR"
    warn_at: float = 0.8
    edgepoints: tuple[str, ...] = ()


@dataclass(frozen=True)
class LatencyRow:
    edgepoint: str
    minute: float  # epoch seconds of the minute's start
    app: str
    version: str
    count: int
    errors: int
    histogram: str  # HDR, base64 (ms)


@dataclass(frozen=True)
class RegionRow:
    edgepoint: str
    minute: float
    app: str
    region: str
    requests: int


@dataclass(frozen=True)
class InstanceSample:
    at: float
    edgepoint: str
    app: str
    version: str
    ready: int
    starting: int = 0
    snapshotted: int = 0


@dataclass(frozen=True)
class ChurnRow:
    at: float
    edgepoint: str
    app: str
    version: str
    kind: str  # restore | restore-failed | snapshot | stop
    n: int


@dataclass(frozen=True)
class EdgeSample:
    at: float
    edgepoint: str
    healthy: bool
    load: float
    slots_total: int
    slots_free: int


@dataclass(frozen=True)
class ErrorRow:
    at: float
    edgepoint: str
    kind: str  # http-5xx | connection | response | retry | ... (HAProxy's counters)
    n: int


@dataclass(frozen=True)
class EdgeNow:
    name: str
    region: str
    healthy: bool
    last_seen: float | None = None
    error: str | None = None
    mode: str | None = None
    load: float = 0.0
    slots_total: int = 0
    slots_free: int = 0
    # app -> version -> {ready, starting, snapshotted, requests, errors, latency_ms}
    apps: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass(frozen=True)
class AgentNow:
    server: str
    edgepoint: str
    healthy: bool
    last_seen: float | None = None
    error: str | None = None
    restores: bool | None = None  # CRIU restores here (False: cold starts)
    slots_total: int | None = None
    slots_free: int | None = None
    cpu_free: float | None = None
    memory_free_mb: float | None = None
    instances: int | None = None
    version: str | None = None


@dataclass(frozen=True)
class CapacityView:
    app: str
    version: str
    state: str  # running | passed | failed | error
    users_per_instance: float | None = None
    required: int | None = None  # what the criteria (or the SLA) ask for
    reasons: tuple[str, ...] = ()
    curve: tuple[tuple[float, float | None, float, float], ...] = ()  # users, p ms, err, rps
    percentile: float = 95.0
    max_response_ms: int | None = None
    started: float | None = None
    finished: float | None = None
    staged: bool = False


@dataclass(frozen=True)
class SpendInput:
    """The month so far, for the apps shown: usage per day (billing.Usage rows), prices."""

    month: str
    zone: str
    pricing: Any  # edgeshot.spec.Pricing
    daily: tuple[tuple[float, tuple[Any, ...]], ...]  # (day start, usage rows of that day)
    now: datetime


# ---------------------------------------------------------------------------- helpers


def merge_histograms(encoded: Iterable[str]) -> Any | None:
    """One HDR histogram from several (None when there is none)."""
    from hdrh.histogram import HdrHistogram
    out = None
    for e in encoded:
        h = HdrHistogram.decode(e)
        if out is None:
            out = h
        else:
            out.add(h)
    return out


def _count_at_most(h: Any, limit: float) -> int:
    n = 0
    for item in h.get_recorded_iterator():
        if item.value_iterated_to <= limit:
            n += item.count_at_value_iterated_to
        else:
            # HDR buckets: a value's bucket may straddle the limit; count it as within
            # when the bucket's lowest equivalent value is
            if h.get_lowest_equivalent_value(item.value_iterated_to) <= limit:
                n += item.count_at_value_iterated_to
    return n


def _pct(h: Any, q: float) -> float | None:
    if h is None or h.get_total_count() == 0:
        return None
    return float(h.get_value_at_percentile(q))


def latency_series(rows: Iterable[LatencyRow], p: Period, percentile: float,
                   sla_ms: float | None = None) -> dict[str, Any]:
    """Requests, errors and percentiles per bucket and over the period (edge versions of
    the rows given, every edgepoint merged: exact merged histograms, not averages)."""
    per: dict[float, list[LatencyRow]] = defaultdict(list)
    for r in rows:
        if r.version == ORIGIN:
            continue
        b = p.bucket(r.minute)
        if b is not None:
            per[b].append(r)
    series = []
    everything = []
    breached = 0
    for b in p.buckets:
        rs = per.get(b, [])
        h = merge_histograms(r.histogram for r in rs if r.count)
        count = sum(r.count for r in rs)
        errors = sum(r.errors for r in rs)
        pq = _pct(h, percentile)
        if sla_ms and pq is not None and pq > sla_ms:
            breached += 1
        series.append({"t": b, "requests": count, "errors": errors, "p50": _pct(h, 50),
                       "p_sla": pq, "p99": _pct(h, 99)})
        everything += [r.histogram for r in rs if r.count]
    h = merge_histograms(everything)
    total = sum(s["requests"] for s in series)
    within = (_count_at_most(h, sla_ms) / h.get_total_count()
              if h is not None and sla_ms and h.get_total_count() else None)
    return {"requests": total, "errors": sum(s["errors"] for s in series),
            "p50": _pct(h, 50), "p_sla": _pct(h, percentile), "p99": _pct(h, 99),
            "max": float(h.get_max_value()) if h is not None and h.get_total_count() else None,
            "within_sla": within, "breached_buckets": breached, "series": series}


def _instances(samples: Iterable[InstanceSample], p: Period, by: str = "edgepoint"
               ) -> dict[str, list[dict[str, Any]]]:
    """Per edgepoint (or app): mean and max of ready instances per bucket. A sample time
    holds the sum over versions (and apps) at that instant."""
    at: dict[str, dict[float, dict[float, int]]] = defaultdict(lambda: defaultdict(dict))
    for s in samples:
        b = p.bucket(s.at)
        if b is None:
            continue
        key = getattr(s, by)
        cell = at[key][b]
        cell[s.at] = cell.get(s.at, 0) + s.ready
    out = {}
    for key, buckets in sorted(at.items()):
        rows = []
        for b in p.buckets:
            vals = list(buckets.get(b, {}).values())
            rows.append({"t": b, "mean": sum(vals) / len(vals) if vals else None,
                         "max": max(vals) if vals else None})
        out[key] = rows
    return out


def _churn(rows: Iterable[ChurnRow], p: Period) -> dict[str, Any]:
    totals = {"restore": 0, "restore-failed": 0, "snapshot": 0, "stop": 0}
    series: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        b = p.bucket(r.at)
        if b is None:
            continue
        totals[r.kind] = totals.get(r.kind, 0) + r.n
        series[r.kind][b] += r.n
    return {"restores": totals["restore"], "restore_failures": totals["restore-failed"],
            "snapshots": totals["snapshot"], "stops": totals["stop"],
            "series": {k: [{"t": b, "n": v.get(b, 0)} for b in p.buckets]
                       for k, v in series.items()}}


def _regions(rows: Iterable[RegionRow], p: Period) -> dict[str, Any]:
    total: dict[str, int] = defaultdict(int)
    series: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        b = p.bucket(r.minute)
        if b is None:
            continue
        total[r.region] += r.requests
        series[r.region][b] += r.requests
    n = sum(total.values())
    ordered = sorted(total.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"total": n,
            "rows": [{"region": k, "requests": v, "share": v / n if n else 0.0}
                     for k, v in ordered],
            "series": {k: [{"t": b, "requests": series[k].get(b, 0)} for b in p.buckets]
                       for k, _ in ordered}}


def _money(d: Decimal) -> str:
    return f"{d.quantize(Decimal('0.01'))}"


def spend_view(app: AppInfo, spend: SpendInput | None) -> dict[str, Any] | None:
    """Month to date, the linear forecast and the budget's state (billing's rules)."""
    if spend is None:
        return None
    from edgeshot.control import billing
    daily = []
    acc: list[Any] = []
    for day, rows in spend.daily:
        acc += [u for u in rows if u.app == app.name]
        spent_day = billing.bill(acc, spend.pricing, spend.month).total
        daily.append({"t": day, "cumulative": float(spent_day)})
    spent = billing.bill(acc, spend.pricing, spend.month).total
    forecast = billing.forecast(spent, spend.now, spend.month, spend.zone)
    state = billing.budget_state(spent, app.budget, app.warn_at) if app.budget else "ok"
    y, m = (int(x) for x in spend.month.split("-"))
    month_end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC).timestamp()
    return {"month": spend.month, "currency": app.currency, "spent": _money(spent),
            "month_end": month_end, "now": spend.now.timestamp(),
            "forecast": _money(forecast), "budget": _money(app.budget),
            "used": float(spent / app.budget) if app.budget else None,
            "forecast_used": float(forecast / app.budget) if app.budget else None,
            "state": state, "daily": daily}


def _capacity(c: CapacityView) -> dict[str, Any]:
    chart = svg.line_chart(
        [svg.Series(f"p{c.percentile:g} response time",
                    [(u, ms) for u, ms, _e, _r in c.curve])],
        title=f"{c.app} {c.version}: response time by concurrent users", unit="ms",
        threshold=(c.max_response_ms, "limit") if c.max_response_ms else None,
        x_labels=[(u, svg.fmt_num(u)) for u, *_ in c.curve][:: max(1, len(c.curve) // 8)],
        empty="no measurement yet")
    return {"version": c.version, "state": c.state, "staged": c.staged,
            "users_per_instance": c.users_per_instance, "required": c.required,
            "reasons": list(c.reasons), "max_response_ms": c.max_response_ms,
            "percentile": c.percentile, "started": c.started, "finished": c.finished,
            "curve": [{"users": u, "p_ms": ms, "error_rate": e, "rps": r}
                      for u, ms, e, r in c.curve],
            "svg": {"curve": chart}}


# ---------------------------------------------------------------------------- pages


class _OfApp(Protocol):
    @property
    def app(self) -> str: ...


_R = TypeVar("_R", bound=_OfApp)


def _by_app(rows: Iterable[_R], names: set[str]) -> defaultdict[str, list[_R]]:
    """The rows of the apps ``names``, per app (an app without rows: an empty list)."""
    out: defaultdict[str, list[_R]] = defaultdict(list)
    for r in rows:
        if r.app in names:
            out[r.app].append(r)
    return out


def customer_view(*, owners: frozenset[str] | set[str], apps: Sequence[AppInfo], p: Period,
                  latency: Iterable[LatencyRow] = (), regions: Iterable[RegionRow] = (),
                  samples: Iterable[InstanceSample] = (), churn: Iterable[ChurnRow] = (),
                  edges: Sequence[EdgeNow] = (), spend: SpendInput | None = None,
                  capacity: Iterable[CapacityView] = (),
                  events: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The provider's page: its apps only."""
    mine = [a for a in apps if a.owner in owners]
    names = {a.name for a in mine}
    lat, reg = _by_app(latency, names), _by_app(regions, names)
    smp, chn, caps = _by_app(samples, names), _by_app(churn, names), _by_app(capacity, names)
    out_apps = []
    xl = p.x_labels()
    rng = (p.start, p.end)
    for a in sorted(mine, key=lambda a: a.name):
        ls = latency_series(lat[a.name], p, a.percentile, a.sla_ms or None)
        now_inst: dict[str, dict[str, int]] = {}
        now_fig = {"requests": 0, "errors": 0, "latency_ms": None}
        worst = None
        for e in edges:
            vs = e.apps.get(a.name)
            if not vs:
                continue
            now_inst[e.name] = {k: sum(int(v.get(k) or 0) for v in vs.values())
                                for k in ("ready", "starting", "snapshotted")}
            for v in vs.values():
                now_fig["requests"] += int(v.get("requests") or 0)
                now_fig["errors"] += int(v.get("errors") or 0)
                if v.get("latency_ms") is not None:
                    worst = max(worst or 0.0, float(v["latency_ms"]))
        now_fig["latency_ms"] = worst
        inst = _instances(smp[a.name], p)
        rg = _regions(reg[a.name], p)
        ch = _churn(chn[a.name], p)
        sp = spend_view(a, spend)
        pq = f"p{a.percentile:g}"
        charts = {
            "latency": svg.line_chart(
                [svg.Series(pq, [(s["t"], s["p_sla"]) for s in ls["series"]]),
                 svg.Series("p50", [(s["t"], s["p50"]) for s in ls["series"]], dashed=True)],
                title=f"{a.name}: response time ({pq}) against the SLA", unit="ms",
                threshold=(a.sla_ms, "SLA") if a.sla_ms else None, x_range=rng, x_labels=xl),
            "instances": svg.line_chart(
                [svg.Series(ep, [(r["t"], r["mean"]) for r in rows])
                 for ep, rows in inst.items()],
                title=f"{a.name}: instances per edgepoint", unit="instances", x_range=rng,
                x_labels=xl, step=True),
            "regions": svg.bar_chart([(r["region"], r["requests"]) for r in rg["rows"]],
                                     title=f"{a.name}: requests by user region",
                                     unit="req"),
            "churn": svg.line_chart(
                [svg.Series(k + "s", [(r["t"], r["n"]) for r in rows])
                 for k, rows in sorted(ch["series"].items())],
                title=f"{a.name}: restores and snapshots", unit="per bucket", x_range=rng,
                x_labels=xl),
        }
        if sp is not None:
            days = [d["t"] for d in sp["daily"]]
            start = days[0] if days else sp["now"]
            # the budget line only where it does not flatten the spend to nothing
            show_budget = bool(a.budget) and Decimal(sp["forecast"]) >= a.budget / 4
            charts["spend"] = svg.line_chart(
                [svg.Series("spent", [(d["t"] + 86400, d["cumulative"]) if i + 1 < len(days)
                                      else (sp["now"], d["cumulative"])
                                      for i, d in enumerate(sp["daily"])] + [(start, 0.0)]),
                 svg.Series("forecast", [(sp["now"], float(sp["spent"])),
                                         (sp["month_end"], float(sp["forecast"]))],
                            dashed=True)],
                title=f"{a.name}: spend this month", unit=a.currency,
                threshold=(float(a.budget), "budget") if show_budget else None,
                x_range=(start, sp["month_end"]),
                x_labels=[(t, datetime.fromtimestamp(t, UTC).strftime("%d"))
                          for t in [start + k * 5 * 86400 for k in range(7)]
                          if t < sp["month_end"]],
                empty="nothing metered yet this month")
        out_apps.append({
            "name": a.name, "owner": a.owner, "vendor": a.vendor, "primary": a.primary,
            "canary": a.canary, "canary_weight": a.canary_weight,
            "sla": {"ms": a.sla_ms, "percentile": a.percentile,
                    "users_per_instance": a.users_per_instance},
            "latency": ls, "now": {"instances": now_inst, **now_fig},
            "instances": inst, "regions": rg, "churn": ch, "spend": sp,
            "capacity": [_capacity(c) for c in sorted(
                caps[a.name], key=lambda c: (c.started or 0), reverse=True)],
            "svg": charts,
        })
    ev = [e for e in events if e.get("app") in names]
    total_spent = None
    if spend is not None and out_apps:
        total_spent = _money(sum((Decimal(x["spend"]["spent"]) for x in out_apps
                                  if x["spend"]), Decimal(0)))
    return {"page": "customer", "owners": sorted(owners), "view": p.view,
            "period": {"start": p.start, "end": p.end, "title": p.title,
                       "refresh_s": p.refresh_s},
            "apps": out_apps, "spent": total_spent,
            "events": [{"at": e["at"], "kind": e["kind"], "app": e.get("app"),
                        "message": e["message"]} for e in ev][-20:]}


def noc_view(*, p: Period, edges: Sequence[EdgeNow], agents: Sequence[AgentNow],
             edge_samples: Iterable[EdgeSample] = (), samples: Iterable[InstanceSample] = (),
             churn: Iterable[ChurnRow] = (), errors: Iterable[ErrorRow] = (),
             latency: Iterable[LatencyRow] = (), dispatcher: dict[str, Any] | None = None,
             events: Iterable[dict[str, Any]] = ()) -> dict[str, Any]:
    """The operator's page: every edgepoint and agent of the network."""
    xl = p.x_labels()
    rng = (p.start, p.end)
    load: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for s in edge_samples:
        b = p.bucket(s.at)
        if b is not None:
            load[s.edgepoint][b].append(s.load)
    inst = _instances(samples, p)
    churn_by = defaultdict(list)
    for c in churn:
        churn_by[c.edgepoint].append(c)
    err_tot: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    err_series: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for e in errors:
        b = p.bucket(e.at)
        if b is None:
            continue
        err_tot[e.edgepoint][e.kind] += e.n
        if not e.kind.startswith("stage-"):  # a staged version's load test: apart
            err_series[e.edgepoint][b] += e.n
    logged: dict[str, dict[str, int]] = defaultdict(lambda: {"requests": 0, "errors": 0})
    for r in latency:
        if p.bucket(r.minute) is None:
            continue
        logged[r.edgepoint]["requests"] += r.count
        logged[r.edgepoint]["errors"] += r.errors
    rows = []
    for e in edges:
        ch = _churn(churn_by[e.name], p)
        now = {k: sum(int(v.get(k) or 0) for vs in e.apps.values() for v in vs.values())
               for k in ("ready", "starting", "snapshotted")}
        rows.append({
            "name": e.name, "region": e.region, "healthy": e.healthy,
            "last_seen": e.last_seen, "error": e.error, "mode": e.mode,
            "load": e.load, "slots_total": e.slots_total, "slots_free": e.slots_free,
            "slots_used": e.slots_total - e.slots_free, "instances": now,
            "apps": sorted(e.apps), "churn": {k: ch[k] for k in ("restores", "restore_failures",
                                                                  "snapshots", "stops")},
            "haproxy_errors": {k: v for k, v in sorted(err_tot[e.name].items())
                               if not k.startswith("stage-")},
            "staging_errors": sum(v for k, v in err_tot[e.name].items()
                                  if k.startswith("stage-")),
            "logged": dict(logged[e.name]),
        })
    charts = {
        "load": svg.line_chart(
            [svg.Series(ep, [(b, (sum(v[b]) / len(v[b]) * 100) if v.get(b) else None)
                             for b in p.buckets]) for ep, v in sorted(load.items())],
            title="load per edgepoint (share of instance slots in use)", unit="%",
            x_range=rng, x_labels=xl),
        "instances": svg.line_chart(
            [svg.Series(ep, [(r["t"], r["mean"]) for r in rs]) for ep, rs in inst.items()],
            title="instances per edgepoint", unit="instances", x_range=rng, x_labels=xl,
            step=True),
        "churn": svg.bar_chart(
            [(f"{r['name']} restores", r["churn"]["restores"]) for r in rows]
            + [(f"{r['name']} snapshots", r["churn"]["snapshots"]) for r in rows],
            title="instance churn", empty="no restore or snapshot in this period"),
        "errors": svg.line_chart(
            [svg.Series(ep, [(b, v.get(b, 0)) for b in p.buckets])
             for ep, v in sorted(err_series.items())],
            title="HAProxy errors per edgepoint", unit="per bucket", x_range=rng,
            x_labels=xl, empty="no HAProxy error in this period"),
    }
    ag = [{"server": a.server, "edgepoint": a.edgepoint, "healthy": a.healthy,
           "last_seen": a.last_seen, "error": a.error, "restores": a.restores,
           "slots_total": a.slots_total, "slots_free": a.slots_free,
           "slots_used": (a.slots_total - a.slots_free)
           if a.slots_total is not None and a.slots_free is not None else None,
           "cpu_free": a.cpu_free, "memory_free_mb": a.memory_free_mb,
           "instances": a.instances, "version": a.version} for a in agents]
    return {"page": "noc", "view": p.view,
            "period": {"start": p.start, "end": p.end, "title": p.title,
                       "refresh_s": p.refresh_s},
            "edgepoints": rows, "agents": ag, "dispatcher": dispatcher or {},
            "totals": {"edgepoints": len(rows), "healthy": sum(r["healthy"] for r in rows),
                       "agents": len(ag), "agents_healthy": sum(a["healthy"] for a in ag),
                       "instances": sum(r["instances"]["ready"] for r in rows),
                       "slots_total": sum(r["slots_total"] for r in rows),
                       "slots_used": sum(r["slots_used"] for r in rows)},
            "events": [{"at": e["at"], "kind": e["kind"], "app": e.get("app"),
                        "edgepoint": e.get("edgepoint"), "message": e["message"]}
                       for e in events][-25:],
            "svg": charts}


def isv_view(*, vendors: frozenset[str] | set[str] | None, apps: Sequence[AppInfo], p: Period,
             regions: Iterable[RegionRow] = (), samples: Iterable[InstanceSample] = (),
             usage: Iterable[Any] = (), pricing: Any = None, month: str | None = None
             ) -> dict[str, Any]:
    """The vendor's page: usage of each of its applications, across the owners running
    them. ``vendors`` None: every vendor (operators)."""
    mine = [a for a in apps if vendors is None or a.vendor in vendors]
    names = {a.name for a in mine}
    req: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    req_total: dict[str, int] = defaultdict(int)
    for r in regions:
        if r.app not in names:
            continue
        b = p.bucket(r.minute)
        if b is None:
            continue
        req[r.app][b] += r.requests
        req_total[r.app] += r.requests
    inst = _instances([s for s in samples if s.app in names], p, by="app")
    # instance-hours from the samples: the mean ready count per bucket × bucket length
    inst_hours: dict[str, float] = {}
    for app, rows in inst.items():
        tot = 0.0
        for i, r in enumerate(rows):
            if r["mean"] is None:
                continue
            t1 = p.buckets[i + 1] if i + 1 < len(p.buckets) else p.end
            tot += r["mean"] * (min(t1, p.now) - r["t"]) / 3600 if t1 > r["t"] else 0.0
        inst_hours[app] = tot
    rows_u = [u for u in usage if u.app in names and (vendors is None or u.vendor in vendors)]
    amounts: dict[str, Decimal] = {}
    quantities: dict[str, dict[str, float]] = {}
    month_requests: dict[str, int] = defaultdict(int)
    if pricing is not None and month is not None and rows_u:
        from edgeshot.control import billing
        b = billing.bill(rows_u, pricing, month)
        for line in b.lines:
            amounts[line.app] = amounts.get(line.app, Decimal(0)) + line.amount
            q = quantities.setdefault(line.app, {})
            q[line.resource] = q.get(line.resource, 0.0) + float(line.quantity)
        for u in rows_u:
            month_requests[u.app] += u.requests
    by_vendor: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in sorted(mine, key=lambda a: a.name):
        by_vendor[a.vendor].append({
            "app": a.name, "owner": a.owner, "primary": a.primary,
            "requests": req_total.get(a.name, 0),
            "instance_hours": round(inst_hours.get(a.name, 0.0), 4),
            "month": {"requests": month_requests.get(a.name, 0),
                      "amount": _money(amounts[a.name]) if a.name in amounts else None,
                      "currency": a.currency, "quantities": quantities.get(a.name, {})},
            "series": [{"t": b, "requests": req[a.name].get(b, 0)} for b in p.buckets],
        })
    xl = p.x_labels()
    out_vendors = []
    for vendor, rows in sorted(by_vendor.items()):
        owners = sorted({r["owner"] for r in rows})
        out_vendors.append({
            "vendor": vendor, "owners": owners, "apps": rows,
            "requests": sum(r["requests"] for r in rows),
            "svg": {
                "requests": svg.line_chart(
                    [svg.Series(f"{r['app']} ({r['owner']})",
                                [(s["t"], s["requests"]) for s in r["series"]])
                     for r in rows], title=f"{vendor}: requests per application",
                    unit="requests", x_range=(p.start, p.end), x_labels=xl),
                "owners": svg.bar_chart(
                    [(f"{r['app']} · {r['owner']}", r["requests"]) for r in rows],
                    title=f"{vendor}: requests per application and owner", unit="req"),
            },
        })
    return {"page": "isv", "vendors": sorted(vendors) if vendors is not None else None,
            "view": p.view, "month": month,
            "period": {"start": p.start, "end": p.end, "title": p.title,
                       "refresh_s": p.refresh_s},
            "by_vendor": out_vendors}


def strip_svg(value: Any) -> Any:
    """The view without its charts (the JSON API's answer)."""
    if isinstance(value, dict):
        return {k: strip_svg(v) for k, v in value.items() if k != "svg"}
    if isinstance(value, list):
        return [strip_svg(v) for v in value]
    return value


def month_of(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m")


def day_starts(month: str, now: float) -> list[float]:
    y, m = (int(x) for x in month.split("-"))
    d = datetime(y, m, 1, tzinfo=UTC)
    out = []
    while d.month == m and d.timestamp() <= now:
        out.append(d.timestamp())
        d += timedelta(days=1)
    return out
