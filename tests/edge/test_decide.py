"""The resource manager's decision function: every rule, table-driven (pure, no I/O)."""

from __future__ import annotations

import math

import pytest

from edgeshot.edge.decide import (
    Discard,
    EdgeView,
    Inst,
    Memory,
    PlacementView,
    Policy,
    Restore,
    ServerView,
    Snapshotted,
    Suspend,
    Tuning,
    decide,
    split_by_weight,
)

POL = Policy(min=0, max=4, users_per_instance=10, max_response_ms=100, percentile=95,
             scale_down_below=0.3, idle_s=120, warm_pool=1, panic_factor=2.0)
S1 = ServerView("s1", slots_free=8, cpu_free=4, memory_free=8 << 30)
S2 = ServerView("s2", slots_free=8, cpu_free=4, memory_free=8 << 30)


def P(pid: str = "shop/eu", **kw) -> PlacementView:
    kw.setdefault("policy", POL)
    kw.setdefault("weights", (("1", 100),))
    kw.setdefault("cpu", 0.5)
    kw.setdefault("memory", 128 << 20)
    return PlacementView(pid, **kw)


def ready(n: int, version: str = "1", server: str = "s1", prefix: str = "i",
          inflight: float = 0.0) -> tuple[Inst, ...]:
    return tuple(Inst(f"{prefix}{k}", version, server, "ready", inflight) for k in range(n))


def run(*placements: PlacementView, servers=(S1, S2), memory=None, now=1000.0,
        tuning=Tuning()):
    return decide(EdgeView(tuple(placements), tuple(servers)), memory, now, tuning)


def kinds(d) -> list[tuple]:
    out = []
    for a in d.actions:
        if isinstance(a, Restore):
            out.append(("restore", a.placement, a.version, a.server, a.from_snapshot))
        elif isinstance(a, Suspend):
            out.append(("suspend", a.placement, a.instance, a.keep, a.reason))
        else:
            out.append(("discard", a.placement, a.instance, a.reason))
    return out


# -- scale from zero, load, latency -------------------------------------------------------
@pytest.mark.parametrize("name, placement, expected", [
    ("idle and empty: nothing", P(), []),
    ("a request held by the activator restores one at once",
     P(queued=1, panic_concurrency=1), [("restore", "shop/eu", "1", "s1", None)]),
    ("the warm pool comes back first, on its own server",
     P(queued=1, snapshotted=(Snapshotted("w1", "1", "s2", since=5),)),
     [("restore", "shop/eu", "1", "s2", "w1")]),
    ("the most recently snapshotted comes back first",
     P(queued=2, snapshotted=(Snapshotted("old", "1", "s1", since=5),
                              Snapshotted("new", "1", "s2", since=9)),
       policy=Policy(0, 4, 10, 100, 95, 0.3, 120, warm_pool=2)),
     [("restore", "shop/eu", "1", "s2", "new")]),
    ("stable demand above users_per_instance adds instances",
     P(instances=ready(1, inflight=25), stable_concurrency=25, panic_concurrency=25),
     [("restore", "shop/eu", "1", "s1", None), ("restore", "shop/eu", "1", "s2", None)]),
    ("at the target exactly: nothing",
     P(instances=ready(2, inflight=10), stable_concurrency=20, panic_concurrency=20, idle_s=0),
     []),
    ("latency above the SLA adds one",
     P(instances=ready(2), stable_concurrency=12, panic_concurrency=12, latency_ms=180,
       idle_s=0),
     [("restore", "shop/eu", "1", "s1", None)]),
    ("latency above the SLA while one is starting: wait for it",
     P(instances=ready(2) + (Inst("st", "1", "s1", "starting"),), stable_concurrency=12,
       panic_concurrency=12, latency_ms=180, idle_s=0),
     []),
    ("starting instances count: no second restore for the same demand",
     P(instances=(Inst("st", "1", "s1", "starting"),), queued=3, panic_concurrency=3), []),
])
def test_scale_up(name, placement, expected):
    assert kinds(run(placement)) == expected, name


def test_restores_spread_over_servers_with_most_room_and_that_fit():
    small = ServerView("small", slots_free=9, cpu_free=0.25, memory_free=8 << 30)
    roomy = ServerView("roomy", slots_free=3, cpu_free=4, memory_free=8 << 30)
    d = run(P(queued=30, panic_concurrency=30), servers=(small, roomy))
    assert [a.server for a in d.of(Restore)] == ["roomy", "roomy", "roomy"]
    assert d.reports["shop/eu"].unmet == 0


# -- panic and the stable window ------------------------------------------------------------
def test_panic_scales_at_once_and_holds_for_a_stable_window():
    t = Tuning(stable_window_s=60, scale_down_delay_s=30)
    burst = P(instances=ready(1, inflight=40), stable_concurrency=8, panic_concurrency=40,
              idle_s=0)
    d = run(burst, now=100, tuning=t)
    assert d.reports["shop/eu"].panic
    assert len(d.of(Restore)) == 3  # 40 / 10 = 4 instances, 1 ready
    assert d.memory.panic_until["shop/eu"] == 160
    # the burst is over but the panic holds: no scale-down
    calm = P(instances=ready(4, inflight=1), stable_concurrency=4, panic_concurrency=2,
             idle_s=0)
    for now in (110, 130, 159):
        d = run(calm, memory=d.memory, now=now, tuning=t)
        assert d.reports["shop/eu"].panic and d.actions == []
    # after the window: the stable rule applies (and then the scale-down delay)
    d = run(calm, memory=d.memory, now=161, tuning=t)
    assert "shop/eu" not in d.reports and "shop/eu" not in d.memory.panic_until
    assert d.actions == []  # low for 0 s only
    d = run(calm, memory=d.memory, now=192, tuning=t)
    assert [a.reason for a in d.of(Suspend)] == ["scale-down", "scale-down"]  # 4 -> 2 (half)


def test_panic_from_latency_at_the_panic_window():
    d = run(P(instances=ready(2, inflight=3), stable_concurrency=6, panic_concurrency=6,
              latency_ms=90, panic_latency_ms=250, idle_s=0))
    assert d.reports["shop/eu"].panic and len(d.of(Restore)) == 1


def test_below_panic_threshold_is_not_panic():
    d = run(P(instances=ready(2, inflight=15), stable_concurrency=30, panic_concurrency=39,
              idle_s=0))
    assert d.reports["shop/eu"].panic  # 4 wanted = 2 x 2 ready: the threshold itself
    d = run(P(instances=ready(2, inflight=15), stable_concurrency=20, panic_concurrency=29,
              idle_s=0))
    assert not d.reports["shop/eu"].panic
    assert len(d.of(Restore)) == 1  # the panic window's demand counts without panic


@pytest.mark.parametrize("loads", [
    [45, 15] * 10,  # square wave around the thresholds
    [30, 5, 30, 5, 30, 5, 30, 5],
    [21, 19, 21, 19, 21, 19],
])
def test_flapping_load_never_flaps_instances(loads):
    t = Tuning(scale_down_delay_s=30)
    mem = Memory()
    n = 3
    changes = []
    for k, c in enumerate(loads):
        p = P(instances=ready(n, inflight=c / n), stable_concurrency=c, panic_concurrency=c,
              idle_s=0)
        d = run(p, memory=mem, now=1000 + 5 * k, tuning=t)
        mem = d.memory
        up, down = len(d.of(Restore)), len(d.of(Suspend))
        n += up - down
        changes.append(up - down)
    downs = sum(1 for c in changes if c < 0)
    ups = sum(1 for c in changes if c > 0)
    assert downs == 0 and ups <= 1, changes


def test_scale_down_after_the_delay_by_at_most_half():
    t = Tuning(scale_down_delay_s=30)
    p = P(instances=ready(4, inflight=0.5), stable_concurrency=2, panic_concurrency=2, idle_s=0)
    d = run(p, now=0, tuning=t)
    assert d.actions == []
    d = run(p, memory=d.memory, now=31, tuning=t)
    assert len(d.of(Suspend)) == 2
    assert [a.keep for a in d.of(Suspend)] == [True, False]  # one joins the warm pool (1)


def test_busy_enough_instances_are_kept():
    # 3 instances at 7 each: want 3 by demand... at 6.5 each (above 0.3*10) keep 3
    t = Tuning(scale_down_delay_s=0)
    d = run(P(instances=ready(3, inflight=6.5), stable_concurrency=19.5,
              panic_concurrency=19.5, idle_s=0), tuning=t)
    assert d.actions == []


# -- scale to zero and the warm pool --------------------------------------------------------
@pytest.mark.parametrize("idle_s, n, expected", [
    (10, 1, []),  # idle, but not for idle_s: keep one
    (10, 3, [("suspend", "shop/eu", "i0", True, "scale-down")]),  # 3 -> 2: half at most
    (10, 4, [("suspend", "shop/eu", "i0", True, "scale-down"),
             ("suspend", "shop/eu", "i1", False, "scale-down")]),
    (121, 1, [("suspend", "shop/eu", "i0", True, "idle")]),
    (121, 2, [("suspend", "shop/eu", "i0", True, "idle"),
              ("suspend", "shop/eu", "i1", False, "idle")]),
    (math.inf, 1, [("suspend", "shop/eu", "i0", True, "idle")]),
])
def test_scale_to_zero_keeps_the_warm_pool(idle_s, n, expected):
    t = Tuning(scale_down_delay_s=0)
    assert kinds(run(P(instances=ready(n), idle_s=idle_s), tuning=t)) == expected


def test_warm_pool_already_full_stops_instead():
    p = P(instances=ready(1), idle_s=500, snapshotted=(Snapshotted("w", "1", "s1"),))
    assert kinds(run(p)) == [("suspend", "shop/eu", "i0", False, "idle")]


def test_warm_pool_surplus_is_discarded_oldest_first():
    snaps = (Snapshotted("a", "1", "s1", since=30), Snapshotted("b", "1", "s1", since=10),
             Snapshotted("c", "1", "s2", since=20))
    d = run(P(snapshotted=snaps))
    assert all(isinstance(a, Discard) for a in d.actions)
    assert kinds(d) == [("discard", "shop/eu", "b", "warm-pool"),
                        ("discard", "shop/eu", "c", "warm-pool")]


def test_min_instances_kept_even_when_idle():
    pol = Policy(min=2, max=4, users_per_instance=10, idle_s=10, warm_pool=0)
    assert run(P(policy=pol, instances=ready(2), idle_s=1e6)).actions == []
    d = run(P(policy=pol))  # nothing running yet: min comes up without demand
    assert len(d.of(Restore)) == 2


# -- limits ---------------------------------------------------------------------------------
@pytest.mark.parametrize("share, ceiling, n_restores, limited_by", [
    (None, None, 4, "max"),          # demand 10 instances, max 4
    (3, None, 3, "global_share"),
    (3, 2, 2, "cost_ceiling"),
    (1, 2, 1, "global_share"),
    (None, 0, 0, "cost_ceiling"),
])
def test_never_above_max_share_or_cost_ceiling(share, ceiling, n_restores, limited_by):
    d = run(P(queued=100, panic_concurrency=100, stable_concurrency=100, global_share=share,
              cost_ceiling=ceiling))
    assert len(d.of(Restore)) == n_restores
    rep = d.reports["shop/eu"]
    assert rep.limited_by == limited_by and rep.target == n_restores
    assert rep.unmet == 0  # limited by policy is not "at capacity"


def test_lowered_cost_ceiling_removes_instances_at_once_and_wins_over_min():
    pol = Policy(min=3, max=4, users_per_instance=10, warm_pool=0)
    d = run(P(policy=pol, instances=ready(3, inflight=10), stable_concurrency=30,
              panic_concurrency=30, idle_s=0, cost_ceiling=1))
    assert [(a.instance, a.reason) for a in d.of(Suspend)] == [("i0", "over-limit"),
                                                               ("i1", "over-limit")]


# -- capacity, priority, eviction ----------------------------------------------------------
FULL = ServerView("s1", slots_free=0, cpu_free=0, memory_free=0)


def test_at_capacity_is_reported_when_nothing_can_be_evicted():
    d = run(P(queued=5, panic_concurrency=25), servers=(FULL,))
    assert d.actions == [] and d.at_capacity == ["shop/eu"]
    assert d.reports["shop/eu"].unmet == 3


def test_higher_priority_evicts_lower_priority_to_make_room():
    low = P("blog/eu", priority=10, instances=ready(2, server="s1", prefix="b", inflight=1),
            stable_concurrency=2, panic_concurrency=2, idle_s=0)
    high = P("shop/eu", priority=90, queued=1, panic_concurrency=1)
    d = run(low, high, servers=(FULL,))
    assert kinds(d) == [
        ("suspend", "blog/eu", "b0", True, "evicted-for:shop/eu"),
        ("restore", "shop/eu", "1", "s1", None),
    ]
    assert d.at_capacity == []


@pytest.mark.parametrize("victim_prio, victim_min, evicts", [
    (90, 0, False),  # same priority: never
    (95, 0, False),  # higher: never
    (10, 2, False),  # lower, but at its minimum
    (10, 1, True),   # lower and above its minimum
])
def test_eviction_respects_priority_and_minimum(victim_prio, victim_min, evicts):
    vpol = Policy(min=victim_min, max=4, users_per_instance=10)
    victim = P("blog/eu", policy=vpol, priority=victim_prio,
               instances=ready(2, prefix="b", inflight=5), stable_concurrency=10,
               panic_concurrency=10, idle_s=0)
    d = run(victim, P("shop/eu", priority=90, queued=1, panic_concurrency=1),
            servers=(FULL,))
    assert bool(d.of(Suspend)) is evicts
    assert (d.at_capacity == ["shop/eu"]) is not evicts


def test_lowest_priority_and_least_loaded_are_evicted_first():
    a = P("a/eu", priority=30, instances=(Inst("a0", "1", "s1", inflight=1),),
          stable_concurrency=1, panic_concurrency=1, idle_s=0)
    b = P("b/eu", priority=20, instances=(Inst("b0", "1", "s1", inflight=3),
                                          Inst("b1", "1", "s1", inflight=1)),
          stable_concurrency=4, panic_concurrency=4, idle_s=0)
    d = run(a, b, P("shop/eu", priority=90, queued=1, panic_concurrency=1),
            servers=(FULL,))
    assert [s.instance for s in d.of(Suspend)] == ["b1"]


def test_scarce_room_goes_to_the_higher_priority_first():
    one = ServerView("s1", slots_free=1, cpu_free=4, memory_free=8 << 30)
    d = run(P("blog/eu", priority=10, queued=1), P("shop/eu", priority=90, queued=1),
            servers=(one,))
    assert [r.placement for r in d.of(Restore)] == ["shop/eu"]
    assert d.at_capacity == ["blog/eu"]


def test_eviction_needs_a_victim_whose_slot_fits():
    big = P("big/eu", priority=90, queued=1, cpu=2.0)
    small = P("tiny/eu", priority=10, instances=ready(2, prefix="t"), stable_concurrency=1,
              panic_concurrency=1, idle_s=0, cpu=0.25)
    srv = ServerView("s1", slots_free=0, cpu_free=1.0, memory_free=8 << 30)
    d = run(small, big, servers=(srv,))
    assert d.of(Suspend) == [] and d.at_capacity == ["big/eu"]


def test_unhealthy_server_gets_nothing():
    sick = ServerView("s2", slots_free=8, healthy=False)
    d = run(P(queued=1), servers=(sick, ServerView("s1", slots_free=1)))
    assert [r.server for r in d.of(Restore)] == ["s1"]


# -- health and versions --------------------------------------------------------------------
def test_unhealthy_instance_is_stopped_and_replaced():
    insts = (Inst("ok", "1", "s1", inflight=5), Inst("bad", "1", "s1", "unhealthy"))
    d = run(P(instances=insts, stable_concurrency=15, panic_concurrency=15, idle_s=0))
    assert kinds(d) == [("suspend", "shop/eu", "bad", False, "unhealthy"),
                        ("restore", "shop/eu", "1", "s1", None)]


def test_draining_instances_are_left_to_the_executor():
    insts = (Inst("d", "1", "s1", "draining"),)
    assert run(P(instances=insts, idle_s=0)).actions == []


@pytest.mark.parametrize("total, weights, expected", [
    (0, (("1", 90), ("2", 10)), {"1": 0, "2": 0}),
    (1, (("1", 90), ("2", 10)), {"1": 1, "2": 0}),
    (2, (("1", 90), ("2", 10)), {"1": 1, "2": 1}),
    (4, (("1", 90), ("2", 10)), {"1": 3, "2": 1}),
    (10, (("1", 50), ("2", 50)), {"1": 5, "2": 5}),
    (5, (("1", 50), ("2", 50)), {"1": 3, "2": 2}),
    (3, (("1", 100), ("2", 0)), {"1": 3, "2": 0}),
    (3, (("a", 1), ("b", 1), ("c", 1)), {"a": 1, "b": 1, "c": 1}),
])
def test_split_by_weight(total, weights, expected):
    assert split_by_weight(total, weights) == expected


def test_canary_gets_its_instance_and_a_zero_weight_version_is_drained():
    insts = ready(2, "1", prefix="v1-") + ready(1, "2", prefix="v2-")
    d = run(P(weights=(("1", 0), ("2", 100)), instances=insts, stable_concurrency=25,
              panic_concurrency=25, idle_s=0))
    assert sorted(kinds(d)) == [
        ("restore", "shop/eu", "2", "s1", None), ("restore", "shop/eu", "2", "s2", None),
        ("suspend", "shop/eu", "v1-0", True, "scale-down"),
        ("suspend", "shop/eu", "v1-1", False, "scale-down"),
    ]


def test_removed_version_is_stopped_and_its_snapshots_discarded():
    insts = ready(1, "old", prefix="o") + ready(1, "new", prefix="n", inflight=5)
    d = run(P(weights=(("new", 100),), instances=insts, stable_concurrency=5,
              panic_concurrency=5, idle_s=0,
              snapshotted=(Snapshotted("os", "old", "s1"),)))
    assert kinds(d) == [("suspend", "shop/eu", "o0", False, "version-removed"),
                        ("discard", "shop/eu", "os", "version-removed")]


def test_report_only_for_active_placements_and_memory_is_new():
    mem = Memory(panic_until={"gone/eu": 5.0})
    d = run(P("idle/eu"), P("busy/eu", queued=1), memory=mem, now=10)
    assert list(d.reports) == ["busy/eu"]
    assert "gone/eu" in mem.panic_until  # the input is not mutated
