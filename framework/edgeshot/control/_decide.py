"""The global dispatcher's decision: for each app and user region, which edgepoints, in order.

A pure function over plain data (docs/architecture.md: decisions are separate from the
I/O that feeds them). Every tick the controller builds its inputs from what
the edge processes report, calls `decide`, and pushes the changed entries
into HAProxy's maps; HAProxy applies the table per request (see
`_haproxy.py`), `route` below is the same rule in Python, for tests.

The rule, per app and region:

1. candidates are the edgepoints the app is placed on that are healthy;
2. each is scored by the estimated round trip from the region (great-circle
   distance) plus a load penalty that grows once its load passes
   `load_soft` and reaches `overload_ms` at full capacity;
3. placements that accept new users come first (by score), then those at
   capacity (by score): an edgepoint at capacity sheds *new* users to the next
   one, and is used only when every other one is full too;
4. hysteresis: the previous first choice stays first while it still accepts
   users and scores within `hysteresis_ms` of the best, so that routes do not
   flap with small load changes;
5. the first `1 + fallbacks` form the chain: HAProxy uses the first one that
   its own health checks see up, so a failure is routed around between ticks.

Users of apps with affinity keep their edgepoint (a cookie) while it is healthy
and the app is still placed there, even at capacity: only new users are shed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from operator import itemgetter
from typing import NamedTuple

from ._geo import distance_km, rtt_ms

ANY_REGION = "*"  # the chain for users whose region is unknown


class Site(NamedTuple):
    """An edgepoint as the global dispatcher sees it."""

    name: str
    latitude: float
    longitude: float
    healthy: bool = True
    load: float = 0.0  # share of its capacity in use: 0 idle, 1 full (may exceed 1)


class Placed(NamedTuple):
    """An app on an edgepoint; `accepting` is False when that placement is at capacity."""

    app: str
    edgepoint: str
    accepting: bool = True


class UserRegion(NamedTuple):
    name: str
    latitude: float
    longitude: float


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    fallbacks: int = 2  # edgepoints after the first in each chain, for failover
    load_soft: float = 0.7  # load above which an edgepoint starts to cost more
    overload_ms: float = 100.0  # penalty at load 1.0 (grows linearly beyond)
    hysteresis_ms: float = 10.0  # keep the previous first choice unless beaten by this much


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """What HAProxy applies per request.

    `chains[app][k]` is the chain for users from `regions[k]` (the last region is
    ANY_REGION: users whose region is unknown), best first.
    """

    regions: tuple[str, ...]
    chains: dict[str, list[tuple[str, ...]]]
    sticky: dict[str, frozenset[str]]  # app -> edgepoints where users with affinity may stay
    weights: dict[str, dict[str, int]]  # app -> edgepoint -> weight when HAProxy redispatches

    def chain(self, app: str, region: str) -> tuple[str, ...]:
        per = self.chains.get(app)
        if per is None:
            return ()
        try:
            return per[self.regions.index(region)]
        except ValueError:
            return per[-1]

    @property
    def routes(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(app, region) -> chain, every entry."""
        return {(app, r): c for app, per in self.chains.items()
                for r, c in zip(self.regions, per, strict=True)}


class Geometry:
    """Round-trip estimates between user regions and edgepoints.

    Coordinates change only with the topology, so the controller keeps one
    Geometry between ticks (`decide` builds a throwaway one when given none):
    the columns of estimates are recomputed only when a coordinate changed.
    """

    def __init__(self) -> None:
        self._coords: list[tuple[float, float]] | None = None
        self._regions: list[UserRegion] = []
        self._columns: list[list[float]] = []

    def columns(self, regions: list[UserRegion], sites: list[Site]) -> list[list[float]]:
        """Per region, the estimated RTT to every site (in the sites' order)."""
        coords = [(s.latitude, s.longitude) for s in sites]
        if coords != self._coords or regions != self._regions:
            self._columns = [[rtt_ms(distance_km(r.latitude, r.longitude, la, lo))
                              for la, lo in coords] for r in regions]
            self._coords, self._regions = coords, list(regions)
        return self._columns


def _getter(indices: list[int]) -> Callable[[list[int]], tuple[int, ...]]:
    """seq -> tuple of seq[i] for i in indices, in one C call (itemgetter)."""
    if len(indices) > 1:
        return itemgetter(*indices)
    if indices:
        only = indices[0]
        return lambda seq: (seq[only],)
    return lambda seq: ()


def penalty(load: float, policy: DispatchPolicy) -> float:
    """Load penalty in milliseconds: nothing below `load_soft`, `overload_ms` at 1.0."""
    if load <= policy.load_soft:
        return 0.0
    return policy.overload_ms * (load - policy.load_soft) / max(1e-9, 1.0 - policy.load_soft)


def decide(
    sites: Iterable[Site],
    placements: Iterable[Placed],
    regions: Iterable[UserRegion],
    policy: DispatchPolicy = DispatchPolicy(),
    previous: RoutingTable | None = None,
    geometry: Geometry | None = None,
) -> RoutingTable:
    """The routing table for this tick (see the module docstring for the rule)."""
    site_list = list(sites)
    region_list = list(regions)
    geo = geometry or Geometry()
    names = [s.name for s in site_list]
    index = {name: i for i, name in enumerate(names)}
    pen = [penalty(s.load, policy) for s in site_list]
    open_ = [s.healthy and s.load < 1.0 for s in site_list]
    healthy = [s.healthy for s in site_list]
    name_of = names.__getitem__

    # Per app: healthy placements that accept new users, and those at capacity.
    accepting: dict[str, list[int]] = {}
    full: dict[str, list[int]] = {}
    for app, ep, acc in placements:
        i = index.get(ep)
        if app not in accepting:
            accepting[app] = []
            full[app] = []
        if i is None or not healthy[i]:
            continue
        (accepting if acc and open_[i] else full)[app].append(i)
    for app, acc in accepting.items():  # one Placed per app and edgepoint is expected
        rest = full[app]
        if len(set(acc).union(rest)) != len(acc) + len(rest):
            accepting[app] = list(dict.fromkeys(acc))
            full[app] = [i for i in dict.fromkeys(rest) if i not in accepting[app]]

    # Per region one score per site (RTT + load penalty), each site's rank by it and the
    # names in rank order: an app's chain is then the smallest ranks of its own few
    # placements, mapped back to names (C-level sorts of small ints, no key function).
    n = len(site_list)
    scores: list[list[float]] = []
    rank_of: list[list[int]] = []
    name_at: list[Callable[[int], str]] = []
    for col in (*geo.columns(region_list, site_list), [0.0] * n):
        score = [a + b for a, b in zip(col, pen, strict=True)]
        order = sorted(range(n), key=score.__getitem__)
        rank = [0] * n
        for pos, i in enumerate(order):
            rank[i] = pos
        scores.append(score)
        rank_of.append(rank)
        name_at.append([names[i] for i in order].__getitem__)
    region_names = [r.name for r in region_list] + [ANY_REGION]
    per_region = list(zip(rank_of, name_at, strict=True))

    keep = 1 + policy.fallbacks
    hysteresis = policy.hysteresis_ms
    before_all = (previous.chains if previous is not None and hysteresis > 0
                  and previous.regions == tuple(region_names) else {})
    chains_by_app: dict[str, list[tuple[str, ...]]] = {}
    for app, acc in accepting.items():
        rest = full[app]
        if len(acc) >= keep:
            get = _getter(acc)
            chains = [tuple(map(at, sorted(get(rk))[:keep])) for rk, at in per_region]
        elif acc or rest:
            get, get_rest = _getter(acc), _getter(rest)
            chains = [tuple(map(at, (sorted(get(rk)) + sorted(get_rest(rk)))[:keep]))
                      for rk, at in per_region]
        else:
            continue
        before = before_all.get(app)
        if before is not None and before != chains:
            # Hysteresis: keep the previous first choice while it accepts and is close enough.
            ok = set(map(name_of, acc))
            for k, (b, c) in enumerate(zip(before, chains, strict=True)):
                if b and b[0] != c[0] and b[0] in ok:
                    score = scores[k]
                    if score[index[b[0]]] <= score[index[c[0]]] + hysteresis:
                        chains[k] = (b[0], *(x for x in c if x != b[0]))[:keep]
        chains_by_app[app] = chains

    sticky = {app: frozenset(map(name_of, acc + full[app])) for app, acc in accepting.items()}
    weights = {app: {**dict.fromkeys(map(name_of, full[app]), 0),
                     **dict.fromkeys(map(name_of, acc), 1)}
               for app, acc in accepting.items()}
    return RoutingTable(regions=tuple(region_names), chains=chains_by_app, sticky=sticky,
                        weights=weights)


def route(
    table: RoutingTable,
    app: str,
    region: str,
    current: str | None = None,
    affinity: bool = False,
    up: Callable[[str], bool] | Mapping[str, bool] | None = None,
) -> str | None:
    """The edgepoint one request goes to: what the dispatcher's HAProxy does, in Python.

    `current` is the edgepoint in the user's affinity cookie; `up` says what
    HAProxy's health checks currently see (default: everything up).
    """
    if up is None:
        is_up: Callable[[str], bool] = lambda _ep: True  # noqa: E731
    elif isinstance(up, Mapping):
        is_up = lambda ep: bool(up.get(ep, False))  # noqa: E731
    else:
        is_up = up
    if affinity and current and current in table.sticky.get(app, ()) and is_up(current):
        return current
    for ep in table.chain(app, region):
        if is_up(ep):
            return ep
    return None


def changes(
    old: RoutingTable | None, new: RoutingTable
) -> tuple[dict[tuple[str, str], tuple[str, ...]], list[tuple[str, str]]]:
    """Route entries to set and keys to delete to go from `old` to `new`."""
    if old is None:
        return new.routes, []
    set_: dict[tuple[str, str], tuple[str, ...]] = {}
    gone: list[tuple[str, str]] = []
    same_regions = old.regions == new.regions
    for app, per in new.chains.items():
        before = old.chains.get(app)
        if before is not None and same_regions:
            if before != per:
                for r, b, c in zip(new.regions, before, per, strict=True):
                    if b != c:
                        set_[(app, r)] = c
        else:
            set_.update(((app, r), c) for r, c in zip(new.regions, per, strict=True))
            if before is not None:
                gone.extend((app, r) for r in old.regions if r not in new.regions)
    for app in old.chains.keys() - new.chains.keys():
        gone.extend((app, r) for r in old.regions)
    return set_, gone
