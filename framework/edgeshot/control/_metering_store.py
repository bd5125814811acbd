"""Metering's tables in the controller's store (component ``metering``) and the SQL that
reads them: usage records, each source's cursor, hourly aggregates, bills.

Exactly once, by construction (docs/architecture.md): a page of records of one source, the
hourly aggregates it adds to and the source's new cursor are written in ONE
transaction, and only if the cursor is still the one the page was pulled after
(two collectors on one database cannot both ingest a page). ``(source, seq)`` is
the records' primary key as well: a record stored twice is an error, never a
double count.

Quantities are stored as integers, metered to the micro-unit (CPU µs, memory
GB·µs, storage GB·µh; bytes and requests as they are): sums in SQL are exact, and
the hourly aggregates of a source add up to its records to the unit.

Hourly aggregates are keyed by UTC hour, owner, app, version, vendor, edgepoint,
instance and ``peak``: a record is split, in proportion to time, at hour
boundaries and at the boundaries of the peak window in force when it is stored
(integers by largest remainder, so the pieces add up to the record exactly). A
bill read from the aggregates is therefore the bill of the records themselves,
peak window and daylight-saving changes included.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from edgeshot.spec import PeakWindow, Pricing

from . import billing
from ._store import Migration, register

MICRO = 1_000_000
HOUR = 3600

# the quantity columns, in the order of a record tuple after its key
QTY = ("cpu_us", "memory_gb_us", "disk_read_bytes", "disk_write_bytes", "storage_gb_uh",
       "net_in_bytes", "net_out_bytes", "requests")
KEY = ("instance", "app", "version", "owner", "vendor", "edgepoint")

_MIGRATIONS = [
    Migration(1, "usage records, cursors, hourly aggregates", f"""
        CREATE TABLE usage_sources (
            source TEXT PRIMARY KEY,        -- the producer: an agent or an edge process
            endpoint TEXT,                  -- where the controller pulls it: agent/<server>, edge/<edgepoint>
            kind TEXT NOT NULL,             -- agent | edge
            cursor INTEGER NOT NULL DEFAULT 0,   -- the last seq stored
            head INTEGER NOT NULL DEFAULT 0,     -- the source's last seq when last pulled
            records INTEGER NOT NULL DEFAULT 0,
            last_end REAL,                  -- end of the newest record stored (epoch s)
            last_ok REAL,                   -- last successful pull (epoch s)
            last_error TEXT,
            errors INTEGER NOT NULL DEFAULT 0   -- failed pulls in a row
        );
        CREATE INDEX usage_sources_endpoint ON usage_sources (endpoint);
        CREATE TABLE usage_records (
            source TEXT NOT NULL,
            seq INTEGER NOT NULL,
            {", ".join(f"{k} TEXT NOT NULL" for k in KEY)},
            start REAL NOT NULL,
            "end" REAL NOT NULL,
            {", ".join(f"{q} INTEGER NOT NULL" for q in QTY)},
            PRIMARY KEY (source, seq)
        ) WITHOUT ROWID;
        CREATE TABLE usage_hourly (
            month INTEGER NOT NULL,         -- YYYYMM of the hour, in the billing zone
            owner TEXT NOT NULL, app TEXT NOT NULL, vendor TEXT NOT NULL,
            peak INTEGER NOT NULL,          -- 1: inside the peak window in force when stored
            version TEXT NOT NULL, edgepoint TEXT NOT NULL, instance TEXT NOT NULL,
            hour INTEGER NOT NULL,          -- hours since the epoch, of the billing zone
            {", ".join(f"{q} INTEGER NOT NULL" for q in QTY)},
            -- month first, then what a bill groups by: a month's bill is one ordered scan
            PRIMARY KEY (month, owner, app, vendor, peak, version, edgepoint, instance, hour)
        ) WITHOUT ROWID;
        CREATE TABLE budget_states (
            app TEXT NOT NULL,
            month TEXT NOT NULL,
            state TEXT NOT NULL,            -- ok | warning | exhausted
            at REAL NOT NULL,
            PRIMARY KEY (app, month)
        );
    """),
]
register("metering", _MIGRATIONS)


class CursorMoved(RuntimeError):
    """The source's cursor is not the one the page was pulled after (another consumer)."""


def micro(x: float) -> int:
    """A meter's (non-negative) float quantity in micro-units (the stored, billed figure),
    half up."""
    return int(x * MICRO + 0.5)


# ---------------------------------------------------------------------- splitting


def hour_shift(zone: str) -> int:
    """Seconds the zone's hours start after UTC's (Asia/Kolkata: 1800, most zones: 0).
    Aggregates are per hour *of the billing zone*, so that its months start on an hour."""
    off = datetime(2026, 1, 1, tzinfo=ZoneInfo(zone)).utcoffset()
    return int(off.total_seconds()) % HOUR if off is not None else 0


class Splitter:
    """Cuts [start, end) (epoch seconds) into (hour, peak, weight) pieces; hour h is
    [h * 3600 - shift, (h + 1) * 3600 - shift) in epoch seconds."""

    def __init__(self, peak: PeakWindow | None, zone: str | None = None) -> None:
        self.peak = peak
        self.zone = zone or (peak.timezone if peak else "UTC")
        self.shift = hour_shift(self.zone)
        self._tz = ZoneInfo(self.zone)
        self._months: dict[int, int] = {}
        self._windows = lru_cache(maxsize=4096)(self._hour_windows)
        self._status: dict[int, int] = {}

    def _hour_windows(self, hour: int) -> tuple[tuple[float, float], ...]:
        # in shifted seconds, as `pieces` works
        a = datetime.fromtimestamp(hour * HOUR - self.shift, UTC)
        b = datetime.fromtimestamp((hour + 1) * HOUR - self.shift, UTC)
        return tuple((w0.timestamp() + self.shift, w1.timestamp() + self.shift)
                     for w0, w1 in billing.peak_windows(a, b, self.peak))

    def month_of(self, hour: int) -> int:
        """YYYYMM of the (zone's) hour: every hour of the zone lies in one of its months."""
        m = self._months.get(hour)
        if m is None:
            local = datetime.fromtimestamp(hour * HOUR - self.shift, UTC).astimezone(self._tz)
            m = self._months[hour] = local.year * 100 + local.month
        return m

    def hour_status(self, hour: int) -> int:
        """0: no part of the hour is in the peak window, 1: all of it, 2: a part."""
        st = self._status.get(hour)
        if st is None:
            wins = self._windows(hour) if self.peak is not None else ()
            inside = sum(b - a for a, b in wins)
            st = self._status[hour] = 0 if inside <= 0 else 1 if inside >= HOUR else 2
        return st

    def pieces(self, start: float, end: float) -> list[tuple[int, int, float]]:
        start += self.shift
        end += self.shift
        h0 = int(start // HOUR)
        if end <= start:  # an instant (e.g. a storage reading): where it happened
            wins = self._windows(h0) if self.peak else ()
            return [(h0, int(any(w0 <= start < w1 for w0, w1 in wins)), 1.0)]
        h1 = math.ceil(end / HOUR)  # exclusive
        if h1 - h0 == 1 and self.peak is None:
            return [(h0, 0, 1.0)]
        span = end - start
        out: list[tuple[int, int, float]] = []
        for h in range(h0, h1):
            a, b = max(start, h * HOUR), min(end, (h + 1) * HOUR)
            if b <= a:
                continue
            inside = 0.0
            if self.peak is not None:
                for w0, w1 in self._windows(h):
                    inside += max(0.0, min(b, w1) - max(a, w0))
            if inside > 0:
                out.append((h, 1, inside / span))
            if b - a - inside > 1e-9:
                out.append((h, 0, (b - a - inside) / span))
        if not out:
            out.append((h0, 0, 1.0))
        return out


def spread(total: int, weights: Sequence[float]) -> list[int]:
    """`total` in integer parts proportional to `weights`, adding up to `total` exactly
    (largest remainder; ties to the earlier piece)."""
    if len(weights) == 1:
        return [total]
    wsum = sum(weights)
    raw = [total * w / wsum for w in weights]
    parts = [int(math.floor(x)) for x in raw]
    left = total - sum(parts)
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - parts[i]), i))
    for i in order[:left]:
        parts[i] += 1
    return parts


# ---------------------------------------------------------------------- ingest

# (source, seq, instance, app, version, owner, vendor, edgepoint, start, end, *QTY)
Row = tuple[Any, ...]


def rows_of(records: Iterable[Any], source: str) -> list[Row]:
    """UsageRecord models (or anything with their attributes) as stored rows."""
    return [(source, r.seq, r.instance, r.app, r.version, r.owner, r.vendor, r.edgepoint,
             r.start.timestamp(), r.end.timestamp(),
             int(r.cpu_seconds * MICRO + 0.5), int(r.memory_gb_seconds * MICRO + 0.5),
             r.disk_read_bytes, r.disk_write_bytes, int(r.storage_gb_hours * MICRO + 0.5),
             r.net_in_bytes, r.net_out_bytes, r.requests) for r in records]


def aggregate(rows: Iterable[Row], splitter: Splitter) -> dict[tuple[Any, ...], list[int]]:
    """The hourly aggregates a batch of rows adds: key -> quantities."""
    acc: dict[tuple[Any, ...], list[int]] = {}
    shift = splitter.shift
    status = splitter.hour_status
    months = splitter._months
    month_of = splitter.month_of
    for r in rows:
        start, end = r[8] + shift, r[9] + shift
        h = int(start // HOUR)
        if end <= (h + 1) * HOUR and end > start:
            st = status(h)  # 0: no peak in this hour, 1: all of it, 2: partly
            if st != 2:
                # key order of usage_hourly: month, owner, app, vendor, peak, version,
                # edgepoint, instance, hour
                mo = months.get(h) or month_of(h)
                key = (mo, r[5], r[3], r[6], st, r[4], r[7], r[2], h)
                cur = acc.get(key)
                if cur is None:
                    acc[key] = list(r[10:18])
                else:
                    cur[0] += r[10]
                    cur[1] += r[11]
                    cur[2] += r[12]
                    cur[3] += r[13]
                    cur[4] += r[14]
                    cur[5] += r[15]
                    cur[6] += r[16]
                    cur[7] += r[17]
                continue
        pieces = splitter.pieces(r[8], r[9])
        weights = [w for _, _, w in pieces]
        split = [spread(q, weights) for q in r[10:18]]
        for j, (hh, pk, _) in enumerate(pieces):
            key = (month_of(hh), r[5], r[3], r[6], pk, r[4], r[7], r[2], hh)
            cur = acc.setdefault(key, [0] * 8)
            for i in range(8):
                cur[i] += split[i][j]
    return acc


_INSERT_RECORD = (f"INSERT INTO usage_records (source, seq, {', '.join(KEY)}, start, \"end\", "
                  f"{', '.join(QTY)}) VALUES ({', '.join('?' * (2 + len(KEY) + 2 + len(QTY)))})")
_UPSERT_HOURLY = (
    "INSERT INTO usage_hourly (month, owner, app, vendor, peak, version, edgepoint, instance, "
    f"hour, {', '.join(QTY)}) VALUES ({', '.join('?' * (9 + len(QTY)))}) "
    "ON CONFLICT (month, owner, app, vendor, peak, version, edgepoint, instance, hour) "
    "DO UPDATE SET "
    + ", ".join(f"{q} = {q} + excluded.{q}" for q in QTY))


def ensure_source(db: sqlite3.Connection, source: str, kind: str, endpoint: str | None) -> int:
    """The source's row (made at cursor 0 when new; the endpoint moved to it); its cursor."""
    if endpoint is not None:
        db.execute("UPDATE usage_sources SET endpoint = NULL WHERE endpoint = ? AND source != ?",
                   (endpoint, source))
    db.execute("INSERT INTO usage_sources (source, endpoint, kind) VALUES (?, ?, ?) "
               "ON CONFLICT(source) DO UPDATE SET endpoint = COALESCE(excluded.endpoint, endpoint)",
               (source, endpoint, kind))
    return int(db.execute("SELECT cursor FROM usage_sources WHERE source = ?",
                          (source,)).fetchone()[0])


def ingest(db: sqlite3.Connection, source: str, after: int, rows: list[Row], last_seq: int,
           head: int, splitter: Splitter, now: float | None = None,
           aggregates: dict[tuple[Any, ...], list[int]] | None = None) -> int:
    """Store a page (rows with seq > `after`, in order) of `source`, its hourly aggregates and
    the cursor `last_seq`, inside the caller's transaction. Raises CursorMoved when the
    stored cursor is not `after` (nothing is written then)."""
    row = db.execute("SELECT cursor FROM usage_sources WHERE source = ?", (source,)).fetchone()
    if row is None or row[0] != after:
        raise CursorMoved(f"{source}: cursor is {row[0] if row else None}, page was pulled "
                          f"after {after}")
    if rows:
        db.executemany(_INSERT_RECORD, rows)
        acc = aggregate(rows, splitter) if aggregates is None else aggregates
        db.executemany(_UPSERT_HOURLY, [(*k, *v) for k, v in acc.items()])
    db.execute("UPDATE usage_sources SET cursor = ?, head = ?, records = records + ?, "
               "last_end = COALESCE(?, last_end), last_ok = ?, last_error = NULL, errors = 0 "
               "WHERE source = ?",
               (last_seq, max(head, last_seq), len(rows), rows[-1][9] if rows else None,
                time.time() if now is None else now, source))
    return len(rows)


def note_error(db: sqlite3.Connection, endpoint: str, error: str) -> None:
    db.execute("UPDATE usage_sources SET last_error = ?, errors = errors + 1 WHERE endpoint = ?",
               (error[:500], endpoint))


# ---------------------------------------------------------------------- reading


def sources(db: sqlite3.Connection) -> list[dict[str, Any]]:
    cur = db.execute("SELECT * FROM usage_sources ORDER BY source")
    cols = [c[0] for c in cur.description]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def month_key(month: str) -> int:
    billing.month_bounds(month)  # checks the spelling
    y, m = month.split("-")
    return int(y) * 100 + int(m)


def month_usage(db: sqlite3.Connection, month: str, zone: str = "UTC", *,
                owner: str | None = None, app: str | None = None,
                vendor: str | None = None) -> list[billing.Usage]:
    """The month's usage as billing reads it, summed in SQL (one ordered scan of the
    month's rows, no sort): one Usage per owner, app, vendor and peak flag, spanning the
    month. An hour belongs to the month of the zone of the pricing in force when it was
    stored."""
    m0, m1 = billing.month_bounds(month, zone)
    where, args = ["month = ?"], [month_key(month)]
    for col, val in (("owner", owner), ("app", app), ("vendor", vendor)):
        if val is not None:
            where.append(f"{col} = ?")
            args.append(val)
    sums = ", ".join(f"SUM({q})" for q in QTY)
    return [_usage(owner_, vendor_, app_, m0, m1, peak, q)
            for owner_, app_, vendor_, peak, *q in db.execute(
                f"SELECT owner, app, vendor, peak, {sums} FROM usage_hourly "
                f"WHERE {' AND '.join(where)} GROUP BY owner, app, vendor, peak", args)]


class MonthTotals:
    """One month's sums per owner, app, vendor and peak flag, kept in memory: read from the
    store once, then added to with every page the collector commits (the same integers the
    store sums), so that budgets and spend need no scan of the month's rows.

    `load` and `add` must not interleave with a commit: the collector calls `add` under its
    ingest lock, after the commit, and `load` is called under the same lock."""

    def __init__(self) -> None:
        self.month: int | None = None
        self.sums: dict[tuple[str, str, str, int], list[int]] = {}
        self._lock = threading.Lock()

    def load(self, db: sqlite3.Connection, month: int) -> None:
        sums = {}
        for owner, app, vendor, peak, *q in db.execute(
                f"SELECT owner, app, vendor, peak, {', '.join(f'SUM({c})' for c in QTY)} "
                "FROM usage_hourly WHERE month = ? GROUP BY owner, app, vendor, peak", (month,)):
            sums[(owner, app, vendor, peak)] = list(q)
        with self._lock:
            self.month, self.sums = month, sums

    def add(self, acc: dict[tuple[Any, ...], list[int]]) -> None:
        """Aggregates of a committed page (keys as usage_hourly's primary key)."""
        with self._lock:
            if self.month is None:
                return
            for k, q in acc.items():
                if k[0] != self.month:
                    continue
                key = (k[1], k[2], k[3], k[4])
                cur = self.sums.get(key)
                if cur is None:
                    self.sums[key] = list(q)
                else:
                    for i in range(len(QTY)):
                        cur[i] += q[i]

    def usage(self, month: str, zone: str) -> list[billing.Usage]:
        """As `month_usage` answers (this month must be the one loaded)."""
        m0, m1 = billing.month_bounds(month, zone)
        with self._lock:
            if self.month != month_key(month):
                raise ValueError(f"{month} is not the month loaded")
            items = [(k, list(q)) for k, q in self.sums.items()]
        return [_usage(owner, vendor, app, m0, m1, peak, q)
                for (owner, app, vendor, peak), q in sorted(items)]


def _usage(owner: str, vendor: str, app: str, start: datetime, end: datetime, peak: int,
           q: Sequence[int]) -> billing.Usage:
    return billing.Usage(
        owner=owner, vendor=vendor, app=app, start=start, end=end,
        cpu_seconds=Decimal(q[0]) / MICRO, memory_gb_seconds=Decimal(q[1]) / MICRO,
        disk_read_bytes=q[2], disk_write_bytes=q[3], storage_gb_hours=Decimal(q[4]) / MICRO,
        net_in_bytes=q[5], net_out_bytes=q[6], requests=q[7], peak_share=Decimal(peak))


def bill_month(db: sqlite3.Connection, pricing: Pricing, month: str, *,
               owner: str | None = None, vendor: str | None = None) -> billing.Bill:
    """`billing.bill` over the stored hourly aggregates of `month`."""
    zone = pricing.peak.timezone if pricing.peak else "UTC"
    return billing.bill(month_usage(db, month, zone, owner=owner, vendor=vendor), pricing, month,
                        owner=owner)

