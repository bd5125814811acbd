"""The edge's parts without processes: log parsing and latency windows, the usage meter's
exactly-once bookkeeping, Python routing (no-HAProxy mode), version picking, config."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from edgeshot.edge import _haproxy as H
from edgeshot.edge._activator import Router, Target, WeightedPicker
from edgeshot.edge._logs import ORIGIN, LatencyBook, parse_line, percentile
from edgeshot.edge._store import Counters, InstanceMeta, Store
from edgeshot.edge._usage import ACTIVATOR_WORKER, UsageMeter, counters_from_stat
from edgeshot.edge.service import ConfigError, EdgeConfig, Window


# -- logs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("line, parsed", [
    (b"shop shop-1 200 12 10 583 84 GET {eu-central}\n", ("shop", "shop-1", 200, 12, "eu-central")),
    (b"shop shop-1 503 -1 -1 0 84 GET {}\n", ("shop", "shop-1", 503, -1, "-")),
    (b"edgeshot.http <NOSRV> 404 0 -1 182 88 GET", ("edgeshot.http", "<NOSRV>", 404, 0, "-")),
    (b"garbage", None),
    (b"a b notanumber 1 2 3 4 GET {}", None),
])
def test_parse_log_line(line, parsed):
    assert parse_line(line) == parsed


@pytest.mark.parametrize("counts, pct, expected", [
    (Counter(), 50, None),
    (Counter({1: 1}), 99, 1.0),
    (Counter({1: 90, 100: 10}), 90, 1.0),
    (Counter({1: 90, 100: 10}), 91, 100.0),
    (Counter({5: 50, 7: 50}), 50, 5.0),
])
def test_percentile_nearest_rank(counts, pct, expected):
    assert percentile(counts, pct) == expected


def test_latency_book_windows_versions_origin_and_held_requests():
    book = LatencyBook(window_s=60)
    for k in range(100):
        book.record("shop", "1", 10 if k < 95 else 400, 200, now=1000.0 + k * 0.1)
    book.record("shop", "2", 50, 502, now=1009.0)
    book.record("shop", ORIGIN, 900, 200, now=1009.0)
    book.record("shop", "1", 5000, 200, now=1009.5, held=True)  # a restore's wait
    assert book.latency("shop", 95, 60, now=1010) == 50.0  # versions merged, origin apart
    counts, errors = book.window("shop", 60, version="2", now=1010)
    assert sum(counts.values()) == 1 and errors == 1
    assert book.latency("shop", 99, 60, now=1010) == 400.0  # the held one is not load
    assert book.latency("shop", 50, 2, now=1010) == 10.0  # only the last 2 s
    assert book.latency("shop", 50, 60, now=1200) is None  # all aged out


def test_latency_book_minutes_go_to_the_store_with_regions(tmp_path):
    store = Store(tmp_path / "e.db")
    book = LatencyBook()
    t0 = 1_800_000_000.0 - 1_800_000_000.0 % 60
    for k in range(30):
        book.record("shop", "1", k, 500 if k == 0 else 200, "eu" if k % 3 else "us", now=t0 + k)
    book.record("shop", "1", 7, 200, "eu", now=t0 + 61, n=4)  # sampled 1 in 4
    assert book.flush(store, now=t0 + 65) == 1  # only the complete minute
    assert book.flush(store, now=t0 + 65, everything=True) == 1
    minute = datetime.fromtimestamp(t0, UTC)
    rows = store.latency_history("2000-01-01T00:00Z", "2100-01-01T00:00Z")
    assert [(r["count"], r["errors"]) for r in rows] == [(30, 1), (4, 0)]
    assert rows[0]["minute"] == minute.strftime("%Y-%m-%dT%H:%MZ")
    assert rows[0]["p50"] in (14, 15) and rows[0]["max"] == 29
    regions = {(r["minute"][-6:], r["region"]): r["requests"]
               for r in store.region_history("2000-01-01T00:00Z", "2100-01-01T00:00Z")}
    assert sorted(regions.values()) == [4, 10, 20]
    # a minute flushed twice (around a restart) adds up
    book.record("shop", "1", 3, 200, "eu", now=t0 + 5)
    book.flush(store, now=t0 + 200)
    rows = store.latency_history("2000-01-01T00:00Z", "2100-01-01T00:00Z")
    assert rows[0]["count"] == 31
    store.close()


# -- usage -----------------------------------------------------------------------------------
META = {"i1": InstanceMeta("i1", "shop", "1", "acme", "isv", "s1"),
        "i2": InstanceMeta("i2", "shop", "2", "acme", "isv", "s1")}


def meter(store: Store, clock=None) -> UsageMeter:
    t = [datetime(2026, 1, 1, tzinfo=UTC)]

    def tick() -> datetime:
        t[0] += timedelta(seconds=1)
        return t[0]
    return UsageMeter(store, "edge:eu", "eu", clock=clock or tick)


def total(store: Store) -> tuple[int, int, int]:
    rows = store.usage_after(0, 10_000)
    return (sum(r["requests"] for r in rows), sum(r["net_in_bytes"] for r in rows),
            sum(r["net_out_bytes"] for r in rows))


def test_usage_deltas_exactly_once_across_a_crash_and_a_reload(tmp_path):
    store = Store(tmp_path / "e.db")
    m = meter(store)
    m.observe(100, {("shop", "i1"): Counters(10, 1000, 5000)})
    assert m.flush(META.get) == 1
    m.observe(100, {("shop", "i1"): Counters(15, 1500, 7500)})  # seen, not yet committed
    # the edge crashes here; a new process adopts the same HAProxy worker
    m2 = meter(store)
    m2.observe(100, {("shop", "i1"): Counters(18, 1800, 9000)})
    m2.flush(META.get)
    m2.flush(META.get)  # nothing new: nothing written
    assert total(store) == (18, 1800, 9000)
    # a reload: a new worker starts from zero, the old one finishes what it had
    m2.observe(101, {("shop", "i1"): Counters(4, 400, 2000)})
    m2.observe(100, {("shop", "i1"): Counters(19, 1900, 9500)})
    m2.flush(META.get)
    m2.forget_worker(100)
    assert total(store) == (23, 2300, 11500)
    seqs = [r["seq"] for r in store.usage_after(0, 100)]
    assert seqs == list(range(1, len(seqs) + 1))
    page = m2.page(after=seqs[0], limit=2)
    assert [r["seq"] for r in page["records"]] == seqs[1:3]
    assert page["head_seq"] == seqs[-1] and page["source"] == "edge:eu"
    store.close()


def test_usage_server_removed_then_back_under_the_same_name_and_activator_counts(tmp_path):
    store = Store(tmp_path / "e.db")
    m = meter(store)
    m.observe(100, {("shop", "i1"): Counters(50, 5000, 9000)})
    m.count_activator("shop", "i1", 300, 700)  # the first request, via the activator
    m.flush(META.get)
    m.forget_server("shop", "i1")  # deleted from HAProxy after this flush
    # back from its snapshot: the same name, counters from zero again
    m.observe(100, {("shop", "i1"): Counters(2, 200, 400)})
    m.count_activator("shop", "i1", 10, 20)
    m.flush(META.get)
    assert total(store) == (54, 5510, 10120)
    # counters going backwards (a restarted process) count from zero, never negative
    m.observe(100, {("shop", "i1"): Counters(1, 100, 100)})
    m.flush(META.get)
    assert total(store) == (55, 5610, 10220)
    # an instance nobody can attribute is kept until it can be
    m.observe(100, {("shop", "ghost"): Counters(3, 3, 3)})
    assert m.flush(META.get) == 0
    assert m.flush(lambda i: InstanceMeta(i, "shop", "1", "acme", "isv", "s1")) == 1
    m.reset_activator()
    assert not [k for k in m.base if k[0] == ACTIVATOR_WORKER]
    store.close()


def test_counters_from_stat_keep_only_instance_servers():
    rows = [{"pxname": "shop", "svname": "i1", "req_tot": "5", "bin": "10", "bout": "20"},
            {"pxname": "shop", "svname": "BACKEND", "req_tot": "9"},
            {"pxname": "shop", "svname": "edgeshot.activator", "req_tot": "4"},
            {"pxname": "shop.origin", "svname": "origin", "req_tot": "1"},
            {"pxname": "edgeshot.http", "svname": "FRONTEND", "req_tot": "9"},
            {"pxname": "shop", "svname": "i2", "req_tot": "", "bin": "x", "bout": "1"}]
    assert counters_from_stat(rows) == {("shop", "i1"): Counters(5, 10, 20),
                                        ("shop", "i2"): Counters(0, 0, 1)}


# -- routing without HAProxy -------------------------------------------------------------------
def test_python_router_matches_like_haproxy(tmp_path):
    shop = H.AppConf("shop", hosts=("shop.example.com",), routes=(
        H.Route("GET", "^/account/.*$", "origin"), H.Route("POST", "^/checkout", "origin"),
        H.Route("*", "^/", "edge")))
    api = H.AppConf("api", hosts=("shop.example.com",), path_prefix="/api")
    wild = H.AppConf("wild", hosts=("*.example.org",))
    r = Router(H.HAProxyConf("eu", "127.0.0.1", 1, tmp_path, apps=(shop, api, wild)))
    assert r.app_of("Shop.Example.com:8080", "/catalog").name == "shop"
    assert r.app_of("shop.example.com", "/api/x").name == "api"
    assert r.app_of("shop.example.com", "/apix").name == "shop"
    assert r.app_of("a.example.org", "/").name == "wild"
    assert r.app_of("example.org", "/") is None
    assert r.app_of("evil.net", "/") is None
    assert r.side(shop, "GET", "/account/7") == "origin"
    assert r.side(shop, "POST", "/checkout") == "origin"
    assert r.side(shop, "GET", "/checkout") == "edge"


def test_weighted_picker_follows_weights_and_affinity():
    p = WeightedPicker()
    ready = {"1": [Target("a", "1", "10.0.0.2:8000"), Target("b", "1", "10.0.0.3:8000")],
             "2": [Target("c", "2", "10.0.0.4:8000", cookie="ck")]}
    picks = Counter(p.choose("shop", ready, {"1": 80, "2": 20}).version for _ in range(2000))
    assert 1450 < picks["1"] < 1750
    assert p.choose("shop", ready, {"1": 80, "2": 20}, cookie="ck").instance == "c"
    assert p.choose("shop", ready, {"1": 0, "2": 0}) is not None  # no weights: any ready
    assert p.choose("shop", {}, {"1": 100}) is None


def test_window_mean_over_time():
    w = Window(1.0)
    for k in range(10):
        w.add(k * 0.1, 10.0)
    assert w.mean() == 10.0
    w.add(1.5, 0.0)
    assert w.mean() == pytest.approx(10 * 4 / 5)  # samples after 0.5 s remain


def test_edge_config_loads_relative_paths_and_reports_every_problem(tmp_path):
    f = tmp_path / "edge.toml"
    f.write_text('edgepoint = "eu"\nstate_dir = "st"\ntokens_file = "t.toml"\n'
                 'agent_token_file = "a.token"\n[[agents]]\nname = "eu-1"\n'
                 'url = "http://127.0.1.1:7701"\n')
    cfg = EdgeConfig.load(f)
    assert cfg.state_dir == tmp_path / "st" and cfg.agents[0].name == "eu-1"
    assert EdgeConfig.load(_write(tmp_path, cfg.render())) == cfg
    bad = _write(tmp_path, 'edgepoint = "eu/x"\nstate_dir = 3\ntick_s = 0\nlisten = "x"\n'
                           'tokens_file = "t"\nagent_token_file = "a"\nbogus = 1\n')
    with pytest.raises(ConfigError) as exc:
        EdgeConfig.load(bad)
    text = str(exc.value)
    for key in ("edgepoint", "state_dir", "tick_s", "bogus"):
        assert key in text


def _write(d, text):
    p = d / "other.toml"
    p.write_text(text)
    return p


def test_request_counts_per_version_come_from_counters():
    book = LatencyBook(window_s=60)
    book.count("shop", "1", 10, 1, now=1000.2)
    book.count("shop", "1", 5, 0, now=1000.7)
    book.count("shop", "2", 3, 3, now=1030.0)
    book.count("shop", "1", 0, 0, now=1031.0)  # nothing: nothing stored
    assert book.counted("shop", "1", 60, now=1031) == (15, 1)
    assert book.counted("shop", "2", 10, now=1031) == (3, 3)
    assert book.counted("shop", "1", 10, now=1031) == (0, 0)
