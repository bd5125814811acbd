"""The resource manager's decision: a pure function from observed state to actions.

``decide(view, memory, now)`` takes plain data (what the edge process observed at
one edgepoint: per placement its policy, limits, load and instances; per server
its free capacity) and returns the actions to take and a report, like Knative's
KPA: nothing here does I/O, so it is table-tested and simulated at any scale.

Rules, per placement (an app on this edgepoint; its versions share it):

* **Demand** is concurrency, in-flight requests at its instances plus those queued
  in HAProxy or held by the activator, averaged over two windows the observer
  computes: the *stable* window (default 60 s) and the *panic* window (6 s).
  ``want = ceil(concurrency / users_per_instance)``.
* **Latency**: when the SLA percentile of the stable window is above
  ``max_response_ms``, one more instance than ready is wanted (only when none is
  already starting: a restore takes effect before more are asked for).
* **Panic** (bursts): when the panic window wants ``panic_factor`` times the ready
  instances or more (or its latency is ``panic_factor`` times the SLA), the
  placement panics for one stable window: it scales to the panic demand at once and
  never scales down meanwhile. Requests held by the activator with no instance
  ready or starting restore one at once.
* **Stable window against flapping**: below the panic threshold the placement
  follows the stable demand; it scales *down* only when the load per ready instance
  is under ``scale_down_below x users_per_instance``, has been for
  ``scale_down_delay_s``, and then by at most half its instances per decision.
* **Scale to zero**: with no demand it keeps one instance until it has been idle
  ``idle_s``, then none (never below ``min``).
* **Limits**: never more than ``min(max, global_share, cost_ceiling)`` instances
  (the per-edgepoint maximum, this edgepoint's share of the global maximum set by
  the controller, the cost ceiling that billing lowers as budgets run out); these
  win over ``min``. Instances above the limit are removed at once.
* **Versions** share the desired count by their traffic weights (canaries): every
  version with a weight gets at least one instance when the placement has any.
* **Warm pool**: an instance that is scaled down is drained then *snapshotted*
  (kept, ``keep=True``; it comes back from its snapshot with its state) while the
  version's snapshotted instances number fewer than ``warm_pool``; otherwise it is
  stopped. A restore prefers a snapshotted instance of the version (on a server
  with room) to a fresh one from the appshot. Surplus snapshots are discarded,
  oldest first; unhealthy instances are stopped and replaced.
* **Capacity**: scale-ups are served by priority (highest first), each on the
  server with the most free slots that fits its CPU and memory. When none fits,
  ready instances of *lower*-priority placements above their ``min`` are evicted
  (snapshotted, lowest priority and least loaded first) to make room; else the
  placement is reported *at capacity* with the instances it could not get.

Scale-downs take effect after draining, so they are not counted as free capacity
in the same decision; evictions are, and the executor runs them before restores.
"""

from __future__ import annotations

import gc
import heapq
import math
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "Tuning", "Policy", "Inst", "Snapshotted", "PlacementView", "ServerView", "EdgeView",
    "Restore", "Suspend", "Discard", "Action", "PlacementReport", "Decision", "Memory",
    "decide", "split_by_weight",
]

InstState = Literal["ready", "starting", "draining", "unhealthy"]


@dataclass(frozen=True, slots=True)
class Tuning:
    """Knobs of the decision itself (the windows are the observer's)."""

    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    scale_down_delay_s: float = 30.0
    max_scale_down_ratio: float = 2.0  # at most current/ratio instances go per decision


@dataclass(frozen=True, slots=True)
class Policy:
    """A placement's scaling policy (``edgeshot.plan.ScalingPolicy``, as plain data)."""

    min: int = 0
    max: int = 1
    users_per_instance: int = 10
    max_response_ms: float = 1000.0
    percentile: float = 95.0
    scale_down_below: float = 0.3
    idle_s: float = 300.0
    warm_pool: int = 0
    panic_factor: float = 2.0

    @classmethod
    def from_plan(cls, s: object) -> Policy:
        return cls(min=s.min, max=s.max, users_per_instance=s.users_per_instance,  # type: ignore[attr-defined]
                   max_response_ms=s.max_response_ms, percentile=s.percentile,  # type: ignore[attr-defined]
                   scale_down_below=s.scale_down_below, idle_s=s.idle_s,  # type: ignore[attr-defined]
                   warm_pool=s.warm_pool, panic_factor=s.panic_factor)  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Inst:
    """A live instance: ``ready`` (serving), ``starting`` (restore under way),
    ``draining`` (being removed), ``unhealthy`` (failing its health check)."""

    id: str
    version: str
    server: str
    state: InstState = "ready"
    inflight: float = 0.0


@dataclass(frozen=True, slots=True)
class Snapshotted:
    """An instance held as its snapshot (the warm pool): restorable on ``server``."""

    id: str
    version: str
    server: str
    since: float = 0.0  # when it was snapshotted (same clock as ``now``)


@dataclass(frozen=True, slots=True)
class PlacementView:
    """One placement as observed: policy and limits in, load and instances observed.

    ``weights`` default to every version seen, equally. The counts after ``snapshotted``
    are derived on construction (the observer's work, not the decision's)."""

    id: str
    policy: Policy
    priority: int = 50
    global_share: int | None = None  # None: no share set (the plan's max applies)
    cost_ceiling: int | None = None  # None: no ceiling
    weights: tuple[tuple[str, int], ...] = ()  # (version, weight), weight >= 0
    cpu: float = 0.0  # reserved per instance (cores)
    memory: int = 0  # reserved per instance (bytes)
    stable_concurrency: float = 0.0
    panic_concurrency: float = 0.0
    latency_ms: float | None = None  # at policy.percentile, stable window
    panic_latency_ms: float | None = None  # at policy.percentile, panic window
    queued: int = 0  # requests held by the activator right now
    idle_s: float = math.inf  # since the last request
    instances: tuple[Inst, ...] = ()
    snapshotted: tuple[Snapshotted, ...] = ()
    ready: int = field(init=False, default=0)  # of weighted versions
    starting: int = field(init=False, default=0)
    regular: bool = field(init=False, default=True)  # one version, nothing to clean up

    def __post_init__(self) -> None:
        weights = self.weights
        if not weights:
            seen: dict[str, int] = {}
            for i in self.instances:
                seen.setdefault(i.version, 1)
            for sn in self.snapshotted:
                seen.setdefault(sn.version, 1)
            weights = tuple(seen.items()) or (("", 1),)
            object.__setattr__(self, "weights", weights)
        known = {v for v, _ in weights}
        ready = starting = 0
        regular = len(weights) == 1 and len(self.snapshotted) <= self.policy.warm_pool
        for i in self.instances:
            if i.version not in known:
                regular = False
            elif i.state == "ready":
                ready += 1
            elif i.state == "starting":
                starting += 1
            else:
                regular = False
        if regular:
            for sn in self.snapshotted:
                if sn.version not in known:
                    regular = False
        object.__setattr__(self, "ready", ready)
        object.__setattr__(self, "starting", starting)
        object.__setattr__(self, "regular", regular)


@dataclass(frozen=True, slots=True)
class ServerView:
    """A server's free capacity as its agent reported it."""

    name: str
    slots_free: int
    cpu_free: float = math.inf
    memory_free: float = math.inf
    healthy: bool = True


@dataclass(frozen=True, slots=True)
class EdgeView:
    placements: tuple[PlacementView, ...]
    servers: tuple[ServerView, ...]


# -- actions -----------------------------------------------------------------------------
@dataclass(slots=True)
class Restore:
    """Start an instance of ``version`` on ``server``: from the snapshot of instance
    ``from_snapshot`` when given, else a new one from the version's appshot."""

    placement: str
    version: str
    server: str
    from_snapshot: str | None = None
    reason: str = "load"


@dataclass(slots=True)
class Suspend:
    """Take an instance out: drain it in HAProxy, then snapshot it (``keep``: it joins
    the warm pool) or stop it."""

    placement: str
    instance: str
    server: str
    keep: bool
    reason: str = "scale-down"


@dataclass(slots=True)
class Discard:
    """Drop a snapshotted instance (warm pool surplus, or a version gone)."""

    placement: str
    instance: str
    server: str
    reason: str = "warm-pool"


Action = Restore | Suspend | Discard


@dataclass(slots=True)
class PlacementReport:
    """What was decided for a placement and why (for the edge API and the logs)."""

    placement: str
    ready: int
    starting: int
    desired: int  # from load and policy, before limits and capacity
    limit: int  # min(max, global share, cost ceiling)
    limited_by: str | None  # "max" | "global_share" | "cost_ceiling" | None
    target: int  # what this decision aims at
    panic: bool
    unmet: int = 0  # instances wanted but not placeable: at capacity

    @property
    def at_capacity(self) -> bool:
        return self.unmet > 0


@dataclass(slots=True)
class Memory:
    """What the decision remembers between calls (returned, passed back in):
    per placement, panic until when, and since when its load allowed a scale-down."""

    panic_until: dict[str, float] = field(default_factory=dict)
    low_since: dict[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class Decision:
    actions: list[Action]
    reports: dict[str, PlacementReport]  # placements with instances, demand or actions
    memory: Memory

    @property
    def at_capacity(self) -> list[str]:
        return [p for p, r in self.reports.items() if r.unmet > 0]

    def of(self, kind: type) -> list:
        return [a for a in self.actions if isinstance(a, kind)]


# -- the function ----------------------------------------------------------------------
def split_by_weight(total: int, weights: tuple[tuple[str, int], ...]) -> dict[str, int]:
    """``total`` instances over versions by weight: each weighted version gets one first
    (heaviest first, when there are fewer than versions), the rest by largest remainder.
    Ties go to the version listed first."""
    live = [(v, w) for v, w in weights if w > 0]
    out = {v: 0 for v, _ in weights}
    if total <= 0 or not live:
        return out
    if len(live) == 1:
        out[live[0][0]] = total
        return out
    order = sorted(range(len(live)), key=lambda i: -live[i][1])
    if total <= len(live):
        for i in order[:total]:
            out[live[i][0]] = 1
        return out
    wsum = sum(w for _, w in live)
    rest = total - len(live)
    exact = [rest * w / wsum for _, w in live]
    base = [int(x) for x in exact]
    left = rest - sum(base)
    by_rem = sorted(range(len(live)), key=lambda i: (-(exact[i] - base[i]), i))
    for i in by_rem[:left]:
        base[i] += 1
    for i, (v, _) in enumerate(live):
        out[v] = base[i] + 1
    return out


class _Room:
    """Free capacity per server while one decision places restores (a max-heap by free
    slots with lazy updates: picking a server costs O(log servers), not O(servers))."""

    __slots__ = ("slots", "cpu", "mem", "heap", "order")

    def __init__(self, servers: tuple[ServerView, ...]) -> None:
        ok = [s for s in servers if s.healthy]
        self.slots = {s.name: s.slots_free for s in ok}
        self.cpu = {s.name: s.cpu_free for s in ok}
        self.mem = {s.name: s.memory_free for s in ok}
        self.order = {s.name: k for k, s in enumerate(ok)}
        self.heap = [(-s.slots_free, k, s.name) for k, s in enumerate(ok) if s.slots_free > 0]
        heapq.heapify(self.heap)

    def fits(self, server: str, cpu: float, mem: float) -> bool:
        return (self.slots.get(server, 0) > 0 and self.cpu[server] >= cpu - 1e-9
                and self.mem[server] >= mem)

    def best(self, cpu: float, mem: float) -> str | None:
        """The server with the most free slots (the first listed among equals) that fits."""
        heap, skipped, found = self.heap, [], None
        while heap:
            neg, k, name = heap[0]
            cur = self.slots[name]
            if -neg != cur:  # stale entry: refresh it
                if cur > 0:
                    heapq.heapreplace(heap, (-cur, k, name))
                else:
                    heapq.heappop(heap)
                continue
            if self.cpu[name] >= cpu - 1e-9 and self.mem[name] >= mem:
                found = name
                break
            skipped.append(heapq.heappop(heap))
        for e in skipped:
            heapq.heappush(heap, e)
        return found

    def take(self, server: str, cpu: float, mem: float) -> None:
        self.slots[server] -= 1
        self.cpu[server] -= cpu
        self.mem[server] -= mem

    def give(self, server: str, cpu: float, mem: float) -> None:
        if server in self.slots:
            self.slots[server] += 1
            self.cpu[server] += cpu
            self.mem[server] += mem
            heapq.heappush(self.heap, (-self.slots[server], self.order[server], server))


def decide(view: EdgeView, memory: Memory | None = None, now: float = 0.0,
           tuning: Tuning = Tuning()) -> Decision:
    """Actions for one edgepoint now; see the module docstring for the rules.

    The cyclic garbage collector is paused meanwhile: the decision allocates only
    acyclic objects, and its collections would rescan the whole (large) view."""
    was = gc.isenabled()
    gc.disable()
    try:
        return _decide(view, memory, now, tuning)
    finally:
        if was:
            gc.enable()


def _decide(view: EdgeView, memory: Memory | None, now: float, tuning: Tuning) -> Decision:
    mem = memory if memory is not None else Memory()
    panic_until = dict(mem.panic_until)
    low_since = dict(mem.low_since)
    actions: list[Action] = []
    reports: dict[str, PlacementReport] = {}
    needs: list[tuple[int, str, PlacementView, dict[str, int], PlacementReport]] = []
    counts: dict[str, int] = {}  # placement -> live instances after this decision's removals
    floors: dict[str, int] = {}
    active: list[PlacementView] = []
    removed: set[str] = set()
    ceil = math.ceil
    inf = math.inf
    hold = tuning.stable_window_s
    delay = tuning.scale_down_delay_s
    ratio = tuning.max_scale_down_ratio

    for p in view.placements:
        pol = p.policy
        ready = p.ready
        current = ready + p.starting
        stable = p.stable_concurrency
        panic_c = p.panic_concurrency
        # -- nothing running, nothing wanted, nothing to clean up ---------------------------
        if (current == 0 and stable <= 0 and panic_c <= 0 and p.queued == 0 and pol.min <= 0
                and p.regular and not p.instances):
            if panic_until and p.id in panic_until:
                del panic_until[p.id]
            if low_since and p.id in low_since:
                del low_since[p.id]
            continue

        pid = p.id
        upi = pol.users_per_instance
        limit, limited_by = pol.max, "max"
        share = p.global_share
        if share is not None and share < limit:
            limit, limited_by = share, "global_share"
        ceiling = p.cost_ceiling
        if ceiling is not None and ceiling < limit:
            limit, limited_by = ceiling, "cost_ceiling"
        if limit < 0:
            limit = 0
        floor = pol.min if pol.min < limit else limit

        want_stable = ceil(stable / upi) if stable > 0 else 0
        want_panic = ceil(panic_c / upi) if panic_c > 0 else 0
        slo = pol.max_response_ms
        lat = p.latency_ms
        if lat is not None and lat > slo and ready > 0 and p.starting == 0:
            want_stable = max(want_stable, ready + 1)
        panicking = now < panic_until.get(pid, -inf) if panic_until else False
        plat = p.panic_latency_ms
        lat_burst = plat is not None and plat > pol.panic_factor * slo and p.starting == 0
        if ready > 0 and (want_panic >= pol.panic_factor * ready or lat_burst):
            panic_until[pid] = now + hold
            panicking = True
            if lat_burst and want_panic <= ready:
                want_panic = ready + 1
        elif not panicking and panic_until and pid in panic_until:
            del panic_until[pid]

        desired = want_stable if want_stable > want_panic else want_panic
        if panicking and current > desired:
            desired = current
        if current == 0 and desired == 0 and (p.queued > 0 or panic_c > 0):
            desired = 1  # from zero: at once
        if desired < current and not panicking:
            if stable > 0 and stable >= pol.scale_down_below * upi * ready:
                desired = current  # still busy enough: keep them
                if pid in low_since:
                    del low_since[pid]
            elif stable <= 0 and p.queued == 0 and p.idle_s >= pol.idle_s:
                low_since.pop(pid, None)  # idle long enough: no delay
            else:
                if stable <= 0 and desired < 1:
                    desired = 1  # no demand, not idle long enough: keep one
                if desired < current:
                    desired = _delayed(pid, current, desired, now, delay, ratio, low_since)
        elif low_since and pid in low_since:
            del low_since[pid]

        target = desired if desired > floor else floor
        if target > limit:
            target = limit
        if target == current and p.regular:
            if panicking or desired > limit:
                reports[pid] = PlacementReport(pid, ready, p.starting, desired, limit,
                                               limited_by if desired > limit else None,
                                               target, panicking)
            counts[pid] = current
            floors[pid] = floor
            active.append(p)
            continue  # steady: nothing to do

        rep = PlacementReport(pid, ready, p.starting, desired, limit,
                              limited_by if desired > limit else None, target, panicking)
        reports[pid] = rep
        kept, want_more = _changes(p, target, current, limit, actions, removed)
        counts[pid] = kept
        floors[pid] = floor
        active.append(p)
        if want_more:
            needs.append((-p.priority, pid, p, want_more, rep))

    if not needs:
        return Decision(actions, reports, Memory(panic_until, low_since))

    # -- place scale-ups by priority -------------------------------------------------------
    room = _Room(view.servers)
    needs.sort(key=lambda n: (n[0], n[1]))
    evictable: list[tuple[int, float, str, Inst, PlacementView]] | None = None
    evicted: set[str] = set()
    restores: list[Action] = []
    evictions: list[Action] = []
    for _, pid, p, want_more, rep in needs:
        cpu, mem_b = p.cpu, p.memory
        for v, n in want_more.items():
            # the warm pool first: the most recently snapshotted come back first
            snaps = sorted((s for s in p.snapshotted if s.version == v),
                           key=lambda s: (-s.since, s.id))
            for _ in range(n):
                chosen: tuple[str, str | None] | None = None
                for k, sn in enumerate(snaps):
                    if room.fits(sn.server, cpu, mem_b):
                        chosen = (sn.server, sn.id)
                        del snaps[k]
                        break
                if chosen is None:
                    server = room.best(cpu, mem_b)
                    if server is None:
                        if evictable is None:
                            evictable = sorted(
                                ((q.priority, i.inflight, i.id, i, q) for q in active
                                 for i in q.instances
                                 if i.state == "ready" and i.id not in removed),
                                key=lambda e: (e[0], e[1], e[2]))
                        server = _evict_for(p, cpu, mem_b, room, evictable, evicted, counts,
                                            floors, evictions)
                    if server is None:
                        rep.unmet += 1
                        continue
                    chosen = (server, None)
                room.take(chosen[0], cpu, mem_b)
                counts[pid] = counts.get(pid, 0) + 1
                restores.append(Restore(pid, v, chosen[0], chosen[1],
                                        reason="panic" if rep.panic else
                                        ("activator" if rep.ready == 0 else "load")))
    actions.extend(evictions)
    actions.extend(restores)
    return Decision(actions, reports, Memory(panic_until, low_since))


def _changes(p: PlacementView, target: int, current: int, limit: int, actions: list[Action],
             removed: set[str]) -> tuple[int, dict[str, int]]:
    """Removals (appended to ``actions``) and per-version additions to reach ``target``;
    returns the live count after removals and the instances wanted per version."""
    pol = p.policy
    pid = p.id
    per_version = split_by_weight(target, p.weights)
    live: dict[str, list[Inst]] = {v: [] for v in per_version}
    pool: dict[str, list[Snapshotted]] = {v: [] for v in per_version}
    for i in p.instances:
        if i.state == "unhealthy":
            actions.append(Suspend(pid, i.id, i.server, keep=False, reason="unhealthy"))
        elif i.state == "draining":
            continue
        elif i.version not in live:
            actions.append(Suspend(pid, i.id, i.server, keep=False, reason="version-removed"))
            removed.add(i.id)
        else:
            live[i.version].append(i)
    for sn in p.snapshotted:
        if sn.version in pool:
            pool[sn.version].append(sn)
        else:
            actions.append(Discard(pid, sn.id, sn.server, reason="version-removed"))
    want_more: dict[str, int] = {}
    kept = current
    over_limit = current > limit
    for v, n in per_version.items():
        have = live[v]
        snaps = pool[v]
        n_snap = len(snaps)
        if len(have) > n:
            # remove the least loaded ready ones (starting ones finish first)
            readies = sorted((i for i in have if i.state == "ready"),
                             key=lambda i: (i.inflight, i.id))
            for i in readies[: len(have) - n]:
                keep = n_snap < pol.warm_pool
                n_snap += keep
                actions.append(Suspend(pid, i.id, i.server, keep=keep,
                                       reason="over-limit" if over_limit else
                                       ("idle" if target == 0 else "scale-down")))
                removed.add(i.id)
                kept -= 1
        elif len(have) < n:
            want_more[v] = n - len(have)
        if n_snap > pol.warm_pool and snaps:
            for sn in sorted(snaps, key=lambda s: (s.since, s.id))[: n_snap - pol.warm_pool]:
                actions.append(Discard(pid, sn.id, sn.server))
    return kept, want_more


def _delayed(pid: str, current: int, desired: int, now: float, delay: float, ratio: float,
             low_since: dict[str, float]) -> int:
    """Scale down only after the load allowed it for ``delay`` s, and by at most
    current/ratio instances at a time."""
    since = low_since.setdefault(pid, now)
    if now - since < delay:
        return current
    return max(desired, math.ceil(current / ratio))


def _evict_for(p: PlacementView, cpu: float, mem_b: float, room: _Room,
               evictable: list[tuple[int, float, str, Inst, PlacementView]],
               evicted: set[str], counts: dict[str, int], floors: dict[str, int],
               out: list[Action]) -> str | None:
    """Free a server for ``p`` by snapshotting a lower-priority instance above its
    placement's minimum (lowest priority, then least loaded, first)."""
    for prio, _, iid, inst, owner in evictable:
        if prio >= p.priority:
            return None  # sorted: nothing of lower priority is left
        if iid in evicted or counts.get(owner.id, 0) <= floors.get(owner.id, 0):
            continue
        # would its slot (plus what the server has) fit the newcomer?
        server = inst.server
        if server not in room.slots:
            continue
        room.give(server, owner.cpu, owner.memory)
        if room.fits(server, cpu, mem_b):
            evicted.add(iid)
            counts[owner.id] -= 1
            out.append(Suspend(owner.id, iid, server, keep=True, reason=f"evicted-for:{p.id}"))
            return server
        room.take(server, owner.cpu, owner.memory)
    return None
