"""The dashboards' I/O: store rows and the controller's state into the view models' plain
inputs (`views.py`). Every reader takes the set of apps the caller may see and asks the
store for those only: another owner's rows are never read for an owner's page."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from . import views as V

MINUTE_VIEWS = ("live",)
_HOUR = timedelta(hours=1)


def _in(apps: Iterable[str]) -> tuple[str, list[str]]:
    names = sorted(set(apps))
    return ("(" + ",".join("?" * len(names)) + ")") if names else "(NULL)", names


# ------------------------------------------------------------------------------ apps


def apps_info(c: Any) -> list[V.AppInfo]:
    """Every app of the network with its SLA (the plan's placements) and budget."""
    plan = c.plan
    by_app = {a.name: a for a in plan.apps}
    out = []
    for row in c.store.apps():
        name = row["name"]
        ap = by_app.get(name)
        if ap is None and row["primary_version"]:
            v = c.store.version(name, row["primary_version"])
            if v is not None:
                from edgeshot.plan import AppPlan
                ap = AppPlan.model_validate_json(v["plan"])
        pl = next((p for p in plan.placements if p.app == name), None)
        sc = pl.scaling if pl is not None else None
        out.append(V.AppInfo(
            name=name, owner=row["owner"], vendor=row["vendor"],
            primary=row["primary_version"], canary=row["canary_version"],
            canary_weight=row["canary_weight"] or 0,
            sla_ms=sc.max_response_ms if sc else 0, percentile=sc.percentile if sc else 95.0,
            users_per_instance=sc.users_per_instance if sc else 0,
            budget=Decimal(str(ap.budget.amount)) if ap is not None else Decimal(0),
            currency=ap.budget.currency if ap is not None else "EUR",
            edgepoints=tuple(p.edgepoint for p in plan.placements if p.app == name)))
    return out


def visible(apps: list[V.AppInfo], *, owners: Iterable[str] | None = None,
            vendors: Iterable[str] | None = None) -> list[V.AppInfo]:
    """The apps an owner (or a vendor) sees; None for both: every app (operators)."""
    if owners is None and vendors is None:
        return list(apps)
    o, v = set(owners or ()), set(vendors or ())
    return [a for a in apps if a.owner in o or a.vendor in v]


# ------------------------------------------------------------------------------ history


def _per_minute_or_hour(c: Any, p: V.Period, table: str, columns: str,
                        apps: Iterable[str]) -> list[Any]:
    """(edgepoint, minute or hour, *columns) of ``apps`` in the period, from ``table``
    (per minute) or ``table``_hour (the views longer than MINUTE_VIEWS)."""
    inn, names = _in(apps)
    t, tbl = ("minute", table) if p.view in MINUTE_VIEWS else ("hour", f"{table}_hour")
    return c.store.query(f"SELECT edgepoint, {t}, {columns} FROM {tbl} "
                         f"WHERE {t} >= ? AND {t} < ? AND app IN {inn}",
                         (p.start, p.end, *names))


def latency(c: Any, p: V.Period, apps: Iterable[str]) -> list[V.LatencyRow]:
    return [V.LatencyRow(*r) for r in _per_minute_or_hour(
        c, p, "dash_latency", "app, version, count, errors, histogram", apps)]


def regions(c: Any, p: V.Period, apps: Iterable[str]) -> list[V.RegionRow]:
    return [V.RegionRow(*r) for r in _per_minute_or_hour(
        c, p, "dash_regions", "app, region, requests", apps)]


def instance_samples(c: Any, p: V.Period, apps: Iterable[str]) -> list[V.InstanceSample]:
    inn, names = _in(apps)
    if p.view in MINUTE_VIEWS:
        rows = c.store.query(
            f"SELECT at, edgepoint, app, version, ready, starting, snapshotted FROM "
            f"dash_instances WHERE at >= ? AND at < ? AND app IN {inn}", (p.start, p.end, *names))
        return [V.InstanceSample(*r) for r in rows]
    rows = c.store.query(
        f"SELECT hour, edgepoint, app, samples, ready_sum FROM dash_instances_hour "
        f"WHERE hour >= ? AND hour < ? AND app IN {inn}", (p.start, p.end, *names))
    return [V.InstanceSample(h, ep, app, "*", s_sum / n if n else 0)  # type: ignore[arg-type]
            for h, ep, app, n, s_sum in rows]


def edge_samples(c: Any, p: V.Period) -> list[V.EdgeSample]:
    if p.view in MINUTE_VIEWS:
        return [V.EdgeSample(at, ep, bool(h), load, t, f) for at, ep, h, load, t, f in
                c.store.query("SELECT at, edgepoint, healthy, load, slots_total, slots_free "
                              "FROM dash_edges WHERE at >= ? AND at < ?", (p.start, p.end))]
    return [V.EdgeSample(h, ep, healthy * 2 >= n, load / n if n else 0.0, 0, 0)
            for h, ep, n, healthy, load in
            c.store.query("SELECT hour, edgepoint, samples, healthy, load_sum FROM "
                          "dash_edges_hour WHERE hour >= ? AND hour < ?", (p.start, p.end))]


def churn(c: Any, p: V.Period, apps: Iterable[str] | None = None) -> list[V.ChurnRow]:
    if apps is None:
        rows = c.store.query("SELECT at, edgepoint, app, version, kind, n FROM dash_churn "
                             "WHERE at >= ? AND at < ?", (p.start, p.end))
    else:
        inn, names = _in(apps)
        rows = c.store.query(f"SELECT at, edgepoint, app, version, kind, n FROM dash_churn "
                             f"WHERE at >= ? AND at < ? AND app IN {inn}",
                             (p.start, p.end, *names))
    return [V.ChurnRow(*r) for r in rows]


def errors(c: Any, p: V.Period) -> list[V.ErrorRow]:
    return [V.ErrorRow(*r) for r in c.store.query(
        "SELECT at, edgepoint, kind, n FROM dash_errors WHERE at >= ? AND at < ?",
        (p.start, p.end))]


def events(c: Any, apps: Iterable[str] | None, limit: int = 200) -> list[dict[str, Any]]:
    rows = c.store.query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
    out = []
    names = set(apps) if apps is not None else None
    for r in reversed(rows):
        d = dict(r)
        if names is not None and d.get("app") not in names:
            continue
        out.append(d)
    return out


# ------------------------------------------------------------------------------ now


def edges_now(c: Any, apps: Iterable[str] | None) -> list[V.EdgeNow]:
    """Each edgepoint as its latest report has it; per app only the `apps` given (None:
    all)."""
    names = set(apps) if apps is not None else None
    status = getattr(c.deploy, "status", {}) or {}
    out = []
    for e in c.store.edgepoints():
        st = status.get(e["name"])
        cap = (st.capacity if st is not None else None) or {}
        per_app: dict[str, dict[str, dict[str, Any]]] = {}
        if st is not None:
            inst = cap.get("instances") or {}
            for pid, pl in st.placements.items():
                if names is not None and pl.app not in names:
                    continue
                extra = inst.get(pid, {})
                vs = {}
                for i, (v, f) in enumerate(sorted(pl.versions.items())):
                    vs[v] = {"ready": f.ready, "requests": f.requests, "errors": f.errors,
                             "latency_ms": f.latency_ms,
                             # starting / snapshotted are per placement: on its first version
                             "starting": int(extra.get("starting") or 0) if i == 0 else 0,
                             "snapshotted": int(extra.get("snapshotted") or 0) if i == 0 else 0}
                per_app[pl.app] = vs
        out.append(V.EdgeNow(
            name=e["name"], region=e["region"], healthy=bool(e["healthy"]),
            last_seen=e["last_seen"], error=st.error if st is not None else None,
            mode=cap.get("mode"), load=float(e["load"] or 0.0),
            slots_total=int(cap.get("slots_total") or 0),
            slots_free=int(cap.get("slots_free") or 0), apps=per_app))
    return out


def agents_now(c: Any) -> list[V.AgentNow]:
    status = getattr(c.deploy, "status", {}) or {}
    per_server: dict[str, int] = {}
    for st in status.values():
        for name, s in ((st.capacity or {}).get("servers") or {}).items():
            per_server[name] = int(s.get("instances") or 0)
    out = []
    for a in c.store.agents():
        rep = a.get("report") or {}
        if isinstance(rep, str):
            rep = json.loads(rep)
        h, cap = rep.get("health") or {}, rep.get("capacity") or {}
        slots = cap.get("slots") or {}
        mem = cap.get("memory") or {}
        out.append(V.AgentNow(
            server=a["server"], edgepoint=a["edgepoint"], healthy=bool(a["healthy"]),
            last_seen=a["last_seen"], error=rep.get("error"),
            restores=cap.get("restores"),
            slots_total=int(slots["total"]) if "total" in slots else None,
            slots_free=int(slots["free"]) if "free" in slots else None,
            cpu_free=(cap.get("cpu") or {}).get("free"),
            memory_free_mb=mem["free"] / 2**20 if "free" in mem else None,
            instances=h.get("instances", per_server.get(a["server"])),
            version=h.get("version")))
    return out


# ------------------------------------------------------------------------------ money


def _usage_row(owner: str, vendor: str, app: str, start: datetime, end: datetime, peak: int,
               q: list[int]) -> Any:
    from edgeshot.control import billing
    micro = Decimal(1_000_000)
    kw: dict[str, Any] = dict(
        owner=owner, vendor=vendor, app=app, start=start, end=end,
        cpu_seconds=Decimal(q[0]) / micro, memory_gb_seconds=Decimal(q[1]) / micro,
        disk_read_bytes=q[2], disk_write_bytes=q[3], storage_gb_hours=Decimal(q[4]) / micro,
        net_in_bytes=q[5], net_out_bytes=q[6], requests=q[7])
    if "peak_share" in {f.name for f in fields(billing.Usage)}:
        kw["peak_share"] = Decimal(peak)
    return billing.Usage(**kw)


def _has_table(c: Any, name: str) -> bool:
    return bool(c.store.query("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?",
                              (name,)))


def pricing(c: Any) -> Any:
    from edgeshot.spec import Pricing
    return Pricing.model_validate(c.plan.pricing)


def spend(c: Any, apps: Iterable[str], now: float | None = None) -> V.SpendInput | None:
    """This month's metered usage of `apps`, per day (metering's hourly aggregates);
    None when metering keeps no aggregates here."""
    if not _has_table(c, "usage_hourly"):
        return None
    now = time.time() if now is None else now
    pr = pricing(c)
    zone = pr.peak.timezone if pr.peak else "UTC"
    from edgeshot.control import billing
    month = datetime.fromtimestamp(now, UTC).astimezone(_tz(zone)).strftime("%Y-%m")
    m0, m1 = billing.month_bounds(month, zone)
    inn, names = _in(apps)
    rows = c.store.query(
        f"SELECT hour, owner, vendor, app, peak, SUM(cpu_us), SUM(memory_gb_us), "
        f"SUM(disk_read_bytes), SUM(disk_write_bytes), SUM(storage_gb_uh), SUM(net_in_bytes), "
        f"SUM(net_out_bytes), SUM(requests) FROM usage_hourly WHERE hour >= ? AND hour < ? "
        f"AND app IN {inn} GROUP BY hour, owner, vendor, app, peak",
        (int(m0.timestamp() // 3600), int(-(-m1.timestamp() // 3600)), *names))
    days: dict[float, list[Any]] = {}
    for hour, owner, vendor, app, peak, *q in rows:
        t0 = datetime.fromtimestamp(hour * 3600, UTC)
        day = datetime(t0.year, t0.month, t0.day, tzinfo=UTC).timestamp()
        days.setdefault(day, []).append(
            _usage_row(owner, vendor, app, t0, t0.replace(minute=0) + _HOUR, peak, list(q)))
    day_list = [(d, tuple(days.get(d, ()))) for d in V.day_starts(
        datetime.fromtimestamp(now, UTC).strftime("%Y-%m"), now)]
    return V.SpendInput(month=month, zone=zone, pricing=pr, daily=tuple(day_list),
                        now=datetime.fromtimestamp(now, UTC))


def month_usage(c: Any, apps: Iterable[str], now: float | None = None
                ) -> tuple[list[Any], str | None]:
    sp = spend(c, apps, now)
    if sp is None:
        return [], None
    return [u for _, rows in sp.daily for u in rows], sp.month


def _tz(zone: str) -> Any:
    from zoneinfo import ZoneInfo
    return ZoneInfo(zone)




# ------------------------------------------------------------------------------ capacity


def capacity(c: Any, apps: Iterable[str]) -> list[V.CapacityView]:
    if not _has_table(c, "capacity_tests"):
        return []
    inn, names = _in(apps)
    staged = set()
    if _has_table(c, "staged_versions"):
        staged = {(a, v) for a, v in c.store.query(
            f"SELECT app, version FROM staged_versions WHERE state = 'staged' AND app IN {inn}",
            tuple(names))}
    out = []
    for r in c.store.query(f"SELECT * FROM capacity_tests WHERE app IN {inn} ORDER BY id",
                           tuple(names)):
        d = dict(r)
        res = json.loads(d.get("result") or "{}")
        curve = tuple((pt["users"], pt.get("p_ms"), pt.get("error_rate", 0.0),
                       pt.get("rps", 0.0)) for pt in res.get("curve", []))
        out.append(V.CapacityView(
            app=d["app"], version=d["version"], state=d["state"],
            users_per_instance=res.get("users_per_instance"), required=res.get("required"),
            reasons=tuple(res.get("reasons", [])), curve=curve,
            percentile=res.get("percentile", 95.0), max_response_ms=res.get("max_response_ms"),
            started=d.get("started"), finished=d.get("finished"),
            staged=(d["app"], d["version"]) in staged))
    return out
