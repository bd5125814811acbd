"""The global decision function at scale: 1,000 edgepoints, 10,000 placements, per tick.

A simulator stands in for a network no machine here has: edgepoints spread over
the built-in regions (coordinates jittered), 1,000 apps placed on 10 edgepoints
each, loads that random-walk every tick, a few edgepoints failing and recovering,
placements filling up and freeing. Each tick the controller would:

  build   turn the edge processes' reports into the decision's input (baseline)
  decide  compute the routing table (target <= 100 ms)
  diff    find the map entries to push to HAProxy

    .venv/bin/python bench/dispatch_scale.py [--edgepoints 1000] [--apps 1000]
        [--per-app 10] [--ticks 30] [--regions 14]
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import time

from rich.console import Console
from rich.table import Table

from edgeshot.control.dispatch import (
    DispatchPolicy,
    Geometry,
    Placed,
    Site,
    UserRegion,
    changes,
    decide,
)
from edgeshot.spec import REGIONS


class Simulator:
    """Reports as the edge processes would send them: plain dicts, changing every tick."""

    def __init__(self, n_edgepoints: int, n_apps: int, per_app: int, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        base = list(REGIONS.values())
        self.edgepoints = []
        for i in range(n_edgepoints):
            r = base[i % len(base)]
            self.edgepoints.append({
                "name": f"ep{i}",
                "latitude": max(-89.0, min(89.0, r.latitude + self.rng.uniform(-4, 4))),
                "longitude": ((r.longitude + self.rng.uniform(-6, 6) + 180) % 360) - 180,
                "healthy": True,
                "load": self.rng.uniform(0, 0.6),
            })
        self.placements = []
        for a in range(n_apps):
            for k in range(per_app):
                ep = (a * 7 + k * 97) % n_edgepoints
                self.placements.append({"app": f"app{a}", "edgepoint": f"ep{ep}", "at_capacity": False})

    def tick(self) -> None:
        rng = self.rng
        for ep in self.edgepoints:
            ep["load"] = min(1.3, max(0.0, ep["load"] + rng.gauss(0, 0.05)))
            if ep["healthy"] and rng.random() < 0.002:
                ep["healthy"] = False
            elif not ep["healthy"] and rng.random() < 0.3:
                ep["healthy"] = True
        for p in rng.sample(self.placements, len(self.placements) // 50):
            p["at_capacity"] = not p["at_capacity"]


def build_input(sim: Simulator) -> tuple[list[Site], list[Placed]]:
    sites = [Site(e["name"], e["latitude"], e["longitude"], e["healthy"], e["load"])
             for e in sim.edgepoints]
    placed = [Placed(p["app"], p["edgepoint"], not p["at_capacity"]) for p in sim.placements]
    return sites, placed


def user_regions(n: int, rng: random.Random) -> list[UserRegion]:
    regions = [UserRegion(k, v.latitude, v.longitude) for k, v in REGIONS.items()]
    while len(regions) < n:  # more user regions: cities scattered around the built-in ones
        r = regions[len(regions) % len(REGIONS)]
        regions.append(UserRegion(f"city{len(regions)}", r.latitude + rng.uniform(-5, 5),
                                  r.longitude + rng.uniform(-5, 5)))
    return regions[:n]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgepoints", type=int, default=1000)
    ap.add_argument("--apps", type=int, default=1000)
    ap.add_argument("--per-app", type=int, default=10)
    ap.add_argument("--ticks", type=int, default=30)
    ap.add_argument("--regions", type=int, default=len(REGIONS))
    args = ap.parse_args()

    sim = Simulator(args.edgepoints, args.apps, args.per_app)
    regions = user_regions(args.regions, random.Random(3))
    geo = Geometry()
    policy = DispatchPolicy()
    previous = None
    t_build, t_decide, c_decide, t_diff, pushed = [], [], [], [], []
    first_decide = None
    for tick in range(args.ticks):
        sim.tick()
        gc.collect()
        t0 = time.perf_counter()
        sites, placed = build_input(sim)
        t1 = time.perf_counter()
        c1 = time.process_time()
        table = decide(sites, placed, regions, policy, previous=previous, geometry=geo)
        t2 = time.perf_counter()
        cpu = time.process_time() - c1
        set_, gone = changes(previous, table)
        t3 = time.perf_counter()
        if tick == 0:
            first_decide = t2 - t1  # includes filling the distance cache
        else:
            t_build.append(t1 - t0)
            t_decide.append(t2 - t1)
            c_decide.append(cpu)
            t_diff.append(t3 - t2)
            pushed.append(len(set_) + len(gone))
        previous = table

    n_routes = len(previous.routes)
    out = Table(title=f"dispatch_scale: {args.edgepoints} edgepoints, {len(sim.placements)} "
                      f"placements ({args.apps} apps x {args.per_app}), {len(regions)} user "
                      f"regions -> {n_routes} routes; {args.ticks - 1} ticks")
    for col in ("step", "p50 ms", "max ms", "vs build (baseline)", "target", "met"):
        out.add_column(col)
    b50 = statistics.median(t_build)
    out.add_row("build input (baseline)", ms(b50), ms(max(t_build)), "1.00x", "—", "—")
    d50 = statistics.median(t_decide)
    # Met: every tick's own work (CPU time) and the typical tick's wall time within 100 ms;
    # the wall-time maximum is shown, it includes other processes' use of the machine.
    met = max(c_decide) <= 0.100 and d50 <= 0.100
    out.add_row("decide (wall time)", ms(d50), ms(max(t_decide)), f"{d50 / b50:.2f}x",
                "<= 100 ms", "yes" if met else "MISSED")
    out.add_row("decide, CPU time of this process", ms(statistics.median(c_decide)),
                ms(max(c_decide)), f"{statistics.median(c_decide) / b50:.2f}x", "<= 100 ms",
                "yes" if max(c_decide) <= 0.100 else "MISSED")
    out.add_row("decide, first tick (fills distance cache)", ms(first_decide), ms(first_decide),
                f"{first_decide / b50:.2f}x", "—", "—")
    out.add_row("diff (entries to push)", ms(statistics.median(t_diff)), ms(max(t_diff)),
                f"{statistics.median(t_diff) / b50:.2f}x", "—", "—")
    Console().print(out)
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"map entries pushed per tick: median {statistics.median(pushed):.0f}, "
          f"max {max(pushed)} of {n_routes}")


if __name__ == "__main__":
    main()
