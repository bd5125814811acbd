"""The dashboards' history, in the controller's store (component ``dashboards``).

A collector task (started with the controller's API) keeps, every ``interval_s``:

* the edges' per-minute latency histograms and per-region request counts (the edge
  API's durable history, pulled from a little before the last minute held: a minute
  an edge flushed twice comes back merged and replaces the row), rolled up per hour
  for the hour, day and month views (histograms merged, not averaged);
* a sample of every edgepoint's health, load and slots and of the instances per app
  (from the controller's latest edge reports: no extra call), rolled up per hour;
* instance churn (restores, failed restores, snapshots, stops) and HAProxy's error
  counters of the apps' backends (5xx answers, connection and response errors, retries,
  redispatches; a staged version's under ``stage-…``) from each edge's ``/metrics`` (the
  edge's own counters and HAProxy's Prometheus exporter), stored as deltas: a counter that went down started again
  (an edge restart, an HAProxy reload) and counts from zero. The last values are kept
  in the store, so a restarted controller does not count them twice.

Raw minutes and samples are kept 3 days, hourly rollups 400 days.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .._store import Migration, Store, register

log = logging.getLogger("edgeshot.dashboards")

RAW_KEEP_S = 3 * 86400
HOURLY_KEEP_S = 400 * 86400

_MIGRATIONS = [
    Migration(1, "dashboard history and sessions", """
        CREATE TABLE dash_latency (
            edgepoint TEXT NOT NULL, minute REAL NOT NULL, app TEXT NOT NULL,
            version TEXT NOT NULL, count INTEGER NOT NULL, errors INTEGER NOT NULL,
            histogram TEXT NOT NULL,
            PRIMARY KEY (edgepoint, minute, app, version)
        ) WITHOUT ROWID;
        CREATE INDEX dash_latency_minute ON dash_latency (minute);
        CREATE TABLE dash_latency_hour (
            edgepoint TEXT NOT NULL, hour REAL NOT NULL, app TEXT NOT NULL,
            version TEXT NOT NULL, count INTEGER NOT NULL, errors INTEGER NOT NULL,
            histogram TEXT NOT NULL,
            PRIMARY KEY (edgepoint, hour, app, version)
        ) WITHOUT ROWID;
        CREATE INDEX dash_latency_hour_hour ON dash_latency_hour (hour);
        CREATE TABLE dash_regions (
            edgepoint TEXT NOT NULL, minute REAL NOT NULL, app TEXT NOT NULL,
            region TEXT NOT NULL, requests INTEGER NOT NULL,
            PRIMARY KEY (edgepoint, minute, app, region)
        ) WITHOUT ROWID;
        CREATE INDEX dash_regions_minute ON dash_regions (minute);
        CREATE TABLE dash_regions_hour (
            edgepoint TEXT NOT NULL, hour REAL NOT NULL, app TEXT NOT NULL,
            region TEXT NOT NULL, requests INTEGER NOT NULL,
            PRIMARY KEY (edgepoint, hour, app, region)
        ) WITHOUT ROWID;
        CREATE INDEX dash_regions_hour_hour ON dash_regions_hour (hour);
        CREATE TABLE dash_instances (
            at REAL NOT NULL, edgepoint TEXT NOT NULL, app TEXT NOT NULL,
            version TEXT NOT NULL, ready INTEGER NOT NULL, starting INTEGER NOT NULL,
            snapshotted INTEGER NOT NULL,
            PRIMARY KEY (at, edgepoint, app, version)
        ) WITHOUT ROWID;
        CREATE TABLE dash_instances_hour (
            hour REAL NOT NULL, edgepoint TEXT NOT NULL, app TEXT NOT NULL,
            samples INTEGER NOT NULL, ready_sum INTEGER NOT NULL, ready_max INTEGER NOT NULL,
            PRIMARY KEY (hour, edgepoint, app)
        ) WITHOUT ROWID;
        CREATE TABLE dash_edges (
            at REAL NOT NULL, edgepoint TEXT NOT NULL, healthy INTEGER NOT NULL,
            load REAL NOT NULL, slots_total INTEGER NOT NULL, slots_free INTEGER NOT NULL,
            PRIMARY KEY (at, edgepoint)
        ) WITHOUT ROWID;
        CREATE TABLE dash_edges_hour (
            hour REAL NOT NULL, edgepoint TEXT NOT NULL, samples INTEGER NOT NULL,
            healthy INTEGER NOT NULL, load_sum REAL NOT NULL,
            PRIMARY KEY (hour, edgepoint)
        ) WITHOUT ROWID;
        CREATE TABLE dash_churn (
            at REAL NOT NULL, edgepoint TEXT NOT NULL, app TEXT NOT NULL,
            version TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL
        );
        CREATE INDEX dash_churn_at ON dash_churn (at);
        CREATE TABLE dash_errors (
            at REAL NOT NULL, edgepoint TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL
        );
        CREATE INDEX dash_errors_at ON dash_errors (at);
        CREATE TABLE dash_counters (
            edgepoint TEXT NOT NULL, key TEXT NOT NULL, value REAL NOT NULL,
            PRIMARY KEY (edgepoint, key)
        ) WITHOUT ROWID;
        CREATE TABLE dash_sessions (
            sid TEXT PRIMARY KEY,          -- SHA-256 of the cookie's value (never the value)
            token_sha256 TEXT NOT NULL,    -- the token that logged in (its hash, as stored)
            name TEXT NOT NULL,            -- the token's name
            created REAL NOT NULL,
            expires REAL NOT NULL
        );
    """),
]
register("dashboards", _MIGRATIONS)


def parse_minute(label: str) -> float:
    """'2026-11-27T10:42Z' -> epoch seconds."""
    return datetime.strptime(label, "%Y-%m-%dT%H:%MZ").replace(tzinfo=UTC).timestamp()


def minute_label(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%MZ")


# ------------------------------------------------------------------------ metrics text


def counters_from_metrics(text: str) -> dict[str, float]:
    """The counters the dashboards follow, from an edge's /metrics text, keyed
    ``churn|<app>|<version>|<kind>`` and ``error|<kind>`` (summed over the rest)."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = defaultdict(float)
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # a malformed exposition: keep what we had
        log.debug("metrics not understood: %s", exc)
        return {}
    for fam in families:
        for s in fam.samples:
            name, lab, v = s.name, s.labels, s.value
            if name == "edgeshot_edge_restores_total":
                kind = "restore" if lab.get("result") == "ok" else "restore-failed"
                out[f"churn|{lab.get('app', '')}|{lab.get('version', '')}|{kind}"] += v
            elif name == "edgeshot_edge_suspends_total":
                kind = "snapshot" if lab.get("kept") == "true" else "stop"
                out[f"churn|{lab.get('app', '')}|{lab.get('version', '')}|{kind}"] += v
            elif name.startswith("haproxy_backend_"):
                proxy = lab.get("proxy", "")
                if proxy.startswith("edgeshot.") or proxy.endswith(".origin"):
                    continue  # HAProxy's own refusals; the provider's origin's answers
                # a staged version's load test is not the public's experience: apart
                stage = "stage-" if proxy.endswith(".stage") else ""
                kind = {"haproxy_backend_connection_errors_total": "connection",
                        "haproxy_backend_response_errors_total": "response",
                        "haproxy_backend_retry_warnings_total": "retry",
                        "haproxy_backend_redispatch_warnings_total": "redispatch",
                        }.get(name)
                if name == "haproxy_backend_http_responses_total" and lab.get("code") == "5xx":
                    kind = "http-5xx"
                if kind is not None:
                    out[f"error|{stage}{kind}"] += v
    return dict(out)


def deltas(previous: dict[str, float], current: dict[str, float]) -> dict[str, float]:
    """Counter increases; a counter below its previous value started again at zero."""
    out = {}
    for k, v in current.items():
        before = previous.get(k)
        d = v if before is None or v < before else v - before
        if d > 0:
            out[k] = d
    return out


# ------------------------------------------------------------------------ the collector


class Collector:
    """Pulls the edges' history and counters into the store; samples the network."""

    def __init__(self, controller: Any, interval_s: float = 5.0,
                 backfill_s: float = 86400.0) -> None:
        self.c = controller
        self.store: Store = controller.store
        self.interval_s = interval_s
        self.backfill_s = backfill_s
        self.task: asyncio.Task[Any] | None = None
        self.rounds = 0
        self.last_round: float | None = None
        self._last_prune = 0.0
        self._counters: dict[str, dict[str, float]] = {}
        for ep, key, value in self.store.query("SELECT edgepoint, key, value FROM dash_counters"):
            self._counters.setdefault(ep, {})[key] = value
        self._cursor: dict[str, float] = {
            ep: m for ep, m in self.store.query(
                "SELECT edgepoint, MAX(minute) FROM dash_latency GROUP BY edgepoint")}
        self._rcursor: dict[str, float] = {
            ep: m for ep, m in self.store.query(
                "SELECT edgepoint, MAX(minute) FROM dash_regions GROUP BY edgepoint")}
        self.round_done: asyncio.Event | None = None

    def start(self) -> asyncio.Task[Any]:
        self.round_done = asyncio.Event()
        self.task = asyncio.create_task(self._loop(), name="dashboards")
        return self.task

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None

    async def _loop(self) -> None:
        while True:
            t0 = time.monotonic()
            try:
                await self.collect()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dashboards: collection failed")
            await asyncio.sleep(max(0.2, self.interval_s - (time.monotonic() - t0)))

    async def collect(self, now: float | None = None) -> None:
        """One round: samples, then every edge's history and counters (concurrently)."""
        now = time.time() if now is None else now
        self.sample(now)
        links = {name: getattr(link, "client", None) for name, link in self.c.edges.items()}
        await asyncio.gather(*(self._edge(name, client, now) for name, client in links.items()
                               if client is not None and hasattr(client, "latency_history")))
        if now - self._last_prune > 3600:
            await asyncio.to_thread(self.prune, now)
            self._last_prune = now
        self.rounds += 1
        self.last_round = now
        if self.round_done is not None:
            self.round_done.set()
            self.round_done = asyncio.Event()

    async def wait_round(self, timeout: float = 30.0) -> None:
        """Until the next round has ended (tests)."""
        ev = self.round_done
        if ev is not None:
            await asyncio.wait_for(ev.wait(), timeout)

    # -- samples -------------------------------------------------------------------------
    def sample(self, now: float) -> None:
        status = getattr(self.c.deploy, "status", {}) or {}
        edge_rows, inst_rows = [], []
        for ep, st in status.items():
            cap = st.capacity or {}
            edge_rows.append((now, ep, int(st.healthy), float(st.load or 0.0),
                              int(cap.get("slots_total") or 0), int(cap.get("slots_free") or 0)))
            if not st.healthy:
                continue
            per_placement = cap.get("instances") or {}
            for pid, p in st.placements.items():
                extra = per_placement.get(pid, {})
                ready = sum(f.ready for f in p.versions.values())
                inst_rows.append((now, ep, p.app, "*", ready, int(extra.get("starting") or 0),
                                  int(extra.get("snapshotted") or 0)))
        if not edge_rows:
            return
        hour = now // 3600 * 3600
        with self.store.tx() as db:
            db.executemany("INSERT OR REPLACE INTO dash_edges VALUES (?,?,?,?,?,?)", edge_rows)
            db.executemany("INSERT OR REPLACE INTO dash_instances VALUES (?,?,?,?,?,?,?)",
                           inst_rows)
            for _, ep, healthy, load, _t, _f in edge_rows:
                db.execute("INSERT INTO dash_edges_hour VALUES (?,?,1,?,?) "
                           "ON CONFLICT(hour, edgepoint) DO UPDATE SET samples = samples + 1, "
                           "healthy = healthy + excluded.healthy, "
                           "load_sum = load_sum + excluded.load_sum",
                           (hour, ep, healthy, load))
            for _, ep, app, _v, ready, _s, _n in inst_rows:
                db.execute("INSERT INTO dash_instances_hour VALUES (?,?,?,1,?,?) "
                           "ON CONFLICT(hour, edgepoint, app) DO UPDATE SET "
                           "samples = samples + 1, ready_sum = ready_sum + excluded.ready_sum, "
                           "ready_max = MAX(ready_max, excluded.ready_max)",
                           (hour, ep, app, ready, ready))

    # -- one edge ------------------------------------------------------------------------
    async def _edge(self, name: str, client: Any, now: float) -> None:
        try:
            await self._history(name, client, now)
        except Exception as exc:
            log.debug("dashboards: history of %s: %s", name, exc)
        try:
            await self._counters_of(name, client, now)
        except Exception as exc:
            log.debug("dashboards: metrics of %s: %s", name, exc)

    async def _history(self, name: str, client: Any, now: float) -> None:
        start = now - self.backfill_s
        lat_since = max(start, self._cursor.get(name, start) - 180)
        reg_since = max(start, self._rcursor.get(name, start) - 180)
        lat = await client.latency_history(since=datetime.fromtimestamp(lat_since, UTC))
        reg = await client.region_history(since=datetime.fromtimestamp(reg_since, UTC))
        lrows = [(name, parse_minute(m.minute), m.app, m.version, m.count, m.errors,
                  m.histogram) for m in lat.minutes]
        rrows = [(name, parse_minute(m.minute), m.app, m.region, m.requests)
                 for m in reg.minutes]
        if lrows or rrows:
            await asyncio.to_thread(self.store_history, name, lrows, rrows)
        if lrows:
            self._cursor[name] = max(self._cursor.get(name, 0.0), max(r[1] for r in lrows))
        if rrows:
            self._rcursor[name] = max(self._rcursor.get(name, 0.0), max(r[1] for r in rrows))

    def store_history(self, edgepoint: str, lrows: list[tuple[Any, ...]],
                      rrows: list[tuple[Any, ...]]) -> None:
        """Minute rows (replacing), then the hours they touch rolled up again."""
        from hdrh.histogram import HdrHistogram

        hours = {r[1] // 3600 * 3600 for r in lrows}
        rhours = {r[1] // 3600 * 3600 for r in rrows}
        with self.store.tx() as db:
            db.executemany("INSERT OR REPLACE INTO dash_latency VALUES (?,?,?,?,?,?,?)", lrows)
            db.executemany("INSERT OR REPLACE INTO dash_regions VALUES (?,?,?,?,?)", rrows)
            for h in hours:
                acc: dict[tuple[str, str], list[Any]] = {}
                for app, version, count, errors, hist in db.execute(
                        "SELECT app, version, count, errors, histogram FROM dash_latency "
                        "WHERE edgepoint = ? AND minute >= ? AND minute < ?",
                        (edgepoint, h, h + 3600)):
                    a = acc.get((app, version))
                    if a is None:
                        acc[(app, version)] = [count, errors, HdrHistogram.decode(hist)]
                    else:
                        a[0] += count
                        a[1] += errors
                        a[2].add(HdrHistogram.decode(hist))
                for (app, version), (count, errors, hist) in acc.items():
                    db.execute("INSERT OR REPLACE INTO dash_latency_hour VALUES (?,?,?,?,?,?,?)",
                               (edgepoint, h, app, version, count, errors,
                                hist.encode().decode()))
            for h in rhours:
                db.execute("DELETE FROM dash_regions_hour WHERE edgepoint = ? AND hour = ?",
                           (edgepoint, h))
                db.execute("INSERT INTO dash_regions_hour SELECT edgepoint, ?, app, region, "
                           "SUM(requests) FROM dash_regions WHERE edgepoint = ? AND minute >= ? "
                           "AND minute < ? GROUP BY edgepoint, app, region",
                           (h, edgepoint, h, h + 3600))

    async def _counters_of(self, name: str, client: Any, now: float) -> None:
        text = await client.metrics()
        current = counters_from_metrics(text)
        if not current:
            return
        prev = self._counters.get(name, {})
        d = deltas(prev, current)
        self._counters[name] = current
        churn, errors = [], []
        for key, n in d.items():
            parts = key.split("|")
            if parts[0] == "churn" and len(parts) == 4:
                churn.append((now, name, parts[1], parts[2], parts[3], int(round(n))))
            elif parts[0] == "error":
                errors.append((now, name, parts[1], int(round(n))))
        with self.store.tx() as db:
            db.executemany("INSERT INTO dash_churn VALUES (?,?,?,?,?,?)", churn)
            db.executemany("INSERT INTO dash_errors VALUES (?,?,?,?)", errors)
            db.execute("DELETE FROM dash_counters WHERE edgepoint = ?", (name,))
            db.executemany("INSERT INTO dash_counters VALUES (?,?,?)",
                           [(name, k, v) for k, v in current.items()])

    # -- retention -----------------------------------------------------------------------
    def prune(self, now: float) -> None:
        raw, hourly = now - RAW_KEEP_S, now - HOURLY_KEEP_S
        with self.store.tx() as db:
            for table, col, cut in (("dash_latency", "minute", raw), ("dash_regions", "minute", raw),
                                    ("dash_instances", "at", raw), ("dash_edges", "at", raw),
                                    ("dash_latency_hour", "hour", hourly),
                                    ("dash_regions_hour", "hour", hourly),
                                    ("dash_instances_hour", "hour", hourly),
                                    ("dash_edges_hour", "hour", hourly),
                                    ("dash_churn", "at", hourly), ("dash_errors", "at", hourly)):
                db.execute(f"DELETE FROM {table} WHERE {col} < ?", (cut,))
            db.execute("DELETE FROM dash_sessions WHERE expires < ?", (now,))


def hours_between(start: float, end: float) -> Iterable[float]:
    t = start // 3600 * 3600
    while t < end:
        yield t
        t += 3600


__all__ = ["Collector", "counters_from_metrics", "deltas", "parse_minute", "minute_label",
           "hours_between"]
