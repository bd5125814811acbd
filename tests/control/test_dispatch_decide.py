"""The global dispatcher's decision function, table-driven.

Sites sit at the built-in regions' coordinates: fra (Frankfurt), lon (London),
ash (Ashburn), sin (Singapore). Users come from regions of the same table.
"""

from __future__ import annotations

import pytest

from edgeshot.control.dispatch import (
    ANY_REGION,
    DispatchPolicy,
    Geometry,
    Placed,
    Site,
    UserRegion,
    changes,
    decide,
    distance_km,
    penalty,
    route,
    rtt_ms,
)
from edgeshot.spec import REGIONS

AT = {"fra": "eu-central", "lon": "eu-west", "ash": "us-east", "sin": "ap-southeast",
      "hel": "eu-north"}
REGION_LIST = [UserRegion(n, r.latitude, r.longitude) for n, r in REGIONS.items()]


def site(name: str, healthy: bool = True, load: float = 0.0) -> Site:
    r = REGIONS[AT[name]]
    return Site(name, r.latitude, r.longitude, healthy=healthy, load=load)


def table(sites, placed, policy=DispatchPolicy(), previous=None):
    return decide(sites, placed, REGION_LIST, policy, previous=previous)


def test_distances_are_great_circle():
    fra, ash = REGIONS["eu-central"], REGIONS["us-east"]
    km = distance_km(fra.latitude, fra.longitude, ash.latitude, ash.longitude)
    assert 6400 < km < 6700  # Frankfurt-Ashburn is ~6,550 km
    assert distance_km(1, 2, 1, 2) == 0
    assert 60 < rtt_ms(km) < 110
    assert rtt_ms(0) > 0


@pytest.mark.parametrize(
    ("sites", "placed", "region", "expected"),
    [
        # distance: each region's users go to the nearest placed edgepoint
        (["fra", "ash", "sin"], ["fra", "ash", "sin"], "eu-central", ("fra", "ash", "sin")),
        (["fra", "ash", "sin"], ["fra", "ash", "sin"], "us-east", ("ash", "fra", "sin")),
        (["fra", "ash", "sin"], ["fra", "ash", "sin"], "ap-southeast", ("sin", "fra", "ash")),
        (["fra", "ash", "sin"], ["fra", "ash", "sin"], "eu-west", ("fra", "ash", "sin")),
        (["fra", "ash", "sin"], ["fra", "ash", "sin"], "us-west", ("ash", "fra", "sin")),
        # placement: only where the app is placed, even if farther
        (["fra", "ash", "sin"], ["ash", "sin"], "eu-central", ("ash", "sin")),
        (["fra", "ash", "sin"], ["sin"], "us-east", ("sin",)),
        # fallbacks: at most 1 + policy.fallbacks edgepoints
        (["fra", "lon", "ash", "sin", "hel"], ["fra", "lon", "ash", "sin", "hel"], "eu-west",
         ("lon", "fra", "hel")),
    ],
)
def test_distance_and_placement(sites, placed, region, expected):
    t = table([site(s) for s in sites], [Placed("shop", p) for p in placed])
    assert t.chain("shop", region) == expected


@pytest.mark.parametrize(
    ("loads", "region", "expected_first", "why"),
    [
        ({"fra": 0.0, "lon": 0.0}, "eu-central", "fra", "idle: nearest"),
        ({"fra": 0.69, "lon": 0.0}, "eu-central", "fra", "below load_soft: no penalty"),
        ({"fra": 0.95, "lon": 0.0}, "eu-central", "lon", "nearly full: ~83 ms penalty > ~9 ms"),
        ({"fra": 0.95, "lon": 0.95}, "eu-central", "fra", "both loaded alike: nearest"),
        ({"fra": 0.8, "lon": 0.0}, "eu-central", "lon", "33 ms penalty beats 9 ms farther"),
        ({"fra": 0.8, "lon": 0.0, "ash": 0.0}, "us-east", "ash", "far away: loads matter less"),
    ],
)
def test_load(loads, region, expected_first, why):
    t = table([site(n, load=v) for n, v in loads.items()], [Placed("a", n) for n in loads])
    assert t.chain("a", region)[0] == expected_first, why


def test_penalty_shape():
    p = DispatchPolicy(load_soft=0.5, overload_ms=100)
    assert penalty(0.0, p) == 0 and penalty(0.5, p) == 0
    assert penalty(0.75, p) == pytest.approx(50)
    assert penalty(1.0, p) == pytest.approx(100)
    assert penalty(1.5, p) == pytest.approx(200)


@pytest.mark.parametrize(
    ("accepting", "loads", "region", "expected"),
    [
        # a placement at capacity sheds new users to the next edgepoint...
        ({"fra": False, "lon": True, "ash": True}, {}, "eu-central", ("lon", "ash", "fra")),
        # ... also when the edgepoint as a whole is full (load >= 1)
        ({"fra": True, "lon": True, "ash": True}, {"fra": 1.0}, "eu-central", ("lon", "ash", "fra")),
        # ... but keeps it as a last resort when everything is full: never no route
        ({"fra": False, "lon": False, "ash": False}, {}, "eu-central", ("fra", "lon", "ash")),
        ({"fra": False, "lon": False, "ash": True}, {}, "eu-west", ("ash", "lon", "fra")),
    ],
)
def test_capacity(accepting, loads, region, expected):
    sites = [site(n, load=loads.get(n, 0.0)) for n in accepting]
    t = table(sites, [Placed("a", n, accepting=a) for n, a in accepting.items()])
    assert t.chain("a", region) == expected
    assert all(t.weights["a"][n] == (1 if a and loads.get(n, 0) < 1 else 0)
               for n, a in accepting.items())


@pytest.mark.parametrize(
    ("healthy", "region", "expected"),
    [
        ({"fra": False, "lon": True, "ash": True}, "eu-central", ("lon", "ash")),
        ({"fra": False, "lon": False, "ash": True}, "eu-central", ("ash",)),
        ({"fra": False, "lon": False, "ash": False}, "eu-central", ()),
    ],
)
def test_failure(healthy, region, expected):
    t = table([site(n, healthy=h) for n, h in healthy.items()], [Placed("a", n) for n in healthy])
    assert t.chain("a", region) == expected
    assert t.sticky["a"] == frozenset(n for n, h in healthy.items() if h)
    assert route(t, "a", region) == (expected[0] if expected else None)


def test_between_ticks_haproxy_skips_a_server_it_sees_down():
    t = table([site("fra"), site("lon"), site("ash")], [Placed("a", n) for n in ("fra", "lon", "ash")])
    assert route(t, "a", "eu-central", up={"fra": False, "lon": True, "ash": True}) == "lon"
    assert route(t, "a", "eu-central", up={"fra": False, "lon": False, "ash": True}) == "ash"
    assert route(t, "a", "eu-central", up=lambda ep: False) is None


@pytest.mark.parametrize(
    ("current", "affinity", "accepting_fra", "healthy_fra", "placed_fra", "expected", "why"),
    [
        ("fra", True, True, True, True, "fra", "stays"),
        ("fra", True, False, True, True, "fra", "at capacity: existing users stay"),
        ("fra", True, True, False, True, "ash", "failed: moved"),
        ("fra", True, True, True, False, "ash", "no longer placed there: moved"),
        ("fra", False, True, True, True, "ash", "app without affinity: region decides"),
        ("nowhere", True, True, True, True, "ash", "unknown edgepoint in the cookie"),
        (None, True, True, True, True, "ash", "new user"),
    ],
)
def test_affinity(current, affinity, accepting_fra, healthy_fra, placed_fra, expected, why):
    sites = [site("fra", healthy=healthy_fra), site("ash"), site("sin")]
    placed = [Placed("a", "ash"), Placed("a", "sin")]
    if placed_fra:
        placed.append(Placed("a", "fra", accepting=accepting_fra))
    t = table(sites, placed)
    assert route(t, "a", "us-east", current=current, affinity=affinity) == expected, why


def test_unknown_region_uses_the_load_only_chain():
    t = table([site("fra", load=0.9), site("ash"), site("sin", load=0.8)],
              [Placed("a", n) for n in ("fra", "ash", "sin")])
    assert t.chain("a", "mars") == t.chain("a", ANY_REGION) == ("ash", "sin", "fra")


def test_hysteresis_keeps_the_previous_choice_until_clearly_beaten():
    placed = [Placed("a", "fra"), Placed("a", "lon")]
    pol = DispatchPolicy(hysteresis_ms=20)
    t0 = table([site("fra"), site("lon")], placed, pol)
    assert t0.chain("a", "eu-central")[0] == "fra"
    # fra slightly loaded: lon scores ~0 better... not by 20 ms: fra stays
    t1 = table([site("fra", load=0.75), site("lon")], placed, pol, previous=t0)
    assert t1.chain("a", "eu-central")[0] == "fra"
    # without the previous table, the same inputs pick lon
    assert table([site("fra", load=0.75), site("lon")], placed, pol).chain("a", "eu-central")[0] == "lon"
    # clearly beaten: moves
    t2 = table([site("fra", load=0.95), site("lon")], placed, pol, previous=t1)
    assert t2.chain("a", "eu-central")[0] == "lon"
    # a previous choice at capacity is never kept
    t3 = table([site("fra"), site("lon")], [Placed("a", "fra", accepting=False), placed[1]],
               pol, previous=t0)
    assert t3.chain("a", "eu-central")[0] == "lon"


def test_apps_are_independent_and_unplaced_apps_have_no_route():
    sites = [site("fra"), site("ash")]
    t = table(sites, [Placed("a", "fra"), Placed("b", "ash"), Placed("c", "gone")])
    assert t.chain("a", "us-east") == ("fra",)
    assert t.chain("b", "eu-central") == ("ash",)
    assert t.chain("c", "eu-central") == ()
    assert t.chain("zzz", "eu-central") == ()


def test_geometry_is_reused_and_gives_the_same_answer():
    sites = [site("fra"), site("ash"), site("sin")]
    placed = [Placed("a", n) for n in ("fra", "ash", "sin")]
    geo = Geometry()
    assert decide(sites, placed, REGION_LIST, geometry=geo) == decide(sites, placed, REGION_LIST)
    assert decide(sites, placed, REGION_LIST, geometry=geo) == decide(sites, placed, REGION_LIST)


def test_changes_are_what_to_push():
    placed = [Placed("a", n) for n in ("fra", "ash")]
    t0 = table([site("fra"), site("ash")], placed)
    t1 = table([site("fra", healthy=False), site("ash")], placed)
    set_, gone = changes(t0, t1)
    assert set_ and all(v == ("ash",) for v in set_.values())
    assert not gone
    assert changes(t1, t1) == ({}, [])
    set_all, _ = changes(None, t0)
    assert set_all == t0.routes
    t2 = table([site("fra")], [Placed("a", "fra")])
    t3 = table([site("fra")], [])
    assert sorted(changes(t2, t3)[1]) == sorted(t2.routes)


def test_duplicate_placements_count_once():
    t = table([site("fra"), site("ash")], [Placed("a", "fra"), Placed("a", "fra", accepting=False),
                                           Placed("a", "ash")])
    assert t.chain("a", "eu-central") == ("fra", "ash")
