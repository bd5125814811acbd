"""Compile and diff a network of 1,000 edgepoints and 10,000 apps (~10 edgepoints each).

Baseline, in the same run: the time to merely build the same spec objects.
Targets (issue 2): compile <= 2 s, diff <= 1 s.

    .venv/bin/python bench/plan_scale.py [--edgepoints 1000] [--apps 10000]
"""

from __future__ import annotations

import argparse
import gc
import random
import time

from rich.console import Console
from rich.table import Table

from edgeshot.plan import compile_plan, diff
from edgeshot.spec import (
    REGIONS,
    SLA,
    Application,
    Budget,
    Controller,
    Distribution,
    EdgeNetwork,
    Edgepoint,
    Hetzner,
    Owner,
    Pricing,
    Routing,
    Source,
    Spec,
    Tier,
)


def build(n_edgepoints: int, n_apps: int, seed: int, bump: float = 0.0) -> Spec:
    rng = random.Random(seed)
    regions = sorted(REGIONS)
    locations = ["fsn1", "nbg1", "hel1", "ash", "hil", "sin"]
    edgepoints = tuple(
        Edgepoint(name=f"ep{i}", region=regions[i % len(regions)], location=locations[i % 6],
                  server_type="cx22", servers=1 + i % 3, slots_per_server=16)
        for i in range(n_edgepoints)
    )
    network = EdgeNetwork(
        name="scale", provider=Hetzner(), edgepoints=edgepoints,
        controller=Controller(location="fsn1", server_type="cx32"),
        pricing=Pricing(cpu_second="0.000012", memory_gb_second="0.0000015", network_gb="0.02"),
        slot_network="10.0.0.0/8",
    )
    owners = [Owner(id=f"owner{i}", organisation=f"org{i % 50}") for i in range(200)]
    tier = Tier(name="web", command="python3 app.py")
    apps = []
    bumped = rng.sample(range(n_apps), int(n_apps * bump)) if bump else []
    bumped_set = set(bumped)
    for i in range(n_apps):
        chosen = tuple(f"ep{(i * 7 + k * 97) % n_edgepoints}" for k in range(10))
        apps.append(Application(
            name=f"app{i}", version="2" if i in bumped_set else "1", owner=owners[i % 200],
            routing=Routing(hosts=(f"app{i}.example.com",)), source=Source(path="."),
            tiers=(tier,),
            distribution=Distribution(edgepoints=chosen, min=0, max=4,
                                      global_max=30 if i in bumped_set else 20),
            sla=SLA(max_response_ms=200, users_per_instance=10),
            budget=Budget(monthly="500 EUR"),
        ))
    return Spec(network=network, applications=tuple(apps))


def timed(fn, *args):
    gc.collect()
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--edgepoints", type=int, default=1000)
    ap.add_argument("--apps", type=int, default=10000)
    args = ap.parse_args()

    spec_a, t_build = timed(build, args.edgepoints, args.apps, 1)
    spec_b = build(args.edgepoints, args.apps, 1, bump=0.01)
    plan_a, t_compile = timed(compile_plan, spec_a)
    plan_b = compile_plan(spec_b)
    changes, t_diff = timed(diff, plan_a, plan_b)

    table = Table(title=f"plan_scale: {args.edgepoints} edgepoints, {args.apps} apps, "
                        f"{len(plan_a.placements)} placements")
    for col in ("step", "seconds", "vs build (baseline)", "target", "met"):
        table.add_column(col)
    table.add_row("build spec objects (baseline)", f"{t_build:.3f}", "1.00x", "—", "—")
    for step, t, target in (("compile", t_compile, 2.0), ("diff (1% of apps changed)", t_diff, 1.0)):
        table.add_row(step, f"{t:.3f}", f"{t / t_build:.2f}x", f"<= {target:.0f} s",
                      "yes" if t <= target else "MISSED")
    Console().print(table)
    print(changes.summary())


if __name__ == "__main__":
    main()
