"""The edge process's durable state: one SQLite database (WAL) under its state directory.

* ``usage``: data-path usage records (docs/architecture.md format), ``seq`` per edgepoint,
  written in the same transaction as the counter ``baseline`` they were computed
  against: a record is neither lost nor written twice across reloads, restarts or
  crashes (a crash before the commit recomputes the same delta from the old baseline).
* ``baseline``: per HAProxy worker (or the activator, worker 0) and server, the
  counters already turned into records.
* ``instances``: who each instance belongs to (app, version, owner, vendor), kept
  after it is gone so that late counters are still attributed.
* ``latency``: per minute and (app, version), an HDR histogram of response times.
* ``regions``: per minute, app and region, request counts.
* ``placements``: what the controller asked this edgepoint to serve (survives restarts).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS usage (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    instance TEXT NOT NULL, app TEXT NOT NULL, version TEXT NOT NULL, owner TEXT NOT NULL,
    vendor TEXT NOT NULL, start TEXT NOT NULL, "end" TEXT NOT NULL,
    net_in_bytes INTEGER NOT NULL, net_out_bytes INTEGER NOT NULL, requests INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS baseline (
    worker INTEGER NOT NULL, backend TEXT NOT NULL, server TEXT NOT NULL,
    requests INTEGER NOT NULL, bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL,
    since TEXT NOT NULL,
    PRIMARY KEY (worker, backend, server)
);
CREATE TABLE IF NOT EXISTS instances (
    instance TEXT PRIMARY KEY, app TEXT NOT NULL, version TEXT NOT NULL, owner TEXT NOT NULL,
    vendor TEXT NOT NULL, server TEXT NOT NULL, address TEXT, seen TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS latency (
    minute TEXT NOT NULL, app TEXT NOT NULL, version TEXT NOT NULL,
    count INTEGER NOT NULL, p50 REAL, p95 REAL, p99 REAL, max REAL, errors INTEGER NOT NULL,
    histogram TEXT NOT NULL,
    PRIMARY KEY (minute, app, version)
);
CREATE TABLE IF NOT EXISTS regions (
    minute TEXT NOT NULL, app TEXT NOT NULL, region TEXT NOT NULL, requests INTEGER NOT NULL,
    PRIMARY KEY (minute, app, region)
);
CREATE TABLE IF NOT EXISTS placements (id TEXT PRIMARY KEY, body TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Counters:
    requests: int
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class InstanceMeta:
    instance: str
    app: str
    version: str
    owner: str
    vendor: str
    server: str
    address: str | None = None


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds")


class Store:
    """Thread-safe (one connection behind a lock; the edge calls it from its loop and
    from worker threads)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self._lock = threading.RLock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA busy_timeout=5000")
        path.chmod(0o600)
        self.db.executescript(_SCHEMA)
        with self.tx() as c:
            row = c.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                c.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) > SCHEMA_VERSION:
                raise RuntimeError(f"{path}: schema {row[0]} is newer than this edgeshot "
                                   f"({SCHEMA_VERSION}); upgrade edgeshot")

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def read(self, sql: str, args: Iterable[object] = ()) -> list[tuple]:
        with self._lock:
            return self.db.execute(sql, tuple(args)).fetchall()

    # -- instances -------------------------------------------------------------------------
    def remember(self, m: InstanceMeta, now: datetime) -> None:
        with self.tx() as c:
            c.execute("INSERT OR REPLACE INTO instances VALUES (?,?,?,?,?,?,?,?)",
                      (m.instance, m.app, m.version, m.owner, m.vendor, m.server, m.address,
                       iso(now)))

    def instance(self, instance: str) -> InstanceMeta | None:
        rows = self.read("SELECT instance, app, version, owner, vendor, server, address "
                         "FROM instances WHERE instance=?", (instance,))
        return InstanceMeta(*rows[0]) if rows else None

    # -- usage -----------------------------------------------------------------------------
    def baselines(self) -> dict[tuple[int, str, str], tuple[Counters, str]]:
        return {(w, b, s): (Counters(r, i, o), since) for w, b, s, r, i, o, since in
                self.read("SELECT worker, backend, server, requests, bytes_in, bytes_out, "
                          "since FROM baseline")}

    def commit_usage(self, records: list[dict], baselines: dict[tuple[int, str, str],
                                                                 tuple[Counters, str]],
                     forget: Iterable[tuple[int, str, str]] = ()) -> list[int]:
        """Records and the baselines they were computed against, in one transaction."""
        seqs = []
        with self.tx() as c:
            for r in records:
                cur = c.execute(
                    'INSERT INTO usage (instance, app, version, owner, vendor, start, "end", '
                    "net_in_bytes, net_out_bytes, requests) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (r["instance"], r["app"], r["version"], r["owner"], r["vendor"],
                     r["start"], r["end"], r["net_in_bytes"], r["net_out_bytes"],
                     r["requests"]))
                seqs.append(cur.lastrowid)
            for (w, b, s), (cnt, since) in baselines.items():
                c.execute("INSERT OR REPLACE INTO baseline VALUES (?,?,?,?,?,?,?)",
                          (w, b, s, cnt.requests, cnt.bytes_in, cnt.bytes_out, since))
            for w, b, s in forget:
                c.execute("DELETE FROM baseline WHERE worker=? AND backend=? AND server=?",
                          (w, b, s))
        return seqs

    def usage_after(self, after: int, limit: int) -> list[dict]:
        rows = self.read('SELECT seq, instance, app, version, owner, vendor, start, "end", '
                         "net_in_bytes, net_out_bytes, requests FROM usage WHERE seq > ? "
                         "ORDER BY seq LIMIT ?", (after, limit))
        keys = ("seq", "instance", "app", "version", "owner", "vendor", "start", "end",
                "net_in_bytes", "net_out_bytes", "requests")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def usage_head(self) -> int:
        return self.read("SELECT COALESCE(MAX(seq), 0) FROM usage")[0][0]

    # -- history -----------------------------------------------------------------------------
    def add_latency(self, minute: str, app: str, version: str, count: int, p50: float,
                    p95: float, p99: float, mx: float, errors: int, histogram: str) -> None:
        """Merge into the minute's row (a minute flushed twice, e.g. around a restart)."""
        from hdrh.histogram import HdrHistogram
        with self.tx() as c:
            row = c.execute("SELECT count, errors, histogram FROM latency WHERE minute=? AND "
                            "app=? AND version=?", (minute, app, version)).fetchone()
            if row is not None:
                h = HdrHistogram.decode(row[2])
                h.add(HdrHistogram.decode(histogram))
                count, errors = row[0] + count, row[1] + errors
                p50, p95, p99 = (h.get_value_at_percentile(q) for q in (50, 95, 99))
                mx = h.get_max_value()
                histogram = h.encode().decode()
            c.execute("INSERT OR REPLACE INTO latency VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (minute, app, version, count, p50, p95, p99, mx, errors, histogram))

    def add_regions(self, minute: str, counts: dict[tuple[str, str], int]) -> None:
        with self.tx() as c:
            for (app, region), n in counts.items():
                c.execute("INSERT INTO regions VALUES (?,?,?,?) ON CONFLICT(minute, app, region)"
                          " DO UPDATE SET requests = requests + excluded.requests",
                          (minute, app, region, n))

    def latency_history(self, since: str, until: str, app: str | None = None,
                        owner_apps: set[str] | None = None) -> list[dict]:
        rows = self.read("SELECT minute, app, version, count, p50, p95, p99, max, errors, "
                         "histogram FROM latency WHERE minute >= ? AND minute < ? "
                         + ("AND app = ? " if app else "") + "ORDER BY minute, app, version",
                         (since, until, *([app] if app else [])))
        keys = ("minute", "app", "version", "count", "p50", "p95", "p99", "max", "errors",
                "histogram")
        return [dict(zip(keys, r, strict=True)) for r in rows
                if owner_apps is None or r[1] in owner_apps]

    def region_history(self, since: str, until: str, app: str | None = None,
                       owner_apps: set[str] | None = None) -> list[dict]:
        rows = self.read("SELECT minute, app, region, requests FROM regions WHERE minute >= ? "
                         "AND minute < ? " + ("AND app = ? " if app else "")
                         + "ORDER BY minute, app, region", (since, until, *([app] if app else [])))
        return [{"minute": m, "app": a, "region": r, "requests": n} for m, a, r, n in rows
                if owner_apps is None or a in owner_apps]

    # -- placements ---------------------------------------------------------------------------
    def save_placements(self, bodies: dict[str, dict]) -> None:
        with self.tx() as c:
            c.execute("DELETE FROM placements")
            for pid, body in bodies.items():
                c.execute("INSERT INTO placements VALUES (?, ?)", (pid, json.dumps(body)))

    def load_placements(self) -> dict[str, dict]:
        return {pid: json.loads(body) for pid, body in
                self.read("SELECT id, body FROM placements ORDER BY id")}
