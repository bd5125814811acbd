"""The collector's protocol, with in-process sources: pages after the cursor until the head,
errors retried with backoff and shown per source, pages that break the protocol refused,
a source whose store was replaced not read, two collectors on one store never both storing
a page. (Real agents, edge processes and controller restarts: test_pipeline.py.)"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from edgeshot.agent.models import UsagePage, UsageRecord
from edgeshot.control._metering import Collector, Endpoint
from edgeshot.control.store import Store

T0 = datetime(2026, 11, 2, 10, tzinfo=UTC)


def rec(source: str, seq: int, **kw) -> UsageRecord:
    base = dict(source=source, seq=seq, instance="i1", app="hello", version="1", owner="acme",
                vendor="isv", edgepoint="eu", start=T0 + timedelta(seconds=10 * seq),
                end=T0 + timedelta(seconds=10 * seq + 10), cpu_seconds=0.5, requests=2)
    base.update(kw)
    return UsageRecord(**base)


class Source:
    """A producer's usage API: its records, and failures on demand."""

    def __init__(self, name: str, n: int) -> None:
        self.name = name
        self.records = [rec(name, i) for i in range(1, n + 1)]
        self.fail = 0  # next calls that fail
        self.calls = 0
        self.mangle = None

    async def usage(self, after: int = 0, limit: int = 1000) -> UsagePage:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise ConnectionError(f"{self.name} unreachable")
        recs = [r for r in self.records if r.seq > after][:limit]
        if self.mangle:
            recs = self.mangle(recs)
        head = self.records[-1].seq if self.records else 0
        return UsagePage(source=self.name, records=recs,
                         last_seq=recs[-1].seq if recs else after, head_seq=head)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "c.db")
    yield s
    s.close()


def stored(store: Store, source: str) -> list[int]:
    return [r[0] for r in store.query("SELECT seq FROM usage_records WHERE source = ? "
                                      "ORDER BY seq", (source,))]


async def test_pages_until_the_head_then_only_what_is_new(store):
    a, e = Source("agent:eu:s1", 2500), Source("edge:eu", 7)
    c = Collector(store, [Endpoint("agent/s1", "agent", a), Endpoint("edge/eu", "edge", e)],
                  peak=None, page_limit=1000)
    assert await c.collect_now() == {"agent/s1": 2500, "edge/eu": 7}
    assert a.calls == 3  # 1000 + 1000 + 500: stops at the head
    a.records += [rec(a.name, i) for i in range(2501, 2511)]
    assert await c.collect_now() == {"agent/s1": 10, "edge/eu": 0}
    assert stored(store, a.name) == list(range(1, 2511))
    # a new collector on the same store (a restarted controller) goes on from the cursors
    c2 = Collector(store, [Endpoint("agent/s1", "agent", a)], peak=None)
    assert await c2.collect_now() == {"agent/s1": 0}
    (row,) = [s for s in c2.sources() if s["source"] == a.name]
    assert (row["cursor"], row["head"], row["lag_records"], row["records"]) == (2510, 2510, 0, 2510)


async def test_failures_are_retried_with_backoff_and_shown(store):
    a = Source("agent:eu:s1", 30)
    a.fail = 3
    c = Collector(store, [Endpoint("agent/s1", "agent", a)], peak=None, interval_s=0.01,
                  base_backoff_s=0.01, max_backoff_s=0.05)
    res = await c.collect_now()
    assert "unreachable" in str(res["agent/s1"])
    (row,) = c.sources()  # never reached: no source name yet, but failing and why
    assert row["source"] is None and row["failing"] and "unreachable" in row["last_error"]
    tasks = c.start()
    try:
        for _ in range(200):
            if stored(store, a.name) == list(range(1, 31)) and not c.sources()[0]["failing"]:
                break
            await asyncio.sleep(0.01)
    finally:
        await c.stop()
    assert tasks and stored(store, a.name) == list(range(1, 31))
    (row,) = c.sources()
    assert (row["source"], row["failing"], row["errors"], row["last_error"]) == (
        a.name, False, 0, None)


@pytest.mark.parametrize("mangle, error", [
    (lambda rs: list(reversed(rs)), "not increasing"),
    (lambda rs: [r.model_copy(update={"source": "agent:other"}) for r in rs], "a record of"),
])
async def test_a_page_that_breaks_the_protocol_is_not_stored(store, mangle, error):
    a = Source("agent:eu:s1", 5)
    a.mangle = mangle
    c = Collector(store, [Endpoint("agent/s1", "agent", a)], peak=None)
    res = await c.collect_now()
    assert error in str(res["agent/s1"]) and stored(store, a.name) == []
    assert any(e["kind"] == "usage-source-error" for e in store.events()) is False  # no hook


async def test_a_source_whose_store_was_replaced_is_not_read(store):
    a = Source("agent:eu:s1", 20)
    events = []
    c = Collector(store, [Endpoint("agent/s1", "agent", a)], peak=None,
                  on_event=lambda kind, msg, data: events.append((kind, msg)))
    await c.collect_now()
    a.records = [rec(a.name, i) for i in range(1, 4)]  # seq restarted from 1
    res = await c.collect_now()
    assert "below the 20 already stored" in str(res["agent/s1"])
    assert stored(store, a.name) == list(range(1, 21))
    assert events and events[0][0] == "usage-source-error"


async def test_two_collectors_never_both_store_a_page(store, tmp_path):
    a = Source("agent:eu:s1", 3000)
    other = Store(tmp_path / "c.db")  # a second controller process on the same file
    try:
        c1 = Collector(store, [Endpoint("agent/s1", "agent", a)], peak=None, page_limit=500)
        c2 = Collector(other, [Endpoint("agent/s1", "agent", a)], peak=None, page_limit=500)
        r = await asyncio.gather(c1.collect_now(), c2.collect_now())
    finally:
        other.close()
    assert stored(store, a.name) == list(range(1, 3001)), r
    assert store.query("SELECT SUM(requests) FROM usage_hourly")[0][0] == 6000


async def test_month_totals_kept_in_memory_equal_the_stored_sums(store):
    """Budgets read this month's totals from memory: loaded once (under the ingest lock),
    then added to with each committed page; always the store's own sums."""
    import sqlite3

    from edgeshot.control import _metering_store as ms
    from edgeshot.control import billing
    from edgeshot.spec import PeakWindow, Pricing

    peak = PeakWindow(start="10:30", end="11:00", multiplier="2", timezone="UTC",
                      weekdays=("mon",))
    pricing = Pricing(cpu_second="0.01", memory_gb_second="0", network_gb="1", peak=peak)
    a, b = Source("agent:eu:s1", 700), Source("agent:us:s2", 300)
    c = Collector(store, [Endpoint("agent/s1", "agent", a), Endpoint("agent/s2", "agent", b)],
                  peak=peak, page_limit=100)
    totals = ms.MonthTotals()
    c.on_ingest = totals.add
    await c.collect_now()  # before the load: not counted twice after it
    reader = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True)
    with c.ingest_lock:
        totals.load(reader, ms.month_key("2026-11"))
    a.records += [rec(a.name, i, app="blog", owner="globex") for i in range(701, 1001)]
    b.records += [rec(b.name, i) for i in range(301, 401)]
    await c.collect_now()
    from_memory = billing.bill(totals.usage("2026-11", "UTC"), pricing, "2026-11")
    assert from_memory == ms.bill_month(reader, pricing, "2026-11")
    assert from_memory.total > 0 and any(ln.peak_quantity for ln in from_memory.lines)
    reader.close()
