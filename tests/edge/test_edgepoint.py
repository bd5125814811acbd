"""A real edgepoint on loopback: an edge process with its HAProxy, a real agent restoring
real shop pods (pid + slot netns, CRIU) from appshots, a test origin. Issue 5's list:
first request via the activator, burst within policy, idle snapshot and return with state,
origin routes, affinity, version weights, a killed instance replaced, usage exactly once
across a reload and edge restarts; plus the API's auth and the activator's 503."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from helpers import Hammer, wait_for

from conftest import SHOP_HOST, shop_assignment
from edgeshot.agent import _pods
from edgeshot.edge.client import Forbidden, Unauthorized
from edgeshot.edge.models import VersionWeight

pytestmark = [pytest.mark.root, pytest.mark.criu, pytest.mark.haproxy]


def load(e):
    return e.call(lambda c: c.load())


def pl(e, pid="shop/eu"):
    return next(p for p in load(e).placements if p.id == pid)


def place(e, origin, **kw):
    a = shop_assignment(f"http://{origin.address}/", **kw)
    e.call(lambda c: c.set_placements([a]))
    return a


def instances(agent, state=None):
    import asyncio

    async def go():
        async with agent.client() as c:
            return await c.list_instances(state=state)
    return asyncio.run(go())


def test_first_request_is_answered_by_a_restored_instance_via_the_activator(edges, origin):
    e = edges().start()
    place(e, origin, idle_s=300)
    assert pl(e).ready == 0
    status, headers, body = e.get("/catalog")
    assert status == 200 and b"price" in body, body
    # the instance is in HAProxy now, or within a retry (a runtime-API call that timed out
    # on a loaded machine is tried again a second later; the activator answered meanwhile)
    wait_for(lambda: pl(e).ready == 1, 15, what="the restored instance routed by HAProxy")
    # the next requests go straight to the instance through HAProxy
    assert len({e.get("/catalog")[1]["x-edgeshot-served-by"] for _ in range(5)}) == 1
    # origin routes reach the origin, edge routes never do
    before = len(origin.seen)
    assert json.loads(e.get("/account/alice")[2])["name"] == "origin"
    assert e.get("/checkout", method="POST", body=b"{}")[0] == 200
    assert origin.seen[before:] == [("GET", "/account/alice"), ("POST", "/checkout")]
    # never an open proxy: a host no app claims gets 404 and goes nowhere
    assert e.get("/catalog", host="evil.example.net")[0] == 404
    assert e.get(f"http://{origin.address}/account/x", host=origin.address)[0] == 404
    assert len(origin.seen) == before + 2
    assert "restored" in e.log_text()


def test_burst_adds_instances_within_policy(edges, origin):
    e = edges().start()
    place(e, origin, users_per_instance=2, max=3, min=1, idle_s=300)  # limit: max 3
    wait_for(lambda: pl(e).ready == 1, 30, what="the minimum instance")
    h = Hammer("127.0.0.1", e.http_port, "/catalog", 16, {"Host": SHOP_HOST})
    seen_max = 0
    try:  # the burst wants 8 instances (16 users, 2 each); the policy's max is 3
        t0 = time.monotonic()
        while time.monotonic() - t0 < 10:  # a bound, not a speed target (bench/edge_datapath)
            p = pl(e)
            seen_max = max(seen_max, p.ready + p.starting)
            if p.ready >= 3:
                break
            time.sleep(0.1)
    finally:
        statuses = h.stop()
    p = pl(e)
    assert p.ready >= 2, (p, e.log_text()[-2000:])  # added under the burst
    assert seen_max <= 3 and p.ready + p.starting <= 3
    assert statuses.get(200, 0) > 50 and set(statuses) == {200}, statuses


def test_idle_instance_is_snapshotted_and_returns_with_its_state(edges, origin, shop_agent):
    e = edges(scale_down_delay_s=0.5).start()
    place(e, origin, idle_s=2, warm_pool=1)
    status, _, body = e.get("/cart/s1", method="POST",
                            body=json.dumps({"product": "mug", "qty": 2}).encode(),
                            headers={"Content-Type": "application/json"})
    assert status == 200, body
    first = wait_for(lambda: [i for i in instances(shop_agent) if i.state == "running"], 10)
    # idle for idle_s: drained, snapshotted (warm pool of 1), not stopped
    wait_for(lambda: (lambda p: p.ready == 0 and p.snapshotted == 1)(pl(e)), 30,
             what="scale to zero into the warm pool")
    snap = [i for i in instances(shop_agent) if i.state == "snapshotted"]
    assert [i.id for i in snap] == [first[0].id]
    # the next user brings it back from its snapshot, cart included
    status, _, body = e.get("/cart/s1")
    assert status == 200
    cart = json.loads(body)
    assert [(i["product"], i["qty"]) for i in cart["items"]] == [("mug", 2)]
    running = [i for i in instances(shop_agent) if i.state == "running"]
    assert [i.id for i in running] == [first[0].id] and running[0].origin == "snapshot"


def test_affinity_keeps_a_user_on_one_of_several_instances(edges, origin):
    e = edges().start()
    place(e, origin, min=2, idle_s=300)
    wait_for(lambda: pl(e).ready == 2, 30, what="two instances")

    def served():  # requests answered per instance, as HAProxy counts them
        return {i.id: i.requests for i in pl(e).instances}

    def settled():
        prev = served()
        while True:
            time.sleep(0.3)
            now = served()
            if now == prev:
                return now
            prev = now

    def spread(n, **kw):
        before = settled()
        for _ in range(n):
            assert e.get("/catalog", **kw)[0] == 200
        after = wait_for(lambda: (lambda a: a if sum(a.values()) - sum(before.values()) >= n
                                  else None)(served()), 5, what="counted requests")
        return sorted(after[k] - before.get(k, 0) for k in after)

    assert spread(20) == [10, 10]  # without a cookie: round robin over both
    _, headers, _ = e.get("/catalog")
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie.startswith("ES_shop=")
    assert spread(20, headers={"Cookie": cookie}) == [0, 20]  # pinned to one


def test_version_weights_split_traffic_as_set(edges, origin):
    e = edges(report_window_s=600).start()
    place(e, origin, min=2, idle_s=300, versions=(("1.0.0", 75), ("1.1.0", 25)))
    wait_for(lambda: [v.ready for v in pl(e).versions] == [1, 1], 40, what="one per version")
    for _ in range(200):
        assert e.get("/catalog")[0] == 200
    by_version = wait_for(lambda: (lambda vs: vs if sum(vs.values()) >= 200 else None)(
        {v.version: v.requests for v in pl(e).versions}), 10, what="counted requests")
    assert 120 <= by_version["1.0.0"] <= 180, by_version
    assert by_version["1.0.0"] + by_version["1.1.0"] == 200
    # promote the canary: all traffic to 1.1.0, the old version's instance goes
    e.call(lambda c: c.update_placement("shop/eu", versions=[
        VersionWeight(version="1.0.0", weight=0), VersionWeight(version="1.1.0", weight=100)]))
    wait_for(lambda: [(v.version, v.ready) for v in pl(e).versions]
             == [("1.0.0", 0), ("1.1.0", 2)], 40, what="promotion")
    before = {v.version: v.requests for v in pl(e).versions}
    for _ in range(50):
        assert e.get("/catalog")[0] == 200
    after = wait_for(lambda: (lambda vs: vs if vs["1.1.0"] - before["1.1.0"] >= 50 else None)(
        {v.version: v.requests for v in pl(e).versions}), 10, what="counted requests")
    assert after["1.0.0"] == before["1.0.0"] and after["1.1.0"] - before["1.1.0"] == 50


def test_instance_killed_under_traffic_is_taken_out_and_replaced(edges, origin, shop_agent):
    e = edges().start()
    place(e, origin, min=1, idle_s=300)
    wait_for(lambda: pl(e).ready == 1, 30)
    (victim,) = [i for i in instances(shop_agent) if i.state == "running"]
    h = Hammer("127.0.0.1", e.http_port, "/catalog", 4, {"Host": SHOP_HOST})
    try:
        time.sleep(0.5)
        pods = [p for p in _pods.list_instances(shop_agent.state) if p.id == victim.pod]
        assert pods, "the pod of the instance"
        os.kill(pods[0].pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: [i for i in instances(shop_agent, "running") if i.id != victim.id]
                 and pl(e).ready == 1, 30, what="a replacement")
        replaced = time.monotonic() - t0
        time.sleep(0.5)
    finally:
        statuses = h.stop()
    ok = statuses.get(200, 0)
    assert ok > 0, statuses
    # requests during the gap either waited for the replacement or failed fast; no hang
    assert replaced < 20
    assert e.get("/catalog")[0] == 200


def usage_total(e) -> tuple[int, list]:
    async def go(c):
        out = []
        async for page in c.iter_usage(0, 7):
            out += page.records
        return out
    recs = e.call(go)
    return sum(r.requests for r in recs), recs


def test_counts_survive_reload_and_edge_restarts_exactly_once(edges, origin):
    e = edges(usage_interval_s=0.5).start()
    place(e, origin, min=1, idle_s=300)
    wait_for(lambda: pl(e).ready == 1, 30)
    sent = 0

    def send(n):
        nonlocal sent
        for _ in range(n):
            assert e.get("/catalog")[0] == 200
        sent += n

    send(30)
    e.call(lambda c: c.reload())  # a seamless HAProxy reload
    send(20)
    time.sleep(0.8)
    e.kill()  # a crash: HAProxy keeps serving
    send(15)
    e.start()  # adopts HAProxy and its counters
    send(10)
    e.stop()  # graceful: everything stored, HAProxy stopped
    assert not e.haproxy_pids()
    e.start()
    wait_for(lambda: pl(e).ready == 1, 30)
    send(5)
    e.stop()
    e.start()
    total, recs = usage_total(e)
    assert total == sent, (total, sent, [(r.seq, r.requests) for r in recs])
    assert [r.seq for r in recs] == list(range(1, len(recs) + 1))
    assert all(r.net_in_bytes > 0 and r.net_out_bytes > 0 for r in recs)
    assert {(r.app, r.owner, r.vendor, r.edgepoint, r.source) for r in recs} == {
        ("shop", "acme-shop", "acme", "eu", "edge:eu")}
    assert all(r.cpu_seconds == 0 and r.memory_gb_seconds == 0 for r in recs)


HOP = "est1_" + "h" * 43  # the dispatcher's hop token in these tests


def test_latency_and_region_history_are_stored_and_served(edges, origin):
    from edgeshot.agent.auth import token_hash
    e = edges(dispatcher_hop_sha256=token_hash(HOP)).start()
    place(e, origin, min=1, idle_s=300)
    wait_for(lambda: pl(e).ready == 1, 30)
    for region, n in (("eu-central", 12), ("us-east", 5)):
        for _ in range(n):
            assert e.get("/catalog", headers={"X-Edgeshot-Region": region,
                                              "X-Edgeshot-Hop": HOP})[0] == 200
    for hop in ("est1_" + "x" * 43, None):  # a user's own region header: not taken
        assert e.get("/catalog", headers={"X-Edgeshot-Region": "forged", **(
            {"X-Edgeshot-Hop": hop} if hop else {})})[0] == 200
    e.stop()  # flushes the current minute too
    e.start()
    lat = e.call(lambda c: c.latency_history(app="shop"))
    rows = [m for m in lat.minutes if m.version == "1.0.0"]
    assert sum(m.count for m in rows) >= 17
    from hdrh.histogram import HdrHistogram
    h = HdrHistogram.decode(rows[-1].histogram)
    assert h.get_total_count() == rows[-1].count
    reg = e.call(lambda c: c.region_history(app="shop"))
    counts = {}
    for m in reg.minutes:
        counts[m.region] = counts.get(m.region, 0) + m.requests
    assert counts["eu-central"] == 12 and counts["us-east"] == 5 and "forged" not in counts
    # an owner sees its own apps' history, another scope nothing at all
    assert e.call(lambda c: c.latency_history(app="shop"), token=e.tokens.owner).minutes
    with pytest.raises(Forbidden):
        e.call(lambda c: c.load(), token=e.tokens.owner)
    with pytest.raises(Forbidden):
        e.call(lambda c: c.load(), token=e.tokens.stranger)
    with pytest.raises(Unauthorized):
        e.call(lambda c: c.load(), token="est1_" + "x" * 43)
    metrics = e.call(lambda c: c.metrics())
    assert "edgeshot_edge_restores_total" in metrics and "haproxy_frontend_" in metrics


def test_activator_answers_503_with_retry_after_when_no_instance_comes(edges, origin):
    e = edges(activator_timeout_s=1.0, retry_after_s=3).start()
    a = shop_assignment(f"http://{origin.address}/", idle_s=300)
    broken = a.model_copy(update={"versions": (VersionWeight(version="1.0.0", weight=100,
                                                             appshot="no-such-appshot"),)})
    e.call(lambda c: c.set_placements([broken]))
    t0 = time.monotonic()
    status, headers, _ = e.get("/catalog")
    assert status == 503 and headers["retry-after"] == "3"
    assert time.monotonic() - t0 < 5
    assert "no-such-appshot" in e.log_text() or "failed" in e.log_text()


def test_placements_survive_a_restart_and_wrong_edgepoint_is_refused(edges, origin):
    e = edges().start()
    a = place(e, origin, idle_s=300)
    e.stop()
    e.start()
    assert [p.id for p in e.call(lambda c: c.placements())] == [a.id]
    other = a.model_copy(update={"placement": a.placement.model_copy(update={"edgepoint": "us"})})
    from edgeshot.edge.client import Invalid
    with pytest.raises(Invalid, match="edgepoint"):
        e.call(lambda c: c.set_placements([other]))
    assert Path(e.state / "edge.db").stat().st_mode & 0o077 == 0


def test_without_haproxy_the_activator_serves_the_data_path(edges, origin):
    e = edges(use_haproxy="off", usage_interval_s=0.3).start()
    health = e.call(lambda c: c.health())
    assert health.mode == "activator" and "use_haproxy" in health.mode_reason
    place(e, origin, idle_s=300)
    status, headers, body = e.get("/catalog")
    assert status == 200 and b"price" in body
    cookie = headers["set-cookie"].split(";")[0]
    assert cookie.startswith("ES_shop=")
    assert e.get("/catalog", headers={"Cookie": cookie})[0] == 200
    assert json.loads(e.get("/account/bob")[2])["name"] == "origin"
    seen = json.loads(e.get("/account/bob", headers={"X-Edgeshot-Region": "forged",
                                                     "X-Forwarded-For": "6.6.6.6"})[2])
    assert (seen["region"], seen["forwarded_for"]) == (None, "127.0.0.1")  # not the user's
    assert e.get("/catalog", host="evil.example.net")[0] == 404
    assert not e.haproxy_pids()
    wait_for(lambda: usage_total(e)[0] == 2, 10, what="usage of the two edge requests")


def broken_placement(a, name: str = "bad"):
    """Another app beside ``a`` whose route regex does not compile (not what its path
    compiles to: a plan no controller compiled)."""
    route = a.app.routes[0].model_copy(update={"regex": "^(/x"})
    app = a.app.model_copy(update={"name": name, "hosts": (f"{name}.test",),
                                   "routes": (route, *a.app.routes[1:])})
    return a.model_copy(update={"app": app, "placement": a.placement.model_copy(
        update={"app": name, "id": f"{name}/eu"})})


def test_a_placement_that_does_not_compile_is_refused_and_never_blocks_the_others(edges,
                                                                                   origin):
    from edgeshot.edge.client import Invalid
    e = edges().start()
    a = place(e, origin, idle_s=300)
    assert e.get("/catalog")[0] == 200
    newer = a.model_copy(update={"cost_ceiling": 2})
    with pytest.raises(Invalid) as err:  # the good one applied, the bad one refused
        e.call(lambda c: c.set_placements([newer, broken_placement(a)]))
    assert err.value.code == "refused"
    assert err.value.message.startswith("placement bad/eu (app bad): app.routes.0.regex: "
                                        "'^(/x' is not what")
    placed = e.call(lambda c: c.placements())
    assert [(p.id, p.cost_ceiling) for p in placed] == [("shop/eu", 2)]
    assert e.get("/catalog")[0] == 200
    # a bad new version of a placed app: refused, its old assignment keeps serving
    with pytest.raises(Invalid, match="placement shop/eu"):
        e.call(lambda c: c.set_placements([broken_placement(a, "shop")]))
    assert [p.app.routes for p in e.call(lambda c: c.placements())] == [a.app.routes]
    assert e.get("/catalog")[0] == 200
    # a bad placement in the store (written by an older edge): quarantined at start
    e.stop()
    import sqlite3
    db = sqlite3.connect(e.state / "edge.db")
    with db:
        db.execute("INSERT INTO placements VALUES (?, ?)",
                   ("bad/eu", broken_placement(a).model_dump_json()))
    db.close()
    e.start()
    health = e.call(lambda c: c.health())
    assert list(health.quarantined) == ["bad/eu"] and "routes.0.regex" in health.quarantined[
        "bad/eu"]
    assert [p.id for p in e.call(lambda c: c.placements())] == ["shop/eu"]
    assert e.get("/catalog")[0] == 200
    assert "quarantined" in e.log_text()
