"""Metering's store: records split into hourly aggregates exactly, cursors guarded, bills
from the aggregates equal to bills of the records themselves (edgeshot.control._metering_store)."""

from __future__ import annotations

import random
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeshot.control import _metering_store as ms
from edgeshot.control import billing
from edgeshot.control.store import Store
from edgeshot.spec import PeakWindow, Pricing

BERLIN = PeakWindow(start="08:00", end="20:00", multiplier="2", timezone="Europe/Berlin")
KOLKATA = PeakWindow(start="09:00", end="10:00", multiplier="3", timezone="Asia/Kolkata")


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


H = 3600


@pytest.mark.parametrize(
    ("peak", "start", "end", "pieces"),
    [
        # inside one hour, no window: one piece
        (None, ts(2026, 11, 2, 10, 5), ts(2026, 11, 2, 10, 6), [(0, 0, 1.0)]),
        # across an hour boundary: two pieces in proportion to time
        (None, ts(2026, 11, 2, 10, 50), ts(2026, 11, 2, 11, 20), [(0, 0, 1 / 3), (1, 0, 2 / 3)]),
        # Berlin in winter (UTC+1): 07:00 UTC is the window's start; a record across it
        (BERLIN, ts(2026, 11, 2, 6, 30), ts(2026, 11, 2, 7, 30), [(0, 0, 0.5), (1, 1, 0.5)]),
        # same wall time in summer (UTC+2): 06:00 UTC
        (BERLIN, ts(2026, 10, 23, 5, 30), ts(2026, 10, 23, 6, 30), [(0, 0, 0.5), (1, 1, 0.5)]),
        # Kolkata (UTC+5:30): hours are Kolkata's (they start at :30 UTC, so that its months
        # start on an hour); 09:00-10:00 local is 03:30-04:30 UTC, one whole hour
        (KOLKATA, ts(2026, 11, 2, 3, 0), ts(2026, 11, 2, 4, 0), [(0, 0, 0.5), (1, 1, 0.5)]),
        # an instant: where it happened
        (KOLKATA, ts(2026, 11, 2, 3, 45), ts(2026, 11, 2, 3, 45), [(0, 1, 1.0)]),
        (None, ts(2026, 11, 2, 3, 45), ts(2026, 11, 2, 3, 45), [(0, 0, 1.0)]),
        # Saturday: not a peak day
        (BERLIN, ts(2026, 11, 7, 10), ts(2026, 11, 7, 11), [(0, 0, 1.0)]),
    ],
)
def test_pieces(peak, start, end, pieces) -> None:
    sp = ms.Splitter(peak)
    got = sp.pieces(start, end)
    h0 = int((start + sp.shift) // H)
    assert [(h - h0, pk) for h, pk, _ in got] == [(h, pk) for h, pk, _ in pieces]
    assert [round(w, 9) for _, _, w in got] == [round(w, 9) for _, _, w in pieces]


@given(st.integers(0, 10**15), st.lists(st.floats(0.001, 1000), min_size=1, max_size=6))
def test_spread_adds_up_exactly(total: int, weights: list[float]) -> None:
    parts = ms.spread(total, weights)
    assert sum(parts) == total and all(p >= 0 for p in parts)
    for p, w in zip(parts, weights, strict=True):
        assert abs(p - total * w / sum(weights)) <= 1


def record(seq: int, start: float, seconds: float, *, app: str = "shop", owner: str = "acme",
           instance: str = "i1", source: str = "agent:eu:s1", **q: float | int) -> SimpleNamespace:
    base = dict(cpu_seconds=0.0, memory_gb_seconds=0.0, disk_read_bytes=0, disk_write_bytes=0,
                storage_gb_hours=0.0, net_in_bytes=0, net_out_bytes=0, requests=0)
    base.update(q)
    return SimpleNamespace(source=source, seq=seq, instance=instance, app=app, version="1",
                           owner=owner, vendor="acme-isv", edgepoint="eu",
                           start=datetime.fromtimestamp(start, UTC),
                           end=datetime.fromtimestamp(start + seconds, UTC), **base)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "controller.db")
    yield s
    s.close()


def put(store: Store, source: str, after: int, recs: list, peak=None) -> int:
    with store.tx() as db:
        if after == 0:
            ms.ensure_source(db, source, "agent", f"agent/{source}")
        return ms.ingest(db, source, after, ms.rows_of(recs, source), recs[-1].seq if recs else after,
                         recs[-1].seq if recs else after, ms.Splitter(peak))


def test_migrations_are_a_component_of_the_controller_store(store: Store) -> None:
    assert store.schema()["metering"] == 1
    assert {"usage_sources", "usage_records", "usage_hourly", "budget_states"} <= {
        r[0] for r in store.query("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_cursor_guard_and_primary_key(store: Store) -> None:
    t = ts(2026, 11, 2, 10)
    put(store, "a", 0, [record(1, t, 10, cpu_seconds=1.5), record(2, t + 10, 10, cpu_seconds=2)])
    # a page pulled after an older cursor (another consumer stored it): refused, nothing written
    with pytest.raises(ms.CursorMoved):
        put(store, "a", 0, [record(1, t, 10, cpu_seconds=1.5)])
    # a record stored twice is an error even past the guard
    with pytest.raises(sqlite3.IntegrityError):
        with store.tx() as db:
            ms.ingest(db, "a", 2, ms.rows_of([record(2, t, 10)], "a"), 2, 2, ms.Splitter(None))
    (src,) = ms.sources(store.db)
    assert (src["cursor"], src["records"]) == (2, 2)
    assert store.query("SELECT SUM(cpu_us) FROM usage_hourly")[0][0] == 3_500_000


def test_a_source_that_moves_endpoint_keeps_its_cursor(store: Store) -> None:
    with store.tx() as db:
        assert ms.ensure_source(db, "agent:eu:s1", "agent", "agent/s1") == 0
    put(store, "agent:eu:s1", 0, [record(1, ts(2026, 11, 2), 1)])
    with store.tx() as db:  # reconfigured: another source behind the same endpoint
        assert ms.ensure_source(db, "agent:eu:s1b", "agent", "agent/s1") == 0
        assert ms.ensure_source(db, "agent:eu:s1", "agent", "agent/s1") == 1


@pytest.mark.parametrize("peak", [None, BERLIN, KOLKATA])
@pytest.mark.parametrize("month", ["2026-10", "2026-11"])
def test_bill_from_aggregates_is_the_bill_of_the_records(store: Store, peak, month) -> None:
    rnd = random.Random(7)
    pricing = Pricing(currency="EUR", cpu_second="0.001", memory_gb_second="0.0001",
                      network_gb="0.05", disk_io_gb="0.02", storage_gb_hour="0.01", peak=peak)
    t = ts(2026, 10, 24)  # the Berlin DST change (25 Oct) inside, and the month's end
    recs, seq = [], 0
    while t < ts(2026, 11, 3):
        seq += 1
        secs = rnd.choice([10.0, 10.0, 10.0, 600.0, 1800.0, 5400.0, 0.0])
        recs.append(record(seq, t, secs, app=rnd.choice(["shop", "blog"]),
                           owner=rnd.choice(["acme", "globex"]), instance=f"i{rnd.randint(1, 3)}",
                           cpu_seconds=rnd.random() * 9, memory_gb_seconds=rnd.random() * 50,
                           disk_read_bytes=rnd.randint(0, 10**8), net_out_bytes=rnd.randint(0, 10**9),
                           storage_gb_hours=rnd.random() / 3, requests=rnd.randint(0, 500)))
        t += rnd.choice([10.0, 300.0, 1200.0, 3700.0])
    for i in range(0, len(recs), 97):
        put(store, "agent:eu:s1", recs[i - 1].seq if i else 0, recs[i:i + 97], peak)
    got = ms.bill_month(store.db, pricing, month)
    # the reference: billing over the records themselves, at the stored (micro-unit) quantities
    ref = billing.bill([billing.Usage(
        owner=r.owner, vendor=r.vendor, app=r.app, start=r.start, end=r.end,
        cpu_seconds=Decimal(ms.micro(r.cpu_seconds)) / ms.MICRO,
        memory_gb_seconds=Decimal(ms.micro(r.memory_gb_seconds)) / ms.MICRO,
        disk_read_bytes=r.disk_read_bytes, net_out_bytes=r.net_out_bytes,
        storage_gb_hours=Decimal(ms.micro(r.storage_gb_hours)) / ms.MICRO, requests=r.requests)
        for r in recs], pricing, month)
    key = lambda b: {(ln.owner, ln.app, ln.resource): ln for ln in b.lines}  # noqa: E731
    g, r = key(got), key(ref)
    assert g.keys() == r.keys()
    for k in g:
        # what was used: the same to the micro-unit (records cut by the month's end are cut
        # in proportion to time both ways; the aggregates' cut is rounded to the unit)
        assert abs(g[k].quantity - r[k].quantity) <= Decimal("0.000002") * len(recs), k
        assert abs(g[k].peak_quantity - r[k].peak_quantity) <= Decimal("0.000002") * len(recs), k
        assert abs(g[k].amount - r[k].amount) <= Decimal("0.01"), k
    if month == "2026-10" or peak is None:
        pass
    assert got.total == sum(t.amount for t in got.owners)
    assert abs(got.total - ref.total) <= Decimal("0.01") * len(g)


def test_quantities_of_whole_records_add_up_exactly(store: Store) -> None:
    """Records wholly inside the month: the bill's quantities are the records' sums, exactly."""
    t = ts(2026, 11, 10, 7, 55)
    recs = [record(i + 1, t + i * 7, 7, cpu_seconds=0.1 * (i % 7), net_in_bytes=1000 + i,
                   requests=i % 3) for i in range(2000)]  # crosses several hours and the window
    put(store, "agent:eu:s1", 0, recs[:1000], BERLIN)
    put(store, "agent:eu:s1", 1000, recs[1000:], BERLIN)
    pricing = Pricing(cpu_second="0.001", memory_gb_second="0", network_gb="0.05", peak=BERLIN)
    b = ms.bill_month(store.db, pricing, "2026-11")
    lines = {ln.resource: ln for ln in b.lines}
    assert lines["cpu"].quantity == Decimal(sum(ms.micro(r.cpu_seconds) for r in recs)) / ms.MICRO
    assert lines["network"].quantity == Decimal(sum(r.net_in_bytes for r in recs)) / billing.GB
    # Nov 10 is a Tuesday; 08:00 Berlin is 07:00 UTC: every record is in the peak window
    assert lines["cpu"].peak_quantity == lines["cpu"].quantity
    assert sum(u.requests for u in ms.month_usage(store.db, "2026-11")) == sum(
        r.requests for r in recs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50_000), st.floats(0, 7200), st.integers(0, 10**9)),
                min_size=1, max_size=30))
def test_aggregates_sum_to_records(tmp_path_factory, recs) -> None:
    s = Store(tmp_path_factory.mktemp("agg") / "c.db")
    try:
        base = ts(2026, 11, 2, 6)
        rs = [record(i + 1, base + off, secs, net_out_bytes=b, cpu_seconds=b / 1e7)
              for i, (off, secs, b) in enumerate(recs)]
        put(s, "x", 0, rs, KOLKATA)
        got = s.query("SELECT SUM(net_out_bytes), SUM(cpu_us) FROM usage_hourly")[0]
        assert tuple(got) == (sum(r.net_out_bytes for r in rs),
                              sum(ms.micro(r.cpu_seconds) for r in rs))
    finally:
        s.close()


def test_month_usage_of_a_half_hour_zone_cuts_the_boundary_hours(store: Store) -> None:
    # Kolkata's November starts at 31 Oct 18:30 UTC: the hour 18:00-19:00 is half in it
    peak = PeakWindow(start="09:00", end="10:00", multiplier="1", timezone="Asia/Kolkata")
    put(store, "k", 0, [record(1, ts(2026, 10, 31, 18), 3600, cpu_seconds=100.0)], peak)
    pricing = Pricing(cpu_second="1", memory_gb_second="0", network_gb="0", peak=peak)
    assert ms.bill_month(store.db, pricing, "2026-11").total == Decimal("50.00")
    assert ms.bill_month(store.db, pricing, "2026-10").total == Decimal("50.00")
    _ = timedelta  # (kept for readers: hours are UTC)
