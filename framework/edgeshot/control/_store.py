"""The controller's state: one SQLite file, WAL, schema migrations per component.

Each component of the controller (the network itself, billing, dashboards…)
owns a list of migrations, applied in order and recorded in `schema_versions`
in the same transaction as the change: a migration runs once or not at all,
and a newer controller upgrades an older file in place. Components register
their migrations with `register()` before a `Store` is opened; a file written
by a newer controller (a version this code does not know) is refused rather
than misread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: str | Callable[[sqlite3.Connection], None]  # SQL script, or a function


_REGISTRY: dict[str, list[Migration]] = {}


def register(component: str, migrations: list[Migration]) -> None:
    """Declare a component's migrations (versions 1, 2, 3… in order)."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError(f"{component}: migration versions must be 1..n in order, got {versions}")
    _REGISTRY[component] = list(migrations)


class SchemaTooNew(RuntimeError):
    pass


_NETWORK = [
    Migration(1, "network state", """
        CREATE TABLE edgepoints (
            name TEXT PRIMARY KEY,
            region TEXT NOT NULL,
            latitude REAL NOT NULL,
            longitude REAL NOT NULL,
            edge_url TEXT NOT NULL,     -- the edge process's API
            public_url TEXT NOT NULL,   -- where its HAProxy serves users
            healthy INTEGER NOT NULL DEFAULT 0,
            last_seen REAL,
            load REAL NOT NULL DEFAULT 0,
            report TEXT                 -- the last report, JSON
        );
        CREATE TABLE agents (
            server TEXT PRIMARY KEY,
            edgepoint TEXT NOT NULL,
            url TEXT NOT NULL,
            healthy INTEGER NOT NULL DEFAULT 0,
            last_seen REAL,
            report TEXT
        );
        CREATE TABLE apps (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            vendor TEXT NOT NULL,
            primary_version TEXT,
            previous_version TEXT,
            canary_version TEXT,
            canary_weight INTEGER NOT NULL DEFAULT 0,
            updated REAL NOT NULL
        );
        CREATE TABLE versions (
            app TEXT NOT NULL,
            version TEXT NOT NULL,
            plan TEXT NOT NULL,         -- the AppPlan of this version, JSON
            appshot TEXT,               -- appshot name on the agents
            digest TEXT,
            state TEXT NOT NULL,        -- planned | captured | distributed | failed
            detail TEXT,
            created REAL NOT NULL,
            PRIMARY KEY (app, version)
        );
        CREATE TABLE distributions (
            app TEXT NOT NULL,
            version TEXT NOT NULL,
            server TEXT NOT NULL,
            state TEXT NOT NULL,        -- verified | failed | deleted
            detail TEXT,
            at REAL NOT NULL,
            PRIMARY KEY (app, version, server)
        );
        CREATE TABLE deployments (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            app TEXT NOT NULL,
            kind TEXT NOT NULL,         -- initial | canary | rollback
            from_version TEXT,
            to_version TEXT NOT NULL,
            weight INTEGER NOT NULL,
            phase TEXT NOT NULL,        -- progressing | promoted | rolled_back | superseded
            good INTEGER NOT NULL DEFAULT 0,
            failed INTEGER NOT NULL DEFAULT 0,
            checks INTEGER NOT NULL DEFAULT 0,
            policy TEXT,
            reasons TEXT,
            started REAL NOT NULL,
            finished REAL
        );
        CREATE INDEX deployments_app ON deployments (app, id);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            app TEXT,
            edgepoint TEXT,
            message TEXT NOT NULL,
            data TEXT
        );
        CREATE INDEX events_app ON events (app, id);
    """),
]
register("network", _NETWORK)


class Store:
    """The controller's SQLite database. Short transactions; safe across threads."""

    def __init__(self, path: str | Path, *, components: list[str] | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                  timeout=10.0)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.applied = self.migrate(components)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE … COMMIT, ROLLBACK on error)."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def migrate(self, components: list[str] | None = None) -> list[str]:
        """Apply pending migrations; returns 'component:version name' for each applied."""
        with self._lock:
            self.db.execute("CREATE TABLE IF NOT EXISTS schema_versions ("
                            "component TEXT PRIMARY KEY, version INTEGER NOT NULL, "
                            "applied REAL NOT NULL)")
            applied = []
            for component in components or sorted(_REGISTRY):
                migrations = _REGISTRY[component]
                row = self.db.execute("SELECT version FROM schema_versions WHERE component = ?",
                                      (component,)).fetchone()
                have = row[0] if row else 0
                if have > len(migrations):
                    raise SchemaTooNew(
                        f"{self.path}: schema {component} v{have} is newer than this "
                        f"controller knows (v{len(migrations)}); upgrade edgeshot")
                for m in migrations[have:]:
                    with self.tx() as db:
                        if isinstance(m.apply, str):
                            for statement in _statements(m.apply):
                                db.execute(statement)
                        else:
                            m.apply(db)
                        db.execute("INSERT INTO schema_versions (component, version, applied) "
                                   "VALUES (?, ?, ?) ON CONFLICT(component) DO UPDATE SET "
                                   "version = excluded.version, applied = excluded.applied",
                                   (component, m.version, time.time()))
                    applied.append(f"{component}:{m.version} {m.name}")
            return applied

    def schema(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.db.execute("SELECT component, version FROM schema_versions")}

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    # ------------------------------------------------------------- edgepoints, agents

    def upsert_edgepoint(self, name: str, region: str, latitude: float, longitude: float,
                         edge_url: str, public_url: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO edgepoints (name, region, latitude, longitude, edge_url, "
                       "public_url) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
                       "region = excluded.region, latitude = excluded.latitude, "
                       "longitude = excluded.longitude, edge_url = excluded.edge_url, "
                       "public_url = excluded.public_url",
                       (name, region, latitude, longitude, edge_url, public_url))

    def report_edgepoint(self, name: str, healthy: bool, load: float,
                         report: dict[str, Any] | None) -> None:
        with self.tx() as db:
            db.execute("UPDATE edgepoints SET healthy = ?, load = ?, report = ?, "
                       "last_seen = CASE WHEN ? THEN ? ELSE last_seen END WHERE name = ?",
                       (int(healthy), load, json.dumps(report) if report is not None else None,
                        int(healthy), time.time(), name))

    def edgepoints(self) -> list[dict[str, Any]]:
        return [_row(r, "report") for r in self.query("SELECT * FROM edgepoints ORDER BY rowid")]

    def upsert_agent(self, server: str, edgepoint: str, url: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO agents (server, edgepoint, url) VALUES (?, ?, ?) "
                       "ON CONFLICT(server) DO UPDATE SET edgepoint = excluded.edgepoint, "
                       "url = excluded.url", (server, edgepoint, url))

    def report_agent(self, server: str, healthy: bool, report: dict[str, Any] | None) -> None:
        with self.tx() as db:
            db.execute("UPDATE agents SET healthy = ?, report = ?, "
                       "last_seen = CASE WHEN ? THEN ? ELSE last_seen END WHERE server = ?",
                       (int(healthy), json.dumps(report) if report is not None else None,
                        int(healthy), time.time(), server))

    def agents(self) -> list[dict[str, Any]]:
        return [_row(r, "report") for r in self.query("SELECT * FROM agents ORDER BY rowid")]

    # ------------------------------------------------------------------ apps, versions

    def put_version(self, app: str, version: str, plan_json: str, state: str = "planned") -> bool:
        """Record a version (its AppPlan); False when it existed already (kept as it was)."""
        with self.tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO versions (app, version, plan, state, created) "
                             "VALUES (?, ?, ?, ?, ?)", (app, version, plan_json, state, time.time()))
            return cur.rowcount == 1

    def set_version(self, app: str, version: str, **fields: Any) -> None:
        allowed = {"appshot", "digest", "state", "detail", "plan"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown version fields {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE versions SET {sets} WHERE app = ? AND version = ?",
                       (*fields.values(), app, version))

    def version(self, app: str, version: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM versions WHERE app = ? AND version = ?", (app, version))
        return dict(rows[0]) if rows else None

    def versions(self, app: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query(
            "SELECT * FROM versions WHERE app = ? ORDER BY created, version", (app,))]

    def put_app(self, name: str, owner: str, vendor: str) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO apps (name, owner, vendor, updated) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, "
                       "vendor = excluded.vendor", (name, owner, vendor, time.time()))

    def set_app(self, name: str, **fields: Any) -> None:
        allowed = {"primary_version", "previous_version", "canary_version", "canary_weight"}
        bad = set(fields) - allowed
        if bad:
            raise ValueError(f"unknown app fields {sorted(bad)}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE apps SET {sets}, updated = ? WHERE name = ?",
                       (*fields.values(), time.time(), name))

    def app(self, name: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM apps WHERE name = ?", (name,))
        return dict(rows[0]) if rows else None

    def apps(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.query("SELECT * FROM apps ORDER BY name")]

    def set_distribution(self, app: str, version: str, server: str, state: str,
                         detail: str | None = None) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO distributions (app, version, server, state, detail, at) "
                       "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(app, version, server) DO UPDATE "
                       "SET state = excluded.state, detail = excluded.detail, at = excluded.at",
                       (app, version, server, state, detail, time.time()))

    def distributions(self, app: str, version: str | None = None) -> list[dict[str, Any]]:
        if version is None:
            rows = self.query("SELECT * FROM distributions WHERE app = ? ORDER BY version, server",
                              (app,))
        else:
            rows = self.query("SELECT * FROM distributions WHERE app = ? AND version = ? "
                              "ORDER BY server", (app, version))
        return [dict(r) for r in rows]

    # ------------------------------------------------------------------ deployments

    def start_deployment(self, app: str, kind: str, from_version: str | None, to_version: str,
                         weight: int, policy: dict[str, Any] | None = None) -> int:
        """A new deployment; a progressing one of the same app is marked superseded."""
        now = time.time()
        with self.tx() as db:
            db.execute("UPDATE deployments SET phase = 'superseded', finished = ? "
                       "WHERE app = ? AND phase = 'progressing'", (now, app))
            cur = db.execute(
                "INSERT INTO deployments (app, kind, from_version, to_version, weight, phase, "
                "policy, reasons, started) VALUES (?, ?, ?, ?, ?, 'progressing', ?, '[]', ?)",
                (app, kind, from_version, to_version, weight,
                 json.dumps(policy) if policy else None, now))
            return int(cur.lastrowid or 0)

    def update_deployment(self, dep_id: int, *, phase: str, weight: int, good: int, failed: int,
                          checks: int, reasons: list[str] | None = None) -> None:
        finished = time.time() if phase != "progressing" else None
        with self.tx() as db:
            row = db.execute("SELECT reasons FROM deployments WHERE id = ?", (dep_id,)).fetchone()
            history = json.loads(row[0] or "[]") if row else []
            if reasons:
                history = (history + [{"at": time.time(), "reasons": reasons}])[-50:]
            db.execute("UPDATE deployments SET phase = ?, weight = ?, good = ?, failed = ?, "
                       "checks = ?, reasons = ?, finished = COALESCE(?, finished) WHERE id = ?",
                       (phase, weight, good, failed, checks, json.dumps(history), finished,
                        dep_id))

    def deployment(self, dep_id: int) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM deployments WHERE id = ?", (dep_id,))
        return _row(rows[0], "reasons", "policy") if rows else None

    def deployments(self, app: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        if app is None:
            rows = self.query("SELECT * FROM deployments ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self.query("SELECT * FROM deployments WHERE app = ? ORDER BY id DESC LIMIT ?",
                              (app, limit))
        return [_row(r, "reasons", "policy") for r in rows]

    def active_deployment(self, app: str) -> dict[str, Any] | None:
        rows = self.query("SELECT * FROM deployments WHERE app = ? AND phase = 'progressing' "
                          "ORDER BY id DESC LIMIT 1", (app,))
        return _row(rows[0], "reasons", "policy") if rows else None

    # ------------------------------------------------------------------ events

    def event(self, kind: str, message: str, *, app: str | None = None,
              edgepoint: str | None = None, data: dict[str, Any] | None = None) -> int:
        with self.tx() as db:
            cur = db.execute("INSERT INTO events (at, kind, app, edgepoint, message, data) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (time.time(), kind, app, edgepoint, message,
                              json.dumps(data) if data is not None else None))
            return int(cur.lastrowid or 0)

    def last_event_id(self) -> int:
        """The id of the newest event (0: none yet): where a new run's events begin."""
        rows = self.query("SELECT COALESCE(MAX(id), 0) AS id FROM events")
        return int(rows[0]["id"])

    def events(self, after: int = 0, limit: int = 100, app: str | None = None) -> list[dict[str, Any]]:
        if app is None:
            rows = self.query("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?",
                              (after, limit))
        else:
            rows = self.query("SELECT * FROM events WHERE id > ? AND app = ? ORDER BY id LIMIT ?",
                              (after, app, limit))
        return [_row(r, "data") for r in rows]


def _row(row: sqlite3.Row, *json_fields: str) -> dict[str, Any]:
    out = dict(row)
    for f in json_fields:
        if out.get(f) is not None:
            out[f] = json.loads(out[f])
    return out


def _statements(script: str) -> Iterator[str]:
    """Split a migration script into statements (sqlite3.complete_statement decides)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""
    if buf.strip():
        yield buf.strip()
