"""Data-path usage is exact while requests are in flight: every request HAProxy answered
through seamless reloads, a SIGKILL of the edge process (its HAProxy serves on) and the
restart that adopts it, is in the edge's usage records once. The sequential test in
test_edgepoint sends nothing while HAProxy changes workers, so it cannot see a worker
that exits with requests it answered after its counters were last read."""

from __future__ import annotations

import time

import pytest
from helpers import Hammer, wait_for
from test_edgepoint import pl, place, usage_total

from conftest import SHOP_HOST
from edgeshot.edge._store import Counters, InstanceMeta, Store
from edgeshot.edge._usage import UsageMeter


@pytest.mark.root
@pytest.mark.criu
@pytest.mark.haproxy
def test_every_request_answered_under_traffic_is_counted_once(edges, origin):
    e = edges(usage_interval_s=0.5).start()
    place(e, origin, min=1, idle_s=300)
    wait_for(lambda: pl(e).ready == 1, 30)
    hammer = Hammer("127.0.0.1", e.http_port, "/catalog", 4, {"Host": SHOP_HOST})
    try:
        wait_for(lambda: hammer.total >= 100, 30, what="traffic")
        for _ in range(3):  # seamless reloads, each old worker with requests in flight
            e.call(lambda c: c.reload())
            time.sleep(0.3)
        e.kill()  # a crash: HAProxy serves on, counting
        time.sleep(0.5)
        e.start()  # adopts HAProxy and its counters
        e.call(lambda c: c.reload())
        time.sleep(0.5)
    finally:
        statuses = hammer.stop()
    e.stop()  # graceful: every worker's final counters stored, HAProxy stopped
    e.start()
    answered = statuses.get(200, 0)
    assert statuses == {200: answered} and answered > 300, statuses
    total, recs = usage_total(e)
    assert total == answered, (total, answered, [(r.seq, r.requests) for r in recs])


def test_a_server_deleted_while_an_old_worker_still_serves_it_is_counted_once(tmp_path):
    """Worker 100 was reloaded away (old, still finishing requests) when instance i1 is
    deleted from the current worker 101: 101's keys go, 100's baselines stay, so reading
    100 on counts only what it adds."""
    store = Store(tmp_path / "e.db")
    meta = {"i1": InstanceMeta("i1", "shop", "1", "acme", "isv", "s1")}
    m = UsageMeter(store, "edge:eu", "eu")
    m.observe(100, {("shop", "i1"): Counters(10, 100, 1000)})
    m.observe(101, {("shop", "i1"): Counters(3, 30, 300)})
    m.flush(meta.get)
    m.forget_server("shop", "i1", keep_workers={100})
    assert set(m.base) == {(100, "shop", "i1")}
    m.observe(100, {("shop", "i1"): Counters(12, 120, 1200)})  # its last requests
    m.flush(meta.get)
    m.forget_worker(100)
    rows = store.usage_after(0, 100)
    assert (sum(r["requests"] for r in rows), sum(r["net_in_bytes"] for r in rows),
            sum(r["net_out_bytes"] for r in rows)) == (15, 150, 1500)
    assert store.baselines() == {}
    store.close()
